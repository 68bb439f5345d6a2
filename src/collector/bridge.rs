//! Bridge health: per VM and source (up, breaker, freshness, errors, stuck calls), the VM's
//! stall reason and guest heartbeat (judged across sources), and per node
//! (endpoints, VM count, build info). Exported for every VM whatever its data's age, so a
//! VM whose data went stale is still visible, and flagged.

use super::BuildInfo;
use crate::breaker::{BreakerState, TransitionReason};
use crate::heartbeat::Heartbeat;
use crate::model::ErrorKind;
use crate::model::exposition::family;
use crate::model::metric::{MetricDef, N, S, family};
use crate::source::SourceKind;
use crate::source::api::{Source, VmView};
use crate::source::libvirt::Libvirt;
use crate::source::qga::Qga;
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
pub(super) fn encode_vm(
    enc: &mut crate::model::exposition::Out<'_>,
    vm: &VmView<'_>,
    detail: bool,
) -> std::fmt::Result {
    let mut f = family(enc, &SOURCE_UP)?;
    for (src, s) in sources(vm) {
        // A poll deferred because the node or the daemon is busy leaves the failure count as
        // it was: such a source stays up while its data is within the staleness window.
        let fresh = s.last_success_at.is_some_and(|t| vm.now - t <= vm.staleness);
        let up = s.polls_total > 0 && s.breaker.consecutive_failures == 0 && fresh;
        f.vm_sample(vm, &[("source", src)], Some(f64::from(u8::from(up))))?;
    }
    let mut f = family(enc, &BREAKER_STATE)?;
    for (src, s) in sources(vm) {
        for state in BreakerState::ALL {
            let current = s.breaker.state == state;
            if detail || current {
                f.vm_sample(vm, &[("source", src), ("state", state.as_str())], Some(f64::from(u8::from(current))))?;
            }
        }
    }
    let mut f = family(enc, &SOURCE_LAST_SUCCESS)?;
    for (src, s) in sources(vm) {
        f.vm_sample(vm, &[("source", src)], s.last_success_at)?;
    }
    let mut f = family(enc, &SOURCE_POLL_DURATION)?;
    if detail {
        for (src, s) in sources(vm) {
            f.vm_sample(vm, &[("source", src)], s.last_poll_duration_seconds)?;
        }
    }
    let mut f = family(enc, &SOURCE_EFFECTIVE_INTERVAL)?;
    for (src, s) in sources(vm) {
        if detail || s.stretched {
            f.vm_sample(vm, &[("source", src)], s.effective_interval_seconds)?;
        }
    }
    let mut f = family(enc, &SOURCE_POLLS)?;
    if detail {
        for (src, s) in sources(vm) {
            f.vm_sample(vm, &[("source", src)], Some(s.polls_total as f64))?;
        }
    }
    let mut f = family(enc, &SOURCE_ERRORS)?;
    for (src, s) in sources(vm) {
        for kind in ErrorKind::ALL {
            let n = s.errors_total.get(&kind).copied().unwrap_or(0);
            if detail || n > 0 {
                f.vm_sample(vm, &[("source", src), ("kind", kind.as_str())], Some(n as f64))?;
            }
        }
    }
    let mut f = family(enc, &BREAKER_TRANSITIONS)?;
    for (src, s) in sources(vm) {
        for reason in TransitionReason::ALL {
            let n = s.breaker.transitions_total.get(&reason).copied().unwrap_or(0);
            if detail || n > 0 {
                f.vm_sample(vm, &[("source", src), ("reason", reason.as_str())], Some(n as f64))?;
            }
        }
    }
    let mut f = family(enc, &STUCK_CALLS)?;
    for (src, s) in sources(vm) {
        let n = s.stuck_calls.load(std::sync::atomic::Ordering::Acquire);
        if detail || n > 0 {
            f.vm_sample(vm, &[("source", src)], Some(n as f64))?;
        }
    }
    let mut f = family(enc, &VM_STALL_REASON)?;
    if let Some(stall) = crate::stall::of(vm.vm, vm.now, vm.staleness) {
        let wchan = stall.wchan.as_deref().unwrap_or("");
        f.vm_sample(vm, &[("reason", stall.reason.as_str()), ("wchan", wchan)], Some(1.0))?;
    }
    let pulse = crate::heartbeat::of(vm.vm, vm.now, vm.staleness);
    let mut f = family(enc, &GUEST_HEARTBEAT)?;
    for state in Heartbeat::ALL {
        let current = pulse.state == state;
        if detail || current {
            f.vm_sample(vm, &[("state", state.as_str())], Some(f64::from(u8::from(current))))?;
        }
    }
    let mut f = family(enc, &GUEST_AGENT_RTT)?;
    f.vm_sample(vm, &[], pulse.rtt_seconds)?;
    // Counted since discovery: written from each source's last sample whatever its age, only
    // for the family and reason pairs that occurred.
    let mut f = family(enc, &GUEST_VALUES_REJECTED)?;
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
pub(super) fn encode_node(enc: &mut crate::model::exposition::Out<'_>, n: &NodeView<'_>) -> std::fmt::Result {
    let NodeView { vms, endpoints, conflicts, node, build, http, launchers } = *n;
    let mut f = family(enc, &VMS)?;
    f.sample(&[("node", node)], vms as f64)?;
    let mut f = family(enc, &VM_CONFLICTS)?;
    f.sample(&[("node", node)], conflicts as f64)?;
    let mut f = family(enc, &ENDPOINT_UP)?;
    for e in endpoints {
        f.sample(&[("node", node), ("uri", &e.uri)], f64::from(u8::from(e.up)))?;
    }
    let mut f = family(enc, &ENDPOINT_DOMAINS)?;
    for e in endpoints.iter().filter(|e| e.listed_once) {
        f.sample(&[("node", node), ("uri", &e.uri)], e.domains as f64)?;
    }
    // Endpoints of libvirt daemons (not the static pseudo-endpoint) that discovery reached.
    let libvirt = || endpoints.iter().filter(|e| e.attempted);
    let mut f = family(enc, &ENDPOINT_SATURATED)?;
    for e in libvirt() {
        f.sample(&[("node", node), ("uri", &e.uri)], f64::from(u8::from(e.saturated_since.is_some())))?;
    }
    let mut f = family(enc, &ENDPOINT_CONNECTIONS)?;
    for e in libvirt() {
        f.sample(&[("node", node), ("uri", &e.uri)], e.connections.connections as f64)?;
    }
    let mut f = family(enc, &ENDPOINT_SLOW_CALLS)?;
    for e in libvirt() {
        f.sample(&[("node", node), ("uri", &e.uri)], e.connections.slow_calls as f64)?;
    }
    let mut f = family(enc, &ENDPOINT_CALLS)?;
    for e in libvirt() {
        f.sample(&[("node", node), ("uri", &e.uri)], e.connections.calls_total as f64)?;
    }
    let mut f = family(enc, &ENDPOINT_BATCHED_POLLS)?;
    for e in libvirt() {
        f.sample(&[("node", node), ("uri", &e.uri)], e.connections.batched_total as f64)?;
    }
    let listeners = [("public", &http.public), ("debug", &http.debug)];
    let mut f = family(enc, &HTTP_CONNECTIONS)?;
    for (name, l) in listeners {
        f.sample(&[("node", node), ("listener", name)], l.open.load(std::sync::atomic::Ordering::Relaxed) as f64)?;
    }
    let mut f = family(enc, &HTTP_CLOSED)?;
    for (name, l) in listeners {
        for (reason, n) in l.closed() {
            f.sample(&[("node", node), ("listener", name), ("reason", reason)], n as f64)?;
        }
    }
    let mut f = family(enc, &HTTP_SHED)?;
    f.sample(&[("node", node)], http.budget.shed() as f64)?;
    let mut f = family(enc, &LAUNCHER_DAEMONS)?;
    if let Some(l) = launchers {
        for (status, n) in [("accepted", l.accepted), ("untrusted", l.untrusted), ("over_cap", l.over_cap)] {
            f.sample(&[("node", node), ("status", status)], n as f64)?;
        }
    }
    let mut f = family(enc, &BUILD_INFO)?;
    f.sample(&[("node", node), ("version", build.version), ("revision", build.revision), ("rustc", build.rustc)], 1.0)
}

// Guest group: the qemu-guest-agent.

// Bridge health.
family!(
    SOURCE_UP,
    "vmbridge_source_up",
    Gauge,
    N,
    ["source"],
    Bridge,
    "vmbridge",
    Vm,
    "1 when the last poll of this source succeeded, else 0."
);
family!(
    BREAKER_STATE,
    "vmbridge_breaker_state",
    Gauge,
    N,
    ["source", "state"],
    Bridge,
    "vmbridge",
    Vm,
    "Circuit breaker state of this source (closed, open, half_open): by default one series, the current state, at 1; with --health-detail every state, 0 for the others."
);
family!(
    SOURCE_LAST_SUCCESS,
    "vmbridge_source_last_success_timestamp",
    Gauge,
    S,
    ["source"],
    Bridge,
    "vmbridge",
    Vm,
    "When this source was last polled successfully, seconds since the Unix epoch."
);
family!(
    SOURCE_POLL_DURATION,
    "vmbridge_source_poll_duration",
    Gauge,
    S,
    ["source"],
    Bridge,
    "vmbridge",
    Vm,
    "Duration of the last poll of this source. Only with --health-detail."
);
family!(
    SOURCE_POLLS,
    "vmbridge_source_polls",
    Counter,
    N,
    ["source"],
    Bridge,
    "vmbridge",
    Vm,
    "Polls of this source since the VM was discovered. Only with --health-detail."
);
family!(
    SOURCE_ERRORS,
    "vmbridge_source_errors",
    Counter,
    N,
    ["source", "kind"],
    Bridge,
    "vmbridge",
    Vm,
    "Failed polls of this source since the VM was discovered, by kind. By default only kinds that occurred have a series; every kind with --health-detail."
);
family!(
    BREAKER_TRANSITIONS,
    "vmbridge_breaker_transitions",
    Counter,
    N,
    ["source", "reason"],
    Bridge,
    "vmbridge",
    Vm,
    "Circuit breaker state changes since the VM was discovered, by reason. By default only reasons that occurred have a series; every reason with --health-detail."
);
family!(
    STUCK_CALLS,
    "vmbridge_stuck_calls",
    Gauge,
    N,
    ["source"],
    Bridge,
    "vmbridge",
    Vm,
    "Calls to this source abandoned at their deadline and still running (at most one per VM and source). By default exported only while it is above 0; always with --health-detail."
);

family!(VMS, "vmbridge_vms", Gauge, N, [], Bridge, "vmbridge", Node, "VMs vmbridge currently knows on this node.");
family!(
    VM_CONFLICTS,
    "vmbridge_vm_conflicts",
    Gauge,
    N,
    [],
    Bridge,
    "vmbridge",
    Node,
    "Namespace/name pairs that more than one live domain claims (e.g. `vm1` and `default_vm1`, or two daemons). Only the first discovered claimant is exported; /debug/vms lists them all."
);
family!(
    ENDPOINT_UP,
    "vmbridge_endpoint_up",
    Gauge,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "1 when the last connect and listing of this libvirt endpoint succeeded, else 0."
);
family!(
    ENDPOINT_DOMAINS,
    "vmbridge_endpoint_domains",
    Gauge,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "Running domains at the last listing of this libvirt endpoint."
);
family!(
    VM_STALL_REASON,
    "vmbridge_vm_stall_reason",
    Gauge,
    N,
    ["reason", "wchan"],
    Bridge,
    "vmbridge",
    Vm,
    "Why the VM is stuck, present (value 1) only while it is: process_stopped (QEMU in /proc state T), io_blocked (QEMU's main thread in state D; wchan names the kernel function it waits in), monitor_busy (the QEMU monitor occupied or held by a job past the poll timeout while libvirt polls fail, from virDomainGetControlInfo), agent_unresponsive (the guest agent's polls timing out). The first that holds, in that order."
);
family!(
    GUEST_HEARTBEAT,
    "vmbridge_guest_heartbeat",
    Gauge,
    N,
    ["state"],
    Bridge,
    "vmbridge",
    Vm,
    "Whether the guest is alive; one series (value 1), the current state: ok (guest-ping within qga.heartbeat_slow), agent_slow, agent_silent (channel connected, no answer), guest_stalled (running, no vCPU time for qga.heartbeat_stalled_polls polls and 30 s, agent silent), no_agent, unknown (host side not answering, not running, not yet polled). Never ok while the host does not answer."
);
family!(
    GUEST_AGENT_RTT,
    "vmbridge_guest_agent_rtt",
    Gauge,
    S,
    [],
    Bridge,
    "vmbridge",
    Vm,
    "Round-trip time of the guest-ping at the start of each guest-agent poll, while the agent answers."
);
family!(
    GUEST_VALUES_REJECTED,
    "vmbridge_guest_values_rejected",
    Counter,
    N,
    ["family", "reason"],
    Bridge,
    "vmbridge",
    Vm,
    "Guest values withheld as impossible, by family and reason."
);
family!(
    SOURCE_EFFECTIVE_INTERVAL,
    "vmbridge_source_effective_interval",
    Gauge,
    S,
    ["source"],
    Bridge,
    "vmbridge",
    Vm,
    "Seconds between the source's last two successful polls: the poll interval as the endpoint serves it (polls deferred as pool_saturated or endpoint_saturated stretch it, see the README). Written while polling is stretched (over 1.5 intervals, or the last poll deferred), and always with --health-detail."
);
family!(
    ENDPOINT_SATURATED,
    "vmbridge_endpoint_saturated",
    Gauge,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "1 while this libvirt daemon answers no call, not even a probe that needs no QEMU: all its worker threads (max_workers, default 20) are held, most likely by calls on hung VMs. Its VMs keep their last data until the staleness window, and their polls are deferred (error kind endpoint_saturated), not counted as their failures."
);
family!(
    ENDPOINT_CONNECTIONS,
    "vmbridge_endpoint_connections",
    Gauge,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "Read-only connections open to this libvirt daemon for the pollers' calls (at most libvirt.max_connections). A connection with a call running long takes no new calls and another one carries them, so each hung VM can hold one."
);
family!(
    ENDPOINT_SLOW_CALLS,
    "vmbridge_endpoint_slow_calls",
    Gauge,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "The pollers' calls to this libvirt daemon running for longer than 500 ms now: calls stuck on hung VMs, or a daemon slow for everyone."
);
family!(
    ENDPOINT_CALLS,
    "vmbridge_endpoint_calls",
    Counter,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "libvirt calls (round trips) the pollers made to this libvirt daemon: a batch of many domains' bulk statistics counts one."
);
family!(
    ENDPOINT_BATCHED_POLLS,
    "vmbridge_endpoint_batched_polls",
    Counter,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "Domains' bulk statistics this libvirt daemon answered in a batch (libvirt.batch_window) rather than in a call of the domain's own."
);
family!(
    HTTP_CONNECTIONS,
    "vmbridge_http_connections",
    Gauge,
    N,
    ["listener"],
    Bridge,
    "vmbridge",
    Node,
    "HTTP connections open now, per listener (public or debug); at most http.max_connections."
);
family!(
    HTTP_CLOSED,
    "vmbridge_http_connections_closed",
    Counter,
    N,
    ["listener", "reason"],
    Bridge,
    "vmbridge",
    Node,
    "HTTP connections vmbridge closed or refused, per listener and reason: header_timeout, idle_timeout, write_timeout (a reply its peer did not read within http.write_timeout), evicted (room for a new one), refused (503 at the cap), error (the client's)."
);
family!(
    HTTP_SHED,
    "vmbridge_http_replies_shed",
    Counter,
    N,
    [],
    Bridge,
    "vmbridge",
    Node,
    "Requests answered 503 (with Retry-After) because the reply budget, http.reply_budget_bytes over both listeners, had no room for a new body: replies that peers read slowly or not at all hold it until written or until http.write_timeout."
);
family!(
    LAUNCHER_DAEMONS,
    "vmbridge_launcher_daemons",
    Gauge,
    N,
    ["status"],
    Bridge,
    "vmbridge",
    Node,
    "KubeVirt mode: libvirt daemons in other mount namespaces at the last scan, by status: accepted (a virt-launcher's, polled), untrusted (no virt-launcher parent in its container or no KubeVirt launcher socket layout: ignored), over_cap (past kubevirt.max_launchers)."
);
family!(
    BUILD_INFO,
    "vmbridge_build",
    Info,
    N,
    ["version", "revision", "rustc"],
    Bridge,
    "vmbridge",
    Node,
    "vmbridge build information; the value is always 1."
);

/// vmbridge's own families, in the order `encode` writes them.
pub const BRIDGE: [&MetricDef; 26] = [
    &SOURCE_UP,
    &BREAKER_STATE,
    &SOURCE_LAST_SUCCESS,
    &SOURCE_POLL_DURATION,
    &SOURCE_EFFECTIVE_INTERVAL,
    &SOURCE_POLLS,
    &SOURCE_ERRORS,
    &BREAKER_TRANSITIONS,
    &STUCK_CALLS,
    &VM_STALL_REASON,
    &GUEST_HEARTBEAT,
    &GUEST_AGENT_RTT,
    &GUEST_VALUES_REJECTED,
    &VMS,
    &VM_CONFLICTS,
    &ENDPOINT_UP,
    &ENDPOINT_DOMAINS,
    &ENDPOINT_SATURATED,
    &ENDPOINT_CONNECTIONS,
    &ENDPOINT_SLOW_CALLS,
    &ENDPOINT_CALLS,
    &ENDPOINT_BATCHED_POLLS,
    &HTTP_CONNECTIONS,
    &HTTP_CLOSED,
    &HTTP_SHED,
    &LAUNCHER_DAEMONS,
];
