//! Sources: where a VM's facts come from. Each (VM, source) pair is polled by its own task
//! behind its own breaker (see `supervisor`), so one slow source never delays another.

pub mod libvirt;
pub mod process;
pub mod qga;
pub mod qmp;
pub mod wire;

use serde::Serialize;

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
    /// Too many calls were already running on the blocking pool.
    PoolSaturated,
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
}

impl ErrorKind {
    /// Every kind, so counters can be exported at zero.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Timeout,
        ErrorKind::PoolSaturated,
        ErrorKind::Connection,
        ErrorKind::NoDomain,
        ErrorKind::Remote,
        ErrorKind::Protocol,
        ErrorKind::Internal,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::PoolSaturated => "pool_saturated",
            ErrorKind::Connection => "connection",
            ErrorKind::NoDomain => "no_domain",
            ErrorKind::Remote => "remote",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Internal => "internal",
        }
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
}

impl PollError {
    /// A failure of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PollError { kind, message: message.into(), hard: false }
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
}
