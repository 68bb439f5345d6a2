//! Event counters and migration statistics. Each VM gets them from one source for its life:
//! its direct QMP monitor when it has one configured, else libvirt (domain events and job
//! stats). Switching to libvirt while QMP is stale would make `…_total` counters jump or go
//! backwards (two sources count from different starts); a stale QMP source's series are
//! absent instead.

use super::{VmView, family, num};
use crate::catalogue::{self as c, MetricDef};
use crate::source::SourceKind;
use crate::source::libvirt::Libvirt;
use crate::source::qmp::{EventCounts, Migration, Qmp};

type MigField = fn(&Migration) -> Option<f64>;

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
    (&c::MIG_DIRTY_RATE, Migration::dirty_rate_bytes_per_second),
    (&c::MIG_ITERATION, |m| num(m.iteration)),
];

/// Every family written here, in order.
pub(crate) const FAMILIES: [&MetricDef; 20] = [
    &c::MIG_DOWNTIME,
    &c::MIG_ELAPSED,
    &c::MIG_DATA_TOTAL,
    &c::MIG_DATA_PROCESSED,
    &c::MIG_DATA_REMAINING,
    &c::MIG_MEM_TOTAL,
    &c::MIG_MEM_PROCESSED,
    &c::MIG_MEM_REMAINING,
    &c::MIG_MEM_BPS,
    &c::MIG_CONSTANT,
    &c::MIG_COMPRESSION,
    &c::MIG_DIRTY_RATE,
    &c::MIG_ITERATION,
    &c::MIG_LAST_COMPLETED,
    &c::GUEST_PANICS,
    &c::REBOOTS,
    &c::AGENT_CONNECTS,
    &c::AGENT_CONNECTED,
    &c::BLOCK_IO_ERRORS,
    &c::STATE_CHANGES,
];

/// Event counts of the VM's counting source: QMP when it has a QMP source, else libvirt.
fn events<'a>(vm: &VmView<'a>) -> Option<&'a EventCounts> {
    if vm.runs(SourceKind::Qmp) {
        vm.sample::<Qmp>().map(|q| &q.events)
    } else {
        vm.sample::<Libvirt>().map(|l| &l.events)
    }
}

/// The migration to export (the same source's view), honouring `keep_ephemeral`, and when
/// the last one completed.
fn migration<'a>(vm: &VmView<'a>) -> Option<(&'a Migration, Option<f64>)> {
    let m = if vm.runs(SourceKind::Qmp) {
        vm.sample::<Qmp>().and_then(|q| q.migration.as_ref().map(|m| (m, q.migration_last_completed_at)))
    } else {
        vm.sample::<Libvirt>().and_then(|l| l.job.as_ref().map(|j| (j, l.job_completed_at)))
    };
    m.filter(|(m, _)| m.active || vm.keep_ephemeral)
}

/// Writes the migration and event families.
pub(super) fn encode(enc: &mut crate::collector::Out<'_>, vms: &[VmView<'_>]) -> std::fmt::Result {
    let migrations: Vec<_> = vms.iter().map(migration).collect();
    for (def, get) in MIGRATION {
        let mut f = family(enc, def)?;
        for (vm, m) in vms.iter().zip(&migrations) {
            f.vm_sample(vm, &[], m.and_then(|(m, _)| get(m)))?;
        }
    }
    let mut f = family(enc, &c::MIG_LAST_COMPLETED)?;
    for (vm, m) in vms.iter().zip(&migrations) {
        f.vm_sample(vm, &[], m.and_then(|(_, t)| t))?;
    }
    let events: Vec<_> = vms.iter().map(events).collect();
    let mut f = family(enc, &c::GUEST_PANICS)?;
    for (vm, e) in vms.iter().zip(&events) {
        let Some(e) = e else { continue };
        // `unknown/unknown` is exported from the start (at 0), so the first panic shows as an
        // increase: a series that appears at 1 gives increase() nothing.
        if !e.panics.get("unknown").is_some_and(|c| c.contains_key("unknown")) {
            f.vm_sample(vm, &[("type", "unknown"), ("bugcheck_code", "unknown")], Some(0.0))?;
        }
        for (ty, codes) in &e.panics {
            for (code, n) in codes {
                f.vm_sample(vm, &[("type", ty), ("bugcheck_code", code)], Some(*n as f64))?;
            }
        }
    }
    let mut f = family(enc, &c::REBOOTS)?;
    for (vm, e) in vms.iter().zip(&events) {
        if let Some(e) = e {
            f.vm_sample(vm, &[("initiator", "guest")], Some(e.reboots_guest as f64))?;
            f.vm_sample(vm, &[("initiator", "host")], Some(e.reboots_host as f64))?;
            f.vm_sample(vm, &[("initiator", "unknown")], Some(e.reboots_unknown as f64))?;
        }
    }
    let mut f = family(enc, &c::AGENT_CONNECTS)?;
    for (vm, e) in vms.iter().zip(&events) {
        f.vm_sample(vm, &[], e.map(|e| e.agent_connects as f64))?;
    }
    let mut f = family(enc, &c::AGENT_CONNECTED)?;
    for (vm, e) in vms.iter().zip(&events) {
        f.vm_sample(vm, &[], e.and_then(|e| e.agent_connected).map(|b| f64::from(u8::from(b))))?;
    }
    let mut f = family(enc, &c::BLOCK_IO_ERRORS)?;
    for (vm, e) in vms.iter().zip(&events) {
        for (drive, ops) in e.map(|e| &e.block_io_errors).into_iter().flatten() {
            for (op, n) in ops {
                f.vm_sample(vm, &[("drive", vm.drive_label(drive)), ("operation", op)], Some(*n as f64))?;
            }
        }
    }
    let mut f = family(enc, &c::STATE_CHANGES)?;
    for (vm, e) in vms.iter().zip(&events) {
        let Some(e) = e else { continue };
        // Every state a VM can enter is exported from the start, so increase() sees the first.
        for to in ["running", "paused", "pmsuspended", "shutdown", "crashed"] {
            f.vm_sample(vm, &[("to", to)], Some(e.state_changes.get(to).copied().unwrap_or(0) as f64))?;
        }
    }
    Ok(())
}
