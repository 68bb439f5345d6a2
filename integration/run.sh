#!/usr/bin/env bash
# The main job against a real local lab: installs what is missing (apt packages), starts
# libvirtd and N QEMU domains (default 4), builds vmbridge and runs it in the foreground on
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
[ "${KEEP_LAB:-0}" = 1 ] || trap 'echo; bash "$lab" down lab_vm- >&2' EXIT

cat <<MSG

vmbridge is starting on http://$listen with $n lab VMs, named as KubeVirt names them
(<namespace>_<name>: lab_vm-01.. are VMs vm-01.. of namespace lab). Try, in another shell:
  curl -s http://$listen/metrics | grep '^kubevirt_vmi_cpu_usage'
  curl -s http://127.0.0.1:9978/                      # status page (open it in a browser)
  curl -s http://127.0.0.1:9978/debug/vms/lab/vm-01
  bash $lab stop-vm lab_vm-02    # hang one VM: watch vmbridge_breaker_state{name="vm-02"}
  bash $lab cont-vm lab_vm-02
Ctrl-C stops vmbridge and removes the lab VMs.

MSG
target/release/vmbridge --listen "$listen" --libvirt-uri qemu:///system \
    --qmp-socket "${VMB_LAB_DIR:-/var/lib/vmbridge-lab}/{domain}.qmp" "${@:2}"
