#!/usr/bin/env bash
# launcher.sh - emulate KubeVirt virt-launcher pods on one machine, without Kubernetes:
# each "launcher" is a libvirtd in its own private mount (and network) namespace, the child of
# a process named virt-launcher (as virtqemud is virt-launcher's), with one transient TCG domain. From the host (hostPID) its sockets are reachable only
# through /proc/PID/root, exactly as vmbridge finds them on a KubeVirt node.
#
# Usage: launcher.sh <command> [args]
#   start NAME [DOMAIN]   start launcher NAME and one domain DOMAIN in it (default
#                         "launcher-NAME"; '_' allowed, e.g. kv-ns1_vm-a); stdout:
#                           pid PID
#                           uri qemu+unix:///system?socket=/proc/PID/root/var/run/libvirt/libvirt-sock
#                           domain DOMAIN
#                         (libvirt-sock-ro next to it is the read-only socket)
#   start-impostor NAME [DOMAIN]
#                         the same, but its libvirtd daemonizes instead of running under a
#                         virt-launcher process: what any pod could run (vmbridge rejects it)
#   start-namesake NAME [DOMAIN]
#                         the same, under a process named virt-launcher, but without
#                         KubeVirt's launcher layout (no virt-launcher command socket): what
#                         any pod could run too, with a launcher's names (vmbridge rejects it)
#   pid NAME              the launcher's libvirtd PID
#   stop-daemon NAME      SIGSTOP the launcher's libvirtd (a hung launcher)
#   cont-daemon NAME      SIGCONT it
#   kill NAME             destroy its domain (through its own socket), kill its libvirtd,
#                         virtlogd and any QEMU left of it, remove its files
#   list                  running launchers, "NAME PID" per line
#   down                  kill every launcher this script started
#
# Inside a launcher's namespace (start): KubeVirt's launcher layout, virt-launcher's command
# socket /run/kubevirt/sockets/launcher-sock (a private tmpfs on /run/kubevirt; a bound,
# unlistened socket: vmbridge only checks it is one) next to the daemon's /run/libvirt sockets.
# /var is a tmpfs re-binding the real /var's subdirs but with
# /var/run -> ../run RELATIVE (see INNER), private tmpfs on /run/libvirt and /var/lib/libvirt,
# bind mounts of LAUNCHER_DIR/etc on /etc/libvirt (own qemu.conf: root, no security
# driver, no cgroups) and LAUNCHER_DIR/log on /var/log/libvirt, and its own virtlogd.
# Only /var/cache/libvirt (QEMU capabilities cache) is shared with the host daemon.
# Files: ${VMB_LAB_DIR:-/var/lib/vmbridge-lab}/launchers/NAME/ (state, disk, domain.xml,
# libvirtd.log, log/qemu/DOMAIN.log, console.log, qga.sock).
# Environment: VMB_LAB_DIR, VMB_LAB_MEM_MIB (default 32).
set -euo pipefail

LAB_DIR="${VMB_LAB_DIR:-/var/lib/vmbridge-lab}"
readonly LAB_DIR
readonly LAUNCHERS_DIR="$LAB_DIR/launchers"
readonly MEM_MIB="${VMB_LAB_MEM_MIB:-32}"
readonly MARKER_NS="urn:vmbridge:launcher"
LAB_SH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lab.sh"
readonly LAB_SH
readonly SOCK_DIR="/var/run/libvirt"

log() { printf 'launcher: %s\n' "$*" >&2; }
die() { printf 'launcher: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
}

need_root() { [[ $EUID -eq 0 ]] || die "must run as root"; }

valid_name() { # WHAT NAME
    [[ "$2" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]] ||
        die "invalid $1 '$2' (allowed: [A-Za-z0-9][A-Za-z0-9_.-]{0,62})"
}

ldir() { echo "$LAUNCHERS_DIR/$1"; }
uri_rw() { echo "qemu+unix:///system?socket=/proc/$1/root$SOCK_DIR/libvirt-sock"; }
uri_ro() { echo "qemu+unix:///system?socket=/proc/$1/root$SOCK_DIR/libvirt-sock-ro"; }
now_s() { date +%s.%N; }

# with_name_lock NAME CMD... : run CMD holding an exclusive flock for launcher NAME.
# The fd is in LOCK_FD: daemons started under the lock must not inherit it.
LOCK_FD=""
with_name_lock() {
    local name=$1
    shift
    mkdir -p "$LAUNCHERS_DIR"
    exec {LOCK_FD}>>"$LAUNCHERS_DIR/.$name.lock"
    flock -w 120 "$LOCK_FD" || die "could not lock launcher $name within 120 s"
    local rc=0
    "$@" || rc=$?
    flock -u "$LOCK_FD"
    exec {LOCK_FD}>&-
    LOCK_FD=""
    return "$rc"
}

state_get() { # NAME KEY -> value from the launcher's state file
    local f
    f="$(ldir "$1")/state"
    [[ -r "$f" ]] || return 1
    awk -v k="$2" '$1 == k {sub(/^[^ ]+ /, ""); print; found=1} END {exit !found}' "$f"
}

# Is PID alive, with comm COMM, in mount namespace NS?
proc_is() { # PID COMM NS
    local pid=$1 comm=$2 ns=$3
    [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]] || return 1
    [[ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" == "$ns" ]]
}

# The launcher's libvirtd PID, if it is alive (recorded PID, right comm and namespace).
live_pid() { # NAME
    local pid ns
    pid=$(state_get "$1" pid) || return 1
    ns=$(state_get "$1" ns) || return 1
    proc_is "$pid" libvirtd "$ns" || return 1
    echo "$pid"
}

# --------------------------------------------------------------- start ----

ensure_tools() {
    local t missing=0
    for t in libvirtd virtlogd virsh qemu-img qemu-system-x86_64 unshare flock; do
        command -v "$t" >/dev/null || missing=1
    done
    if [[ $missing -eq 1 ]]; then
        log "tools missing: running $LAB_SH install"
        bash "$LAB_SH" install >&2 || die "lab.sh install failed"
    fi
}

write_private_etc() { # LDIR
    local d=$1
    mkdir -p "$d/etc/nwfilter" "$d/log/qemu"
    local f
    for f in libvirt.conf libvirt-admin.conf; do
        [[ -f "/etc/libvirt/$f" ]] && cp -f "/etc/libvirt/$f" "$d/etc/$f"
    done
    # Paths below are as seen inside the namespace (/var/log/libvirt = LDIR/log).
    cat >"$d/etc/qemu.conf" <<'EOF'
# private qemu.conf of a vmbridge launcher (integration/launcher.sh)
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
EOF
    # No polkit: a pod has no system D-Bus to ask it, so a launcher's daemon authorises a client
    # by its sockets' modes alone: read-only 0777, read-write 0700 (its owner only, as a
    # session-mode daemon's one socket). Debian's defaults (auth_unix_ro = "polkit", and then
    # both sockets 0777) would refuse every non-root client here ("Unable to get system bus
    # connection"); root clients never reach polkit.
    cat >"$d/etc/libvirtd.conf" <<'EOF'
# private libvirtd.conf of a vmbridge launcher (integration/launcher.sh)
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0700"
EOF
    cat >"$d/etc/virtlogd.conf" <<'EOF'
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
EOF
}

write_domain_xml() { # LDIR DOMAIN -> path of xml
    local d=$1 dom=$2
    if [[ ! -f "$d/disk.qcow2" ]]; then
        qemu-img create -q -f qcow2 "$d/disk.qcow2" 64M >&2 || die "qemu-img create failed"
    fi
    rm -f "$d/qga.sock" "$d/console.log"
    cat >"$d/domain.xml" <<EOF
<domain type='qemu'>
  <name>$dom</name>
  <metadata>
    <lab:launcher xmlns:lab='$MARKER_NS'><lab:dir>$d</lab:dir></lab:launcher>
  </metadata>
  <memory unit='MiB'>$MEM_MIB</memory>
  <currentMemory unit='MiB'>$MEM_MIB</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <boot dev='hd'/>
    <bios useserial='yes' rebootTimeout='-1'/>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$d/disk.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='ethernet'>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='$d/console.log'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='$d/qga.sock'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='virtio'>
      <stats period='5'/>
    </memballoon>
  </devices>
</domain>
EOF
    echo "$d/domain.xml"
}

# Runs inside the new namespaces (bash -c), args: LDIR. Everything it starts
# daemonizes; the namespaces live on in those daemons after this shell exits.
#
# /var itself is replaced by a tmpfs holding the real /var's subdirectories (rbind) and
# RELATIVE copies of its symlinks: on Debian /var/run -> /run is absolute, and an absolute
# symlink met while walking /proc/PID/root/var/run/... is resolved against the CALLER's
# root, so from the host that path would reach the HOST's /run/libvirt. With
# /var/run -> ../run the walk stays inside the launcher's root (as in the Fedora-based
# virt-launcher image, where /var/run -> ../run).
# shellcheck disable=SC2016 # expanded by the inner shell
readonly INNER='
set -eu
d=$1
mkdir -p /run/libvirt
mount -t tmpfs -o mode=0755 vmb-launcher-run /run/libvirt
stash=/run/libvirt/.var
mkdir "$stash"
mount --rbind /var "$stash"
mount -t tmpfs -o mode=0755 vmb-launcher-var /var
for e in "$stash"/* "$stash"/.[!.]*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    b=${e##*/}
    if [ -L "$e" ]; then
        t=$(readlink "$e")
        case $t in
            /*) ln -s "..$t" "/var/$b" ;;
            *) ln -s "$t" "/var/$b" ;;
        esac
    elif [ -d "$e" ]; then
        mkdir "/var/$b"
        mount --rbind "$e" "/var/$b"
    else
        touch "/var/$b"
        mount --bind "$e" "/var/$b"
    fi
done
umount -l "$stash"
rmdir "$stash"
mkdir -p /var/run/libvirt /var/lib/libvirt /var/log/libvirt /etc/libvirt
mount -t tmpfs -o mode=0755 vmb-launcher-lib /var/lib/libvirt
mount --bind "$d/etc" /etc/libvirt
mount --bind "$d/log" /var/log/libvirt
ip link set lo up 2>/dev/null || true
virtlogd -d -p "$d/virtlogd.pid"
if [ "${2:-launcher}" = launcher ]; then
    mkdir -p /run/kubevirt
    mount -t tmpfs -o mode=0755 vmb-launcher-kubevirt /run/kubevirt
    mkdir /run/kubevirt/sockets
    python3 -c "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])" \
        /run/kubevirt/sockets/launcher-sock
fi
if [ "${2:-launcher}" = impostor ]; then
    libvirtd -d -p "$d/libvirtd.pid"
else
    setsid "$d/virt-launcher" "$d" </dev/null >>"$d/daemon.log" 2>&1 &
fi
'

# Does /proc/PID/root/var/run/libvirt/libvirt-sock reach the launcher's own socket (and
# not, through some absolute symlink, the host daemon's)?
own_socket() { # PID
    local p="/proc/$1/root$SOCK_DIR/libvirt-sock" mine host
    mine=$(stat -L -c '%d:%i' "$p" 2>/dev/null) || return 1
    host=$(stat -L -c '%d:%i' "$SOCK_DIR/libvirt-sock" 2>/dev/null || true)
    [[ "$mine" != "$host" ]]
}

read_pidfile() { # FILE COMM NS -> pid (waits up to 10 s)
    local f=$1 comm=$2 ns=$3 pid i
    for i in $(seq 100); do
        pid=$(tr -dc '0-9' <"$f" 2>/dev/null || true)
        if proc_is "$pid" "$comm" "$ns"; then
            echo "$pid"
            return 0
        fi
        sleep 0.1
    done
    : "$i"
    return 1
}

cleanup_failed_start() { # NAME
    log "start of $1 failed; cleaning up (see $(ldir "$1")/*.log)"
    local keep
    keep=$(mktemp -d "/tmp/vmb-launcher-$1.XXXXXX")
    cp -a "$(ldir "$1")"/*.log "$(ldir "$1")/log" "$keep/" 2>/dev/null || true
    do_kill "$1" || true
    log "logs of the failed start kept in $keep"
}

_start() { # NAME DOMAIN
    local name=$1 dom=$2 d pid
    d=$(ldir "$name")
    if pid=$(live_pid "$name"); then
        local have
        have=$(state_get "$name" domain || true)
        [[ "$have" == "$dom" ]] || die "launcher $name already runs (pid $pid) with domain '$have'"
        log "launcher $name already running (pid $pid)"
        printf 'pid %s\nuri %s\ndomain %s\n' "$pid" "$(uri_rw "$pid")" "$dom"
        return 0
    fi
    if [[ -e "$d" ]]; then
        log "stale launcher dir $d: cleaning it first"
        do_kill "$name"
    fi
    local t0 selfns
    t0=$(now_s)
    selfns=$(readlink /proc/self/ns/mnt)
    mkdir -p "$d"
    write_private_etc "$d"
    local xml
    xml=$(write_domain_xml "$d" "$dom")
    # Record before starting: a crash half-way still leaves something for kill/down.
    printf 'name %s\ndomain %s\n' "$name" "$dom" >"$d/state"
    # KubeVirt's virt-launcher starts the daemon as its child; this stand-in (its comm is
    # "virt-launcher", the script's name) does the same, so the daemon passes vmbridge's
    # launcher trust check. An impostor (start-impostor) daemonizes instead: no such parent;
    # a namesake (start-namesake) has the parent but not KubeVirt's layout.
    cat >"$d/virt-launcher" <<'SCRIPT'
#!/bin/bash
libvirtd -p "$1/libvirtd.pid" &
wait
SCRIPT
    chmod +x "$d/virt-launcher"
    # No fd of ours may survive in the daemons (callers capture our stdout).
    if ! unshare --mount --net --propagation private -- bash -c "$INNER" inner "$d" "${VMB_LAUNCHER_KIND:-launcher}" \
        </dev/null >>"$d/daemon.log" 2>&1 {LOCK_FD}>&-; then
        cleanup_failed_start "$name"
        die "unshare/daemon start failed for $name (see $d/daemon.log)"
    fi
    local ns vlpid i
    # The daemon writes its pidfile once it is up (an impostor's `libvirtd -d` before returning).
    for i in $(seq 100); do
        pid=$(tr -dc '0-9' <"$d/libvirtd.pid" 2>/dev/null || true)
        ns=$(readlink "/proc/$pid/ns/mnt" 2>/dev/null || true)
        [[ -n "$ns" && "$ns" != "$selfns" ]] && break
        sleep 0.1
    done
    if [[ -z "$ns" || "$ns" == "$selfns" ]] || ! pid=$(read_pidfile "$d/libvirtd.pid" libvirtd "$ns"); then
        cleanup_failed_start "$name"
        die "libvirtd of $name did not start in its own mount namespace"
    fi
    vlpid=$(read_pidfile "$d/virtlogd.pid" virtlogd "$ns" || true)
    printf 'pid %s\nns %s\nnetns %s\nvirtlogd %s\nuri %s\nuri_ro %s\n' \
        "$pid" "$ns" "$(readlink "/proc/$pid/ns/net")" "${vlpid:-}" \
        "$(uri_rw "$pid")" "$(uri_ro "$pid")" >>"$d/state"
    if ! own_socket "$pid"; then
        cleanup_failed_start "$name"
        die "/proc/$pid/root$SOCK_DIR/libvirt-sock is missing or is the host daemon's socket"
    fi
    local i ok=0
    for i in $(seq 100); do
        if timeout 10 virsh -q -c "$(uri_rw "$pid")" version >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 0.2
    done
    if [[ $ok -eq 0 ]]; then
        cleanup_failed_start "$name"
        die "libvirtd of $name (pid $pid) does not answer on $(uri_rw "$pid")"
    fi
    local out
    if ! out=$(timeout 60 virsh -q -c "$(uri_rw "$pid")" create "$xml" 2>&1); then
        log "$out"
        cleanup_failed_start "$name"
        die "virsh create $dom failed in launcher $name"
    fi
    local st=""
    for i in $(seq 120); do
        st=$(timeout 10 virsh -q -c "$(uri_ro "$pid")" domstate "$dom" 2>/dev/null | sed '/^$/d' | head -n1 || true)
        [[ "$st" == running ]] && break
        sleep 0.25
    done
    if [[ "$st" != running ]]; then
        cleanup_failed_start "$name"
        die "domain $dom of launcher $name not running after 30 s (state '${st:-absent}')"
    fi
    awk -v a="$t0" -v b="$(now_s)" -v n="$name" -v p="$pid" -v dm="$dom" \
        'BEGIN {printf "launcher: %s: libvirtd pid %s, domain %s running, started in %.1f s\n", n, p, dm, b - a}' >&2
    printf 'pid %s\nuri %s\ndomain %s\n' "$pid" "$(uri_rw "$pid")" "$dom"
}

cmd_start() {
    local name=${1:-} dom
    [[ -n "$name" ]] || die "start: NAME required"
    valid_name "launcher name" "$name"
    dom=${2:-launcher-$name}
    valid_name "domain name" "$dom"
    need_root
    ensure_tools
    if [[ ! -S "$SOCK_DIR/libvirt-sock" ]]; then
        log "WARNING: the host libvirtd is not running; note that lab.sh finds daemons with" \
            "'pgrep -x libvirtd' and would mistake this launcher's libvirtd for the host's:" \
            "start the host lab (lab.sh up/add) before launchers"
    fi
    with_name_lock "$name" _start "$name" "$dom"
}

# ---------------------------------------------------------------- kill ----

# PIDs of QEMU processes started for launcher dir D (their command line names files in D).
qemu_pids_of() { # LDIR
    local d=$1 p
    for p in /proc/[0-9]*; do
        case "$(cat "$p/comm" 2>/dev/null)" in
            qemu-system-*) ;;
            *) continue ;;
        esac
        if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$d/"; then
            echo "${p#/proc/}"
        fi
    done
}

wait_gone() { # SECONDS PID...
    local t=$1 i p alive
    shift
    for i in $(seq $((t * 10))); do
        alive=0
        for p in "$@"; do [[ -d "/proc/$p" ]] && alive=1; done
        [[ $alive -eq 0 ]] && return 0
        sleep 0.1
    done
    : "$i"
    return 1
}

term_then_kill() { # GRACE WHAT PID...
    local grace=$1 what=$2 p
    shift 2
    [[ $# -gt 0 ]] || return 0
    for p in "$@"; do kill -CONT "$p" 2>/dev/null || true; kill -TERM "$p" 2>/dev/null || true; done
    if ! wait_gone "$grace" "$@"; then
        log "$what ($*) still alive ${grace} s after SIGTERM; SIGKILL"
        for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
        wait_gone 5 "$@" || log "WARNING: $what ($*) still alive after SIGKILL"
    fi
}

do_kill() { # NAME (caller holds the name lock)
    local name=$1 d pid ns dom vl daemons=()
    d=$(ldir "$name")
    [[ -d "$d" ]] || { log "launcher $name: nothing to kill"; return 0; }
    ns=$(state_get "$name" ns || true)
    dom=$(state_get "$name" domain || true)
    if pid=$(live_pid "$name"); then
        kill -CONT "$pid" 2>/dev/null || true
        if [[ -n "$dom" ]] && own_socket "$pid"; then
            log "$name: virsh destroy $dom (through pid $pid's socket)"
            timeout 15 virsh -q -c "$(uri_rw "$pid")" destroy "$dom" >/dev/null 2>&1 ||
                log "$name: virsh destroy $dom failed or timed out; killing QEMU directly"
        fi
        daemons+=("$pid")
    fi
    vl=$(state_get "$name" virtlogd || true)
    if [[ -n "$ns" ]] && proc_is "$vl" virtlogd "$ns"; then
        daemons+=("$vl")
    fi
    if [[ ${#daemons[@]} -gt 0 ]]; then
        log "$name: stopping libvirtd/virtlogd (${daemons[*]})"
        # Both take 3-5 s to exit on SIGTERM; their state is on the launcher's tmpfs,
        # so SIGKILL them after 1 s.
        term_then_kill 1 "daemons of $name" "${daemons[@]}"
    fi
    local q
    mapfile -t q < <(qemu_pids_of "$d")
    if [[ ${#q[@]} -gt 0 ]]; then
        log "$name: killing leftover QEMU ${q[*]}"
        term_then_kill 10 "QEMU of $name" "${q[@]}"
    fi
    rm -rf "$d" # the .NAME.lock file stays: removing a held lock file breaks flock
    log "$name: killed and removed"
}

cmd_kill() {
    local name=${1:-}
    [[ -n "$name" ]] || die "kill: NAME required"
    valid_name "launcher name" "$name"
    need_root
    with_name_lock "$name" do_kill "$name"
}

# ---------------------------------------------------------- small ones ----

cmd_pid() {
    local name=${1:-}
    [[ -n "$name" ]] || die "pid: NAME required"
    valid_name "launcher name" "$name"
    live_pid "$name" || die "launcher $name is not running"
}

cmd_signal() { # SIG NAME
    local sig=$1 name=${2:-} pid
    [[ -n "$name" ]] || die "NAME required"
    valid_name "launcher name" "$name"
    pid=$(live_pid "$name") || die "launcher $name is not running"
    log "kill -$sig $pid (libvirtd of launcher $name)"
    kill "-$sig" "$pid"
}

launcher_names() {
    local d
    [[ -d "$LAUNCHERS_DIR" ]] || return 0
    for d in "$LAUNCHERS_DIR"/*/; do
        [[ -d "$d" ]] || continue
        d=${d%/}
        echo "${d##*/}"
    done
}

cmd_list() {
    local name pid
    while IFS= read -r name; do
        if pid=$(live_pid "$name"); then echo "$name $pid"; fi
    done < <(launcher_names)
    return 0
}

cmd_down() {
    need_root
    local names=() name
    mapfile -t names < <(launcher_names)
    local pids=() failed=0 p
    for name in "${names[@]}"; do
        with_name_lock "$name" do_kill "$name" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || failed=1; done
    [[ $failed -eq 0 ]] || die "down: some launchers could not be removed"
    log "down: ${#names[@]} launchers removed"
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        start) cmd_start "$@" ;;
        start-impostor) VMB_LAUNCHER_KIND=impostor cmd_start "$@" ;;
        start-namesake) VMB_LAUNCHER_KIND=namesake cmd_start "$@" ;;
        pid) cmd_pid "$@" ;;
        stop-daemon) cmd_signal STOP "$@" ;;
        cont-daemon) cmd_signal CONT "$@" ;;
        kill) cmd_kill "$@" ;;
        list) cmd_list ;;
        down) cmd_down ;;
        -h | --help | help | "") usage ;;
        *) log "unknown command '$cmd'"; usage ;;
    esac
}

main "$@"
