//! Event counters and migration statistics. Each VM gets them from one source for its life:
//! its direct QMP monitor when it has one configured, else libvirt (domain events and job
//! stats). Switching to libvirt while QMP is stale would make `…_total` counters jump or go
//! backwards (two sources count from different starts); a stale QMP source's series are
//! absent instead.

use crate::model::exposition::{family, num};
use crate::model::metric::MetricDef;
use crate::model::metric::{B, N, S, family};
use crate::source::SourceKind;
use crate::source::api::VmView;
use crate::source::events::{EventCounts, Migration};
use crate::source::libvirt::Libvirt;
use crate::source::qmp::Qmp;

type MigField = fn(&Migration) -> Option<f64>;

const MIGRATION: [(&MetricDef, MigField); 13] = [
    (&MIG_DOWNTIME, |m| m.downtime_seconds),
    (&MIG_ELAPSED, |m| m.elapsed_seconds),
    (&MIG_DATA_TOTAL, |m| num(m.data_total_bytes)),
    (&MIG_DATA_PROCESSED, |m| num(m.data_processed_bytes)),
    (&MIG_DATA_REMAINING, |m| num(m.data_remaining_bytes)),
    (&MIG_MEM_TOTAL, |m| num(m.memory_total_bytes)),
    (&MIG_MEM_PROCESSED, |m| num(m.memory_processed_bytes)),
    (&MIG_MEM_REMAINING, |m| num(m.memory_remaining_bytes)),
    (&MIG_MEM_BPS, |m| m.memory_bps),
    (&MIG_CONSTANT, |m| num(m.memory_constant_pages)),
    (&MIG_COMPRESSION, |m| num(m.compression_bytes)),
    (&MIG_DIRTY_RATE, Migration::dirty_rate_bytes_per_second),
    (&MIG_ITERATION, |m| num(m.iteration)),
];

/// Every family written here, in order.
pub(crate) const FAMILIES: [&MetricDef; 20] = [
    &MIG_DOWNTIME,
    &MIG_ELAPSED,
    &MIG_DATA_TOTAL,
    &MIG_DATA_PROCESSED,
    &MIG_DATA_REMAINING,
    &MIG_MEM_TOTAL,
    &MIG_MEM_PROCESSED,
    &MIG_MEM_REMAINING,
    &MIG_MEM_BPS,
    &MIG_CONSTANT,
    &MIG_COMPRESSION,
    &MIG_DIRTY_RATE,
    &MIG_ITERATION,
    &MIG_LAST_COMPLETED,
    &GUEST_PANICS,
    &REBOOTS,
    &AGENT_CONNECTS,
    &AGENT_CONNECTED,
    &BLOCK_IO_ERRORS,
    &STATE_CHANGES,
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
pub(super) fn encode(enc: &mut crate::model::exposition::Out<'_>, vms: &[VmView<'_>]) -> std::fmt::Result {
    let migrations: Vec<_> = vms.iter().map(migration).collect();
    for (def, get) in MIGRATION {
        let mut f = family(enc, def)?;
        for (vm, m) in vms.iter().zip(&migrations) {
            f.vm_sample(vm, &[], m.and_then(|(m, _)| get(m)))?;
        }
    }
    let mut f = family(enc, &MIG_LAST_COMPLETED)?;
    for (vm, m) in vms.iter().zip(&migrations) {
        f.vm_sample(vm, &[], m.and_then(|(_, t)| t))?;
    }
    let events: Vec<_> = vms.iter().map(events).collect();
    let mut f = family(enc, &GUEST_PANICS)?;
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
    let mut f = family(enc, &REBOOTS)?;
    for (vm, e) in vms.iter().zip(&events) {
        if let Some(e) = e {
            f.vm_sample(vm, &[("initiator", "guest")], Some(e.reboots_guest as f64))?;
            f.vm_sample(vm, &[("initiator", "host")], Some(e.reboots_host as f64))?;
            f.vm_sample(vm, &[("initiator", "unknown")], Some(e.reboots_unknown as f64))?;
        }
    }
    let mut f = family(enc, &AGENT_CONNECTS)?;
    for (vm, e) in vms.iter().zip(&events) {
        f.vm_sample(vm, &[], e.map(|e| e.agent_connects as f64))?;
    }
    let mut f = family(enc, &AGENT_CONNECTED)?;
    for (vm, e) in vms.iter().zip(&events) {
        f.vm_sample(vm, &[], e.and_then(|e| e.agent_connected).map(|b| f64::from(u8::from(b))))?;
    }
    let mut f = family(enc, &BLOCK_IO_ERRORS)?;
    for (vm, e) in vms.iter().zip(&events) {
        for (drive, ops) in e.map(|e| &e.block_io_errors).into_iter().flatten() {
            for (op, n) in ops {
                f.vm_sample(
                    vm,
                    &[("drive", crate::source::libvirt::drive_label(vm, drive)), ("operation", op)],
                    Some(*n as f64),
                )?;
            }
        }
    }
    let mut f = family(enc, &STATE_CHANGES)?;
    for (vm, e) in vms.iter().zip(&events) {
        let Some(e) = e else { continue };
        // Every state a VM can enter is exported from the start, so increase() sees the first.
        for to in ["running", "paused", "pmsuspended", "shutdown", "crashed"] {
            f.vm_sample(vm, &[("to", to)], Some(e.state_changes.get(to).copied().unwrap_or(0) as f64))?;
        }
    }
    Ok(())
}

family!(
    MIG_DOWNTIME,
    "kubevirt_vmi_migration_downtime",
    Gauge,
    S,
    [],
    Hypervisor,
    "qmp query-migrate / libvirt job downtime",
    Vm,
    "Migration downtime: expected while running, actual once completed."
);
family!(
    MIG_ELAPSED,
    "kubevirt_vmi_migration_elapsed",
    Gauge,
    S,
    [],
    Hypervisor,
    "qmp query-migrate total-time / libvirt job time_elapsed",
    Vm,
    "Time the migration has been running."
);
family!(
    MIG_DATA_TOTAL,
    "kubevirt_vmi_migration_data",
    Counter,
    B,
    [],
    Hypervisor,
    "libvirt job data_total / qmp ram+disk total",
    Vm,
    "The total Guest OS data to be migrated to the new VM (memory and disks), as KubeVirt."
);
family!(
    MIG_DATA_PROCESSED,
    "kubevirt_vmi_migration_data_processed",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job data_processed / qmp ram+disk transferred",
    Vm,
    "Bytes the migration transferred."
);
family!(
    MIG_DATA_REMAINING,
    "kubevirt_vmi_migration_data_remaining",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job data_remaining / qmp ram+disk remaining",
    Vm,
    "Bytes the migration has left to transfer."
);
family!(
    MIG_MEM_TOTAL,
    "kubevirt_vmi_migration_memory_total",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job memory_total / qmp ram.total",
    Vm,
    "Guest memory to migrate."
);
family!(
    MIG_MEM_PROCESSED,
    "kubevirt_vmi_migration_memory_processed",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job memory_processed / qmp ram.transferred",
    Vm,
    "Guest memory transferred."
);
family!(
    MIG_MEM_REMAINING,
    "kubevirt_vmi_migration_memory_remaining",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job memory_remaining / qmp ram.remaining",
    Vm,
    "Guest memory left to transfer."
);
family!(
    MIG_MEM_BPS,
    "kubevirt_vmi_migration_memory_transfer_rate",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job memory_bps / qmp ram.mbps",
    Vm,
    "The rate at which the memory is being transferred, in bytes per second."
);
family!(
    MIG_CONSTANT,
    "kubevirt_vmi_migration_memory_constant_pages",
    Gauge,
    N,
    [],
    Hypervisor,
    "libvirt job memory_constant / qmp ram.duplicate",
    Vm,
    "Pages found to be constant (zero) and not sent in full."
);
family!(
    MIG_COMPRESSION,
    "kubevirt_vmi_migration_compression",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job compression_bytes / qmp compression.compressed-size",
    Vm,
    "Compressed bytes sent."
);
family!(
    MIG_DIRTY_RATE,
    "kubevirt_vmi_migration_dirty_memory_rate",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job memory_dirty_rate x memory_page_size / qmp ram.dirty-pages-rate x ram.page-size",
    Vm,
    "The rate of memory being dirtied in the Guest OS during migration, in bytes per second."
);
family!(
    MIG_ITERATION,
    "kubevirt_vmi_migration_iteration",
    Gauge,
    N,
    [],
    Hypervisor,
    "libvirt job memory_iteration / qmp ram.dirty-sync-count",
    Vm,
    "Memory copy iterations so far."
);
family!(
    MIG_LAST_COMPLETED,
    "kubevirt_vmi_migration_last_completed_timestamp",
    Gauge,
    S,
    [],
    Hypervisor,
    "vmbridge (with --keep-ephemeral)",
    Vm,
    "When vmbridge first saw the last migration job completed, seconds since the Unix epoch."
);
family!(
    GUEST_PANICS,
    "kubevirt_vmi_guest_os_panic",
    Counter,
    N,
    ["type", "bugcheck_code"],
    Hypervisor,
    "qmp event GUEST_PANICKED (info.type, info.arg1) / libvirt CRASHED event (unknown, unknown)",
    VmWithoutNode,
    "Guest OS panics vmbridge has seen since it discovered the VM, by panic type and (Hyper-V) bugcheck code, as KubeVirt (no node label)."
);
family!(
    BLOCK_IO_ERRORS,
    "kubevirt_vmi_block_io_errors",
    Counter,
    N,
    ["drive", "operation"],
    Hypervisor,
    "qmp event BLOCK_IO_ERROR / libvirt IO_ERROR event",
    Vm,
    "Block I/O errors vmbridge has seen since it discovered the VM."
);
family!(
    REBOOTS,
    "kubevirt_vmi_reboots",
    Counter,
    N,
    ["initiator"],
    Hypervisor,
    "qmp event RESET / libvirt REBOOT event",
    Vm,
    "Resets and reboots vmbridge has seen since it discovered the VM, by initiator (guest: reboot, triple fault, firmware; host: virsh reset, system_reset; unknown: from libvirt's REBOOT event, which does not say)."
);
family!(
    AGENT_CONNECTS,
    "kubevirt_vmi_agent_connects",
    Counter,
    N,
    [],
    Hypervisor,
    "qmp event VSERPORT_CHANGE (agent port) / libvirt AGENT_LIFECYCLE event",
    Vm,
    "Times the guest agent connected its channel since vmbridge discovered the VM."
);
family!(
    AGENT_CONNECTED,
    "kubevirt_vmi_agent_connected",
    Gauge,
    N,
    [],
    Hypervisor,
    "qmp event VSERPORT_CHANGE (agent port) / libvirt AGENT_LIFECYCLE event",
    Vm,
    "1 while the guest agent's channel is open, 0 when closed; absent until a change was seen."
);
family!(
    STATE_CHANGES,
    "kubevirt_vmi_state_changes",
    Counter,
    N,
    ["to"],
    Hypervisor,
    "qmp events STOP, RESUME, SUSPEND, WAKEUP, SHUTDOWN, GUEST_PANICKED / libvirt LIFECYCLE events",
    Vm,
    "Run-state changes vmbridge has seen since it discovered the VM, by the state entered."
);
