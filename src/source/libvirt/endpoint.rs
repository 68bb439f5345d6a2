//! One libvirt daemon and vmbridge's single, long-lived, read-only connection to it.
//!
//! The connection is replaced (with a new generation number) when a call reports it broken,
//! e.g. after libvirtd restarts; pollers notice the new generation and look their domain up again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use virt::connect::Connect;

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
    current: Mutex<Option<Conn>>,
    generations: AtomicU64,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint with no connection yet.
    pub fn new(uri: impl Into<String>) -> Arc<Self> {
        Arc::new(Endpoint {
            uri: uri.into(),
            current: Mutex::new(None),
            generations: AtomicU64::new(0),
        })
    }

    /// The current connection, if any.
    pub fn current(&self) -> Option<Conn> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Installs a freshly opened connection and returns it.
    pub fn install(&self, connect: Connect) -> Conn {
        let conn = Conn {
            generation: self.generations.fetch_add(1, Ordering::AcqRel) + 1,
            connect: Arc::new(connect),
        };
        let old = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(conn.clone());
        close_off_thread(old);
        conn
    }

    /// Marks generation `generation` broken; the discovery loop reconnects.
    pub fn report_broken(&self, generation: u64) {
        let mut cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if cur.as_ref().is_some_and(|c| c.generation == generation) {
            let old = cur.take();
            drop(cur);
            close_off_thread(old);
        }
    }
}

/// Closing a connection is an RPC that can block on a hung daemon: do it on the blocking pool.
fn close_off_thread(conn: Option<Conn>) {
    if let Some(conn) = conn {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || drop(conn));
        }
    }
}

/// Opens a read-only connection and enables keep-alive so a vanished daemon is noticed.
/// Blocking.
pub fn open_read_only(uri: &str) -> Result<Connect, virt::error::Error> {
    let conn = Connect::open_read_only(Some(uri))?;
    // Keep-alive needs the event loop started in `crate::source::libvirt::discovery::init`;
    // drivers without it (the test driver) say "not supported", which is harmless.
    let _ = conn.set_keep_alive(5, 3);
    Ok(conn)
}
