#!/usr/bin/env bash
# lab.sh - a lab of REAL libvirtd + QEMU domains on this machine, for vmbridge
# integration tests (libvirtd, QEMU, a guest with qemu-guest-agent; see the README, "The lab").
#
# Usage: lab.sh <command> [args]
#   install               apt packages (only if missing), libvirt-qemu user/group,
#                         dirs, idempotent /etc/libvirt/qemu.conf edits
#   restart-libvirtd      restart the lab-started libvirtd (domains keep running)
#   owns-libvirtd         exit 0 (print its pid) if the lab started the running libvirtd,
#                         else say why not on stderr and exit 1
#   up N [PREFIX]         install, start virtlogd/libvirtd if not running, create
#                         domains PREFIX01..PREFIXNN (default prefix "lab_vm-": KubeVirt's
#                         <namespace>_<name>, so VMs vm-01.. of namespace lab);
#                         stdout: "uri qemu:///system" then one name per line
#   add NAME              create one lab domain (NAME may contain '_', e.g. ns1_vm-a)
#   add-guest NAME        create one lab domain running a real Linux guest with the real
#                         qemu-guest-agent (guest/build.sh image, own ext4 data disk vda);
#                         waits until guest-ping answers, boot-to-agent seconds on stderr
#   destroy NAME          destroy one lab domain and remove its files
#   pid NAME              print the QEMU pid of a domain
#   stop-vm NAME          SIGSTOP its QEMU process (a hung VM)
#   cont-vm NAME          SIGCONT its QEMU process
#   list                  names of running domains the lab created
#   down [PREFIX]         destroy lab domains (optionally only PREFIX*), then stop
#                         libvirtd/virtlogd if the lab started them and no domain is left
#   status                daemons and lab domains (diagnostic)
#
# Environment: VMB_LAB_DIR (default /var/lib/vmbridge-lab), VMB_LAB_BATCH (parallel
# creates per batch, default 10), VMB_LAB_MEM_MIB (default 32),
# VMB_LAB_MODE (up/add: how a plain lab domain runs, default boot):
#   boot    today's domain: its vCPU loops in SeaBIOS looking for a boot device (about 1 % of
#           a core under TCG, so 2 cores hold about 150);
#   paused  the same domain started with 'virsh create --paused': every device, libvirt's
#           stats, QMP and the agent channel work, the vCPU never runs;
#   halted  running, but its disk's boot sector is 'cli; hlt' (FA F4 EB FD, 0x55AA), so the
#           vCPU halts at once (collectd's virt plugin reads only the state of a domain that is
#           not running: comparisons need this mode, not paused);
# VMB_LAB_AGENT=0 (up/add): no guest-agent channel (the qga source then sees no agent).
# up takes N up to 500; down destroys many domains in parallel (VMB_LAB_BATCH at least 32).
# Domains are transient, TCG (type='qemu', never kvm), q35, 1 vCPU, qcow2 virtio
# disk, <interface type='ethernet'> (libvirt-created tap), both with KubeVirt's user aliases
# (ua-rootdisk, ua-default; name a domain <namespace>_<name> for KubeVirt's naming), virtio balloon with
# stats period 5 s, a guest-agent channel LABDIR/NAME.qga (no agent answers: a hung
# agent) and a second direct QMP monitor LABDIR/NAME.qmp.
# add-guest domains: the same but VMB_GUEST_MEM_MIB (default 128), balloon stats period
# 2 s (VMB_GUEST_STATS_PERIOD), extra kernel words VMB_GUEST_CMDLINE, direct kernel boot
# of LABDIR/guest/{kernel,initramfs.cpio.gz}, vda = an ext4 data
# disk, and a real agent on the channel; VMB_GUEST_BOOT_TIMEOUT (default 90 s) bounds
# the wait for guest-ping. VMB_GUEST_DRIVE_DISKS=1: two more virtio disks with serials and
# KubeVirt user aliases (ua-datadisk serial vmb-datadisk, ua-logdisk serial vmb-logdisk),
# each a small ext4 image made on the host; the guest's /init mounts them by serial on
# /data and /logs (the filesystem-to-drive join's test).
set -euo pipefail

readonly URI="qemu:///system"
LAB_DIR="${VMB_LAB_DIR:-/var/lib/vmbridge-lab}"
readonly LAB_DIR
readonly STATE_DIR="$LAB_DIR/state"
readonly VMS_DIR="$LAB_DIR/vms"
readonly DOMAINS_FILE="$STATE_DIR/domains"
readonly DAEMONS_FILE="$STATE_DIR/daemons"
readonly LOCK_FILE="$STATE_DIR/lock"
readonly BATCH="${VMB_LAB_BATCH:-10}"
readonly MEM_MIB="${VMB_LAB_MEM_MIB:-32}"
readonly MODE="${VMB_LAB_MODE:-boot}"
readonly AGENT="${VMB_LAB_AGENT:-1}"
readonly GUEST_MEM_MIB="${VMB_GUEST_MEM_MIB:-128}"
readonly GUEST_BOOT_TIMEOUT="${VMB_GUEST_BOOT_TIMEOUT:-90}"
# add-guest: extra kernel command line words for the guest's /init (e.g.
# vmb.agent_stop_after=20), and the balloon stats period (0: the guest never refreshes them).
readonly GUEST_CMDLINE="${VMB_GUEST_CMDLINE:-}"
readonly GUEST_STATS_PERIOD="${VMB_GUEST_STATS_PERIOD:-2}"
readonly GUEST_DRIVE_DISKS="${VMB_GUEST_DRIVE_DISKS:-0}"
GUEST_BUILD="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/guest/build.sh"
readonly GUEST_BUILD
readonly DEFAULT_PREFIX="lab_vm-"
readonly QEMU_CONF="/etc/libvirt/qemu.conf"
readonly LIBVIRTD_CONF="/etc/libvirt/libvirtd.conf"
readonly QEMU_RUN_DIR="/var/run/libvirt/qemu"
readonly MARKER_NS="urn:vmbridge:lab"
# shellcheck source=integration/apt.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/apt.sh"
readonly PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
    pkg-config qemu-system-x86 qemu-utils qemu-guest-agent e2fsprogs)

log() { printf 'lab: %s\n' "$*" >&2; }
die() { printf 'lab: ERROR: %s\n' "$*" >&2; exit 1; }
virsh_() { virsh -q -c "$URI" "$@"; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
}

need_root() { [[ $EUID -eq 0 ]] || die "must run as root"; }

valid_name() {
    [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]] ||
        die "invalid domain name '$1' (allowed: [A-Za-z0-9][A-Za-z0-9_.-]{0,62})"
}

# ---------------------------------------------------------------- state ----

init_state() {
    mkdir -p "$STATE_DIR" "$VMS_DIR"
    touch "$DOMAINS_FILE" "$DAEMONS_FILE" "$LOCK_FILE"
}

# with_lock CMD... : run CMD under an exclusive flock on the state lock file.
# Only short state-file updates run under it, never slow virsh calls.
with_lock() { with_lock_file "$LOCK_FILE" "$@"; }

with_lock_file() { # LOCKFILE CMD...
    local fd lockfile=$1
    shift
    exec {fd}>>"$lockfile"
    flock -w 60 "$fd" || die "could not lock $lockfile within 60 s"
    local rc=0
    "$@" || rc=$?
    flock -u "$fd"
    exec {fd}>&-
    return "$rc"
}

_file_add_line() { # FILE LINE
    grep -qxF -- "$2" "$1" 2>/dev/null || printf '%s\n' "$2" >>"$1"
}
_file_del_line() { # FILE LINE
    local tmp
    tmp=$(mktemp "$1.XXXXXX")
    grep -vxF -- "$2" "$1" >"$tmp" || true
    mv -f "$tmp" "$1"
}
state_add_domain() { with_lock _file_add_line "$DOMAINS_FILE" "$1"; }
state_del_domain() { with_lock _file_del_line "$DOMAINS_FILE" "$1"; }
state_has_domain() { grep -qxF -- "$1" "$DOMAINS_FILE" 2>/dev/null; }
state_domains() { cat "$DOMAINS_FILE" 2>/dev/null || true; }

# ------------------------------------------------------------- install ----

pkg_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" == "ii " ]]
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "packages: all present"
        return 0
    fi
    log "packages missing: ${missing[*]}"
    # The QEMU packages are pinned by release, never by version string: the machine's
    # lists may be older than the archive, and a rebuilt package (+b2 -> +b3) 404s.
    # A qemu-utils from <release>-backports (10.x, preinstalled on some images)
    # Breaks qemu-system-common < 8.0, so it goes back to the release's version.
    local rel want=() w
    rel=$(apt_release)
    for w in "${missing[@]}"; do
        case $w in
        qemu-*) want+=("$w/$rel") ;;
        *) want+=("$w") ;;
        esac
    done
    if ! pkg_installed qemu-system-x86 && pkg_installed qemu-utils &&
        [[ "$(dpkg-query -W -f='${Version}' qemu-utils)" == *bpo* ]]; then
        log "qemu-utils $(dpkg-query -W -f='${Version}' qemu-utils) is from backports and breaks qemu-system-x86: installing qemu-utils/$rel"
        [[ " ${want[*]} " == *" qemu-utils/$rel "* ]] || want+=("qemu-utils/$rel")
    fi
    apt_install "${want[@]}" || die "apt-get install ${want[*]} failed"
}

ensure_user() {
    if ! getent group libvirt-qemu >/dev/null; then
        log "groupadd -r libvirt-qemu"
        groupadd -r libvirt-qemu
    fi
    if ! getent passwd libvirt-qemu >/dev/null; then
        log "useradd -r -g libvirt-qemu libvirt-qemu"
        useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
    fi
}

# Set 'key = value' in a libvirt config FILE: comment out other active settings of the key,
# keep exactly one active line. Returns 0 if the file changed.
conf_set() { # FILE KEY VALUE
    local file=$1 key=$2 value=$3 want
    want="$key = $value"
    if [[ "$(grep -cE "^[[:space:]]*${key}[[:space:]]*=" "$file")" == 1 ]] &&
        grep -qxF -- "$want" "$file"; then
        return 1
    fi
    log "$(basename "$file"): $want"
    sed -i -E "s|^([[:space:]]*${key}[[:space:]]*=.*)$|#vmblab# \\1|" "$file"
    printf '%s\n' "$want" >>"$file"
    return 0
}

# A config file libvirt-daemon-system would ship (the lab does not install it): created empty,
# so libvirtd otherwise keeps its built-in defaults.
conf_file() { # FILE
    if [[ ! -f "$1" ]]; then
        log "creating $1"
        mkdir -p "$(dirname "$1")"
        printf '# created by vmbridge integration/lab.sh\n' >"$1"
    fi
}

configure_qemu_conf() {
    conf_file "$QEMU_CONF"
    local changed=0
    conf_set "$QEMU_CONF" user '"root"' && changed=1
    conf_set "$QEMU_CONF" group '"root"' && changed=1
    conf_set "$QEMU_CONF" dynamic_ownership 0 && changed=1
    conf_set "$QEMU_CONF" security_driver '"none"' && changed=1
    conf_set "$QEMU_CONF" cgroup_controllers '[ ]' && changed=1
    if [[ $changed -eq 0 ]]; then
        log "qemu.conf: already configured"
    elif pgrep -x libvirtd >/dev/null; then
        log "WARNING: libvirtd is already running; it reads qemu.conf only at start"
    fi
}

# The sockets as Debian's libvirt-daemon-system sets them up: the read-only socket open to
# every local user, the read-write one to group libvirt. Debian leaves the access check to
# polkit, whose rules grant exactly that; the lab runs no D-Bus/polkit, so it says "none" and
# lets the socket permissions decide. Non-root clients (the .deb's vmbridge user) need this.
configure_libvirtd_conf() {
    if ! getent group libvirt >/dev/null; then
        log "groupadd -r libvirt"
        groupadd -r libvirt
    fi
    conf_file "$LIBVIRTD_CONF"
    local changed=0
    conf_set "$LIBVIRTD_CONF" unix_sock_group '"libvirt"' && changed=1
    conf_set "$LIBVIRTD_CONF" unix_sock_ro_perms '"0777"' && changed=1
    conf_set "$LIBVIRTD_CONF" unix_sock_rw_perms '"0770"' && changed=1
    conf_set "$LIBVIRTD_CONF" auth_unix_ro '"none"' && changed=1
    conf_set "$LIBVIRTD_CONF" auth_unix_rw '"none"' && changed=1
    if [[ $changed -eq 0 ]]; then
        log "libvirtd.conf: already configured"
    elif pgrep -x libvirtd >/dev/null; then
        log "WARNING: libvirtd is already running; it reads libvirtd.conf only at start"
    fi
}

cmd_install() {
    need_root
    local t0=$SECONDS
    install_packages
    ensure_user
    mkdir -p /var/log/libvirt /var/run/libvirt "$LAB_DIR"
    configure_qemu_conf
    configure_libvirtd_conf
    init_state
    log "install done in $((SECONDS - t0)) s"
}

# ------------------------------------------------------------- daemons ----

daemon_pid() { # NAME -> pid of a running daemon of that name, from its pidfile or pgrep
    local name=$1 f pid
    for f in "/run/$name.pid" "/var/run/$name.pid"; do
        if [[ -r "$f" ]]; then
            pid=$(<"$f")
            if [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]; then
                echo "$pid"
                return 0
            fi
        fi
    done
    pgrep -x -o "$name" 2>/dev/null
}

start_daemon() { # NAME
    local name=$1 pid i
    if pid=$(daemon_pid "$name"); then
        log "$name already running (pid $pid), not started by this call"
        return 0
    fi
    log "starting $name -d"
    "$name" -d || die "$name -d failed"
    for i in $(seq 50); do
        pid=$(daemon_pid "$name") && break
        sleep 0.1
    done
    [[ -n "${pid:-}" ]] || die "$name did not start"
    with_lock _file_add_line "$DAEMONS_FILE" "$name $pid"
    log "$name started (pid $pid), recorded in $DAEMONS_FILE"
    : "$i"
}

wait_libvirt() {
    local i
    for i in $(seq 60); do
        if virsh_ list >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    die "libvirtd does not answer 'virsh -c $URI list' after 30 s (see /var/log/libvirt)"
}

_ensure_daemons() {
    start_daemon virtlogd
    start_daemon libvirtd
    wait_libvirt
}

# Serialised on its own lock so two concurrent 'add's do not both start libvirtd.
ensure_daemons() {
    init_state
    with_lock_file "$STATE_DIR/daemons.lock" _ensure_daemons
    log "libvirtd answers on $URI"
}

# Stop the daemons the lab started, if no domain at all is left.
stop_daemons_if_ours() {
    [[ -s "$DAEMONS_FILE" ]] || { log "no daemons started by the lab; leaving them"; return 0; }
    if pgrep -x libvirtd >/dev/null; then
        local left
        left=$(virsh -c "$URI" list --all --name 2>/dev/null | sed '/^$/d' || true)
        if [[ -n "$left" ]]; then
            log "domains still present ($(echo "$left" | paste -sd' ')); not stopping daemons"
            return 0
        fi
    fi
    local name pid
    for name in libvirtd virtlogd; do
        pid=$(awk -v n="$name" '$1 == n {print $2}' "$DAEMONS_FILE" | tail -n1)
        [[ -n "$pid" ]] || continue
        if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]; then
            log "stopping $name (pid $pid, started by the lab)"
            kill -TERM "$pid" 2>/dev/null || true
            local i
            for i in $(seq 100); do
                [[ -d "/proc/$pid" ]] || break
                sleep 0.1
            done
            if [[ -d "/proc/$pid" ]]; then
                log "$name (pid $pid) ignored SIGTERM for 10 s; SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        else
            log "$name pid $pid recorded but gone"
        fi
        with_lock _file_del_line "$DAEMONS_FILE" "$name $pid"
    done
}

# ------------------------------------------------------------- domains ----

dom_dir() { echo "$VMS_DIR/$1"; }

# A 1 MiB raw disk whose boot sector halts the vCPU: cli; hlt; jmp back to hlt; 0x55AA.
# Made once per lab dir; each halted domain gets a copy.
halt_image() {
    local img="$LAB_DIR/halt-template.img"
    if [[ ! -s "$img" ]]; then
        truncate -s 1M "$img.tmp"
        printf '\xfa\xf4\xeb\xfd' | dd of="$img.tmp" conv=notrunc status=none
        printf '\x55\xaa' | dd of="$img.tmp" bs=1 seek=510 conv=notrunc status=none
        mv -f "$img.tmp" "$img"
    fi
    echo "$img"
}

write_domain_xml() { # NAME -> path of xml
    local name=$1 dir
    dir=$(dom_dir "$name")
    mkdir -p "$dir"
    local disk="$dir/disk.qcow2" format=qcow2 channel=""
    if [[ "$MODE" == halted ]]; then
        disk="$dir/halt.img"
        format=raw
        [[ -f "$disk" ]] || cp "$(halt_image)" "$disk"
    elif [[ ! -f "$disk" ]]; then
        qemu-img create -q -f qcow2 "$disk" 64M >&2 || die "qemu-img create failed for $name"
    fi
    if [[ "$AGENT" != 0 ]]; then
        channel="<channel type='unix'>
      <source mode='bind' path='$LAB_DIR/$name.qga'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>"
    fi
    rm -f "$LAB_DIR/$name.qga" "$LAB_DIR/$name.qmp"
    cat >"$dir/domain.xml" <<EOF
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$name</name>
  <metadata>
    <lab:lab xmlns:lab='$MARKER_NS'><lab:dir>$LAB_DIR</lab:dir><lab:mode>$MODE</lab:mode></lab:lab>
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
      <driver name='qemu' type='$format'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
      <alias name='ua-rootdisk'/>
    </disk>
    <interface type='ethernet'>
      <model type='virtio'/>
      <alias name='ua-default'/>
    </interface>
    <serial type='file'>
      <source path='$dir/console.log'/>
      <target port='0'/>
    </serial>
    $channel
    <memballoon model='virtio'>
      <stats period='5'/>
    </memballoon>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-qmp'/>
    <qemu:arg value='unix:$LAB_DIR/$name.qmp,server=on,wait=off'/>
  </qemu:commandline>
</domain>
EOF
    echo "$dir/domain.xml"
}

# A lab domain running the real guest (guest/build.sh): kernel and initramfs from
# GUEST_KERNEL / GUEST_INITRD, a fresh 32 MiB ext4 data disk as vda.
write_guest_domain_xml() { # NAME -> path of xml
    local name=$1 dir
    dir=$(dom_dir "$name")
    mkdir -p "$dir"
    if [[ ! -f "$dir/data.raw" ]]; then
        truncate -s 32M "$dir/data.raw.tmp"
        mkfs.ext4 -q -F -L vmbdata "$dir/data.raw.tmp" >&2 || die "mkfs.ext4 failed for $name"
        mv -f "$dir/data.raw.tmp" "$dir/data.raw"
    fi
    rm -f "$LAB_DIR/$name.qga" "$LAB_DIR/$name.qmp" "$dir/console.log"
    cat >"$dir/domain.xml" <<EOF
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$name</name>
  <metadata>
    <lab:lab xmlns:lab='$MARKER_NS'><lab:dir>$LAB_DIR</lab:dir><lab:kind>guest</lab:kind></lab:lab>
  </metadata>
  <memory unit='MiB'>$GUEST_MEM_MIB</memory>
  <currentMemory unit='MiB'>$GUEST_MEM_MIB</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$GUEST_KERNEL</kernel>
    <initrd>$GUEST_INITRD</initrd>
    <cmdline>console=ttyS0 vmb.hostname=$name${GUEST_CMDLINE:+ $GUEST_CMDLINE}</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$dir/data.raw'/>
      <target dev='vda' bus='virtio'/>
      <alias name='ua-rootdisk'/>
    </disk>
$(guest_drive_disks "$dir")
    <interface type='ethernet'>
      <model type='virtio'/>
      <alias name='ua-default'/>
    </interface>
    <serial type='file'>
      <source path='$dir/console.log'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='$LAB_DIR/$name.qga'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='virtio'>
      <stats period='$GUEST_STATS_PERIOD'/>
    </memballoon>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-qmp'/>
    <qemu:arg value='unix:$LAB_DIR/$name.qmp,server=on,wait=off'/>
$(guest_extra_args)
  </qemu:commandline>
</domain>
EOF
    echo "$dir/domain.xml"
}

dom_exists() { virsh -c "$URI" domid "$1" >/dev/null 2>&1; }

# Is the existing libvirt domain NAME one of ours (marker in its live XML)?
dom_is_ours() {
    local f="$QEMU_RUN_DIR/$1.xml"
    if [[ -r "$f" ]]; then
        grep -qF "$MARKER_NS" "$f"
    else
        virsh -c "$URI" dumpxml "$1" 2>/dev/null | grep -qF "$MARKER_NS"
    fi
}

dom_state() { virsh -c "$URI" domstate "$1" 2>/dev/null | sed '/^$/d' | head -n1; }

# Create one domain (no wait). Safe to run in parallel for different names.
create_one() { # NAME [XML-WRITER, default write_domain_xml]
    local name=$1 writer=${2:-write_domain_xml} xml
    if dom_exists "$name"; then
        if dom_is_ours "$name"; then
            state_add_domain "$name"
            log "$name already exists (lab domain)"
            return 0
        fi
        die "domain $name exists and was not created by the lab; refusing"
    fi
    xml=$("$writer" "$name")
    state_add_domain "$name" # record before creating: a crash leaves it tracked
    log "virsh create $xml"
    local out
    local paused=()
    [[ "$MODE" == paused && "$writer" == write_domain_xml ]] && paused=(--paused)
    if ! out=$(virsh -c "$URI" create "$xml" "${paused[@]}" 2>&1); then
        log "$out"
        if dom_exists "$name" && dom_is_ours "$name"; then
            return 0 # lost a race with another creator of the same name
        fi
        state_del_domain "$name"
        die "virsh create failed for $name"
    fi
}

wait_running() { # NAME...
    local name i st
    for name in "$@"; do
        st=""
        for i in $(seq 120); do
            st=$(dom_state "$name" || true)
            [[ "$st" == running || ( "$MODE" == paused && "$st" == paused ) ]] && break
            sleep 0.25
        done
        [[ "$st" == running || ( "$MODE" == paused && "$st" == paused ) ]] || die "domain $name is not running after 30 s (state: '${st:-absent}'); see $(dom_dir "$name")/console.log and /var/log/libvirt/qemu/$name.log"
    done
    : "$i"
}

destroy_one() { # NAME [forget-foreign]
    local name=$1 mode=${2:-} pid
    if dom_exists "$name"; then
        if ! dom_is_ours "$name"; then
            if [[ "$mode" == forget-foreign ]]; then
                log "WARNING: domain $name is tracked but was not created by the lab (no $MARKER_NS marker); not destroying it, forgetting the stale entry"
                state_del_domain "$name"
                return 0
            fi
            die "domain $name was not created by the lab; refusing to destroy it"
        fi
        if pid=$(qemu_pid "$name" 2>/dev/null); then
            kill -CONT "$pid" 2>/dev/null || true
        fi
        log "virsh destroy $name"
        local out
        if ! out=$(virsh -c "$URI" destroy "$name" 2>&1); then
            dom_exists "$name" && die "virsh destroy $name failed: $out"
        fi
    else
        log "$name is not running"
    fi
    rm -rf "$(dom_dir "$name")"
    rm -f "$LAB_DIR/$name.qga" "$LAB_DIR/$name.qmp"
    state_del_domain "$name"
}

qemu_pid() { # NAME
    local name=$1 f="$QEMU_RUN_DIR/$1.pid" pid
    if [[ -r "$f" ]]; then
        pid=$(tr -dc '0-9' <"$f")
    fi
    if [[ -z "${pid:-}" ]]; then
        # fall back to the QEMU process carrying -name guest=NAME
        pid=$(pgrep -f -o -- "-name guest=$name," 2>/dev/null || true)
    fi
    [[ -n "${pid:-}" && -d "/proc/$pid" ]] || { log "no QEMU process for domain $name"; return 1; }
    echo "$pid"
}

# ------------------------------------------------------------ commands ----

cmd_up() {
    local n=${1:-} prefix=${2:-$DEFAULT_PREFIX}
    [[ "$n" =~ ^[0-9]+$ && "$n" -ge 1 && "$n" -le 500 ]] || die "up: N must be 1..500"
    case "$MODE" in boot | paused | halted) ;; *) die "VMB_LAB_MODE must be boot, paused or halted, not '$MODE'" ;; esac
    local t0=$SECONDS
    cmd_install
    ensure_daemons
    local names=() i
    for i in $(seq 1 "$n"); do
        names+=("$(printf '%s%02d' "$prefix" "$i")")
    done
    valid_name "${names[0]}"
    local start=0 pids=() failed=0
    while [[ $start -lt ${#names[@]} ]]; do
        pids=()
        for name in "${names[@]:start:BATCH}"; do
            create_one "$name" &
            pids+=($!)
        done
        for i in "${pids[@]}"; do
            wait "$i" || failed=1
        done
        start=$((start + BATCH))
    done
    [[ $failed -eq 0 ]] || die "some domains failed to start"
    wait_running "${names[@]}"
    log "up: ${#names[@]} domains running in $((SECONDS - t0)) s"
    echo "uri $URI"
    printf '%s\n' "${names[@]}"
}

cmd_add() {
    local name=${1:-}
    [[ -n "$name" ]] || die "add: NAME required"
    valid_name "$name"
    need_root
    init_state
    ensure_daemons
    create_one "$name"
    wait_running "$name"
    log "$name running"
}

now_s() { date +%s.%N; }

# Wait until the guest agent of NAME answers guest-ping; T0 = creation time (now_s).
wait_agent() { # NAME T0
    local name=$1 t0=$2 deadline out
    deadline=$((SECONDS + GUEST_BOOT_TIMEOUT))
    while :; do
        if out=$(virsh -c "$URI" qemu-agent-command --timeout 5 "$name" \
            '{"execute":"guest-ping"}' 2>&1); then
            break
        fi
        if [[ "$(dom_state "$name" || true)" != running ]]; then
            die "$name is no longer running while waiting for its agent; see $(dom_dir "$name")/console.log"
        fi
        if [[ $SECONDS -ge $deadline ]]; then
            log "last answer: $out"
            tail -n 20 "$(dom_dir "$name")/console.log" >&2 2>/dev/null || true
            die "agent of $name did not answer guest-ping within ${GUEST_BOOT_TIMEOUT} s (VMB_GUEST_BOOT_TIMEOUT); domain left running, remove it with: lab.sh destroy $name"
        fi
        sleep 0.5
    done
    awk -v a="$t0" -v b="$(now_s)" -v n="$name" \
        'BEGIN {printf "lab: %s: boot-to-agent %.1f s (virsh create to first guest-ping answer)\n", n, b - a}' >&2
}

# VMB_GUEST_DRIVE_DISKS=1: the <disk> elements of datadisk (vdb) and logdisk (vdc), each a
# fresh 16 MiB ext4 image in DIR carrying a <serial> and a KubeVirt user alias, as
# virt-launcher writes a VMI's PVC disks.
guest_drive_disks() { # DIR
    [[ "$GUEST_DRIVE_DISKS" == 1 ]] || return 0
    local dir=$1 disk target
    for disk in datadisk:vdb logdisk:vdc; do
        target=${disk#*:}
        disk=${disk%:*}
        if [[ ! -f "$dir/$disk.raw" ]]; then
            truncate -s 16M "$dir/$disk.raw.tmp"
            mke2fs -q -F -t ext4 -L "$disk" "$dir/$disk.raw.tmp" >&2 || die "mke2fs failed for $disk"
            mv -f "$dir/$disk.raw.tmp" "$dir/$disk.raw"
        fi
        cat <<XML
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$dir/$disk.raw'/>
      <target dev='$target' bus='virtio'/>
      <serial>vmb-$disk</serial>
      <alias name='ua-$disk'/>
    </disk>
XML
    done
}

# VMB_GUEST_ERROR_DISK=1: add:guest gets a second disk whose every read fails (a blkdebug
# rule over a small raw image), so tests can provoke real guest block I/O errors.
guest_extra_args() {
    [[ "${VMB_GUEST_ERROR_DISK:-0}" == 1 ]] || return 0
    local dir
    dir=$(dom_dir "$name")
    # blkdebug sits between qcow2 and the file: the qcow2 driver raises read_aio on its file
    # child when it reads allocated data, so every cluster is written first.
    qemu-img create -q -f qcow2 "$dir/errdisk.qcow2" 4M
    qemu-io -f qcow2 -c 'write 0 4M' "$dir/errdisk.qcow2" >/dev/null
    printf '[inject-error]\nevent = "read_aio"\nerrno = "5"\n' > "$dir/blkdebug.conf"
    cat <<XML
    <qemu:arg value='-blockdev'/>
    <qemu:arg value='{"driver":"qcow2","node-name":"errdisk","file":{"driver":"blkdebug","config":"$dir/blkdebug.conf","image":{"driver":"file","filename":"$dir/errdisk.qcow2"}}}'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-blk-pci,drive=errdisk,id=errdisk,serial=vmbridge-errdisk,bus=pcie.0,addr=0x1e'/>
XML
}

cmd_add_guest() {
    local name=${1:-}
    [[ -n "$name" ]] || die "add-guest: NAME required"
    valid_name "$name"
    need_root
    init_state
    [[ "$GUEST_BOOT_TIMEOUT" =~ ^[0-9]+$ ]] || die "VMB_GUEST_BOOT_TIMEOUT must be whole seconds"
    [[ "$GUEST_STATS_PERIOD" =~ ^[0-9]+$ ]] || die "VMB_GUEST_STATS_PERIOD must be whole seconds"
    [[ "$GUEST_DRIVE_DISKS" =~ ^[01]$ ]] || die "VMB_GUEST_DRIVE_DISKS must be 0 or 1"
    [[ "$GUEST_CMDLINE" =~ ^[A-Za-z0-9._=/\ -]*$ ]] || die "VMB_GUEST_CMDLINE: letters, digits, . _ = / - and spaces only"
    local paths
    paths=$(VMB_LAB_DIR="$LAB_DIR" bash "$GUEST_BUILD") || die "guest image build failed ($GUEST_BUILD)"
    GUEST_KERNEL=$(sed -n 1p <<<"$paths")
    GUEST_INITRD=$(sed -n 2p <<<"$paths")
    [[ -s "$GUEST_KERNEL" && -s "$GUEST_INITRD" ]] || die "guest image missing: $paths"
    ensure_daemons
    local t0
    t0=$(now_s)
    create_one "$name" write_guest_domain_xml
    wait_running "$name"
    wait_agent "$name" "$t0"
}

cmd_destroy() {
    local name=${1:-}
    [[ -n "$name" ]] || die "destroy: NAME required"
    valid_name "$name"
    need_root
    init_state
    if ! pgrep -x libvirtd >/dev/null; then
        state_has_domain "$name" && state_del_domain "$name"
        log "libvirtd not running; $name is gone"
        rm -rf "$(dom_dir "$name")"
        return 0
    fi
    if ! state_has_domain "$name" && dom_exists "$name"; then
        die "domain $name is not tracked by the lab ($DOMAINS_FILE); refusing"
    fi
    destroy_one "$name"
}

cmd_pid() {
    local name=${1:-}
    [[ -n "$name" ]] || die "pid: NAME required"
    qemu_pid "$name" || exit 1
}

cmd_signal() { # SIG NAME
    local sig=$1 name=${2:-} pid
    [[ -n "$name" ]] || die "NAME required"
    state_has_domain "$name" || die "$name is not a lab domain"
    pid=$(qemu_pid "$name") || exit 1
    log "kill -$sig $pid ($name)"
    kill "-$sig" "$pid"
}

# Restart the host libvirtd (only one the lab started): domains keep running, libvirtd
# reconnects to them on start. For the fault-matrix test.
cmd_restart_libvirtd() {
    need_root
    init_state
    local pid i
    pid=$(daemon_pid libvirtd) || die "libvirtd is not running"
    grep -qx "libvirtd $pid" "$DAEMONS_FILE" 2>/dev/null || die "libvirtd (pid $pid) was not started by the lab; not restarting it"
    log "restarting libvirtd (pid $pid)"
    kill -TERM "$pid"
    for i in $(seq 100); do
        [[ -d "/proc/$pid" ]] || break
        sleep 0.1
    done
    [[ -d "/proc/$pid" ]] && kill -KILL "$pid"
    with_lock_file "$STATE_DIR/daemons.lock" _ensure_daemons
    : "$i"
}

cmd_owns_libvirtd() { # exit 0 when the lab started the running libvirtd (it may restart it)
    init_state
    local pid
    pid=$(daemon_pid libvirtd) || die "libvirtd is not running"
    grep -qx "libvirtd $pid" "$DAEMONS_FILE" 2>/dev/null ||
        die "libvirtd (pid $pid) was not started by the lab; restarting it could disturb its other users"
    echo "$pid"
}

cmd_list() {
    init_state
    pgrep -x libvirtd >/dev/null || return 0
    local running name
    running=$(virsh -c "$URI" list --name 2>/dev/null || true)
    while IFS= read -r name; do
        [[ -n "$name" ]] || continue
        grep -qxF -- "$name" <<<"$running" && echo "$name"
    done < <(state_domains)
    return 0
}

# SIGKILL the QEMU of each named lab domain (only those whose live XML carries the lab's
# marker), then wait up to 60 s for libvirtd to stop listing them.
kill_ours() { # NAME...
    local name pid killed=() f
    for name in "$@"; do
        f="$QEMU_RUN_DIR/$name.xml"
        [[ -r "$f" ]] && grep -qF "$MARKER_NS" "$f" || continue
        pid=$(tr -dc '0-9' <"$QEMU_RUN_DIR/$name.pid" 2>/dev/null) || continue
        [[ -n "$pid" && -d "/proc/$pid" ]] || continue
        kill -KILL "$pid" 2>/dev/null && killed+=("$name")
    done
    log "killed ${#killed[@]} lab QEMUs; waiting for libvirtd to reap them"
    local i listed left
    for i in $(seq 120); do
        listed=$(virsh -c "$URI" list --name 2>/dev/null || true)
        left=0
        for name in "${killed[@]}"; do
            grep -qxF -- "$name" <<<"$listed" && left=$((left + 1))
        done
        [[ $left -eq 0 ]] && break
        sleep 0.5
    done
    : "$i"
}

cmd_down() {
    local prefix=${1:-} t0=$SECONDS
    need_root
    init_state
    local names=() name
    while IFS= read -r name; do
        [[ -n "$name" ]] || continue
        [[ -z "$prefix" || "$name" == "$prefix"* ]] && names+=("$name")
    done < <(state_domains)
    if ! pgrep -x libvirtd >/dev/null; then
        log "libvirtd not running; forgetting ${#names[@]} tracked domains"
        for name in "${names[@]}"; do
            rm -rf "$(dom_dir "$name")"
            rm -f "$LAB_DIR/$name.qga" "$LAB_DIR/$name.qmp"
            state_del_domain "$name"
        done
    else
        # SIGCONT everything first so no destroy waits on a stopped QEMU
        local pid
        for name in "${names[@]}"; do
            if pid=$(qemu_pid "$name" 2>/dev/null); then kill -CONT "$pid" 2>/dev/null || true; fi
        done
        # Many domains: 'virsh destroy' one by one slows as libvirtd holds more (about 6 s each
        # with hundreds up). Killing the QEMUs of the lab's own domains (marker checked) lets
        # libvirtd reap them all at once; whatever is still listed then is destroyed below.
        if [[ ${#names[@]} -gt $BATCH ]]; then
            kill_ours "${names[@]}"
        fi
        local pids=() failed=0 i
        for name in "${names[@]}"; do
            destroy_one "$name" forget-foreign &
            pids+=($!)
            if [[ ${#pids[@]} -ge $BATCH ]]; then
                for i in "${pids[@]}"; do wait "$i" || failed=1; done
                pids=()
            fi
        done
        for i in "${pids[@]}"; do wait "$i" || failed=1; done
        [[ $failed -eq 0 ]] || die "some domains could not be destroyed"
    fi
    log "down: ${#names[@]} tracked domains processed"
    if [[ -z "$prefix" || ! -s "$DOMAINS_FILE" ]]; then
        stop_daemons_if_ours
    fi
    log "down done in $((SECONDS - t0)) s"
}

cmd_status() {
    init_state
    local d pid
    for d in virtlogd libvirtd; do
        if pid=$(daemon_pid "$d"); then echo "$d running pid $pid"; else echo "$d not running"; fi
    done
    echo "started by lab: $(paste -sd' ' "$DAEMONS_FILE")"
    echo "lab domains: $(state_domains | paste -sd' ')"
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        install) cmd_install ;;
        up) need_root; cmd_up "$@" ;;
        add) cmd_add "$@" ;;
        add-guest) cmd_add_guest "$@" ;;
        destroy) cmd_destroy "$@" ;;
        pid) cmd_pid "$@" ;;
        stop-vm) cmd_signal STOP "$@" ;;
        cont-vm) cmd_signal CONT "$@" ;;
        list) cmd_list ;;
        down) cmd_down "$@" ;;
        status) cmd_status ;;
        restart-libvirtd) cmd_restart_libvirtd ;;
        owns-libvirtd) cmd_owns_libvirtd ;;
        -h | --help | help | "") usage ;;
        *) log "unknown command '$cmd'"; usage ;;
    esac
}

main "$@"
