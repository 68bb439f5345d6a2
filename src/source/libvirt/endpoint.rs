//! One libvirt daemon and vmbridge's connections to it: a long-lived read-only one for stats
//! and discovery, and — only when the guest-agent source goes through libvirt — a read-write
//! one that `virDomainQemuAgentCommand` requires and that is used for nothing else.
//!
//! A connection is replaced (with a new generation number) when a call reports it broken,
//! e.g. after libvirtd restarts; pollers notice the new generation and look their domain up again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use virt::connect::Connect;

use crate::source::qmp::EventCounts;

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
}

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
        })
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

    /// Marks read-only connection `generation` broken; the discovery loop reconnects.
    pub fn report_broken(&self, generation: u64) {
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
    pub fn record_event(&self, uuid: &str, ev: &super::ffi::DomainEvent) {
        let mut book = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded: entries of domains discovery no longer lists are pruned every round.
        if book.len() < 100_000 || book.contains_key(uuid) {
            book.entry(uuid.to_owned()).or_default().count_libvirt(ev, crate::clock::now_unix());
        }
        drop(book);
        if matches!(ev, super::ffi::DomainEvent::Agent { connected: true }) {
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

    /// A sink for [`super::ffi::register_events`] that counts into this endpoint.
    pub fn event_sink(self: &Arc<Self>) -> super::ffi::EventSink {
        let weak = Arc::downgrade(self);
        Arc::new(move |uuid: &str, ev: super::ffi::DomainEvent| {
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
    }
}

/// Closing a connection (and deregistering its event callbacks) are RPCs that can block on a
/// hung daemon: do them on the blocking pool.
fn close_off_thread(conn: Option<Conn>, event_ids: Vec<i32>) {
    if let (Some(conn), Ok(rt)) = (conn, tokio::runtime::Handle::try_current()) {
        rt.spawn_blocking(move || {
            super::ffi::deregister_events(&conn.connect, &event_ids);
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

/// Opens the read-write connection `virDomainQemuAgentCommand` requires. vmbridge uses it
/// only for allow-listed, read-only `guest-*` queries (`crate::source::qga::allow`). Blocking.
#[allow(clippy::disallowed_methods)] // the one sanctioned read-write open
pub fn open_for_agent(uri: &str) -> Result<Connect, virt::error::Error> {
    let conn = Connect::open(Some(uri))?;
    let _ = conn.set_keep_alive(5, 3);
    Ok(conn)
}
