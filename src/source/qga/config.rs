//! The guest-agent source's configuration: the `[qga]` section as written, and validated. The
//! keys of `[qga.periods]` and their defaults come from `commands::COMMANDS`.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::GuestLimits;
use super::commands::{COMMANDS, by_key};
use super::poller::QgaSettings;
use crate::config::validate::Check;

/// How the guest agent is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QgaTransportKind {
    /// `virDomainQemuAgentCommand` on a read-write libvirt connection (libvirt owns the channel).
    Libvirt,
    /// A direct Unix socket per VM, from `qga.socket_pattern`.
    Socket,
}

/// `[qga]`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QgaFileConfig {
    /// Poll guest agents at all. Default true.
    pub enabled: Option<bool>,
    /// Default `socket` when `socket_pattern` is set, else `libvirt`.
    pub transport: Option<QgaTransportKind>,
    /// Socket path per VM, with `{domain}`, `{namespace}` and `{name}` replaced, e.g.
    /// `/run/vms/{domain}.qga`.
    pub socket_pattern: Option<String>,
    /// Deadline per agent command. Default `5s`.
    pub timeout: Option<String>,
    /// Largest agent reply accepted, in bytes; a larger one fails that call (the poll, when it is
    /// the ping's or the agent answers no ping after it). Default 1048576.
    pub max_reply_bytes: Option<usize>,
    /// Poll period per command.
    #[serde(default)]
    pub periods: QgaPeriodsFile,
    /// Per-VM caps on what a guest can make vmbridge export.
    #[serde(default)]
    pub limits: QgaLimitsFile,
    /// A `guest-ping` slower than this makes the guest heartbeat `agent_slow`. Default `1s`
    /// (half `qga.timeout` when that is shorter); below `qga.timeout`.
    pub heartbeat_slow: Option<String>,
    /// This many libvirt polls in a row in which a running domain's vCPUs used no time (and for
    /// at least 30 s), while its agent does not answer, make the guest heartbeat
    /// `guest_stalled`. Default 3; 0 turns that check off.
    pub heartbeat_stalled_polls: Option<u32>,
    /// VMs whose guest agent is never called (not even `guest-ping`): globs on
    /// `namespace/name`, e.g. `["tenant-a/*", "*/db-*"]`. On a plain libvirt host a domain can
    /// also opt out itself, with `<vmbridge:agent xmlns:vmbridge="urn:vmbridge:1" poll="off"/>`
    /// in its metadata. Default none.
    pub exclude: Option<Vec<String>>,
    /// Agent calls per VM per minute (pings, `guest-info` and every command); when spent, due
    /// commands wait for a later poll, whose `guest-ping` goes first. Part of it is kept for
    /// the ping of each `poll.interval`. Default: twice what the configured periods and
    /// `poll.interval` take, at least 120.
    pub max_calls_per_minute: Option<u32>,
}

/// `[qga.periods]`: a duration per command, keyed as in `commands::COMMANDS`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct QgaPeriodsFile(pub BTreeMap<String, String>);

impl JsonSchema for QgaPeriodsFile {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "QgaPeriodsFile".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let properties: serde_json::Map<String, serde_json::Value> = COMMANDS
            .iter()
            .map(|c| {
                let default = humantime::format_duration(c.period);
                let description = format!("`{}` ({}). Default `{default}`.", c.name(), c.about);
                (c.key.to_owned(), serde_json::json!({ "description": description, "type": ["string", "null"] }))
            })
            .collect();
        schemars::json_schema!({
            "description": "`[qga.periods]`: durations per command.",
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        })
    }
}

/// `[qga.limits]`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QgaLimitsFile {
    /// Filesystems per VM. Default 64.
    pub filesystems: Option<usize>,
    /// Network interfaces per VM. Default 32.
    pub interfaces: Option<usize>,
    /// IP addresses per VM. Default 64.
    pub addresses: Option<usize>,
    /// Disks per VM. Default 64.
    pub disks: Option<usize>,
    /// CPUs per VM. Default 512.
    pub cpus: Option<usize>,
    /// Longest label value from a guest, in bytes. Default 128.
    pub label_bytes: Option<usize>,
    /// Series one VM's guest data may add (filesystems, interfaces, addresses, disks, CPUs);
    /// items past it are left out and counted as dropped. Default 2000.
    pub series: Option<usize>,
}

/// Validated guest-agent settings.
#[derive(Debug, Clone, PartialEq)]
pub struct QgaRuntime {
    /// Poll agents at all.
    pub enabled: bool,
    /// Transport for libvirt-discovered VMs.
    pub transport: QgaTransportKind,
    /// Socket pattern for the socket transport.
    pub socket_pattern: Option<String>,
    /// Per-command settings.
    pub poll: QgaSettings,
    /// VMs that opted out by config (`qga.exclude`).
    pub exclude: super::optout::Exclude,
}

impl QgaRuntime {
    /// The socket path of a VM, from the pattern.
    pub fn socket_for(&self, domain: &str, id: &crate::vm::VmId) -> Option<std::path::PathBuf> {
        self.socket_pattern.as_ref().map(|p| crate::config::validate::expand_socket_pattern(p, domain, id))
    }
}

/// Validates `[qga]`; `interval` is `poll.interval` (a ping each), `selection` the families
/// exported (a command feeding none is not sent).
pub fn validate(
    q: &QgaFileConfig,
    check: &mut Check,
    interval: Duration,
    selection: &crate::model::metric::Selection,
) -> QgaRuntime {
    let timeout = check.duration("qga.timeout", &q.timeout, Duration::from_secs(5));
    for key in q.periods.0.keys().filter(|k| by_key(k).is_none()) {
        let known: Vec<&str> = COMMANDS.iter().map(|c| c.key).collect();
        check.err(&format!("qga.periods.{key}"), format!("is not a polled command (known: {})", known.join(", ")));
    }
    let periods: BTreeMap<String, Duration> = COMMANDS
        .iter()
        .map(|c| {
            let field = format!("qga.periods.{}", c.key);
            (c.key.to_owned(), check.duration(&field, &q.periods.0.get(c.key).cloned(), c.period))
        })
        .collect();
    let budget = budget(q.max_calls_per_minute, interval, &periods, check);
    let max_reply_bytes = q.max_reply_bytes.unwrap_or(1 << 20);
    if !(4096..=64 << 20).contains(&max_reply_bytes) {
        check.err("qga.max_reply_bytes", "must be between 4096 and 67108864");
    }
    let defaults = GuestLimits::default();
    let mut limit = |field: &str, v: Option<usize>, default: usize, min: usize| {
        let v = v.unwrap_or(default);
        if v < min || v > 100_000 {
            check.err(&format!("qga.limits.{field}"), format!("must be between {min} and 100000"));
        }
        v
    };
    let limits = GuestLimits {
        filesystems: limit("filesystems", q.limits.filesystems, defaults.filesystems, 1),
        interfaces: limit("interfaces", q.limits.interfaces, defaults.interfaces, 1),
        addresses: limit("addresses", q.limits.addresses, defaults.addresses, 1),
        disks: limit("disks", q.limits.disks, defaults.disks, 1),
        cpus: limit("cpus", q.limits.cpus, defaults.cpus, 1),
        label_bytes: limit("label_bytes", q.limits.label_bytes, defaults.label_bytes, 16),
        series: limit("series", q.limits.series, defaults.series, 16),
    };
    let transport = q.transport.unwrap_or(if q.socket_pattern.is_some() {
        QgaTransportKind::Socket
    } else {
        QgaTransportKind::Libvirt
    });
    if transport == QgaTransportKind::Socket && q.socket_pattern.is_none() {
        check.err("qga.socket_pattern", "is required when qga.transport is \"socket\"");
    }
    check.socket_pattern("qga.socket_pattern", &q.socket_pattern);
    let defaults = crate::source::qga::poller::Bounds::default();
    // By default 1 s, or half the command deadline when that is shorter.
    let slow_default = Duration::from_secs_f64(defaults.slow_seconds).min(timeout / 2);
    let slow = check.duration("qga.heartbeat_slow", &q.heartbeat_slow, slow_default);
    if q.heartbeat_slow.is_some() && slow >= timeout {
        check.err("qga.heartbeat_slow", "must be below qga.timeout (a ping that slow times out)");
    }
    let stalled_polls = q.heartbeat_stalled_polls.unwrap_or(defaults.stalled_polls);
    if stalled_polls > 1000 {
        check.err("qga.heartbeat_stalled_polls", "must be at most 1000");
    }
    let heartbeat = crate::source::qga::poller::Bounds { slow_seconds: slow.as_secs_f64(), stalled_polls };
    let exclude =
        super::optout::Exclude::new(q.exclude.as_deref().unwrap_or_default()).unwrap_or_else(|(field, problem)| {
            check.err(&field, problem);
            super::optout::Exclude::default()
        });
    QgaRuntime {
        enabled: q.enabled.unwrap_or(true),
        transport,
        socket_pattern: q.socket_pattern.clone(),
        poll: QgaSettings {
            timeout,
            max_reply_bytes,
            periods,
            limits,
            heartbeat,
            budget,
            selection: selection.clone(),
        },
        exclude,
    }
}

/// `qga.max_calls_per_minute`: by default twice what the periods need (at least 120); a set
/// value must leave room beyond the pings.
fn budget(
    set: Option<u32>,
    interval: Duration,
    periods: &BTreeMap<String, Duration>,
    check: &mut Check,
) -> super::cost::BudgetSettings {
    use super::cost::BudgetSettings;
    let ping_reserve = BudgetSettings::pings_per_minute(interval);
    let needed = BudgetSettings::needed(interval, periods.values().copied());
    let max_calls_per_minute = set.unwrap_or_else(|| needed.saturating_mul(2).max(120));
    if set.is_some() && !(ping_reserve.saturating_add(1)..=1_000_000).contains(&max_calls_per_minute) {
        check.err(
            "qga.max_calls_per_minute",
            format!(
                "must be between {} and 1000000: a guest-ping every poll.interval ({}) takes {ping_reserve} a minute, \
                 and other commands need room beyond them (the configured periods take {needed})",
                ping_reserve + 1,
                humantime::format_duration(interval)
            ),
        );
    }
    BudgetSettings { max_calls_per_minute, ping_reserve }
}
