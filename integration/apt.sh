# apt.sh - sourced by the lab scripts: install Debian packages on a machine whose apt
# lists may be older than the archive (a brand-new CI machine, an image built weeks ago).
#
#   apt_install PKG...   refresh the lists (once per process), then install PKG... with
#                        --no-install-recommends. A PKG may carry a release pin,
#                        "qemu-utils/bookworm": never an exact version string, which a
#                        rebuild in the archive (+b2 -> +b3) turns into a 404.
#   apt_release          the distribution's codename (bookworm), for such pins.
# Only called when something is missing: a machine that has everything never touches apt.

APT_UPDATED=${APT_UPDATED:-0}

apt_release() {
    local codename=""
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}")
    printf '%s\n' "${codename:-bookworm}"
}

apt_update() {
    [[ "$APT_UPDATED" == 1 ]] && return 0
    printf 'apt: apt-get update (always before an install: the lists may be stale)\n' >&2
    apt-get -o DPkg::Lock::Timeout=600 -q update >&2 || return 1
    APT_UPDATED=1
    export APT_UPDATED
}

apt_install() {
    [[ $# -gt 0 ]] || return 0
    apt_update || { printf 'apt: ERROR: apt-get update failed\n' >&2; return 1; }
    printf 'apt: apt-get install %s\n' "$*" >&2
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q \
        --no-install-recommends --allow-downgrades install "$@" >&2
}
