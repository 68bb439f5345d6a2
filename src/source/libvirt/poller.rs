//! Polls one domain: bulk stats (state, cpu-total, balloon, vcpu, interface, block, dirtyrate)
//! with `NOWAIT`, plus the job stats, the vCPU pinning (every [`SLOW_EVERY`]th poll) and (when
//! the devices changed) the device aliases from the domain XML, in one blocking call per poll.
//! Nothing here waits for the domain's job (job stats are asked only while the monitor's state
//! says no job is held, else the last reading is kept within the staleness window): a part
//! libvirt skips because another client holds it is carried from the last answer (`merge`). (`virDomainMemoryStats` is not called: it queues for the job, and the
//! balloon group already carries the same QEMU figures.) Because such an answer comes back at
//! once even when QEMU hangs with another client's command in its monitor, each poll also
//! reads the monitor's state (`virDomainGetControlInfo`, no job, no QEMU round trip): occupied
//! by one command for longer than the poll timeout fails the poll as a timeout (past the hard
//! timeout, a hard one), as vmbridge's own call stuck there would.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::Semaphore;
use virt::domain::Domain;
use virt::sys;

use super::aliases::{Aliases, DeviceLabels};
use super::blocking::{BlockingSlot, SlotError};
use super::endpoint::batch::{STATS_FLAGS, STATS_GROUPS};
use super::endpoint::{Endpoint, LaneError};
use super::errors::classify;
use super::merge::Carry;
use super::{DomainSample, LibvirtSample, ffi};
use crate::model::{ErrorKind, PollError};
use crate::source::SourceKind;
use crate::source::{Poller, SourceSample};

/// Job stats: the job type and its parameters.
type Job = (i32, Vec<(String, ffi::ParamValue)>);

/// Every this many polls (and on the first), a poll also reads what seldom changes: the last
/// completed job's statistics (also read on the poll after an active job was seen) and the
/// vCPU pinning (also read when the vCPU count changes). The other polls skip those two
/// libvirt round trips: three calls per poll instead of five, where each call is a wake-up of
/// a blocking thread, libvirt's client lock and its event loop (most of vmbridge's CPU).
pub const SLOW_EVERY: u64 = 6;

/// How long a saturation probe may take to answer ([`Endpoint::answering`]) when a call missed
/// its deadline and the daemon answered no other call meanwhile.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// Whether a job type is an active job (`VIR_DOMAIN_JOB_BOUNDED`, `_UNBOUNDED`).
fn job_active(job_type: i32) -> bool {
    job_type == sys::VIR_DOMAIN_JOB_BOUNDED as i32 || job_type == sys::VIR_DOMAIN_JOB_UNBOUNDED as i32
}

/// Job stats as read in one call.
#[derive(Debug, Clone)]
enum JobRead {
    /// The current job, else the last completed one; `None` when the driver has neither.
    Read(Option<Job>),
    /// Not asked: another caller held a job of the domain, and asking would have queued behind
    /// it (`virDomainGetJobStats` takes a query job).
    Busy,
    /// No active job, and the last completed one was not asked for this time (the last
    /// reading of it stands).
    Idle,
}

/// What one call read besides the bulk stats.
#[derive(Debug, Clone)]
struct Extra {
    /// Job stats (or why not).
    job: JobRead,
    /// The monitor's state and time in it (`virDomainGetControlInfo`), when available.
    control: Option<(u32, Duration)>,
    /// (vCPU, host CPU) pairs of the pinning map: `None` when not asked this time, `Some(None)`
    /// when libvirt did not answer.
    affinity: Option<Option<u64>>,
    /// The vCPU count the bulk stats gave.
    vcpus: Option<u64>,
    /// The device aliases, read again because the devices changed (or never were read).
    aliases: Option<(Vec<String>, Aliases)>,
}

/// Bulk-stats parameters and the rest of one call.
type Raw = Result<(Vec<(String, ffi::ParamValue)>, Extra), CallError>;

/// The current job, or else (when `completed`) the last completed one (kept for other
/// readers).
fn job(dom: &Domain, completed: bool, calls: &mut u64) -> JobRead {
    *calls += 1;
    match ffi::job_stats(dom, 0) {
        Ok((0, _)) if completed => JobRead::Read({
            *calls += 1;
            ffi::job_stats(dom, sys::VIR_DOMAIN_JOB_STATS_COMPLETED | sys::VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED).ok()
        }),
        Ok((0, _)) => JobRead::Idle,
        Ok(active) => JobRead::Read(Some(active)),
        // Drivers without job stats: no migration metrics, not a failed poll.
        Err(_) => JobRead::Read(None),
    }
}

/// What a poll asks besides the bulk stats.
#[derive(Debug, Clone, Copy)]
struct Ask {
    /// The last completed job's statistics, when no job is active.
    completed: bool,
    /// The vCPU pinning (asked anyway when the vCPU count is not `vcpus`).
    affinity: bool,
    /// The vCPU count at the last poll.
    vcpus: Option<u64>,
}

/// Result of one blocking call: the data, plus the domain handle handed back for reuse.
struct CallOutput {
    raw: Raw,
    /// When the call started.
    started: std::time::Instant,
    generation: u64,
    domain: Option<(u64, Domain)>,
}

/// The libvirt poller for one domain.
pub struct LibvirtPoller {
    endpoint: Arc<Endpoint>,
    uuid: String,
    domain: Option<(u64, Domain)>,
    slot: BlockingSlot<CallOutput>,
    /// A second slot, for the one call made while the first is stuck: the monitor's state,
    /// which libvirt answers without QEMU (and on its priority workers).
    control_slot: BlockingSlot<Option<(u32, Duration)>>,
    timeout: Duration,
    hard_timeout: Duration,
    /// The last completed job seen (a key identifying it, when first seen).
    last_completed: Option<(String, f64)>,
    /// Last observation of every parameter, for answers libvirt gave in part.
    carry: Carry,
    /// How long a carried value may be.
    carry_window: Duration,
    /// The last job stats read, and when (reused while another caller holds the job).
    last_job: Option<(Option<Job>, tokio::time::Instant)>,
    /// The devices (as bulk stats name them) when the aliases were read, and the aliases.
    aliases: Option<(Vec<String>, Aliases)>,
    /// How `drive` and `interface` are labelled.
    device_labels: DeviceLabels,
    /// Polls so far (every [`SLOW_EVERY`]th also reads the completed job and the pinning).
    polls: u64,
    /// The last job read was active: its completed statistics are read on the next poll.
    job_was_active: bool,
    /// The last pinning read, and the vCPU count then.
    affinity: (Option<u64>, Option<u64>),
    /// The pool-wide bound on running calls (a batch takes one permit).
    limiter: Arc<Semaphore>,
    /// The last poll succeeded: this one may take its statistics from a batch.
    batchable: bool,
    /// The vCPUs' time at the last poll, and polls in a row it did not advance.
    vcpu_time: VcpuProgress,
    /// The balloon statistics' last stamp and measured period.
    memory: super::memstats::Freshness,
    /// The guest counters' last accepted values and the rejections since discovery.
    plausible: super::memstats::Plausibility,
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
        device_labels: DeviceLabels,
    ) -> Self {
        LibvirtPoller {
            endpoint,
            uuid,
            domain: None,
            slot: BlockingSlot::new(limiter.clone()),
            control_slot: BlockingSlot::new(limiter.clone()),
            timeout,
            hard_timeout,
            last_completed: None,
            carry: Carry::new(),
            carry_window,
            last_job: None,
            aliases: None,
            device_labels,
            polls: 0,
            job_was_active: false,
            affinity: (None, None),
            limiter,
            batchable: false,
            vcpu_time: VcpuProgress::default(),
            memory: super::memstats::Freshness::default(),
            plausible: super::memstats::Plausibility::default(),
        }
    }
}

/// Why a call produced no statistics.
enum CallError {
    /// libvirt answered with an error.
    Libvirt(virt::error::Error),
    /// No lane could be had (see [`Endpoint::lease`]).
    Lane(LaneError),
}

fn call(
    endpoint: Arc<Endpoint>,
    uuid: String,
    cached: Option<(u64, Domain)>,
    devices: Option<Vec<String>>,
    ask: Ask,
) -> CallOutput {
    let started = std::time::Instant::now();
    // The lane first; the cached domain handle serves when it belongs to that lane.
    let mut lease = match endpoint.lease() {
        Ok(l) => l,
        Err(e) => return CallOutput { raw: Err(CallError::Lane(e)), started, generation: 0, domain: cached },
    };
    let conn = &lease.conn;
    let generation = conn.generation;
    // Round trips made, counted on the endpoint when the call ends.
    let mut calls = 0u64;
    let dom = match cached {
        Some((g, d)) if g == generation => d,
        _ => {
            calls += 1;
            match conn.connect.lookup_domain_by_uuid_string(&uuid) {
                Ok(d) => d,
                Err(e) => {
                    endpoint.count_calls(calls);
                    return CallOutput { raw: Err(CallError::Libvirt(e)), started, generation, domain: None };
                }
            }
        }
    };
    // The monitor's state first: it needs no job and tells whether asking for the job stats
    // would queue behind another caller's job.
    let control = ffi::control_info(&dom).ok();
    calls += 2;
    let raw = ffi::domain_stats(&dom, STATS_GROUPS, STATS_FLAGS)
        .map(|params| {
            let job = match control {
                Some((state, _)) if state != sys::VIR_DOMAIN_CONTROL_OK => JobRead::Busy,
                _ => job(&dom, ask.completed, &mut calls),
            };
            let vcpus = params.iter().find(|(k, _)| k == "vcpu.current").and_then(|(_, v)| v.as_u64());
            let affinity = (ask.affinity || vcpus != ask.vcpus).then(|| {
                calls += 1;
                vcpus.and_then(|n| ffi::vcpu_affinity(&dom, u32::try_from(n).unwrap_or(0)).ok())
            });
            // The aliases come from the domain XML, read again only when the devices changed.
            let now = DomainSample::device_names(&params);
            let aliases = (devices.as_ref() != Some(&now))
                .then(|| {
                    calls += 1;
                    dom.xml_desc(0).ok().map(|xml| (now, Aliases::parse(&xml)))
                })
                .flatten();
            (params, Extra { job, control, affinity, vcpus, aliases })
        })
        .map_err(CallError::Libvirt);
    endpoint.count_calls(calls);
    // The bulk-stats call runs on the daemon's normal workers: an answer to it (not a broken
    // connection) shows the daemon is not saturated.
    if raw.as_ref().err().is_none_or(|e| !matches!(e, CallError::Libvirt(e) if classify(e).1)) {
        lease.answered();
    }
    drop(lease);
    CallOutput { raw, started, generation, domain: Some((generation, dom)) }
}

/// `virDomainControlState` as a word.
fn control_state_name(state: u32) -> &'static str {
    match state {
        sys::VIR_DOMAIN_CONTROL_OK => "idle",
        sys::VIR_DOMAIN_CONTROL_JOB => "in a job",
        sys::VIR_DOMAIN_CONTROL_OCCUPIED => "occupied by one command",
        sys::VIR_DOMAIN_CONTROL_ERROR => "in error",
        _ => "in an unknown state",
    }
}

impl LibvirtPoller {
    /// The monitor's state and time in it, on a lane of its own, within a second; `None` when
    /// libvirt does not say.
    async fn monitor_state(&mut self) -> Option<(u32, Duration)> {
        let (endpoint, uuid) = (self.endpoint.clone(), self.uuid.clone());
        let read = move || {
            let lease = endpoint.lease().ok()?;
            endpoint.count_calls(2);
            let dom = lease.conn.connect.lookup_domain_by_uuid_string(&uuid).ok()?;
            ffi::control_info(&dom).ok()
        };
        self.control_slot.run(Duration::from_secs(1), read).await.ok().flatten()
    }
}

/// How long the monitor has been occupied by one command, when that is at least `limit`.
fn monitor_stuck((state, time): (u32, Duration), limit: Duration) -> Option<Duration> {
    (state == sys::VIR_DOMAIN_CONTROL_OCCUPIED && time >= limit).then_some(time)
}

impl Poller for LibvirtPoller {
    fn kind(&self) -> SourceKind {
        SourceKind::Libvirt
    }

    fn stuck_calls(&self) -> Arc<AtomicU64> {
        self.slot.stuck_counter()
    }

    fn deadline(&self) -> Duration {
        // Perhaps a batch's answer, then one blocking call, which the slot abandons at
        // `timeout` (plus waiting for a permit), then perhaps a saturation probe.
        self.endpoint.limits().batch_window + self.batch_wait() + self.timeout * 2 + PROBE_WAIT
    }

    async fn poll(&mut self) -> Result<SourceSample, PollError> {
        // Discovery's connection is down (libvirtd gone, or reconnecting): no lane is tried.
        if self.endpoint.current().is_none() {
            self.batchable = false;
            return Err(PollError::new(ErrorKind::Connection, format!("no connection to {}", self.endpoint.uri)));
        }
        let slow = self.polls % SLOW_EVERY == 0;
        self.polls += 1;
        let out = match self.stats_from_batch(slow).await {
            Some(out) => out,
            None => self.poll_alone(slow).await,
        };
        self.batchable = out.is_ok();
        out
    }
}

impl LibvirtPoller {
    /// How long a poll waits for a batch's answer before it polls its domain alone.
    fn batch_wait(&self) -> Duration {
        self.timeout / 2
    }

    /// The statistics from a batch, when this poll may take them from one and the batch
    /// answered in full in time. `None`: poll alone. A poll that reads what seldom changes
    /// (`slow`), one after an active job, one whose last poll failed, and one whose answer
    /// lacks what the last answer had (libvirt skipped what needs the domain's job: another
    /// caller, or a call stuck on this hung VM, holds it) or names other devices or another
    /// vCPU count go alone: those need the monitor's state, the job, the aliases or the
    /// pinning, which only a call of the domain's own reads.
    async fn stats_from_batch(&mut self, slow: bool) -> Option<Result<SourceSample, PollError>> {
        if !self.batchable || slow || self.job_was_active || self.aliases.is_none() {
            return None;
        }
        let params = self.endpoint.batch_stats(&self.uuid, &self.limiter, self.batch_wait()).await?;
        let vcpus = params.iter().find(|(k, _)| k == "vcpu.current").and_then(|(_, v)| v.as_u64());
        let same_devices = self.aliases.as_ref().is_some_and(|(d, _)| *d == DomainSample::device_names(&params));
        if vcpus != self.affinity.1
            || !same_devices
            || self.carry.would_carry(&params, tokio::time::Instant::now(), self.carry_window)
        {
            return None;
        }
        // No job was active at the last reading; a job that started since is read at the next
        // poll that goes alone (at most `SLOW_EVERY` polls later).
        Some(self.finish(params, Extra { job: JobRead::Idle, control: None, affinity: None, vcpus, aliases: None }))
    }

    /// One call of this domain's own: the monitor's state, the bulk stats, the job, and what
    /// seldom changes when `slow`.
    async fn poll_alone(&mut self, slow: bool) -> Result<SourceSample, PollError> {
        let endpoint = self.endpoint.clone();
        let (uuid, cached) = (self.uuid.clone(), self.domain.take());
        let devices = self.aliases.as_ref().map(|(d, _)| d.clone());
        let ask = Ask { completed: slow || self.job_was_active, affinity: slow, vcpus: self.affinity.1 };
        let out = match self.slot.run(self.timeout, move || call(endpoint, uuid, cached, devices, ask)).await {
            Ok(out) => out,
            Err(SlotError::Timeout { running_for }) => {
                // The VM's failure only if the daemon answers others: when it answered no call
                // since this one started (nor a probe), it is saturated, and the poll is deferred.
                let since = tokio::time::Instant::now().into_std() - running_for;
                if !self.endpoint.answering(since, PROBE_WAIT).await {
                    return Err(PollError::new(
                        ErrorKind::EndpointSaturated,
                        format!(
                            "libvirt call still running after {:.1}s, and {} answers no call (saturated)",
                            running_for.as_secs_f64(),
                            self.endpoint.uri
                        ),
                    ));
                }
                // No second call that needs QEMU while this one is stuck; the monitor's state
                // needs none, and says why the VM does not answer.
                let monitor = self.monitor_state().await;
                let said = monitor.map_or(String::new(), |(state, time)| {
                    format!("; QEMU monitor {} for {:.1}s", control_state_name(state), time.as_secs_f64())
                });
                return Err(PollError {
                    kind: ErrorKind::Timeout,
                    message: format!("libvirt call still running after {:.1}s{said}", running_for.as_secs_f64()),
                    hard: running_for >= self.hard_timeout,
                    monitor: monitor.map(crate::model::Monitor::from_control),
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
            Ok((params, extra)) => self.finish(params, extra),
            // Every connection full of calls the daemon does not answer: the daemon is saturated.
            Err(CallError::Lane(LaneError::Busy { lanes, slow })) => Err(PollError::new(
                ErrorKind::EndpointSaturated,
                format!(
                    "every connection to {} is busy ({lanes} open, {slow} with a call running long): the daemon \
                     is not answering calls (hung VMs hold them)",
                    self.endpoint.uri
                ),
            )),
            Err(CallError::Lane(LaneError::Connect(e))) => {
                let (kind, _) = classify(&e);
                Err(PollError::new(kind, format!("opening a connection: {}", e.message())))
            }
            Err(CallError::Libvirt(e)) => {
                let (kind, broken) = classify(&e);
                if broken {
                    self.endpoint.report_broken(out.generation);
                    // A connection that broke under a call while the daemon answered nobody
                    // (its keep-alive unanswered) says nothing about this VM.
                    if !self.endpoint.answering(out.started, PROBE_WAIT).await {
                        return Err(PollError::new(
                            ErrorKind::EndpointSaturated,
                            format!("{} (and {} answers no call: saturated)", e.message(), self.endpoint.uri),
                        ));
                    }
                }
                if kind == ErrorKind::NoDomain {
                    self.domain = None;
                }
                Err(PollError::new(kind, e.message().to_owned()))
            }
        }
    }
}

/// How long a running domain's vCPU time must stand still before its idle polls count: libvirt
/// reads vCPU time in 10 ms clock ticks, and an idle tickless guest can show none for several
/// seconds (seen on the lab's real guest, its agent stopped, on a loaded machine: `guest_stalled`
/// after 3 one-second polls), so a few short polls are no proof that its kernel stopped.
pub const STALL_MIN_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether a running domain's vCPUs advance, poll to poll.
#[derive(Debug, Clone, Copy)]
struct VcpuProgress {
    /// The summed vCPU time (ns) at the last poll that had one.
    last: Option<u64>,
    /// When it last advanced (or was first seen, or stopped running).
    since: std::time::Instant,
    /// Idle polls count only once the time stood still this long ([`STALL_MIN_IDLE`]).
    min_idle: std::time::Duration,
    /// Polls in a row it did not advance while running. Exactly: under TCG a vCPU halted
    /// with interrupts off still shows a stray 10 ms tick every 1–2 s (QEMU's vCPU thread
    /// wakes for its timers), and so does an idle guest, so no tolerance could tell them apart;
    /// under KVM a halted vCPU blocks in the kernel and its time stands still.
    idle: u32,
}

impl Default for VcpuProgress {
    fn default() -> Self {
        VcpuProgress { last: None, since: std::time::Instant::now(), min_idle: STALL_MIN_IDLE, idle: 0 }
    }
}

impl VcpuProgress {
    /// Takes this poll's sample; returns the polls in a row without vCPU time. Not running,
    /// or no time reported: 0 (a paused guest is not a stalled one). `fresh`: libvirt answered
    /// the vCPU group this time (a carried one is not counted either way).
    fn observe(&mut self, s: &DomainSample, fresh: bool) -> u32 {
        let running = s.state.is_some_and(|st| st.state == i64::from(sys::VIR_DOMAIN_RUNNING));
        let vcpus: Option<u64> =
            s.vcpus.iter().map(|v| v.time_ns).try_fold(0u64, |acc, t| t.map(|t| acc.saturating_add(t)));
        let time = vcpus.filter(|_| !s.vcpus.is_empty()).or(s.cpu_time_ns);
        match (running, time) {
            (true, Some(t)) if fresh => {
                let ran = self.last != Some(t);
                self.idle = if ran { 0 } else { self.idle.saturating_add(1) };
                if ran {
                    self.since = std::time::Instant::now();
                }
                self.last = Some(t);
            }
            (true, Some(_)) => {}
            _ => {
                self.idle = 0;
                self.last = time;
                self.since = std::time::Instant::now();
            }
        }
        if self.since.elapsed() >= self.min_idle { self.idle } else { 0 }
    }
}

impl LibvirtPoller {
    /// A sample from one answer: carried values put back, the monitor's state judged, the job
    /// and pinning readings kept or reused.
    fn finish(&mut self, params: Vec<(String, ffi::ParamValue)>, extra: Extra) -> Result<SourceSample, PollError> {
        let Extra { job, control, affinity, vcpus, aliases } = extra;
        if let Some(a) = aliases {
            self.aliases = Some(a);
        }
        let merged = self.carry.merge(params, tokio::time::Instant::now(), self.carry_window);
        // With NOWAIT, a domain whose QEMU stopped answering still answers promptly when
        // another client's command is the one stuck in its monitor: libvirt leaves out
        // what needs the monitor, and the carry hides that. The monitor's own state tells:
        // one command running longer than the poll timeout is a hung VM, as our own call
        // stuck there would be.
        if let Some(busy) = control.and_then(|c| monitor_stuck(c, self.timeout)) {
            return Err(PollError {
                monitor: control.map(crate::model::Monitor::from_control),
                kind: ErrorKind::Timeout,
                message: format!(
                    "QEMU monitor busy with one command for {:.1}s; \
                     statistics that need it are missing",
                    busy.as_secs_f64()
                ),
                hard: busy >= self.hard_timeout,
            });
        }
        if let Some(a) = affinity {
            self.affinity = (a, vcpus);
        }
        let mut sample = LibvirtSample::new(merged.params, Vec::new());
        sample.parsed.cpu_affinity = self.affinity.0;
        if let Some((_, aliases)) = &self.aliases {
            sample.parsed.apply_aliases(aliases, self.device_labels);
        }
        // A vCPU group carried from an earlier answer says nothing new about progress.
        let vcpu_fresh = !merged.carried.contains_key("vcpu");
        sample.vcpu_idle_polls = self.vcpu_time.observe(&sample.parsed, vcpu_fresh);
        // Guest memory figures whose stamp stopped are withheld (the raw ones stay in `/debug`).
        sample.guest_memory = Some(self.memory.judge(&mut sample.parsed.memory, crate::clock::now_unix()));
        // Then impossible ones (above the domain's memory, counters going back) are withheld.
        self.plausible.check(&mut sample.parsed.memory, sample.parsed.cpu_time_ns);
        sample.rejected = self.plausible.rejected.clone();
        sample.carried = merged.carried.into_iter().map(|(g, n)| (g.to_owned(), n)).collect();
        sample.partial_total = self.carry.partial_total().iter().map(|(g, n)| ((*g).to_owned(), *n)).collect();
        let now = tokio::time::Instant::now();
        let job = match job {
            JobRead::Read(job) => {
                self.job_was_active = job.as_ref().is_some_and(|(t, _)| job_active(*t));
                self.last_job = Some((job.clone(), now));
                job
            }
            // No job now, and the completed one not asked: its last reading stands (a
            // job seen active is followed by a poll that asks, which comes as `Read`).
            JobRead::Idle => {
                self.job_was_active = false;
                let done = self.last_job.take().and_then(|(j, _)| j).filter(|(t, _)| !job_active(*t));
                self.last_job = Some((done.clone(), now));
                done
            }
            // Not asked this time: the last reading, while it is within the window.
            JobRead::Busy => self
                .last_job
                .as_ref()
                .filter(|(_, at)| now.saturating_duration_since(*at) <= self.carry_window)
                .and_then(|(j, _)| j.clone()),
        };
        if let Some((job_type, job_params)) = job {
            sample.job = crate::source::events::Migration::from_libvirt_job(job_type, &job_params);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_time_that_stops_while_running_counts_idle_polls() {
        let dom = |state: i64, times: &[Option<u64>], cpu: Option<u64>| DomainSample {
            state: Some(super::super::stats::DomainState { state, reason: 0 }),
            cpu_time_ns: cpu,
            vcpus: times
                .iter()
                .enumerate()
                .map(|(id, t)| super::super::stats::VcpuSample { id, time_ns: *t, ..Default::default() })
                .collect(),
            ..Default::default()
        };
        let run = i64::from(sys::VIR_DOMAIN_RUNNING);
        let paused = i64::from(sys::VIR_DOMAIN_PAUSED);
        let ms = |v: u64| Some(v * 1_000_000);
        // Idle polls count at once here (no floor), to spell out the counting.
        let mut p = VcpuProgress { min_idle: std::time::Duration::ZERO, ..VcpuProgress::default() };
        // The first reading is a baseline, not an idle poll.
        assert_eq!(p.observe(&dom(run, &[ms(100), ms(200)], ms(990)), true), 0);
        assert_eq!(p.observe(&dom(run, &[ms(150), ms(200)], ms(990)), true), 0);
        assert_eq!(p.observe(&dom(run, &[ms(150), ms(200)], ms(1500)), true), 1, "cpu.time moved, vCPUs did not");
        assert_eq!(p.observe(&dom(run, &[ms(150), ms(200)], ms(1500)), true), 2);
        // A carried vCPU group counts neither way.
        assert_eq!(p.observe(&dom(run, &[ms(150), ms(200)], ms(1500)), false), 2);
        assert_eq!(p.observe(&dom(run, &[ms(150), ms(200)], ms(1500)), true), 3);
        // Paused: not stalled, and the count starts again.
        assert_eq!(p.observe(&dom(paused, &[ms(150), ms(200)], ms(1500)), true), 0);
        assert_eq!(p.observe(&dom(run, &[ms(150), ms(200)], ms(1500)), true), 1);
        // One tick is progress.
        assert_eq!(p.observe(&dom(run, &[ms(160), ms(200)], ms(1500)), true), 0);
        // A counter that went back (a new QEMU) is a new baseline, not progress lost.
        assert_eq!(p.observe(&dom(run, &[ms(1), ms(1)], ms(5)), true), 0);
        // Without per-vCPU times, cpu.time.
        let mut p = VcpuProgress { min_idle: std::time::Duration::ZERO, ..VcpuProgress::default() };
        assert_eq!(p.observe(&dom(run, &[], ms(5)), true), 0);
        assert_eq!(p.observe(&dom(run, &[], ms(5)), true), 1);
        assert_eq!(p.observe(&dom(run, &[], None), true), 0, "no time at all: nothing to judge");
        // With the floor: polls without vCPU time count only once it stood still that long.
        let mut p = VcpuProgress::default();
        assert_eq!(p.observe(&dom(run, &[ms(1)], None), true), 0);
        for _ in 0..5 {
            assert_eq!(p.observe(&dom(run, &[ms(1)], None), true), 0, "idle for less than {STALL_MIN_IDLE:?}");
        }
        p.since -= STALL_MIN_IDLE;
        assert_eq!(
            p.observe(&dom(run, &[ms(1)], None), true),
            6,
            "idle for {STALL_MIN_IDLE:?}: every idle poll counts"
        );
    }

    #[test]
    fn only_a_monitor_occupied_past_the_limit_is_stuck() {
        let s = Duration::from_secs;
        let limit = s(4);
        assert_eq!(monitor_stuck((sys::VIR_DOMAIN_CONTROL_OCCUPIED, s(5)), limit), Some(s(5)));
        assert_eq!(monitor_stuck((sys::VIR_DOMAIN_CONTROL_OCCUPIED, s(4)), limit), Some(s(4)));
        assert_eq!(monitor_stuck((sys::VIR_DOMAIN_CONTROL_OCCUPIED, s(3)), limit), None);
        // A long job that is not inside the monitor (a migration between its commands) is fine.
        assert_eq!(monitor_stuck((sys::VIR_DOMAIN_CONTROL_JOB, s(600)), limit), None);
        assert_eq!(monitor_stuck((sys::VIR_DOMAIN_CONTROL_OK, s(600)), limit), None);
    }
}
