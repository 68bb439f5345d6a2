//! The guest source (`qga`): what only the qemu-guest-agent knows — filesystems, IP addresses,
//! vCPUs online, OS, users, load, guest disk and CPU counters — behind its own breaker per VM,
//! since the agent is where guests hang (absent during boot, stalled when the guest is busy,
//! controlled by the tenant).
//!
//! - [`commands`]: every polled command in one place each (allow-list entry, period, parser,
//!   families and encoder).
//! - [`allow`]: the read-only allow-list, enforced by type.
//! - [`transport`]: through libvirt, or a direct socket over [`crate::source::wire`].
//! - [`guest`]: the shapes of parsed replies and the per-VM caps.
//! - [`drives`]: guest filesystems joined to KubeVirt's `drive` through libvirt's disks.
//! - [`poller`]: capability discovery (`guest-info`) and per-command periods.
//! - [`cost`]: per-command back-off, the calls-per-minute budget, which commands the
//!   selection needs.
//! - [`config`]: the `[qga]` section.

pub mod allow;
pub mod commands;
pub mod config;
pub mod cost;
pub mod drives;
pub mod guest;
pub mod optout;
pub mod poller;
pub mod transport;

use std::collections::BTreeMap;

use serde::Serialize;

pub use commands::GuestData;
pub use guest::{Dropped, GuestLimits};

use crate::model::exposition::family as start;
use crate::model::label;
use crate::model::metric::{MetricDef, N, S, family};
use crate::source::SourceKind;
use crate::source::api::Source;
use crate::source::api::VmView;
use crate::source::{SourceSample, Sources, VmStart};
use transport::{LibvirtAgent, SocketAgent, Transport};

/// What vmbridge knows about one agent command of one VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CommandState {
    /// How often it is polled, in seconds.
    pub period_seconds: f64,
    /// Whether the agent reports it as supported and enabled (`None` until `guest-info` ran).
    pub supported: Option<bool>,
    /// When it last succeeded, seconds since the Unix epoch.
    pub last_ok_at: Option<f64>,
    /// The last raw reply, truncated for display.
    pub last_reply: Option<String>,
    /// Size of the last raw reply in bytes.
    pub last_reply_bytes: Option<usize>,
    /// The last error the agent returned for it.
    pub last_error: Option<String>,
    /// When it is next due, seconds since the Unix epoch.
    pub next_due_at: Option<f64>,
    /// How long its last call took, in seconds, failed or not
    /// (`vmbridge_guest_agent_command_duration_seconds`).
    pub duration_seconds: Option<f64>,
    /// Calls that failed (timeout, transport, error reply, unusable reply), since discovery.
    pub failures_total: u64,
    /// Failures in a row; 0 after a success.
    pub consecutive_failures: u32,
    /// While failing: how long it is backed off, in seconds (exponential from twice its period).
    pub backoff_seconds: Option<f64>,
    /// Not sent: every family it feeds is deselected (`--metrics-groups`, `--metrics-profile`).
    pub deselected: bool,
}

/// The guest source's sample: parsed data plus the per-command view for `/debug`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct QgaSample {
    /// `libvirt` or `socket`.
    pub transport: String,
    /// Commands the agent reports as enabled, among those vmbridge polls.
    pub supported_commands: Vec<String>,
    /// Per command.
    pub commands: BTreeMap<String, CommandState>,
    /// Parsed values.
    pub data: GuestData,
    /// Items left out by the per-VM caps since discovery, by kind.
    pub dropped: Dropped,
    /// Round-trip time of the `guest-ping` at the start of the last poll, in seconds
    /// (`vmbridge_guest_agent_rtt_seconds`).
    pub rtt_seconds: Option<f64>,
    /// The bounds the guest heartbeat is judged with (`[qga]`).
    pub heartbeat: crate::source::qga::poller::Bounds,
    /// Impossible values left out since discovery: counts and the last raw values
    /// (`vmbridge_guest_values_rejected_total`).
    pub rejected: crate::source::reject::Rejections,
    /// The calls-per-minute budget (`[qga] max_calls_per_minute`) and what waited for it.
    pub budget: cost::BudgetView,
}

/// The guest-agent source.
#[derive(Debug)]
pub enum Qga {}

family!(
    GUEST_DROPPED,
    "vmbridge_guest_items_dropped",
    Counter,
    N,
    ["kind"],
    Bridge,
    "vmbridge",
    Vm,
    "Guest items (filesystem, interface, address, disk, cpu) left out because a per-VM cap was reached since discovery. By default only kinds that occurred have a series; every kind with --health-detail."
);

family!(
    GUEST_COMMAND_DURATION,
    "vmbridge_guest_agent_command_duration",
    Gauge,
    S,
    ["command"],
    Bridge,
    "vmbridge",
    Vm,
    "Duration of the last call of each guest-agent command sent to this VM (guest-info, guest-get-*), timeouts and failures included."
);

/// The kinds of items a per-VM cap can leave out.
const DROPPED_KINDS: [&str; 5] = ["filesystem", "interface", "address", "disk", "cpu"];

impl Source for Qga {
    const KIND: SourceKind = SourceKind::Qga;
    type Sample = QgaSample;
    type Settings = config::QgaRuntime;
    type Poller = poller::QgaPoller;

    fn settings(all: &Sources) -> &config::QgaRuntime {
        &all.qga
    }

    fn sample(sample: &SourceSample) -> Option<&QgaSample> {
        match sample {
            SourceSample::Qga(q) => Some(q),
            _ => None,
        }
    }

    /// When enabled: a VM under `[[vms]]` with a `qga_socket`; a discovered VM through libvirt,
    /// or through its socket from `qga.socket_pattern`.
    fn poller(vm: &VmStart<'_>, q: &config::QgaRuntime) -> Option<poller::QgaPoller> {
        if !q.enabled {
            return None;
        }
        let max = q.poll.max_reply_bytes;
        let transport = match (vm.sockets, vm.endpoint, q.transport) {
            (Some(s), _, _) => Transport::Socket(SocketAgent::new(s.qga_socket.clone()?, max)),
            (None, Some(_), config::QgaTransportKind::Socket) => {
                Transport::Socket(SocketAgent::new(q.socket_for(vm.domain, vm.id)?, max))
            }
            (None, Some(e), config::QgaTransportKind::Libvirt) => {
                Transport::Libvirt(LibvirtAgent::new(e.clone(), vm.uuid.to_owned(), vm.limiter.clone(), max))
            }
            (None, None, _) => return None,
        };
        let gate = optout::Gate::new(vm.id, &q.exclude, vm.endpoint, vm.uuid, vm.limiter);
        let poller = poller::QgaPoller::new(transport, q.poll.clone()).with_gate(gate);
        Some(match vm.endpoint {
            Some(e) => poller.with_wake(e.agent_waker(vm.uuid)),
            None => poller,
        })
    }

    fn families() -> Vec<&'static MetricDef> {
        let mut out: Vec<&'static MetricDef> = commands::COMMANDS.iter().flat_map(|c| c.families).copied().collect();
        out.push(&GUEST_DROPPED);
        out.push(&GUEST_COMMAND_DURATION);
        out
    }

    fn encode(enc: &mut crate::model::exposition::Out<'_>, vms: &[VmView<'_>]) -> std::fmt::Result {
        for c in commands::COMMANDS {
            (c.encode)(enc, vms)?;
        }
        let mut f = start(enc, &GUEST_DROPPED)?;
        for vm in vms {
            // Counted since discovery: exported from the last sample whatever its age.
            let Some(q) = vm.vm.sources.get(&SourceKind::Qga).and_then(|s| s.sample.as_deref()).and_then(Qga::sample)
            else {
                continue;
            };
            for kind in DROPPED_KINDS {
                let n = q.dropped.get(kind).copied().unwrap_or(0);
                if vm.health_detail || n > 0 {
                    f.vm_sample(vm, &[("kind", kind)], Some(n as f64))?;
                }
            }
        }
        let mut f = start(enc, &GUEST_COMMAND_DURATION)?;
        for vm in vms {
            let Some(q) = vm.sample::<Qga>() else { continue };
            // The fixed list of polled commands, not the sample's keys: bounded whatever it holds.
            for c in commands::COMMANDS {
                let name = c.name();
                if let Some(d) = q.commands.get(name).and_then(|s| s.duration_seconds) {
                    f.vm_sample(vm, &[("command", name)], Some(d))?;
                }
            }
        }
        Ok(())
    }
}
