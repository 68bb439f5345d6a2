//! From a direct QMP monitor: run state, extended block statistics, accelerator stats, event
//! counters; and migration statistics (QMP's view, else libvirt's job stats).

use prometheus_client::encoding::DescriptorEncoder;

use super::{VmView, family, num};
use crate::catalogue::{self as c, MetricDef};
use crate::source::qmp::{BlockExt, EventCounts, Migration};

type BlockField = fn(&BlockExt) -> Option<f64>;
type MigField = fn(&Migration) -> Option<f64>;

const BLOCK: [(&MetricDef, BlockField); 11] = [
    (&c::STORAGE_FAILED_READ, |b| num(b.failed_rd_operations)),
    (&c::STORAGE_FAILED_WRITE, |b| num(b.failed_wr_operations)),
    (&c::STORAGE_FAILED_FLUSH, |b| num(b.failed_flush_operations)),
    (&c::STORAGE_INVALID_READ, |b| num(b.invalid_rd_operations)),
    (&c::STORAGE_INVALID_WRITE, |b| num(b.invalid_wr_operations)),
    (&c::STORAGE_INVALID_FLUSH, |b| num(b.invalid_flush_operations)),
    (&c::STORAGE_UNMAP_OPS, |b| num(b.unmap_operations)),
    (&c::STORAGE_UNMAP_BYTES, |b| num(b.unmap_bytes)),
    (&c::STORAGE_MERGED_READ, |b| num(b.rd_merged)),
    (&c::STORAGE_MERGED_WRITE, |b| num(b.wr_merged)),
    (&c::STORAGE_IDLE, |b| b.idle_time_ns.map(|v| v as f64 / 1e9)),
];

const MIGRATION: [(&MetricDef, MigField); 13] = [
    (&c::MIG_DOWNTIME, |m| m.downtime_seconds),
    (&c::MIG_ELAPSED, |m| m.elapsed_seconds),
    (&c::MIG_DATA_TOTAL, |m| num(m.data_total_bytes)),
    (&c::MIG_DATA_PROCESSED, |m| num(m.data_processed_bytes)),
    (&c::MIG_DATA_REMAINING, |m| num(m.data_remaining_bytes)),
    (&c::MIG_MEM_TOTAL, |m| num(m.memory_total_bytes)),
    (&c::MIG_MEM_PROCESSED, |m| num(m.memory_processed_bytes)),
    (&c::MIG_MEM_REMAINING, |m| num(m.memory_remaining_bytes)),
    (&c::MIG_MEM_BPS, |m| m.memory_bps),
    (&c::MIG_CONSTANT, |m| num(m.memory_constant_pages)),
    (&c::MIG_COMPRESSION, |m| num(m.compression_bytes)),
    (&c::MIG_DIRTY_RATE, |m| num(m.dirty_rate_pages_per_second)),
    (&c::MIG_ITERATION, |m| num(m.iteration)),
];

/// Event counts: the direct monitor's for a VM with a QMP source, else libvirt's domain
/// events (`VmView` never offers both).
fn events<'a>(vm: &VmView<'a>) -> Option<&'a EventCounts> {
    vm.qmp.map(|q| &q.events).or(vm.libvirt_events)
}

/// Writes the QMP and migration families.
pub(super) fn encode(enc: &mut DescriptorEncoder<'_>, vms: &[VmView<'_>]) -> std::fmt::Result {
    let mut f = family(enc, &c::QEMU_STATUS)?;
    for vm in vms {
        if let Some(st) = vm.qmp.and_then(|q| q.status.as_deref()) {
            f.vm_sample(vm, &[("status", st)], Some(1.0))?;
        }
    }
    for (def, get) in BLOCK {
        let mut f = family(enc, def)?;
        for vm in vms {
            for b in vm.qmp.map(|q| q.blocks.as_slice()).unwrap_or_default() {
                f.vm_sample(vm, &[("drive", &b.drive)], get(b))?;
            }
        }
    }
    let mut f = family(enc, &c::QEMU_STAT)?;
    for vm in vms {
        for (stat, v) in vm.qmp.map(|q| &q.stats).into_iter().flatten() {
            f.vm_sample(vm, &[("stat", stat)], Some(*v))?;
        }
    }
    for (def, get) in MIGRATION {
        let mut f = family(enc, def)?;
        for vm in vms {
            f.vm_sample(vm, &[], vm.migration.and_then(|(m, _)| get(m)))?;
        }
    }
    let mut f = family(enc, &c::MIG_LAST_COMPLETED)?;
    for vm in vms {
        f.vm_sample(vm, &[], vm.migration.and_then(|(_, t)| t))?;
    }
    let mut f = family(enc, &c::GUEST_PANICS)?;
    for vm in vms {
        f.vm_sample(vm, &[], events(vm).map(|e| e.guest_panics as f64))?;
    }
    let mut f = family(enc, &c::REBOOTS)?;
    for vm in vms {
        if let Some(e) = events(vm) {
            f.vm_sample(vm, &[("initiator", "guest")], Some(e.reboots_guest as f64))?;
            f.vm_sample(vm, &[("initiator", "host")], Some(e.reboots_host as f64))?;
            f.vm_sample(vm, &[("initiator", "unknown")], Some(e.reboots_unknown as f64))?;
        }
    }
    let mut f = family(enc, &c::AGENT_CONNECTS)?;
    for vm in vms {
        f.vm_sample(vm, &[], events(vm).map(|e| e.agent_connects as f64))?;
    }
    let mut f = family(enc, &c::AGENT_CONNECTED)?;
    for vm in vms {
        f.vm_sample(vm, &[], events(vm).and_then(|e| e.agent_connected).map(|b| f64::from(u8::from(b))))?;
    }
    let mut f = family(enc, &c::BLOCK_IO_ERRORS)?;
    for vm in vms {
        for (drive, ops) in events(vm).map(|e| &e.block_io_errors).into_iter().flatten() {
            for (op, n) in ops {
                f.vm_sample(vm, &[("drive", drive), ("operation", op)], Some(*n as f64))?;
            }
        }
    }
    let mut f = family(enc, &c::STATE_CHANGES)?;
    for vm in vms {
        let Some(e) = events(vm) else { continue };
        // Every state a VM can enter is exported from the start, so increase() sees the first.
        for to in ["running", "paused", "pmsuspended", "shutdown", "crashed"] {
            f.vm_sample(vm, &[("to", to)], Some(e.state_changes.get(to).copied().unwrap_or(0) as f64))?;
        }
    }
    Ok(())
}
