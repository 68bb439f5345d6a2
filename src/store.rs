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
use crate::source::{ErrorKind, SourceKind, SourceSample};
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
}

/// The state of one configured libvirt endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct EndpointStatus {
    /// libvirt URI.
    pub uri: String,
    /// Whether the last connect/list succeeded.
    pub up: bool,
    /// Whether discovery has listed this endpoint at least once (readiness).
    pub listed_once: bool,
    /// When it was last listed, seconds since the Unix epoch.
    pub last_listed_at: Option<f64>,
    /// Running domains at the last listing.
    pub domains: usize,
    /// The last connect or list error.
    pub last_error: Option<String>,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    vms: RwLock<BTreeMap<VmId, Arc<VmSnapshot>>>,
    endpoints: RwLock<BTreeMap<String, EndpointStatus>>,
    /// KubeVirt mode: not ready before the first scan for launchers.
    awaiting_scan: std::sync::atomic::AtomicBool,
}

impl Store {
    /// An empty store that expects the given endpoints (readiness waits for each of them).
    pub fn new<'a>(endpoints: impl IntoIterator<Item = &'a str>) -> Self {
        let endpoints = endpoints
            .into_iter()
            .map(|u| (u.to_owned(), EndpointStatus { uri: u.to_owned(), ..Default::default() }))
            .collect();
        Store {
            vms: RwLock::new(BTreeMap::new()),
            endpoints: RwLock::new(endpoints),
            awaiting_scan: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A store for KubeVirt mode: endpoints come from scans; not ready before the first one.
    pub fn for_launchers() -> Self {
        let s = Store::new([]);
        s.awaiting_scan.store(true, Ordering::Release);
        s
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

    /// Adds (or replaces) a VM.
    pub fn insert_vm(&self, vm: VmSnapshot) {
        self.vms.write().unwrap_or_else(PoisonError::into_inner).insert(vm.id.clone(), Arc::new(vm));
    }

    /// Removes a VM if it still is the domain `uuid` (two endpoints may reuse a name).
    pub fn remove_vm(&self, id: &VmId, uuid: &str) {
        let mut vms = self.vms.write().unwrap_or_else(PoisonError::into_inner);
        if vms.get(id).is_some_and(|v| v.uuid == uuid) {
            vms.remove(id);
        }
    }

    /// Publishes a source's new state for the domain `uuid`; ignored if the VM is gone.
    pub fn publish(&self, id: &VmId, uuid: &str, kind: SourceKind, state: Arc<SourceSnapshot>) {
        let mut vms = self.vms.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(vm) = vms.get_mut(id).filter(|v| v.uuid == uuid) {
            Arc::make_mut(vm).sources.insert(kind, state);
        }
    }

    /// Every VM, ordered by namespace and name.
    pub fn vms(&self) -> Vec<Arc<VmSnapshot>> {
        self.vms.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// One VM.
    pub fn vm(&self, id: &VmId) -> Option<Arc<VmSnapshot>> {
        self.vms.read().unwrap_or_else(PoisonError::into_inner).get(id).cloned()
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
        e.last_listed_at = Some(now_unix());
        e.domains = domains;
        e.last_error = None;
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
        e.last_error = Some(error);
    }

    /// Ready once every configured endpoint has been listed at least once and is up now.
    pub fn ready(&self) -> Result<(), Vec<String>> {
        if self.awaiting_scan.load(Ordering::Acquire) {
            return Err(vec!["the first scan for KubeVirt launchers".to_owned()]);
        }
        let not_ready: Vec<String> = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|e| !(e.listed_once && e.up))
            .map(|e| e.uri.clone())
            .collect();
        if not_ready.is_empty() { Ok(()) } else { Err(not_ready) }
    }
}
