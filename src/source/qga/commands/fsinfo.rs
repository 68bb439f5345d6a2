//! `guest-get-fsinfo`: filesystem capacity and use per mount point, and each filesystem's
//! KubeVirt drive (joined through libvirt's disks: `qga::drives`).

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::source::libvirt::Libvirt;
use crate::source::qga::drives::drive_of;

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

family!(
    FS_DRIVE,
    "vmbridge_guest_filesystem_drive",
    Info,
    N,
    ["mount_point", "disk_name", "drive"],
    Guest,
    "qga guest-get-fsinfo disk matched to libvirt's <disk> by serial, else PCI address (virtio), else bus/target/unit",
    Vm,
    "The drive holding all of the file system's disks; the value is always 1."
);

type FsField = fn(&Filesystem) -> Option<u64>;
pub(super) const FS: [(&MetricDef, FsField); 2] = [(&FS_CAPACITY, |f| f.total_bytes), (&FS_USED, |f| f.used_bytes)];

pub(super) const FSINFO: Command = Command {
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
            let total = reject::check(&super::RULES, &FS_CAPACITY, raw("total-bytes"), 1.0, Context::default(), at, rejected);
            let used =
                reject::check(&super::RULES, &FS_USED, raw("used-bytes"), 1.0, Context { limit: total, previous: None }, at, rejected);
            let total_bytes = total.and_then(|_| raw("total-bytes").as_u64());
            let used_bytes = used.and_then(|_| raw("used-bytes").as_u64());
            let disks = item.get("disk").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            out.push(Filesystem {
                name,
                mountpoint,
                fstype,
                total_bytes,
                used_bytes,
                disks: disks.iter().take(MAX_FS_DISKS).map(|d| GuestDisk::parse(d, max)).collect(),
                more_disks: disks.len() > MAX_FS_DISKS,
            });
        }
        count_drop(dropped, "filesystem", left_out);
        g.filesystems = Some(out);
        Ok(())
    },
    families: &[&FS_CAPACITY, &FS_USED, &FS_DRIVE],
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
        let mut f = start(enc, &FS_DRIVE)?;
        for vm in vms {
            let Some(filesystems) = data(vm).and_then(|g| g.filesystems.as_deref()) else { continue };
            let blocks = vm.sample::<Libvirt>().map(|l| l.parsed.blocks.as_slice()).unwrap_or_default();
            // Two filesystems differing only in type would be one series twice: the first is kept.
            let mut written: Vec<(&str, &str)> = Vec::new();
            for fs in filesystems {
                let Ok((disk, _)) = drive_of(fs, blocks) else { continue };
                if written.contains(&(fs.mountpoint.as_str(), fs.name.as_str())) {
                    continue;
                }
                written.push((&fs.mountpoint, &fs.name));
                let labels =
                    [("mount_point", fs.mountpoint.as_str()), ("disk_name", &fs.name), ("drive", disk.label())];
                f.vm_sample(vm, &labels, Some(1.0))?;
            }
        }
        Ok(())
    },
    private: &[],
};

