//! Guest group: what only the qemu-guest-agent knows. Every label value here came from the
//! guest and was cleaned and capped when parsed (`source::qga::guest`).

use prometheus_client::encoding::DescriptorEncoder;

use super::{VmView, family, num};
use crate::catalogue::{self as c, MetricDef};
use crate::source::qga::GuestData;
use crate::source::qga::guest::{DiskStats, Filesystem, InterfaceStats};

type VmField = fn(&GuestData) -> Option<f64>;
type FsField = fn(&Filesystem) -> Option<u64>;
type NetField = fn(&InterfaceStats) -> u64;
type DiskField = fn(&DiskStats) -> Option<f64>;

/// Milliseconds to seconds.
fn ms(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64 / 1000.0)
}

/// 512-byte sectors to bytes.
fn sectors(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64 * 512.0)
}

const PER_VM: [(&MetricDef, VmField); 8] = [
    (&c::GUEST_LOAD_1M, |g| g.load.map(|l| l.load1)),
    (&c::GUEST_LOAD_5M, |g| g.load.map(|l| l.load5)),
    (&c::GUEST_LOAD_15M, |g| g.load.map(|l| l.load15)),
    (&c::GUEST_VCPUS, |g| num(g.vcpus_total)),
    (&c::GUEST_VCPUS_ONLINE, |g| num(g.vcpus_online)),
    (&c::GUEST_MEMORY_BLOCK, |g| num(g.memory_block_size_bytes)),
    (&c::GUEST_USERS, |g| num(g.users)),
    (&c::GUEST_TIMEZONE, |g| g.timezone_offset_seconds.map(|v| v as f64)),
];

const FS: [(&MetricDef, FsField); 2] = [(&c::FS_CAPACITY, |f| f.total_bytes), (&c::FS_USED, |f| f.used_bytes)];

const NET: [(&MetricDef, NetField); 8] = [
    (&c::GUEST_NET_RX_BYTES, |s| s.rx_bytes),
    (&c::GUEST_NET_TX_BYTES, |s| s.tx_bytes),
    (&c::GUEST_NET_RX_PACKETS, |s| s.rx_packets),
    (&c::GUEST_NET_TX_PACKETS, |s| s.tx_packets),
    (&c::GUEST_NET_RX_ERRORS, |s| s.rx_errs),
    (&c::GUEST_NET_TX_ERRORS, |s| s.tx_errs),
    (&c::GUEST_NET_RX_DROPPED, |s| s.rx_dropped),
    (&c::GUEST_NET_TX_DROPPED, |s| s.tx_dropped),
];

const DISK: [(&MetricDef, DiskField); 10] = [
    (&c::GUEST_DISK_READ_IOS, |d| num(d.read_ios)),
    (&c::GUEST_DISK_READ_BYTES, |d| sectors(d.read_sectors)),
    (&c::GUEST_DISK_READ_TIME, |d| ms(d.read_ticks)),
    (&c::GUEST_DISK_WRITE_IOS, |d| num(d.write_ios)),
    (&c::GUEST_DISK_WRITE_BYTES, |d| sectors(d.write_sectors)),
    (&c::GUEST_DISK_WRITE_TIME, |d| ms(d.write_ticks)),
    (&c::GUEST_DISK_FLUSH_IOS, |d| num(d.flush_ios)),
    (&c::GUEST_DISK_FLUSH_TIME, |d| ms(d.flush_ticks)),
    (&c::GUEST_DISK_IO_TIME, |d| ms(d.total_ticks)),
    (&c::GUEST_DISK_IN_PROGRESS, |d| num(d.ios_pgr)),
];

fn data<'a>(vm: &VmView<'a>) -> Option<&'a GuestData> {
    vm.qga.map(|q| &q.data)
}

/// Writes the guest families.
pub(super) fn encode(enc: &mut DescriptorEncoder<'_>, vms: &[VmView<'_>]) -> std::fmt::Result {
    for (def, get) in FS {
        let mut f = family(enc, def)?;
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
    for (def, get) in PER_VM {
        let mut f = family(enc, def)?;
        for vm in vms {
            f.vm_sample(vm, &[], data(vm).and_then(get))?;
        }
    }
    for (def, get) in NET {
        let mut f = family(enc, def)?;
        for vm in vms {
            for i in data(vm).and_then(|g| g.interfaces.as_deref()).unwrap_or_default() {
                if let Some(s) = &i.stats {
                    f.vm_sample(vm, &[("interface", &i.name)], Some(get(s) as f64))?;
                }
            }
        }
    }
    for (def, get) in DISK {
        let mut f = family(enc, def)?;
        for vm in vms {
            for d in data(vm).and_then(|g| g.disks.as_deref()).unwrap_or_default() {
                f.vm_sample(vm, &[("disk", &d.name)], get(d))?;
            }
        }
    }
    let mut f = family(enc, &c::GUEST_CPU)?;
    for vm in vms {
        for cpu in data(vm).and_then(|g| g.cpus.as_deref()).unwrap_or_default() {
            let id = cpu.cpu.to_string();
            for (mode, v) in &cpu.modes {
                f.vm_sample(vm, &[("cpu", &id), ("mode", mode)], ms(Some(*v)))?;
            }
        }
    }
    let mut f = family(enc, &c::GUEST_OS_INFO)?;
    for vm in vms {
        let Some(g) = data(vm) else { continue };
        if g.os.is_none() && g.hostname.is_none() {
            continue;
        }
        let os = g.os.clone().unwrap_or_default();
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        let values = [
            s(&os.id),
            s(&os.name),
            s(&os.pretty_name),
            s(&os.version),
            s(&os.version_id),
            s(&os.kernel_release),
            s(&os.kernel_version),
            s(&os.machine),
            s(&g.hostname),
        ];
        let labels: Vec<(&str, &str)> =
            c::GUEST_OS_INFO.labels.iter().copied().zip(values.iter().map(String::as_str)).collect();
        f.vm_sample(vm, &labels, Some(1.0))?;
    }
    let mut f = family(enc, &c::GUEST_AGENT_INFO)?;
    for vm in vms {
        if let Some(v) = data(vm).and_then(|g| g.agent_version.as_deref()) {
            f.vm_sample(vm, &[("version", v)], Some(1.0))?;
        }
    }
    let mut f = family(enc, &c::GUEST_ADDRESS_INFO)?;
    for vm in vms {
        for i in data(vm).and_then(|g| g.interfaces.as_deref()).unwrap_or_default() {
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
}
