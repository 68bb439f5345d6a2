//! The snapshot store: the last good sample of every (VM, source), its breaker and its errors.
//!
//! Only the supervisor's tasks write it; scrapes and the debug endpoint only read it, taking
//! a read lock just long enough to clone a few `Arc`s, so a scrape never waits on a VM.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Serialize, Serializer};

use crate::breaker::BreakerView;
use crate::clock::now_unix;
use crate::model::ErrorKind;
use crate::source::SourceKind;
use crate::source::SourceSample;
use crate::vm::VmId;

/// One recorded poll failure.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ErrorRecord {
    /// When, seconds since the Unix epoch.
    pub at: f64,
    /// Bounded classification.
    pub kind: ErrorKind,
    /// Detail.
    pub message: String,
}

fn ser_atomic<S: Serializer>(v: &Arc<AtomicU64>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.load(Ordering::Acquire))
}

/// Everything known about one source of one VM.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SourceSnapshot {
    /// The last good sample, raw and parsed.
    pub sample: Option<Arc<SourceSample>>,
    /// When the last poll succeeded, seconds since the Unix epoch.
    pub last_success_at: Option<f64>,
    /// When the last poll started, seconds since the Unix epoch.
    pub last_attempt_at: Option<f64>,
    /// How long the last poll took, in seconds.
    pub last_poll_duration_seconds: Option<f64>,
    /// Seconds between the last two successful polls: the poll interval as the endpoint
    /// serves it (it stretches while polls are deferred).
    pub effective_interval_seconds: Option<f64>,
    /// Polling is stretched: the last poll was deferred (the node or the daemon busy), or the
    /// last two successful polls were more than 1.5 intervals apart.
    pub stretched: bool,
    /// The QEMU monitor's state when the last poll failed, where libvirt told it.
    pub monitor: Option<crate::model::Monitor>,
    /// Polls attempted since the VM was discovered.
    pub polls_total: u64,
    /// Failed polls since discovery, by kind.
    pub errors_total: BTreeMap<ErrorKind, u64>,
    /// The most recent failures, oldest first.
    pub last_errors: VecDeque<ErrorRecord>,
    /// The breaker guarding this source.
    pub breaker: BreakerView,
    /// Calls abandoned at their deadline that are still running.
    #[serde(serialize_with = "ser_atomic")]
    #[schemars(with = "u64")]
    pub stuck_calls: Arc<AtomicU64>,
}

impl SourceSnapshot {
    /// A source not polled yet, behind `breaker`, counting its stuck calls in `stuck_calls`.
    pub fn fresh(breaker: BreakerView, stuck_calls: Arc<AtomicU64>) -> Self {
        SourceSnapshot {
            sample: None,
            last_success_at: None,
            last_attempt_at: None,
            last_poll_duration_seconds: None,
            effective_interval_seconds: None,
            stretched: false,
            monitor: None,
            polls_total: 0,
            errors_total: BTreeMap::new(),
            last_errors: VecDeque::new(),
            breaker,
            stuck_calls,
        }
    }

    /// True when the most recent poll succeeded (`vmbridge_source_up`).
    pub fn is_up(&self) -> bool {
        self.last_success_at.is_some() && self.breaker.consecutive_failures == 0
    }
}

/// Everything known about one VM.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct VmSnapshot {
    /// Namespace and name.
    #[serde(flatten)]
    pub id: VmId,
    /// libvirt domain name.
    pub domain: String,
    /// libvirt domain UUID.
    pub uuid: String,
    /// The libvirt endpoint URI the domain lives on.
    pub endpoint: String,
    /// When vmbridge discovered the domain, seconds since the Unix epoch.
    pub discovered_at: f64,
    /// Per-source state.
    pub sources: BTreeMap<SourceKind, Arc<SourceSnapshot>>,
    /// Set by the store on every change (insert or publish), increasing: what an encoding of
    /// this VM was made from.
    #[serde(skip)]
    #[schemars(skip)]
    pub revision: u64,
}

/// The state of one configured libvirt endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct EndpointStatus {
    /// libvirt URI.
    pub uri: String,
    /// Whether the last connect/list succeeded.
    pub up: bool,
    /// Whether discovery has listed this endpoint at least once.
    pub listed_once: bool,
    /// Whether discovery's first pass over this endpoint has ended, listed or failed
    /// (readiness waits for that, never for the endpoint to be up).
    pub attempted: bool,
    /// When it was last listed, seconds since the Unix epoch.
    pub last_listed_at: Option<f64>,
    /// Running domains at the last listing.
    pub domains: usize,
    /// The last connect or list error.
    pub last_error: Option<String>,
    /// Since when the daemon answers no call (all its worker threads held), seconds since the
    /// Unix epoch; `None` while it answers.
    pub saturated_since: Option<f64>,
    /// The pollers' connections to it.
    pub connections: crate::source::libvirt::endpoint::LaneView,
}

/// A VM's identity in the store and the supervisor: the endpoint it lives on and its domain
/// UUID. Namespace and name are labels: two live domains may claim the same ones.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmKey {
    /// The libvirt endpoint URI (`static` for configured VMs).
    pub endpoint: String,
    /// The domain UUID.
    pub uuid: String,
}

impl VmKey {
    /// The key of `endpoint`'s domain `uuid`.
    pub fn new(endpoint: impl Into<String>, uuid: impl Into<String>) -> Self {
        VmKey { endpoint: endpoint.into(), uuid: uuid.into() }
    }
}

impl VmSnapshot {
    /// Its key.
    pub fn key(&self) -> VmKey {
        VmKey::new(self.endpoint.clone(), self.uuid.clone())
    }
}

/// Two or more live domains claiming one namespace/name: only the first discovered is
/// exported (the others would duplicate its series); none replaces another.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Conflict {
    /// The namespace/name claimed.
    #[serde(flatten)]
    pub id: VmId,
    /// The claimants, first discovered (the one exported) first: (endpoint, domain, uuid).
    pub claimants: Vec<Claimant>,
}

/// One domain claiming a namespace/name.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Claimant {
    /// libvirt endpoint URI.
    pub endpoint: String,
    /// libvirt domain name.
    pub domain: String,
    /// libvirt domain UUID.
    pub uuid: String,
}

#[derive(Debug, Default)]
struct Vms {
    by_key: BTreeMap<VmKey, Arc<VmSnapshot>>,
    /// Who claims each namespace/name, in discovery order: the first is exported.
    by_id: BTreeMap<VmId, Vec<VmKey>>,
}

/// Told of every change to a VM, after the store's lock is released (the collector
/// encodes the VM's series then, so a scrape need not).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// `key`'s VM was inserted or one of its sources published.
    fn changed(&self, key: &VmKey, vm: &VmSnapshot);
    /// `key`'s VM left the store.
    fn removed(&self, key: &VmKey);
}

/// The store.
#[derive(Debug)]
pub struct Store {
    vms: RwLock<Vms>,
    endpoints: RwLock<BTreeMap<String, EndpointStatus>>,
    /// KubeVirt mode: not ready before the first scan for launchers.
    awaiting_scan: std::sync::atomic::AtomicBool,
    /// Set once the first discovery pass ended: ready from then on, whatever VMs do.
    ready_latched: std::sync::atomic::AtomicBool,
    /// KubeVirt mode, after a scan: launcher daemons accepted, untrusted, over the cap.
    launchers: std::sync::Mutex<Option<LauncherCounts>>,
    /// The last revision handed out.
    revision: AtomicU64,
    /// Told of every change, when set.
    observer: std::sync::OnceLock<std::sync::Weak<dyn Observer>>,
}

/// What the last launcher scan found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LauncherCounts {
    /// Trusted and polled.
    pub accepted: usize,
    /// Rejected: no virt-launcher parent in its container, or no KubeVirt launcher layout.
    pub untrusted: usize,
    /// Trusted, past `kubevirt.max_launchers`.
    pub over_cap: usize,
}

impl Store {
    /// An empty store that expects the given endpoints (readiness waits for each of them).
    pub fn new<'a>(endpoints: impl IntoIterator<Item = &'a str>) -> Self {
        let endpoints = endpoints
            .into_iter()
            .map(|u| (u.to_owned(), EndpointStatus { uri: u.to_owned(), ..Default::default() }))
            .collect();
        Store {
            vms: RwLock::new(Vms::default()),
            endpoints: RwLock::new(endpoints),
            awaiting_scan: std::sync::atomic::AtomicBool::new(false),
            ready_latched: std::sync::atomic::AtomicBool::new(false),
            launchers: std::sync::Mutex::new(None),
            revision: AtomicU64::new(0),
            observer: std::sync::OnceLock::new(),
        }
    }

    /// Tells `observer` of every change from now on (the first observer set stays).
    pub fn observe(&self, observer: std::sync::Weak<dyn Observer>) {
        let _ = self.observer.set(observer);
    }

    fn notify(&self, f: impl FnOnce(&dyn Observer)) {
        if let Some(o) = self.observer.get().and_then(std::sync::Weak::upgrade) {
            f(o.as_ref());
        }
    }

    fn next_revision(&self) -> u64 {
        self.revision.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// A store for KubeVirt mode: endpoints come from scans; not ready before the first one.
    pub fn for_launchers() -> Self {
        let s = Store::new([]);
        s.awaiting_scan.store(true, Ordering::Release);
        s
    }

    /// A launcher scan found these daemons.
    pub fn launchers_scanned(&self, accepted: usize, untrusted: usize, over_cap: usize) {
        *self.launchers.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(LauncherCounts { accepted, untrusted, over_cap });
    }

    /// What the last launcher scan found (KubeVirt mode only).
    pub fn launcher_counts(&self) -> Option<LauncherCounts> {
        *self.launchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The first launcher scan finished.
    pub fn scanned(&self) {
        self.awaiting_scan.store(false, Ordering::Release);
    }

    /// Starts tracking an endpoint found by a scan.
    pub fn add_endpoint(&self, uri: &str) {
        let mut eps = self.endpoints.write().unwrap_or_else(PoisonError::into_inner);
        eps.entry(uri.to_owned()).or_insert_with(|| EndpointStatus { uri: uri.to_owned(), ..Default::default() });
    }

    /// Stops tracking an endpoint that went away.
    pub fn remove_endpoint(&self, uri: &str) {
        self.endpoints.write().unwrap_or_else(PoisonError::into_inner).remove(uri);
    }

    /// Adds (or replaces, for the same key) a VM. When another live domain already claims its
    /// namespace/name, both are kept, the earlier one stays the one exported, and a warning
    /// says so.
    pub fn insert_vm(&self, vm: VmSnapshot) {
        let key = vm.key();
        let mut vms = self.vms.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = vms.by_key.get(&key).map(|v| v.id.clone()) {
            if old != vm.id {
                Self::unclaim(&mut vms.by_id, &old, &key);
            }
        }
        let claims = vms.by_id.entry(vm.id.clone()).or_default();
        if !claims.contains(&key) {
            claims.push(key.clone());
        }
        if claims.len() > 1 {
            let owner = &claims[0];
            tracing::warn!(
                namespace = %vm.id.namespace, name = %vm.id.name,
                domain = %vm.domain, uri = %key.endpoint, uuid = %key.uuid,
                exported_uri = %owner.endpoint, exported_uuid = %owner.uuid,
                "two live domains claim one namespace/name; the first discovered stays exported"
            );
        }
        let mut vm = vm;
        vm.revision = self.next_revision();
        let vm = Arc::new(vm);
        vms.by_key.insert(key.clone(), vm.clone());
        drop(vms);
        self.notify(|o| o.changed(&key, &vm));
    }

    fn unclaim(by_id: &mut BTreeMap<VmId, Vec<VmKey>>, id: &VmId, key: &VmKey) {
        if let Some(claims) = by_id.get_mut(id) {
            claims.retain(|k| k != key);
            if claims.is_empty() {
                by_id.remove(id);
            }
        }
    }

    /// Removes the VM `key` (never another domain that claims the same namespace/name).
    pub fn remove_vm(&self, key: &VmKey) {
        let mut vms = self.vms.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(vm) = vms.by_key.remove(key) {
            Self::unclaim(&mut vms.by_id, &vm.id, key);
        }
        drop(vms);
        self.notify(|o| o.removed(key));
    }

    /// Publishes a source's new state for the VM `key`; ignored if the VM is gone.
    pub fn publish(&self, key: &VmKey, kind: SourceKind, state: Arc<SourceSnapshot>) {
        let mut vms = self.vms.write().unwrap_or_else(PoisonError::into_inner);
        let revision = self.next_revision();
        let Some(vm) = vms.by_key.get_mut(key) else { return };
        let v = Arc::make_mut(vm);
        v.sources.insert(kind, state);
        v.revision = revision;
        let vm = vm.clone();
        drop(vms);
        self.notify(|o| o.changed(key, &vm));
    }

    /// The exported VMs, one per namespace/name (the first discovered of its claimants),
    /// ordered by namespace and name.
    pub fn vms(&self) -> Vec<Arc<VmSnapshot>> {
        let vms = self.vms.read().unwrap_or_else(PoisonError::into_inner);
        vms.by_id.values().filter_map(|claims| claims.first().and_then(|k| vms.by_key.get(k)).cloned()).collect()
    }

    /// Every VM, conflicting claimants included, ordered by key.
    pub fn all_vms(&self) -> Vec<Arc<VmSnapshot>> {
        self.vms.read().unwrap_or_else(PoisonError::into_inner).by_key.values().cloned().collect()
    }

    /// The exported VM of a namespace/name.
    pub fn vm(&self, id: &VmId) -> Option<Arc<VmSnapshot>> {
        let vms = self.vms.read().unwrap_or_else(PoisonError::into_inner);
        vms.by_id.get(id).and_then(|c| c.first()).and_then(|k| vms.by_key.get(k)).cloned()
    }

    /// The VM `key`, exported or not.
    pub fn vm_by_key(&self, key: &VmKey) -> Option<Arc<VmSnapshot>> {
        self.vms.read().unwrap_or_else(PoisonError::into_inner).by_key.get(key).cloned()
    }

    /// How many namespace/names more than one live domain claims.
    pub fn conflict_count(&self) -> usize {
        self.vms.read().unwrap_or_else(PoisonError::into_inner).by_id.values().filter(|c| c.len() > 1).count()
    }

    /// Every namespace/name claimed by more than one live domain.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let vms = self.vms.read().unwrap_or_else(PoisonError::into_inner);
        vms.by_id
            .iter()
            .filter(|(_, c)| c.len() > 1)
            .map(|(id, claims)| Conflict {
                id: id.clone(),
                claimants: claims
                    .iter()
                    .map(|k| Claimant {
                        endpoint: k.endpoint.clone(),
                        domain: vms.by_key.get(k).map(|v| v.domain.clone()).unwrap_or_default(),
                        uuid: k.uuid.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Every endpoint's status.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.endpoints.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// Records a successful listing of `uri`.
    pub fn endpoint_listed(&self, uri: &str, domains: usize) {
        let mut eps = self.endpoints.write().unwrap_or_else(PoisonError::into_inner);
        let e =
            eps.entry(uri.to_owned()).or_insert_with(|| EndpointStatus { uri: uri.to_owned(), ..Default::default() });
        e.up = true;
        e.listed_once = true;
        e.attempted = true;
        e.last_listed_at = Some(now_unix());
        e.domains = domains;
        e.last_error = None;
    }

    /// Records how the pollers' connections to `uri` stand and whether the daemon is saturated.
    pub fn endpoint_health(
        &self,
        uri: &str,
        connections: crate::source::libvirt::endpoint::LaneView,
        saturated_since: Option<f64>,
    ) {
        let mut eps = self.endpoints.write().unwrap_or_else(PoisonError::into_inner);
        let e =
            eps.entry(uri.to_owned()).or_insert_with(|| EndpointStatus { uri: uri.to_owned(), ..Default::default() });
        e.connections = connections;
        e.saturated_since = saturated_since;
    }

    /// Records a failed connect or listing of `uri`.
    pub fn endpoint_failed(&self, uri: &str, error: String) {
        let mut eps = self.endpoints.write().unwrap_or_else(PoisonError::into_inner);
        let e =
            eps.entry(uri.to_owned()).or_insert_with(|| EndpointStatus { uri: uri.to_owned(), ..Default::default() });
        if e.up || e.last_error.as_deref() != Some(error.as_str()) {
            tracing::warn!(uri, %error, "libvirt endpoint unavailable");
        }
        e.up = false;
        e.attempted = true;
        e.last_error = Some(error);
    }

    /// Ready means "vmbridge can serve": once the first discovery pass has ended (the launcher
    /// scan in KubeVirt mode, and a first connect-and-list attempt of every endpoint known
    /// then, whether it succeeded or not), and from then on for good. A hung VM, launcher or
    /// daemon shows in metrics (`vmbridge_endpoint_up`, `vmbridge_source_up`) and alerts,
    /// never in readiness: one hung VM must not turn the pod NotReady and stall a rollout.
    pub fn ready(&self) -> Result<(), Vec<String>> {
        if self.ready_latched.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.awaiting_scan.load(Ordering::Acquire) {
            return Err(vec!["the first scan for KubeVirt launchers".to_owned()]);
        }
        let pending: Vec<String> = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|e| !e.attempted)
            .map(|e| e.uri.clone())
            .collect();
        if pending.is_empty() {
            self.ready_latched.store(true, Ordering::Release);
            Ok(())
        } else {
            Err(pending)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(endpoint: &str, uuid: &str, domain: &str, at: f64) -> VmSnapshot {
        VmSnapshot {
            id: crate::vm::VmId::from_domain(domain, crate::vm::DomainNaming::Auto, "default"),
            domain: domain.into(),
            uuid: uuid.into(),
            endpoint: endpoint.into(),
            discovered_at: at,
            sources: BTreeMap::new(),
            revision: 0,
        }
    }

    fn names(store: &Store) -> Vec<(String, String)> {
        store.vms().iter().map(|v| (v.domain.clone(), v.uuid.clone())).collect()
    }

    #[test]
    fn two_domains_claiming_one_name_are_kept_apart_and_the_first_stays_exported() {
        let store = Store::new([]);
        // `webprod1` (plain) and `default_webprod1` (KubeVirt-style) are both default/webprod1.
        store.insert_vm(snap("qemu:///system", "u1", "webprod1", 1.0));
        store.insert_vm(snap("qemu:///system", "u2", "default_webprod1", 2.0));
        assert_eq!(store.all_vms().len(), 2, "neither replaced the other");
        assert_eq!(names(&store), [("webprod1".to_owned(), "u1".to_owned())], "the first keeps the series");
        let c = store.conflicts();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].claimants.iter().map(|c| c.uuid.as_str()).collect::<Vec<_>>(), ["u1", "u2"]);
        // Publishing into the second never touches the first.
        let id = store.vm_by_key(&VmKey::new("qemu:///system", "u1")).expect("first").id.clone();
        assert!(store.vm(&id).is_some_and(|v| v.uuid == "u1"));
        // The second goes away: the first is untouched, and the conflict is over.
        store.remove_vm(&VmKey::new("qemu:///system", "u2"));
        assert_eq!(names(&store), [("webprod1".to_owned(), "u1".to_owned())]);
        assert!(store.conflicts().is_empty());
    }

    #[test]
    fn a_late_removed_from_an_old_endpoint_never_deletes_the_live_vm() {
        let store = Store::new([]);
        // A launcher whose URI changed: the new endpoint reports the domain before the old one
        // reports it gone.
        store.insert_vm(snap("old:///", "u1", "ns_vm", 1.0));
        store.insert_vm(snap("new:///", "u1", "ns_vm", 2.0));
        assert_eq!(store.vms().len(), 1, "one exported");
        store.remove_vm(&VmKey::new("old:///", "u1"));
        let left = store.vms();
        assert_eq!(left.len(), 1, "the live VM is still exported");
        assert_eq!(left[0].endpoint, "new:///");
        // Removing a key twice, or one never seen, changes nothing.
        store.remove_vm(&VmKey::new("old:///", "u1"));
        store.remove_vm(&VmKey::new("nowhere", "u9"));
        assert_eq!(store.vms().len(), 1);
    }

    #[test]
    fn when_the_exported_claimant_goes_the_next_one_is_exported() {
        let store = Store::new([]);
        store.insert_vm(snap("a", "u1", "ns_vm", 1.0));
        store.insert_vm(snap("b", "u2", "ns_vm", 2.0));
        store.insert_vm(snap("c", "u3", "ns_vm", 3.0));
        assert_eq!(store.conflicts()[0].claimants.len(), 3);
        store.remove_vm(&VmKey::new("a", "u1"));
        assert_eq!(names(&store), [("ns_vm".to_owned(), "u2".to_owned())]);
        // Re-inserting a key (rediscovery) keeps its place and adds no claimant.
        store.insert_vm(snap("b", "u2", "ns_vm", 4.0));
        assert_eq!(store.conflicts()[0].claimants.len(), 2);
        assert_eq!(names(&store), [("ns_vm".to_owned(), "u2".to_owned())]);
    }

    #[test]
    fn ready_after_the_first_pass_whatever_the_endpoints_do_then() {
        let store = Store::new(["qemu:///system", "qemu+unix:///system?socket=/nonexistent"]);
        assert!(store.ready().is_err(), "nothing attempted yet");
        store.endpoint_listed("qemu:///system", 3);
        assert_eq!(store.ready(), Err(vec!["qemu+unix:///system?socket=/nonexistent".to_owned()]));
        // A URI whose socket does not exist: its first attempt failed, and that ends the pass.
        store.endpoint_failed("qemu+unix:///system?socket=/nonexistent", "no such file".into());
        assert_eq!(store.ready(), Ok(()));
        // Later failures (a hung daemon, a restart) and new launchers do not take it back.
        store.endpoint_failed("qemu:///system", "list: no answer for 1s".into());
        store.add_endpoint("launcher:///new");
        assert_eq!(store.ready(), Ok(()));
    }

    #[test]
    fn kubevirt_mode_waits_for_the_first_scan_only() {
        let store = Store::for_launchers();
        assert!(store.ready().is_err());
        store.scanned();
        store.add_endpoint("launcher:///a");
        assert!(store.ready().is_err(), "the launcher found by the first scan is attempted first");
        store.endpoint_failed("launcher:///a", "hung".into());
        assert_eq!(store.ready(), Ok(()));
    }

    #[test]
    fn publishing_into_a_vm_that_is_gone_is_ignored() {
        let store = Store::new([]);
        store.insert_vm(snap("a", "u1", "vm", 1.0));
        let key = VmKey::new("a", "u1");
        store.remove_vm(&key);
        let breaker = crate::breaker::Breaker::new(crate::breaker::BreakerConfig::default());
        let state = SourceSnapshot::fresh(breaker.view(tokio::time::Instant::now()), Arc::new(AtomicU64::new(0)));
        store.publish(&key, SourceKind::Libvirt, Arc::new(state));
        assert!(store.all_vms().is_empty());
    }
}
