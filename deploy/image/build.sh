#!/usr/bin/env bash
# Builds the vmbridge OCI image without Docker, from Debian 12 (bookworm) packages and the release
# binary, and writes an OCI image layout archive to target/image/vmbridge.oci.tar.
#
#   bash deploy/image/build.sh            # build twice, fail unless both digests are equal
#   bash deploy/image/build.sh --no-check # build once
#
# Then: skopeo copy oci-archive:target/image/vmbridge.oci.tar docker://REGISTRY/vmbridge:TAG
#
# How:
# - `cargo build --release --locked`; the binary is stripped of debug info for the image.
# - mmdebstrap --variant=extract unpacks libvirt0 and its hard dependencies (no maintainer
#   scripts, no dpkg/apt/shell in the image); ca-certificates is unpacked alone (its own
#   dependencies, openssl/debconf/perl, are only needed to run update-ca-certificates, whose
#   bundle is assembled here instead). Docs (except copyright files), man pages and locales are
#   removed. /etc/passwd and /etc/group carry root, nobody and vmbridge (65532).
# - The root filesystem becomes one layer: a tar with sorted names, mtime SOURCE_DATE_EPOCH and
#   owner 0; umoci adds it to a new OCI layout (gzip) and sets the config (entrypoint, user,
#   labels) and the manifest annotations, all with SOURCE_DATE_EPOCH as the time.
# - The layout is archived the same way (sorted, fixed mtime and owner).
# SOURCE_DATE_EPOCH defaults to the time of the last commit. The Debian packages are whatever
# the mirror serves at build time: two builds on different days can differ by a security update;
# point VMBRIDGE_IMAGE_MIRROR at a dated snapshot of the archive to freeze them.
#
# Environment: SOURCE_DATE_EPOCH, CARGO_TARGET_DIR, VMBRIDGE_IMAGE_MIRROR (default
# http://deb.debian.org/debian, security from .../debian-security), VMBRIDGE_IMAGE_SOURCE
# (org.opencontainers.image.source; default Cargo.toml `repository`, else git's origin URL),
# VMBRIDGE_IMAGE_BUDGET_MB (default 40), VMBRIDGE_IMAGE_SKIP_CARGO=1 (use the existing binary).
set -euo pipefail

check=1
for arg in "$@"; do
    case "$arg" in
    --check) check=1 ;;
    --no-check) check=0 ;;
    -h | --help)
        sed -n '2,9p' "$0"
        exit 0
        ;;
    *)
        echo "build.sh: unknown argument $arg" >&2
        exit 2
        ;;
    esac
done

cd "$(dirname "$0")/../.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
out=$target/image
budget_mb=${VMBRIDGE_IMAGE_BUDGET_MB:-40}
mirror=${VMBRIDGE_IMAGE_MIRROR:-http://deb.debian.org/debian}
security_mirror=${VMBRIDGE_IMAGE_SECURITY_MIRROR:-${mirror%/debian}/debian-security}
export LC_ALL=C.UTF-8 TZ=UTC
umask 022

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------------------- tools ------
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v umoci >/dev/null || need+=(umoci)
command -v skopeo >/dev/null || need+=(skopeo)
command -v jq >/dev/null || need+=(jq)
command -v strip >/dev/null || need+=(binutils)
if ((${#need[@]})); then
    [[ $(id -u) == 0 ]] || die "missing ${need[*]}: install them (apt-get install ${need[*]}) or run as root"
    log "installing ${need[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
# mmdebstrap --variant=extract unpacks as root (--mode=root); without root it needs unshare.
[[ $(id -u) == 0 ]] || log "not root: mmdebstrap will try --mode=unshare"

# ---------------------------------------------------------------------------- inputs -----
cargo_field() { sed -n "/^\[package\]/,/^\[/{s/^$1 *= *\"\(.*\)\"/\1/p}" Cargo.toml | head -n1; }
version=$(cargo_field version)
licenses=$(cargo_field license)
description=$(cargo_field description)
source_url=${VMBRIDGE_IMAGE_SOURCE:-$(cargo_field repository)}
[[ -n $source_url ]] || source_url=$(git remote get-url origin 2>/dev/null || true)
revision=$(git rev-parse HEAD)
if [[ -n $(git status --porcelain --untracked-files=no) ]]; then
    log "warning: uncommitted changes; revision is labelled $revision-dirty"
    revision=$revision-dirty
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
[[ -n $version && -n $licenses ]] || die "no version/license in Cargo.toml"
[[ -n $source_url ]] || log "warning: no source URL (set repository in Cargo.toml or VMBRIDGE_IMAGE_SOURCE); org.opencontainers.image.source is left out"

if [[ ${VMBRIDGE_IMAGE_SKIP_CARGO:-0} != 1 ]]; then
    log "cargo build --release --locked"
    cargo build --release --locked
fi
binary=$target/release/vmbridge
[[ -x $binary ]] || die "no $binary"

mkdir -p "$out"
work=$(mktemp -d "$out/work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------------------- one build --
libdirs=(lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu lib64 lib usr/lib)

# needed_closure ROOTFS FILE: every library FILE needs, transitively, as paths inside ROOTFS.
needed_closure() {
    local rootfs=$1 todo=("$2") seen=() f n d p
    declare -A done=()
    while ((${#todo[@]})); do
        f=${todo[0]}
        todo=("${todo[@]:1}")
        [[ -n ${done[$f]:-} ]] && continue
        done[$f]=1
        seen+=("$f")
        for n in $(objdump -p "$rootfs/$f" | awk '$1 == "NEEDED" { print $2 }'); do
            p=
            for d in "${libdirs[@]}"; do
                if [[ -e $rootfs/$d/$n ]]; then
                    p=$d/$n
                    break
                fi
            done
            [[ -n $p ]] || die "$f needs $n, which is not in the image"
            todo+=("$p")
        done
    done
    printf '%s\n' "${seen[@]}"
}

# prune_libraries ROOTFS: removes lib*.so* in the library directories (not their subdirectories)
# outside the closure of /usr/bin/vmbridge and the loader; prints what it removed.
prune_libraries() {
    local rootfs=$1 closure keep f real
    closure=$(needed_closure "$rootfs" usr/bin/vmbridge) || exit 1
    keep=$(
        {
            echo "$closure"
            echo lib64/ld-linux-x86-64.so.2
        } | while read -r f; do
            # The name the loader asks for and every symlink step to the file.
            for _ in 1 2 3 4 5; do
                echo "$f"
                [[ -L $rootfs/$f ]] || break
                real=$(readlink "$rootfs/$f")
                if [[ $real == /* ]]; then f=${real#/}; else f=$(dirname "$f")/$real; fi
                f=$(realpath -m -s --relative-to=/ "/$f")
            done
        done | sort -u
    )
    (cd "$rootfs" && for d in "${libdirs[@]}"; do
        [[ -d $d ]] && find "$d" -maxdepth 1 \( -type f -o -type l \) -name 'lib*.so*'
    done) | sort | while read -r f; do
        if ! grep -qxF "$f" <<<"$keep"; then
            rm -f "${rootfs:?}/$f"
            echo "$f"
        fi
    done
}

# build_once DIR: builds the image into DIR/oci and DIR/vmbridge.oci.tar; its manifest digest
# into DIR/digest. Every tool's output goes to stderr.
build_once() {
    local dir=$1 rootfs=$1/rootfs layout=$1/oci tag=$version
    mkdir -p "$dir"
    log "mmdebstrap: libvirt0 and its dependencies (bookworm) -> $rootfs"
    # shellcheck disable=SC2016 # $1 is expanded by mmdebstrap's hook shell
    mmdebstrap --variant=extract --quiet \
        --include=libvirt0 \
        --extract-hook='cd "$1"/var/cache/apt/archives && APT_CONFIG="$MMDEBSTRAP_APT_CONFIG" apt-get download -q=2 ca-certificates && dpkg-deb -x ca-certificates_*.deb "$1"' \
        --extract-hook='mkdir -p "$1"/var/lib/dpkg/status.d && for d in "$1"/var/cache/apt/archives/*.deb; do p=$(dpkg-deb -f "$d" Package); { dpkg-deb -f "$d" Package Version Architecture Source Maintainer; echo "Status: install ok installed"; } >"$1/var/lib/dpkg/status.d/$p"; done' \
        bookworm "$rootfs" \
        "deb $mirror bookworm main" \
        "deb $mirror bookworm-updates main" \
        "deb $security_mirror bookworm-security main"

    # The CA bundle update-ca-certificates would write: every Mozilla certificate, sorted.
    mkdir -p "$rootfs/etc/ssl/certs"
    (cd "$rootfs/usr/share/ca-certificates" && find mozilla -name '*.crt' | sort >"$rootfs/etc/ca-certificates.conf")
    : >"$rootfs/etc/ssl/certs/ca-certificates.crt"
    while read -r crt; do
        cat "$rootfs/usr/share/ca-certificates/$crt" >>"$rootfs/etc/ssl/certs/ca-certificates.crt"
    done <"$rootfs/etc/ca-certificates.conf"

    # Run-time only: no docs (copyright files stay: the licences of what is shipped), man pages,
    # locales, apt/dpkg state or caches, and nothing from the build host.
    find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/{man,info,locale,lintian,bug,gtk-doc,bash-completion,zsh} \
        "$rootfs"/var/cache/* "$rootfs"/var/lib/apt "$rootfs"/var/log/* \
        "$rootfs"/etc/apt "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname "$rootfs"/etc/machine-id \
        "$rootfs"/var/lib/dpkg/{available,status,lock*,info,triggers,arch,diversions,statoverride,updates,cmethopt} \
        "$rootfs"/usr/share/zoneinfo/{posix,right} "$rootfs"/dev/*
    # The loader finds the libraries in the multiarch default paths; no ld.so.cache is needed.

    install -m 0755 -d "$rootfs/usr/bin" "$rootfs/etc/vmbridge" "$rootfs/tmp" "$rootfs/run"
    # libvirt's client looks for /var/run/libvirt/libvirt-sock(-ro); as on Debian (base-files),
    # /var/run is /run, so a host's libvirt socket directory can be mounted at either path.
    ln -sfn /run "$rootfs/var/run"
    chmod 1777 "$rootfs/tmp"
    # Debug info out (backtraces keep function names: the symbol table stays).
    strip --strip-debug -o "$rootfs/usr/bin/vmbridge" "$binary"
    chmod 0755 "$rootfs/usr/bin/vmbridge"

    # Shared libraries that nothing loads: the packages bring libraries vmbridge never maps (ICU's
    # i18n part, Berkeley DB for the server-side sasldb plugin, brotli's encoder, …). Keep the
    # closure of DT_NEEDED from /usr/bin/vmbridge; dlopen()ed modules in subdirectories stay
    # (gconv for iconv), except the sasldb auxprop plugin, a libvirtd-side SASL password store.
    rm -rf "$rootfs/usr/lib/x86_64-linux-gnu/sasl2"
    prune_libraries "$rootfs" >"$rootfs/etc/vmbridge/IMAGE.pruned"
    printf '%s\n' \
        'root:x:0:0:root:/root:/usr/sbin/nologin' \
        'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' \
        'vmbridge:x:65532:65532:vmbridge:/nonexistent:/usr/sbin/nologin' >"$rootfs/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' 'vmbridge:x:65532:' >"$rootfs/etc/group"
    printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
    { printf 'vmbridge %s (%s)\n' "$version" "$revision"; } >"$rootfs/etc/vmbridge/IMAGE"

    # The layer: sorted names, one mtime, owner root, no atime/ctime.
    local tarflags=(--sort=name "--mtime=@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner
        --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)
    (cd "$rootfs" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | sort | tar "${tarflags[@]}" -cf "$dir/layer.tar" -T -)

    log "umoci: layout $layout, tag $tag"
    umoci init --layout "$layout"
    umoci new --image "$layout:$tag"
    umoci raw add-layer --image "$layout:$tag" \
        --history.created "$created" --history.created_by "deploy/image/build.sh (Debian bookworm + vmbridge $version)" \
        "$dir/layer.tar"
    local labels=(
        "org.opencontainers.image.title=vmbridge"
        "org.opencontainers.image.description=$description"
        "org.opencontainers.image.version=$version"
        "org.opencontainers.image.revision=$revision"
        "org.opencontainers.image.licenses=$licenses"
        "org.opencontainers.image.created=$created"
    )
    [[ -n $source_url ]] && labels+=("org.opencontainers.image.source=$source_url")
    local args=()
    for l in "${labels[@]}"; do args+=(--config.label "$l" --manifest.annotation "$l"); done
    umoci config --image "$layout:$tag" --no-history \
        --created "$created" --author "vmbridge" --os linux --architecture amd64 \
        --config.entrypoint /usr/bin/vmbridge \
        --config.user 65532:65532 \
        --config.workingdir / \
        --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --config.exposedports 9977/tcp \
        "${args[@]}"
    umoci gc --layout "$layout"

    # The archive: the layout with sorted names, one mtime and owner, fixed modes.
    find "$layout" -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +
    (cd "$layout" && tar "${tarflags[@]}" -cf "$dir/vmbridge.oci.tar" oci-layout index.json blobs)
    jq -r '.manifests[0].digest' "$layout/index.json" >"$dir/digest"
}

build_once "$work/a" >&2
first=$(cat "$work/a/digest")
log "build 1: $first"
if ((check)); then
    build_once "$work/b" >&2
    second=$(cat "$work/b/digest")
    log "build 2: $second"
    if [[ $first != "$second" ]]; then
        log "the two builds differ:"
        diff <(cd "$work/a/oci" && find . -type f -exec sha256sum {} + | sort -k2) \
            <(cd "$work/b/oci" && find . -type f -exec sha256sum {} + | sort -k2) >&2 || true
        diff <(tar -tvf "$work/a/layer.tar") <(tar -tvf "$work/b/layer.tar") | head -n 40 >&2 || true
        die "not reproducible: $first != $second"
    fi
    cmp "$work/a/vmbridge.oci.tar" "$work/b/vmbridge.oci.tar" || die "equal digests but different archives"
fi

mv -f "$work/a/vmbridge.oci.tar" "$out/vmbridge.oci.tar"
rm -rf "$out/oci" && mv "$work/a/oci" "$out/oci"

# ---------------------------------------------------------------------------- report -----
inspect=$(skopeo inspect "oci-archive:$out/vmbridge.oci.tar") || die "skopeo cannot read $out/vmbridge.oci.tar"
[[ $(jq -r .Digest <<<"$inspect") == "$first" ]] || die "skopeo reports digest $(jq -r .Digest <<<"$inspect"), index.json $first"
manifest=$out/oci/blobs/sha256/${first#sha256:}
compressed=$(jq '[.config.size] + [.layers[].size] | add' "$manifest")
compressed=$((compressed + $(stat -c %s "$manifest")))
uncompressed=$(stat -c %s "$work/a/layer.tar")
archive=$(stat -c %s "$out/vmbridge.oci.tar")
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }
printf 'image:        %s\n' "$out/vmbridge.oci.tar"
printf 'digest:       %s%s\n' "$first" "$( ((check)) && echo ' (two builds, equal)')"
printf 'compressed:   %s bytes (%s; manifest + config + layer, what a registry stores)\n' "$compressed" "$(mb "$compressed")"
printf 'uncompressed: %s bytes (%s)\n' "$uncompressed" "$(mb "$uncompressed")"
printf 'archive:      %s bytes (%s)\n' "$archive" "$(mb "$archive")"
((compressed <= budget_mb * 1000000)) || die "compressed size $(mb "$compressed") is over the budget of $budget_mb MB"
