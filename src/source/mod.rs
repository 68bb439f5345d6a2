//! Sources: where a VM's facts come from. Each (VM, source) pair is polled by its own task
//! behind its own breaker (see `supervisor`), so one slow source never delays another.
//!
//! Every source is one module implementing [`Source`]: its validated settings, its sample,
//! when it applies to a VM (and the poller then), its metric families and their encoder.
//! [`SourceKind::visit`] is the one exhaustive `match` over the sources; the supervisor
//! (starting pollers), the collector (encoding) and the catalogue (listing families) all go
//! through it. Adding a source is its module, a [`SourceKind`] variant and a [`SourceSample`]
//! variant, the settings field in [`Sources`], and its section in `config`: the compiler
//! points at each `match` arm still missing.

pub mod libvirt;
pub mod process;
pub mod qga;
pub mod qmp;
pub mod reject;
pub mod wire;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::catalogue::MetricDef;
use crate::collector::VmView;
use crate::supervisor::PollSettings;
use crate::vm::VmId;

/// The sources vmbridge polls. Adding one is a variant here plus its module; the compiler's
/// exhaustive matches find the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// libvirt bulk stats and memory stats.
    Libvirt,
    /// The qemu-guest-agent.
    Qga,
    /// A direct QMP monitor.
    Qmp,
    /// The VM's processes, from /proc.
    Process,
}

impl SourceKind {
    /// Every source, in the order their families are exposed.
    pub const ALL: [SourceKind; 4] = [SourceKind::Libvirt, SourceKind::Qmp, SourceKind::Process, SourceKind::Qga];

    /// Calls `visitor` with this kind's [`Source`] type: the one exhaustive `match` over the
    /// sources.
    pub fn visit<V: Visit>(self, visitor: &mut V) {
        match self {
            SourceKind::Libvirt => visitor.visit::<libvirt::Libvirt>(),
            SourceKind::Qga => visitor.visit::<qga::Qga>(),
            SourceKind::Qmp => visitor.visit::<qmp::Qmp>(),
            SourceKind::Process => visitor.visit::<process::Process>(),
        }
    }

    /// The `source` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Libvirt => "libvirt",
            SourceKind::Qga => "qga",
            SourceKind::Qmp => "qmp",
            SourceKind::Process => "process",
        }
    }
}

/// Bounded classification of poll failures: the `kind` label of `vmbridge_source_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The call did not finish within the poll timeout.
    Timeout,
    /// No call slot of vmbridge's own came free before the deadline (`libvirt.max_concurrent_calls`,
    /// or every connection to the daemon busy): the node is busy, not the VM. Deferred: see
    /// [`ErrorKind::deferred`].
    PoolSaturated,
    /// The libvirt daemon answered no call while this one waited, and not a probe either: its
    /// worker threads are all held (most likely by calls on hung VMs). Deferred: see
    /// [`ErrorKind::deferred`].
    EndpointSaturated,
    /// No usable connection to the endpoint.
    Connection,
    /// The domain no longer exists.
    NoDomain,
    /// The source answered with an error.
    Remote,
    /// The source's reply could not be understood.
    Protocol,
    /// The poll task itself failed (a panic in a blocking call).
    Internal,
    /// The guest agent is not there: libvirt says "QEMU guest agent is not connected" (or
    /// the domain has no agent channel), or nothing listens at the direct socket. A state,
    /// not a fault: it never counts toward opening the breaker and is re-checked on the
    /// source's slow period (see [`Poller::recheck_period`]).
    AgentUnavailable,
    /// The VM opted out of guest-agent polling (`qga.exclude`, or vmbridge's element in its
    /// domain metadata): no agent call is made. A state, not a fault, as
    /// [`ErrorKind::AgentUnavailable`].
    AgentDisabled,
}

impl ErrorKind {
    /// Every kind, so counters can be exported at zero.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Timeout,
        ErrorKind::PoolSaturated,
        ErrorKind::EndpointSaturated,
        ErrorKind::Connection,
        ErrorKind::NoDomain,
        ErrorKind::Remote,
        ErrorKind::Protocol,
        ErrorKind::Internal,
        ErrorKind::AgentUnavailable,
        ErrorKind::AgentDisabled,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::PoolSaturated => "pool_saturated",
            ErrorKind::EndpointSaturated => "endpoint_saturated",
            ErrorKind::Connection => "connection",
            ErrorKind::NoDomain => "no_domain",
            ErrorKind::Remote => "remote",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Internal => "internal",
            ErrorKind::AgentUnavailable => "agent_unavailable",
            ErrorKind::AgentDisabled => "agent_disabled",
        }
    }

    /// Whether a failure of this kind counts toward opening the breaker. An absent agent
    /// answered at once and definitely: it is a state of the VM, not a fault to back off from.
    pub fn trips_breaker(self) -> bool {
        !matches!(self, ErrorKind::AgentUnavailable | ErrorKind::AgentDisabled) && !self.deferred()
    }

    /// Whether the poll did not get to ask the VM at all, because the node is busy (vmbridge's
    /// own call slots) or the daemon answers nobody: not the VM's failure. Such a poll leaves
    /// the breaker and the consecutive-failure count as they were, and the VM keeps its last
    /// data (and `source_up`) until the staleness window. A poll that waited for a call slot
    /// queues again at once (every VM is served in turn, and the interval stretches evenly to
    /// what the endpoint serves); one the daemon did not answer comes back an interval later.
    pub fn deferred(self) -> bool {
        matches!(self, ErrorKind::PoolSaturated | ErrorKind::EndpointSaturated)
    }
}

/// A failed poll.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct PollError {
    /// Bounded classification.
    pub kind: ErrorKind,
    /// Human-readable detail (shown in the debug endpoint, never used as a label).
    pub message: String,
    /// A call outlived the hard timeout: the breaker opens at once.
    pub hard: bool,
    /// The QEMU monitor's state when the poll failed, where libvirt told it (a stall reason).
    pub monitor: Option<crate::stall::Monitor>,
}

impl PollError {
    /// A failure of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PollError { kind, message: message.into(), hard: false, monitor: None }
    }
}

/// The last good data of one source for one VM. Held behind an `Arc` in the store, so the
/// size difference between variants costs nothing per scrape.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum SourceSample {
    /// From libvirt.
    Libvirt(libvirt::LibvirtSample),
    /// From the guest agent.
    Qga(qga::QgaSample),
    /// From a direct QMP monitor.
    Qmp(qmp::QmpSample),
    /// From /proc.
    Process(process::ProcessSample),
}

/// One (VM, source) poller. The supervisor owns time: it runs at most one `poll` future per
/// (VM, source) at a time, gives it [`Poller::deadline`], and when the deadline passes counts
/// a timeout (the breaker does the rest) and a stuck call while it keeps waiting for that same
/// future, never starting a second one. A poller may also time out its own calls sooner, with
/// a more precise message. `poll` must be cancel-safe: the future is dropped when the VM goes.
pub trait Poller: Send + 'static {
    /// Which source this is.
    fn kind(&self) -> SourceKind;
    /// The longest one poll may take (every call it makes, each within its own deadline).
    fn deadline(&self) -> std::time::Duration;
    /// One poll.
    fn poll(&mut self) -> impl std::future::Future<Output = Result<SourceSample, PollError>> + Send;
    /// Calls abandoned at their deadline and still running, for `vmbridge_stuck_calls`.
    fn stuck_calls(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64>;
    /// How long to wait before polling again after an [`ErrorKind::AgentUnavailable`]
    /// answer; `None`: the poll interval.
    fn recheck_period(&self) -> Option<std::time::Duration> {
        None
    }
    /// Fired when the source may have become available (libvirt's agent-connected event), so
    /// a waiting re-check runs at once; `None` when no such signal exists.
    fn wake(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

/// Something done once per source type (see [`SourceKind::visit`]).
pub trait Visit {
    /// Called with the source's type.
    fn visit<S: Source>(&mut self);
}

/// Every source's validated settings (built by `config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sources {
    /// libvirt.
    pub libvirt: libvirt::LibvirtSettings,
    /// The guest agent.
    pub qga: qga::config::QgaRuntime,
    /// The direct QMP monitor.
    pub qmp: qmp::config::QmpRuntime,
    /// /proc.
    pub process: process::ProcessSettings,
}

/// What the supervisor knows of a VM when it starts its sources.
pub struct VmStart<'a> {
    /// Its labels.
    pub id: &'a VmId,
    /// The libvirt domain name (for a VM under `[[vms]]`, its name).
    pub domain: &'a str,
    /// The domain UUID.
    pub uuid: &'a str,
    /// The daemon that reported it; `None` for a VM under `[[vms]]`.
    pub endpoint: Option<&'a Arc<libvirt::endpoint::Endpoint>>,
    /// Its own sockets, for a VM under `[[vms]]`.
    pub sockets: Option<&'a crate::config::StaticVm>,
    /// Polling settings (deadlines).
    pub poll: &'a PollSettings,
    /// The pool-wide bound on running libvirt calls.
    pub limiter: &'a Arc<Semaphore>,
}

/// One source: one module owning its settings, its sample, its poller, its families and
/// their encoder.
pub trait Source: 'static {
    /// Which one.
    const KIND: SourceKind;
    /// Its per-VM sample (inside [`SourceSample`]).
    type Sample: 'static;
    /// Its validated settings.
    type Settings: 'static;
    /// Its poller.
    type Poller: Poller;
    /// Its settings among all sources'.
    fn settings(all: &Sources) -> &Self::Settings;
    /// Its sample, if `sample` is one.
    fn sample(sample: &SourceSample) -> Option<&Self::Sample>;
    /// The poller for `vm`, when this source applies to it.
    fn poller(vm: &VmStart<'_>, settings: &Self::Settings) -> Option<Self::Poller>;
    /// Its metric families, in the order `encode` writes them.
    fn families() -> Vec<&'static MetricDef>;
    /// Writes its families for `vms` (each VM's fresh sample: [`VmView::sample`]).
    fn encode(enc: &mut crate::collector::Out<'_>, vms: &[VmView<'_>]) -> std::fmt::Result;
}

/// Makes a string from outside vmbridge (a guest, a process name) safe to use as a label
/// value: control characters become `?`, and it is cut at `max` bytes on a character boundary.
pub fn label(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}
