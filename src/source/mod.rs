//! Sources: where a VM's facts come from. Each (VM, source) pair is polled by its own task
//! behind its own breaker (see `supervisor`), so one slow source never delays another.
//!
//! Each source is one folder (or file) implementing [`api::Source`]: its validated settings,
//! its sample, when it applies to a VM (and the poller then), its metric families and their
//! encoder. This module is the registry: its one `sources!` invocation lists every source, one
//! line each, and makes [`SourceKind`], [`SourceSample`] and [`visit`] (the one exhaustive
//! `match` over the sources) from it. Adding a source is its folder plus its line there (and,
//! when it has settings, their field in [`Sources`] and its config section); `fake.rs`, a
//! source registered only in the unit tests, shows it. It also holds what the store and the
//! supervisor need of the sources as data: the [`Poller`] trait, every source's settings and
//! what a VM's sources start from ([`VmStart`]). [`events`] is shared vocabulary: what the
//! event and migration families count, which libvirt and QMP both can tell.

pub mod api;
pub mod events;
pub mod reject;
pub mod wire;

mod registry;

// The registry: every source, one line each, in the order of `SourceKind`'s variants
// (their `Ord`, used by maps keyed by kind): the variant, its module (a folder or file here)
// and `api::Source` type, its sample type, its position in the exposition (families of
// position 0 come first), its `source` label value, and the docs of its kind and sample.
// This one invocation declares the modules and makes `SourceKind`, `SourceSample` and
// `visit`, so adding a source is its folder plus one line here (and, if it has settings,
// their field in `Sources` and its config section).
registry::sources! {
    Libvirt = libvirt::Libvirt, libvirt::LibvirtSample, 0, "libvirt",
        "libvirt bulk stats and memory stats.", "From libvirt.";
    Qga = qga::Qga, qga::QgaSample, 3, "qga",
        "The qemu-guest-agent.", "From the guest agent.";
    Qmp = qmp::Qmp, qmp::QmpSample, 1, "qmp",
        "A direct QMP monitor.", "From a direct QMP monitor.";
    Process = process::Process, process::ProcessSample, 2, "process",
        "The VM's processes, from /proc.", "From /proc.";
    #[cfg(test)]
    Fake = fake::Fake, fake::FakeSample, 4, "fake",
        "A source that exists only in the unit tests: it shows that a source is its module plus its line here.",
        "From the test source.";
}

use std::sync::Arc;

use tokio::sync::Semaphore;

use std::time::Duration;

use crate::breaker::BreakerConfig;
use crate::model::PollError;
use crate::vm::VmId;

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
    /// How long to wait before polling again after an [`crate::model::ErrorKind::AgentUnavailable`]
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
    pub sockets: Option<&'a StaticVm>,
    /// Polling settings (deadlines).
    pub poll: &'a PollSettings,
    /// The pool-wide bound on running libvirt calls.
    pub limiter: &'a Arc<Semaphore>,
}

/// How each (VM, source) task polls.
#[derive(Debug, Clone, PartialEq)]
pub struct PollSettings {
    /// Time between successful polls.
    pub interval: Duration,
    /// Deadline of one poll; missing it counts a failure.
    pub timeout: Duration,
    /// A call running this long opens the breaker at once.
    pub hard_timeout: Duration,
    /// Pause before re-polling after a failure while the breaker is still closed, so a
    /// failing source is confirmed (and flagged) quickly instead of one interval per failure.
    pub retry_delay: Duration,
    /// Failures kept for the debug endpoint.
    pub errors_kept: usize,
    /// How long a value libvirt left out of a partial answer is carried from its last
    /// observation (`breaker.staleness`): see `source::libvirt::merge`.
    pub carry_window: Duration,
    /// The breaker.
    pub breaker: BreakerConfig,
}

/// A validated static VM.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticVm {
    /// Its identity.
    pub id: crate::vm::VmId,
    /// Its agent socket.
    pub qga_socket: Option<std::path::PathBuf>,
    /// Its QMP monitor socket.
    pub qmp_socket: Option<std::path::PathBuf>,
}
