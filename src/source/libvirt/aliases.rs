//! Device names as KubeVirt labels them. KubeVirt gives each disk and NIC of a VMI a libvirt
//! *user alias*, `ua-<name>` (`ua-rootdisk`, `ua-default`), and labels its `drive` and
//! `interface` series with that name. libvirt's bulk stats name devices by target (`vda`,
//! the tap device), so the aliases are read from the domain XML (`virDomainGetXMLDesc`
//! without secure flags: read-only, no secrets) once per VM and again whenever the set of
//! devices in the stats changes (a hot-plug).

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
            if let (Some(target), Some(alias)) = (attr("target", "dev"), attr("alias", "name")) {
                if map.len() < MAX_DEVICES {
                    map.insert(crate::model::label(&target, MAX_ALIAS), crate::model::label(&alias, MAX_ALIAS));
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
