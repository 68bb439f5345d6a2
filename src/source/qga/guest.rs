//! What the guest agent says, parsed into bounded, label-safe values.
//!
//! Everything here comes from the tenant's side: counts are capped (extra items are counted
//! as dropped, not exported), label values are stripped of control characters and shortened,
//! users are counted but not named. Replies are read leniently where a newer agent may extend
//! an enum (`guest-get-fsinfo` disk addresses, `guest-get-cpustats` OS types).

use std::collections::BTreeMap;

use qapi::qga;
use serde::Serialize;
use serde_json::Value;

use super::allow::GuestLoadInfo;

/// Caps on what one guest may make vmbridge export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLimits {
    /// Filesystems per VM.
    pub filesystems: usize,
    /// Network interfaces per VM.
    pub interfaces: usize,
    /// IP addresses per VM (all interfaces together).
    pub addresses: usize,
    /// Disks (diskstats) per VM.
    pub disks: usize,
    /// CPUs (cpustats, vCPU list) per VM.
    pub cpus: usize,
    /// Longest label value, in bytes.
    pub label_bytes: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits { filesystems: 64, interfaces: 32, addresses: 64, disks: 64, cpus: 512, label_bytes: 128 }
    }
}

/// Makes a guest-supplied string safe to use as a label value: control characters become
/// `?`, and it is cut at `max` bytes on a character boundary.
pub fn label(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// One mounted filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Filesystem {
    /// Device name (`vda1`, `dm-0`): KubeVirt's `disk_name`.
    pub name: String,
    /// Mount point.
    pub mountpoint: String,
    /// Filesystem type.
    pub fstype: String,
    /// Size in bytes.
    pub total_bytes: Option<u64>,
    /// Used bytes.
    pub used_bytes: Option<u64>,
}

/// One IP address.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Address {
    /// The address.
    pub address: String,
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// Prefix length.
    pub prefix: i64,
}

/// Interface counters as the guest sees them.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct InterfaceStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errs: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Packets transmitted.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errs: u64,
    /// Transmitted packets dropped.
    pub tx_dropped: u64,
}

/// One guest network interface.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Interface {
    /// Name inside the guest.
    pub name: String,
    /// MAC address, if any.
    pub mac: Option<String>,
    /// Addresses (capped per VM).
    pub addresses: Vec<Address>,
    /// Counters, if the agent reports them.
    pub stats: Option<InterfaceStats>,
}

/// Operating system facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct OsInfo {
    /// `id` (e.g. `debian`).
    pub id: Option<String>,
    /// `name`.
    pub name: Option<String>,
    /// `pretty-name`.
    pub pretty_name: Option<String>,
    /// `version`.
    pub version: Option<String>,
    /// `version-id`.
    pub version_id: Option<String>,
    /// `kernel-release`.
    pub kernel_release: Option<String>,
    /// `kernel-version`.
    pub kernel_version: Option<String>,
    /// `machine`.
    pub machine: Option<String>,
}

/// One guest disk's counters (Linux `/proc/diskstats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct DiskStats {
    /// Device name.
    pub name: String,
    /// Reads completed.
    pub read_ios: Option<u64>,
    /// Sectors read (512 bytes).
    pub read_sectors: Option<u64>,
    /// Time reading, ms.
    pub read_ticks: Option<u64>,
    /// Writes completed.
    pub write_ios: Option<u64>,
    /// Sectors written (512 bytes).
    pub write_sectors: Option<u64>,
    /// Time writing, ms.
    pub write_ticks: Option<u64>,
    /// Flushes completed.
    pub flush_ios: Option<u64>,
    /// Time flushing, ms.
    pub flush_ticks: Option<u64>,
    /// I/Os in progress.
    pub ios_pgr: Option<u64>,
    /// Time doing I/O, ms.
    pub total_ticks: Option<u64>,
}

/// One guest CPU's time per mode, in milliseconds (as qemu-ga reports it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CpuStats {
    /// CPU number.
    pub cpu: i64,
    /// Mode → milliseconds.
    pub modes: BTreeMap<String, u64>,
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

/// Items left out because a cap was reached, by kind (`vmbridge_guest_items_dropped_total`).
pub type Dropped = BTreeMap<String, u64>;

fn count_drop(dropped: &mut Dropped, kind: &str, n: usize) {
    if n > 0 {
        *dropped.entry(kind.to_owned()).or_default() += n as u64;
    }
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn opt_label(s: Option<String>, max: usize) -> Option<String> {
    s.map(|s| label(&s, max))
}

impl GuestData {
    /// Applies a successful reply of `command` (its `return` value).
    pub fn apply(
        &mut self,
        command: &str,
        reply: Value,
        lim: &GuestLimits,
        dropped: &mut Dropped,
    ) -> Result<(), String> {
        let max = lim.label_bytes;
        match command {
            "guest-info" => {
                let info: qga::GuestAgentInfo = typed(reply)?;
                self.agent_version = Some(label(&info.version, max));
            }
            "guest-get-fsinfo" => {
                let Value::Array(items) = reply else { return Err("fsinfo reply is not a list".into()) };
                count_drop(dropped, "filesystem", items.len().saturating_sub(lim.filesystems));
                let mut out = Vec::new();
                for item in items.into_iter().take(lim.filesystems) {
                    let s = |k: &str| item.get(k).and_then(Value::as_str).map(|v| label(v, max));
                    let (Some(name), Some(mountpoint), Some(fstype)) = (s("name"), s("mountpoint"), s("type")) else {
                        return Err("fsinfo entry lacks name, mountpoint or type".into());
                    };
                    let n = |k: &str| item.get(k).and_then(Value::as_u64);
                    out.push(Filesystem {
                        name,
                        mountpoint,
                        fstype,
                        total_bytes: n("total-bytes"),
                        used_bytes: n("used-bytes"),
                    });
                }
                self.filesystems = Some(out);
            }
            "guest-network-get-interfaces" => {
                let ifaces: Vec<qga::GuestNetworkInterface> = typed(reply)?;
                count_drop(dropped, "interface", ifaces.len().saturating_sub(lim.interfaces));
                let mut budget = lim.addresses;
                let mut out = Vec::new();
                for i in ifaces.into_iter().take(lim.interfaces) {
                    let addrs = i.ip_addresses.unwrap_or_default();
                    let keep = addrs.len().min(budget);
                    count_drop(dropped, "address", addrs.len() - keep);
                    budget -= keep;
                    let addresses = addrs
                        .into_iter()
                        .take(keep)
                        .map(|a| Address {
                            address: label(&a.ip_address, max),
                            family: match a.ip_address_type {
                                qga::GuestIpAddressType::ipv4 => "ipv4".into(),
                                qga::GuestIpAddressType::ipv6 => "ipv6".into(),
                            },
                            prefix: a.prefix,
                        })
                        .collect();
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
                    out.push(Interface {
                        name: label(&i.name, max),
                        mac: opt_label(i.hardware_address, max),
                        addresses,
                        stats,
                    });
                }
                self.interfaces = Some(out);
            }
            "guest-get-vcpus" => {
                let cpus: Vec<qga::GuestLogicalProcessor> = typed(reply)?;
                self.vcpus_total = Some(cpus.len() as u64);
                self.vcpus_online = Some(cpus.iter().filter(|c| c.online).count() as u64);
            }
            "guest-get-osinfo" => {
                let o: qga::GuestOSInfo = typed(reply)?;
                self.os = Some(OsInfo {
                    id: opt_label(o.id, max),
                    name: opt_label(o.name, max),
                    pretty_name: opt_label(o.pretty_name, max),
                    version: opt_label(o.version, max),
                    version_id: opt_label(o.version_id, max),
                    kernel_release: opt_label(o.kernel_release, max),
                    kernel_version: opt_label(o.kernel_version, max),
                    machine: opt_label(o.machine, max),
                });
            }
            "guest-get-host-name" => {
                let h: qga::GuestHostName = typed(reply)?;
                self.hostname = Some(label(&h.host_name, max));
            }
            "guest-get-users" => {
                let users: Vec<qga::GuestUser> = typed(reply)?;
                self.users = Some(users.len() as u64);
            }
            "guest-get-timezone" => {
                let tz: qga::GuestTimezone = typed(reply)?;
                self.timezone_offset_seconds = Some(tz.offset);
            }
            "guest-get-load" => self.load = Some(typed(reply)?),
            "guest-get-diskstats" => {
                let disks: Vec<qga::GuestDiskStatsInfo> = typed(reply)?;
                count_drop(dropped, "disk", disks.len().saturating_sub(lim.disks));
                let out = disks
                    .into_iter()
                    .take(lim.disks)
                    .map(|d| DiskStats {
                        name: label(&d.name, max),
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
                    })
                    .collect();
                self.disks = Some(out);
            }
            "guest-get-cpustats" => {
                let Value::Array(items) = reply else { return Err("cpustats reply is not a list".into()) };
                count_drop(dropped, "cpu", items.len().saturating_sub(lim.cpus));
                let mut out = Vec::new();
                for item in items.into_iter().take(lim.cpus) {
                    let Value::Object(map) = item else { return Err("cpustats entry is not an object".into()) };
                    // Only the Linux shape is known; other OS types are skipped, not fatal.
                    if map.get("type").and_then(Value::as_str) != Some("linux") {
                        continue;
                    }
                    let cpu = map.get("cpu").and_then(Value::as_i64).ok_or("cpustats entry lacks cpu")?;
                    let modes =
                        ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guestnice"]
                            .iter()
                            .filter_map(|m| map.get(*m).and_then(Value::as_u64).map(|v| ((*m).to_owned(), v)))
                            .collect();
                    out.push(CpuStats { cpu, modes });
                }
                self.cpus = Some(out);
            }
            "guest-get-memory-block-info" => {
                let m: qga::GuestMemoryBlockInfo = typed(reply)?;
                self.memory_block_size_bytes = Some(m.size);
            }
            other => return Err(format!("no parser for {other}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_are_cleaned_and_capped() {
        assert_eq!(label("a\nb\u{7}c", 10), "a?b?c");
        assert_eq!(label("ééé", 5), "éé");
        assert_eq!(label(&"x".repeat(1000), 128).len(), 128);
    }

    #[test]
    fn caps_are_enforced_and_counted() {
        let lim = GuestLimits { filesystems: 2, interfaces: 1, addresses: 2, ..Default::default() };
        let mut g = GuestData::default();
        let mut dropped = Dropped::new();
        let fs: Vec<Value> = (0..5).map(|i| json!({"name": format!("vd{i}"), "mountpoint": format!("/m{i}"), "type": "ext4", "disk": [], "total-bytes": 10, "used-bytes": 5})).collect();
        g.apply("guest-get-fsinfo", Value::Array(fs), &lim, &mut dropped).expect("parses");
        assert_eq!(g.filesystems.as_ref().map(Vec::len), Some(2));
        let ifs = json!([
            {"name": "eth0", "hardware-address": "52:54:00:00:00:01", "ip-addresses": [
                {"ip-address": "10.0.0.1", "ip-address-type": "ipv4", "prefix": 24},
                {"ip-address": "10.0.0.2", "ip-address-type": "ipv4", "prefix": 24},
                {"ip-address": "fe80::1", "ip-address-type": "ipv6", "prefix": 64}]},
            {"name": "eth1"}
        ]);
        g.apply("guest-network-get-interfaces", ifs, &lim, &mut dropped).expect("parses");
        assert_eq!(g.interfaces.as_ref().map(|i| i[0].addresses.len()), Some(2));
        assert_eq!(dropped, Dropped::from([("filesystem".into(), 3), ("interface".into(), 1), ("address".into(), 1)]));
    }

    #[test]
    fn garbage_shapes_are_errors_not_panics() {
        let lim = GuestLimits::default();
        let mut g = GuestData::default();
        let mut d = Dropped::new();
        for (cmd, v) in [
            ("guest-get-fsinfo", json!({"x": 1})),
            ("guest-get-fsinfo", json!([{"name": 1}])),
            ("guest-network-get-interfaces", json!("nope")),
            ("guest-get-vcpus", json!([{"logical-id": "x"}])),
            ("guest-get-cpustats", json!([{"type": "linux"}])),
            ("guest-get-load", json!({"load1": "high"})),
            ("guest-info", json!(null)),
        ] {
            assert!(g.apply(cmd, v, &lim, &mut d).is_err(), "{cmd} accepted garbage");
        }
    }
}
