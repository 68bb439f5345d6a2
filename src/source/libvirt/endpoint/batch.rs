//! One bulk-stats call for many domains of a daemon (`virDomainListGetStats` with a list),
//! instead of one call (and three round trips) per domain and poll.
//!
//! Only daemons with more than one running domain batch (a KubeVirt launcher's has one).
//! A VM's poller whose domain answered its last poll in full asks here first
//! ([`Endpoint::batch_stats`]). Requests that arrive within a short window (`libvirt.batch_window`,
//! default 250 ms) go out together, at most [`MAX_DOMAINS`] domains a call, each call on a
//! lane of its own and with one permit of the shared call bound. Each requester waits for its
//! answer only until its own deadline; a domain whose answer does not come back in time (the
//! batch is stuck on a hung VM, the pool had no permit, the domain is gone) is polled alone, on
//! its own slot and breaker, as before. So one hung VM delays the others of its batch by at
//! most that deadline, once: a call stuck on it holds the domain's job, and every later call
//! (which asks with `NOWAIT`) skips what would need it, answers at once, and leaves the hung
//! VM's answer partial, which sends that VM to its own call again (see the poller).
//!
//! Domain handles belong to a connection: they are listed once per lane
//! (`virConnectListAllDomains`, one call) and kept until the lane closes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};
use virt::domain::Domain;
use virt::sys;

use super::Endpoint;
use crate::source::libvirt::ffi;

/// Most domains in one call: a daemon reads a domain's statistics one domain after another,
/// so a larger call answers later, and one hung domain holds up that many others.
pub const MAX_DOMAINS: usize = 32;

/// Default of `libvirt.batch_window`.
pub const DEFAULT_WINDOW: Duration = Duration::from_millis(250);

pub use crate::source::libvirt::ffi::Params;

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

struct Member {
    uuid: String,
    tx: oneshot::Sender<Option<Params>>,
}

/// The requests waiting for the next call, and the domain handles per lane.
#[derive(Default)]
pub(in crate::source::libvirt) struct Batches {
    pending: Mutex<Vec<Member>>,
    /// Per lane (its connection's generation), the handles of its domains by UUID.
    handles: Mutex<HashMap<u64, HashMap<String, Domain>>>,
}

impl Endpoint {
    /// `uuid`'s bulk stats from the next batch, or `None` when they did not come within the
    /// window plus `wait` (the caller then polls the domain alone). Batching off
    /// (`libvirt.batch_window` 0): `None` at once.
    pub async fn batch_stats(self: &Arc<Self>, uuid: &str, limiter: &Arc<Semaphore>, wait: Duration) -> Option<Params> {
        let window = self.limits().batch_window;
        // A daemon of one VM (a KubeVirt launcher's) has nothing to batch: its VM is polled
        // alone, so a daemon that hangs whole fails its VM's polls as before (a batch would
        // take the lane, and the VM's own call would then wait on a connection being opened
        // to the hung daemon).
        if window.is_zero() || self.domains.load(Ordering::Relaxed) < 2 {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut pending = self.batches.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.push(Member { uuid: uuid.to_owned(), tx });
            pending.len() == 1
        };
        if first {
            let (me, limiter) = (self.clone(), limiter.clone());
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                me.flush(&limiter, wait);
            });
        }
        tokio::time::timeout(window + wait, rx).await.ok()?.ok()?
    }

    /// Sends every waiting request, [`MAX_DOMAINS`] a call.
    fn flush(self: &Arc<Self>, limiter: &Arc<Semaphore>, wait: Duration) {
        let members = std::mem::take(&mut *self.batches.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let mut members = members.into_iter().filter(|m| !m.tx.is_closed()).peekable();
        while members.peek().is_some() {
            let chunk: Vec<Member> = members.by_ref().take(MAX_DOMAINS).collect();
            let (me, limiter) = (self.clone(), limiter.clone());
            tokio::spawn(async move {
                // No permit within the wait: the members poll alone (and meet the bound there).
                let Ok(Ok(permit)) = tokio::time::timeout(wait, limiter.acquire_owned()).await else { return };
                let uuids: Vec<String> = chunk.iter().map(|m| m.uuid.clone()).collect();
                let ep = me.clone();
                // A call stuck on a hung VM stays stuck with its permit and lane (as a VM's own
                // call would); its members stopped waiting at their deadline.
                let answered = tokio::task::spawn_blocking(move || {
                    let out = ep.call_batch(&uuids);
                    drop(permit);
                    out
                })
                .await
                .unwrap_or_default();
                let mut answered: HashMap<String, Params> = answered.into_iter().collect();
                for m in chunk {
                    let _ = m.tx.send(answered.remove(&m.uuid));
                }
            });
        }
    }

    /// One bulk-stats call for `uuids` on a lane: the domains libvirt answered for. Blocking.
    fn call_batch(self: &Arc<Self>, uuids: &[String]) -> Vec<(String, Params)> {
        let Ok(mut lease) = self.lease() else { return Vec::new() };
        let generation = lease.conn.generation;
        let doms = {
            let mut handles = self.batches.handles.lock().unwrap_or_else(PoisonError::into_inner);
            let open = self.lane_generations();
            handles.retain(|g, _| open.contains(g));
            let known = handles.get(&generation).is_some_and(|h| uuids.iter().all(|u| h.contains_key(u)));
            if !known {
                // Listed again when a domain is new to this lane: one call for every handle.
                drop(handles);
                self.count_calls(1);
                let listed = lease.conn.connect.list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE);
                let Ok(listed) = listed else { return Vec::new() };
                let by_uuid: HashMap<String, Domain> =
                    listed.into_iter().filter_map(|d| d.uuid_string().ok().map(|u| (u, d))).collect();
                handles = self.batches.handles.lock().unwrap_or_else(PoisonError::into_inner);
                handles.insert(generation, by_uuid);
            }
            let Some(h) = handles.get(&generation) else { return Vec::new() };
            uuids.iter().filter_map(|u| h.get(u).cloned()).collect::<Vec<Domain>>()
        };
        if doms.is_empty() {
            return Vec::new();
        }
        let refs: Vec<&Domain> = doms.iter().collect();
        self.count_calls(1);
        let out = ffi::list_stats(&refs, STATS_GROUPS, STATS_FLAGS);
        if out.is_ok() {
            lease.answered();
            self.batched.fetch_add(out.as_ref().map_or(0, |o| o.len() as u64), Ordering::Relaxed);
        }
        out.unwrap_or_default()
    }
}
