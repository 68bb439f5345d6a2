//! Why is this VM stuck? One reason per VM, from a fixed set, derived from what its sources
//! already know (no call of its own): the QEMU process's `/proc` state (process source), the
//! QEMU monitor's state as libvirt told it when the libvirt poll failed
//! (`virDomainGetControlInfo`, no QEMU round trip), and the guest agent's breaker.
//! `vmbridge_vm_stall_reason{reason}` is present only while a VM is stalled; `/debug` and the
//! status page show the same.

use serde::Serialize;

use crate::model::ErrorKind;
use crate::source::SourceKind;
use crate::source::SourceSample;
use crate::store::{SourceSnapshot, VmSnapshot};

/// The reasons, most specific first (the precedence of [`of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StallReason {
    /// The QEMU process is stopped (`/proc` state `T` or `t`: SIGSTOP, a debugger).
    ProcessStopped,
    /// QEMU's main thread waits in the kernel, uninterruptibly (`/proc` state `D`), typically
    /// on storage; `wchan` says where.
    IoBlocked,
    /// The QEMU monitor has been occupied by one command (or held by a job) for longer than the
    /// poll timeout, and the libvirt poll failed: QEMU does not answer its monitor.
    MonitorBusy,
    /// The guest agent does not answer: its last polls timed out (its breaker may be open),
    /// while QEMU does.
    AgentUnresponsive,
}

impl StallReason {
    /// Every reason, in precedence order.
    pub const ALL: [StallReason; 4] =
        [StallReason::ProcessStopped, StallReason::IoBlocked, StallReason::MonitorBusy, StallReason::AgentUnresponsive];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StallReason::ProcessStopped => "process_stopped",
            StallReason::IoBlocked => "io_blocked",
            StallReason::MonitorBusy => "monitor_busy",
            StallReason::AgentUnresponsive => "agent_unresponsive",
        }
    }
}

/// Why a VM is stalled, when it is.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Stall {
    /// The reason.
    pub reason: StallReason,
    /// For `io_blocked`: the kernel function QEMU's main thread waits in (`/proc/<pid>/wchan`).
    pub wchan: Option<String>,
    /// What was seen, for people.
    pub detail: String,
}

/// Whether a source's last poll failed.
fn failing(s: &SourceSnapshot) -> bool {
    s.polls_total > 0 && s.breaker.consecutive_failures > 0
}

/// The stall reason of `vm` now, if any: the first of [`StallReason::ALL`] that holds. The
/// process source counts only while fresh (its last scan succeeded within `staleness`).
pub fn of(vm: &VmSnapshot, now: f64, staleness: f64) -> Option<Stall> {
    let source = |k: SourceKind| vm.sources.get(&k).map(|s| s.as_ref());
    if let Some(p) = source(SourceKind::Process).filter(|s| !failing(s)) {
        let fresh = p.last_success_at.is_some_and(|t| now - t <= staleness);
        if let (true, Some(SourceSample::Process(sample))) = (fresh, p.sample.as_deref()) {
            if let Some(qemu) = sample.processes.first() {
                match qemu.state.as_str() {
                    "T" | "t" => {
                        return Some(Stall {
                            reason: StallReason::ProcessStopped,
                            wchan: None,
                            detail: format!("QEMU (pid {}) is stopped (state {})", qemu.pid, qemu.state),
                        });
                    }
                    "D" => {
                        return Some(Stall {
                            reason: StallReason::IoBlocked,
                            wchan: qemu.wchan.clone(),
                            detail: format!(
                                "QEMU (pid {}) waits uninterruptibly in {}",
                                qemu.pid,
                                qemu.wchan.as_deref().unwrap_or("the kernel")
                            ),
                        });
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(l) = source(SourceKind::Libvirt).filter(|s| failing(s)) {
        if let Some(m) = l.monitor.filter(|m| m.busy_for(0.0)) {
            return Some(Stall {
                reason: StallReason::MonitorBusy,
                wchan: None,
                detail: format!("the QEMU monitor has been {} for {:.1} s", m.state, m.seconds),
            });
        }
    }
    // An agent that answers garbage is failing, not unresponsive: only timeouts count.
    if let Some(q) = source(SourceKind::Qga) {
        if failing(q) && q.last_errors.back().is_some_and(|e| e.kind == ErrorKind::Timeout) {
            return Some(Stall {
                reason: StallReason::AgentUnresponsive,
                wchan: None,
                detail: q
                    .last_errors
                    .back()
                    .map_or_else(|| "the guest agent does not answer".into(), |e| e.message.clone()),
            });
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::breaker::{Breaker, BreakerConfig};
    use crate::model::Monitor;
    use crate::source::process::{ProcessSample, ProcessStats};
    use crate::store::ErrorRecord;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    /// A source's snapshot: last success at 100, three polls, `failures` in a row.
    pub(crate) fn snap(sample: Option<SourceSample>, failures: u32) -> SourceSnapshot {
        let mut s = SourceSnapshot::fresh(
            Breaker::new(BreakerConfig::default()).view(tokio::time::Instant::now()),
            Arc::new(AtomicU64::new(0)),
        );
        s.sample = sample.map(Arc::new);
        s.last_success_at = Some(100.0);
        s.polls_total = 3;
        s.breaker.consecutive_failures = failures;
        s
    }

    fn qemu(state: &str, wchan: Option<&str>) -> SourceSnapshot {
        let p = ProcessStats {
            pid: 42,
            name: "qemu".into(),
            state: state.into(),
            wchan: wchan.map(Into::into),
            ..Default::default()
        };
        snap(Some(SourceSample::Process(ProcessSample { processes: vec![p] })), 0)
    }

    /// VM `ns/a` with `sources`.
    pub(crate) fn vm(sources: Vec<(SourceKind, SourceSnapshot)>) -> VmSnapshot {
        VmSnapshot {
            id: crate::vm::VmId { namespace: "ns".into(), name: "a".into() },
            domain: "ns_a".into(),
            uuid: "u".into(),
            endpoint: "qemu:///system".into(),
            discovered_at: 0.0,
            sources: sources.into_iter().map(|(k, s)| (k, Arc::new(s))).collect::<BTreeMap<_, _>>(),
            revision: 0,
        }
    }

    fn reason(v: &VmSnapshot) -> Option<StallReason> {
        of(v, 101.0, 60.0).map(|s| s.reason)
    }

    #[test]
    fn the_most_specific_reason_wins_and_a_healthy_vm_has_none() {
        let mut libvirt = snap(None, 2);
        libvirt.monitor = Some(Monitor { state: "occupied", seconds: 12.0 });
        let mut qga = snap(None, 1);
        qga.last_errors.push_back(ErrorRecord {
            at: 100.0,
            kind: ErrorKind::Timeout,
            message: "guest-ping: timed out".into(),
        });
        let all = |p: SourceSnapshot| {
            vm(vec![(SourceKind::Process, p), (SourceKind::Libvirt, libvirt.clone()), (SourceKind::Qga, qga.clone())])
        };
        assert_eq!(reason(&all(qemu("T", None))), Some(StallReason::ProcessStopped));
        assert_eq!(reason(&all(qemu("t", None))), Some(StallReason::ProcessStopped));
        let blocked = of(&all(qemu("D", Some("io_schedule"))), 101.0, 60.0).expect("stalled");
        assert_eq!((blocked.reason, blocked.wchan.as_deref()), (StallReason::IoBlocked, Some("io_schedule")));
        assert_eq!(reason(&all(qemu("S", None))), Some(StallReason::MonitorBusy));
        // Without the monitor's word, the agent's timeouts.
        let v = vm(vec![(SourceKind::Process, qemu("R", None)), (SourceKind::Qga, qga.clone())]);
        assert_eq!(reason(&v), Some(StallReason::AgentUnresponsive));
        // A healthy VM, and an agentless one (a state, not a stall), have none.
        assert_eq!(
            reason(&vm(vec![(SourceKind::Process, qemu("S", None)), (SourceKind::Libvirt, snap(None, 0))])),
            None
        );
        let mut absent = snap(None, 4);
        absent.last_errors.push_back(ErrorRecord {
            at: 100.0,
            kind: ErrorKind::AgentUnavailable,
            message: "not connected".into(),
        });
        assert_eq!(reason(&vm(vec![(SourceKind::Qga, absent)])), None);
        // A monitor merely in a long job while polls succeed (a migration) is no stall.
        let mut migrating = snap(None, 0);
        migrating.monitor = Some(Monitor { state: "job", seconds: 600.0 });
        assert_eq!(reason(&vm(vec![(SourceKind::Libvirt, migrating)])), None);
        // A stale process sample says nothing.
        assert_eq!(of(&all(qemu("T", None)), 500.0, 60.0).map(|s| s.reason), Some(StallReason::MonitorBusy));
    }
}
