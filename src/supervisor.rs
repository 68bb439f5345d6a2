//! The supervisor: one task per (VM, source), each behind its own breaker, started and
//! stopped as discovery reports domains appearing and going away. Only these tasks write
//! the snapshot store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Admission, Breaker, BreakerState, Transition};
use crate::clock::now_unix;
use crate::log_summary::{LogSummary, Verdict};
use crate::model::{ErrorKind, PollError};
use crate::source::SourceKind;
use crate::source::api::{Source, Visit};
use crate::source::libvirt::discovery::VmEvent;
use crate::source::{PollSettings, Poller, SourceSample, Sources, StaticVm, VmStart};
use crate::store::{ErrorRecord, SourceSnapshot, Store, VmKey, VmSnapshot};
use crate::vm::{DomainNaming, VmId};

/// A poll in flight: owned by the task, kept across missed deadlines (never a second one).
/// Its sample comes out already in its `Arc`: a `SourceSample` held by value in the task's
/// loop would be kept in the task's state between polls.
type PollFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Arc<SourceSample>, PollError>> + Send>>;

/// Extra time the supervisor gives a poll past the poller's own [`Poller::deadline`], so a
/// poller that times out its own calls reports that (with its message) first.
fn grace(deadline: Duration) -> Duration {
    (deadline / 4).max(Duration::from_millis(250))
}

/// Runs one source of one VM until `cancel` fires.
///
/// The task owns time: each poll gets the poller's deadline (plus a grace); past it the
/// poll counts as a timeout and a stuck call, and the *same* poll stays in flight: the next
/// admitted attempt waits for it again instead of starting another, so a poller whose call
/// never returns holds one future and one thread, is flagged within `threshold × deadline`,
/// and cannot look healthy while stuck.
///
/// Not an `async fn`: an `async fn` keeps its arguments in its state for as long as it runs,
/// so the poller would occupy the task a second time beside the `Arc` it is moved into (a
/// few KiB per VM and source, measured with heaptrack in docs/benchmarks.md). The poller is
/// moved into its `Arc` here, before the task's state is made.
pub fn run_source<P: Poller>(
    id: VmId,
    key: VmKey,
    poller: P,
    store: Arc<Store>,
    settings: PollSettings,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let fixed = Fixed {
        kind: poller.kind(),
        deadline: poller.deadline(),
        recheck: poller.recheck_period().unwrap_or(settings.interval),
        wake: poller.wake(),
        stuck: poller.stuck_calls(),
    };
    poll_loop(id, key, Arc::new(tokio::sync::Mutex::new(poller)), fixed, store, settings, cancel)
}

/// What [`run_source`] reads from its poller once, before the poller moves into its `Arc`.
struct Fixed {
    kind: SourceKind,
    deadline: Duration,
    recheck: Duration,
    wake: Option<Arc<tokio::sync::Notify>>,
    stuck: Arc<std::sync::atomic::AtomicU64>,
}

async fn poll_loop<P: Poller>(
    id: VmId,
    key: VmKey,
    poller: Arc<tokio::sync::Mutex<P>>,
    fixed: Fixed,
    store: Arc<Store>,
    settings: PollSettings,
    cancel: CancellationToken,
) {
    let Fixed { kind, deadline, recheck, wake, stuck } = fixed;
    let limit = deadline + grace(deadline);
    let mut breaker = Breaker::new(settings.breaker.clone());
    let mut snap = SourceSnapshot::fresh(breaker.view(Instant::now()), stuck.clone());
    store.publish(&key, kind, Arc::new(snap.clone()));
    // The poll in flight, when it started, and whether it was counted stuck.
    let mut in_flight: Option<(PollFuture, Instant, bool)> = None;
    // The source answered "unavailable" (no agent) last time: a state, logged when it changes.
    let mut unavailable = false;
    // The last poll was deferred (the node or the daemon busy, not the VM).
    let mut deferred = false;
    let mut repeats: LogSummary<TransitionKey> = LogSummary::default();
    loop {
        if let Admission::WaitUntil(until) = breaker.admit(Instant::now()) {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => continue,
                _ = cancel.cancelled() => return,
            }
        }
        let attempt = Instant::now();
        snap.last_attempt_at = Some(now_unix());
        snap.polls_total += 1;
        let (fut, started, counted) = in_flight.get_or_insert_with(|| {
            let p = poller.clone();
            let fut: PollFuture = Box::pin(async move { p.lock_owned().await.poll().await.map(Arc::new) });
            (fut, Instant::now(), false)
        });
        let waited = tokio::select! {
            r = tokio::time::timeout_at(attempt + limit, fut.as_mut()) => r,
            _ = cancel.cancelled() => return,
        };
        let result = match waited {
            Ok(r) => {
                if *counted {
                    stuck.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                }
                snap.last_poll_duration_seconds = Some(started.elapsed().as_secs_f64());
                in_flight = None;
                r
            }
            Err(_) => {
                if !*counted {
                    *counted = true;
                    stuck.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
                let running = started.elapsed();
                snap.last_poll_duration_seconds = Some(running.as_secs_f64());
                Err(PollError {
                    kind: ErrorKind::Timeout,
                    message: format!(
                        "{} poll still running after {:.1}s (deadline {:.1}s)",
                        kind.as_str(),
                        running.as_secs_f64(),
                        limit.as_secs_f64()
                    ),
                    hard: running >= settings.hard_timeout.max(limit),
                    monitor: None,
                })
            }
        };
        let error_kind = result.as_ref().err().map(|e| e.kind);
        let was_deferred = std::mem::replace(&mut deferred, result.as_ref().is_err_and(|e| e.kind.deferred()));
        let transition = match result {
            Err(e) if e.kind.deferred() => {
                // Not the VM's failure: counted, recorded once per episode, and nothing else.
                tracing::debug!(namespace = %id.namespace, name = %id.name, source = kind.as_str(), error = %e, "poll deferred");
                *snap.errors_total.entry(e.kind).or_default() += 1;
                // The interval as served stretches for as long as polls are deferred.
                let since = snap.last_success_at.map(|t| now_unix() - t);
                snap.effective_interval_seconds = match (since, snap.effective_interval_seconds) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                if !was_deferred {
                    record_error(&mut snap, &settings, e.kind, e.message);
                }
                None
            }
            Ok(sample) => {
                snap.monitor = None;
                snap.sample = Some(sample);
                let now = now_unix();
                snap.effective_interval_seconds = snap.last_success_at.map(|t| now - t);
                snap.last_success_at = Some(now);
                if std::mem::take(&mut unavailable) {
                    tracing::info!(namespace = %id.namespace, name = %id.name, source = kind.as_str(), "source available again");
                }
                breaker.on_success()
            }
            Err(e) if !e.kind.trips_breaker() => {
                // A state, not a fault: counted every time, recorded and logged when it starts
                // (or its message changes), re-checked on the source's slow period.
                tracing::debug!(namespace = %id.namespace, name = %id.name, source = kind.as_str(), error = %e, "source unavailable");
                *snap.errors_total.entry(e.kind).or_default() += 1;
                let same = snap.last_errors.back().is_some_and(|r| r.kind == e.kind && r.message == e.message);
                if !unavailable || !same {
                    tracing::info!(
                        namespace = %id.namespace, name = %id.name, source = kind.as_str(),
                        kind = e.kind.as_str(), error = %e.message, recheck = ?recheck,
                        "source unavailable; re-checked periodically, not counted toward its breaker"
                    );
                    record_error(&mut snap, &settings, e.kind, e.message);
                }
                unavailable = true;
                breaker.on_unavailable()
            }
            Err(e) => {
                tracing::debug!(namespace = %id.namespace, name = %id.name, source = kind.as_str(), error = %e, "poll failed");
                unavailable = false;
                snap.monitor = e.monitor;
                *snap.errors_total.entry(e.kind).or_default() += 1;
                record_error(&mut snap, &settings, e.kind, e.message);
                breaker.on_failure(Instant::now(), e.hard)
            }
        };
        if let Some(t) = &transition {
            log_transition(&id, kind, t, error_kind, &mut repeats);
        }
        snap.breaker = breaker.view(Instant::now());
        snap.stretched = deferred
            || (recheck == settings.interval
                && snap.effective_interval_seconds.is_some_and(|e| e > 1.5 * settings.interval.as_secs_f64()));
        store.publish(&key, kind, Arc::new(snap.clone()));
        let failing_but_closed = breaker.state() == BreakerState::Closed && snap.breaker.consecutive_failures > 0;
        let next = if unavailable {
            attempt + recheck
        } else if error_kind == Some(ErrorKind::PoolSaturated) {
            // Waiting for one of vmbridge's own call slots is a queue: back in it at once, so
            // every VM is served in turn and the interval stretches evenly over all of them (never
            // sooner than the retry delay after the attempt began, so nothing spins).
            Instant::now().max(attempt + settings.retry_delay)
        } else if deferred {
            // The daemon answers nobody: asking again before an interval helps no one.
            Instant::now() + settings.interval
        } else if failing_but_closed {
            Instant::now() + settings.retry_delay
        } else {
            attempt + settings.interval
        };
        let woken = async {
            match &wake {
                Some(w) if unavailable => w.notified().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = woken => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Keeps the `errors_kept` most recent failures.
fn record_error(snap: &mut SourceSnapshot, settings: &PollSettings, kind: ErrorKind, message: String) {
    if settings.errors_kept > 0 {
        if snap.last_errors.len() >= settings.errors_kept {
            snap.last_errors.pop_front();
        }
        snap.last_errors.push_back(ErrorRecord { at: now_unix(), kind, message });
    }
}

/// What makes two breaker transitions "the same" for the log: from, to, reason, error kind.
type TransitionKey = (&'static str, &'static str, &'static str, Option<&'static str>);

/// Logs a breaker transition at info, the first of each kind only; its repeats (a hung VM
/// probed at every back-off) are summarised once per [`crate::log_summary::WINDOW`], and a
/// recovery says how many went unlogged.
fn log_transition(
    id: &VmId,
    source: SourceKind,
    t: &Transition,
    error: Option<ErrorKind>,
    repeats: &mut LogSummary<TransitionKey>,
) {
    let (from, to, reason) = (t.from.as_str(), t.to.as_str(), t.reason.as_str());
    let error = error.map(ErrorKind::as_str);
    if t.to == BreakerState::Closed {
        let unlogged = repeats.reset();
        tracing::info!(
            namespace = %id.namespace, name = %id.name, source = source.as_str(), from, to, reason, unlogged_repeats = unlogged,
            "breaker changed state"
        );
        return;
    }
    match repeats.note((from, to, reason, error), Instant::now()) {
        Verdict::Log => tracing::info!(
            namespace = %id.namespace, name = %id.name, source = source.as_str(), from, to, reason, error,
            "breaker changed state; identical repeats are summarised"
        ),
        Verdict::Quiet => tracing::debug!(
            namespace = %id.namespace, name = %id.name, source = source.as_str(), from, to, reason, error,
            "breaker changed state"
        ),
        Verdict::Summary { repeats, over } => tracing::info!(
            namespace = %id.namespace, name = %id.name, source = source.as_str(), from, to, reason, error, repeats,
            "{repeats} identical breaker transitions in the last {}", humantime::format_duration(Duration::from_secs(over.as_secs()))
        ),
    }
}

/// How domains become VMs.
#[derive(Debug, Clone)]
pub struct Naming {
    /// Name-splitting rule.
    pub naming: DomainNaming,
    /// Namespace for names that carry none.
    pub default_namespace: String,
}

/// Starts every source that applies to one VM, each as its own task under `token`.
struct Start<'a> {
    vm: VmStart<'a>,
    key: &'a VmKey,
    ctx: &'a Ctx,
    token: &'a CancellationToken,
}

impl Visit for Start<'_> {
    fn visit<S: Source>(&mut self) {
        if let Some(poller) = S::poller(&self.vm, S::settings(&self.ctx.sources)) {
            debug_assert_eq!(poller.kind(), S::KIND);
            let (id, ctx) = (self.vm.id.clone(), self.ctx);
            tokio::spawn(run_source(
                id,
                self.key.clone(),
                poller,
                ctx.store.clone(),
                ctx.settings.clone(),
                self.token.clone(),
            ));
        }
    }
}

impl Ctx {
    /// Starts `vm`'s sources (the one `match` over the sources is `source::visit`).
    fn start(&self, vm: VmStart<'_>, key: &VmKey, token: &CancellationToken) {
        let mut start = Start { vm, key, ctx: self, token };
        for kind in SourceKind::ALL {
            crate::source::visit(kind, &mut start);
        }
    }
}

struct Ctx {
    store: Arc<Store>,
    settings: PollSettings,
    sources: Sources,
}

/// What the supervisor runs for each VM.
#[derive(Debug, Clone)]
pub struct Plan {
    /// How domains become VMs.
    pub naming: Naming,
    /// How each (VM, source) task polls.
    pub poll: PollSettings,
    /// Every source's settings.
    pub sources: Sources,
    /// VMs without libvirt, reached through their sockets.
    pub static_vms: Vec<StaticVm>,
}

/// Starts and stops per-VM tasks as discovery reports domains.
pub async fn run(
    mut events: mpsc::Receiver<VmEvent>,
    store: Arc<Store>,
    plan: Plan,
    limiter: Arc<Semaphore>,
    cancel: CancellationToken,
) {
    let Plan { naming, poll: settings, sources, static_vms } = plan;
    let ctx = Ctx { store: store.clone(), settings: settings.clone(), sources };
    for vm in &static_vms {
        let uuid = format!("static:{}/{}", vm.id.namespace, vm.id.name);
        tracing::info!(namespace = %vm.id.namespace, name = %vm.id.name, "static VM added");
        store.insert_vm(VmSnapshot {
            id: vm.id.clone(),
            domain: vm.id.name.clone(),
            uuid: uuid.clone(),
            endpoint: "static".into(),
            discovered_at: now_unix(),
            sources: BTreeMap::new(),
            revision: 0,
        });
        let key = VmKey::new("static", uuid.clone());
        let start = VmStart {
            id: &vm.id,
            domain: &vm.id.name,
            uuid: &uuid,
            endpoint: None,
            sockets: Some(vm),
            poll: &settings,
            limiter: &limiter,
        };
        ctx.start(start, &key, &cancel);
    }
    // The VM's key (endpoint and UUID, as in the store) → its name and its tasks' cancel token.
    let mut running: BTreeMap<VmKey, (VmId, CancellationToken)> = BTreeMap::new();
    loop {
        let event = tokio::select! {
            e = events.recv() => match e { Some(e) => e, None => break },
            _ = cancel.cancelled() => break,
        };
        match event {
            VmEvent::Added(found) => {
                let id = VmId::from_domain(&found.name, naming.naming, &naming.default_namespace);
                let key = VmKey::new(found.endpoint.uri.clone(), found.uuid.clone());
                // Rediscovered (e.g. after a reconnect): fresh tasks, same place in the store.
                if let Some((_, token)) = running.remove(&key) {
                    token.cancel();
                }
                tracing::info!(namespace = %id.namespace, name = %id.name, domain = %found.name, uri = %found.endpoint.uri, "VM added");
                store.insert_vm(VmSnapshot {
                    id: id.clone(),
                    domain: found.name.clone(),
                    uuid: found.uuid.clone(),
                    endpoint: found.endpoint.uri.clone(),
                    discovered_at: now_unix(),
                    sources: BTreeMap::new(),
                    revision: 0,
                });
                let token = cancel.child_token();
                let start = VmStart {
                    id: &id,
                    domain: &found.name,
                    uuid: &found.uuid,
                    endpoint: Some(&found.endpoint),
                    sockets: None,
                    poll: &settings,
                    limiter: &limiter,
                };
                ctx.start(start, &key, &token);
                running.insert(key, (id, token));
            }
            VmEvent::Removed { uri, uuid } => {
                let key = VmKey::new(uri, uuid);
                if let Some((id, token)) = running.remove(&key) {
                    tracing::info!(namespace = %id.namespace, name = %id.name, uri = %key.endpoint, "VM removed");
                    token.cancel();
                    store.remove_vm(&key);
                }
            }
        }
    }
    for (_, (_, token)) in running {
        token.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerConfig;
    use crate::source::libvirt::LibvirtSample;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// How a test poller's polls behave.
    enum Behaviour {
        /// Never returns (a call that never comes back).
        Hung,
        /// Answers at once.
        Fine,
        /// The first poll takes 2 s, the others answer at once.
        SlowFirst,
        /// No agent until the shared flag is set, then fine; re-checked every 30 s, woken by
        /// the notifier.
        Absent(Arc<std::sync::atomic::AtomicBool>, Arc<tokio::sync::Notify>),
        /// The first poll answers; then, while the flag is set, every poll is deferred (the
        /// daemon saturated), else fine.
        Saturated(Arc<std::sync::atomic::AtomicBool>),
    }

    /// A test poller with a 1 s deadline, counting the polls it started.
    struct TestPoller(Behaviour, Arc<AtomicU64>);

    impl Poller for TestPoller {
        fn kind(&self) -> SourceKind {
            SourceKind::Process
        }
        fn deadline(&self) -> Duration {
            Duration::from_secs(1)
        }
        fn stuck_calls(&self) -> Arc<AtomicU64> {
            Arc::new(AtomicU64::new(0))
        }
        fn recheck_period(&self) -> Option<Duration> {
            matches!(self.0, Behaviour::Absent(..)).then_some(Duration::from_secs(30))
        }
        fn wake(&self) -> Option<Arc<tokio::sync::Notify>> {
            match &self.0 {
                Behaviour::Absent(_, n) => Some(n.clone()),
                _ => None,
            }
        }
        async fn poll(&mut self) -> Result<SourceSample, PollError> {
            let n = self.1.fetch_add(1, Ordering::SeqCst);
            match &self.0 {
                Behaviour::Absent(present, _) if !present.load(Ordering::SeqCst) => {
                    return Err(PollError::new(ErrorKind::AgentUnavailable, "QEMU guest agent is not connected"));
                }
                Behaviour::Absent(..) => {}
                Behaviour::Saturated(on) if n > 0 && on.load(Ordering::SeqCst) => {
                    return Err(PollError::new(ErrorKind::EndpointSaturated, "the daemon answers no call"));
                }
                Behaviour::Saturated(_) => {}
                Behaviour::Hung => std::future::pending().await,
                Behaviour::SlowFirst if n == 0 => tokio::time::sleep(Duration::from_secs(2)).await,
                Behaviour::SlowFirst | Behaviour::Fine => {}
            }
            Ok(SourceSample::Libvirt(LibvirtSample::new(Vec::new(), Vec::new())))
        }
    }

    fn settings() -> PollSettings {
        PollSettings {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            hard_timeout: Duration::from_secs(20),
            retry_delay: Duration::from_millis(100),
            errors_kept: 8,
            carry_window: Duration::from_secs(60),
            breaker: BreakerConfig { failure_threshold: 3, ..BreakerConfig::default() },
        }
    }

    fn vm(store: &Store, name: &str) -> VmId {
        let id = VmId { namespace: "t".into(), name: name.into() };
        store.insert_vm(VmSnapshot {
            id: id.clone(),
            domain: name.into(),
            uuid: name.into(),
            endpoint: "test".into(),
            discovered_at: 0.0,
            sources: BTreeMap::new(),
            revision: 0,
        });
        id
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_that_never_returns_is_flagged_within_threshold_times_deadline_and_never_doubled() {
        let store = Arc::new(Store::new([]));
        let (hung, fine) = (vm(&store, "hung"), vm(&store, "fine"));
        let starts = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let s = settings();
        tokio::spawn(run_source(
            hung.clone(),
            VmKey::new("test", "hung"),
            TestPoller(Behaviour::Hung, starts.clone()),
            store.clone(),
            s.clone(),
            cancel.clone(),
        ));
        tokio::spawn(run_source(
            fine.clone(),
            VmKey::new("test", "fine"),
            TestPoller(Behaviour::Fine, Arc::new(AtomicU64::new(0))),
            store.clone(),
            s.clone(),
            cancel.clone(),
        ));
        let snap =
            |id: &VmId| store.vm(id).and_then(|v| v.sources.get(&SourceKind::Process).cloned()).expect("published");
        // threshold × (deadline + grace) + the retry delays between the attempts.
        let limit = Duration::from_secs(1) + grace(Duration::from_secs(1));
        let flagged_by = limit * 3 + s.retry_delay * 2 + Duration::from_millis(10);
        tokio::time::sleep(flagged_by).await;
        let h = snap(&hung);
        assert_eq!(h.breaker.state, BreakerState::Open, "{:?}", h.breaker);
        assert!(!h.is_up());
        assert_eq!(h.errors_total.get(&ErrorKind::Timeout), Some(&3));
        assert!(h.last_errors.back().is_some_and(|e| e.message.contains("still running")), "{:?}", h.last_errors);
        assert_eq!(h.stuck_calls.load(Ordering::SeqCst), 1, "the stuck poll is counted once");
        assert_eq!(starts.load(Ordering::SeqCst), 1, "three attempts, one poll: never a second in flight");
        // The other VM stays fresh all along.
        let f = snap(&fine);
        assert!(f.is_up() && f.polls_total >= 1, "{f:?}");
        tokio::time::sleep(Duration::from_secs(60)).await;
        let f = snap(&fine);
        assert!(f.is_up() && f.polls_total >= 12, "{f:?}");
        assert_eq!(starts.load(Ordering::SeqCst), 1, "half-open probes wait for the same poll");
        assert!(!snap(&hung).is_up());
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn an_absent_agent_is_down_rechecked_on_its_period_never_trips_and_is_recorded_once() {
        let store = Arc::new(Store::new([]));
        let id = vm(&store, "agentless");
        let (present, notify) =
            (Arc::new(std::sync::atomic::AtomicBool::new(false)), Arc::new(tokio::sync::Notify::new()));
        let polls = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        tokio::spawn(run_source(
            id.clone(),
            VmKey::new("test", "agentless"),
            TestPoller(Behaviour::Absent(present.clone(), notify.clone()), polls.clone()),
            store.clone(),
            settings(),
            cancel.clone(),
        ));
        let snap = || store.vm(&id).and_then(|v| v.sources.get(&SourceKind::Process).cloned()).expect("published");
        // 10 minutes: one poll at start, then one per 30 s re-check, none at the retry delay.
        tokio::time::sleep(Duration::from_secs(600) + Duration::from_millis(10)).await;
        let s = snap();
        assert!(!s.is_up(), "{s:?}");
        assert_eq!(polls.load(Ordering::SeqCst), 21, "re-checked every 30 s");
        assert_eq!(s.errors_total.get(&ErrorKind::AgentUnavailable), Some(&21));
        assert_eq!(s.last_errors.len(), 1, "recorded once, not per re-check: {:?}", s.last_errors);
        assert_eq!(s.breaker.state, BreakerState::Closed);
        assert!(s.breaker.history.is_empty(), "no transition at all: {:?}", s.breaker.history);
        // The agent comes up and libvirt says so: polled at once, not at the next re-check.
        present.store(true, Ordering::SeqCst);
        notify.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let s = snap();
        assert!(s.is_up(), "{s:?}");
        assert_eq!(polls.load(Ordering::SeqCst), 22);
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn deferred_polls_stretch_polling_and_never_touch_the_breaker_or_the_failure_count() {
        let store = Arc::new(Store::new([]));
        let id = vm(&store, "busy");
        let on = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let polls = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        tokio::spawn(run_source(
            id.clone(),
            VmKey::new("test", "busy"),
            TestPoller(Behaviour::Saturated(on.clone()), polls.clone()),
            store.clone(),
            settings(),
            cancel.clone(),
        ));
        let snap = || store.vm(&id).and_then(|v| v.sources.get(&SourceKind::Process).cloned()).expect("published");
        // 60 s saturated after the first good poll: one poll per 5 s interval, never at the
        // 100 ms retry delay; no failure counted, no transition, the first data kept.
        tokio::time::sleep(Duration::from_secs(60) + Duration::from_millis(10)).await;
        let s = snap();
        assert_eq!(polls.load(Ordering::SeqCst), 13, "polled once per interval: {s:?}");
        assert_eq!(s.errors_total.get(&ErrorKind::EndpointSaturated), Some(&12));
        assert_eq!(s.breaker.consecutive_failures, 0, "{s:?}");
        assert_eq!(s.breaker.state, BreakerState::Closed);
        assert!(s.breaker.history.is_empty(), "no transition: {:?}", s.breaker.history);
        assert!(s.is_up() && s.sample.is_some(), "the last data stands: {s:?}");
        assert_eq!(s.last_errors.len(), 1, "recorded once per episode: {:?}", s.last_errors);
        assert!(s.stretched, "{s:?}");
        // The daemon answers again: the next polls succeed (the effective interval is measured
        // on the wall clock, which paused time does not move), polling is no longer stretched.
        on.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(15)).await;
        let s = snap();
        assert_eq!(s.errors_total.get(&ErrorKind::EndpointSaturated), Some(&12));
        assert!(s.is_up() && !s.stretched, "{s:?}");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_poll_that_returns_clears_its_stuck_count_and_recovers() {
        let store = Arc::new(Store::new([]));
        let id = vm(&store, "slow");
        let cancel = CancellationToken::new();
        tokio::spawn(run_source(
            id.clone(),
            VmKey::new("test", "slow"),
            TestPoller(Behaviour::SlowFirst, Arc::new(AtomicU64::new(0))),
            store.clone(),
            settings(),
            cancel.clone(),
        ));
        let snap = || store.vm(&id).and_then(|v| v.sources.get(&SourceKind::Process).cloned()).expect("published");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(snap().stuck_calls.load(Ordering::SeqCst), 1);
        assert!(!snap().is_up());
        // The retry waits for the same poll, which returns at 2 s: up again, nothing stuck.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = snap();
        assert!(s.is_up(), "{s:?}");
        assert_eq!(s.stuck_calls.load(Ordering::SeqCst), 0);
        assert_eq!(s.breaker.state, BreakerState::Closed);
        cancel.cancel();
    }
}
