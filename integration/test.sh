#!/usr/bin/env bash
# The whole test suite: installs the lab's packages if missing (apt: libvirt, QEMU, libvirt-dev),
# checks formatting and lints, then runs unit tests, CLI tests and the integration tests against
# a real libvirtd + QEMU lab, and finally stops only the lab daemons it started.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
lab=integration/lab.sh
T0=$(date +%s)
stamp() { echo "== $* [$(date +%T), +$(($(date +%s) - T0)) s]"; }

stamp "cargo fmt --check"
cargo fmt --all -- --check

bash "$lab" install
# Tools the tests call besides the lab: curl and openssl (TLS tests), promtool (rule tests).
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v promtool >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
# The status page screenshot names DejaVu Sans: the same glyphs on every machine.
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
command -v systemd-analyze >/dev/null || missing+=(systemd) # the package test verifies the unit
command -v lintian >/dev/null || missing+=(lintian) # the package test checks the .deb
if [ ${#missing[@]} -gt 0 ]; then
    . integration/apt.sh
    apt_install "${missing[@]}"
fi
# The real-guest tier boots a Debian kernel + busybox/qemu-ga initramfs (built once, cached).
bash integration/guest/build.sh >/dev/null
# Two jobs run beside the rest at idle CPU priority (SCHED_IDLE: they get only the CPU the builds
# and the lab tests leave, so the lab's load is what it was), and are waited for at the end:
# - the supply-chain check: cargo deny with deny.toml (advisories from the offline snapshot,
#   licenses, bans, sources; integration/deny.sh); a finding fails the suite. cargo-deny is
#   pinned and built from source when missing (about 4 min of CPU). It starts now;
# - fuzzing: every target in fuzz/ for VMB_FUZZ_SECS (default 30) each; a crash fails the suite.
#   It starts with the tests, once the foreground builds are done: its instrumented build would
#   otherwise take the CPU the builds leave between crates.
# Each has its own CARGO_HOME (target/cargo-bg-*): a starved idle job holding cargo's package
# cache lock must never make the foreground builds wait for it.
mkdir -p target
bg() { # NAME CMD: start CMD in its own session (an early exit stops it) at idle priority
    local name=$1
    shift
    CARGO_HOME="$PWD/target/cargo-bg-$name" PATH="$PWD/target/cargo-bg-$name/bin:$PATH" \
        setsid chrt --idle 0 "$@" >"target/$name-ci.log" 2>&1 &
    echo "== $name started at idle priority (pid $!, log target/$name-ci.log)"
}
bg deny bash -c 'set -e; command -v cargo-deny >/dev/null || cargo install --locked cargo-deny --version 0.20.2
    cargo fetch --locked --quiet; bash integration/deny.sh'
deny_pid=$!
fuzz_pid=
release_pid=
stop_bg() { kill -- "-$deny_pid" ${fuzz_pid:+"-$fuzz_pid"} ${release_pid:+"-$release_pid"} 2>/dev/null || true; }
trap stop_bg EXIT
# The installable artefacts, which the image and package tests install and run: the .deb
# (cargo-deb, pinned) and the OCI image, built twice to check it is reproducible. They build
# beside the debug builds below (clippy, the tests): the release profile has its own directory
# (target/release), so neither waits for the other's lock, and each fills the CPU the other
# leaves while one crate compiles alone or a binary links.
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb --version 3.8.0
stamp "cargo deb, then deploy/image/build.sh, in the background (log target/release-ci.log)"
# cargo deb builds target/release/vmbridge: the image takes that binary (no second build).
setsid bash -c 'set -e; cargo deb --locked; VMBRIDGE_IMAGE_SKIP_CARGO=1 bash deploy/image/build.sh' \
    >target/release-ci.log 2>&1 &
release_pid=$!
# Only the integration tests' domains (prefix "it"); the daemons stop only if no lab domain is left.
trap 'stop_bg; bash "$lab" down it >/dev/null 2>&1 || true' EXIT

stamp "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
rc=0
stamp "cargo test --doc (the allow-lists' compile-fail proofs)"
# --all-targets leaves doctests out; they run first (seconds) and a failure does not stop the rest.
cargo test --doc --locked || rc=$?
# The hung-VM phases (0, 4, 6, 8, 12 of 16 VMs stopped) hold 30 s each here (15 polls, 60
# scrapes) instead of the test's own 60 s, to keep the suite within half an hour; run it alone
# for the full length.
export VMB_HUNG_PHASE_SECS="${VMB_HUNG_PHASE_SECS:-30}"
# The overload test (100 paused domains, a busy libvirt) holds 90 s here (18 poll cycles)
# instead of its own 120 s.
export VMB_OVERLOAD_SECS="${VMB_OVERLOAD_SECS:-90}"
stamp "cargo test --no-run (every test binary, built once for both streams)"
cargo test --all-targets --locked --no-run || rc=$?
stamp "waiting for the release artefacts"
release_rc=0
wait "$release_pid" || release_rc=$?
release_pid=
tail -n 5 target/release-ci.log
if [ "$release_rc" -ne 0 ]; then
    echo "cargo deb or the image build failed (exit $release_rc): the end of target/release-ci.log:"
    tail -n 80 target/release-ci.log
    exit 1
fi
bg fuzz bash fuzz/run.sh "${VMB_FUZZ_SECS:-30}"
fuzz_pid=$!
# Two streams run at once (cargo's build lock is free once the binaries are built):
# - the tests that start no lab domain and wait mostly on sockets and timers (hostile HTTP and
#   QMP peers, TLS, the manifests, the package, scripted agents, the CLI): about 110 s;
# - the unit tests and every test that starts lab domains, one binary after another as before.
# A hang anywhere must not eat CI's whole time limit: each lab test also has its own watchdog.
labfree=(cli manifests structure tls http_limits hostile_qmp package prometheus_e2e)
lab_args=(--lib --bins --examples --benches)
for t in $(awk '/^\[\[test\]\]/{t=1;next} t&&/^name *=/{gsub(/"/,"",$3);print $3;t=0}' Cargo.toml); do
    [[ " ${labfree[*]} " == *" $t "* ]] || lab_args+=(--test "$t")
done
stamp "cargo test, lab-free stream: ${labfree[*]} (log target/labfree-ci.log, shown below when done)"
timeout --signal=INT --kill-after=30s 20m cargo test --locked --no-fail-fast \
    $(printf -- '--test %s ' "${labfree[@]}") >target/labfree-ci.log 2>&1 &
labfree_pid=$!
stamp "cargo test, lab stream: unit tests and the real-lab integration tests"
timeout --signal=INT --kill-after=30s 45m cargo test --locked --no-fail-fast "${lab_args[@]}" || rc=$?
labfree_rc=0
wait "$labfree_pid" || labfree_rc=$?
stamp "cargo test, lab-free stream (exit $labfree_rc)"
cat target/labfree-ci.log
[ "$labfree_rc" -eq 0 ] || rc=1
wait_bg() { # NAME PID SUMMARY-SED: wait for a background job, show its summary, fail on error
    local name=$1 pid=$2 job_rc=0
    stamp "$name (waiting for the idle-priority job; now alone on the machine)"
    wait "$pid" || job_rc=$?
    sed -n "$3" "target/$name-ci.log"
    if [ "$job_rc" -ne 0 ]; then
        echo "$name failed (exit $job_rc): the end of target/$name-ci.log:"
        tail -n 60 "target/$name-ci.log"
        rc=1
    fi
}
wait_bg deny "$deny_pid" '/^deny.sh:\|^advisories\|^bans\|^licenses\|^sources/p'
wait_bg fuzz "$fuzz_pid" '/^== summary/,$p'
exit "$rc"
