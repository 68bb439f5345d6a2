//! The scrape path: a `prometheus-client` [`Collector`] that encodes the snapshot store and
//! nothing else. `encode` is synchronous and pure: no I/O, no locks held while encoding, no
//! waiting on any VM. Families are grouped in one file per group (`core`, `hypervisor`,
//! `bridge`), each writing the catalogue entries it owns.

mod bridge;
mod core;
mod guest;
mod hypervisor;
mod qmp;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::catalogue::{self, Kind, MetricDef};
use crate::clock::now_unix;
use crate::source::libvirt::DomainSample;
use crate::source::qga::QgaSample;
use crate::source::qmp::{EventCounts, Migration, QmpSample};
use crate::source::{SourceKind, SourceSample};
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

/// Seed 003's normalisation options.
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
}

impl VmCollector {
    /// A collector over `store`. Data older than `staleness` is no longer exported.
    pub fn new(store: Arc<Store>, node: String, staleness: Duration) -> Self {
        VmCollector { store, node, staleness, build: BuildInfo::current(), options: ExportOptions::default() }
    }

    /// With the export options (`export_all_known`, `keep_ephemeral`).
    pub fn with_options(mut self, options: ExportOptions) -> Self {
        self.options = options;
        self
    }

    /// A registry holding only this collector.
    pub fn into_registry(self) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        registry
    }
}

/// One VM as the encoders see it: its labels and its fresh samples.
pub(crate) struct VmView<'a> {
    pub(crate) vm: &'a VmSnapshot,
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) node: &'a str,
    /// The libvirt sample, when one exists and is within the staleness window.
    pub(crate) libvirt: Option<&'a DomainSample>,
    /// The guest-agent sample, when fresh.
    pub(crate) qga: Option<&'a QgaSample>,
    /// The QMP sample, when fresh.
    pub(crate) qmp: Option<&'a QmpSample>,
    /// The migration to export (QMP's view for a VM with a QMP source, else libvirt's job
    /// stats), honouring `keep_ephemeral`, and when the last one completed.
    pub(crate) migration: Option<(&'a Migration, Option<f64>)>,
    /// Domain events from libvirt's event API (only for a VM without a QMP source).
    pub(crate) libvirt_events: Option<&'a EventCounts>,
    /// The infra process sample, when fresh.
    pub(crate) processes: Option<&'a crate::source::process::ProcessSample>,
    /// `export_all_known`: absent per-VM values are written as NaN.
    pub(crate) all_known: bool,
}

impl<'a> VmView<'a> {
    fn new(vm: &'a VmSnapshot, node: &'a str, now: f64, staleness: Duration, opts: ExportOptions) -> Self {
        let fresh = |s: &'a SourceSnapshot| {
            s.last_success_at
                .is_some_and(|t| now - t <= staleness.as_secs_f64())
                .then_some(s.sample.as_deref())
                .flatten()
        };
        let source = |k: SourceKind| vm.sources.get(&k).and_then(|s| fresh(s));
        let libvirt = source(SourceKind::Libvirt).and_then(|s| match s {
            SourceSample::Libvirt(l) => Some(&l.parsed),
            _ => None,
        });
        let qga = source(SourceKind::Qga).and_then(|s| match s {
            SourceSample::Qga(q) => Some(q),
            _ => None,
        });
        let qmp = source(SourceKind::Qmp).and_then(|s| match s {
            SourceSample::Qmp(q) => Some(q),
            _ => None,
        });
        // Event counters and migration data come from one source per VM, fixed for its life:
        // the direct QMP monitor when the VM has one configured, else libvirt. Switching to
        // libvirt while QMP is stale would make `…_total` counters jump or go backwards (two
        // sources count from different starts); a stale QMP source's series are absent instead.
        let qmp_owned = vm.sources.contains_key(&SourceKind::Qmp);
        let libvirt_events = source(SourceKind::Libvirt).filter(|_| !qmp_owned).and_then(|s| match s {
            SourceSample::Libvirt(l) => Some(&l.events),
            _ => None,
        });
        let libvirt_job = source(SourceKind::Libvirt).filter(|_| !qmp_owned).and_then(|s| match s {
            SourceSample::Libvirt(l) => l.job.as_ref().map(|j| (j, l.job_completed_at)),
            _ => None,
        });
        let migration = qmp
            .and_then(|q| q.migration.as_ref().map(|m| (m, q.migration_last_completed_at)))
            .or(libvirt_job)
            .filter(|(m, _)| m.active || opts.keep_ephemeral);
        let processes = source(SourceKind::Process).and_then(|s| match s {
            SourceSample::Process(p) => Some(p),
            _ => None,
        });
        VmView {
            vm,
            namespace: &vm.id.namespace,
            name: &vm.id.name,
            node,
            libvirt,
            qga,
            qmp,
            migration,
            processes,
            libvirt_events,
            all_known: opts.export_all_known,
        }
    }
}

/// A family being written.
pub(crate) struct Family<'s> {
    me: MetricEncoder<'s>,
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
        match self.def.kind {
            Kind::Counter => self.me.encode_family(&labels)?.encode_counter::<NoLabelSet, f64, f64>(&value, None),
            Kind::Gauge => self.me.encode_family(&labels)?.encode_gauge(&value),
            Kind::Info => self.me.encode_info(&labels),
        }
    }

    /// Writes one per-VM sample: the VM's labels, then `extra`, when `value` is present.
    pub(crate) fn vm_sample(
        &mut self,
        vm: &VmView<'_>,
        extra: &[(&str, &str)],
        value: Option<f64>,
    ) -> std::fmt::Result {
        // With `export_all_known`, an absent value of a family without extra labels is written
        // as NaN ("no value"), never as zero.
        let value = match value {
            Some(v) => v,
            None if vm.all_known && extra.is_empty() && self.def.kind != Kind::Info => f64::NAN,
            None => return Ok(()),
        };
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(3 + extra.len());
        labels.extend([("namespace", vm.namespace), ("name", vm.name), ("node", vm.node)]);
        labels.extend_from_slice(extra);
        self.sample(&labels, value)
    }
}

/// Starts a family from its catalogue entry.
pub(crate) fn family<'s>(
    enc: &'s mut DescriptorEncoder<'_>,
    def: &'static MetricDef,
) -> Result<Family<'s>, std::fmt::Error> {
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
    let me = enc.encode_descriptor(def.name, def.help, unit, ty)?;
    Ok(Family { me, def })
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
        core::encode(&mut encoder, &views)?;
        hypervisor::encode(&mut encoder, &views)?;
        qmp::encode(&mut encoder, &views)?;
        guest::encode(&mut encoder, &views)?;
        bridge::encode(
            &mut encoder,
            &views,
            &self.store.endpoints(),
            self.store.conflict_count(),
            &self.node,
            &self.build,
        )
    }
}

#[cfg(test)]
mod tests;
