//! The scrape path: a `prometheus-client` `Collector` that encodes the snapshot store and
//! nothing else. `encode` is synchronous and pure: no I/O, no locks held while encoding, no
//! waiting on any VM. Each source encodes its own families ([`crate::source::api::Source::encode`]);
//! here are the helpers they share, the event and migration families (which come from one of
//! two sources per VM, `events`) and vmbridge's own health (`bridge`).

pub mod bridge;
pub mod events;
pub mod expo;

use std::sync::Arc;
use std::time::Duration;

use crate::model::metric::Selection;
use crate::store::Store;

/// What `vmbridge_build_info` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// Crate version.
    pub version: &'static str,
    /// Git revision the binary was built from, or `unknown`.
    pub revision: &'static str,
    /// rustc version.
    pub rustc: &'static str,
}

impl BuildInfo {
    /// This binary's build information (captured by `build.rs`).
    pub fn current() -> Self {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            revision: env!("VMBRIDGE_GIT_REVISION"),
            rustc: env!("VMBRIDGE_RUSTC_VERSION"),
        }
    }
}

pub use crate::source::api::ExportOptions;

/// The collector.
#[derive(Debug)]
pub struct VmCollector {
    store: Arc<Store>,
    node: String,
    staleness: Duration,
    build: BuildInfo,
    options: ExportOptions,
    selection: Selection,
    http: Arc<crate::http::limits::HttpStats>,
    cache: expo::Cache,
}

impl VmCollector {
    /// A collector over `store`. Data older than `staleness` is no longer exported.
    pub fn new(store: Arc<Store>, node: String, staleness: Duration) -> Self {
        VmCollector {
            store,
            node,
            staleness,
            build: BuildInfo::current(),
            options: ExportOptions::default(),
            selection: Selection::default(),
            http: Arc::default(),
            cache: expo::Cache::default(),
        }
    }

    /// With the export options (`export_all_known`, `keep_ephemeral`).
    pub fn with_options(mut self, options: ExportOptions) -> Self {
        self.options = options;
        self
    }

    /// Exporting only the families `selection` includes (profile and groups).
    pub fn with_selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// Exporting these HTTP listener figures.
    pub fn with_http(mut self, http: Arc<crate::http::limits::HttpStats>) -> Self {
        self.http = http;
        self
    }

    /// The reply budget its bodies are charged to (shared with every HTTP reply).
    pub fn reply_budget(&self) -> &crate::http::budget::ReplyBudget {
        &self.http.budget
    }

    /// Shared, and told by `store` of every change, so a VM is encoded when its sources
    /// publish rather than at scrape time.
    pub fn observing(self) -> Arc<Self> {
        let me = Arc::new(self);
        let observer: Arc<dyn crate::store::Observer> = me.clone();
        me.store.observe(Arc::downgrade(&observer));
        me
    }
}

#[cfg(test)]
mod tests;
