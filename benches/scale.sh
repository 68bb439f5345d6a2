#!/usr/bin/env bash
# scale.sh - scale benchmark: vmbridge, prometheus-libvirt-exporter (Debian) and collectd's
# virt plugin side by side on the real libvirt lab (integration/lab.sh) at several VM
# counts, healthy and with one VM SIGSTOPped, plus vmbridge's synthetic scrape path at
# 10/100/1000 VMs (cargo bench --bench scrape_path); writes the scale section of
# docs/benchmarks.md and docs/scrape-latency.png, in one invocation.
#
# Usage: benches/scale.sh [N[:MODE] ...]     (as root; default: 20 100)
#   e.g. benches/scale.sh 20:boot 100:boot 20:halted 100:halted 250:paused 500:paused
#   250 boot was tried on 2026-12-03: 2 cores do not hold 250 booting lab VMs (about 1 % of a
#   core each; load average 114, no system ready within 240 s), see docs/benchmarks.md.
#   N       lab size 1..999; MODE how its domains run (integration/lab.sh VMB_LAB_MODE):
#           boot (default; a plain N means N:boot), halted (vCPU halted at once) or paused
#           (never runs). Sizes ascend within a run of one mode and the lab grows from one N
#           to the next with the same prefix (lab.sh up creates at most 500; the rest are
#           added one by one with lab.sh add: PREFIX501, ...); when the mode changes the lab
#           is destroyed and the next mode's is built from scratch.
#   paused  collectd's virt plugin skips paused domains: only vmbridge runs, in the healthy
#           and control A phases; the peers are recorded as not run.
# Environment:
#   SCALE_SCRAPES (30)        scrapes of each system per phase
#   SCALE_INTERVAL (1)        seconds between scrapes of one system
#   SCALE_TIMEOUT (10)        per-scrape timeout, seconds
#   SCALE_POLL (5)            vmbridge --poll-interval and collectd Interval, seconds
#   SCALE_STOP_WAIT (15)      minimum seconds between SIGSTOP and the first scrape
#   SCALE_PROBE_TIMEOUT (120) timeout of the one long exporter scrape per stopped phase
#   SCALE_PREFIX (scale-)     lab domain prefix (only these are created, counted, destroyed)
#   SCALE_OUT (docs/benchmarks.md), SCALE_PLOT (docs/scrape-latency.png)
#   SCALE_RESULTS (benches/results/scale)  raw results kept here for re-rendering
#   SCALE_SKIP_BUILD (0)      1: use the existing target/release/vmbridge
#   SCALE_SKIP_SYNTHETIC (0)  1: do not run cargo bench (keep the table from SCALE_RESULTS)
#   SCALE_RENDER_ONLY (0)     1: only re-render the section and the plot from SCALE_RESULTS
#
# Per N: start all three on free loopback ports, wait until each reports every lab VM (the
#   seconds from each one's start are recorded; one not ready within 240 s is recorded as
#   what it did and measured anyway), then
#   healthy    all three scraped, K times plain and K times with Accept-Encoding: gzip
#              (interleaved); each system's last exposition is kept and its lab-VM series
#              are counted per VM by family group (vmbridge: the group `vmbridge --list-metrics`
#              gives each family, plus the subset KubeVirt's virt-handler exports too, from
#              integration/fixtures/kubevirt-virt-handler-metrics.tsv; the peers: by name)
#   control A  collectd stopped; middle VM SIGSTOPped; only vmbridge scraped (exporter idle)
#   control B  collectd restarted; same VM SIGSTOPped; vmbridge + collectd scraped
#   stopped    same VM SIGSTOPped; all three scraped
# After each stopped phase: SIGCONT and wait until every system reports every lab VM again.
# On exit (success, error or Ctrl-C) the three processes are stopped, the stopped VM gets
# SIGCONT and `lab.sh down PREFIX` destroys the PREFIX* domains (other domains are left alone).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
readonly LAB="$ROOT/integration/lab.sh"
readonly PY="$ROOT/benches/scale.py"
readonly CPY="$ROOT/benches/compare.py"
readonly KUBEVIRT_TSV="$ROOT/integration/fixtures/kubevirt-virt-handler-metrics.tsv"
readonly EXPORTER=/usr/bin/prometheus-libvirt-exporter
readonly COLLECTD=/usr/sbin/collectd
readonly URI="qemu:///system"
readonly K="${SCALE_SCRAPES:-30}"
readonly INTERVAL="${SCALE_INTERVAL:-1}"
readonly TIMEOUT="${SCALE_TIMEOUT:-10}"
readonly POLL="${SCALE_POLL:-5}"
readonly STOP_WAIT="${SCALE_STOP_WAIT:-15}"
readonly PROBE_TIMEOUT="${SCALE_PROBE_TIMEOUT:-120}"
readonly PREFIX="${SCALE_PREFIX:-scale-}"
OUT="${SCALE_OUT:-$ROOT/docs/benchmarks.md}"
PLOT="${SCALE_PLOT:-$ROOT/docs/scrape-latency.png}"
RESULTS_DIR="${SCALE_RESULTS:-$ROOT/benches/results/scale}"
readonly OUT PLOT RESULTS_DIR

log() { printf '[%s] scale: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'scale: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
}

# ------------------------------------------------------------ arguments ----

[[ "${1:-}" == -h || "${1:-}" == --help ]] && usage
SIZES=("$@")
[[ ${#SIZES[@]} -gt 0 ]] || SIZES=(20 100)
NS=()    # per size: N
MODES=() # per size: boot, halted or paused
prev=0
prev_mode=""
for spec in "${SIZES[@]}"; do
    [[ "$spec" =~ ^([0-9]+)(:(boot|halted|paused))?$ ]] || die "size must be N or N:MODE (MODE boot, halted or paused), got '$spec'"
    n=${BASH_REMATCH[1]}
    mode=${BASH_REMATCH[3]:-boot}
    [[ "$n" -ge 1 && "$n" -le 999 ]] || die "N must be an integer 1..999, got '$n'"
    [[ "$mode" != "$prev_mode" ]] && prev=0
    [[ "$n" -gt "$prev" ]] || die "sizes must be strictly ascending within a mode (its lab only grows): ${SIZES[*]}"
    prev=$n
    prev_mode=$mode
    NS+=("$n")
    MODES+=("$mode")
done
[[ "$K" =~ ^[0-9]+$ && "$K" -ge 1 ]] || die "SCALE_SCRAPES must be a positive integer"
[[ "$POLL" =~ ^[0-9]+$ && "$POLL" -ge 1 ]] || die "SCALE_POLL must be whole seconds"
[[ "$PREFIX" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad SCALE_PREFIX '$PREFIX'"

if [[ "${SCALE_RENDER_ONLY:-0}" == 1 ]]; then
    # Re-render the section and the plot from the results kept by the last run (no lab, no root).
    [[ -f "$RESULTS_DIR/results.jsonl" && -f "$RESULTS_DIR/run.txt" ]] || die "no saved results in $RESULTS_DIR"
    synth_args=()
    [[ -f "$RESULTS_DIR/scrape_path.json" ]] && synth_args=(--synthetic "$RESULTS_DIR/scrape_path.json")
    python3 "$PY" render --facts "$RESULTS_DIR/facts.json" --results "$RESULTS_DIR/results.jsonl" \
        --lab-facts "$RESULTS_DIR/lab.jsonl" --logs "$RESULTS_DIR/logs" "${synth_args[@]}" --out "$OUT" \
        --command "$(sed -n 1p "$RESULTS_DIR/run.txt")" --runtime "$(sed -n 2p "$RESULTS_DIR/run.txt")" \
        --poll-seconds "$POLL" --stop-wait "$STOP_WAIT" --probe-timeout "$PROBE_TIMEOUT"
    python3 "$ROOT/benches/plot.py" --results "$RESULTS_DIR/results.jsonl" "${synth_args[@]}" --out "$PLOT"
    exit 0
fi

[[ $EUID -eq 0 ]] || die "must run as root (the lab drives the system libvirtd)"
[[ -x "$LAB" ]] || die "$LAB not found or not executable"
[[ -x "$EXPORTER" ]] || die "$EXPORTER not found (apt-get install prometheus-libvirt-exporter)"
[[ -x "$COLLECTD" && -f /usr/lib/collectd/virt.so && -f /usr/lib/collectd/write_prometheus.so ]] ||
    die "collectd with the virt and write_prometheus plugins not found (apt-get install collectd-core libprotobuf-c1 libmicrohttpd12)"
command -v python3 >/dev/null || die "python3 not found"
[[ -f "$KUBEVIRT_TSV" ]] || die "$KUBEVIRT_TSV not found"
python3 -c 'import matplotlib' 2>/dev/null || die "python3 cannot import matplotlib (pip install matplotlib)"
command -v cargo >/dev/null || [[ "${SCALE_SKIP_BUILD:-0}" == 1 ]] || die "cargo not found"

# ------------------------------------------------------------- teardown ----

WORK=$(mktemp -d /tmp/vmbridge-scale.XXXXXX)
readonly WORK
VMB_PID=""
EXP_PID=""
CD_PID=""
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
        log "$name (pid $pid) ignored SIGTERM for 5 s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    : "$i"
}

stop_collectd() {
    stop_proc "$CD_PID" collectd
    CD_PID=""
}

stop_all() {
    stop_proc "$VMB_PID" vmbridge
    stop_proc "$EXP_PID" prometheus-libvirt-exporter
    stop_collectd
    VMB_PID=""
    EXP_PID=""
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_all
    [[ -n "$VICTIM" ]] && "$LAB" cont-vm "$VICTIM" >/dev/null 2>&1
    if [[ $LAB_TOUCHED -eq 1 ]]; then
        log "tearing down the lab: $LAB down $PREFIX"
        "$LAB" down "$PREFIX" >"$WORK/lab-down.log" 2>&1 || log "WARNING: lab down failed, see $WORK/lab-down.log"
    fi
    if [[ $rc -ne 0 ]]; then
        log "FAILED (exit $rc) after $((SECONDS - T_START)) s; logs and partial results kept in $WORK"
        local f
        for f in "$WORK"/vmbridge-*.log "$WORK"/exporter-*.log "$WORK"/collectd-*.log; do
            [[ -s "$f" ]] || continue
            log "--- last lines of $f"
            tail -n 10 "$f" >&2
        done
    else
        log "logs and raw results in $WORK (copied to $RESULTS_DIR)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------- build and synthetic ----

if [[ "${SCALE_SKIP_BUILD:-0}" != 1 ]]; then
    log "cargo build --release (log: $WORK/build.log)"
    (cd "$ROOT" && cargo build --release --bin vmbridge) >"$WORK/build.log" 2>&1 ||
        { tail -n 30 "$WORK/build.log" >&2; die "cargo build --release failed"; }
fi
[[ -x "$ROOT/target/release/vmbridge" ]] || die "$ROOT/target/release/vmbridge missing"
# Private copy: the target dir is shared, a concurrent rebuild must not swap the binary mid-run.
cp "$ROOT/target/release/vmbridge" "$WORK/vmbridge"
readonly VMB_BIN="$WORK/vmbridge"
# Family → group (and type, profiles, labels) from the binary under test, for the healthy
# phase's series-per-group count.
"$VMB_BIN" --list-metrics >"$WORK/catalogue.txt" 2>"$WORK/catalogue.err" ||
    { cat "$WORK/catalogue.err" >&2; die "$VMB_BIN --list-metrics failed"; }
[[ -s "$WORK/catalogue.txt" ]] || die "$VMB_BIN --list-metrics printed nothing"

mkdir -p "$RESULTS_DIR"
SYNTH="$WORK/scrape_path.json"
if [[ "${SCALE_SKIP_SYNTHETIC:-0}" != 1 ]]; then
    # Before the lab exists, so the lab's QEMUs do not compete with the measurement.
    log "synthetic scrape path: cargo bench --bench scrape_path (log: $WORK/scrape_path.log)"
    (cd "$ROOT" && SCRAPE_PATH_OUT="$SYNTH" cargo bench --bench scrape_path) >"$WORK/scrape_path.log" 2>&1 ||
        { tail -n 30 "$WORK/scrape_path.log" >&2; die "cargo bench --bench scrape_path failed"; }
    grep -v '^{' "$WORK/scrape_path.log" | tail -n 8 >&2
elif [[ -f "$RESULTS_DIR/scrape_path.json" ]]; then
    cp "$RESULTS_DIR/scrape_path.json" "$SYNTH"
fi

python3 "$PY" facts --vmbridge "$VMB_BIN" >"$WORK/facts.json" || die "collecting machine facts failed"

# ------------------------------------------------------------------ lab ----

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

free_port() { python3 "$CPY" free-port; }

start_collectd() { # TAG
    local port
    port=$(free_port)
    CD="127.0.0.1:$port"
    python3 "$PY" collectd-conf --workdir "$WORK/collectd" --port "$port" --interval "$POLL" \
        --out "$WORK/collectd-$1.conf"
    "$COLLECTD" -f -C "$WORK/collectd-$1.conf" >>"$WORK/collectd-$1.log" 2>&1 &
    CD_PID=$!
    wait_port "$CD_PID" "$CD" collectd
}

LAB_WHY=""
lab_grow() { # N TAG: grow the PREFIX lab to N domains (mode: VMB_LAB_MODE, exported); 1 + LAB_WHY if not
    local n=$1 tag=$2 up=$1 i name have
    [[ $up -gt 500 ]] && up=500
    if ! "$LAB" up "$up" "$PREFIX" >"$WORK/lab-up-$tag.log" 2>&1; then
        tail -n 20 "$WORK/lab-up-$tag.log" >&2
        LAB_WHY="lab.sh up $up failed: $(grep -m1 -i 'error\|die\|failed' "$WORK/lab-up-$tag.log" | tr -d '"\\\000-\037' | cut -c1-200)"
        return 1
    fi
    [[ $n -gt 500 ]] || return 0
    have=$("$LAB" list 2>/dev/null || true) # once: each lab.sh list runs virsh and a grep per domain
    for ((i = 501; i <= n; i++)); do
        name="$PREFIX$i" # what lab.sh up's printf '%s%02d' and scale.py's lab_names give for i >= 100
        if grep -qxF -- "$name" <<<"$have"; then continue; fi
        if ! "$LAB" add "$name" >>"$WORK/lab-up-$tag.log" 2>&1; then
            tail -n 20 "$WORK/lab-up-$tag.log" >&2
            LAB_WHY="lab.sh add $name failed (the machine held $((i - 1)) VMs)"
            return 1
        fi
    done
}

lab_failed() { # N MODE WHY: record a size the lab could not reach; the run goes on with the next mode
    log "WARNING: N=$1 ($2): $3; no phase at this size"
    printf '{"phase": "lab-failed", "n": %d, "mode": "%s", "why": "%s"}\n' "$1" "$2" "$3" >>"$RESULTS"
}

RESULTS="$WORK/results.jsonl"
LABFACTS="$WORK/lab.jsonl"
: >"$RESULTS"
: >"$LABFACTS"

# lab.sh list prints the running domains it created, as `virsh list --name` names them: the
# active ones, paused included, so one count serves every mode.
count_lab() { "$LAB" list 2>/dev/null | grep -c "^${PREFIX}" || true; }

readonly NOT_RUN_PAUSED="paused: collectd skips paused domains; the exporter was not run"
lab_mode=""
failed_mode="" # the mode whose lab could not grow: its larger sizes are recorded as not reached
for idx in "${!NS[@]}"; do
    N=${NS[$idx]}
    MODE=${MODES[$idx]}
    TAG="$MODE-$N" # file names: the same N may be run in two modes
    if [[ "$MODE" == "$lab_mode" && "$MODE" == "$failed_mode" ]]; then
        lab_failed "$N" "$MODE" "not tried: the $MODE lab did not reach a smaller size"
        continue
    fi
    if [[ -n "$lab_mode" && "$MODE" != "$lab_mode" ]]; then
        log "lab: mode $lab_mode -> $MODE: destroying the $lab_mode lab ($LAB down $PREFIX)"
        "$LAB" down "$PREFIX" >"$WORK/lab-down-$TAG.log" 2>&1 || die "lab down $PREFIX failed, see $WORK/lab-down-$TAG.log"
        left=$(count_lab)
        [[ "$left" -eq 0 ]] || die "$left ${PREFIX}* domains left after lab.sh down"
    fi
    lab_mode=$MODE
    export VMB_LAB_MODE=$MODE
    log "lab: grow to $N ${PREFIX}* domains ($MODE)"
    LAB_TOUCHED=1
    t_lab=$SECONDS
    failed_mode=""
    if ! lab_grow "$N" "$TAG"; then
        lab_failed "$N" "$MODE" "$LAB_WHY"
        failed_mode=$MODE
        continue
    fi
    lab_s=$((SECONDS - t_lab))
    running=$(count_lab)
    if [[ "$running" -ne "$N" ]]; then
        lab_failed "$N" "$MODE" "expected $N active ${PREFIX}* domains after lab.sh up, found $running"
        failed_mode=$MODE
        continue
    fi
    python3 "$PY" lab-facts --prefix "$PREFIX" --n "$N" --mode "$MODE" --lab-up-s "$lab_s" >>"$LABFACTS"
    LIBVIRTD_PID=$(pgrep -x -o libvirtd || true)
    [[ -n "$LIBVIRTD_PID" ]] || die "libvirtd is not running after lab up"

    VMB="127.0.0.1:$(free_port)"
    # No debug listener: its fixed default port (9978) may be taken by another vmbridge.
    "$VMB_BIN" --listen "$VMB" --debug-listen off --libvirt-uri "$URI" --poll-interval "${POLL}s" \
        --node-name scale >"$WORK/vmbridge-$TAG.log" 2>&1 &
    VMB_PID=$!
    S_VMB="vmbridge=$VMB:$VMB_PID"
    common=(--prefix "$PREFIX" --n "$N" --mode "$MODE" --lab "$LAB" --libvirtd-pid "$LIBVIRTD_PID" --k "$K"
        --interval "$INTERVAL" --timeout "$TIMEOUT" --stop-wait "$STOP_WAIT" --probe-timeout "$PROBE_TIMEOUT"
        --poll "$POLL" --out "$RESULTS")
    healthy_extra=(--catalogue "$WORK/catalogue.txt" --kubevirt "$KUBEVIRT_TSV" --expo-dir "$WORK/expo")
    VICTIM=$(printf '%s%02d' "$PREFIX" $(((N + 1) / 2)))

    if [[ "$MODE" == paused ]]; then
        log "N=$N ($MODE): starting vmbridge alone on $VMB ($NOT_RUN_PAUSED)"
        wait_port "$VMB_PID" "$VMB" vmbridge
        python3 "$PY" wait-ready --prefix "$PREFIX" --n "$N" --mode "$MODE" --sys "$S_VMB" \
            --not-run "$NOT_RUN_PAUSED" --out "$RESULTS"
        python3 "$PY" phase "${common[@]}" --phase healthy --sys "$S_VMB" --scrape vmbridge \
            --not-run "$NOT_RUN_PAUSED" "${healthy_extra[@]}"
        python3 "$PY" phase "${common[@]}" --phase stopped-alone --victim "$VICTIM" --sys "$S_VMB" \
            --scrape vmbridge --not-run "$NOT_RUN_PAUSED"
    else
        EXP="127.0.0.1:$(free_port)"
        log "N=$N ($MODE): starting vmbridge on $VMB, prometheus-libvirt-exporter on $EXP and collectd"
        "$EXPORTER" --web.listen-address="$EXP" --libvirt.uri="$URI" >"$WORK/exporter-$TAG.log" 2>&1 &
        EXP_PID=$!
        wait_port "$VMB_PID" "$VMB" vmbridge
        wait_port "$EXP_PID" "$EXP" exporter
        start_collectd "$TAG"
        log "N=$N ($MODE): collectd on $CD"
        S_EXP="exporter=$EXP:$EXP_PID"
        python3 "$PY" wait-ready --prefix "$PREFIX" --n "$N" --mode "$MODE" --sys "$S_VMB" --sys "$S_EXP" \
            --sys "collectd=$CD:$CD_PID" --out "$RESULTS"
        python3 "$PY" phase "${common[@]}" --phase healthy --sys "$S_VMB" --sys "$S_EXP" --sys "collectd=$CD:$CD_PID" \
            --scrape vmbridge,exporter,collectd "${healthy_extra[@]}"

        stop_collectd
        python3 "$PY" phase "${common[@]}" --phase stopped-alone --victim "$VICTIM" --sys "$S_VMB" --sys "$S_EXP" \
            --scrape vmbridge

        start_collectd "$TAG"
        python3 "$PY" wait-ready --prefix "$PREFIX" --n "$N" --mode "$MODE" --sys "$S_VMB" --sys "collectd=$CD:$CD_PID"
        python3 "$PY" phase "${common[@]}" --phase stopped-bg --victim "$VICTIM" --sys "$S_VMB" --sys "$S_EXP" \
            --sys "collectd=$CD:$CD_PID" --scrape vmbridge,collectd
        python3 "$PY" phase "${common[@]}" --phase stopped --victim "$VICTIM" --sys "$S_VMB" --sys "$S_EXP" \
            --sys "collectd=$CD:$CD_PID" --scrape vmbridge,exporter,collectd
    fi
    "$LAB" cont-vm "$VICTIM" >/dev/null 2>&1 || true # idempotent; the phase already did it
    VICTIM=""
    stop_all
done

# --------------------------------------------------------------- report ----

RUNTIME_S=$((SECONDS - T_START))
CMD="benches/scale.sh ${SIZES[*]}"
envs=()
[[ "$K" != 30 ]] && envs+=("SCALE_SCRAPES=$K")
[[ "$INTERVAL" != 1 ]] && envs+=("SCALE_INTERVAL=$INTERVAL")
[[ "$TIMEOUT" != 10 ]] && envs+=("SCALE_TIMEOUT=$TIMEOUT")
[[ "$POLL" != 5 ]] && envs+=("SCALE_POLL=$POLL")
[[ "$STOP_WAIT" != 15 ]] && envs+=("SCALE_STOP_WAIT=$STOP_WAIT")
[[ "$PREFIX" != scale- ]] && envs+=("SCALE_PREFIX=$PREFIX")
[[ ${#envs[@]} -gt 0 ]] && CMD="${envs[*]} $CMD"

cp "$WORK/facts.json" "$RESULTS" "$LABFACTS" "$WORK/catalogue.txt" "$RESULTS_DIR/"
# Logs the report cites: exporter and collectd logs whole, vmbridge's warnings and errors only.
rm -rf "$RESULTS_DIR/logs"
mkdir -p "$RESULTS_DIR/logs"
for idx in "${!NS[@]}"; do
    TAG="${MODES[$idx]}-${NS[$idx]}"
    cp "$WORK/exporter-$TAG.log" "$WORK/collectd-$TAG.log" "$RESULTS_DIR/logs/" 2>/dev/null || true
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/vmbridge-$TAG.log" 2>/dev/null | grep -E ' (WARN|ERROR) ' \
        >"$RESULTS_DIR/logs/vmbridge-$TAG.warn.log" || true
done
[[ -f "$SYNTH" ]] && cp "$SYNTH" "$RESULTS_DIR/scrape_path.json"
printf '%s\n%s\n' "$CMD" "$((RUNTIME_S / 60)) min $((RUNTIME_S % 60)) s" >"$RESULTS_DIR/run.txt"

# The document: the common title, this section, and compare.sh's section. A benchmarks.md
# written by an older compare.sh (no block markers) is rebuilt: its section is re-rendered
# from the results compare.sh saved in benches/results/compare.
if [[ -f "$OUT" ]] && ! grep -q '<!-- compare:begin -->' "$OUT"; then
    mv "$OUT" "$WORK/benchmarks.md.old"
fi
synth_args=()
[[ -f "$SYNTH" ]] && synth_args=(--synthetic "$SYNTH")
python3 "$PY" render --facts "$WORK/facts.json" --results "$RESULTS" --lab-facts "$LABFACTS" \
    --logs "$RESULTS_DIR/logs" "${synth_args[@]}" --out "$OUT" --command "$CMD" --runtime "$((RUNTIME_S / 60)) min $((RUNTIME_S % 60)) s" \
    --poll-seconds "$POLL" --stop-wait "$STOP_WAIT" --probe-timeout "$PROBE_TIMEOUT"
if ! grep -q '<!-- compare:begin -->' "$OUT" && [[ -f "$ROOT/benches/results/compare/results.jsonl" ]]; then
    python3 "$PY" splice-compare --facts "$ROOT/benches/results/compare/facts.json" \
        --results "$ROOT/benches/results/compare/results.jsonl" --out "$OUT" \
        --command "$(sed -n 1p "$ROOT/benches/results/compare/run.txt" 2>/dev/null || echo 'benches/compare.sh 20 60')" \
        --runtime "$(sed -n 2p "$ROOT/benches/results/compare/run.txt" 2>/dev/null || echo unknown)"
fi
python3 "$ROOT/benches/plot.py" --results "$RESULTS" "${synth_args[@]}" --out "$PLOT"
log "done in $RUNTIME_S s; report: $OUT, plot: $PLOT"
