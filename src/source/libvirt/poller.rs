//! Polls one domain: bulk stats (state, cpu-total, balloon, vcpu, interface, block, dirtyrate)
//! with `NOWAIT`, plus the job stats, in one blocking call per poll. Nothing here waits for the
//! domain's job: a part libvirt skips because another client holds it is carried from the last
//! answer (`merge`). (`virDomainMemoryStats` is not called: it queues for the job, and the
//! balloon group already carries the same QEMU figures.)

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::Semaphore;
use virt::domain::Domain;
use virt::sys;

use super::blocking::{BlockingSlot, SlotError};
use super::endpoint::{Conn, Endpoint};
use super::merge::Carry;
use super::{LibvirtSample, classify, ffi};
use crate::source::{ErrorKind, PollError, Poller, SourceKind, SourceSample};

/// The bulk-stats groups vmbridge asks for.
pub const STATS_GROUPS: u32 = sys::VIR_DOMAIN_STATS_STATE
    | sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | sys::VIR_DOMAIN_STATS_BALLOON
    | sys::VIR_DOMAIN_STATS_VCPU
    | sys::VIR_DOMAIN_STATS_INTERFACE
    | sys::VIR_DOMAIN_STATS_BLOCK
    | sys::VIR_DOMAIN_STATS_DIRTYRATE;

/// `NOWAIT`: skip the stats that need a domain job another caller holds, instead of queueing.
pub const STATS_FLAGS: u32 = sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT;

/// Bulk-stats parameters, and job stats (type and parameters) when available.
type Raw = Result<(Vec<(String, ffi::ParamValue)>, Option<(i32, Vec<(String, ffi::ParamValue)>)>), virt::error::Error>;

/// The current job, or else the last completed one (kept for other readers).
fn job(dom: &Domain) -> Option<(i32, Vec<(String, ffi::ParamValue)>)> {
    match ffi::job_stats(dom, 0) {
        Ok((0, _)) => {
            ffi::job_stats(dom, sys::VIR_DOMAIN_JOB_STATS_COMPLETED | sys::VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED).ok()
        }
        Ok(active) => Some(active),
        // Drivers without job stats: no migration metrics, not a failed poll.
        Err(_) => None,
    }
}

/// Result of one blocking call: the data, plus the domain handle handed back for reuse.
struct CallOutput {
    raw: Raw,
    generation: u64,
    domain: Option<(u64, Domain)>,
}

/// The libvirt poller for one domain.
pub struct LibvirtPoller {
    endpoint: Arc<Endpoint>,
    uuid: String,
    domain: Option<(u64, Domain)>,
    slot: BlockingSlot<CallOutput>,
    timeout: Duration,
    hard_timeout: Duration,
    /// The last completed job seen (a key identifying it, when first seen).
    last_completed: Option<(String, f64)>,
    /// Last observation of every parameter, for answers libvirt gave in part.
    carry: Carry,
    /// How long a carried value may be.
    carry_window: Duration,
}

impl LibvirtPoller {
    /// A poller for the domain `uuid` on `endpoint`.
    pub fn new(
        endpoint: Arc<Endpoint>,
        uuid: String,
        limiter: Arc<Semaphore>,
        timeout: Duration,
        hard_timeout: Duration,
        carry_window: Duration,
    ) -> Self {
        LibvirtPoller {
            endpoint,
            uuid,
            domain: None,
            slot: BlockingSlot::new(limiter),
            timeout,
            hard_timeout,
            last_completed: None,
            carry: Carry::new(),
            carry_window,
        }
    }
}

fn call(conn: Conn, uuid: String, cached: Option<(u64, Domain)>) -> CallOutput {
    let generation = conn.generation;
    let dom = match cached {
        Some((g, d)) if g == generation => d,
        _ => match conn.connect.lookup_domain_by_uuid_string(&uuid) {
            Ok(d) => d,
            Err(e) => {
                return CallOutput { raw: Err(e), generation, domain: None };
            }
        },
    };
    let raw = ffi::domain_stats(&dom, STATS_GROUPS, STATS_FLAGS).map(|params| (params, job(&dom)));
    CallOutput { raw, generation, domain: Some((generation, dom)) }
}

impl Poller for LibvirtPoller {
    fn kind(&self) -> SourceKind {
        SourceKind::Libvirt
    }

    fn stuck_calls(&self) -> Arc<AtomicU64> {
        self.slot.stuck_counter()
    }

    async fn poll(&mut self) -> Result<SourceSample, PollError> {
        let conn = self
            .endpoint
            .current()
            .ok_or_else(|| PollError::new(ErrorKind::Connection, format!("no connection to {}", self.endpoint.uri)))?;
        let (uuid, cached) = (self.uuid.clone(), self.domain.take());
        let out = match self.slot.run(self.timeout, move || call(conn, uuid, cached)).await {
            Ok(out) => out,
            Err(SlotError::Timeout { running_for }) => {
                return Err(PollError {
                    kind: ErrorKind::Timeout,
                    message: format!("libvirt call still running after {:.1}s", running_for.as_secs_f64()),
                    hard: running_for >= self.hard_timeout,
                });
            }
            Err(SlotError::Saturated) => {
                return Err(PollError::new(ErrorKind::PoolSaturated, "no free libvirt call slot before the deadline"));
            }
            Err(SlotError::Panicked) => {
                return Err(PollError::new(ErrorKind::Internal, "libvirt call panicked"));
            }
        };
        self.domain = out.domain;
        match out.raw {
            Ok((params, job)) => {
                let merged = self.carry.merge(params, tokio::time::Instant::now(), self.carry_window);
                let mut sample = LibvirtSample::new(merged.params, Vec::new());
                sample.carried = merged.carried.into_iter().map(|(g, n)| (g.to_owned(), n)).collect();
                sample.partial_total = self.carry.partial_total().iter().map(|(g, n)| ((*g).to_owned(), *n)).collect();
                if let Some((job_type, job_params)) = job {
                    sample.job = crate::source::qmp::Migration::from_libvirt_job(job_type, &job_params);
                    sample.job_params = job_params.into_iter().collect();
                }
                // Note each completed job once, when first seen.
                if let Some(done) = sample.job.as_ref().filter(|j| j.status == "completed") {
                    let key = format!("{:?}/{:?}", done.elapsed_seconds, done.memory_processed_bytes);
                    if self.last_completed.as_ref().is_none_or(|(k, _)| *k != key) {
                        self.last_completed = Some((key, crate::clock::now_unix()));
                    }
                }
                sample.job_completed_at = self.last_completed.as_ref().map(|(_, t)| *t);
                sample.events = self.endpoint.events_of(&self.uuid).unwrap_or_default();
                Ok(SourceSample::Libvirt(sample))
            }
            Err(e) => {
                let (kind, broken) = classify(&e);
                if broken {
                    self.endpoint.report_broken(out.generation);
                }
                if kind == ErrorKind::NoDomain {
                    self.domain = None;
                }
                Err(PollError::new(kind, e.message().to_owned()))
            }
        }
    }
}
