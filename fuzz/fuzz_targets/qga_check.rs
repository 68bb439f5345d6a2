//! What every guest-agent fuzz target checks after a reply went through `GuestData::apply`:
//! caps hold, every exported label is short and clean, and a rejected reply changed nothing.
//! Included by `qga_reply.rs` and `qga_command.rs` with `#[path]`.

use serde_json::Value;
use vmbridge::source::qga::{Dropped, GuestData, GuestLimits};

/// Tight caps make the cap paths reachable with small inputs.
pub const TIGHT: GuestLimits =
    GuestLimits { filesystems: 2, interfaces: 2, addresses: 3, disks: 2, cpus: 2, label_bytes: 16, series: 24 };

fn check_label(what: &str, s: &str, lim: &GuestLimits) {
    assert!(s.len() <= lim.label_bytes, "{what} label is {} bytes > {}: {s:?}", s.len(), lim.label_bytes);
    assert!(!s.chars().any(char::is_control), "{what} label has a control character: {s:?}");
}

pub fn check(g: &GuestData, lim: &GuestLimits) {
    let opt = |what: &str, s: &Option<String>| {
        if let Some(s) = s {
            check_label(what, s, lim);
        }
    };
    opt("agent_version", &g.agent_version);
    opt("hostname", &g.hostname);
    if let Some(fs) = &g.filesystems {
        assert!(fs.len() <= lim.filesystems, "{} filesystems > {}", fs.len(), lim.filesystems);
        for f in fs {
            check_label("fs.name", &f.name, lim);
            check_label("fs.mountpoint", &f.mountpoint, lim);
            check_label("fs.fstype", &f.fstype, lim);
        }
    }
    if let Some(ifs) = &g.interfaces {
        assert!(ifs.len() <= lim.interfaces, "{} interfaces > {}", ifs.len(), lim.interfaces);
        let addrs: usize = ifs.iter().map(|i| i.addresses.len()).sum();
        assert!(addrs <= lim.addresses, "{addrs} addresses > {}", lim.addresses);
        for i in ifs {
            check_label("iface.name", &i.name, lim);
            opt("iface.mac", &i.mac);
            for a in &i.addresses {
                check_label("addr.address", &a.address, lim);
                assert!(a.family == "ipv4" || a.family == "ipv6", "family {:?}", a.family);
            }
        }
    }
    if let Some(os) = &g.os {
        for (what, s) in [
            ("os.id", &os.id),
            ("os.name", &os.name),
            ("os.pretty_name", &os.pretty_name),
            ("os.version", &os.version),
            ("os.version_id", &os.version_id),
            ("os.kernel_release", &os.kernel_release),
            ("os.kernel_version", &os.kernel_version),
            ("os.machine", &os.machine),
        ] {
            opt(what, s);
        }
    }
    if let Some(disks) = &g.disks {
        assert!(disks.len() <= lim.disks, "{} disks > {}", disks.len(), lim.disks);
        for d in disks {
            check_label("disk.name", &d.name, lim);
        }
    }
    if let Some(cpus) = &g.cpus {
        assert!(cpus.len() <= lim.cpus, "{} cpus > {}", cpus.len(), lim.cpus);
        for c in cpus {
            assert!(c.modes.len() <= 10);
        }
    }
    assert!(g.series() <= lim.series, "{} series > {}", g.series(), lim.series);
    // Impossible values never reach the data (`source::reject`).
    for f in g.filesystems.iter().flatten() {
        if let (Some(used), Some(total)) = (f.used_bytes, f.total_bytes) {
            assert!(used <= total, "used {used} > total {total}");
        }
    }
    if let Some(l) = g.load {
        for v in [l.load1, l.load5, l.load15].into_iter().flatten() {
            assert!(v.is_finite() && v >= 0.0, "load {v}");
        }
    }
    if let (Some(total), Some(online)) = (g.vcpus_total, g.vcpus_online) {
        assert!(online <= total);
    }
}

/// Applies `v` as the reply to each of `names`, in turn, to one `GuestData`.
pub fn run(names: &[&str], v: &Value, lim: &GuestLimits) {
    let mut g = GuestData::default();
    let mut dropped = Dropped::new();
    let mut rejected = vmbridge::source::reject::Rejections::default();
    for &name in names {
        let before = g.clone();
        let r = g.apply(name, v, lim, &mut dropped, &mut rejected);
        if r.is_err() {
            // A rejected reply must not half-update what the previous good reply left.
            assert_eq!(g, before, "{name} changed the data and then failed");
        }
        check(&g, lim);
    }
    for k in dropped.keys() {
        assert!(["filesystem", "interface", "address", "disk", "cpu"].contains(&k.as_str()), "drop kind {k:?}");
    }
    // Rejections: bounded, and labelled only from the fixed sets.
    let families: Vec<String> = vmbridge::source::qga::commands::RULES.iter().map(|r| r.family.exposed_name()).collect();
    assert!(rejected.last.len() <= vmbridge::source::reject::KEEP);
    for (family, reasons) in &rejected.counts {
        assert!(families.contains(family), "family {family:?}");
        for reason in reasons.keys() {
            assert!(vmbridge::source::reject::Reason::ALL.iter().any(|r| r.as_str() == reason), "reason {reason:?}");
        }
    }
}

