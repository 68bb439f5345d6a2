//! Every guest-agent command vmbridge polls, each declared in one place, in the file of its
//! family (`fsinfo`, `network`, `identity`, `cpu`, `diskstats`, `agent`): its allow-list entry
//! (`allow_list!`), its `[qga.periods]` key and default period, how its reply is parsed into
//! [`GuestData`], and the metric families it feeds with their encoder. [`COMMANDS`] lists them
//! in polling order. Adding a command is one block in its family's file and its line in
//! [`COMMANDS`] (and its field in [`GuestData`] if it brings new data): the config section, the JSON Schema, the
//! poller, the catalogue and `docs/METRICS.md` follow from it. A block left out of
//! [`COMMANDS`] is dead code, which the build rejects (`clippy -D warnings`); a request type
//! left out of `allow_list!` does not compile.
//!
//! Everything in a reply is the tenant's: counts are capped (extra items are counted as
//! dropped, not exported), label values are cleaned and shortened ([`label()`]), users are
//! counted but not named.

use std::time::Duration;

use qapi::qga;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::allow::{AgentRequest, allow_list};
use super::guest::{
    Address, CpuStats, DiskStats, Dropped, Filesystem, GuestDisk, GuestLimits, Interface, InterfaceStats, MAX_FS_DISKS,
    OsInfo, count_drop, opt_label, typed,
};
use super::{Qga, label};
use crate::model::exposition::{Family, family as start, num};
use crate::model::metric::{B, MetricDef, N, S, family};
use crate::source::api::VmView;
use crate::source::reject::{
    self, BYTES, Context, MAX_BYTES, MAX_LOAD, MAX_VCPUS, Reason, Rejected, Rejections, Rule, Test, at_most, finite,
    not_negative, rule,
};

mod agent;
mod cpu;
mod diskstats;
mod fsinfo;
mod identity;
mod network;

use agent::{INFO, MEMORY_BLOCK_INFO};
pub use cpu::{GUEST_LOAD_1M, GUEST_LOAD_5M, GUEST_LOAD_15M, GUEST_VCPUS, GUEST_VCPUS_ONLINE};
use cpu::{CPUSTATS, LOAD, VCPUS};
pub use cpu::{GuestGetLoad, GuestLoadInfo};
use diskstats::{DISK, DISKSTATS};
pub use fsinfo::{FS_CAPACITY, FS_USED};
use fsinfo::{FS, FSINFO};
use identity::{HOSTNAME, OSINFO, TIMEZONE, USERS};
use network::{NET, NETWORK};

/// Applies a successful reply (the `return` value) to the VM's data, within the caps; items
/// left out are counted in [`Dropped`], impossible values pushed to the `Vec<Rejected>`.
pub type Parse = fn(&mut GuestData, &Value, &GuestLimits, &mut Dropped, &mut Vec<Rejected>) -> Result<(), String>;

/// One polled guest-agent command.
#[derive(Debug, Clone, Copy)]
pub struct Command {
    /// Its key under `[qga.periods]` and in `/debug`.
    pub key: &'static str,
    /// What it tells, for the docs.
    pub about: &'static str,
    /// Builds its request (only allow-listed commands can be built).
    pub request: fn() -> AgentRequest,
    /// Its default period.
    pub period: Duration,
    /// Applies a successful reply to the VM's data; impossible values ([`crate::source::reject`])
    /// are left out and pushed to the last argument.
    pub parse: Parse,
    /// The families it feeds, in the order `encode` writes them.
    pub families: &'static [&'static MetricDef],
    /// Writes them.
    pub encode: fn(&mut crate::model::exposition::Out<'_>, &[VmView<'_>]) -> std::fmt::Result,
    /// Fields of its reply that are personal data: never kept, not even in `/debug`'s raw view.
    pub private: &'static [&'static str],
}

/// What `/debug` may show of a reply: its private fields (at any depth) replaced.
pub fn shown(command: &Command, reply: &Value) -> Value {
    fn redact(v: &mut Value, private: &[&str]) {
        match v {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if private.contains(&k.as_str()) {
                        *v = Value::String("<redacted>".into());
                    } else {
                        redact(v, private);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| redact(v, private)),
            _ => {}
        }
    }
    let mut v = reply.clone();
    redact(&mut v, command.private);
    v
}

impl Command {
    /// The command's wire name (`guest-get-fsinfo`).
    pub fn name(&self) -> &'static str {
        (self.request)().name()
    }
}

/// Every polled command, in polling order (`guest-info` is run first, and again on its own
/// period, by the poller).
pub const COMMANDS: [Command; 12] =
    [FSINFO, NETWORK, USERS, OSINFO, VCPUS, LOAD, DISKSTATS, CPUSTATS, TIMEZONE, HOSTNAME, MEMORY_BLOCK_INFO, INFO];

/// Every command name vmbridge can send to a guest agent: the protocol's and the polled ones.
pub fn allowed() -> Vec<&'static str> {
    let mut names =
        vec![AgentRequest::new(qga::guest_sync { id: 0 }).name(), AgentRequest::new(qga::guest_ping {}).name()];
    names.extend(COMMANDS.iter().map(Command::name));
    names
}

/// The command with config key `key`.
pub fn by_key(key: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.key == key)
}

/// Everything parsed from the agent, each part replaced when its command succeeds again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct GuestData {
    /// Agent version (`guest-info`).
    pub agent_version: Option<String>,
    /// Filesystems (`guest-get-fsinfo`).
    pub filesystems: Option<Vec<Filesystem>>,
    /// Interfaces (`guest-network-get-interfaces`).
    pub interfaces: Option<Vec<Interface>>,
    /// Logical CPUs the guest knows (`guest-get-vcpus`).
    pub vcpus_total: Option<u64>,
    /// Of those, online.
    pub vcpus_online: Option<u64>,
    /// OS (`guest-get-osinfo`).
    pub os: Option<OsInfo>,
    /// Host name (`guest-get-host-name`).
    pub hostname: Option<String>,
    /// Logged-in users (`guest-get-users`), counted, not named.
    pub users: Option<u64>,
    /// Offset from UTC in seconds (`guest-get-timezone`).
    pub timezone_offset_seconds: Option<i64>,
    /// Load averages (`guest-get-load`).
    pub load: Option<GuestLoadInfo>,
    /// Disk counters (`guest-get-diskstats`).
    pub disks: Option<Vec<DiskStats>>,
    /// CPU counters (`guest-get-cpustats`).
    pub cpus: Option<Vec<CpuStats>>,
    /// Memory block size in bytes (`guest-get-memory-block-info`).
    pub memory_block_size_bytes: Option<u64>,
}

impl GuestData {
    /// Applies a successful reply of the command named `command` (its `return` value). Its
    /// impossible values are left out and recorded in `rejected` (only when the reply as a
    /// whole was usable).
    pub fn apply(
        &mut self,
        command: &str,
        reply: &Value,
        lim: &GuestLimits,
        dropped: &mut Dropped,
        rejected: &mut Rejections,
    ) -> Result<(), String> {
        let c = COMMANDS.iter().find(|c| c.name() == command).ok_or_else(|| format!("no parser for {command}"))?;
        let mut pending = Vec::new();
        (c.parse)(self, reply, lim, dropped, &mut pending)?;
        rejected.record_all(pending);
        self.fit_series(lim.series, dropped);
        Ok(())
    }

    /// Series the item lists add: per filesystem 3 (capacity, used, drive), per interface 8 (with counters) and 1
    /// per address, per disk 10, per CPU one per mode.
    pub fn series(&self) -> usize {
        let fs = self.filesystems.as_ref().map_or(0, |f| f.len() * (FS.len() + 1));
        let ifs = self
            .interfaces
            .as_ref()
            .map_or(0, |i| i.iter().map(|i| i.addresses.len() + if i.stats.is_some() { NET.len() } else { 0 }).sum());
        let disks = self.disks.as_ref().map_or(0, |d| d.len() * DISK.len());
        let cpus = self.cpus.as_ref().map_or(0, |c| c.iter().map(|c| c.modes.len()).sum());
        fs + ifs + disks + cpus
    }

    /// Keeps [`Self::series`] within `budget` by leaving out items from the end, the
    /// last-polled lists first (CPUs, disks, interfaces, filesystems); each is counted as
    /// dropped.
    fn fit_series(&mut self, budget: usize, dropped: &mut Dropped) {
        fn pop<T>(list: &mut Option<Vec<T>>, kind: &str, dropped: &mut Dropped) -> bool {
            let popped = list.as_mut().and_then(Vec::pop).is_some();
            if popped {
                count_drop(dropped, kind, 1);
            }
            popped
        }
        while self.series() > budget {
            if !(pop(&mut self.cpus, "cpu", dropped)
                || pop(&mut self.disks, "disk", dropped)
                || pop(&mut self.interfaces, "interface", dropped)
                || pop(&mut self.filesystems, "filesystem", dropped))
            {
                return;
            }
        }
    }
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn data<'a>(vm: &VmView<'a>) -> Option<&'a GuestData> {
    vm.sample::<Qga>().map(|q| &q.data)
}

/// One series per VM of `def`, from `get`.
fn per_vm(f: &mut Family<'_>, vms: &[VmView<'_>], get: fn(&GuestData) -> Option<f64>) -> std::fmt::Result {
    for vm in vms {
        f.vm_sample(vm, &[], data(vm).and_then(get))?;
    }
    Ok(())
}

/// Milliseconds to seconds.
fn ms(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64 / 1000.0)
}

/// 512-byte sectors to bytes.
fn sectors(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64 * 512.0)
}

/// Every rule for the agent's values, checked in this order for a family; the first that fails rejects the value.
pub const RULES: [Rule; 20] = [
    // guest-get-fsinfo
    finite(&FS_CAPACITY),
    not_negative(&FS_CAPACITY),
    at_most(&FS_CAPACITY, MAX_BYTES, BYTES),
    finite(&FS_USED),
    not_negative(&FS_USED),
    at_most(&FS_USED, MAX_BYTES, BYTES),
    rule(&FS_USED, Reason::UsedOverCapacity, Test::AtMostLimit, "<= total-bytes of the same filesystem"),
    // guest-get-load
    finite(&GUEST_LOAD_1M),
    not_negative(&GUEST_LOAD_1M),
    at_most(&GUEST_LOAD_1M, MAX_LOAD, "<= 4194304 (PID_MAX_LIMIT: every task runnable)"),
    finite(&GUEST_LOAD_5M),
    not_negative(&GUEST_LOAD_5M),
    at_most(&GUEST_LOAD_5M, MAX_LOAD, "<= 4194304 (PID_MAX_LIMIT: every task runnable)"),
    finite(&GUEST_LOAD_15M),
    not_negative(&GUEST_LOAD_15M),
    at_most(&GUEST_LOAD_15M, MAX_LOAD, "<= 4194304 (PID_MAX_LIMIT: every task runnable)"),
    // guest-get-vcpus (counted from the reply's list)
    finite(&GUEST_VCPUS),
    at_most(&GUEST_VCPUS, MAX_VCPUS, "<= 4096 (KVM_MAX_VCPUS)"),
    finite(&GUEST_VCPUS_ONLINE),
    at_most(&GUEST_VCPUS_ONLINE, MAX_VCPUS, "<= 4096 (KVM_MAX_VCPUS)"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, FileConfig};

    #[test]
    fn each_command_has_one_key_one_name_and_is_reachable_through_its_key() {
        let mut keys = std::collections::BTreeSet::new();
        let mut names = std::collections::BTreeSet::new();
        for c in COMMANDS {
            assert!(keys.insert(c.key), "key {} twice", c.key);
            assert!(names.insert(c.name()), "command {} twice", c.name());
            assert_eq!(by_key(c.key).map(Command::name), Some(c.name()));
            assert!(!c.period.is_zero(), "{} has no period", c.key);
        }
        assert_eq!(names.len(), COMMANDS.len());
    }

    #[test]
    fn every_family_belongs_to_exactly_one_command() {
        let mut seen = std::collections::BTreeMap::new();
        for c in COMMANDS {
            for f in c.families {
                assert_eq!(seen.insert(f.name, c.key), None, "{} declared by two commands", f.name);
            }
        }
        // Every guest family in the catalogue comes from a command (or is the cap counter).
        for f in crate::catalogue::all().iter().filter(|f| f.group == crate::model::metric::Group::Guest) {
            assert!(seen.contains_key(f.name), "{} is a guest family no command declares", f.name);
        }
    }

    #[test]
    fn user_names_never_reach_the_raw_view() {
        let users = by_key("users").expect("users");
        let reply = serde_json::json!([{"user": "alice", "domain": "CORP", "login-time": 1.5}, {"user": "bob"}]);
        let text = shown(users, &reply).to_string();
        assert!(!text.contains("alice") && !text.contains("bob") && !text.contains("CORP"), "{text}");
        assert!(text.contains("login-time"), "{text}");
        // Other commands are shown as they came.
        let fs = serde_json::json!([{"name": "vda1", "mountpoint": "/"}]);
        assert_eq!(shown(by_key("fsinfo").expect("fsinfo"), &fs), fs);
    }

    #[test]
    fn periods_come_from_the_commands_and_unknown_keys_are_named() {
        let cfg = FileConfig::parse("[qga.periods]\nfsinfo = \"7s\"\n").expect("parses");
        let s = cfg.validate("n").expect("valid");
        let periods = &s.sources.qga.poll.periods;
        assert_eq!(periods.get("fsinfo"), Some(&Duration::from_secs(7)));
        for c in COMMANDS.iter().filter(|c| c.key != "fsinfo") {
            assert_eq!(periods.get(c.key), Some(&c.period), "{}", c.key);
        }
        let cfg = FileConfig::parse("[qga.periods]\nfsinfoo = \"7s\"\nload = \"0s\"\n").expect("parses");
        let Err(ConfigError::Invalid(errs)) = cfg.validate("n") else { panic!("must be invalid") };
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["qga.periods.fsinfoo", "qga.periods.load"], "{errs:?}");
        assert!(errs[0].problem.contains("known: fsinfo, network"), "{}", errs[0].problem);
    }
}
