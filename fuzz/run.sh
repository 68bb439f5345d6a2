#!/usr/bin/env bash
# Fuzzes every target in fuzz/fuzz_targets for SECONDS each (default 30); exits non-zero if any
# target crashes (panic, failed invariant, sanitizer report, timeout, OOM) or fails to build.
#
#   fuzz/run.sh [SECONDS]          all targets
#   FUZZ_TARGETS="qga_reply" fuzz/run.sh 60
#
# Works on stable Rust: cargo-fuzz needs -Z flags, allowed by RUSTC_BOOTSTRAP=1. Installs what
# is missing: cargo-fuzz (crates.io), and through apt a C++ compiler (libFuzzer is C++) plus
# libvirt-dev/pkg-config (vmbridge links libvirt). The first build takes several minutes.
#
# The tracked seeds in fuzz/corpus/<target>/ are only read; the growing corpus is kept in
# fuzz/target/corpus-work/<target>/, logs in fuzz/target/logs/, crash inputs in
# fuzz/artifacts/<target>/ (reproduce one with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> FILE`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1

secs="${1:-30}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: fuzz/run.sh [SECONDS]  (SECONDS per target, default 30)" >&2
    exit 2
fi

apt_install() {
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "fuzz/run.sh: missing $*; install it and retry" >&2
        exit 1
    fi
    echo "== apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@"
}

need=()
command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null || need+=(g++)
command -v pkg-config >/dev/null || need+=(pkg-config)
if ! pkg-config --exists libvirt 2>/dev/null; then need+=(libvirt-dev); fi
if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== cargo install cargo-fuzz --locked --version 0.13.2"
    cargo install cargo-fuzz --locked --version 0.13.2
fi

read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"
echo "== cargo fuzz build (${targets[*]})"
cargo fuzz build

mkdir -p fuzz/target/logs
failed=()
summary=()
for t in "${targets[@]}"; do
    work="fuzz/target/corpus-work/$t"
    log="fuzz/target/logs/$t.log"
    mkdir -p "$work" "fuzz/corpus/$t"
    echo "== $t: fuzzing for ${secs}s"
    rc=0
    # The inputs that once crashed a target (fuzz/artifacts-found) are replayed by every target.
    cargo fuzz run "$t" "$work" "fuzz/corpus/$t" fuzz/artifacts-found -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=25 -print_final_stats=1 \
        </dev/null >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n1)
    [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\)[[:space:]].*/\1/p' "$log" | tail -n1)
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 || true)
    init_line=$(grep -E '^#[0-9]+[[:space:]]+INITED' "$log" | tail -n1 || true)
    field() { sed -n "s|.* $1: \([0-9]*\).*|\1|p" <<<"$2"; }
    cov0=$(field cov "$init_line")
    cov1=$(field cov "$done_line")
    eps=$(field exec/s "$done_line")
    news=$(grep -cE '^#[0-9]+[[:space:]]+NEW ' "$log" || true)
    if [ "$rc" -eq 0 ]; then
        line="$t: ok, ${runs:-?} runs, ${eps:-?} exec/s, coverage ${cov0:-?} -> ${cov1:-?} edges, ${news:-0} new inputs"
    else
        failed+=("$t")
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
        line="$t: FAILED (exit $rc) after ${runs:-?} runs; input: ${artifact:-none written}; log: $log"
        echo "---- $t: end of $log"
        { grep -E -A1 "panicked at" "$log" | head -n 4; grep -E "ERROR: libFuzzer|SUMMARY|Test unit written" "$log"; } \
            || tail -n 40 "$log"
    fi
    summary+=("$line")
done

echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz/run.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
