//! Guest filesystems joined to KubeVirt's drives. The agent names the disks under a filesystem
//! by what the guest sees of them (`guest-get-fsinfo` `disk`: serial, PCI address, bus type,
//! bus/target/unit, device name); libvirt's domain XML says the same of each of its disks
//! (`<serial>`, `<address>`, `<target bus>`), with the user alias KubeVirt's `drive` comes
//! from. This joins the two, for `vmbridge_guest_filesystem_drive_info` and `/debug`.
//!
//! A guest disk matches a libvirt disk by the first of these rules that fits exactly one:
//! 1. **serial**: the guest's serial equals the disk's `<serial>`, or is its first 20 bytes
//!    (virtio-blk's limit), or ends in `_<serial>` (udev's `ID_SERIAL` of a SCSI or SATA disk
//!    is vendor and model, then the serial);
//! 2. **PCI address**: a virtio disk (bus type `virtio`: virtio-blk is one PCI function per
//!    disk) whose `pci-controller` equals the disk's `<address type='pci'>` (bus numbers agree
//!    while the guest firmware numbers the root ports in libvirt's order, as SeaBIOS and OVMF
//!    do on q35 and i440fx);
//! 3. **bus and target**: a SCSI, SATA or IDE disk whose bus type equals the disk's
//!    `<target bus>` and whose bus, target and unit equal its `<address type='drive'>`.
//!
//! A rule that fits several disks is ambiguous and the next one is tried. The guest's `dev`
//! (`/dev/vdb`) is never used: the guest kernel's names need not be libvirt's targets. A
//! filesystem gets a drive only when every disk under it matches and all match one drive
//! (partitions of one disk); else it gets none, and `/debug` says why.

use serde::Serialize;

use super::guest::{Filesystem, GuestDisk};
use crate::source::libvirt::stats::BlockSample;

/// How a guest disk was matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MatchedBy {
    /// By serial.
    Serial,
    /// By the PCI address of a virtio disk.
    PciAddress,
    /// By bus type, bus, target and unit.
    BusTarget,
}

/// Why a filesystem has no drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// No fresh libvirt sample with disks to match against.
    NoLibvirtDisks,
    /// The agent named no disk under the filesystem (a tmpfs, a network filesystem, an
    /// agent without udev).
    NoDiskNamed,
    /// The agent named more disks than are kept.
    TooManyDisks,
    /// A disk under it fits no rule.
    NoMatch,
    /// A disk under it fits several libvirt disks by every rule that fits it at all.
    Ambiguous,
    /// Its disks match different drives (a volume group or RAID over several).
    SeveralDrives,
}

/// Whether a libvirt disk fits a guest disk by one rule.
type Rule<'a> = dyn Fn(&BlockSample) -> bool + 'a;

/// The libvirt disk of one guest disk.
fn disk_of<'a>(d: &GuestDisk, blocks: &'a [BlockSample]) -> Result<(&'a BlockSample, MatchedBy), Unmatched> {
    let by_serial = |b: &BlockSample| match (d.serial.as_deref(), b.identity.serial.as_deref()) {
        (Some(g), Some(h)) => {
            g == h
                || (g.len() == 20 && h.starts_with(g))
                || g.strip_suffix(h).is_some_and(|vendor_model| vendor_model.ends_with('_'))
        }
        _ => false,
    };
    let by_pci = |b: &BlockSample| {
        let Some(p) = b.identity.pci else { return false };
        d.bus_type.as_deref() == Some("virtio") && d.pci == Some([p.domain, p.bus, p.slot, p.function])
    };
    let by_bus = |b: &BlockSample| {
        let Some(a) = b.identity.drive else { return false };
        d.bus_type.is_some()
            && d.bus_type.as_deref() != Some("virtio")
            && d.bus_type == b.identity.bus
            && (d.bus, d.target, d.unit) == (Some(a.bus), Some(a.target), Some(a.unit))
    };
    let rules: [(MatchedBy, &Rule<'_>); 3] =
        [(MatchedBy::Serial, &by_serial), (MatchedBy::PciAddress, &by_pci), (MatchedBy::BusTarget, &by_bus)];
    let mut ambiguous = false;
    for (by, fits) in rules {
        let mut found = blocks.iter().filter(|b| fits(b));
        match (found.next(), found.next()) {
            (Some(b), None) => return Ok((b, by)),
            (Some(_), Some(_)) => ambiguous = true,
            _ => {}
        }
    }
    Err(if ambiguous { Unmatched::Ambiguous } else { Unmatched::NoMatch })
}

/// The libvirt disk under `fs` (whose `label()` is its `drive`), and how its first disk
/// matched.
pub fn drive_of<'a>(fs: &Filesystem, blocks: &'a [BlockSample]) -> Result<(&'a BlockSample, MatchedBy), Unmatched> {
    if blocks.is_empty() {
        return Err(Unmatched::NoLibvirtDisks);
    }
    if fs.more_disks {
        return Err(Unmatched::TooManyDisks);
    }
    let mut found: Option<(&BlockSample, MatchedBy)> = None;
    for d in &fs.disks {
        let (b, by) = disk_of(d, blocks)?;
        match found {
            Some((first, _)) if first.label() != b.label() => return Err(Unmatched::SeveralDrives),
            Some(_) => {}
            None => found = Some((b, by)),
        }
    }
    found.ok_or(Unmatched::NoDiskNamed)
}

/// One filesystem's join, for `/debug`.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct FsDrive {
    /// Mount point.
    pub mount_point: String,
    /// The guest's device name (`disk_name`).
    pub disk_name: String,
    /// Its drive, when joined.
    pub drive: Option<String>,
    /// How its (first) disk matched.
    pub matched_by: Option<MatchedBy>,
    /// Why it has no drive.
    pub unmatched: Option<Unmatched>,
}

/// Every filesystem's join, as `vmbridge_guest_filesystem_drive_info` makes it.
pub fn report(filesystems: &[Filesystem], blocks: &[BlockSample]) -> Vec<FsDrive> {
    filesystems
        .iter()
        .map(|fs| {
            let joined = drive_of(fs, blocks);
            FsDrive {
                mount_point: fs.mountpoint.clone(),
                disk_name: fs.name.clone(),
                drive: joined.as_ref().ok().map(|(b, _)| b.label().to_owned()),
                matched_by: joined.as_ref().ok().map(|(_, by)| *by),
                unmatched: joined.err(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::libvirt::aliases::{Aliases, DeviceLabels, DiskIdentity, DriveAddress, PciAddress};
    use crate::source::libvirt::stats::DomainSample;
    use crate::source::qga::guest::MAX_FS_DISKS;
    use crate::source::qga::{GuestData, GuestLimits};
    use serde_json::{Value, json};

    /// The lab guest's recorded domain XML and fsinfo reply (`lab.sh add-guest` with
    /// `VMB_GUEST_DRIVE_DISKS=1`): rootdisk, datadisk and logdisk, the last two with serials.
    const DOMAIN: &str = include_str!("../../../integration/fixtures/guest-drives-domain.xml");
    const FSINFO: &str = include_str!("../../../integration/fixtures/guest-drives-fsinfo.json");

    fn blocks_of(xml: &str) -> Vec<BlockSample> {
        let aliases = Aliases::parse(xml);
        let mut s = DomainSample {
            blocks: aliases.disk_ids.keys().map(|t| BlockSample { name: t.clone(), ..Default::default() }).collect(),
            ..Default::default()
        };
        s.apply_aliases(&aliases, DeviceLabels::Auto);
        s.blocks
    }

    fn filesystems(reply: &Value) -> Vec<Filesystem> {
        let mut g = GuestData::default();
        g.apply("guest-get-fsinfo", reply, &GuestLimits::default(), &mut Default::default(), &mut Default::default()).expect("parses");
        g.filesystems.expect("filesystems")
    }

    fn joined(fs: &[Filesystem], blocks: &[BlockSample]) -> Vec<(String, Option<String>, Option<MatchedBy>)> {
        report(fs, blocks).into_iter().map(|r| (r.mount_point, r.drive, r.matched_by)).collect()
    }

    fn block(name: &str, alias: &str, identity: DiskIdentity) -> BlockSample {
        let label = crate::source::libvirt::aliases::label(Some(alias), name, DeviceLabels::Auto);
        BlockSample { name: name.into(), alias: Some(alias.into()), label, identity, ..Default::default() }
    }

    fn pci(bus: u32) -> Option<PciAddress> {
        Some(PciAddress { domain: 0, bus, slot: 0, function: 0 })
    }

    #[test]
    fn the_recorded_lab_guest_joins_by_serial() {
        let blocks = blocks_of(DOMAIN);
        assert_eq!(blocks.len(), 3, "{blocks:?}");
        let data = blocks.iter().find(|b| b.name == "vdb").expect("vdb");
        assert_eq!(data.identity.serial.as_deref(), Some("vmb-datadisk"));
        assert_eq!(data.identity.pci, pci(5));
        assert_eq!(data.identity.bus.as_deref(), Some("virtio"));
        let fs = filesystems(&serde_json::from_str(FSINFO).expect("json"));
        let mut got = joined(&fs, &blocks);
        got.sort();
        assert_eq!(
            got,
            [
                ("/data".into(), Some("datadisk".into()), Some(MatchedBy::Serial)),
                ("/logs".into(), Some("logdisk".into()), Some(MatchedBy::Serial)),
            ]
        );
    }

    #[test]
    fn without_serials_the_pci_address_of_a_virtio_disk_joins() {
        let blocks = blocks_of(DOMAIN);
        let mut reply: Value = serde_json::from_str(FSINFO).expect("json");
        for fs in reply.as_array_mut().expect("list") {
            fs["disk"][0].as_object_mut().expect("disk").remove("serial");
        }
        let mut got = joined(&filesystems(&reply), &blocks);
        got.sort();
        assert_eq!(got[0], ("/data".into(), Some("datadisk".into()), Some(MatchedBy::PciAddress)));
        assert_eq!(got[1], ("/logs".into(), Some("logdisk".into()), Some(MatchedBy::PciAddress)));
        // The same address under a bus type other than virtio is a controller's, not a disk's.
        reply[0]["disk"][0]["bus-type"] = json!("scsi");
        let got = report(&filesystems(&reply), &blocks);
        assert_eq!(got[0].unmatched, Some(Unmatched::NoMatch), "{got:?}");
    }

    #[test]
    fn scsi_disks_join_by_bus_target_and_unit_and_by_udev_serials() {
        let scsi = |unit: u32, serial: Option<&str>| DiskIdentity {
            serial: serial.map(Into::into),
            bus: Some("scsi".into()),
            pci: None,
            drive: Some(DriveAddress { controller: 0, bus: 0, target: 0, unit }),
        };
        let blocks = [block("sda", "ua-os", scsi(0, None)), block("sdb", "ua-db", scsi(1, Some("pvc-db")))];
        let fs = |disk: Value| json!({"name": "sdx1", "mountpoint": "/m", "type": "xfs", "disk": [disk]});
        let one = |disk: Value| joined(&filesystems(&json!([fs(disk)])), &blocks).remove(0);
        let addr = json!({"domain": 0, "bus": 3, "slot": 0, "function": 0});
        assert_eq!(
            one(json!({"bus-type": "scsi", "bus": 0, "target": 0, "unit": 1, "pci-controller": addr})),
            ("/m".into(), Some("db".into()), Some(MatchedBy::BusTarget))
        );
        assert_eq!(
            one(json!({"bus-type": "scsi", "bus": 0, "target": 0, "unit": 0, "pci-controller": addr})).1.as_deref(),
            Some("os")
        );
        // udev's ID_SERIAL of a SCSI disk: vendor and model, then the serial.
        assert_eq!(
            one(json!({"serial": "0QEMU_QEMU_HARDDISK_pvc-db", "bus-type": "scsi"})),
            ("/m".into(), Some("db".into()), Some(MatchedBy::Serial))
        );
        // A serial is not matched by a mere prefix or suffix of another's.
        assert_eq!(one(json!({"serial": "xpvc-db", "bus-type": "scsi"})).1, None);
        // A SATA disk at the same place is not a SCSI one.
        assert_eq!(one(json!({"bus-type": "sata", "bus": 0, "target": 0, "unit": 1})).1, None);
    }

    #[test]
    fn virtio_serials_are_matched_by_their_first_20_bytes() {
        let id = DiskIdentity { serial: Some("a-very-long-serial-of-a-pvc".into()), ..Default::default() };
        let blocks = [block("vdb", "ua-data", id)];
        let fs =
            json!([{"name": "vdb", "mountpoint": "/d", "type": "ext4", "disk": [{"serial": "a-very-long-serial-o"}]}]);
        assert_eq!(joined(&filesystems(&fs), &blocks)[0].1.as_deref(), Some("data"));
        let fs = json!([{"name": "vdb", "mountpoint": "/d", "type": "ext4", "disk": [{"serial": "a-very-long"}]}]);
        assert_eq!(report(&filesystems(&fs), &blocks)[0].unmatched, Some(Unmatched::NoMatch));
    }

    #[test]
    fn unmatched_filesystems_say_why() {
        let blocks = [
            block("vda", "ua-a", DiskIdentity { serial: Some("same".into()), pci: pci(4), ..Default::default() }),
            block("vdb", "ua-b", DiskIdentity { serial: Some("same".into()), pci: pci(5), ..Default::default() }),
        ];
        let virtio = |serial: &str, bus: u32| json!({"serial": serial, "bus-type": "virtio", "pci-controller": {"domain": 0, "bus": bus, "slot": 0, "function": 0}});
        let reply = json!([
            // Two disks share the serial: the PCI address decides.
            {"name": "vda1", "mountpoint": "/a", "type": "ext4", "disk": [virtio("same", 4)]},
            // Neither rule fits.
            {"name": "vdc", "mountpoint": "/c", "type": "ext4", "disk": [virtio("other", 9)]},
            // Two serials alike and no address: ambiguous.
            {"name": "vdx", "mountpoint": "/x", "type": "ext4", "disk": [{"serial": "same"}]},
            // A volume group over both disks.
            {"name": "dm-0", "mountpoint": "/lv", "type": "xfs", "disk": [virtio("", 4), virtio("", 5)]},
            // Two partitions of one disk.
            {"name": "md0", "mountpoint": "/md", "type": "ext4", "disk": [virtio("", 5), virtio("", 5)]},
            {"name": "tmpfs", "mountpoint": "/run", "type": "tmpfs", "disk": []},
            {"name": "many", "mountpoint": "/many", "type": "ext4", "disk": vec![virtio("", 4); MAX_FS_DISKS + 1]},
        ]);
        let fs = filesystems(&reply);
        let got: Vec<(Option<String>, Option<MatchedBy>, Option<Unmatched>)> =
            report(&fs, &blocks).into_iter().map(|r| (r.drive, r.matched_by, r.unmatched)).collect();
        assert_eq!(
            got,
            [
                (Some("a".into()), Some(MatchedBy::PciAddress), None),
                (None, None, Some(Unmatched::NoMatch)),
                (None, None, Some(Unmatched::Ambiguous)),
                (None, None, Some(Unmatched::SeveralDrives)),
                (Some("b".into()), Some(MatchedBy::PciAddress), None),
                (None, None, Some(Unmatched::NoDiskNamed)),
                (None, None, Some(Unmatched::TooManyDisks)),
            ]
        );
        assert!(report(&fs, &[]).iter().all(|r| r.unmatched == Some(Unmatched::NoLibvirtDisks)));
    }

    #[test]
    fn hostile_disk_entries_are_bounded_and_never_panic() {
        let blocks = blocks_of(DOMAIN);
        let long = "s".repeat(10_000);
        let reply = json!([
            {"name": "a", "mountpoint": "/a", "type": "ext4", "disk": "not a list"},
            {"name": "b", "mountpoint": "/b", "type": "ext4", "disk": [null, 7, {"serial": 5, "bus": -1, "target": 1e30,
                "unit": u64::MAX, "pci-controller": {"domain": -1, "bus": "x"}, "bus-type": ["virtio"], "dev": {}}]},
            {"name": "c", "mountpoint": "/c", "type": "ext4", "disk": [{"serial": long, "dev": "/dev/\u{7}vdb\n"}]},
            {"name": "d", "mountpoint": "/d", "type": "ext4", "disk": [{"serial": "vmb-datadisk\u{0}", "bus-type": "virtio"}]},
            {"name": "e", "mountpoint": "/e", "type": "ext4", "disk": [{"serial": "  "}]},
        ]);
        let fs = filesystems(&reply);
        assert!(fs[0].disks.is_empty());
        assert_eq!(fs[1].disks, [GuestDisk::default(), GuestDisk::default(), GuestDisk::default()]);
        assert!(fs[2].disks[0].serial.as_ref().is_some_and(|s| s.len() <= 128));
        assert_eq!(fs[2].disks[0].dev.as_deref(), Some("/dev/?vdb"));
        assert_eq!(fs[4].disks[0].serial, None);
        let got: Vec<Option<Unmatched>> = report(&fs, &blocks).into_iter().map(|r| r.unmatched).collect();
        // A serial with a control character cleans to another serial: no match.
        assert_eq!(
            got,
            [
                Some(Unmatched::NoDiskNamed),
                Some(Unmatched::NoMatch),
                Some(Unmatched::NoMatch),
                Some(Unmatched::NoMatch),
                Some(Unmatched::NoMatch)
            ]
        );
        // A hostile domain XML (the definer's) gives addresses only when they parse.
        let xml = "<domain><devices><disk><target dev='vdz' bus='virtio'/><serial> </serial>\
            <address type='pci' domain='0xZZ' bus='0x1' slot='0' function='0'/></disk></devices></domain>";
        let b = blocks_of(xml);
        assert_eq!(b[0].identity, DiskIdentity { bus: Some("virtio".into()), ..Default::default() });
    }
}
