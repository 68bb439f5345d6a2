//! Bridge health: per VM and source (up, breaker, freshness, errors, stuck calls), the VM's
//! stall reason and guest heartbeat (judged across sources), and per node
//! (endpoints, VM count, build info). Exported for every VM whatever its data's age, so a
//! VM whose data went stale is still visible, and flagged.

use super::{BuildInfo, VmView, family};
use crate::breaker::{BreakerState, TransitionReason};
use crate::catalogue as c;
use crate::heartbeat::Heartbeat;
use crate::source::libvirt::Libvirt;
use crate::source::qga::Qga;
use crate::source::{ErrorKind, Source, SourceKind};
use crate::store::{EndpointStatus, SourceSnapshot};

fn sources<'a>(vm: &'a VmView<'_>) -> impl Iterator<Item = (&'static str, &'a SourceSnapshot)> {
    vm.vm.sources.iter().map(|(k, s)| (k.as_str(), s.as_ref()))
}

/// The node-level inputs of the bridge families.
pub(super) struct NodeView<'a> {
    pub(super) vms: usize,
    pub(super) endpoints: &'a [EndpointStatus],
    pub(super) conflicts: usize,
    pub(super) node: &'a str,
    pub(super) build: &'a BuildInfo,
    pub(super) http: &'a crate::http::limits::HttpStats,
    /// KubeVirt mode only.
    pub(super) launchers: Option<crate::store::LauncherCounts>,
}

/// Writes one VM's bridge families. Without `detail` (the default) a source that is well
/// has three series: `source_up`, `source_last_success_timestamp_seconds` and the breaker's
/// current state; error and transition counters appear for the kinds and reasons that
/// occurred, the stuck-call gauge while a call is stuck, and poll counts and durations not at
/// all. With `detail`, every state, kind and reason is written, at zero too.
pub(super) fn encode_vm(enc: &mut crate::collector::Out<'_>, vm: &VmView<'_>, detail: bool) -> std::fmt::Result {
    let mut f = family(enc, &c::SOURCE_UP)?;
    for (src, s) in sources(vm) {
        // A poll deferred because the node or the daemon is busy leaves the failure count as
        // it was: such a source stays up while its data is within the staleness window.
        let fresh = s.last_success_at.is_some_and(|t| vm.now - t <= vm.staleness);
        let up = s.polls_total > 0 && s.breaker.consecutive_failures == 0 && fresh;
        f.vm_sample(vm, &[("source", src)], Some(f64::from(u8::from(up))))?;
    }
    let mut f = family(enc, &c::BREAKER_STATE)?;
    for (src, s) in sources(vm) {
        for state in BreakerState::ALL {
            let current = s.breaker.state == state;
            if detail || current {
                f.vm_sample(vm, &[("source", src), ("state", state.as_str())], Some(f64::from(u8::from(current))))?;
            }
        }
    }
    let mut f = family(enc, &c::SOURCE_LAST_SUCCESS)?;
    for (src, s) in sources(vm) {
        f.vm_sample(vm, &[("source", src)], s.last_success_at)?;
    }
    let mut f = family(enc, &c::SOURCE_POLL_DURATION)?;
    if detail {
        for (src, s) in sources(vm) {
            f.vm_sample(vm, &[("source", src)], s.last_poll_duration_seconds)?;
        }
    }
    let mut f = family(enc, &c::SOURCE_EFFECTIVE_INTERVAL)?;
    for (src, s) in sources(vm) {
        if detail || s.stretched {
            f.vm_sample(vm, &[("source", src)], s.effective_interval_seconds)?;
        }
    }
    let mut f = family(enc, &c::SOURCE_POLLS)?;
    if detail {
        for (src, s) in sources(vm) {
            f.vm_sample(vm, &[("source", src)], Some(s.polls_total as f64))?;
        }
    }
    let mut f = family(enc, &c::SOURCE_ERRORS)?;
    for (src, s) in sources(vm) {
        for kind in ErrorKind::ALL {
            let n = s.errors_total.get(&kind).copied().unwrap_or(0);
            if detail || n > 0 {
                f.vm_sample(vm, &[("source", src), ("kind", kind.as_str())], Some(n as f64))?;
            }
        }
    }
    let mut f = family(enc, &c::BREAKER_TRANSITIONS)?;
    for (src, s) in sources(vm) {
        for reason in TransitionReason::ALL {
            let n = s.breaker.transitions_total.get(&reason).copied().unwrap_or(0);
            if detail || n > 0 {
                f.vm_sample(vm, &[("source", src), ("reason", reason.as_str())], Some(n as f64))?;
            }
        }
    }
    let mut f = family(enc, &c::STUCK_CALLS)?;
    for (src, s) in sources(vm) {
        let n = s.stuck_calls.load(std::sync::atomic::Ordering::Acquire);
        if detail || n > 0 {
            f.vm_sample(vm, &[("source", src)], Some(n as f64))?;
        }
    }
    let mut f = family(enc, &c::VM_STALL_REASON)?;
    if let Some(stall) = crate::stall::of(vm.vm, vm.now, vm.staleness) {
        let wchan = stall.wchan.as_deref().unwrap_or("");
        f.vm_sample(vm, &[("reason", stall.reason.as_str()), ("wchan", wchan)], Some(1.0))?;
    }
    let pulse = crate::heartbeat::of(vm.vm, vm.now, vm.staleness);
    let mut f = family(enc, &c::GUEST_HEARTBEAT)?;
    for state in Heartbeat::ALL {
        let current = pulse.state == state;
        if detail || current {
            f.vm_sample(vm, &[("state", state.as_str())], Some(f64::from(u8::from(current))))?;
        }
    }
    let mut f = family(enc, &c::GUEST_AGENT_RTT)?;
    f.vm_sample(vm, &[], pulse.rtt_seconds)?;
    // Counted since discovery: written from each source's last sample whatever its age, only
    // for the family and reason pairs that occurred.
    let mut f = family(enc, &c::GUEST_VALUES_REJECTED)?;
    let sample = |k: SourceKind| vm.vm.sources.get(&k).and_then(|s| s.sample.as_deref());
    let libvirt = sample(SourceKind::Libvirt).and_then(Libvirt::sample).map(|l| &l.rejected);
    let qga = sample(SourceKind::Qga).and_then(Qga::sample).map(|q| &q.rejected);
    for rejected in [libvirt, qga].into_iter().flatten() {
        for (fam, reasons) in &rejected.counts {
            for (reason, n) in reasons {
                f.vm_sample(vm, &[("family", fam), ("reason", reason)], Some(*n as f64))?;
            }
        }
    }
    Ok(())
}

/// Writes the per-node bridge families.
pub(super) fn encode_node(enc: &mut crate::collector::Out<'_>, n: &NodeView<'_>) -> std::fmt::Result {
    let NodeView { vms, endpoints, conflicts, node, build, http, launchers } = *n;
    let mut f = family(enc, &c::VMS)?;
    f.sample(&[("node", node)], vms as f64)?;
    let mut f = family(enc, &c::VM_CONFLICTS)?;
    f.sample(&[("node", node)], conflicts as f64)?;
    let mut f = family(enc, &c::ENDPOINT_UP)?;
    for e in endpoints {
        f.sample(&[("node", node), ("uri", &e.uri)], f64::from(u8::from(e.up)))?;
    }
    let mut f = family(enc, &c::ENDPOINT_DOMAINS)?;
    for e in endpoints.iter().filter(|e| e.listed_once) {
        f.sample(&[("node", node), ("uri", &e.uri)], e.domains as f64)?;
    }
    // Endpoints of libvirt daemons (not the static pseudo-endpoint) that discovery reached.
    let libvirt = || endpoints.iter().filter(|e| e.attempted);
    let mut f = family(enc, &c::ENDPOINT_SATURATED)?;
    for e in libvirt() {
        f.sample(&[("node", node), ("uri", &e.uri)], f64::from(u8::from(e.saturated_since.is_some())))?;
    }
    let mut f = family(enc, &c::ENDPOINT_CONNECTIONS)?;
    for e in libvirt() {
        f.sample(&[("node", node), ("uri", &e.uri)], e.connections.connections as f64)?;
    }
    let mut f = family(enc, &c::ENDPOINT_SLOW_CALLS)?;
    for e in libvirt() {
        f.sample(&[("node", node), ("uri", &e.uri)], e.connections.slow_calls as f64)?;
    }
    let mut f = family(enc, &c::ENDPOINT_CALLS)?;
    for e in libvirt() {
        f.sample(&[("node", node), ("uri", &e.uri)], e.connections.calls_total as f64)?;
    }
    let mut f = family(enc, &c::ENDPOINT_BATCHED_POLLS)?;
    for e in libvirt() {
        f.sample(&[("node", node), ("uri", &e.uri)], e.connections.batched_total as f64)?;
    }
    let listeners = [("public", &http.public), ("debug", &http.debug)];
    let mut f = family(enc, &c::HTTP_CONNECTIONS)?;
    for (name, l) in listeners {
        f.sample(&[("node", node), ("listener", name)], l.open.load(std::sync::atomic::Ordering::Relaxed) as f64)?;
    }
    let mut f = family(enc, &c::HTTP_CLOSED)?;
    for (name, l) in listeners {
        for (reason, n) in l.closed() {
            f.sample(&[("node", node), ("listener", name), ("reason", reason)], n as f64)?;
        }
    }
    let mut f = family(enc, &c::HTTP_SHED)?;
    f.sample(&[("node", node)], http.budget.shed() as f64)?;
    let mut f = family(enc, &c::LAUNCHER_DAEMONS)?;
    if let Some(l) = launchers {
        for (status, n) in [("accepted", l.accepted), ("untrusted", l.untrusted), ("over_cap", l.over_cap)] {
            f.sample(&[("node", node), ("status", status)], n as f64)?;
        }
    }
    let mut f = family(enc, &c::BUILD_INFO)?;
    f.sample(&[("node", node), ("version", build.version), ("revision", build.revision), ("rustc", build.rustc)], 1.0)
}
