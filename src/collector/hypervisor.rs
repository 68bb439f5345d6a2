//! Hypervisor group: run state, memory and balloon, vCPU and device counts, block sizes.

use prometheus_client::encoding::DescriptorEncoder;

use super::{VmView, family, kib, num};
use crate::catalogue::{self as c, MetricDef};
use crate::source::libvirt::DomainSample;
use crate::source::libvirt::stats::BlockSample;

type VmField = fn(&DomainSample) -> Option<f64>;

const PER_VM: [(&MetricDef, VmField); 17] = [
    (&c::MEMORY_RESIDENT, |s| kib(s.memory.rss_kib)),
    (&c::MEMORY_AVAILABLE, |s| kib(s.memory.available_kib)),
    (&c::MEMORY_UNUSED, |s| kib(s.memory.unused_kib)),
    (&c::MEMORY_USABLE, |s| kib(s.memory.usable_kib)),
    (&c::MEMORY_CACHED, |s| kib(s.memory.disk_caches_kib)),
    (&c::MEMORY_ACTUAL_BALLOON, |s| kib(s.memory.actual_balloon_kib)),
    (&c::MEMORY_DOMAIN, |s| kib(s.memory.maximum_kib)),
    (&c::MEMORY_SWAP_IN, |s| kib(s.memory.swap_in_kib)),
    (&c::MEMORY_SWAP_OUT, |s| kib(s.memory.swap_out_kib)),
    (&c::MEMORY_PGMAJFAULT, |s| num(s.memory.major_fault)),
    (&c::MEMORY_PGMINFAULT, |s| num(s.memory.minor_fault)),
    // 0 means the guest never reported: no sample rather than a 1970 timestamp.
    (&c::MEMORY_STATS_UPDATED, |s| num(s.memory.last_update.filter(|t| *t > 0))),
    (&c::VCPU_CURRENT, |s| num(s.vcpu_current)),
    (&c::VCPU_MAXIMUM, |s| num(s.vcpu_maximum)),
    (&c::NET_INTERFACES, |s| num(s.net_count)),
    (&c::STORAGE_DEVICES, |s| num(s.block_count)),
    // libvirt reports MiB/s (2^20 bytes).
    (&c::DIRTY_RATE, |s| s.dirty_rate_mib_per_second.map(|v| v as f64 * 1_048_576.0)),
];

type BlockField = fn(&BlockSample) -> Option<u64>;

const BLOCK: [(&MetricDef, BlockField); 4] = [
    (&c::STORAGE_ALLOCATION, |b| b.allocation),
    (&c::STORAGE_CAPACITY, |b| b.capacity),
    (&c::STORAGE_PHYSICAL, |b| b.physical),
    (&c::STORAGE_THRESHOLD, |b| b.threshold),
];

type ProcField = fn(&crate::source::process::ProcessStats) -> f64;

const PROCESS: [(&MetricDef, ProcField); 5] = [
    (&c::INFRA_CPU_USER, |p| p.cpu_user_seconds),
    (&c::INFRA_CPU_SYSTEM, |p| p.cpu_system_seconds),
    (&c::INFRA_MEM_RESIDENT, |p| p.resident_bytes as f64),
    (&c::INFRA_MEM_VIRTUAL, |p| p.virtual_bytes as f64),
    (&c::INFRA_MEM_SHARED, |p| p.shared_bytes as f64),
];

/// Writes the hypervisor families.
pub(super) fn encode(enc: &mut DescriptorEncoder<'_>, vms: &[VmView<'_>]) -> std::fmt::Result {
    let mut f = family(enc, &c::DOMAIN_STATE)?;
    for vm in vms {
        if let Some(st) = vm.libvirt.and_then(|s| s.state) {
            f.vm_sample(vm, &[("state", st.state_name()), ("reason", st.reason_name())], Some(1.0))?;
        }
    }
    for (def, get) in PER_VM {
        let mut f = family(enc, def)?;
        for vm in vms {
            f.vm_sample(vm, &[], vm.libvirt.and_then(get))?;
        }
    }
    for (def, get) in PROCESS {
        let mut f = family(enc, def)?;
        for vm in vms {
            let mut seen = std::collections::BTreeSet::new();
            for p in vm.processes.map(|p| p.processes.as_slice()).unwrap_or_default() {
                // One series per process name (a second process of the same name is skipped).
                if seen.insert(p.name.as_str()) {
                    f.vm_sample(vm, &[("process", &p.name)], Some(get(p)))?;
                }
            }
        }
    }
    for (def, get) in BLOCK {
        let mut f = family(enc, def)?;
        for vm in vms {
            for b in vm.libvirt.map(|s| s.blocks.as_slice()).unwrap_or_default() {
                f.vm_sample(vm, &[("drive", &b.name)], num(get(b)))?;
            }
        }
    }
    Ok(())
}
