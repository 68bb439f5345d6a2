//! The scrape path: a `prometheus-client` [`Collector`] that encodes the snapshot store and
//! nothing else. `encode` is synchronous and pure: no I/O, no locks held while encoding, no
//! waiting on any VM. Each source encodes its own families ([`crate::source::Source::encode`]);
//! here are the helpers they share, the event and migration families (which come from one of
//! two sources per VM, `events`) and vmbridge's own health (`bridge`).

pub(crate) mod bridge;
pub(crate) mod events;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::catalogue::{self, Kind, MetricDef, Selection};
use crate::clock::now_unix;
use crate::source::{Source, SourceKind, Visit};
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

    /// A registry holding only this collector.
    pub fn into_registry(self) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        registry
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

/// Where the encoders write: the exposition, and which families it is to contain.
pub struct Out<'a, 'w> {
    enc: &'a mut DescriptorEncoder<'w>,
    selection: &'a Selection,
}

/// A family being written (`me` is `None` for a family the selection leaves out: its samples
/// are dropped).
pub(crate) struct Family<'s> {
    me: Option<MetricEncoder<'s>>,
    def: &'static MetricDef,
}

impl Family<'_> {
    /// Writes one sample. `labels` must follow `def.all_labels()` (checked in debug builds).
    pub(crate) fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> std::fmt::Result {
        debug_assert!(
            labels.iter().map(|(k, _)| *k).eq(self.def.all_labels()),
            "labels of {} do not match the catalogue",
            self.def.name
        );
        let Some(me) = self.me.as_mut() else { return Ok(()) };
        match self.def.kind {
            Kind::Counter => me.encode_family(&labels)?.encode_counter::<NoLabelSet, f64, f64>(&value, None),
            Kind::Gauge => me.encode_family(&labels)?.encode_gauge(&value),
            Kind::Info => me.encode_info(&labels),
        }
    }

    /// Writes one per-VM sample: the VM's labels, then `extra`, when `value` is present.
    pub(crate) fn vm_sample(
        &mut self,
        vm: &VmView<'_>,
        extra: &[(&str, &str)],
        value: Option<f64>,
    ) -> std::fmt::Result {
        if self.me.is_none() {
            return Ok(());
        }
        // With `export_all_known`, an absent value of a family without extra labels is written
        // as NaN ("no value"), never as zero.
        let value = match value {
            Some(v) => v,
            None if vm.all_known && extra.is_empty() && self.def.kind != Kind::Info => f64::NAN,
            None => return Ok(()),
        };
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(3 + extra.len());
        labels.extend([("namespace", vm.namespace), ("name", vm.name)]);
        if self.def.scope == catalogue::Scope::Vm {
            labels.push(("node", vm.node));
        }
        labels.extend_from_slice(extra);
        self.sample(&labels, value)
    }
}

/// Starts a family from its catalogue entry (nothing is written for one the selection leaves
/// out).
pub(crate) fn family<'s>(out: &'s mut Out<'_, '_>, def: &'static MetricDef) -> Result<Family<'s>, std::fmt::Error> {
    if !out.selection.includes(def) {
        return Ok(Family { me: None, def });
    }
    static SECONDS: Unit = Unit::Seconds;
    static BYTES: Unit = Unit::Bytes;
    let unit = def.unit.map(|u| match u {
        catalogue::Unit::Seconds => &SECONDS,
        catalogue::Unit::Bytes => &BYTES,
    });
    let ty = match def.kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
        Kind::Info => MetricType::Info,
    };
    let me = out.enc.encode_descriptor(def.name, def.help, unit, ty)?;
    Ok(Family { me: Some(me), def })
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

impl Collector for VmCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let vms = self.store.vms();
        let now = now_unix();
        let views: Vec<VmView<'_>> =
            vms.iter().map(|vm| VmView::new(vm, &self.node, now, self.staleness, self.options)).collect();
        /// Each source's families, in [`SourceKind::ALL`] order; the first error stops it.
        struct Encode<'e, 'o, 'a, 'w, 'v> {
            out: &'e mut Out<'a, 'w>,
            views: &'o [VmView<'v>],
            result: std::fmt::Result,
        }
        impl Visit for Encode<'_, '_, '_, '_, '_> {
            fn visit<S: Source>(&mut self) {
                if self.result.is_ok() {
                    self.result = S::encode(self.out, self.views);
                }
            }
        }
        let mut out = Out { enc: &mut encoder, selection: &self.selection };
        let mut each = Encode { out: &mut out, views: &views, result: Ok(()) };
        for kind in SourceKind::ALL {
            kind.visit(&mut each);
        }
        each.result?;
        events::encode(&mut out, &views)?;
        let endpoints = self.store.endpoints();
        let node = bridge::NodeView {
            endpoints: &endpoints,
            conflicts: self.store.conflict_count(),
            node: &self.node,
            build: &self.build,
            http: &self.http,
            launchers: self.store.launcher_counts(),
        };
        bridge::encode(&mut out, &views, &node)
    }
}

#[cfg(test)]
mod tests;
