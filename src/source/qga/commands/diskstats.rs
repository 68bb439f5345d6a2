//! `guest-get-diskstats`: the guest's `/proc/diskstats`.

#[allow(clippy::wildcard_imports)]
use super::*;

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
pub(super) const DISK: [(&MetricDef, DiskField); 10] = [
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

pub(super) const DISKSTATS: Command = Command {
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

