//! The shapes of what the guest agent says, and the caps on it; each command's parser is in
//! `commands`.
//!
//! Everything here comes from the tenant's side: counts are capped (extra items are counted
//! as dropped, not exported), label values are stripped of control characters and shortened,
//! users are counted but not named.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

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
    /// Series the guest's item lists may add per VM (see `GuestData::series`).
    pub series: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            filesystems: 64,
            interfaces: 32,
            addresses: 64,
            disks: 64,
            cpus: 512,
            label_bytes: 128,
            series: 2000,
        }
    }
}

pub use crate::model::label;

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
    /// The disks under it, as the agent names them (at most [`MAX_FS_DISKS`]).
    pub disks: Vec<GuestDisk>,
    /// Whether the agent named more disks than were kept (the join to a drive then refuses).
    pub more_disks: bool,
}

/// Most disks kept per filesystem (a RAID or volume group over more is not joined to a drive).
pub const MAX_FS_DISKS: usize = 8;

/// One disk under a guest filesystem (`guest-get-fsinfo` `disk`): how the guest sees its
/// address. Every field is the guest's word; numbers outside `u32` are dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct GuestDisk {
    /// `serial` (from udev's `ID_SERIAL`).
    pub serial: Option<String>,
    /// `bus-type` (`virtio`, `scsi`, `sata`, `ide`, …).
    pub bus_type: Option<String>,
    /// `pci-controller` as `[domain, bus, slot, function]`: the disk's own function for
    /// virtio-blk, its controller's otherwise.
    pub pci: Option<[u32; 4]>,
    /// `bus` (SCSI channel).
    pub bus: Option<u32>,
    /// `target` (SCSI id).
    pub target: Option<u32>,
    /// `unit` (SCSI LUN).
    pub unit: Option<u32>,
    /// `dev` (`/dev/vdb`): shown, never matched (the guest kernel's names need not be libvirt's targets).
    pub dev: Option<String>,
}

impl GuestDisk {
    /// Reads one `disk` entry; anything not of the expected shape is left out.
    pub(super) fn parse(v: &Value, max: usize) -> GuestDisk {
        let s =
            |k: &str| v.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(|s| label(s, max));
        let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
        let pci = v
            .get("pci-controller")
            .and_then(|p| Some([n(p, "domain")?, n(p, "bus")?, n(p, "slot")?, n(p, "function")?]));
        GuestDisk {
            serial: s("serial"),
            bus_type: s("bus-type"),
            pci,
            bus: n(v, "bus"),
            target: n(v, "target"),
            unit: n(v, "unit"),
            dev: s("dev"),
        }
    }
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

/// Items left out because a cap was reached, by kind (`vmbridge_guest_items_dropped_total`).
pub type Dropped = BTreeMap<String, u64>;

pub(super) fn count_drop(dropped: &mut Dropped, kind: &str, n: usize) {
    if n > 0 {
        *dropped.entry(kind.to_owned()).or_default() += n as u64;
    }
}

pub(super) fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
    T::deserialize(v).map_err(|e| e.to_string())
}

pub(super) fn opt_label(s: Option<String>, max: usize) -> Option<String> {
    s.map(|s| label(&s, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::qga::GuestData;
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
        let mut r = crate::source::reject::Rejections::default();
        let fs: Vec<Value> = (0..5).map(|i| json!({"name": format!("vd{i}"), "mountpoint": format!("/m{i}"), "type": "ext4", "disk": [], "total-bytes": 10, "used-bytes": 5})).collect();
        g.apply("guest-get-fsinfo", &Value::Array(fs), &lim, &mut dropped, &mut r).expect("parses");
        assert_eq!(g.filesystems.as_ref().map(Vec::len), Some(2));
        let ifs = json!([
            {"name": "eth0", "hardware-address": "52:54:00:00:00:01", "ip-addresses": [
                {"ip-address": "10.0.0.1", "ip-address-type": "ipv4", "prefix": 24},
                {"ip-address": "10.0.0.2", "ip-address-type": "ipv4", "prefix": 24},
                {"ip-address": "fe80::1", "ip-address-type": "ipv6", "prefix": 64}]},
            {"name": "eth1"}
        ]);
        g.apply("guest-network-get-interfaces", &ifs, &lim, &mut dropped, &mut r).expect("parses");
        assert_eq!(g.interfaces.as_ref().map(|i| i[0].addresses.len()), Some(2));
        assert_eq!(dropped, Dropped::from([("filesystem".into(), 3), ("interface".into(), 1), ("address".into(), 1)]));
    }

    #[test]
    fn garbage_shapes_are_errors_not_panics() {
        let lim = GuestLimits::default();
        let mut g = GuestData::default();
        let mut d = Dropped::new();
        let mut r = crate::source::reject::Rejections::default();
        for (cmd, v) in [
            ("guest-get-fsinfo", json!({"x": 1})),
            ("guest-get-fsinfo", json!([{"name": 1}])),
            ("guest-network-get-interfaces", json!("nope")),
            ("guest-get-vcpus", json!([{"logical-id": "x"}])),
            ("guest-get-cpustats", json!([{"type": "linux"}])),
            ("guest-info", json!(null)),
        ] {
            assert!(g.apply(cmd, &v, &lim, &mut d, &mut r).is_err(), "{cmd} accepted garbage");
        }
        // A load average that is not a number is a rejected value, not a garbage reply: the
        // others of the reply stay.
        g.apply("guest-get-load", &json!({"load1": "high", "load5": 1.0}), &lim, &mut d, &mut r).expect("parses");
        assert_eq!(g.load.map(|l| (l.load1, l.load5, l.load15)), Some((None, Some(1.0), None)));
        assert_eq!(r.count("kubevirt_vmi_guest_load_1m", crate::source::reject::Reason::NotFinite), 1);
        assert!(g.apply("guest-get-load", &json!([1, 2]), &lim, &mut d, &mut r).is_err(), "a load list accepted");
    }

    #[test]
    fn the_same_item_twice_is_one_series() {
        let lim = GuestLimits::default();
        let mut g = GuestData::default();
        let mut d = Dropped::new();
        let mut r = crate::source::reject::Rejections::default();
        let root = json!({"name": "vda1", "mountpoint": "/", "type": "ext4", "total-bytes": 10, "used-bytes": 5});
        let fs = json!([root, root, {"name": "vda1", "mountpoint": "/home", "type": "ext4"}]);
        g.apply("guest-get-fsinfo", &fs, &lim, &mut d, &mut r).expect("parses");
        let mounts: Vec<&str> = g.filesystems.iter().flatten().map(|f| f.mountpoint.as_str()).collect();
        assert_eq!(mounts, ["/", "/home"]);
        // Two that differ only past the label cap clean to the same labels: also one.
        let long =
            |tail: &str| json!({"name": "vdb", "mountpoint": format!("/{}{tail}", "m".repeat(200)), "type": "xfs"});
        g.apply("guest-get-fsinfo", &json!([long("a"), long("b")]), &lim, &mut d, &mut r).expect("parses");
        assert_eq!(g.filesystems.as_ref().map(Vec::len), Some(1));
        let ifs = json!([
            {"name": "eth0", "ip-addresses": [
                {"ip-address": "10.0.0.1", "ip-address-type": "ipv4", "prefix": 24},
                {"ip-address": "10.0.0.1", "ip-address-type": "ipv4", "prefix": 24}]},
            {"name": "eth0"}
        ]);
        g.apply("guest-network-get-interfaces", &ifs, &lim, &mut d, &mut r).expect("parses");
        assert_eq!(g.interfaces.as_ref().map(|i| (i.len(), i[0].addresses.len())), Some((1, 1)));
        let disk = json!({"name": "vda", "major": 253, "minor": 0, "stats": {"read-ios": 1}});
        g.apply("guest-get-diskstats", &json!([disk, disk]), &lim, &mut d, &mut r).expect("parses");
        assert_eq!(g.disks.as_ref().map(Vec::len), Some(1));
        let cpu = json!({"type": "linux", "cpu": 0, "user": 1, "idle": 2});
        g.apply("guest-get-cpustats", &json!([cpu, cpu]), &lim, &mut d, &mut r).expect("parses");
        assert_eq!(g.cpus.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            d,
            Dropped::from([
                ("filesystem".into(), 2),
                ("address".into(), 1),
                ("interface".into(), 1),
                ("disk".into(), 1),
                ("cpu".into(), 1)
            ])
        );
    }

    #[test]
    fn one_vm_stays_within_its_series_budget() {
        // Every cap at its default: 64 filesystems, 32 interfaces with 64 addresses, 64
        // disks and 512 CPUs with 10 modes would be about 6,200 series.
        let lim = GuestLimits::default();
        let mut g = GuestData::default();
        let mut d = Dropped::new();
        let mut r = crate::source::reject::Rejections::default();
        let fs: Vec<Value> = (0..64)
            .map(|i| json!({"name": format!("vd{i}"), "mountpoint": format!("/m{i}"), "type": "ext4"}))
            .collect();
        g.apply("guest-get-fsinfo", &Value::Array(fs), &lim, &mut d, &mut r).expect("parses");
        let stats = json!({"rx-bytes": 1, "rx-packets": 1, "rx-errs": 0, "rx-dropped": 0, "tx-bytes": 1, "tx-packets": 1, "tx-errs": 0, "tx-dropped": 0});
        let ifs: Vec<Value> = (0..32)
            .map(|i| {
                json!({"name": format!("eth{i}"), "statistics": stats, "ip-addresses": [
                {"ip-address": format!("10.0.{i}.1"), "ip-address-type": "ipv4", "prefix": 24},
                {"ip-address": format!("10.0.{i}.2"), "ip-address-type": "ipv4", "prefix": 24}]})
            })
            .collect();
        g.apply("guest-network-get-interfaces", &Value::Array(ifs), &lim, &mut d, &mut r).expect("parses");
        let disks: Vec<Value> =
            (0..64).map(|i| json!({"name": format!("sd{i}"), "major": 8, "minor": i, "stats": {}})).collect();
        g.apply("guest-get-diskstats", &Value::Array(disks), &lim, &mut d, &mut r).expect("parses");
        let modes = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guestnice"];
        let cpus: Vec<Value> = (0..512)
            .map(|i| {
                let mut m: serde_json::Map<String, Value> = modes.iter().map(|m| ((*m).to_owned(), json!(1))).collect();
                m.insert("type".into(), json!("linux"));
                m.insert("cpu".into(), json!(i));
                Value::Object(m)
            })
            .collect();
        assert_eq!(d, Dropped::new(), "nothing dropped before the CPUs");
        g.apply("guest-get-cpustats", &Value::Array(cpus), &lim, &mut d, &mut r).expect("parses");
        assert!(g.series() <= 2000, "{} series", g.series());
        // 192 (64 x capacity, used, drive) + 32 x 8 + 64 addresses + 640 = 1,152 before the
        // CPUs leave room for 84 of 512.
        assert_eq!(g.cpus.as_ref().map(Vec::len), Some(84));
        assert_eq!(d, Dropped::from([("cpu".into(), 428)]));
        // Applied again, the same reply keeps the same series.
        let before = g.clone();
        g.apply(
            "guest-get-fsinfo",
            &json!(before.filesystems.as_ref().map(|f| {
                f.iter()
                    .map(|f| json!({"name": f.name, "mountpoint": f.mountpoint, "type": f.fstype}))
                    .collect::<Vec<_>>()
            })),
            &lim,
            &mut d,
            &mut r,
        )
        .expect("parses");
        assert_eq!(g.series(), before.series());
    }
}
