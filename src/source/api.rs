//! What a source implements and what its encoder sees: the [`Source`] trait, the [`Visit`]or
//! the registry ([`super::visit`]) calls once per source type, and [`VmView`], one VM as
//! the encoders see it (labels and each source's fresh sample).

use std::time::Duration;

use super::{Poller, SourceSample, Sources, VmStart};
use crate::model::exposition::{Out, VmLabels};
use crate::model::metric::MetricDef;
use crate::source::SourceKind;
use crate::store::{SourceSnapshot, VmSnapshot};

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

/// Something done once per source type (see [`super::visit`]).
pub trait Visit {
    /// Called with the source's type.
    fn visit<S: Source>(&mut self);
}

/// One source: one module owning its settings, its sample, its poller, its families and
/// their encoder.
pub trait Source: 'static {
    /// Which one.
    const KIND: SourceKind;
    /// Its per-VM sample (inside [`SourceSample`]).
    type Sample: 'static;
    /// Its validated settings.
    type Settings: 'static;
    /// Its poller.
    type Poller: Poller;
    /// Its settings among all sources'.
    fn settings(all: &Sources) -> &Self::Settings;
    /// Its sample, if `sample` is one.
    fn sample(sample: &SourceSample) -> Option<&Self::Sample>;
    /// The poller for `vm`, when this source applies to it.
    fn poller(vm: &VmStart<'_>, settings: &Self::Settings) -> Option<Self::Poller>;
    /// Its metric families, in the order `encode` writes them.
    fn families() -> Vec<&'static MetricDef>;
    /// Writes its families for `vms` (each VM's fresh sample: [`VmView::sample`]).
    fn encode(enc: &mut Out<'_>, vms: &[VmView<'_>]) -> std::fmt::Result;
}

/// One VM as the encoders see it: its labels and, per source, its fresh sample.
pub struct VmView<'a> {
    /// Its labels (and `export_all_known`); the view derefs to them.
    pub labels: VmLabels<'a>,
    pub(crate) vm: &'a VmSnapshot,
    /// When the view was taken (seconds since the epoch).
    pub(crate) now: f64,
    /// The staleness window, seconds.
    pub(crate) staleness: f64,
    /// `keep_ephemeral`: the last migration stays exported after it ended.
    pub(crate) keep_ephemeral: bool,
    /// `health_detail`: bridge-health counters at zero too.
    pub(crate) health_detail: bool,
}

impl<'a> VmView<'a> {
    /// `vm` as seen at `now`, with samples older than `staleness` left out.
    pub fn new(vm: &'a VmSnapshot, node: &'a str, now: f64, staleness: Duration, opts: ExportOptions) -> Self {
        VmView {
            labels: VmLabels { namespace: &vm.id.namespace, name: &vm.id.name, node, all_known: opts.export_all_known },
            vm,
            now,
            staleness: staleness.as_secs_f64(),
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

    /// Whether source `kind` runs for this VM (fresh or not).
    pub fn runs(&self, kind: SourceKind) -> bool {
        self.vm.sources.contains_key(&kind)
    }
}

impl<'a> std::ops::Deref for VmView<'a> {
    type Target = VmLabels<'a>;

    fn deref(&self) -> &VmLabels<'a> {
        &self.labels
    }
}
