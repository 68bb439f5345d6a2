//! Core group: CPU, vCPU, NIC and block counters from libvirt bulk stats.

use prometheus_client::encoding::DescriptorEncoder;

use super::{VmView, family, ns, num};
use crate::catalogue::{self as c, MetricDef};
use crate::source::libvirt::DomainSample;
use crate::source::libvirt::stats::{BlockSample, NetSample, VcpuSample};

type NetField = fn(&NetSample) -> Option<u64>;
type BlockField = fn(&BlockSample) -> Option<f64>;
type CpuField = fn(&DomainSample) -> Option<u64>;
type VcpuField = fn(&VcpuSample) -> Option<u64>;

const CPU: [(&MetricDef, CpuField); 3] =
    [(&c::CPU_USAGE, |s| s.cpu_time_ns), (&c::CPU_USER, |s| s.cpu_user_ns), (&c::CPU_SYSTEM, |s| s.cpu_system_ns)];

const VCPU: [(&MetricDef, VcpuField); 2] = [(&c::VCPU_WAIT, |v| v.wait_ns), (&c::VCPU_DELAY, |v| v.delay_ns)];

const NET: [(&MetricDef, NetField); 8] = [
    (&c::NET_RX_BYTES, |n| n.rx_bytes),
    (&c::NET_TX_BYTES, |n| n.tx_bytes),
    (&c::NET_RX_PACKETS, |n| n.rx_pkts),
    (&c::NET_TX_PACKETS, |n| n.tx_pkts),
    (&c::NET_RX_ERRORS, |n| n.rx_errs),
    (&c::NET_TX_ERRORS, |n| n.tx_errs),
    (&c::NET_RX_DROPPED, |n| n.rx_drop),
    (&c::NET_TX_DROPPED, |n| n.tx_drop),
];

const BLOCK: [(&MetricDef, BlockField); 8] = [
    (&c::STORAGE_IOPS_READ, |b| num(b.rd_reqs)),
    (&c::STORAGE_IOPS_WRITE, |b| num(b.wr_reqs)),
    (&c::STORAGE_READ_BYTES, |b| num(b.rd_bytes)),
    (&c::STORAGE_WRITE_BYTES, |b| num(b.wr_bytes)),
    (&c::STORAGE_READ_TIMES, |b| ns(b.rd_times_ns)),
    (&c::STORAGE_WRITE_TIMES, |b| ns(b.wr_times_ns)),
    (&c::STORAGE_FLUSH_REQUESTS, |b| num(b.fl_reqs)),
    (&c::STORAGE_FLUSH_TIMES, |b| ns(b.fl_times_ns)),
];

/// Writes the core families.
pub(super) fn encode(enc: &mut DescriptorEncoder<'_>, vms: &[VmView<'_>]) -> std::fmt::Result {
    for (def, get) in CPU {
        let mut f = family(enc, def)?;
        for vm in vms {
            f.vm_sample(vm, &[], ns(vm.libvirt.and_then(get)))?;
        }
    }
    let mut f = family(enc, &c::VCPU_TIME)?;
    for vm in vms {
        for v in vm.libvirt.map(|s| s.vcpus.as_slice()).unwrap_or_default() {
            f.vm_sample(vm, &[("id", &v.id.to_string()), ("state", v.state_name())], ns(v.time_ns))?;
        }
    }
    for (def, get) in VCPU {
        let mut f = family(enc, def)?;
        for vm in vms {
            for v in vm.libvirt.map(|s| s.vcpus.as_slice()).unwrap_or_default() {
                f.vm_sample(vm, &[("id", &v.id.to_string())], ns(get(v)))?;
            }
        }
    }
    for (def, get) in NET {
        let mut f = family(enc, def)?;
        for vm in vms {
            for n in vm.libvirt.map(|s| s.nets.as_slice()).unwrap_or_default() {
                f.vm_sample(vm, &[("interface", &n.name)], num(get(n)))?;
            }
        }
    }
    for (def, get) in BLOCK {
        let mut f = family(enc, def)?;
        for vm in vms {
            for b in vm.libvirt.map(|s| s.blocks.as_slice()).unwrap_or_default() {
                f.vm_sample(vm, &[("drive", &b.name)], get(b))?;
            }
        }
    }
    Ok(())
}
