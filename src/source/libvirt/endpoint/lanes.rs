//! The pollers' lanes: read-only connections to one daemon, each carrying at most one call
//! fewer than the daemon serves per client, so a call stuck on a hung VM holds a place on one
//! lane and never the whole endpoint ([`Endpoint::lease`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::{Conn, Endpoint, LaneLimits, close_all, open_lane};

/// One lane: a connection and the calls running on it, by id and start.
pub(super) struct Lane {
    pub(super) conn: Conn,
    running: Vec<(u64, Instant)>,
    last_used: Instant,
}

impl Lane {
    /// How long its oldest running call has run.
    fn oldest(&self, now: Instant) -> Duration {
        self.running.iter().map(|(_, t)| now.saturating_duration_since(*t)).max().unwrap_or_default()
    }
}

#[derive(Default)]
pub(super) struct Lanes {
    pub(super) lanes: Vec<Lane>,
    /// Connections being opened (counted against the bound).
    opening: usize,
    next_call: u64,
}

/// Why no lane could be had.
#[derive(Debug)]
pub enum LaneError {
    /// Every lane has calls running past [`LaneLimits::slow_after`] or is full, and no more may
    /// be opened: the daemon is saturated by calls that do not return (hung VMs).
    Busy {
        /// Lanes open.
        lanes: usize,
        /// Lanes with a call running past `slow_after`.
        slow: usize,
    },
    /// A new lane could not be opened.
    Connect(virt::error::Error),
}

/// A call's place on a lane, held by the blocking call while it runs; dropping it ends the
/// call's time on the lane.
pub struct Lease {
    endpoint: Arc<Endpoint>,
    id: u64,
    /// The lane's connection.
    pub conn: Conn,
    /// The daemon answered the call (see [`Lease::answered`]).
    answered: bool,
}

impl Lease {
    /// Notes that a call on the daemon's normal workers got an answer (a value, or an error of
    /// the daemon's own; not a connection that broke), so the daemon is not saturated.
    pub fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut pool = self.endpoint.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lane) = pool.lanes.iter_mut().find(|l| l.conn.generation == self.conn.generation) {
            lane.running.retain(|(id, _)| *id != self.id);
            lane.last_used = now;
        }
        drop(pool);
        if self.answered {
            self.endpoint.answered(now);
        }
    }
}

/// What the debug endpoint shows of an endpoint's lanes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct LaneView {
    /// Lanes open.
    pub connections: usize,
    /// Calls running on them.
    pub calls: usize,
    /// Calls running longer than the slow bound (stuck on hung VMs, or a daemon slow for all).
    pub slow_calls: usize,
    /// Lanes taking no new calls because of such a call.
    pub avoided_connections: usize,
    /// Calls the pollers made on them so far (libvirt round trips; a batch is one).
    pub calls_total: u64,
    /// Domains' statistics that a batch answered (polls that needed no call of their own).
    pub batched_total: u64,
}

impl Endpoint {
    /// A lane for one call (see `choose`). When every lane has a call running past
    /// `slow_after` (or is full) and no more may be opened: [`LaneError::Busy`] if none has
    /// room. Blocking (it may open a connection): call it on the blocking pool.
    pub fn lease(self: &Arc<Self>) -> Result<Lease, LaneError> {
        let lim = self.limits;
        let mut closing = Vec::new();
        let mut pool = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // Lanes whose connection the client found closed (libvirtd restarted: "client socket is
        // closed", an error no call classifies as a broken connection) go at once; their calls,
        // if any, end with an error by themselves. `virConnectIsAlive` asks the client, not the
        // daemon.
        let mut i = 0;
        while i < pool.lanes.len() {
            if pool.lanes[i].conn.connect.is_alive().unwrap_or(false) {
                i += 1;
            } else {
                closing.push(pool.lanes.remove(i).conn);
            }
        }
        // Idle lanes beyond the first are closed (hung VMs that resumed leave some behind).
        while pool.lanes.len() > 1 {
            let Some(i) = pool
                .lanes
                .iter()
                .rposition(|l| l.running.is_empty() && now.saturating_duration_since(l.last_used) >= lim.idle_close)
            else {
                break;
            };
            // `remove`, not `swap_remove`: the order is the packing order (see `choose`).
            closing.push(pool.lanes.remove(i).conn);
        }
        let states: Vec<(u64, usize, Duration)> =
            pool.lanes.iter().map(|l| (l.conn.generation, l.running.len(), l.oldest(now))).collect();
        let pick = match choose(&states, pool.opening, &lim) {
            Choice::Lane(i) => Some(i),
            Choice::Open => None,
            Choice::Busy => {
                let slow = states.iter().filter(|(_, n, oldest)| *n > 0 && *oldest >= lim.slow_after).count();
                let lanes = pool.lanes.len();
                drop(pool);
                close_all(closing);
                return Err(LaneError::Busy { lanes, slow });
            }
        };
        if let Some(i) = pick {
            let id = pool.next_call;
            pool.next_call += 1;
            let lane = &mut pool.lanes[i];
            lane.running.push((id, now));
            lane.last_used = now;
            let conn = lane.conn.clone();
            drop(pool);
            close_all(closing);
            return Ok(Lease { endpoint: self.clone(), id, conn, answered: false });
        }
        pool.opening += 1;
        drop(pool);
        close_all(closing);
        let opened = open_lane(&self.uri);
        let mut pool = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        pool.opening -= 1;
        let connect = opened.map_err(LaneError::Connect)?;
        let conn = Conn { generation: self.generations.fetch_add(1, Ordering::AcqRel) + 1, connect: Arc::new(connect) };
        let id = pool.next_call;
        pool.next_call += 1;
        let now = Instant::now();
        pool.lanes.push(Lane { conn: conn.clone(), running: vec![(id, now)], last_used: now });
        tracing::debug!(uri = %self.uri, lanes = pool.lanes.len(), "opened a libvirt connection for the pollers");
        Ok(Lease { endpoint: self.clone(), id, conn, answered: false })
    }

    /// The generations of the open lanes.
    pub(super) fn lane_generations(&self) -> Vec<u64> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner).lanes.iter().map(|l| l.conn.generation).collect()
    }

    /// The lanes now, for the debug endpoint and the endpoint's series.
    pub fn lane_view(&self) -> LaneView {
        let pool = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let slow = |l: &Lane| {
            l.running.iter().filter(|(_, t)| now.saturating_duration_since(*t) >= self.limits.slow_after).count()
        };
        LaneView {
            connections: pool.lanes.len(),
            calls: pool.lanes.iter().map(|l| l.running.len()).sum(),
            slow_calls: pool.lanes.iter().map(slow).sum(),
            avoided_connections: pool.lanes.iter().filter(|l| slow(l) > 0).count(),
            calls_total: self.calls.load(Ordering::Relaxed),
            batched_total: self.batched.load(Ordering::Relaxed),
        }
    }
}

/// What [`choose`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Choice {
    /// This lane.
    Lane(usize),
    /// Open a new lane.
    Open,
    /// None can be had.
    Busy,
}

/// Lane selection, from each lane's (generation, running calls, age of its oldest call), in the
/// order the lanes were opened: the first usable lane, else a new one within the bound, else
/// the lane with room whose oldest call is youngest. Taking the first usable lane packs the
/// calls on the oldest lanes, so a VM mostly finds the lane its domain handle belongs to (no
/// lookup), and lanes opened for a burst or for hung VMs fall idle and are closed. A lane carries one
/// call fewer than the daemon's `max_client_requests`: libvirtd stops reading a connection with
/// that many calls running, which leaves its keep-alive unanswered, and the connection is then
/// closed under every call on it.
pub(super) fn choose(lanes: &[(u64, usize, Duration)], opening: usize, lim: &LaneLimits) -> Choice {
    let room = lim.calls_per_connection.saturating_sub(1).max(1);
    let usable = |(_, n, oldest): &(u64, usize, Duration)| *n < room && *oldest < lim.slow_after;
    if let Some(i) = lanes.iter().position(usable) {
        return Choice::Lane(i);
    }
    if lanes.len() + opening < lim.max_connections {
        return Choice::Open;
    }
    (0..lanes.len()).filter(|i| lanes[*i].1 < room).min_by_key(|i| lanes[*i].2).map_or(Choice::Busy, Choice::Lane)
}
