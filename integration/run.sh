#!/usr/bin/env bash
# The main job against a real local lab: installs what is missing (apt packages), starts
# libvirtd, N QEMU domains (default 4) and one real guest with qemu-guest-agent, builds
# vmbridge and runs it in the foreground on
# :9977. Ctrl-C stops vmbridge and destroys the lab domains this script created
# (KEEP_LAB=1 keeps them).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
n=${1:-4}
listen=${VMBRIDGE_LISTEN:-127.0.0.1:9977}
lab=integration/lab.sh

bash "$lab" install
cargo build --release --locked
bash "$lab" up "$n" lab_vm- >/dev/null
[ "${KEEP_LAB:-0}" = 1 ] || trap 'echo; bash "$lab" down lab_ >&2' EXIT
# One real guest (the tests' image: a Debian kernel and the real qemu-guest-agent), so the guest
# families (filesystems, addresses, OS, users, load) show too. Booting it under TCG takes a while.
guest=lab_guest-01
echo "booting the real guest $guest (its agent usually answers within 10-60 s under TCG)..." >&2
if out=$(bash "$lab" add-guest "$guest" 2>&1); then
    printf '%s\n' "$out" | grep 'boot-to-agent' >&2 || true
    with_guest="and the real guest guest-01 (namespace lab), whose agent answers"
else
    printf '%s\n' "$out" | tail -n 3 >&2
    echo "the real guest did not boot in time: continuing with the $n plain VMs only" >&2
    with_guest="(the real guest did not boot in time)"
fi

cat <<MSG

vmbridge is starting on http://$listen with $n lab VMs, named as KubeVirt names them
(<namespace>_<name>: lab_vm-01.. are VMs vm-01.. of namespace lab), $with_guest.
The plain VMs have no agent: their qga source is down, which is expected. Try, in another shell:
  curl -s http://$listen/metrics | grep '^kubevirt_vmi_cpu_usage'
  curl -s http://$listen/metrics | grep -E '^kubevirt_vmi_(filesystem_used_bytes|guest_interface_address_info|guest_os_info)\{.*name="guest-01"'
  curl -s http://127.0.0.1:9978/                      # status page (open it in a browser)
  curl -s http://127.0.0.1:9978/debug/vms/lab/vm-01
  bash $lab stop-vm lab_vm-02    # hang one VM: watch vmbridge_breaker_state{name="vm-02"}
  bash $lab cont-vm lab_vm-02
Ctrl-C stops vmbridge and removes the lab VMs.

MSG
target/release/vmbridge --listen "$listen" --libvirt-uri qemu:///system \
    --qmp-socket "${VMB_LAB_DIR:-/var/lib/vmbridge-lab}/{domain}.qmp" "${@:2}"
