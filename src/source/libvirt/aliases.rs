//! Device names as KubeVirt labels them. KubeVirt gives each disk and NIC of a VMI a libvirt
//! *user alias*, `ua-<name>` (`ua-rootdisk`, `ua-default`), and labels its `drive` and
//! `interface` series with that name. libvirt's bulk stats name devices by target (`vda`,
//! the tap device), so the aliases are read from the domain XML (`virDomainGetXMLDesc`
//! without secure flags: read-only, no secrets) once per VM and again whenever the set of
//! devices in the stats changes (a hot-plug).
//!
//! The same read gives what identifies each disk to its guest (its `<serial>`, its PCI
//! `<address>`, its bus and drive address): the guest agent names a filesystem's disk by
//! those, and the guest source joins its filesystems to KubeVirt's `drive` through them.

use std::collections::BTreeMap;

/// Whether `drive` and `interface` labels use the user alias.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceLabels {
    /// A device's user alias without `ua-` when it has one (every KubeVirt disk and NIC),
    /// else its target name (`vda`, the tap device).
    #[default]
    Auto,
    /// Always the target name.
    Target,
}

/// libvirt aliases by target name, per device kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases {
    /// Disk target (`vda`) → alias (`ua-rootdisk`, `virtio-disk0`).
    pub disks: BTreeMap<String, String>,
    /// Interface target (`vnet0`, `tap0`) → alias (`ua-default`, `net0`).
    pub nets: BTreeMap<String, String>,
    /// Disk target (`vda`) → what the guest can see of the disk.
    pub disk_ids: BTreeMap<String, DiskIdentity>,
}

/// What identifies a disk to its guest, from the domain XML (all of it the definer's).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct DiskIdentity {
    /// `<serial>`: what the guest reads as the disk's serial (virtio-blk shows it the first
    /// 20 bytes).
    pub serial: Option<String>,
    /// `<target bus=…>`: `virtio`, `scsi`, `sata`, `ide`, `usb`.
    pub bus: Option<String>,
    /// `<address type='pci' …/>`: the disk's own PCI function (a virtio-blk disk).
    pub pci: Option<PciAddress>,
    /// `<address type='drive' …/>`: its place on a SCSI, SATA or IDE controller.
    pub drive: Option<DriveAddress>,
}

/// A PCI address (`domain:bus:slot.function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct PciAddress {
    /// PCI domain.
    pub domain: u32,
    /// Bus number.
    pub bus: u32,
    /// Slot.
    pub slot: u32,
    /// Function.
    pub function: u32,
}

/// A disk's place on its controller (`<address type='drive' controller bus target unit/>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct DriveAddress {
    /// Controller index.
    pub controller: u32,
    /// Bus (SCSI channel).
    pub bus: u32,
    /// Target (SCSI id).
    pub target: u32,
    /// Unit (SCSI LUN).
    pub unit: u32,
}

/// A libvirt address number: `0x1f` or `31`.
fn number(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

impl DiskIdentity {
    /// Reads one `<disk>` element's identity.
    fn parse(disk: roxmltree::Node<'_, '_>) -> DiskIdentity {
        let child = |tag: &str| disk.children().find(|n| n.has_tag_name(tag));
        let serial = child("serial").and_then(|n| n.text()).map(str::trim).filter(|s| !s.is_empty());
        let bus = child("target").and_then(|n| n.attribute("bus"));
        let address = child("address");
        let num = |name: &str| address.and_then(|a| number(a.attribute(name).unwrap_or("0")));
        let pci = address.filter(|a| a.attribute("type") == Some("pci")).and_then(|_| {
            Some(PciAddress {
                domain: num("domain")?,
                bus: num("bus")?,
                slot: num("slot")?,
                function: num("function")?,
            })
        });
        let drive = address.filter(|a| a.attribute("type") == Some("drive")).and_then(|_| {
            Some(DriveAddress {
                controller: num("controller")?,
                bus: num("bus")?,
                target: num("target")?,
                unit: num("unit")?,
            })
        });
        DiskIdentity {
            serial: serial.map(|s| crate::model::label(s, MAX_ALIAS)),
            bus: bus.map(|b| crate::model::label(b, MAX_ALIAS)),
            pci,
            drive,
        }
    }
}

/// Longest alias kept; libvirt's are short, and the XML is the definer's.
const MAX_ALIAS: usize = 128;

/// Most devices of one kind read from one domain.
const MAX_DEVICES: usize = 256;

impl Aliases {
    /// Reads the aliases of a domain's disks and interfaces. An XML that does not parse gives
    /// no aliases (the labels stay the target names).
    pub fn parse(xml: &str) -> Aliases {
        let mut out = Aliases::default();
        let Ok(doc) = roxmltree::Document::parse(xml) else { return out };
        let Some(devices) = doc.root_element().children().find(|n| n.has_tag_name("devices")) else { return out };
        for dev in devices.children().filter(roxmltree::Node::is_element) {
            let map = match dev.tag_name().name() {
                "disk" => &mut out.disks,
                "interface" => &mut out.nets,
                _ => continue,
            };
            let attr = |tag: &str, name: &str| {
                dev.children().find(|n| n.has_tag_name(tag)).and_then(|n| n.attribute(name)).map(str::to_owned)
            };
            let Some(target) = attr("target", "dev") else { continue };
            let target = crate::model::label(&target, MAX_ALIAS);
            if dev.has_tag_name("disk") && out.disk_ids.len() < MAX_DEVICES {
                out.disk_ids.insert(target.clone(), DiskIdentity::parse(dev));
            }
            if let Some(alias) = attr("alias", "name") {
                if map.len() < MAX_DEVICES {
                    map.insert(target, crate::model::label(&alias, MAX_ALIAS));
                }
            }
        }
        out
    }
}

/// The label of a device named `target` with libvirt alias `alias`.
pub fn label(alias: Option<&str>, target: &str, mode: DeviceLabels) -> String {
    match (mode, alias.and_then(user_name)) {
        (DeviceLabels::Auto, Some(name)) => name.to_owned(),
        _ => target.to_owned(),
    }
}

/// The name in a user alias (`ua-rootdisk` → `rootdisk`); `None` for libvirt's own aliases.
pub fn user_name(alias: &str) -> Option<&str> {
    alias.strip_prefix("ua-").filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEVIRT: &str = r#"<domain type='kvm' id='1'>
  <name>default_web</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/run/kubevirt/container-disks/disk_0.img'/>
      <target dev='vda' bus='virtio'/>
      <alias name='ua-containerdisk'/>
    </disk>
    <disk type='file' device='disk'>
      <target dev='vdb' bus='virtio'/>
      <alias name='virtio-disk1'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
    </disk>
    <interface type='ethernet'>
      <mac address='02:ab:cd:00:00:01'/>
      <target dev='tap0' managed='no'/>
      <alias name='ua-default'/>
    </interface>
    <serial type='unix'><target port='0'/><alias name='serial0'/></serial>
  </devices>
</domain>"#;

    #[test]
    fn aliases_of_disks_and_interfaces_are_read_by_target() {
        let a = Aliases::parse(KUBEVIRT);
        assert_eq!(a.disks.get("vda").map(String::as_str), Some("ua-containerdisk"));
        assert_eq!(a.disks.get("vdb").map(String::as_str), Some("virtio-disk1"));
        assert_eq!(a.disks.get("sda"), None, "a disk without an alias has none");
        assert_eq!(a.nets.get("tap0").map(String::as_str), Some("ua-default"));
        assert_eq!(a.nets.len(), 1, "serial ports are not interfaces");
    }

    #[test]
    fn disk_identities_come_from_the_recorded_lab_domain() {
        // `lab.sh add-guest` with VMB_GUEST_DRIVE_DISKS=1, as libvirt 9 dumped it.
        let a = Aliases::parse(include_str!("../../../integration/fixtures/guest-drives-domain.xml"));
        let pci = |bus| Some(PciAddress { domain: 0, bus, slot: 0, function: 0 });
        let id = |serial: Option<&str>, bus| DiskIdentity {
            serial: serial.map(Into::into),
            bus: Some("virtio".into()),
            pci: pci(bus),
            drive: None,
        };
        assert_eq!(a.disk_ids["vda"], id(None, 4));
        assert_eq!(a.disk_ids["vdb"], id(Some("vmb-datadisk"), 5));
        assert_eq!(a.disk_ids["vdc"], id(Some("vmb-logdisk"), 6));
        assert_eq!(a.disks["vdc"], "ua-logdisk");
        // A SCSI disk's drive address; decimal and hex numbers alike; a disk without an
        // alias still has its identity.
        let scsi = "<domain><devices><disk device='cdrom'><target dev='sdb' bus='scsi'/>\
            <address type='drive' controller='1' bus='0' target='0x2' unit='3'/></disk></devices></domain>";
        let a = Aliases::parse(scsi);
        assert_eq!(a.disk_ids["sdb"].drive, Some(DriveAddress { controller: 1, bus: 0, target: 2, unit: 3 }));
        assert_eq!(a.disk_ids["sdb"].bus.as_deref(), Some("scsi"));
        assert!(a.disks.is_empty());
    }

    #[test]
    fn labels_use_the_user_alias_only_in_auto_mode() {
        assert_eq!(label(Some("ua-rootdisk"), "vda", DeviceLabels::Auto), "rootdisk");
        assert_eq!(label(Some("ua-rootdisk"), "vda", DeviceLabels::Target), "vda");
        // libvirt's own aliases are not names anyone gave the device.
        assert_eq!(label(Some("virtio-disk0"), "vda", DeviceLabels::Auto), "vda");
        assert_eq!(label(Some("ua-"), "vda", DeviceLabels::Auto), "vda");
        assert_eq!(label(None, "vnet3", DeviceLabels::Auto), "vnet3");
    }

    #[test]
    fn hostile_or_broken_xml_gives_no_aliases_and_no_panic() {
        for xml in ["", "<domain>", "<domain><devices><disk><target/><alias name='ua-a'/></disk></devices></domain>"] {
            let a = Aliases::parse(xml);
            assert!(a.disks.is_empty() && a.nets.is_empty(), "{xml}: {a:?}");
        }
        // Entity expansion stays bounded (roxmltree refuses recursive and runaway entities).
        let laughs = "<!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>\
            <!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'><!ENTITY d '&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;'>]>\
            <domain><devices><disk><target dev='&d;&d;&d;&d;'/><alias name='ua-a'/></disk></devices></domain>";
        let a = Aliases::parse(laughs);
        assert!(a.disks.keys().all(|k| k.len() <= MAX_ALIAS), "{a:?}");
        let long = format!(
            "<domain><devices><disk><target dev='vda'/><alias name='ua-{}'/></disk></devices></domain>",
            "x".repeat(500)
        );
        let a = Aliases::parse(&long);
        assert!(a.disks["vda"].len() <= MAX_ALIAS, "alias not capped");
    }
}
