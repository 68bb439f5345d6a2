//! Every guest-agent command vmbridge polls, each declared in one place: its allow-list entry
//! (`allow_list!`), its `[qga.periods]` key and default period, how its reply is parsed into
//! [`GuestData`], and the metric families it feeds with their encoder. [`COMMANDS`] lists them
//! in polling order. Adding a command is one block here and its line in [`COMMANDS`] (and its
//! field in [`GuestData`] if it brings new data): the config section, the JSON Schema, the
//! poller, the catalogue and `docs/METRICS.md` follow from it. A block left out of
//! [`COMMANDS`] is dead code, which the build rejects (`clippy -D warnings`); a request type
//! left out of `allow_list!` does not compile.
//!
//! Everything in a reply is the tenant's: counts are capped (extra items are counted as
//! dropped, not exported), label values are cleaned and shortened ([`label`]), users are
//! counted but not named.

use std::time::Duration;

use qapi::qga;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::allow::{AgentRequest, allow_list};
use super::guest::{
    Address, CpuStats, DiskStats, Dropped, Filesystem, GuestLimits, Interface, InterfaceStats, OsInfo, count_drop,
    opt_label, typed,
};
use super::{Qga, label};
use crate::catalogue::{B, MetricDef, N, S, family};
use crate::collector::{Family, VmView, family as start, num};
use crate::source::reject::{self, Context, Rejected, Rejections};

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
    pub encode: fn(&mut crate::collector::Out<'_>, &[VmView<'_>]) -> std::fmt::Result,
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

    /// Series the item lists add: per filesystem 2, per interface 8 (with counters) and 1
    /// per address, per disk 10, per CPU one per mode.
    pub fn series(&self) -> usize {
        let fs = self.filesystems.as_ref().map_or(0, |f| f.len() * FS.len());
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

// ---------------------------------------------------------------------------------------------
// guest-get-fsinfo: filesystem capacity and use per mount point.

allow_list!(qga::guest_get_fsinfo);

family!(
    FS_CAPACITY,
    "kubevirt_vmi_filesystem_capacity",
    Gauge,
    B,
    ["disk_name", "mount_point", "file_system_type"],
    Guest,
    "qga guest-get-fsinfo total-bytes",
    Vm,
    "Total disk capacity of the file system."
);
family!(
    FS_USED,
    "kubevirt_vmi_filesystem_used",
    Gauge,
    B,
    ["disk_name", "mount_point", "file_system_type"],
    Guest,
    "qga guest-get-fsinfo used-bytes",
    Vm,
    "Used disk space of the file system."
);

type FsField = fn(&Filesystem) -> Option<u64>;
const FS: [(&MetricDef, FsField); 2] = [(&FS_CAPACITY, |f| f.total_bytes), (&FS_USED, |f| f.used_bytes)];

const FSINFO: Command = Command {
    key: "fsinfo",
    about: "filesystems",
    request: || AgentRequest::new(qga::guest_get_fsinfo {}),
    period: secs(30),
    // Read leniently: a newer agent may extend the disk-address enums.
    parse: |g, reply, lim, dropped, rejected| {
        let Value::Array(items) = reply else { return Err("fsinfo reply is not a list".into()) };
        let max = lim.label_bytes;
        let mut out: Vec<Filesystem> = Vec::new();
        let mut left_out = 0;
        for item in items {
            if out.len() == lim.filesystems {
                left_out += 1;
                continue;
            }
            let s = |k: &str| item.get(k).and_then(Value::as_str).map(|v| label(v, max));
            let (Some(name), Some(mountpoint), Some(fstype)) = (s("name"), s("mountpoint"), s("type")) else {
                return Err("fsinfo entry lacks name, mountpoint or type".into());
            };
            // The same filesystem twice (or two that clean to the same labels) would be two
            // series with identical labels: the first is kept.
            if out.iter().any(|f| f.name == name && f.mountpoint == mountpoint && f.fstype == fstype) {
                left_out += 1;
                continue;
            }
            // Impossible sizes are left out (the other values stay): negative, not a number,
            // past i64::MAX, or used over the capacity the same entry gives.
            let raw = |k: &str| item.get(k).unwrap_or(&Value::Null);
            let at = Some(mountpoint.as_str());
            let total = reject::check(&FS_CAPACITY, raw("total-bytes"), 1.0, Context::default(), at, rejected);
            let used =
                reject::check(&FS_USED, raw("used-bytes"), 1.0, Context { limit: total, previous: None }, at, rejected);
            let total_bytes = total.and_then(|_| raw("total-bytes").as_u64());
            let used_bytes = used.and_then(|_| raw("used-bytes").as_u64());
            out.push(Filesystem { name, mountpoint, fstype, total_bytes, used_bytes });
        }
        count_drop(dropped, "filesystem", left_out);
        g.filesystems = Some(out);
        Ok(())
    },
    families: &[&FS_CAPACITY, &FS_USED],
    encode: |enc, vms| {
        for (def, get) in FS {
            let mut f = start(enc, def)?;
            for vm in vms {
                for fs in data(vm).and_then(|g| g.filesystems.as_deref()).unwrap_or_default() {
                    let labels = [
                        ("disk_name", fs.name.as_str()),
                        ("mount_point", &fs.mountpoint),
                        ("file_system_type", &fs.fstype),
                    ];
                    f.vm_sample(vm, &labels, num(get(fs)))?;
                }
            }
        }
        Ok(())
    },
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-network-get-interfaces: the guest's view of its NICs and their addresses.

allow_list!(qga::guest_network_get_interfaces);

family!(
    GUEST_NET_RX_BYTES,
    "kubevirt_vmi_guest_network_receive",
    Counter,
    B,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces rx-bytes",
    Vm,
    "Bytes received, as the guest counts them."
);
family!(
    GUEST_NET_TX_BYTES,
    "kubevirt_vmi_guest_network_transmit",
    Counter,
    B,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces tx-bytes",
    Vm,
    "Bytes transmitted, as the guest counts them."
);
family!(
    GUEST_NET_RX_PACKETS,
    "kubevirt_vmi_guest_network_receive_packets",
    Counter,
    N,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces rx-packets",
    Vm,
    "Packets received, as the guest counts them."
);
family!(
    GUEST_NET_TX_PACKETS,
    "kubevirt_vmi_guest_network_transmit_packets",
    Counter,
    N,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces tx-packets",
    Vm,
    "Packets transmitted, as the guest counts them."
);
family!(
    GUEST_NET_RX_ERRORS,
    "kubevirt_vmi_guest_network_receive_errors",
    Counter,
    N,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces rx-errs",
    Vm,
    "Receive errors, as the guest counts them."
);
family!(
    GUEST_NET_TX_ERRORS,
    "kubevirt_vmi_guest_network_transmit_errors",
    Counter,
    N,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces tx-errs",
    Vm,
    "Transmit errors, as the guest counts them."
);
family!(
    GUEST_NET_RX_DROPPED,
    "kubevirt_vmi_guest_network_receive_packets_dropped",
    Counter,
    N,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces rx-dropped",
    Vm,
    "Received packets dropped, as the guest counts them."
);
family!(
    GUEST_NET_TX_DROPPED,
    "kubevirt_vmi_guest_network_transmit_packets_dropped",
    Counter,
    N,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces tx-dropped",
    Vm,
    "Transmitted packets dropped, as the guest counts them."
);
family!(
    GUEST_ADDRESS_INFO,
    "kubevirt_vmi_guest_interface_address",
    Info,
    N,
    ["interface", "address", "family", "prefix", "mac"],
    Guest,
    "qga guest-network-get-interfaces",
    Vm,
    "One series per IP address the guest reports; the value is always 1."
);

type NetField = fn(&InterfaceStats) -> u64;
const NET: [(&MetricDef, NetField); 8] = [
    (&GUEST_NET_RX_BYTES, |s| s.rx_bytes),
    (&GUEST_NET_TX_BYTES, |s| s.tx_bytes),
    (&GUEST_NET_RX_PACKETS, |s| s.rx_packets),
    (&GUEST_NET_TX_PACKETS, |s| s.tx_packets),
    (&GUEST_NET_RX_ERRORS, |s| s.rx_errs),
    (&GUEST_NET_TX_ERRORS, |s| s.tx_errs),
    (&GUEST_NET_RX_DROPPED, |s| s.rx_dropped),
    (&GUEST_NET_TX_DROPPED, |s| s.tx_dropped),
];

const NETWORK: Command = Command {
    key: "network",
    about: "interfaces and IP addresses",
    request: || AgentRequest::new(qga::guest_network_get_interfaces {}),
    period: secs(30),
    parse: |g, reply, lim, dropped, _| {
        let ifaces: Vec<qga::GuestNetworkInterface> = typed(reply)?;
        let max = lim.label_bytes;
        let mut budget = lim.addresses;
        let mut out: Vec<Interface> = Vec::new();
        let mut left_out = 0;
        for i in ifaces {
            let name = label(&i.name, max);
            // Past the cap, or a name already seen (its series would repeat the labels).
            if out.len() == lim.interfaces || out.iter().any(|o| o.name == name) {
                left_out += 1;
                continue;
            }
            let mut addresses: Vec<Address> = Vec::new();
            for a in i.ip_addresses.unwrap_or_default() {
                let a = Address {
                    address: label(&a.ip_address, max),
                    family: match a.ip_address_type {
                        qga::GuestIpAddressType::ipv4 => "ipv4".into(),
                        qga::GuestIpAddressType::ipv6 => "ipv6".into(),
                    },
                    prefix: a.prefix,
                };
                if budget == 0 || addresses.contains(&a) {
                    count_drop(dropped, "address", 1);
                    continue;
                }
                budget -= 1;
                addresses.push(a);
            }
            let stats = i.statistics.map(|s| InterfaceStats {
                rx_bytes: s.rx_bytes,
                rx_packets: s.rx_packets,
                rx_errs: s.rx_errs,
                rx_dropped: s.rx_dropped,
                tx_bytes: s.tx_bytes,
                tx_packets: s.tx_packets,
                tx_errs: s.tx_errs,
                tx_dropped: s.tx_dropped,
            });
            out.push(Interface { name, mac: opt_label(i.hardware_address, max), addresses, stats });
        }
        count_drop(dropped, "interface", left_out);
        g.interfaces = Some(out);
        Ok(())
    },
    families: &[
        &GUEST_NET_RX_BYTES,
        &GUEST_NET_TX_BYTES,
        &GUEST_NET_RX_PACKETS,
        &GUEST_NET_TX_PACKETS,
        &GUEST_NET_RX_ERRORS,
        &GUEST_NET_TX_ERRORS,
        &GUEST_NET_RX_DROPPED,
        &GUEST_NET_TX_DROPPED,
        &GUEST_ADDRESS_INFO,
    ],
    encode: |enc, vms| {
        let interfaces = |vm| data(vm).and_then(|g| g.interfaces.as_deref()).unwrap_or_default();
        for (def, get) in NET {
            let mut f = start(enc, def)?;
            for vm in vms {
                for i in interfaces(vm) {
                    if let Some(s) = &i.stats {
                        f.vm_sample(vm, &[("interface", &i.name)], Some(get(s) as f64))?;
                    }
                }
            }
        }
        let mut f = start(enc, &GUEST_ADDRESS_INFO)?;
        for vm in vms {
            for i in interfaces(vm) {
                for a in &i.addresses {
                    let prefix = a.prefix.to_string();
                    let labels = [
                        ("interface", i.name.as_str()),
                        ("address", &a.address),
                        ("family", &a.family),
                        ("prefix", &prefix),
                        ("mac", i.mac.as_deref().unwrap_or_default()),
                    ];
                    f.vm_sample(vm, &labels, Some(1.0))?;
                }
            }
        }
        Ok(())
    },
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-get-users: logged-in users, counted (never named: names are personal data).

allow_list!(qga::guest_get_users);

family!(
    GUEST_USERS,
    "kubevirt_vmi_guest_users",
    Gauge,
    N,
    [],
    Guest,
    "qga guest-get-users",
    Vm,
    "Users logged in to the guest (counted; names are not exported)."
);

const USERS: Command = Command {
    key: "users",
    about: "logged-in users",
    request: || AgentRequest::new(qga::guest_get_users {}),
    period: secs(30),
    parse: |g, reply, _, _, _| {
        let users: Vec<qga::GuestUser> = typed(reply)?;
        g.users = Some(users.len() as u64);
        Ok(())
    },
    families: &[&GUEST_USERS],
    encode: |enc, vms| per_vm(&mut start(enc, &GUEST_USERS)?, vms, |g| num(g.users)),
    private: &["user", "domain"],
};

// ---------------------------------------------------------------------------------------------
// guest-get-osinfo: the OS (its pretty name, version id and kernel version stay in `/debug`).

allow_list!(qga::guest_get_osinfo);

family!(
    GUEST_OS_INFO,
    "kubevirt_vmi_guest_os",
    Info,
    N,
    ["os_name", "os_version", "os_id", "kernel_release", "machine"],
    Guest,
    "qga guest-get-osinfo name, version, id, kernel-release, machine",
    Vm,
    "The guest's operating system, with the labels of KubeVirt's own family of this name; the value is always 1."
);

const OSINFO: Command = Command {
    key: "osinfo",
    about: "operating system",
    request: || AgentRequest::new(qga::guest_get_osinfo {}),
    period: secs(300),
    parse: |g, reply, lim, _, _| {
        let o: qga::GuestOSInfo = typed(reply)?;
        let max = lim.label_bytes;
        g.os = Some(OsInfo {
            id: opt_label(o.id, max),
            name: opt_label(o.name, max),
            pretty_name: opt_label(o.pretty_name, max),
            version: opt_label(o.version, max),
            version_id: opt_label(o.version_id, max),
            kernel_release: opt_label(o.kernel_release, max),
            kernel_version: opt_label(o.kernel_version, max),
            machine: opt_label(o.machine, max),
        });
        Ok(())
    },
    families: &[&GUEST_OS_INFO],
    encode: |enc, vms| {
        let mut f = start(enc, &GUEST_OS_INFO)?;
        for vm in vms {
            let Some(os) = data(vm).and_then(|g| g.os.as_ref()) else { continue };
            let s = |v: &Option<String>| v.clone().unwrap_or_default();
            let values = [s(&os.name), s(&os.version), s(&os.id), s(&os.kernel_release), s(&os.machine)];
            let labels: Vec<(&str, &str)> =
                GUEST_OS_INFO.labels.iter().copied().zip(values.iter().map(String::as_str)).collect();
            f.vm_sample(vm, &labels, Some(1.0))?;
        }
        Ok(())
    },
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-get-vcpus: logical CPUs the guest knows, and how many are online.

allow_list!(qga::guest_get_vcpus);

family!(
    GUEST_VCPUS,
    "kubevirt_vmi_guest_vcpus",
    Gauge,
    N,
    [],
    Guest,
    "qga guest-get-vcpus",
    Vm,
    "Logical CPUs the guest OS knows."
);
family!(
    GUEST_VCPUS_ONLINE,
    "kubevirt_vmi_guest_vcpus_online",
    Gauge,
    N,
    [],
    Guest,
    "qga guest-get-vcpus online",
    Vm,
    "Logical CPUs the guest OS has online."
);

const VCPUS: Command = Command {
    key: "vcpus",
    about: "vCPUs online",
    request: || AgentRequest::new(qga::guest_get_vcpus {}),
    period: secs(30),
    parse: |g, reply, _, _, rejected| {
        let cpus: Vec<qga::GuestLogicalProcessor> = typed(reply)?;
        let total = cpus.len() as u64;
        let online = cpus.iter().filter(|c| c.online).count() as u64;
        let ok = |def, n: u64, rejected: &mut Vec<Rejected>| {
            reject::check(def, &Value::from(n), 1.0, Context::default(), None, rejected).map(|_| n)
        };
        g.vcpus_total = ok(&GUEST_VCPUS, total, rejected);
        g.vcpus_online = ok(&GUEST_VCPUS_ONLINE, online, rejected);
        Ok(())
    },
    families: &[&GUEST_VCPUS, &GUEST_VCPUS_ONLINE],
    encode: |enc, vms| {
        per_vm(&mut start(enc, &GUEST_VCPUS)?, vms, |g| num(g.vcpus_total))?;
        per_vm(&mut start(enc, &GUEST_VCPUS_ONLINE)?, vms, |g| num(g.vcpus_online))
    },
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-get-load (QEMU >= 10.0, newer than the `qapi-qga` schema): load averages.

/// `guest-get-load`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GuestGetLoad {}

/// Its reply (each average absent when missing or rejected).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
pub struct GuestLoadInfo {
    /// 1-minute load average.
    #[serde(default)]
    pub load1: Option<f64>,
    /// 5-minute load average.
    #[serde(default)]
    pub load5: Option<f64>,
    /// 15-minute load average.
    #[serde(default)]
    pub load15: Option<f64>,
}

impl qapi::Command for GuestGetLoad {
    type Ok = GuestLoadInfo;
    const NAME: &'static str = "guest-get-load";
    const ALLOW_OOB: bool = false;
}

allow_list!(GuestGetLoad);

family!(
    GUEST_LOAD_1M,
    "kubevirt_vmi_guest_load_1m",
    Gauge,
    N,
    [],
    Guest,
    "qga guest-get-load load1",
    Vm,
    "Guest load average over 1 minute."
);
family!(
    GUEST_LOAD_5M,
    "kubevirt_vmi_guest_load_5m",
    Gauge,
    N,
    [],
    Guest,
    "qga guest-get-load load5",
    Vm,
    "Guest load average over 5 minutes."
);
family!(
    GUEST_LOAD_15M,
    "kubevirt_vmi_guest_load_15m",
    Gauge,
    N,
    [],
    Guest,
    "qga guest-get-load load15",
    Vm,
    "Guest load average over 15 minutes."
);

const LOAD: Command = Command {
    key: "load",
    about: "load averages",
    request: || AgentRequest::new(GuestGetLoad {}),
    period: secs(15),
    // Read leniently, one average at a time: a NaN, negative or absurd one is left out, the
    // others stay.
    parse: |g, reply, _, _, rejected| {
        let Value::Object(map) = reply else { return Err("load reply is not an object".into()) };
        let mut load = |def, key: &str| {
            reject::check(def, map.get(key).unwrap_or(&Value::Null), 1.0, Context::default(), None, rejected)
        };
        g.load = Some(GuestLoadInfo {
            load1: load(&GUEST_LOAD_1M, "load1"),
            load5: load(&GUEST_LOAD_5M, "load5"),
            load15: load(&GUEST_LOAD_15M, "load15"),
        });
        Ok(())
    },
    families: &[&GUEST_LOAD_1M, &GUEST_LOAD_5M, &GUEST_LOAD_15M],
    encode: |enc, vms| {
        per_vm(&mut start(enc, &GUEST_LOAD_1M)?, vms, |g| g.load.and_then(|l| l.load1))?;
        per_vm(&mut start(enc, &GUEST_LOAD_5M)?, vms, |g| g.load.and_then(|l| l.load5))?;
        per_vm(&mut start(enc, &GUEST_LOAD_15M)?, vms, |g| g.load.and_then(|l| l.load15))
    },
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-get-diskstats: the guest's /proc/diskstats.

allow_list!(qga::guest_get_diskstats);

family!(
    GUEST_DISK_READ_IOS,
    "kubevirt_vmi_guest_disk_read_ios",
    Counter,
    N,
    ["disk"],
    Guest,
    "qga guest-get-diskstats read-ios",
    Vm,
    "Reads completed by the guest disk."
);
family!(
    GUEST_DISK_READ_BYTES,
    "kubevirt_vmi_guest_disk_read",
    Counter,
    B,
    ["disk"],
    Guest,
    "qga guest-get-diskstats read-sectors × 512",
    Vm,
    "Bytes read by the guest disk."
);
family!(
    GUEST_DISK_READ_TIME,
    "kubevirt_vmi_guest_disk_read_time",
    Counter,
    S,
    ["disk"],
    Guest,
    "qga guest-get-diskstats read-ticks (ms)",
    Vm,
    "Time the guest disk spent reading."
);
family!(
    GUEST_DISK_WRITE_IOS,
    "kubevirt_vmi_guest_disk_write_ios",
    Counter,
    N,
    ["disk"],
    Guest,
    "qga guest-get-diskstats write-ios",
    Vm,
    "Writes completed by the guest disk."
);
family!(
    GUEST_DISK_WRITE_BYTES,
    "kubevirt_vmi_guest_disk_write",
    Counter,
    B,
    ["disk"],
    Guest,
    "qga guest-get-diskstats write-sectors × 512",
    Vm,
    "Bytes written by the guest disk."
);
family!(
    GUEST_DISK_WRITE_TIME,
    "kubevirt_vmi_guest_disk_write_time",
    Counter,
    S,
    ["disk"],
    Guest,
    "qga guest-get-diskstats write-ticks (ms)",
    Vm,
    "Time the guest disk spent writing."
);
family!(
    GUEST_DISK_FLUSH_IOS,
    "kubevirt_vmi_guest_disk_flush_ios",
    Counter,
    N,
    ["disk"],
    Guest,
    "qga guest-get-diskstats flush-ios",
    Vm,
    "Flushes completed by the guest disk."
);
family!(
    GUEST_DISK_FLUSH_TIME,
    "kubevirt_vmi_guest_disk_flush_time",
    Counter,
    S,
    ["disk"],
    Guest,
    "qga guest-get-diskstats flush-ticks (ms)",
    Vm,
    "Time the guest disk spent flushing."
);
family!(
    GUEST_DISK_IO_TIME,
    "kubevirt_vmi_guest_disk_io_time",
    Counter,
    S,
    ["disk"],
    Guest,
    "qga guest-get-diskstats total-ticks (ms)",
    Vm,
    "Time the guest disk spent doing I/O."
);
family!(
    GUEST_DISK_IN_PROGRESS,
    "kubevirt_vmi_guest_disk_ios_in_progress",
    Gauge,
    N,
    ["disk"],
    Guest,
    "qga guest-get-diskstats ios-pgr",
    Vm,
    "I/Os in progress on the guest disk."
);

type DiskField = fn(&DiskStats) -> Option<f64>;
const DISK: [(&MetricDef, DiskField); 10] = [
    (&GUEST_DISK_READ_IOS, |d| num(d.read_ios)),
    (&GUEST_DISK_READ_BYTES, |d| sectors(d.read_sectors)),
    (&GUEST_DISK_READ_TIME, |d| ms(d.read_ticks)),
    (&GUEST_DISK_WRITE_IOS, |d| num(d.write_ios)),
    (&GUEST_DISK_WRITE_BYTES, |d| sectors(d.write_sectors)),
    (&GUEST_DISK_WRITE_TIME, |d| ms(d.write_ticks)),
    (&GUEST_DISK_FLUSH_IOS, |d| num(d.flush_ios)),
    (&GUEST_DISK_FLUSH_TIME, |d| ms(d.flush_ticks)),
    (&GUEST_DISK_IO_TIME, |d| ms(d.total_ticks)),
    (&GUEST_DISK_IN_PROGRESS, |d| num(d.ios_pgr)),
];

const DISKSTATS: Command = Command {
    key: "diskstats",
    about: "guest disk counters",
    request: || AgentRequest::new(qga::guest_get_diskstats {}),
    period: secs(15),
    parse: |g, reply, lim, dropped, _| {
        let disks: Vec<qga::GuestDiskStatsInfo> = typed(reply)?;
        let mut out: Vec<DiskStats> = Vec::new();
        let mut left_out = 0;
        for d in disks {
            let name = label(&d.name, lim.label_bytes);
            // Past the cap, or a name already seen (its series would repeat the labels).
            if out.len() == lim.disks || out.iter().any(|o| o.name == name) {
                left_out += 1;
                continue;
            }
            out.push(DiskStats {
                name,
                read_ios: d.stats.read_ios,
                read_sectors: d.stats.read_sectors,
                read_ticks: d.stats.read_ticks,
                write_ios: d.stats.write_ios,
                write_sectors: d.stats.write_sectors,
                write_ticks: d.stats.write_ticks,
                flush_ios: d.stats.flush_ios,
                flush_ticks: d.stats.flush_ticks,
                ios_pgr: d.stats.ios_pgr,
                total_ticks: d.stats.total_ticks,
            });
        }
        count_drop(dropped, "disk", left_out);
        g.disks = Some(out);
        Ok(())
    },
    families: &[
        &GUEST_DISK_READ_IOS,
        &GUEST_DISK_READ_BYTES,
        &GUEST_DISK_READ_TIME,
        &GUEST_DISK_WRITE_IOS,
        &GUEST_DISK_WRITE_BYTES,
        &GUEST_DISK_WRITE_TIME,
        &GUEST_DISK_FLUSH_IOS,
        &GUEST_DISK_FLUSH_TIME,
        &GUEST_DISK_IO_TIME,
        &GUEST_DISK_IN_PROGRESS,
    ],
    encode: |enc, vms| {
        for (def, get) in DISK {
            let mut f = start(enc, def)?;
            for vm in vms {
                for d in data(vm).and_then(|g| g.disks.as_deref()).unwrap_or_default() {
                    f.vm_sample(vm, &[("disk", &d.name)], get(d))?;
                }
            }
        }
        Ok(())
    },
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-get-cpustats: CPU time per guest CPU and mode.

allow_list!(qga::guest_get_cpustats);

family!(
    GUEST_CPU,
    "kubevirt_vmi_guest_cpu",
    Counter,
    S,
    ["cpu", "mode"],
    Guest,
    "qga guest-get-cpustats (ms)",
    Vm,
    "Time each guest CPU spent in each mode, as the guest counts it."
);

/// Linux CPU modes, as `guest-get-cpustats` names them.
const CPU_MODES: [&str; 10] =
    ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guestnice"];

const CPUSTATS: Command = Command {
    key: "cpustats",
    about: "guest CPU time",
    request: || AgentRequest::new(qga::guest_get_cpustats {}),
    period: secs(15),
    // Read leniently: only the Linux shape is known; other OS types are skipped, not fatal.
    parse: |g, reply, lim, dropped, _| {
        let Value::Array(items) = reply else { return Err("cpustats reply is not a list".into()) };
        let mut out: Vec<CpuStats> = Vec::new();
        let mut left_out = 0;
        for (i, item) in items.iter().enumerate() {
            if i >= lim.cpus {
                left_out += 1;
                continue;
            }
            let Value::Object(map) = item else { return Err("cpustats entry is not an object".into()) };
            if map.get("type").and_then(Value::as_str) != Some("linux") {
                continue;
            }
            let cpu = map.get("cpu").and_then(Value::as_i64).ok_or("cpustats entry lacks cpu")?;
            // A CPU reported twice would repeat its series' labels: the first is kept.
            if out.iter().any(|c| c.cpu == cpu) {
                left_out += 1;
                continue;
            }
            let modes = CPU_MODES
                .iter()
                .filter_map(|m| map.get(*m).and_then(Value::as_u64).map(|v| ((*m).to_owned(), v)))
                .collect();
            out.push(CpuStats { cpu, modes });
        }
        count_drop(dropped, "cpu", left_out);
        g.cpus = Some(out);
        Ok(())
    },
    families: &[&GUEST_CPU],
    encode: |enc, vms| {
        let mut f = start(enc, &GUEST_CPU)?;
        for vm in vms {
            for cpu in data(vm).and_then(|g| g.cpus.as_deref()).unwrap_or_default() {
                let id = cpu.cpu.to_string();
                for (mode, v) in &cpu.modes {
                    f.vm_sample(vm, &[("cpu", &id), ("mode", mode)], ms(Some(*v)))?;
                }
            }
        }
        Ok(())
    },
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-get-timezone: offset from UTC.

allow_list!(qga::guest_get_timezone);

family!(
    GUEST_TIMEZONE,
    "kubevirt_vmi_guest_timezone_offset",
    Gauge,
    S,
    [],
    Guest,
    "qga guest-get-timezone offset",
    Vm,
    "The guest's offset from UTC."
);

const TIMEZONE: Command = Command {
    key: "timezone",
    about: "time zone offset",
    request: || AgentRequest::new(qga::guest_get_timezone {}),
    period: secs(300),
    parse: |g, reply, _, _, _| {
        let tz: qga::GuestTimezone = typed(reply)?;
        g.timezone_offset_seconds = Some(tz.offset);
        Ok(())
    },
    families: &[&GUEST_TIMEZONE],
    encode: |enc, vms| per_vm(&mut start(enc, &GUEST_TIMEZONE)?, vms, |g| g.timezone_offset_seconds.map(|v| v as f64)),
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-get-host-name: the guest's own host name.

allow_list!(qga::guest_get_host_name);

family!(
    GUEST_HOSTNAME,
    "kubevirt_vmi_guest_hostname",
    Info,
    N,
    ["hostname"],
    Guest,
    "qga guest-get-host-name",
    Vm,
    "The host name the guest gives itself; the value is always 1."
);

const HOSTNAME: Command = Command {
    key: "hostname",
    about: "host name",
    request: || AgentRequest::new(qga::guest_get_host_name {}),
    period: secs(300),
    parse: |g, reply, lim, _, _| {
        let h: qga::GuestHostName = typed(reply)?;
        g.hostname = Some(label(&h.host_name, lim.label_bytes));
        Ok(())
    },
    families: &[&GUEST_HOSTNAME],
    encode: |enc, vms| {
        let mut f = start(enc, &GUEST_HOSTNAME)?;
        for vm in vms {
            if let Some(h) = data(vm).and_then(|g| g.hostname.as_deref()) {
                f.vm_sample(vm, &[("hostname", h)], Some(1.0))?;
            }
        }
        Ok(())
    },
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-get-memory-block-info: the memory hot-plug granularity.

allow_list!(qga::guest_get_memory_block_info);

family!(
    GUEST_MEMORY_BLOCK,
    "kubevirt_vmi_guest_memory_block_size",
    Gauge,
    B,
    [],
    Guest,
    "qga guest-get-memory-block-info",
    Vm,
    "Size of the guest's memory blocks (the hotplug granularity)."
);

const MEMORY_BLOCK_INFO: Command = Command {
    key: "memory_block_info",
    about: "memory block size",
    request: || AgentRequest::new(qga::guest_get_memory_block_info {}),
    period: secs(300),
    parse: |g, reply, _, _, _| {
        let m: qga::GuestMemoryBlockInfo = typed(reply)?;
        g.memory_block_size_bytes = Some(m.size);
        Ok(())
    },
    families: &[&GUEST_MEMORY_BLOCK],
    encode: |enc, vms| per_vm(&mut start(enc, &GUEST_MEMORY_BLOCK)?, vms, |g| num(g.memory_block_size_bytes)),
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-info: the agent's version and which commands it has enabled (capabilities).

allow_list!(qga::guest_info);

family!(
    GUEST_AGENT_INFO,
    "kubevirt_vmi_guest_agent",
    Info,
    N,
    ["version"],
    Guest,
    "qga guest-info",
    Vm,
    "The guest agent's version; the value is always 1."
);

const INFO: Command = Command {
    key: "info",
    about: "capabilities",
    request: || AgentRequest::new(qga::guest_info {}),
    period: secs(300),
    parse: |g, reply, lim, _, _| {
        let info: qga::GuestAgentInfo = typed(reply)?;
        g.agent_version = Some(label(&info.version, lim.label_bytes));
        Ok(())
    },
    families: &[&GUEST_AGENT_INFO],
    encode: |enc, vms| {
        let mut f = start(enc, &GUEST_AGENT_INFO)?;
        for vm in vms {
            if let Some(v) = data(vm).and_then(|g| g.agent_version.as_deref()) {
                f.vm_sample(vm, &[("version", v)], Some(1.0))?;
            }
        }
        Ok(())
    },
    private: &[],
};

// The protocol's own commands: no data, no period.
allow_list!(qga::guest_sync, qga::guest_ping);

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
        for f in crate::catalogue::all().iter().filter(|f| f.group == crate::catalogue::Group::Guest) {
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
