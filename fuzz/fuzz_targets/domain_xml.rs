//! A domain's XML (`virDomainGetXMLDesc`; on KubeVirt written by a launcher pod the node does not
//! control) through `Aliases::parse` and the device labels made from it: never a panic, at most
//! 256 devices of a kind, every alias and target at most 128 bytes without control characters,
//! and a label is either the device's target or the name in a `ua-` alias.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmbridge::source::libvirt::aliases::{label, user_name, Aliases, DeviceLabels};

fn clean(what: &str, s: &str) {
    assert!(s.len() <= 128, "{what} is {} bytes: {s:?}", s.len());
    assert!(!s.chars().any(char::is_control), "{what} has a control character: {s:?}");
}

fuzz_target!(|data: &[u8]| {
    let xml = String::from_utf8_lossy(data);
    let a = Aliases::parse(&xml);
    for (kind, map) in [("disk", &a.disks), ("interface", &a.nets)] {
        assert!(map.len() <= 256, "{} {kind}s", map.len());
        for (target, alias) in map {
            clean("target", target);
            clean("alias", alias);
            for mode in [DeviceLabels::Auto, DeviceLabels::Target] {
                let l = label(Some(alias), target, mode);
                clean("label", &l);
                match (mode, user_name(alias)) {
                    (DeviceLabels::Auto, Some(name)) => {
                        assert_eq!(l, name);
                        assert!(!name.is_empty());
                    }
                    _ => assert_eq!(&l, target),
                }
            }
        }
    }
    // Parsing is a function of the text: the same XML gives the same aliases.
    assert_eq!(Aliases::parse(&xml), a);
});
