//! Connection limits for the HTTP listeners, so clients cannot exhaust vmbridge's memory or file
//! descriptors. There are three rules:
//! - **Request deadline.** A request's head (from its first byte, or from the accept) must arrive
//!   within `header_timeout`, and the reply must be under way by then. This stops slow-loris
//!   requests and half-sent ones.
//! - **Idle deadline.** A keep-alive connection that carries no new request for `idle_timeout`
//!   is closed. Set it longer than any scrape interval.
//! - **Write deadline.** A reply must be handed to the socket within `write_timeout` of being
//!   ready. A peer that reads nothing (its HTTP/2 flow-control window never opens, or its socket
//!   is never drained) is closed then, and what it held is released.
//! - **Connection cap.** At most `max_connections` connections are open per listener. When the
//!   cap is reached, a new connection evicts the connection that has been longest in its
//!   current state, provided that is at least [`EVICTABLE_AFTER`]. Otherwise the new one
//!   gets a `503` and is closed. A flood of stalled or idle connections therefore never locks
//!   out a scraper, whose request completes in milliseconds.
//!
//! The deadlines live in [`Limited`], a wrapper around the connection's socket. Its reads fail
//! with `TimedOut` once the deadline of its state passes, and hyper then closes the
//! connection. Under TLS the wrapper sits under the TLS stream, so it also bounds the handshake.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection must have been in its state this long before a newcomer may evict it.
pub const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From a request's first byte (or the accept) to its complete head.
    pub header_timeout: Duration,
    /// Between requests on a keep-alive connection.
    pub idle_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// From a reply being ready to its last byte handed to the socket.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 256,
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Why connections were closed by vmbridge, and how many are open, per listener
/// (`vmbridge_http_connections`, `vmbridge_http_connections_closed_total`).
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Open now.
    pub open: AtomicU64,
    /// Closed at the request deadline.
    pub header_timeout: AtomicU64,
    /// Closed at the idle deadline.
    pub idle_timeout: AtomicU64,
    /// Closed at the write deadline (a reply the peer did not read).
    pub write_timeout: AtomicU64,
    /// Closed to make room for a new connection.
    pub evicted: AtomicU64,
    /// Refused at the cap (503).
    pub refused: AtomicU64,
    /// Ended by an error of the client's (reset, garbage, a failed TLS handshake).
    pub errors: AtomicU64,
}

impl ListenerStats {
    /// `(reason label, count)` for every reason.
    pub fn closed(&self) -> [(&'static str, u64); 6] {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("header_timeout", l(&self.header_timeout)),
            ("idle_timeout", l(&self.idle_timeout)),
            ("write_timeout", l(&self.write_timeout)),
            ("evicted", l(&self.evicted)),
            ("refused", l(&self.refused)),
            ("error", l(&self.errors)),
        ]
    }
}

/// Both listeners' figures, and the reply budget they share.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// The public port.
    pub public: Arc<ListenerStats>,
    /// The debug listener.
    pub debug: Arc<ListenerStats>,
    /// Bytes of reply bodies held, over both listeners (`vmbridge_http_reply_bytes`).
    pub budget: Arc<super::budget::ReplyBudget>,
}

/// One open connection, as the tracker sees it.
#[derive(Debug, Default)]
struct Ctl {
    /// When it entered its current state, in ms since the tracker's epoch.
    since_ms: AtomicU64,
    /// Set to close it.
    evict: AtomicBool,
    /// Wakes its task after `evict` is set, or a reply starts.
    waker: AtomicWaker,
    /// Replies ready and not yet handed to the socket: (id, ready at).
    replies: Mutex<Vec<(u64, Instant)>>,
    /// `replies.len()`, read without the lock.
    pending: AtomicU64,
    next_reply: AtomicU64,
}

impl Ctl {
    /// When the oldest reply still being written became ready.
    fn oldest_reply(&self) -> Option<Instant> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.replies.lock().ok()?.iter().map(|r| r.1).min()
    }
}

/// A connection's replies, for the write deadline: [`ConnReplies::start`] as each reply is
/// ready; the guard it returns is dropped once the reply's last byte left.
#[derive(Debug, Clone)]
pub struct ConnReplies(Arc<Ctl>);

impl ConnReplies {
    /// A reply of this connection is ready: its write deadline starts now.
    pub fn start(&self) -> ReplyGuard {
        let id = self.0.next_reply.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut r) = self.0.replies.lock() {
            r.push((id, Instant::now()));
            self.0.pending.store(r.len() as u64, Ordering::Release);
        }
        // The connection's task arms the deadline when it next polls its socket.
        self.0.waker.wake();
        ReplyGuard { ctl: self.0.clone(), id }
    }
}

/// One reply being written; see [`ConnReplies::start`].
#[derive(Debug)]
pub struct ReplyGuard {
    ctl: Arc<Ctl>,
    id: u64,
}

impl Drop for ReplyGuard {
    fn drop(&mut self) {
        if let Ok(mut r) = self.ctl.replies.lock() {
            r.retain(|e| e.0 != self.id);
            self.ctl.pending.store(r.len() as u64, Ordering::Release);
        }
    }
}

/// Admits connections to one listener under [`Limits`].
#[derive(Debug)]
pub struct Tracker {
    limits: Limits,
    stats: Arc<ListenerStats>,
    conns: Mutex<HashMap<u64, Arc<Ctl>>>,
    next_id: AtomicU64,
    epoch: Instant,
}

/// What [`Tracker::admit`] decided.
pub enum Admission {
    /// Serve it, through this wrapper (dropping it releases the slot).
    Admitted(Slot),
    /// The cap is reached and nothing may be evicted: answer 503 and close.
    Refused,
}

/// An admitted connection's place; released on drop.
#[derive(Debug)]
pub struct Slot {
    tracker: Arc<Tracker>,
    id: u64,
    ctl: Arc<Ctl>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // An evicted connection's entry is already gone (and was counted out then).
        let removed = self.tracker.conns.lock().map(|mut c| c.remove(&self.id).is_some()).unwrap_or(false);
        if removed {
            self.tracker.stats.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Slot {
    /// Its connection's replies, for the write deadline.
    pub fn replies(&self) -> ConnReplies {
        ConnReplies(self.ctl.clone())
    }
}

impl Tracker {
    /// A tracker counting into `stats`.
    pub fn new(limits: Limits, stats: Arc<ListenerStats>) -> Arc<Tracker> {
        Arc::new(Tracker {
            limits,
            stats,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Admits a new connection, evicting the longest-parked one when the cap is reached.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let now = self.now_ms();
        let Ok(mut conns) = self.conns.lock() else { return Admission::Refused };
        if conns.len() >= self.limits.max_connections.max(1) {
            let evictable = u64::try_from(EVICTABLE_AFTER.as_millis()).unwrap_or(u64::MAX);
            let oldest = conns
                .iter()
                .filter(|(_, c)| !c.evict.load(Ordering::Relaxed))
                .min_by_key(|(_, c)| c.since_ms.load(Ordering::Relaxed))
                .filter(|(_, c)| now.saturating_sub(c.since_ms.load(Ordering::Relaxed)) >= evictable)
                .map(|(id, c)| (*id, c.clone()));
            match oldest {
                Some((id, victim)) => {
                    victim.evict.store(true, Ordering::Relaxed);
                    victim.waker.wake();
                    // Its slot is freed now; its task closes the socket when it next runs.
                    conns.remove(&id);
                    self.stats.open.fetch_sub(1, Ordering::Relaxed);
                    self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    return Admission::Refused;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ctl = Arc::new(Ctl { since_ms: AtomicU64::new(now), ..Ctl::default() });
        conns.insert(id, ctl.clone());
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Admission::Admitted(Slot { tracker: self.clone(), id, ctl })
    }

    /// Its limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// A connection's socket under the deadlines; see the module documentation.
pub struct Limited<IO> {
    io: IO,
    slot: Slot,
    /// A request is due (its head has begun or the connection is new), else idle.
    request_due: bool,
    deadline: Pin<Box<Sleep>>,
    /// The write deadline, and the time it is armed for (none while no reply is being written).
    write_deadline: Pin<Box<Sleep>>,
    write_due: Option<Instant>,
    /// Counted once: the eviction or timeout that closed it.
    closed: bool,
}

impl<IO> Limited<IO> {
    /// Wraps a just-accepted connection: its first request is due within the header timeout.
    pub fn new(io: IO, slot: Slot) -> Self {
        let d = Instant::now() + slot.tracker.limits.header_timeout;
        Limited {
            io,
            slot,
            request_due: true,
            deadline: Box::pin(tokio::time::sleep_until(d)),
            write_deadline: Box::pin(tokio::time::sleep_until(d)),
            write_due: None,
            closed: false,
        }
    }

    fn enter(&mut self, request_due: bool) {
        self.request_due = request_due;
        let l = &self.slot.tracker.limits;
        let d = if request_due { l.header_timeout } else { l.idle_timeout };
        self.deadline.as_mut().reset(Instant::now() + d);
        self.slot.ctl.since_ms.store(self.slot.tracker.now_ms(), Ordering::Relaxed);
    }

    /// Fails once the connection was evicted (counted by the tracker).
    fn evicted(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.slot.ctl.waker.register(cx.waker());
        if self.slot.ctl.evict.load(Ordering::Relaxed) {
            self.closed = true;
            return Some(io::Error::new(io::ErrorKind::ConnectionAborted, "evicted to make room for a new connection"));
        }
        self.stalled(cx)
    }

    /// Fails once a reply has waited for the peer longer than the write timeout (counted
    /// here). Called on every read and write: the connection's task reads all along under
    /// HTTP/2, and an HTTP/1 reply in a full socket retries its write.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let Some(oldest) = self.slot.ctl.oldest_reply() else {
            self.write_due = None;
            return None;
        };
        let due = oldest + self.slot.tracker.limits.write_timeout;
        if self.write_due != Some(due) {
            self.write_due = Some(due);
            self.write_deadline.as_mut().reset(due);
        }
        if self.write_deadline.as_mut().poll(cx).is_pending() {
            return None;
        }
        if !self.closed {
            self.closed = true;
            self.slot.tracker.stats.write_timeout.fetch_add(1, Ordering::Relaxed);
        }
        Some(io::Error::new(io::ErrorKind::TimedOut, "the peer did not read its reply in time"))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(e) = this.evicted(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && !this.request_due {
                    this.enter(true);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    if !this.closed {
                        this.closed = true;
                        let s = &this.slot.tracker.stats;
                        let counter = if this.request_due { &s.header_timeout } else { &s.idle_timeout };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    let what = if this.request_due { "request head" } else { "next request" };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("no {what} in time"))));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(e) = this.evicted(cx) {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            // A reply is being written: the connection is idle until the next request begins.
            if *n > 0 {
                this.enter(false);
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(e) = this.evicted(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn stats() -> Arc<ListenerStats> {
        Arc::default()
    }

    fn limits(max: usize) -> Limits {
        Limits { max_connections: max, ..Limits::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_sent_request_is_closed_at_the_header_timeout_however_it_trickles() {
        let s = stats();
        let t = Tracker::new(limits(4), s.clone());
        let Admission::Admitted(slot) = t.admit() else { panic!("admitted") };
        let (client, server) = tokio::io::duplex(1024);
        let mut conn = Limited::new(server, slot);
        let feeder = tokio::spawn(async move {
            let mut client = client;
            // One byte per second: slow-loris; the deadline is not reset by the trickle.
            for _ in 0..30 {
                if client.write_all(b"G").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            client
        });
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let err = loop {
            match conn.read(&mut buf).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(10) && took < Duration::from_secs(11), "{took:?}");
        assert_eq!(s.header_timeout.load(Ordering::Relaxed), 1);
        drop(conn);
        assert_eq!(t.open(), 0);
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_reply_the_idle_timeout_applies_and_a_new_request_restarts_the_header_one() {
        let s = stats();
        let t = Tracker::new(limits(4), s.clone());
        let Admission::Admitted(slot) = t.admit() else { panic!("admitted") };
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = Limited::new(server, slot);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 64];
        assert!(conn.read(&mut buf).await.expect("read") > 0);
        conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.expect("reply");
        // Idle for 100 s (< 120 s): still open; then a request begins and stalls.
        let idle = tokio::time::timeout(Duration::from_secs(100), conn.read(&mut buf)).await;
        assert!(idle.is_err(), "closed while idle within the idle timeout");
        client.write_all(b"GE").await.expect("write");
        assert!(conn.read(&mut buf).await.expect("read") > 0);
        let started = Instant::now();
        let err = conn.read(&mut buf).await.expect_err("the stalled request times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() <= Duration::from_secs(10));
        assert_eq!((s.header_timeout.load(Ordering::Relaxed), s.idle_timeout.load(Ordering::Relaxed)), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_at_the_idle_timeout() {
        let s = stats();
        let t = Tracker::new(limits(4), s.clone());
        let Admission::Admitted(slot) = t.admit() else { panic!("admitted") };
        let (_client, server) = tokio::io::duplex(1024);
        let mut conn = Limited::new(server, slot);
        conn.write_all(b"x").await.expect("write");
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let err = conn.read(&mut buf).await.expect_err("idle timeout");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(120));
        assert_eq!(s.idle_timeout.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_longest_parked_connection_is_evicted_and_fresh_ones_refused() {
        let s = stats();
        let t = Tracker::new(limits(2), s.clone());
        let Admission::Admitted(a) = t.admit() else { panic!("a") };
        tokio::time::advance(Duration::from_secs(5)).await;
        let Admission::Admitted(b) = t.admit() else { panic!("b") };
        let (_ca, sa) = tokio::io::duplex(64);
        let mut a = Limited::new(sa, a);
        // Both slots are taken and b is too fresh to evict, but a has waited 5 s: a goes.
        let Admission::Admitted(_c) = t.admit() else { panic!("c evicts a") };
        let mut buf = [0u8; 8];
        let err = a.read(&mut buf).await.expect_err("a was evicted");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(s.evicted.load(Ordering::Relaxed), 1);
        // b and c entered their state just now (at 5 s): neither may be evicted yet, so a
        // newcomer is refused.
        assert!(matches!(t.admit(), Admission::Refused));
        assert_eq!(s.refused.load(Ordering::Relaxed), 1);
        assert_eq!(t.open(), 2);
        drop(b);
        assert_eq!(t.open(), 1);
        assert_eq!(s.open.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_the_peer_does_not_read_closes_its_connection_at_the_write_timeout() {
        let s = stats();
        let t = Tracker::new(Limits { write_timeout: Duration::from_secs(30), ..limits(4) }, s.clone());
        let Admission::Admitted(slot) = t.admit() else { panic!("admitted") };
        let replies = slot.replies();
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = Limited::new(server, slot);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 64];
        assert!(conn.read(&mut buf).await.expect("read") > 0);
        // A reply written in time: its guard goes, and nothing is closed.
        let quick = replies.start();
        tokio::time::advance(Duration::from_secs(20)).await;
        drop(quick);
        conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.expect("reply");
        // The next reply is never read: at 30 s (before the idle deadline, 120 s), the
        // connection is closed.
        let started = Instant::now();
        let _stuck = replies.start();
        let err = conn.read(&mut buf).await.expect_err("write deadline");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(s.write_timeout.load(Ordering::Relaxed), 1);
        assert_eq!(s.idle_timeout.load(Ordering::Relaxed) + s.header_timeout.load(Ordering::Relaxed), 0);
        // Writes fail too, and the close is counted once.
        assert!(conn.write_all(b"more").await.is_err());
        assert_eq!(s.write_timeout.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_write_deadline_runs_from_the_oldest_reply_still_unwritten() {
        let s = stats();
        let t = Tracker::new(Limits { write_timeout: Duration::from_secs(30), ..limits(4) }, s.clone());
        let Admission::Admitted(slot) = t.admit() else { panic!("admitted") };
        let replies = slot.replies();
        let (_client, server) = tokio::io::duplex(1024);
        let mut conn = Limited::new(server, slot);
        conn.write_all(b"x").await.expect("write");
        let first = replies.start();
        tokio::time::advance(Duration::from_secs(10)).await;
        let _second = replies.start();
        // The first goes at 25 s: the second, ready at 10 s, is due at 40 s.
        tokio::time::advance(Duration::from_secs(15)).await;
        drop(first);
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let err = conn.read(&mut buf).await.expect_err("write deadline");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(15));
        assert_eq!(s.write_timeout.load(Ordering::Relaxed), 1);
    }
}
