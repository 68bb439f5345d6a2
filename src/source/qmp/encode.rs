//! The QMP source's families: run state, extended block statistics and accelerator stats.
//! (Its event counters and migration data are written by `collector::events`, which picks one
//! source per VM for them.)

use super::families as c;
use super::{BlockExt, Qmp};
use crate::model::exposition::{family, num};
use crate::model::metric::MetricDef;
use crate::source::api::VmView;

type BlockField = fn(&BlockExt) -> Option<f64>;
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

/// Every family, in the order [`encode`] writes them.
pub(super) fn families() -> Vec<&'static MetricDef> {
    let mut out: Vec<&'static MetricDef> = vec![&c::QEMU_STATUS];
    out.extend(BLOCK.iter().map(|(d, _)| *d));
    out.push(&c::QEMU_STAT);
    out
}

/// Writes the QMP families.
pub(super) fn encode(enc: &mut crate::model::exposition::Out<'_>, vms: &[VmView<'_>]) -> std::fmt::Result {
    let mut f = family(enc, &c::QEMU_STATUS)?;
    for vm in vms {
        if let Some(st) = vm.sample::<Qmp>().and_then(|q| q.status.as_deref()) {
            f.vm_sample(vm, &[("status", st)], Some(1.0))?;
        }
    }
    for (def, get) in BLOCK {
        let mut f = family(enc, def)?;
        for vm in vms {
            // Two QEMU devices never share a label, but a duplicate would make Prometheus
            // reject the scrape's second sample: keep the first.
            let mut seen = std::collections::BTreeSet::new();
            for b in vm.sample::<Qmp>().map(|q| q.blocks.as_slice()).unwrap_or_default() {
                let drive = crate::source::libvirt::drive_label(vm, &b.drive);
                if seen.insert(drive) {
                    f.vm_sample(vm, &[("drive", drive)], get(b))?;
                }
            }
        }
    }
    let mut f = family(enc, &c::QEMU_STAT)?;
    for vm in vms {
        for (stat, v) in vm.sample::<Qmp>().map(|q| &q.stats).into_iter().flatten() {
            f.vm_sample(vm, &[("stat", stat)], Some(*v))?;
        }
    }
    Ok(())
}
