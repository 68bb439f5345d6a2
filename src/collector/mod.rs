//! The scrape path: a `prometheus-client` [`Collector`] that encodes the snapshot store and
//! nothing else. `encode` is synchronous and pure: no I/O, no locks held while encoding, no
//! waiting on any VM. Each source encodes its own families ([`crate::source::Source::encode`]);
//! here are the helpers they share, the event and migration families (which come from one of
//! two sources per VM, `events`) and vmbridge's own health (`bridge`).

pub(crate) mod bridge;
pub(crate) mod events;
pub mod expo;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use crate::catalogue::{self, Kind, MetricDef, Selection};
use crate::source::{Source, SourceKind};
use crate::store::{SourceSnapshot, Store, VmSnapshot};

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

/// How absent and ended values are exported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Every per-VM family for every VM, NaN where the value is absent.
    pub export_all_known: bool,
    /// Keep the last migration values after the job ends.
    pub keep_ephemeral: bool,
    /// Every bridge-health series (`--health-detail`): each breaker state, error kind and
    /// transition reason at zero too, poll counts and durations. Off: at most three series
    /// per VM and source while all is well (see `collector::bridge`).
    pub health_detail: bool,
}

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

/// One VM as the encoders see it: its labels and, per source, its fresh sample.
pub struct VmView<'a> {
    pub(crate) vm: &'a VmSnapshot,
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) node: &'a str,
    now: f64,
    staleness: f64,
    /// `export_all_known`: absent per-VM values are written as NaN.
    pub(crate) all_known: bool,
    /// `keep_ephemeral`: the last migration stays exported after it ended.
    pub(crate) keep_ephemeral: bool,
    /// `health_detail`: bridge-health counters at zero too.
    pub(crate) health_detail: bool,
}

impl<'a> VmView<'a> {
    fn new(vm: &'a VmSnapshot, node: &'a str, now: f64, staleness: Duration, opts: ExportOptions) -> Self {
        VmView {
            vm,
            namespace: &vm.id.namespace,
            name: &vm.id.name,
            node,
            now,
            staleness: staleness.as_secs_f64(),
            all_known: opts.export_all_known,
            keep_ephemeral: opts.keep_ephemeral,
            health_detail: opts.health_detail,
        }
    }

    /// Source `S`'s sample of this VM, when it is within the staleness window.
    pub fn sample<S: Source>(&self) -> Option<&'a S::Sample> {
        let s: &'a SourceSnapshot = self.vm.sources.get(&S::KIND)?;
        let fresh = s.last_success_at.is_some_and(|t| self.now - t <= self.staleness);
        fresh.then_some(s.sample.as_deref()).flatten().and_then(S::sample)
    }

    /// The `drive` label of a disk QEMU or libvirt names by its device id (`ua-rootdisk`,
    /// `virtio-disk0`, or a QOM path `/machine/peripheral/<id>/…`): the label libvirt's sample
    /// gives the disk with that alias, so every family labels a disk alike; without one, the
    /// id with a user alias's `ua-` removed.
    pub fn drive_label(&self, id: &'a str) -> &'a str {
        let id = id.strip_prefix("/machine/peripheral/").map_or(id, |rest| rest.split('/').next().unwrap_or(rest));
        let libvirt = self.sample::<crate::source::libvirt::Libvirt>();
        if let Some(b) = libvirt.and_then(|l| l.parsed.blocks.iter().find(|b| b.alias.as_deref() == Some(id))) {
            return b.label();
        }
        crate::source::libvirt::aliases::user_name(id).unwrap_or(id)
    }

    /// Whether source `kind` runs for this VM (fresh or not).
    pub fn runs(&self, kind: SourceKind) -> bool {
        self.vm.sources.contains_key(&kind)
    }
}

/// Where the encoders write: sample lines, one run per family, and which families the
/// exposition is to contain. The headers (`# HELP`, `# TYPE`, `# UNIT`) are not written here:
/// [`expo`] adds them once per family at scrape time, in the format the scraper asked for.
pub struct Out<'a> {
    buf: &'a mut String,
    selection: &'a Selection,
    /// (catalogue slot, start offset in `buf`) of each family run, in the order written.
    runs: Vec<(u16, u32)>,
}

impl<'a> Out<'a> {
    pub(crate) fn new(buf: &'a mut String, selection: &'a Selection) -> Self {
        Out { buf, selection, runs: Vec::with_capacity(expo::layout().len()) }
    }
}

/// A family being written (`buf` is `None` for a family the selection leaves out: its
/// samples are dropped).
pub(crate) struct Family<'s> {
    buf: Option<&'s mut String>,
    def: &'static MetricDef,
    /// The name its samples carry (`…_total`, `…_info`, unit suffix).
    name: &'static str,
}

impl Family<'_> {
    /// Writes one sample. `labels` must follow `def.all_labels()` (checked in debug builds).
    pub(crate) fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> std::fmt::Result {
        debug_assert!(
            labels.iter().map(|(k, _)| *k).eq(self.def.all_labels()),
            "labels of {} do not match the catalogue",
            self.def.name
        );
        let Some(buf) = self.buf.as_deref_mut() else { return Ok(()) };
        expo::write_sample(buf, self.name, labels, self.def.kind, value);
        Ok(())
    }

    /// Writes one per-VM sample: the VM's labels, then `extra`, when `value` is present.
    pub(crate) fn vm_sample(
        &mut self,
        vm: &VmView<'_>,
        extra: &[(&str, &str)],
        value: Option<f64>,
    ) -> std::fmt::Result {
        if self.buf.is_none() {
            return Ok(());
        }
        // With `export_all_known`, an absent value of a family without extra labels is written
        // as NaN ("no value"), never as zero.
        let value = match value {
            Some(v) => v,
            None if vm.all_known && extra.is_empty() && self.def.kind != Kind::Info => f64::NAN,
            None => return Ok(()),
        };
        let mut labels: [(&str, &str); 8] = [("", ""); 8];
        let mut n = 0;
        for l in [("namespace", vm.namespace), ("name", vm.name)] {
            labels[n] = l;
            n += 1;
        }
        if self.def.scope == catalogue::Scope::Vm {
            labels[n] = ("node", vm.node);
            n += 1;
        }
        if n + extra.len() > labels.len() {
            let mut all: Vec<(&str, &str)> = labels[..n].to_vec();
            all.extend_from_slice(extra);
            return self.sample(&all, value);
        }
        labels[n..n + extra.len()].copy_from_slice(extra);
        self.sample(&labels[..n + extra.len()], value)
    }
}

/// Starts a family from its catalogue entry (nothing is written for one the selection leaves
/// out).
pub(crate) fn family<'s>(out: &'s mut Out<'_>, def: &'static MetricDef) -> Result<Family<'s>, std::fmt::Error> {
    let layout = expo::layout();
    let Some(slot) = layout.slot(def) else {
        debug_assert!(false, "{} is not in the catalogue", def.name);
        return Ok(Family { buf: None, def, name: "" });
    };
    if !out.selection.includes(def) {
        return Ok(Family { buf: None, def, name: "" });
    }
    out.runs.push((slot, out.buf.len() as u32));
    Ok(Family { buf: Some(&mut *out.buf), def, name: layout.sample_name(slot) })
}

/// Nanoseconds to seconds.
pub(crate) fn ns(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64 / 1e9)
}

/// KiB to bytes.
pub(crate) fn kib(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64 * 1024.0)
}

/// A plain count or byte value.
pub(crate) fn num(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}

#[cfg(test)]
mod tests;
