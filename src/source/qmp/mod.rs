//! The QMP source: a second, direct monitor per VM (QEMU serves several `-qmp` monitors at
//! once), so vmbridge reads run state, extended block statistics, balloon, migration and
//! `query-stats`, and counts events, without disturbing libvirt's own monitor.
//!
//! - [`allow`]: the read-only allow-list, enforced by type.
//! - [`conn`]: greeting, capabilities, one command in flight over [`crate::source::wire`].
//! - [`poller`]: the per-VM poll and event counting.

pub mod allow;
pub mod config;
pub mod conn;
mod encode;
pub mod families;
pub mod poller;

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use serde_json::Value;

use crate::source::events::{EventCounts, Migration};

/// The QMP source.
#[derive(Debug)]
pub enum Qmp {}

impl crate::source::api::Source for Qmp {
    const KIND: crate::source::SourceKind = crate::source::SourceKind::Qmp;
    type Sample = QmpSample;
    type Settings = config::QmpRuntime;
    type Poller = poller::QmpPoller;

    fn settings(all: &crate::source::Sources) -> &config::QmpRuntime {
        &all.qmp
    }

    fn sample(sample: &crate::source::SourceSample) -> Option<&QmpSample> {
        match sample {
            crate::source::SourceSample::Qmp(q) => Some(q),
            _ => None,
        }
    }

    /// A VM under `[[vms]]` with a `qmp_socket`, or a discovered VM when `qmp.socket_pattern`
    /// is set.
    fn poller(vm: &crate::source::VmStart<'_>, settings: &config::QmpRuntime) -> Option<poller::QmpPoller> {
        let path = match vm.sockets {
            Some(s) => s.qmp_socket.clone(),
            None => settings.socket_for(vm.domain, vm.id),
        }?;
        Some(poller::QmpPoller::new(path, settings.timeout, settings.max_message_bytes, settings.max_poll_bytes))
    }

    fn families() -> Vec<&'static crate::model::metric::MetricDef> {
        encode::families()
    }

    fn encode(enc: &mut crate::model::exposition::Out<'_>, vms: &[crate::source::api::VmView<'_>]) -> std::fmt::Result {
        encode::encode(enc, vms)
    }
}

/// Extended per-drive block statistics that libvirt's bulk stats do not carry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct BlockExt {
    /// Drive id (`device`, else the qdev path).
    pub drive: String,
    /// Failed reads.
    pub failed_rd_operations: Option<u64>,
    /// Failed writes.
    pub failed_wr_operations: Option<u64>,
    /// Failed flushes.
    pub failed_flush_operations: Option<u64>,
    /// Invalid reads.
    pub invalid_rd_operations: Option<u64>,
    /// Invalid writes.
    pub invalid_wr_operations: Option<u64>,
    /// Invalid flushes.
    pub invalid_flush_operations: Option<u64>,
    /// Unmap (discard) operations.
    pub unmap_operations: Option<u64>,
    /// Bytes unmapped.
    pub unmap_bytes: Option<u64>,
    /// Reads merged into others.
    pub rd_merged: Option<u64>,
    /// Writes merged into others.
    pub wr_merged: Option<u64>,
    /// Time since the last I/O, ns (absent before the first I/O).
    pub idle_time_ns: Option<u64>,
}

/// What the QMP source knows about one VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct QmpSample {
    /// QEMU version from the greeting.
    pub qemu_version: Option<String>,
    /// Capabilities QEMU offered in its greeting (none are enabled: vmbridge needs none).
    pub capabilities: Vec<String>,
    /// Run state (`running`, `paused`, `guest-panicked`, `io-error`, …).
    pub status: Option<String>,
    /// Extended block statistics.
    pub blocks: Vec<BlockExt>,
    /// Current balloon size, bytes (`query-balloon`).
    pub balloon_actual_bytes: Option<u64>,
    /// The balloon driver's guest statistics (`qom-get … guest-stats`: `stat-free-memory`,
    /// `stat-total-memory`, …, bytes), when the guest runs a balloon driver. Shown in
    /// `/debug`; the exported memory families come from libvirt's memory stats, which carry
    /// the same figures.
    pub balloon_guest_stats: BTreeMap<String, u64>,
    /// The current or last migration.
    pub migration: Option<Migration>,
    /// When the last migration completed, seconds since the Unix epoch.
    pub migration_last_completed_at: Option<f64>,
    /// `query-stats` scalar values for target `vm`, `provider/name` → value.
    pub stats: BTreeMap<String, f64>,
    /// Event counts.
    pub events: EventCounts,
    /// The most recent events, newest last (bounded).
    pub recent_events: VecDeque<Value>,
    /// Last raw reply per command, truncated.
    pub raw: BTreeMap<String, String>,
}

impl BlockExt {
    /// From one `query-blockstats` entry.
    pub fn from_blockstats(v: &Value) -> Option<BlockExt> {
        let drive = v.get("device").and_then(Value::as_str).filter(|d| !d.is_empty());
        let drive = drive.or_else(|| v.get("qdev").and_then(Value::as_str))?;
        let st = &v["stats"];
        let u = |k: &str| st.get(k).and_then(Value::as_u64);
        Some(BlockExt {
            drive: crate::model::label(drive, 128),
            failed_rd_operations: u("failed_rd_operations"),
            failed_wr_operations: u("failed_wr_operations"),
            failed_flush_operations: u("failed_flush_operations"),
            invalid_rd_operations: u("invalid_rd_operations"),
            invalid_wr_operations: u("invalid_wr_operations"),
            invalid_flush_operations: u("invalid_flush_operations"),
            unmap_operations: u("unmap_operations"),
            unmap_bytes: u("unmap_bytes"),
            rd_merged: u("rd_merged"),
            wr_merged: u("wr_merged"),
            idle_time_ns: u("idle_time_ns"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn migration_from_query_migrate() {
        assert_eq!(Migration::from_query_migrate(&json!({"status": "none"})), None);
        let m = Migration::from_query_migrate(&json!({
            "status": "completed", "total-time": 1500, "downtime": 20, "expected-downtime": 300,
            "ram": {"total": 100, "transferred": 90, "remaining": 0, "mbps": 8.0, "duplicate": 7, "dirty-pages-rate": 3, "dirty-sync-count": 2}
        }))
        .expect("some");
        assert!(!m.active);
        assert_eq!(m.elapsed_seconds, Some(1.5));
        assert_eq!(m.downtime_seconds, Some(0.02));
        assert_eq!(m.memory_bps, Some(1e6));
        assert_eq!(m.data_processed_bytes, Some(90));
        assert_eq!(m.iteration, Some(2));
    }

    #[test]
    fn a_huge_or_negative_mbps_is_left_out_not_infinite() {
        for mbps in [json!(1e308), json!(f64::MAX), json!(-8.0), json!(1e13)] {
            let m = Migration::from_query_migrate(&json!({"status": "active", "ram": {"mbps": mbps}}))
                .expect("a migration");
            assert_eq!(m.memory_bps, None, "mbps {mbps}");
        }
        // 100 Gbit/s is believed.
        let m = Migration::from_query_migrate(&json!({"status": "active", "ram": {"mbps": 100000.0}}))
            .expect("a migration");
        assert_eq!(m.memory_bps, Some(12.5e9));
    }

    #[test]
    fn extreme_migration_values_saturate_instead_of_overflowing() {
        // Found by fuzz/fuzz_targets/qmp_message.rs (fuzz/artifacts-found/).
        let m = Migration::from_query_migrate(
            &json!({"status": "active", "ram": {"total": u64::MAX}, "disk": {"total": 1}}),
        )
        .expect("some");
        assert_eq!(m.data_total_bytes, Some(u64::MAX));
    }

    fn at(ev: Value, t: f64) -> Value {
        let mut ev = ev;
        ev["timestamp"] = json!({"seconds": t.trunc() as u64, "microseconds": ((t.fract()) * 1e6).round() as u64});
        ev
    }

    #[test]
    fn one_reset_with_its_firmware_follow_up_is_one_reboot() {
        let mut c = EventCounts::default();
        // `virsh reset`: host RESET, then the firmware's guest RESET 94 ms later.
        c.count(
            &at(json!({"event": "RESET", "data": {"guest": false, "reason": "host-qmp-system-reset"}}), 100.0),
            |_| false,
        );
        c.count(&at(json!({"event": "RESET", "data": {"guest": true, "reason": "guest-reset"}}), 100.094), |_| false);
        assert_eq!((c.reboots_host, c.reboots_guest), (1, 0));
        // A second `virsh reset` right away is a reboot of its own.
        c.count(&at(json!({"event": "RESET", "data": {"guest": false}}), 100.2), |_| false);
        assert_eq!((c.reboots_host, c.reboots_guest), (2, 0));
        // A guest reboot: two guest RESETs close together, one reboot.
        c.count(&at(json!({"event": "RESET", "data": {"guest": true}}), 200.0), |_| false);
        c.count(&at(json!({"event": "RESET", "data": {"guest": true}}), 200.09), |_| false);
        assert_eq!((c.reboots_host, c.reboots_guest), (2, 1));
        // Later guest resets are reboots again; a reset is never a state change.
        c.count(&at(json!({"event": "RESET", "data": {"guest": true}}), 210.0), |_| false);
        assert_eq!(c.reboots_guest, 2);
        assert!(c.state_changes.is_empty(), "{:?}", c.state_changes);
    }

    #[test]
    fn libvirt_reboots_soon_after_each_other_are_one() {
        use crate::source::libvirt::ffi::DomainEvent;
        let mut c = EventCounts::default();
        c.count_libvirt(&DomainEvent::Reboot, 50.0);
        c.count_libvirt(&DomainEvent::Reboot, 50.1);
        assert_eq!(c.reboots_unknown, 1);
        c.count_libvirt(&DomainEvent::Reboot, 52.0);
        assert_eq!(c.reboots_unknown, 2);
    }

    #[test]
    fn powerdown_is_not_a_state_change_and_states_count_when_entered() {
        let mut c = EventCounts::default();
        // `virsh shutdown` of a guest that ignores the power button: the VM keeps running.
        c.count(&json!({"event": "POWERDOWN"}), |_| false);
        assert!(c.state_changes.is_empty());
        c.count(&json!({"event": "STOP"}), |_| false);
        c.count(&json!({"event": "STOP"}), |_| false);
        c.count(&json!({"event": "RESUME"}), |_| false);
        assert_eq!(c.state_changes.get("paused"), Some(&1), "paused once, not twice");
        assert_eq!(c.state_changes.get("running"), Some(&1));
        c.count(&json!({"event": "SHUTDOWN", "data": {"guest": true}}), |_| false);
        assert_eq!(c.state_changes.get("shutdown"), Some(&1));
        // libvirt: STARTED then RESUMED while running is one entry into running.
        use crate::source::libvirt::ffi::DomainEvent;
        let mut l = EventCounts::default();
        l.count_libvirt(&DomainEvent::Lifecycle { event: 2, detail: 0 }, 1.0);
        l.count_libvirt(&DomainEvent::Lifecycle { event: 4, detail: 0 }, 1.1);
        l.count_libvirt(&DomainEvent::Lifecycle { event: 3, detail: 0 }, 2.0);
        assert_eq!(l.state_changes.get("running"), Some(&1));
        assert_eq!(l.state_changes.get("paused"), Some(&1));
    }

    #[test]
    fn events_are_counted_by_kind_and_unknown_ones_ignored() {
        let mut c = EventCounts::default();
        for ev in [
            json!({"event": "STOP"}),
            json!({"event": "RESUME"}),
            json!({"event": "RESET", "data": {"guest": true}}),
            json!({"event": "GUEST_PANICKED", "data": {"action": "pause"}}),
            json!({"event": "BLOCK_IO_ERROR", "data": {"device": "", "node-name": "libvirt-1-format", "operation": "write"}}),
            json!({"event": "VSERPORT_CHANGE", "data": {"id": "channel0", "open": true}}),
            json!({"event": "SOMETHING_FROM_QEMU_12", "data": {}}),
        ] {
            c.count(&ev, |id| id == "channel0");
        }
        assert_eq!((c.reboots_guest, c.reboots_host), (1, 0));
        assert_eq!(c.guest_panics, 1);
        assert_eq!(c.state_changes.get("paused"), Some(&1));
        assert_eq!(c.state_changes.get("crashed"), Some(&1));
        assert_eq!(c.block_io_errors["libvirt-1-format"]["write"], 1);
        assert_eq!((c.agent_connects, c.agent_connected), (1, Some(true)));
    }
}
