#!/usr/bin/env bash
# build.sh - build the vmbridge lab guest: a Debian kernel plus a small initramfs
# (busybox-static, the real qemu-guest-agent with its libraries, virtio/ext4 modules and
# integration/guest/init as /init).
#
# Idempotent: installs missing apt packages, rebuilds only when an input changed or an
# output is missing. Output: ${VMB_LAB_DIR:-/var/lib/vmbridge-lab}/guest/{kernel,
# initramfs.cpio.gz} (VMB_GUEST_OUT: another directory, so worktrees sharing one lab
# with different inits do not rebuild each other's image); stdout: the two paths, one per
# line. Log on stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=integration/apt.sh
. "$HERE/../apt.sh"
LAB_DIR="${VMB_LAB_DIR:-/var/lib/vmbridge-lab}"
OUT="${VMB_GUEST_OUT:-$LAB_DIR/guest}"
KERNEL="$OUT/kernel"
INITRD="$OUT/initramfs.cpio.gz"
STAMP="$OUT/inputs.sha256"
PACKAGES=(linux-image-amd64 busybox-static qemu-guest-agent cpio e2fsprogs kmod gzip)
MODULES=(virtio_pci virtio_console virtio_net virtio_blk virtio_balloon ext4)

log() { printf 'guest-build: %s\n' "$*" >&2; }
die() { printf 'guest-build: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root"
mkdir -p "$OUT"
exec {lockfd}>>"$OUT/.lock"
flock -w 600 "$lockfd" || die "could not lock $OUT/.lock"

pkg_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" == "ii " ]]
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    # Only the missing ones: never upgrade what is there (qemu-utils must stay at the
    # version of qemu-system-x86, see lab.sh install); the agent comes from the release.
    local rel want=()
    rel=$(apt_release)
    for p in "${missing[@]}"; do
        case $p in qemu-*) want+=("$p/$rel") ;; *) want+=("$p") ;; esac
    done
    apt_install "${want[@]}" || die "apt-get install ${want[*]} failed"
}

install_packages

# The kernel of the installed linux-image-amd64 (not the host's running kernel).
kdep=$(dpkg-query -W -f='${Depends}' linux-image-amd64)
KVER=$(sed -nE 's/^.*linux-image-([^ ,(]+).*$/\1/p' <<<"$kdep" | head -n1)
[[ -n "$KVER" ]] || die "cannot find the kernel version from linux-image-amd64 Depends: $kdep"
VMLINUZ="/boot/vmlinuz-$KVER"
MODDIR="/lib/modules/$KVER"
[[ -r "$VMLINUZ" && -d "$MODDIR" ]] || die "$VMLINUZ or $MODDIR missing"

# Modules with their dependencies, in modprobe --show-depends order, deduplicated.
mapfile -t KOS < <(
    for m in "${MODULES[@]}"; do
        modprobe -S "$KVER" --show-depends "$m" || die "modprobe --show-depends $m failed"
    done | awk '$1 == "insmod" && !seen[$2]++ {print $2}'
)
[[ ${#KOS[@]} -gt 0 ]] || die "no modules found"
for ko in "${KOS[@]}"; do
    [[ "$ko" == *.ko ]] || die "compressed module $ko: busybox insmod needs plain .ko"
done

QGA=/usr/sbin/qemu-ga
BUSYBOX=/bin/busybox
# Libraries of qemu-ga: "name => /path (addr)" lines and the loader "/path (addr)".
mapfile -t LIBS < <(ldd "$QGA" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
LOADER=$(ldd "$QGA" | awk '$1 ~ /ld-linux/ && $1 ~ /^\// {print $1}')
[[ -n "$LOADER" ]] || die "no dynamic loader in ldd $QGA"
OSREL=/usr/lib/os-release

INPUTS=("$HERE/build.sh" "$HERE/init" "$VMLINUZ" "$QGA" "$BUSYBOX" "$OSREL" "${KOS[@]}" "${LIBS[@]}")
want=$({
    echo "kver $KVER"
    printf 'module %s\n' "${KOS[@]}"
    # contents (read through symlinks) and names of every input file
    sha256sum -- "${INPUTS[@]}"
} | sha256sum | cut -d' ' -f1)

if [[ -s "$KERNEL" && -s "$INITRD" && -r "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    log "up to date (kernel $KVER, initramfs $(du -k "$INITRD" | cut -f1) KiB)"
    printf '%s\n%s\n' "$KERNEL" "$INITRD"
    exit 0
fi

t0=$SECONDS
log "building initramfs for kernel $KVER (${#KOS[@]} modules, ${#LIBS[@]} libraries)"
ROOT=$(mktemp -d "$OUT/root.XXXXXX")
trap 'rm -rf "$ROOT" "$OUT"/*.tmp.*' EXIT

mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,lib64,lib/x86_64-linux-gnu,etc,proc,sys,dev,run,tmp,data,root,var}
chmod 1777 "$ROOT/tmp"
ln -s ../run "$ROOT/var/run"

# busybox and its applet links
cp "$BUSYBOX" "$ROOT/bin/busybox"
"$BUSYBOX" --list-full | while read -r app; do
    [[ "$app" == bin/busybox || -e "$ROOT/$app" ]] && continue
    mkdir -p "$ROOT/$(dirname "$app")"
    ln -s /bin/busybox "$ROOT/$app"
done

# qemu-ga, its libraries, the loader
cp "$QGA" "$ROOT/usr/sbin/qemu-ga"
for lib in "${LIBS[@]}"; do
    case "$lib" in
        */ld-linux*) continue ;;
    esac
    cp -L "$lib" "$ROOT/lib/x86_64-linux-gnu/$(basename "$lib")"
done
mkdir -p "$ROOT$(dirname "$LOADER")"
cp -L "$LOADER" "$ROOT$LOADER"

# modules, and their load order for /init
for ko in "${KOS[@]}"; do
    mkdir -p "$ROOT$(dirname "$ko")"
    cp "$ko" "$ROOT$ko"
done
printf '%s\n' "${KOS[@]}" >"$ROOT/etc/vmbridge-modules"

# a minimal /etc (os-release for guest-get-osinfo)
cp -L "$OSREL" "$ROOT/etc/os-release"
echo vmbridge-guest >"$ROOT/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
ln -s /proc/mounts "$ROOT/etc/mtab"
# qemu-ga's guest-shutdown runs "/sbin/shutdown -h|-P|-r +0"; busybox has no shutdown
cat >"$ROOT/sbin/shutdown" <<'SH'
#!/bin/sh
sync
case " $* " in
    *" -r "*) reboot -f ;;
    *) poweroff -f ;;
esac
SH
chmod 755 "$ROOT/sbin/shutdown"

install -m 755 "$HERE/init" "$ROOT/init"

# sanity: the agent runs with only the image's libraries
chroot "$ROOT" /usr/sbin/qemu-ga --version >/dev/null ||
    die "qemu-ga does not run inside the image root (missing library?)"

(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9 -n >"$INITRD.tmp.$$"
cp "$VMLINUZ" "$KERNEL.tmp.$$"
mv -f "$KERNEL.tmp.$$" "$KERNEL"
mv -f "$INITRD.tmp.$$" "$INITRD"
echo "$want" >"$STAMP"
log "built in $((SECONDS - t0)) s: kernel $KVER $(du -k "$KERNEL" | cut -f1) KiB, initramfs $(du -k "$INITRD" | cut -f1) KiB"
printf '%s\n%s\n' "$KERNEL" "$INITRD"
