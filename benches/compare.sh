#!/usr/bin/env bash
# compare.sh - benchmark vmbridge against prometheus-libvirt-exporter (Debian) on the
# real libvirt lab (integration/lab.sh), in one invocation, and write its section of
# docs/benchmarks.md (between <!-- compare:begin/end --> markers; benches/scale.sh writes
# the other section). Raw results are kept in benches/results/compare.
#
# Usage: benches/compare.sh [N ...]          (as root; default: 20 60)
#   N ...   lab sizes, ascending, 1..99; the lab grows from one N to the next
#           with the same prefix.
# Environment:
#   BENCH_SCRAPES (60)      scrapes of each exporter per phase
#   BENCH_INTERVAL (1)      seconds between scrapes of one exporter
#   BENCH_TIMEOUT (10)      per-scrape timeout, seconds
#   BENCH_POLL (5s)         vmbridge --poll-interval
#   BENCH_STOP_WAIT (15)    minimum seconds between SIGSTOP and the first scrape
#   BENCH_PREFIX (bench-)   lab domain prefix (only these domains are created,
#                           counted and destroyed)
#   BENCH_OUT (docs/benchmarks.md)
#   BENCH_SKIP_BUILD (0)    1: use the existing target/release/vmbridge
#
# For each N: start both exporters on free loopback ports, wait until both report
# all N lab VMs, then phase "healthy", a control phase (middle lab VM SIGSTOPped, only
# vmbridge scraped) and phase "one VM stopped" (same VM SIGSTOPped, both scraped); after
# each stopped phase: SIGCONT and wait until both report every lab VM again.
# On exit (success, error or Ctrl-C) both exporters are killed, the stopped VM gets
# SIGCONT and `lab.sh down PREFIX` destroys the lab's PREFIX* domains (other domains
# are left alone).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
readonly LAB="$ROOT/integration/lab.sh"
readonly PY="$ROOT/benches/compare.py"
readonly EXPORTER=/usr/bin/prometheus-libvirt-exporter
readonly URI="qemu:///system"
readonly K="${BENCH_SCRAPES:-60}"
readonly INTERVAL="${BENCH_INTERVAL:-1}"
readonly TIMEOUT="${BENCH_TIMEOUT:-10}"
readonly POLL="${BENCH_POLL:-5s}"
readonly STOP_WAIT="${BENCH_STOP_WAIT:-15}"
readonly PREFIX="${BENCH_PREFIX:-bench-}"
OUT="${BENCH_OUT:-$ROOT/docs/benchmarks.md}"
readonly OUT

log() { printf '[%s] compare: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'compare: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
}

# ------------------------------------------------------------ arguments ----

[[ "${1:-}" == -h || "${1:-}" == --help ]] && usage
SIZES=("$@")
[[ ${#SIZES[@]} -gt 0 ]] || SIZES=(20 60)
prev=0
for n in "${SIZES[@]}"; do
    [[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 && "$n" -le 99 ]] || die "N must be an integer 1..99, got '$n'"
    [[ "$n" -gt "$prev" ]] || die "sizes must be strictly ascending (the lab only grows): ${SIZES[*]}"
    prev=$n
done
[[ "$K" =~ ^[0-9]+$ && "$K" -ge 1 ]] || die "BENCH_SCRAPES must be a positive integer"
[[ "$PREFIX" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad BENCH_PREFIX '$PREFIX'"

[[ $EUID -eq 0 ]] || die "must run as root (the lab drives the system libvirtd)"
[[ -x "$LAB" ]] || die "$LAB not found or not executable"
[[ -x "$EXPORTER" ]] || die "$EXPORTER not found (apt-get install prometheus-libvirt-exporter)"
command -v python3 >/dev/null || die "python3 not found"
command -v cargo >/dev/null || [[ "${BENCH_SKIP_BUILD:-0}" == 1 ]] || die "cargo not found"

# ------------------------------------------------------------- teardown ----

WORK=$(mktemp -d /tmp/vmbridge-bench.XXXXXX)
readonly WORK
VMB_PID=""
EXP_PID=""
VICTIM=""
LAB_TOUCHED=0
T_START=$SECONDS

stop_proc() { # PID NAME
    local pid=$1 name=$2 i
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    : "$i"
}

stop_exporters() {
    stop_proc "$VMB_PID" vmbridge
    stop_proc "$EXP_PID" prometheus-libvirt-exporter
    VMB_PID=""
    EXP_PID=""
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_exporters
    if [[ -n "$VICTIM" ]]; then
        "$LAB" cont-vm "$VICTIM" >/dev/null 2>&1
    fi
    if [[ $LAB_TOUCHED -eq 1 ]]; then
        log "tearing down the lab: $LAB down $PREFIX"
        "$LAB" down "$PREFIX" >"$WORK/lab-down.log" 2>&1 || log "WARNING: lab down failed, see $WORK/lab-down.log"
    fi
    if [[ $rc -ne 0 ]]; then
        log "FAILED (exit $rc) after $((SECONDS - T_START)) s; logs and partial results kept in $WORK"
        local f
        for f in "$WORK"/vmbridge-*.log "$WORK"/exporter-*.log; do
            [[ -s "$f" ]] || continue
            log "--- last lines of $f"
            tail -n 15 "$f" >&2
        done
    else
        log "logs and raw results in $WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- build ----

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    log "cargo build --release (log: $WORK/build.log)"
    (cd "$ROOT" && cargo build --release --bin vmbridge) >"$WORK/build.log" 2>&1 ||
        { tail -n 30 "$WORK/build.log" >&2; die "cargo build --release failed"; }
fi
[[ -x "$ROOT/target/release/vmbridge" ]] || die "$ROOT/target/release/vmbridge missing"
# Private copy: the target dir is shared, a concurrent rebuild must not swap the binary mid-run.
cp "$ROOT/target/release/vmbridge" "$WORK/vmbridge"
readonly VMB_BIN="$WORK/vmbridge"

python3 "$PY" facts --vmbridge "$VMB_BIN" >"$WORK/facts.json" || die "collecting machine facts failed"

# ------------------------------------------------------------------ lab ----

# Leftover PREFIX* domains from an aborted run would skew the counts: remove them first.
lab_list=$("$LAB" list 2>/dev/null || true)
if grep -q "^${PREFIX}" <<<"$lab_list"; then
    log "removing leftover ${PREFIX}* lab domains"
    "$LAB" down "$PREFIX" >"$WORK/lab-down-pre.log" 2>&1 || die "lab down $PREFIX failed, see $WORK/lab-down-pre.log"
fi

wait_port() { # PID HOSTPORT NAME
    local pid=$1 hp=$2 name=$3 i
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || die "$name exited at start (see $WORK/$name-*.log)"
        if (exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    : "$i"
    die "$name does not listen on $hp after 10 s"
}

LIBVIRTD_PID=""
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

for N in "${SIZES[@]}"; do
    log "lab: up $N $PREFIX"
    LAB_TOUCHED=1
    "$LAB" up "$N" "$PREFIX" >"$WORK/lab-up-$N.log" 2>&1 ||
        { tail -n 20 "$WORK/lab-up-$N.log" >&2; die "lab.sh up $N $PREFIX failed"; }
    LIBVIRTD_PID=$(pgrep -x -o libvirtd || true)
    [[ -n "$LIBVIRTD_PID" ]] || die "libvirtd is not running after lab up"

    VMB_PORT=$(python3 "$PY" free-port)
    EXP_PORT=$(python3 "$PY" free-port)
    [[ "$VMB_PORT" != "$EXP_PORT" ]] || EXP_PORT=$(python3 "$PY" free-port)
    VMB="127.0.0.1:$VMB_PORT"
    EXP="127.0.0.1:$EXP_PORT"
    log "N=$N: starting vmbridge on $VMB and prometheus-libvirt-exporter on $EXP"
    "$VMB_BIN" --listen "$VMB" --libvirt-uri "$URI" --poll-interval "$POLL" \
        --node-name bench >"$WORK/vmbridge-$N.log" 2>&1 &
    VMB_PID=$!
    "$EXPORTER" --web.listen-address="$EXP" --libvirt.uri="$URI" >"$WORK/exporter-$N.log" 2>&1 &
    EXP_PID=$!
    wait_port "$VMB_PID" "$VMB" vmbridge
    wait_port "$EXP_PID" "$EXP" exporter

    common=(--vmb "$VMB" --exp "$EXP" --vmb-pid "$VMB_PID" --exp-pid "$EXP_PID" --prefix "$PREFIX" --n "$N")
    python3 "$PY" wait-ready "${common[@]}" --timeout 180

    phase_args=(--lab "$LAB" --libvirtd-pid "$LIBVIRTD_PID" --k "$K" --interval "$INTERVAL"
        --timeout "$TIMEOUT" --stop-wait "$STOP_WAIT" --out "$RESULTS")
    python3 "$PY" phase "${common[@]}" "${phase_args[@]}" --phase healthy

    VICTIM=$(printf '%s%02d' "$PREFIX" $(((N + 1) / 2)))
    # control: the same stopped VM with only vmbridge scraped (separates vmbridge's own
    # behaviour from the exporter's load on the shared libvirtd)
    python3 "$PY" phase "${common[@]}" "${phase_args[@]}" --phase stopped-alone --victim "$VICTIM"
    python3 "$PY" phase "${common[@]}" "${phase_args[@]}" --phase stopped --victim "$VICTIM"
    "$LAB" cont-vm "$VICTIM" >/dev/null 2>&1 || true # idempotent; the phase already did it
    VICTIM=""

    stop_exporters
done

# --------------------------------------------------------------- report ----

RUNTIME_S=$((SECONDS - T_START))
CMD="benches/compare.sh ${SIZES[*]}"
envs=()
[[ "$K" != 60 ]] && envs+=("BENCH_SCRAPES=$K")
[[ "$INTERVAL" != 1 ]] && envs+=("BENCH_INTERVAL=$INTERVAL")
[[ "$TIMEOUT" != 10 ]] && envs+=("BENCH_TIMEOUT=$TIMEOUT")
[[ "$POLL" != 5s ]] && envs+=("BENCH_POLL=$POLL")
[[ "$STOP_WAIT" != 15 ]] && envs+=("BENCH_STOP_WAIT=$STOP_WAIT")
[[ "$PREFIX" != bench- ]] && envs+=("BENCH_PREFIX=$PREFIX")
[[ ${#envs[@]} -gt 0 ]] && CMD="${envs[*]} $CMD"

# The lab teardown time is not part of the reported runtime; it runs in the EXIT trap.
python3 "$PY" render --facts "$WORK/facts.json" --results "$RESULTS" --out "$WORK/compare.md" \
    --command "$CMD" --runtime "$((RUNTIME_S / 60)) min $((RUNTIME_S % 60)) s" \
    --poll-interval "$POLL" --stop-wait "$STOP_WAIT"
# docs/benchmarks.md also holds benches/scale.sh's section: replace only this script's block
# (headings one level down), and keep the raw results for re-rendering.
python3 "$ROOT/benches/scale.py" splice-compare --rendered "$WORK/compare.md" --out "$OUT"
mkdir -p "$ROOT/benches/results/compare"
cp "$WORK/facts.json" "$RESULTS" "$ROOT/benches/results/compare/"
printf '%s\n%s\n' "$CMD" "$((RUNTIME_S / 60)) min $((RUNTIME_S % 60)) s" >"$ROOT/benches/results/compare/run.txt"
log "done in $RUNTIME_S s; report: $OUT"
