//! The libvirt source: one long-lived read-only connection per daemon (`endpoint`), domain
//! discovery (`discovery`), and per-domain polling of bulk stats and memory stats (`poller`),
//! all through bounded blocking slots (`blocking`). `ffi` holds the only `unsafe` code.

pub mod aliases;
pub mod blocking;
pub mod discovery;
mod encode;
pub mod endpoint;
pub mod errors;
pub mod families;
pub mod ffi;
pub mod launchers;
pub mod memstats;
pub mod merge;
pub mod poller;
pub mod stats;

use std::collections::BTreeMap;

use serde::Serialize;

pub use ffi::ParamValue;
pub use stats::DomainSample;

/// What one successful libvirt poll returned: the parsed sample plus the raw data it came
/// from, kept for the debug endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct LibvirtSample {
    /// Parsed values, in libvirt's units.
    pub parsed: DomainSample,
    /// Every bulk-stats typed parameter, as libvirt named it.
    pub params: BTreeMap<String, ParamValue>,
    /// The guest's memory statistics by `virsh dommemstat` tag name (from the balloon group,
    /// which carries the figures of the same QEMU query as `virDomainMemoryStats`).
    pub memory_stats: BTreeMap<String, u64>,
    /// The current or last completed job (migration, save, dump), from `virDomainGetJobStats`.
    pub job: Option<crate::source::events::Migration>,
    /// That job's raw typed parameters.
    pub job_params: BTreeMap<String, ParamValue>,
    /// When vmbridge first saw the last job completed, seconds since the Unix epoch.
    pub job_completed_at: Option<f64>,
    /// Domain events counted from libvirt's event API since discovery.
    pub events: crate::source::events::EventCounts,
    /// Values libvirt left out of this answer (`NOWAIT` skipped them while another client held
    /// the domain's job) and that were carried from their last observation, per stats group.
    pub carried: BTreeMap<String, usize>,
    /// Answers that needed such carrying since discovery, per stats group
    /// (`vmbridge_source_partial_total`).
    pub partial_total: BTreeMap<String, u64>,
    /// Polls in a row, up to this one, in which the domain was running and its vCPUs' summed
    /// time (`vcpu.N.time`, else `cpu.time`) did not advance: the guest heartbeat's
    /// `guest_stalled` (see [`crate::heartbeat`]).
    pub vcpu_idle_polls: u32,
    /// Whether the guest's balloon statistics are current, and so exported
    /// (`vmbridge_guest_memory_stats`); `None` when not judged.
    pub guest_memory: Option<memstats::GuestMemoryStats>,
    /// Impossible guest memory figures withheld since discovery: counts and the last raw
    /// values (`vmbridge_guest_values_rejected_total`; raw values in KiB as libvirt gives them).
    pub rejected: crate::source::reject::Rejections,
}

impl LibvirtSample {
    /// Builds the sample from the raw call results.
    /// `memory_stats` (`virDomainMemoryStats` tags) overlays the balloon group when given.
    pub fn new(params: Vec<(String, ParamValue)>, memory_stats: Vec<(u32, u64)>) -> Self {
        let parsed = DomainSample::from_libvirt(&params, &memory_stats);
        let mut by_tag: BTreeMap<String, u64> =
            params.iter().filter_map(|(k, v)| Some((stats::balloon_key_tag(k)?.to_owned(), v.as_u64()?))).collect();
        by_tag.extend(memory_stats.into_iter().map(|(t, v)| (stats::memory_stat_name(t).to_owned(), v)));
        LibvirtSample {
            parsed,
            params: params.into_iter().collect(),
            memory_stats: by_tag,
            job: None,
            job_params: BTreeMap::new(),
            job_completed_at: None,
            events: Default::default(),
            carried: BTreeMap::new(),
            partial_total: BTreeMap::new(),
            vcpu_idle_polls: 0,
            guest_memory: None,
            rejected: Default::default(),
        }
    }
}

/// The libvirt source.
#[derive(Debug)]
pub enum Libvirt {}

/// The libvirt source's per-VM settings (its deadlines are the `[poll]` ones; its
/// connections are discovery's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LibvirtSettings {
    /// How `drive` and `interface` are labelled (`libvirt.device_labels`).
    pub device_labels: aliases::DeviceLabels,
}

impl crate::source::api::Source for Libvirt {
    const KIND: crate::source::SourceKind = crate::source::SourceKind::Libvirt;
    type Sample = LibvirtSample;
    type Settings = LibvirtSettings;
    type Poller = poller::LibvirtPoller;

    fn settings(all: &crate::source::Sources) -> &LibvirtSettings {
        &all.libvirt
    }

    fn sample(sample: &crate::source::SourceSample) -> Option<&LibvirtSample> {
        match sample {
            crate::source::SourceSample::Libvirt(l) => Some(l),
            _ => None,
        }
    }

    /// Every VM a libvirt daemon reported.
    fn poller(vm: &crate::source::VmStart<'_>, settings: &LibvirtSettings) -> Option<poller::LibvirtPoller> {
        let p = vm.poll;
        Some(poller::LibvirtPoller::new(
            vm.endpoint?.clone(),
            vm.uuid.to_owned(),
            vm.limiter.clone(),
            p.timeout,
            p.hard_timeout,
            p.carry_window,
            settings.device_labels,
        ))
    }

    fn families() -> Vec<&'static crate::model::metric::MetricDef> {
        encode::families()
    }

    fn encode(enc: &mut crate::model::exposition::Out<'_>, vms: &[crate::source::api::VmView<'_>]) -> std::fmt::Result {
        encode::encode(enc, vms)
    }
}

/// The `drive` label of a disk QEMU or libvirt names by its device id (`ua-rootdisk`,
/// `virtio-disk0`, or a QOM path `/machine/peripheral/<id>/…`): the label libvirt's sample
/// gives the disk with that alias, so every family labels a disk alike; without one, the
/// id with a user alias's `ua-` removed.
pub fn drive_label<'a>(vm: &crate::source::api::VmView<'a>, id: &'a str) -> &'a str {
    let id = id.strip_prefix("/machine/peripheral/").map_or(id, |rest| rest.split('/').next().unwrap_or(rest));
    let libvirt = vm.sample::<Libvirt>();
    if let Some(b) = libvirt.and_then(|l| l.parsed.blocks.iter().find(|b| b.alias.as_deref() == Some(id))) {
        return b.label();
    }
    aliases::user_name(id).unwrap_or(id)
}
