//! How a poll fails: the bounded error kinds (the `kind` label) and the failed poll itself.

use serde::Serialize;

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
    // The model imports nothing of the crate: the link names the source layer's trait.
    #[allow(rustdoc::broken_intra_doc_links)]
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
    pub monitor: Option<Monitor>,
}

impl PollError {
    /// A failure of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PollError { kind, message: message.into(), hard: false, monitor: None }
    }
}

/// The QEMU monitor's state as `virDomainGetControlInfo` gave it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Monitor {
    /// `ok`, `job`, `occupied`, `error` or `unknown`.
    pub state: &'static str,
    /// Seconds in that state.
    pub seconds: f64,
}

impl Monitor {
    /// From libvirt's (state, time in it).
    pub fn from_control((state, time): (u32, std::time::Duration)) -> Monitor {
        use virt::sys;
        let state = match state {
            sys::VIR_DOMAIN_CONTROL_OK => "ok",
            sys::VIR_DOMAIN_CONTROL_JOB => "job",
            sys::VIR_DOMAIN_CONTROL_OCCUPIED => "occupied",
            sys::VIR_DOMAIN_CONTROL_ERROR => "error",
            _ => "unknown",
        };
        Monitor { state, seconds: time.as_secs_f64() }
    }

    /// Occupied by a command, or held by a job, for at least `limit` seconds.
    pub fn busy_for(&self, limit: f64) -> bool {
        matches!(self.state, "occupied" | "job") && self.seconds >= limit
    }
}
