//! Domain discovery for one libvirt endpoint: (re)connect, list the running domains every
//! interval, and tell the supervisor which appeared and which went away.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Once;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::blocking::{BlockingSlot, SlotError};
use super::endpoint::{self, Conn, Endpoint};
use crate::store::Store;

/// A domain found on an endpoint.
#[derive(Debug, Clone)]
pub struct FoundDomain {
    /// The endpoint it lives on.
    pub endpoint: Arc<Endpoint>,
    /// libvirt domain name.
    pub name: String,
    /// libvirt domain UUID (stable across libvirtd restarts).
    pub uuid: String,
}

/// What discovery tells the supervisor.
#[derive(Debug, Clone)]
pub enum VmEvent {
    /// A running domain appeared.
    Added(FoundDomain),
    /// A domain is no longer running (or its endpoint is gone for good).
    Removed {
        /// Endpoint URI.
        uri: String,
        /// Domain UUID.
        uuid: String,
    },
}

/// Process-wide libvirt set-up: silence libvirt's own stderr error printing (errors are
/// returned and logged by vmbridge) and run the default event loop that keep-alive needs.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        virt::error::clear_error_callback();
        if virt::event::event_register_default_impl().is_ok() {
            let spawned = std::thread::Builder::new().name("libvirt-events".into()).spawn(|| {
                loop {
                    if virt::event::event_run_default_impl().is_err() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start the libvirt event loop; keep-alive is off");
            }
        }
    });
}

enum Call {
    Opened(Result<virt::connect::Connect, virt::error::Error>),
    Listed(Result<Vec<(String, String)>, virt::error::Error>),
    Subscribed(Result<Vec<i32>, virt::error::Error>),
}

/// The running domains of a connection, as (name, UUID). Blocking.
pub fn list_running(conn: &Conn) -> Result<Vec<(String, String)>, virt::error::Error> {
    let doms = conn.connect.list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)?;
    let mut out = Vec::with_capacity(doms.len());
    for d in doms {
        // Name and UUID are cached in the client-side domain object: no RPC.
        if let (Ok(name), Ok(uuid)) = (d.name(), d.uuid_string()) {
            out.push((name, uuid));
        }
    }
    Ok(out)
}

/// Runs discovery for one endpoint until cancelled.
pub async fn run(
    endpoint: Arc<Endpoint>,
    interval: Duration,
    timeout: Duration,
    store: Arc<Store>,
    events: mpsc::Sender<VmEvent>,
    cancel: CancellationToken,
) {
    let mut known: BTreeMap<String, String> = BTreeMap::new(); // uuid → name
    // Discovery's calls do not queue behind the pollers' (`libvirt.max_concurrent_calls`):
    // listing the domains tells a VM gone from a VM busy, and libvirtd answers it even when
    // saturated.
    let mut slot: BlockingSlot<Call> = BlockingSlot::new(Arc::new(Semaphore::new(1)));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = cancel.cancelled() => break,
        }
        let conn = match endpoint.current() {
            Some(c) => c,
            None => {
                let uri = endpoint.uri.clone();
                match slot.run(timeout, move || Call::Opened(endpoint::open_read_only(&uri))).await {
                    Ok(Call::Opened(Ok(c))) => {
                        tracing::info!(uri = %endpoint.uri, "connected to libvirt (read-only)");
                        let conn = endpoint.install(c);
                        // Domain events (for VMs without a direct QMP monitor); optional.
                        let (c2, sink) = (conn.clone(), endpoint.event_sink());
                        match slot
                            .run(timeout, move || Call::Subscribed(super::ffi::register_events(&c2.connect, sink)))
                            .await
                        {
                            Ok(Call::Subscribed(Ok(ids))) => endpoint.set_event_ids(conn.generation, ids),
                            Ok(Call::Subscribed(Err(e))) => {
                                tracing::warn!(uri = %endpoint.uri, error = %e.message(), "domain events unavailable")
                            }
                            _ => tracing::warn!(uri = %endpoint.uri, "domain event registration did not answer"),
                        }
                        conn
                    }
                    Ok(Call::Opened(Err(e))) => {
                        store.endpoint_failed(&endpoint.uri, format!("connect: {}", e.message()));
                        continue;
                    }
                    Ok(Call::Listed(_) | Call::Subscribed(_)) => continue, // a late answer from an old connection
                    Err(e) => {
                        store.endpoint_failed(&endpoint.uri, format!("connect: {e}"));
                        continue;
                    }
                }
            }
        };
        store.endpoint_health(&endpoint.uri, endpoint.lane_view(), endpoint.saturated_since());
        let c = conn.clone();
        let listed = match slot.run(timeout, move || Call::Listed(list_running(&c))).await {
            Ok(Call::Listed(Ok(list))) => list,
            Ok(Call::Listed(Err(e))) => {
                tracing::warn!(uri = %endpoint.uri, error = %e.message(), "listing domains failed; reconnecting");
                store.endpoint_failed(&endpoint.uri, format!("list: {}", e.message()));
                endpoint.report_broken(conn.generation);
                continue;
            }
            Ok(Call::Opened(_) | Call::Subscribed(_)) => continue,
            Err(SlotError::Timeout { running_for }) => {
                store.endpoint_failed(&endpoint.uri, format!("list: no answer for {running_for:?}"));
                continue;
            }
            Err(e) => {
                store.endpoint_failed(&endpoint.uri, format!("list: {e}"));
                continue;
            }
        };
        let now: BTreeMap<String, String> = listed.into_iter().map(|(name, uuid)| (uuid, name)).collect();
        for (uuid, name) in &now {
            if known.get(uuid) != Some(name) {
                if known.contains_key(uuid) {
                    // Same UUID, new name (renamed): remove the old identity first.
                    let _ = events.send(VmEvent::Removed { uri: endpoint.uri.clone(), uuid: uuid.clone() }).await;
                }
                let found = FoundDomain { endpoint: endpoint.clone(), name: name.clone(), uuid: uuid.clone() };
                if events.send(VmEvent::Added(found)).await.is_err() {
                    return;
                }
            }
        }
        for uuid in known.keys().filter(|u| !now.contains_key(*u)) {
            if events.send(VmEvent::Removed { uri: endpoint.uri.clone(), uuid: uuid.clone() }).await.is_err() {
                return;
            }
        }
        store.endpoint_listed(&endpoint.uri, now.len());
        endpoint.set_domains(now.len());
        endpoint.retain_events(|uuid| now.contains_key(uuid));
        known = now;
    }
    // The endpoint went away (a launcher stopped): its VMs go with it.
    for uuid in known.into_keys() {
        let _ = events.send(VmEvent::Removed { uri: endpoint.uri.clone(), uuid }).await;
    }
}

/// What KubeVirt mode finds launchers with, and the bounds of each launcher's connections.
#[derive(Debug, Clone)]
pub struct Launchers {
    /// How launchers are found.
    pub scan: super::launchers::LauncherScan,
    /// Each launcher endpoint's lanes.
    pub lanes: super::endpoint::LaneLimits,
}

/// KubeVirt mode: scans for launcher daemons every `interval`, runs [`run`] for each one
/// found, and stops it (dropping its VMs) when the daemon is gone.
pub async fn run_launchers(
    launchers: Launchers,
    interval: Duration,
    timeout: Duration,
    store: Arc<Store>,
    events: mpsc::Sender<VmEvent>,
    cancel: CancellationToken,
) {
    let Launchers { scan, lanes } = launchers;
    let mut running: BTreeMap<u32, (super::launchers::Launcher, CancellationToken)> = BTreeMap::new();
    let mut scan_in_flight: Option<(tokio::task::JoinHandle<super::launchers::Found>, tokio::time::Instant)> = None;
    let mut untrusted_seen: Vec<u32> = Vec::new();
    let mut stuck_scans: u64 = 0;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = cancel.cancelled() => break,
        }
        // One scan in flight at a time, each waited for at most `timeout`: a `/proc` read that
        // blocks (a process in D state, a hung FUSE mount) must not freeze this loop, and a
        // scan still running is waited for again rather than started twice.
        let handle = scan_in_flight.get_or_insert_with(|| {
            let s = scan.clone();
            (tokio::task::spawn_blocking(move || s.scan()), tokio::time::Instant::now())
        });
        let found = tokio::select! {
            r = tokio::time::timeout(timeout, &mut handle.0) => r,
            _ = cancel.cancelled() => break,
        };
        let found = match found {
            Ok(joined) => {
                scan_in_flight = None;
                match joined {
                    Ok(found) => found,
                    Err(_) => continue,
                }
            }
            Err(_) => {
                stuck_scans += 1;
                tracing::warn!(
                    running_for = ?handle.1.elapsed(),
                    stuck_scans,
                    "launcher scan still running; the launchers already found keep being polled"
                );
                continue;
            }
        };
        store.launchers_scanned(found.launchers.len(), found.untrusted.len(), found.over_cap);
        if found.untrusted != untrusted_seen {
            let new: Vec<u32> = found.untrusted.iter().copied().filter(|p| !untrusted_seen.contains(p)).collect();
            if !new.is_empty() {
                tracing::warn!(pids = ?new, "libvirt daemons in other mount namespaces without a virt-launcher parent of their own container and KubeVirt's launcher socket layout: not taken for launchers");
            }
            untrusted_seen = found.untrusted.clone();
        }
        if found.over_cap > 0 {
            tracing::warn!(
                over_cap = found.over_cap,
                "more launchers than kubevirt.max_launchers: the rest are not polled"
            );
        }
        let found = found.launchers;
        let known = running.iter().map(|(pid, (l, _))| (*pid, l.clone())).collect();
        let (added, gone) = super::launchers::diff(&known, &found);
        for pid in gone {
            if let Some((l, token)) = running.remove(&pid) {
                tracing::info!(pid, uri = %l.uri, "launcher gone");
                token.cancel();
                store.remove_endpoint(&l.uri);
            }
        }
        for l in added {
            if let Some((old, token)) = running.remove(&l.pid) {
                token.cancel();
                store.remove_endpoint(&old.uri);
            }
            tracing::info!(pid = l.pid, uri = %l.uri, "launcher found");
            store.add_endpoint(&l.uri);
            let agent_uri = l.agent_uri.clone().unwrap_or_else(|| l.uri.clone());
            let endpoint = Endpoint::with_limits(l.uri.clone(), agent_uri, lanes);
            let token = cancel.child_token();
            tokio::spawn(run(endpoint, interval, timeout, store.clone(), events.clone(), token.clone()));
            running.insert(l.pid, (l, token));
        }
        store.scanned();
    }
    for (_, (_, token)) in running {
        token.cancel();
    }
}
