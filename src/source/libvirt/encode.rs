//! The libvirt source's families: the core group (CPU, vCPU, NIC and block counters from bulk
//! stats) and its part of the hypervisor group (state, memory and balloon, vCPU and device
//! counts, block sizes), and how often libvirt answered in part.

use super::families as c;
use super::memstats::MemoryStatsState;
use super::stats::{BlockSample, NetSample, VcpuSample};
use super::{DomainSample, Libvirt};
use crate::model::exposition::{family, kib, ns, num};
use crate::model::metric::MetricDef;
use crate::source::api::VmView;

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

type VmField = fn(&DomainSample) -> Option<f64>;

const PER_VM: [(&MetricDef, VmField); 18] = [
    (&c::MEMORY_RESIDENT, |s| kib(s.memory.rss_kib)),
    (&c::MEMORY_AVAILABLE, |s| kib(s.memory.available_kib)),
    (&c::MEMORY_UNUSED, |s| kib(s.memory.unused_kib)),
    (&c::MEMORY_USABLE, |s| kib(s.memory.usable_kib)),
    (&c::MEMORY_CACHED, |s| kib(s.memory.disk_caches_kib)),
    (&c::MEMORY_ACTUAL_BALLOON, |s| kib(s.memory.actual_balloon_kib)),
    (&c::MEMORY_DOMAIN, |s| kib(s.memory.current_kib)),
    (&c::MEMORY_SWAP_IN, |s| kib(s.memory.swap_in_kib)),
    (&c::MEMORY_SWAP_OUT, |s| kib(s.memory.swap_out_kib)),
    (&c::MEMORY_PGMAJFAULT, |s| num(s.memory.major_fault)),
    (&c::MEMORY_PGMINFAULT, |s| num(s.memory.minor_fault)),
    // 0 means the guest never reported: no sample rather than a 1970 timestamp.
    (&c::MEMORY_STATS_UPDATED, |s| num(s.memory.last_update.filter(|t| *t > 0))),
    (&c::VCPU_CURRENT, |s| num(s.vcpu_current)),
    (&c::VCPU_MAXIMUM, |s| num(s.vcpu_maximum)),
    (&c::CPU_AFFINITY, |s| num(s.cpu_affinity)),
    (&c::NET_INTERFACES, |s| num(s.net_count)),
    (&c::STORAGE_DEVICES, |s| num(s.block_count)),
    // libvirt reports MiB/s (2^20 bytes).
    (&c::DIRTY_RATE, |s| s.dirty_rate_mib_per_second.map(|v| v as f64 * 1_048_576.0)),
];

type SizeField = fn(&BlockSample) -> Option<u64>;

const SIZES: [(&MetricDef, SizeField); 4] = [
    (&c::STORAGE_ALLOCATION, |b| b.allocation),
    (&c::STORAGE_CAPACITY, |b| b.capacity),
    (&c::STORAGE_PHYSICAL, |b| b.physical),
    (&c::STORAGE_THRESHOLD, |b| b.threshold),
];

fn parsed<'a>(vm: &VmView<'a>) -> Option<&'a DomainSample> {
    vm.sample::<Libvirt>().map(|l| &l.parsed)
}

/// Every family, in the order [`encode`] writes them.
pub(super) fn families() -> Vec<&'static MetricDef> {
    let mut out: Vec<&'static MetricDef> = CPU.iter().map(|(d, _)| *d).collect();
    out.push(&c::VCPU_TIME);
    out.extend(VCPU.iter().map(|(d, _)| *d));
    out.extend(NET.iter().map(|(d, _)| *d));
    out.push(&c::NET_TRAFFIC);
    out.extend(BLOCK.iter().map(|(d, _)| *d));
    out.push(&c::DOMAIN_STATE);
    out.extend(PER_VM.iter().map(|(d, _)| *d));
    out.push(&c::GUEST_MEMORY_STATS);
    out.extend(SIZES.iter().map(|(d, _)| *d));
    out.push(&c::SOURCE_PARTIAL);
    out
}

/// Writes the libvirt families.
pub(super) fn encode(enc: &mut crate::model::exposition::Out<'_>, vms: &[VmView<'_>]) -> std::fmt::Result {
    for (def, get) in CPU {
        let mut f = family(enc, def)?;
        for vm in vms {
            f.vm_sample(vm, &[], ns(parsed(vm).and_then(get)))?;
        }
    }
    let mut f = family(enc, &c::VCPU_TIME)?;
    for vm in vms {
        for v in parsed(vm).map(|s| s.vcpus.as_slice()).unwrap_or_default() {
            f.vm_sample(vm, &[("id", &v.id.to_string()), ("state", v.state_name())], ns(v.time_ns))?;
        }
    }
    for (def, get) in VCPU {
        let mut f = family(enc, def)?;
        for vm in vms {
            for v in parsed(vm).map(|s| s.vcpus.as_slice()).unwrap_or_default() {
                f.vm_sample(vm, &[("id", &v.id.to_string())], ns(get(v)))?;
            }
        }
    }
    for (def, get) in NET {
        let mut f = family(enc, def)?;
        for vm in vms {
            for n in parsed(vm).map(|s| s.nets.as_slice()).unwrap_or_default() {
                f.vm_sample(vm, &[("interface", n.label())], num(get(n)))?;
            }
        }
    }
    // KubeVirt's deprecated combined family, which its dashboards still use.
    let mut f = family(enc, &c::NET_TRAFFIC)?;
    for vm in vms {
        for n in parsed(vm).map(|s| s.nets.as_slice()).unwrap_or_default() {
            f.vm_sample(vm, &[("interface", n.label()), ("type", "rx")], num(n.rx_bytes))?;
            f.vm_sample(vm, &[("interface", n.label()), ("type", "tx")], num(n.tx_bytes))?;
        }
    }
    for (def, get) in BLOCK {
        let mut f = family(enc, def)?;
        for vm in vms {
            for b in parsed(vm).map(|s| s.blocks.as_slice()).unwrap_or_default() {
                f.vm_sample(vm, &[("drive", b.label())], get(b))?;
            }
        }
    }

    let mut f = family(enc, &c::DOMAIN_STATE)?;
    for vm in vms {
        if let Some(st) = parsed(vm).and_then(|s| s.state) {
            f.vm_sample(vm, &[("state", st.state_name()), ("reason", st.reason_name())], Some(1.0))?;
        }
    }
    for (def, get) in PER_VM {
        let mut f = family(enc, def)?;
        for vm in vms {
            f.vm_sample(vm, &[], parsed(vm).and_then(get))?;
        }
    }
    let mut f = family(enc, &c::GUEST_MEMORY_STATS)?;
    for vm in vms {
        let Some(g) = vm.sample::<Libvirt>().and_then(|l| l.guest_memory) else {
            continue;
        };
        for state in MemoryStatsState::ALL {
            let current = g.state == state;
            if vm.health_detail || current {
                f.vm_sample(vm, &[("state", state.as_str())], Some(f64::from(u8::from(current))))?;
            }
        }
    }
    for (def, get) in SIZES {
        let mut f = family(enc, def)?;
        for vm in vms {
            for b in parsed(vm).map(|s| s.blocks.as_slice()).unwrap_or_default() {
                f.vm_sample(vm, &[("drive", b.label())], num(get(b)))?;
            }
        }
    }
    let mut f = family(enc, &c::SOURCE_PARTIAL)?;
    for vm in vms {
        // Counted since discovery: exported from the last sample whatever its age.
        let Some(l) = vm.vm.sources.get(&crate::source::SourceKind::Libvirt).and_then(|s| s.sample.as_deref()) else {
            continue;
        };
        let Some(l) = <Libvirt as crate::source::api::Source>::sample(l) else { continue };
        for (group, n) in &l.partial_total {
            f.vm_sample(vm, &[("source", "libvirt"), ("group", group)], Some(*n as f64))?;
        }
    }
    Ok(())
}
