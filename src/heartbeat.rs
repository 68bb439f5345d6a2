//! Is the guest alive? One state per VM, from a fixed set, judged from what the sources
//! already know (no call of its own): the round-trip time of the `guest-ping` the guest
//! source sends at the start of every poll, how that source's last poll ended, and whether
//! libvirt saw the domain's vCPUs run. Host-side trouble (the QEMU process stopped or blocked,
//! its monitor busy, libvirt's polls failing) makes the state `unknown`: the guest cannot be
//! judged through a host that does not answer, and it is never `ok` then.
//! `vmbridge_guest_heartbeat{state}` carries the state, `vmbridge_guest_agent_rtt_seconds`
//! the round-trip time; `/debug` shows both.

use serde::Serialize;

use crate::model::ErrorKind;
use crate::source::SourceKind;
use crate::source::SourceSample;
use crate::source::libvirt::LibvirtSample;
use crate::source::qga::QgaSample;
use crate::stall::StallReason;
use crate::store::{SourceSnapshot, VmSnapshot};

/// The states, in the order `vmbridge_guest_heartbeat` writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Heartbeat {
    /// The agent answered its last ping within the bound.
    Ok,
    /// The agent answered, but its last ping took longer than the bound (`qga.heartbeat_slow`).
    AgentSlow,
    /// The agent channel is connected, but the agent does not answer (its last poll timed out).
    AgentSilent,
    /// The domain is running, but its vCPUs used no CPU time for `qga.heartbeat_stalled_polls`
    /// libvirt polls in a row and at least 30 s, and the agent gives no answer: the guest kernel
    /// does not run.
    GuestStalled,
    /// No agent: its channel is not connected (or the VM has none, or the guest source is off,
    /// or the VM opted out of agent polling).
    NoAgent,
    /// Cannot be told: the host side does not answer (QEMU stopped or blocked, monitor busy,
    /// libvirt polls failing or stale), the domain is not running, the agent answers garbage,
    /// or nothing was polled yet.
    Unknown,
}

impl Heartbeat {
    /// Every state, in exposition order.
    pub const ALL: [Heartbeat; 6] = [
        Heartbeat::Ok,
        Heartbeat::AgentSlow,
        Heartbeat::AgentSilent,
        Heartbeat::GuestStalled,
        Heartbeat::NoAgent,
        Heartbeat::Unknown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Heartbeat::Ok => "ok",
            Heartbeat::AgentSlow => "agent_slow",
            Heartbeat::AgentSilent => "agent_silent",
            Heartbeat::GuestStalled => "guest_stalled",
            Heartbeat::NoAgent => "no_agent",
            Heartbeat::Unknown => "unknown",
        }
    }
}

pub use crate::source::qga::poller::Bounds;

/// What the host side says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// No libvirt source for this VM (plain QEMU): vCPU time is not known.
    Unseen,
    /// The host does not answer, or its word is too old.
    Blind,
    /// The domain is not running (paused, shut off, crashed).
    NotRunning,
    /// Running; polls in a row without vCPU time.
    Running {
        /// Consecutive libvirt polls in which the vCPUs' time did not advance.
        idle_polls: u32,
    },
}

/// What the guest agent says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Agent {
    /// The guest source is off for this VM.
    Off,
    /// Not polled yet.
    Pending,
    /// Its channel is not connected.
    Absent,
    /// Its last poll timed out.
    Silent,
    /// Its last poll failed otherwise (garbage, an oversized reply, a refusal).
    Failing,
    /// Its last poll succeeded; the ping's round-trip time, in seconds.
    Answered(Option<f64>),
}

/// The state from the two sides: the table the unit tests spell out. The host side first,
/// since an agent cannot be judged through a host that does not answer.
/// An answer from the agent is proof of life and beats idle vCPUs (libvirt reads vCPU time
/// in clock ticks, so a nearly idle guest can show none for a while).
pub fn state(host: Host, agent: Agent, b: &Bounds) -> Heartbeat {
    match host {
        Host::Blind | Host::NotRunning => return Heartbeat::Unknown,
        Host::Running { idle_polls }
            if b.stalled_polls > 0 && idle_polls >= b.stalled_polls && !matches!(agent, Agent::Answered(_)) =>
        {
            return Heartbeat::GuestStalled;
        }
        Host::Running { .. } | Host::Unseen => {}
    }
    match agent {
        Agent::Off | Agent::Absent => Heartbeat::NoAgent,
        Agent::Pending | Agent::Failing => Heartbeat::Unknown,
        Agent::Silent => Heartbeat::AgentSilent,
        Agent::Answered(Some(rtt)) if rtt > b.slow_seconds => Heartbeat::AgentSlow,
        Agent::Answered(_) => Heartbeat::Ok,
    }
}

/// Whether a source's last poll failed.
fn failing(s: &SourceSnapshot) -> bool {
    s.polls_total > 0 && s.breaker.consecutive_failures > 0
}

fn fresh(s: &SourceSnapshot, now: f64, staleness: f64) -> bool {
    s.last_success_at.is_some_and(|t| now - t <= staleness)
}

/// `VIR_DOMAIN_RUNNING`.
const RUNNING: i64 = 1;

/// The host side of `vm`.
pub fn host(vm: &VmSnapshot, now: f64, staleness: f64) -> Host {
    // QEMU itself stopped, blocked or not answering its monitor: blind, whatever libvirt last said.
    if crate::stall::of(vm, now, staleness).is_some_and(|s| s.reason != StallReason::AgentUnresponsive) {
        return Host::Blind;
    }
    let Some(l) = vm.sources.get(&SourceKind::Libvirt) else {
        return Host::Unseen;
    };
    if failing(l) || !fresh(l, now, staleness) {
        return Host::Blind;
    }
    let Some(SourceSample::Libvirt(sample)) = l.sample.as_deref() else {
        return Host::Blind;
    };
    running(sample)
}

fn running(sample: &LibvirtSample) -> Host {
    match sample.parsed.state {
        Some(s) if s.state == RUNNING => Host::Running { idle_polls: sample.vcpu_idle_polls },
        Some(_) => Host::NotRunning,
        None => Host::Blind,
    }
}

/// The guest side of `vm`, with the agent source's sample when there is one.
pub fn agent(vm: &VmSnapshot, now: f64, staleness: f64) -> (Agent, Option<&QgaSample>) {
    let Some(q) = vm.sources.get(&SourceKind::Qga) else {
        return (Agent::Off, None);
    };
    let sample = match q.sample.as_deref() {
        Some(SourceSample::Qga(s)) => Some(s),
        _ => None,
    };
    let agent = if failing(q) {
        match q.last_errors.back().map(|e| e.kind) {
            Some(ErrorKind::AgentUnavailable) => Agent::Absent,
            // Opted out of agent polling (`qga.exclude`, domain metadata): as a source that is off.
            Some(ErrorKind::AgentDisabled) => Agent::Off,
            Some(ErrorKind::Timeout) => Agent::Silent,
            _ => Agent::Failing,
        }
    } else if q.polls_total == 0 || !fresh(q, now, staleness) {
        // A poll deferred (node busy) keeps the failure count; past the window, nothing is known.
        Agent::Pending
    } else {
        Agent::Answered(sample.and_then(|s| s.rtt_seconds))
    };
    (agent, sample)
}

/// The heartbeat of one VM.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Pulse {
    /// The state.
    pub state: Heartbeat,
    /// The last ping's round-trip time, in seconds, while the agent's last poll succeeded.
    pub rtt_seconds: Option<f64>,
    /// The bounds it was judged with.
    pub bounds: Bounds,
}

/// The heartbeat of `vm` now.
pub fn of(vm: &VmSnapshot, now: f64, staleness: f64) -> Pulse {
    let (agent, sample) = agent(vm, now, staleness);
    let bounds = sample.map(|s| s.heartbeat).unwrap_or_default();
    let rtt_seconds = match agent {
        Agent::Answered(rtt) => rtt,
        _ => None,
    };
    Pulse { state: state(host(vm, now, staleness), agent, &bounds), rtt_seconds, bounds }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds { slow_seconds: 1.0, stalled_polls: 3 };

    #[test]
    fn the_state_table() {
        use Agent as A;
        use Heartbeat as H;
        let run = |idle_polls| Host::Running { idle_polls };
        let rows: &[(Host, Agent, Heartbeat)] = &[
            // A healthy guest, with or without libvirt's view.
            (run(0), A::Answered(Some(0.002)), H::Ok),
            (Host::Unseen, A::Answered(Some(0.002)), H::Ok),
            (run(2), A::Answered(Some(0.002)), H::Ok),
            (run(0), A::Answered(None), H::Ok),
            // The bound itself is not slow; over it is.
            (run(0), A::Answered(Some(1.0)), H::Ok),
            (run(0), A::Answered(Some(1.5)), H::AgentSlow),
            (run(0), A::Silent, H::AgentSilent),
            (Host::Unseen, A::Silent, H::AgentSilent),
            (run(0), A::Absent, H::NoAgent),
            (run(0), A::Off, H::NoAgent),
            (Host::Unseen, A::Off, H::NoAgent),
            (run(0), A::Pending, H::Unknown),
            (run(0), A::Failing, H::Unknown),
            // vCPUs idle for N polls: stalled, unless the agent's answer proves life.
            (run(3), A::Silent, H::GuestStalled),
            (run(7), A::Silent, H::GuestStalled),
            (run(3), A::Off, H::GuestStalled),
            (run(3), A::Absent, H::GuestStalled),
            (run(3), A::Pending, H::GuestStalled),
            (run(3), A::Answered(Some(0.002)), H::Ok),
            (run(3), A::Answered(Some(2.0)), H::AgentSlow),
            // The host does not answer, or the domain does not run: never ok.
            (Host::Blind, A::Answered(Some(0.002)), H::Unknown),
            (Host::Blind, A::Silent, H::Unknown),
            (Host::Blind, A::Off, H::Unknown),
            (Host::NotRunning, A::Answered(Some(0.002)), H::Unknown),
            (Host::NotRunning, A::Absent, H::Unknown),
        ];
        for (host, agent, want) in rows {
            assert_eq!(state(*host, *agent, &B), *want, "{host:?} {agent:?}");
        }
        // 0 polls turns the vCPU check off.
        let off = Bounds { stalled_polls: 0, ..B };
        assert_eq!(state(run(100), A::Silent, &off), H::AgentSilent);
    }

    use crate::stall::tests::vm;

    fn snap(sample: Option<SourceSample>, failures: u32, error: Option<ErrorKind>) -> SourceSnapshot {
        let mut s = crate::stall::tests::snap(sample, failures);
        if let Some(kind) = error {
            s.last_errors.push_back(crate::store::ErrorRecord { at: 100.0, kind, message: "x".into() });
        }
        s
    }

    fn libvirt(state: i64, idle_polls: u32) -> SourceSnapshot {
        let mut l = LibvirtSample::new(vec![], vec![]);
        l.parsed.state = Some(crate::source::libvirt::stats::DomainState { state, reason: 1 });
        l.vcpu_idle_polls = idle_polls;
        snap(Some(SourceSample::Libvirt(l)), 0, None)
    }

    fn qga(rtt: Option<f64>, failures: u32, error: Option<ErrorKind>) -> SourceSnapshot {
        let q = QgaSample { rtt_seconds: rtt, ..Default::default() };
        snap(Some(SourceSample::Qga(q)), failures, error)
    }

    #[test]
    fn snapshots_map_onto_the_table() {
        use Heartbeat as H;
        use SourceKind::{Libvirt, Qga};
        let at = |v: &VmSnapshot, now: f64| of(v, now, 60.0);
        let healthy = vm(vec![(Libvirt, libvirt(1, 0)), (Qga, qga(Some(0.003), 0, None))]);
        assert_eq!(at(&healthy, 101.0), Pulse { state: H::Ok, rtt_seconds: Some(0.003), bounds: Bounds::default() });
        let slow = vm(vec![(Libvirt, libvirt(1, 0)), (Qga, qga(Some(2.5), 0, None))]);
        assert_eq!(at(&slow, 101.0).state, H::AgentSlow);
        // The agent timed out: silent, and its old round-trip time is not shown.
        let silent = vm(vec![(Libvirt, libvirt(1, 0)), (Qga, qga(Some(0.003), 1, Some(ErrorKind::Timeout)))]);
        assert_eq!(at(&silent, 101.0), Pulse { state: H::AgentSilent, rtt_seconds: None, bounds: Bounds::default() });
        let absent = vm(vec![(Libvirt, libvirt(1, 0)), (Qga, qga(None, 4, Some(ErrorKind::AgentUnavailable)))]);
        assert_eq!(at(&absent, 101.0).state, H::NoAgent);
        assert_eq!(at(&vm(vec![(Libvirt, libvirt(1, 0))]), 101.0).state, H::NoAgent);
        let opted_out = vm(vec![(Libvirt, libvirt(1, 0)), (Qga, qga(None, 4, Some(ErrorKind::AgentDisabled)))]);
        assert_eq!(at(&opted_out, 101.0).state, H::NoAgent);
        let garbage = vm(vec![(Libvirt, libvirt(1, 0)), (Qga, qga(None, 1, Some(ErrorKind::Protocol)))]);
        assert_eq!(at(&garbage, 101.0).state, H::Unknown);
        let stalled = vm(vec![(Libvirt, libvirt(1, 3)), (Qga, qga(None, 2, Some(ErrorKind::Timeout)))]);
        assert_eq!(at(&stalled, 101.0).state, H::GuestStalled);
        // libvirt's polls fail (QEMU stopped): unknown, never ok, whatever the agent said last.
        let mut failing = libvirt(1, 0);
        failing.breaker.consecutive_failures = 1;
        failing.last_errors.push_back(crate::store::ErrorRecord {
            at: 100.0,
            kind: ErrorKind::Timeout,
            message: "x".into(),
        });
        let blind = vm(vec![(Libvirt, failing), (Qga, qga(Some(0.003), 0, None))]);
        assert_eq!(at(&blind, 101.0).state, H::Unknown);
        // The QEMU process stopped, seen in /proc: unknown.
        let p = crate::source::process::ProcessStats { pid: 42, state: "T".into(), ..Default::default() };
        let process =
            snap(Some(SourceSample::Process(crate::source::process::ProcessSample { processes: vec![p] })), 0, None);
        let stopped =
            vm(vec![(SourceKind::Process, process), (Libvirt, libvirt(1, 0)), (Qga, qga(Some(0.003), 0, None))]);
        assert_eq!(at(&stopped, 101.0).state, H::Unknown);
        // Everything stale (past the window): unknown.
        assert_eq!(at(&healthy, 500.0).state, H::Unknown);
        // Paused: unknown.
        let paused = vm(vec![(Libvirt, libvirt(3, 0)), (Qga, qga(Some(0.003), 0, None))]);
        assert_eq!(at(&paused, 101.0).state, H::Unknown);
    }

    #[test]
    fn every_state_has_its_own_label_value() {
        let mut seen: Vec<&str> = Heartbeat::ALL.iter().map(|h| h.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), Heartbeat::ALL.len());
        for h in Heartbeat::ALL {
            assert_eq!(serde_json::to_value(h).expect("json"), serde_json::Value::from(h.as_str()));
        }
    }
}
