//! One libvirt daemon and vmbridge's connections to it: a long-lived read-only one for stats
//! and discovery, and — only when the guest-agent source goes through libvirt — a read-write
//! one that `virDomainQemuAgentCommand` requires and that is used for nothing else.
//!
//! A connection is replaced (with a new generation number) when a call reports it broken,
//! e.g. after libvirtd restarts; pollers notice the new generation and look their domain up again.
//!
//! The pollers' calls do not share discovery's connection: they run on *lanes*, a small pool of
//! further read-only connections ([`Endpoint::lease`]). A lane with a call running longer than
//! [`LaneLimits::slow_after`] takes no new calls, and a fresh lane (at most
//! [`LaneLimits::max_connections`]) carries them instead. Two facts of libvirt make this
//! necessary:
//! - libvirtd serves at most `max_client_requests` (default 5) calls at a time per client
//!   connection and stops reading a connection that has that many running: five calls stuck on
//!   hung QEMUs silence it for every other VM.
//! - Below that limit, libvirt's client library still makes every call on a connection wait on
//!   the thread whose call is outstanding ("passing the buck", `virNetClientIO`): that thread
//!   owns the socket and sends the others' calls. The wake-up it gets for a newly queued call
//!   (`g_main_loop_quit`) is lost when it comes between the thread's unlock and its
//!   `g_main_loop_run`; the queued call then waits until the socket next turns readable, which
//!   on a connection whose own call is stuck is libvirtd's next keep-alive ping, up to 5 s
//!   later. Measured on the lab with 3 SIGSTOPped VMs sharing one connection: healthy calls took
//!   5.0 s or 10.0 s in about one case of four (p99 7.2 s), against a p99 of 14 ms on a second
//!   connection at the same time.

pub mod batch;
mod lanes;

use lanes::Lanes;
pub use lanes::{LaneError, LaneView, Lease};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use virt::connect::Connect;

use crate::source::events::EventCounts;

/// A connection and its generation.
#[derive(Clone)]
pub struct Conn {
    /// Increases each time the endpoint reconnects.
    pub generation: u64,
    /// The libvirt connection (thread-safe; `virt` marks it Send + Sync).
    pub connect: Arc<Connect>,
}

/// One libvirt daemon, by URI.
pub struct Endpoint {
    /// The libvirt URI, e.g. `qemu:///system`.
    pub uri: String,
    /// The URI for the read-write agent connection (differs for launchers' `-ro` sockets).
    pub agent_uri: String,
    current: Mutex<Option<Conn>>,
    /// Domain-event callback ids registered on the read-only connection of that generation.
    /// A registration holds a reference on the connection, so a replaced connection is only
    /// freed (its socket closed) once they are deregistered.
    event_ids: Mutex<Option<(u64, Vec<i32>)>>,
    agent: Mutex<Option<Conn>>,
    generations: AtomicU64,
    /// Event counts per domain UUID, from libvirt's domain events (vmbridge's own counts).
    events: Mutex<std::collections::HashMap<String, EventCounts>>,
    /// Per domain UUID, notified when libvirt reports its guest agent connected, so a guest
    /// source waiting to re-check an absent agent polls at once.
    agent_wakers: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
    /// The pollers' connections.
    lanes: Mutex<Lanes>,
    /// Their bounds.
    limits: LaneLimits,
    /// Whether, and since when, the daemon answers no call (see [`Endpoint::answering`]).
    saturation: Mutex<Saturation>,
    /// One saturation probe at a time.
    probing: tokio::sync::Mutex<()>,
    /// Bulk-stats calls for many domains (see [`batch`]).
    pub(super) batches: batch::Batches,
    /// Calls the pollers made on the lanes (libvirt round trips).
    calls: AtomicU64,
    /// Domains' statistics answered by a batch.
    pub(super) batched: AtomicU64,
    /// Running domains at discovery's last listing (batches only when more than one).
    pub(super) domains: std::sync::atomic::AtomicUsize,
}

/// What the saturation probes found.
#[derive(Default)]
struct Saturation {
    /// When a pollers' call (or a probe) last completed: the daemon's worker threads answer.
    answered: Option<Instant>,
    /// When the last probe that got no answer started.
    unanswered_probe: Option<Instant>,
    /// A probe is running since then.
    probe_running: Option<Instant>,
    /// Since when the daemon answers nobody (wall clock, for the debug view).
    since: Option<f64>,
}

/// Bounds of an endpoint's lanes (`libvirt.max_connections`, `libvirt.calls_per_connection`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaneLimits {
    /// Most lanes (read-only connections for the pollers) open at once.
    pub max_connections: usize,
    /// The daemon's `max_client_requests` (libvirtd's default 5). A lane carries one call fewer:
    /// libvirtd stops reading a connection with that many calls running, which leaves its
    /// keep-alive unanswered, and the connection is then closed under every call on it.
    pub calls_per_connection: usize,
    /// A lane with a call running longer than this takes no new calls while a lane without one
    /// can be had (see the module documentation).
    pub slow_after: Duration,
    /// A lane idle this long is closed, unless it is the last one.
    pub idle_close: Duration,
    /// Pollers' requests for bulk stats arriving within this window go out in one call
    /// (`libvirt.batch_window`; zero: each domain is polled alone).
    pub batch_window: Duration,
}

impl Default for LaneLimits {
    fn default() -> Self {
        LaneLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            calls_per_connection: DEFAULT_CALLS_PER_CONNECTION,
            slow_after: Duration::from_millis(500),
            idle_close: Duration::from_secs(60),
            batch_window: batch::DEFAULT_WINDOW,
        }
    }
}

/// Default of `libvirt.max_connections`: above libvirtd's 20 workers (`max_workers`), past
/// which more hung VMs stop libvirtd itself whatever its clients do.
pub const DEFAULT_MAX_CONNECTIONS: usize = 24;
/// Default of `libvirt.calls_per_connection`: libvirtd's default `max_client_requests`.
pub const DEFAULT_CALLS_PER_CONNECTION: usize = 5;

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("uri", &self.uri).finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint with no connection yet.
    pub fn new(uri: impl Into<String>) -> Arc<Self> {
        let uri = uri.into();
        Self::with_agent_uri(uri.clone(), uri)
    }

    /// An endpoint whose agent connection uses another URI.
    pub fn with_agent_uri(uri: String, agent_uri: String) -> Arc<Self> {
        Arc::new(Endpoint {
            uri,
            agent_uri,
            current: Mutex::new(None),
            event_ids: Mutex::new(None),
            agent: Mutex::new(None),
            generations: AtomicU64::new(0),
            events: Mutex::new(std::collections::HashMap::new()),
            agent_wakers: Mutex::new(std::collections::HashMap::new()),
            lanes: Mutex::new(Lanes::default()),
            limits: LaneLimits::default(),
            saturation: Mutex::new(Saturation::default()),
            probing: tokio::sync::Mutex::new(()),
            batches: batch::Batches::default(),
            calls: AtomicU64::new(0),
            batched: AtomicU64::new(0),
            domains: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// A pollers' call (or a probe) completed at `at`: the daemon answers.
    fn answered(&self, at: Instant) {
        let mut sat = self.saturation.lock().unwrap_or_else(PoisonError::into_inner);
        sat.answered = Some(sat.answered.map_or(at, |a| a.max(at)));
        if let Some(since) = sat.since.take() {
            tracing::info!(
                uri = %self.uri,
                saturated_for = %humantime::format_duration(Duration::from_secs((crate::clock::now_unix() - since).max(0.0) as u64)),
                "libvirt daemon answers calls again"
            );
        }
    }

    /// Since when the daemon answers no call (seconds since the Unix epoch), if it does not.
    pub fn saturated_since(&self) -> Option<f64> {
        self.saturation.lock().unwrap_or_else(PoisonError::into_inner).since
    }

    /// Whether the daemon answered any call since `since` (plus [`LaneLimits::slow_after`]), asked
    /// when a poll's call started then and is still waiting past its deadline: a daemon that
    /// served another call well after this one started could have served this one, so this
    /// VM is the one not answering. A call can wait for a worker while others are answered
    /// only if they came before it and took the last workers, which is what the margin
    /// allows. When no pollers' call completed since, a probe
    /// that needs a worker thread of the daemon but no QEMU (`virConnectGetCapabilities`; the
    /// calls libvirtd serves on its priority workers, such as listing domains, would answer
    /// anyway) gets `wait` to answer, one probe at a time for the endpoint; a probe that
    /// started after `since` and got no answer answers for every caller. No answer: the daemon
    /// is saturated (all its `max_workers` held), which is logged once, at WARN, with the cause.
    pub async fn answering(self: &Arc<Self>, since: Instant, wait: Duration) -> bool {
        let _one = self.probing.lock().await;
        {
            let sat = self.saturation.lock().unwrap_or_else(PoisonError::into_inner);
            if sat.answered.is_some_and(|a| a >= since + self.limits.slow_after) {
                return true;
            }
            if sat.unanswered_probe.is_some_and(|p| p >= since) || sat.probe_running.is_some() {
                return false;
            }
        }
        let started = Instant::now();
        self.saturation.lock().unwrap_or_else(PoisonError::into_inner).probe_running = Some(started);
        let ep = self.clone();
        let probe = tokio::task::spawn_blocking(move || {
            let out = match ep.lease() {
                Ok(mut lease) => {
                    let caps = lease.conn.connect.capabilities();
                    if caps.is_ok() {
                        lease.answered();
                    }
                    caps.map(|_| true).map_err(|e| e.message().to_owned())
                }
                // Every lane full of calls that do not return: no answer either.
                Err(LaneError::Busy { .. }) => Ok(false),
                Err(LaneError::Connect(e)) => Err(e.message().to_owned()),
            };
            ep.saturation.lock().unwrap_or_else(PoisonError::into_inner).probe_running = None;
            out
        });
        match tokio::time::timeout(wait, probe).await {
            // It answered, or failed for another reason (a broken connection is not saturation).
            Ok(Ok(Ok(true) | Err(_))) => true,
            Ok(Err(_)) => true,
            Ok(Ok(Ok(false))) | Err(_) => {
                let mut sat = self.saturation.lock().unwrap_or_else(PoisonError::into_inner);
                sat.unanswered_probe = Some(started);
                if sat.answered.is_some_and(|a| a >= since + self.limits.slow_after) {
                    return true;
                }
                if sat.since.is_none() {
                    sat.since = Some(crate::clock::now_unix());
                    drop(sat);
                    let lanes = self.lane_view();
                    tracing::warn!(
                        uri = %self.uri,
                        slow_calls = lanes.slow_calls,
                        connections = lanes.connections,
                        "libvirt daemon answers no call: all its worker threads are held, most likely by calls on \
                         hung VMs (libvirtd serves at most max_workers calls at once, default 20, and \
                         max_client_requests per connection, default 5; see libvirtd.conf or virtqemud.conf). \
                         Its VMs keep their last data until the staleness window and their polls are deferred, \
                         not failed; it recovers by itself once the calls return"
                    );
                }
                false
            }
        }
    }

    /// An endpoint whose pollers' lanes have these bounds.
    pub fn with_limits(uri: String, agent_uri: String, limits: LaneLimits) -> Arc<Self> {
        let mut ep = Self::with_agent_uri(uri, agent_uri);
        if let Some(e) = Arc::get_mut(&mut ep) {
            e.limits = limits;
        }
        ep
    }

    /// The bounds of the lanes and batches.
    pub fn limits(&self) -> &LaneLimits {
        &self.limits
    }

    /// Notes how many running domains discovery listed on this daemon.
    pub fn set_domains(&self, n: usize) {
        self.domains.store(n, Ordering::Relaxed);
    }

    /// Counts `n` calls made on the lanes.
    pub fn count_calls(&self, n: u64) {
        self.calls.fetch_add(n, Ordering::Relaxed);
    }

    /// The current read-only connection, if any.
    pub fn current(&self) -> Option<Conn> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Installs a freshly opened read-only connection and returns it.
    pub fn install(&self, connect: Connect) -> Conn {
        let conn = Conn { generation: self.generations.fetch_add(1, Ordering::AcqRel) + 1, connect: Arc::new(connect) };
        let old = self.current.lock().unwrap_or_else(PoisonError::into_inner).replace(conn.clone());
        self.close_read_only(old);
        conn
    }

    /// Marks read-only connection `generation` broken: discovery's (the discovery loop
    /// reconnects) or a lane (dropped; its calls end on their own, new calls go elsewhere).
    pub fn report_broken(&self, generation: u64) {
        let lane = {
            let mut pool = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            pool.lanes.iter().position(|l| l.conn.generation == generation).map(|i| pool.lanes.remove(i).conn)
        };
        if lane.is_some() {
            close_off_thread(lane, Vec::new());
            return;
        }
        let old = {
            let mut cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            if cur.as_ref().is_some_and(|c| c.generation == generation) { cur.take() } else { None }
        };
        self.close_read_only(old);
    }

    /// Remembers the domain-event callbacks registered on read-only connection `generation`.
    pub fn set_event_ids(&self, generation: u64, ids: Vec<i32>) {
        *self.event_ids.lock().unwrap_or_else(PoisonError::into_inner) = Some((generation, ids));
    }

    /// Closes a replaced read-only connection off the async workers, deregistering its event
    /// callbacks first (each holds a reference that would otherwise keep its socket open).
    fn close_read_only(&self, old: Option<Conn>) {
        let Some(old) = old else { return };
        let ids = {
            let mut ids = self.event_ids.lock().unwrap_or_else(PoisonError::into_inner);
            match ids.take() {
                Some((g, v)) if g == old.generation => v,
                other => {
                    *ids = other;
                    Vec::new()
                }
            }
        };
        close_off_thread(Some(old), ids);
    }

    /// The agent (read-write) connection, if one is open.
    pub fn agent_connection(&self) -> Option<Conn> {
        self.agent.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Installs a freshly opened agent connection and returns it.
    pub fn install_agent(&self, connect: Connect) -> Conn {
        self.install_in(&self.agent, connect)
    }

    /// Marks agent connection `generation` broken; the next agent call reopens it.
    pub fn report_agent_broken(&self, generation: u64) {
        Self::broken_in(&self.agent, generation);
    }

    /// Counts one domain event (called on libvirt's event-loop thread).
    pub fn record_event(&self, uuid: &str, ev: &crate::source::libvirt::ffi::DomainEvent) {
        let mut book = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded: entries of domains discovery no longer lists are pruned every round.
        if book.len() < 100_000 || book.contains_key(uuid) {
            book.entry(uuid.to_owned()).or_default().count_libvirt(ev, crate::clock::now_unix());
        }
        drop(book);
        if matches!(ev, crate::source::libvirt::ffi::DomainEvent::Agent { connected: true }) {
            if let Some(w) = self.agent_wakers.lock().unwrap_or_else(PoisonError::into_inner).get(uuid) {
                // Stores a permit when nobody waits: a poll in progress is followed by another.
                w.notify_one();
            }
        }
    }

    /// The notifier fired when domain `uuid`'s guest agent connects.
    pub fn agent_waker(&self, uuid: &str) -> Arc<tokio::sync::Notify> {
        self.agent_wakers.lock().unwrap_or_else(PoisonError::into_inner).entry(uuid.to_owned()).or_default().clone()
    }

    /// The event counts of one domain, if any event was seen.
    pub fn events_of(&self, uuid: &str) -> Option<EventCounts> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).get(uuid).cloned()
    }

    /// Forgets the counts of domains that are gone.
    pub fn retain_events(&self, keep: impl Fn(&str) -> bool) {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).retain(|k, _| keep(k));
        self.agent_wakers.lock().unwrap_or_else(PoisonError::into_inner).retain(|k, _| keep(k));
    }

    /// A sink for [`crate::source::libvirt::ffi::register_events`] that counts into this endpoint.
    pub fn event_sink(self: &Arc<Self>) -> crate::source::libvirt::ffi::EventSink {
        let weak = Arc::downgrade(self);
        Arc::new(move |uuid: &str, ev: crate::source::libvirt::ffi::DomainEvent| {
            if let Some(ep) = weak.upgrade() {
                ep.record_event(uuid, &ev);
            }
        })
    }

    fn install_in(&self, slot: &Mutex<Option<Conn>>, connect: Connect) -> Conn {
        let conn = Conn { generation: self.generations.fetch_add(1, Ordering::AcqRel) + 1, connect: Arc::new(connect) };
        let old = slot.lock().unwrap_or_else(PoisonError::into_inner).replace(conn.clone());
        close_off_thread(old, Vec::new());
        conn
    }

    fn broken_in(slot: &Mutex<Option<Conn>>, generation: u64) {
        let old = {
            let mut cur = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if cur.as_ref().is_some_and(|c| c.generation == generation) { cur.take() } else { None }
        };
        close_off_thread(old, Vec::new());
    }
}

impl Drop for Endpoint {
    /// A launcher that went away: its connections close, event callbacks first.
    fn drop(&mut self) {
        let current = self.current.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        self.close_read_only(current);
        close_off_thread(self.agent.get_mut().unwrap_or_else(PoisonError::into_inner).take(), Vec::new());
        let lanes = std::mem::take(&mut self.lanes.get_mut().unwrap_or_else(PoisonError::into_inner).lanes);
        close_all(lanes.into_iter().map(|l| l.conn).collect());
    }
}

fn close_all(conns: Vec<Conn>) {
    for c in conns {
        close_off_thread(Some(c), Vec::new());
    }
}

/// Closing a connection (and deregistering its event callbacks) are RPCs that can block on a
/// hung daemon: do them on the blocking pool.
fn close_off_thread(conn: Option<Conn>, event_ids: Vec<i32>) {
    if let (Some(conn), Ok(rt)) = (conn, tokio::runtime::Handle::try_current()) {
        rt.spawn_blocking(move || {
            crate::source::libvirt::ffi::deregister_events(&conn.connect, &event_ids);
            drop(conn)
        });
    }
}

/// Opens a read-only connection and enables keep-alive so a vanished daemon is noticed.
/// Blocking.
pub fn open_read_only(uri: &str) -> Result<Connect, virt::error::Error> {
    let conn = Connect::open_read_only(Some(uri))?;
    // Keep-alive needs the event loop started in `discovery::init`; drivers without it (the
    // test driver) say "not supported", which is harmless.
    let _ = conn.set_keep_alive(5, 3);
    Ok(conn)
}

/// Opens a lane: a read-only connection whose keep-alive ticks every second. The tick also
/// bounds the lost wake-up described in the module documentation: the thread waiting on a
/// stuck call wakes at least once a tick to send a ping, and sends whatever calls were queued
/// behind it then, so a call that lands on a lane just as a VM hangs waits at most about a
/// second, not until libvirtd's next 5 s ping. Ten unanswered ticks close it. Blocking.
fn open_lane(uri: &str) -> Result<Connect, virt::error::Error> {
    let conn = Connect::open_read_only(Some(uri))?;
    let _ = conn.set_keep_alive(1, 10);
    Ok(conn)
}

/// Opens the read-write connection `virDomainQemuAgentCommand` requires. vmbridge uses it
/// only for allow-listed, read-only `guest-*` queries (`crate::source::qga::allow`). Blocking.
#[allow(clippy::disallowed_methods)] // the one sanctioned read-write open
pub fn open_for_agent(uri: &str) -> Result<Connect, virt::error::Error> {
    let conn = Connect::open(Some(uri))?;
    let _ = conn.set_keep_alive(5, 3);
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::lanes::{Choice, choose};
    use super::*;

    fn lim() -> LaneLimits {
        LaneLimits { max_connections: 3, calls_per_connection: 5, ..LaneLimits::default() }
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_lane_with_a_slow_call_takes_no_new_call_while_another_can_be_had() {
        let l = lim();
        assert_eq!(choose(&[], 0, &l), Choice::Open, "the first call opens the first lane");
        // Calls pack on the oldest usable lane.
        assert_eq!(choose(&[(1, 2, MS(10)), (2, 0, MS(0))], 0, &l), Choice::Lane(0));
        // Not once a call on it runs past slow_after: the next usable lane instead.
        let lanes = [(1, 1, MS(600)), (2, 2, MS(10)), (3, 1, MS(10))];
        assert_eq!(choose(&lanes, 0, &l), Choice::Lane(1));
        // Every lane slow: a new one, within the bound (lanes being opened count).
        assert_eq!(choose(&[(1, 1, MS(600))], 0, &l), Choice::Open);
        assert_eq!(choose(&[(1, 1, MS(600)), (2, 1, MS(900))], 1, &l), Choice::Lane(0));
    }

    #[test]
    fn a_lane_keeps_one_place_free_and_a_full_pool_is_busy() {
        let l = lim();
        // Four calls on a lane of a daemon that serves five: full, so a new lane.
        assert_eq!(choose(&[(1, 4, MS(1))], 0, &l), Choice::Open);
        // At the bound, every lane slow: the one with room whose oldest call is youngest.
        let lanes = [(1, 4, MS(700)), (2, 2, MS(5000)), (3, 1, MS(800))];
        assert_eq!(choose(&lanes, 0, &l), Choice::Lane(2));
        // At the bound and every lane full: busy.
        let full = [(1, 4, MS(700)), (2, 4, MS(5000)), (3, 4, MS(800))];
        assert_eq!(choose(&full, 0, &l), Choice::Busy);
        // A daemon serving one call per connection still gets one per lane.
        let one = LaneLimits { calls_per_connection: 1, ..l };
        assert_eq!(choose(&[(1, 0, MS(0))], 0, &one), Choice::Lane(0));
        assert_eq!(choose(&[(1, 1, MS(0))], 0, &one), Choice::Open);
    }
}
