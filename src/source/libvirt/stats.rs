//! From libvirt's typed parameters (bulk stats) and memory stats to one typed sample per domain.
//!
//! Parsing happens once per poll, not per scrape: the collector only reads these structs.
//! Values stay in libvirt's units here (ns, KiB); the collector converts to base units.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ffi::ParamValue;

/// The most indexed devices (vCPUs, NICs, disks) one domain may report; more are ignored so a
/// misbehaving daemon cannot make a sample grow without bound.
pub const MAX_DEVICES: usize = 1024;

/// libvirt's run state and reason codes (`virDomainState`, `virDomain*Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct DomainState {
    /// `virDomainState` code.
    pub state: i64,
    /// Reason code, interpreted per state.
    pub reason: i64,
}

impl DomainState {
    /// The state as a lowercase word (`running`, `paused`, ...).
    pub fn state_name(&self) -> &'static str {
        match self.state {
            1 => "running",
            2 => "blocked",
            3 => "paused",
            4 => "shutdown",
            5 => "shutoff",
            6 => "crashed",
            7 => "pmsuspended",
            _ => "nostate",
        }
    }

    /// The reason as a lowercase word; `unknown` for codes this build does not know.
    pub fn reason_name(&self) -> &'static str {
        const RUNNING: &[&str] = &[
            "unknown",
            "booted",
            "migrated",
            "restored",
            "from_snapshot",
            "unpaused",
            "migration_canceled",
            "save_canceled",
            "wakeup",
            "crashed",
            "postcopy",
            "postcopy_failed",
        ];
        const PAUSED: &[&str] = &[
            "unknown",
            "user",
            "migration",
            "save",
            "dump",
            "ioerror",
            "watchdog",
            "from_snapshot",
            "shutting_down",
            "snapshot",
            "crashed",
            "starting_up",
            "postcopy",
            "postcopy_failed",
            "api_error",
        ];
        const SHUTDOWN: &[&str] = &["unknown", "user"];
        const SHUTOFF: &[&str] =
            &["unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from_snapshot", "daemon"];
        const CRASHED: &[&str] = &["unknown", "panicked"];
        let table: &[&str] = match self.state {
            1 => RUNNING,
            3 => PAUSED,
            4 => SHUTDOWN,
            5 => SHUTOFF,
            6 => CRASHED,
            _ => &["unknown"],
        };
        usize::try_from(self.reason).ok().and_then(|i| table.get(i)).copied().unwrap_or("unknown")
    }
}

/// Memory figures as libvirt reports them (KiB, except the fault counts and the timestamp).
/// Filled from `virDomainMemoryStats` and, for what it lacks, the bulk `balloon.*` group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct MemorySample {
    /// Current balloon size, KiB (`actual`, `balloon.current`).
    pub actual_balloon_kib: Option<u64>,
    /// Current memory of the domain, KiB (`balloon.current` only; KubeVirt's domain memory).
    pub current_kib: Option<u64>,
    /// Maximum memory of the domain, KiB (`balloon.maximum`).
    pub maximum_kib: Option<u64>,
    /// Swapped in, KiB.
    pub swap_in_kib: Option<u64>,
    /// Swapped out, KiB.
    pub swap_out_kib: Option<u64>,
    /// Major page faults.
    pub major_fault: Option<u64>,
    /// Minor page faults.
    pub minor_fault: Option<u64>,
    /// Memory the guest does not use at all, KiB.
    pub unused_kib: Option<u64>,
    /// Memory the guest sees, KiB.
    pub available_kib: Option<u64>,
    /// Memory reclaimable without swapping, KiB.
    pub usable_kib: Option<u64>,
    /// Guest page cache, KiB.
    pub disk_caches_kib: Option<u64>,
    /// Resident set size of the QEMU process, KiB.
    pub rss_kib: Option<u64>,
    /// When the guest last updated its balloon statistics, seconds since the epoch.
    pub last_update: Option<u64>,
}

/// One vCPU's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct VcpuSample {
    /// vCPU index.
    pub id: usize,
    /// `virVcpuState` code (0 offline, 1 running, 2 blocked).
    pub state: Option<i64>,
    /// Time spent running, ns.
    pub time_ns: Option<u64>,
    /// Time spent waiting on I/O, ns.
    pub wait_ns: Option<u64>,
    /// Time spent runnable but not running (host scheduling delay), ns.
    pub delay_ns: Option<u64>,
}

impl VcpuSample {
    /// The vCPU state as KubeVirt's `state` label value.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            Some(0) => "offline",
            Some(1) => "running",
            Some(2) => "blocked",
            _ => "unknown",
        }
    }
}

/// One network interface's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct NetSample {
    /// Host-side interface name (the tap device).
    pub name: String,
    /// libvirt's alias of the interface (`ua-default`, `net0`), from the domain XML.
    pub alias: Option<String>,
    /// The `interface` label: see `aliases::label`. Empty until labelled: then `name`.
    pub label: String,
    /// Bytes received.
    pub rx_bytes: Option<u64>,
    /// Packets received.
    pub rx_pkts: Option<u64>,
    /// Receive errors.
    pub rx_errs: Option<u64>,
    /// Received packets dropped.
    pub rx_drop: Option<u64>,
    /// Bytes transmitted.
    pub tx_bytes: Option<u64>,
    /// Packets transmitted.
    pub tx_pkts: Option<u64>,
    /// Transmit errors.
    pub tx_errs: Option<u64>,
    /// Transmitted packets dropped.
    pub tx_drop: Option<u64>,
}

/// One block device's counters and sizes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct BlockSample {
    /// Target name (`vda`).
    pub name: String,
    /// libvirt's alias of the disk (`ua-rootdisk`, `virtio-disk0`), from the domain XML.
    pub alias: Option<String>,
    /// The `drive` label: see `aliases::label`. Empty until labelled: then `name`.
    pub label: String,
    /// Source path on the host, if any (not exported as a label: paths are unbounded).
    pub path: Option<String>,
    /// What identifies the disk to its guest (serial, PCI or drive address), from the
    /// domain XML: how a guest filesystem is joined to its `drive`.
    pub identity: super::aliases::DiskIdentity,
    /// Read requests.
    pub rd_reqs: Option<u64>,
    /// Bytes read.
    pub rd_bytes: Option<u64>,
    /// Time spent reading, ns.
    pub rd_times_ns: Option<u64>,
    /// Write requests.
    pub wr_reqs: Option<u64>,
    /// Bytes written.
    pub wr_bytes: Option<u64>,
    /// Time spent writing, ns.
    pub wr_times_ns: Option<u64>,
    /// Flush requests.
    pub fl_reqs: Option<u64>,
    /// Time spent flushing, ns.
    pub fl_times_ns: Option<u64>,
    /// Highest written offset (bytes of the image in use).
    pub allocation: Option<u64>,
    /// Logical size in bytes as the guest sees it.
    pub capacity: Option<u64>,
    /// Host storage in bytes used by the image.
    pub physical: Option<u64>,
    /// Write threshold in bytes, when one is set.
    pub threshold: Option<u64>,
}

/// Everything one libvirt poll learned about one domain, in libvirt's units.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct DomainSample {
    /// Run state and reason.
    pub state: Option<DomainState>,
    /// Total CPU time, ns.
    pub cpu_time_ns: Option<u64>,
    /// User CPU time, ns.
    pub cpu_user_ns: Option<u64>,
    /// System CPU time, ns.
    pub cpu_system_ns: Option<u64>,
    /// Memory and balloon figures.
    pub memory: MemorySample,
    /// vCPUs currently plugged.
    pub vcpu_current: Option<u64>,
    /// vCPUs the domain may have at most.
    pub vcpu_maximum: Option<u64>,
    /// Per-vCPU counters.
    pub vcpus: Vec<VcpuSample>,
    /// Number of network interfaces.
    pub net_count: Option<u64>,
    /// Per-interface counters.
    pub nets: Vec<NetSample>,
    /// Number of block devices.
    pub block_count: Option<u64>,
    /// Per-device counters.
    pub blocks: Vec<BlockSample>,
    /// Last measured dirty-page rate, MiB/s (`dirtyrate.megabytes_per_second`).
    pub dirty_rate_mib_per_second: Option<u64>,
    /// (vCPU, host CPU) pairs the pinning map allows (`virDomainGetVcpuPinInfo`).
    pub cpu_affinity: Option<u64>,
}

impl NetSample {
    /// The `interface` label value.
    pub fn label(&self) -> &str {
        if self.label.is_empty() { &self.name } else { &self.label }
    }
}

impl BlockSample {
    /// The `drive` label value.
    pub fn label(&self) -> &str {
        if self.label.is_empty() { &self.name } else { &self.label }
    }
}

impl DomainSample {
    /// Labels devices from their aliases (`aliases::label`).
    pub fn apply_aliases(&mut self, aliases: &super::aliases::Aliases, mode: super::aliases::DeviceLabels) {
        for n in &mut self.nets {
            n.alias = aliases.nets.get(&n.name).cloned();
            n.label = super::aliases::label(n.alias.as_deref(), &n.name, mode);
        }
        for b in &mut self.blocks {
            b.alias = aliases.disks.get(&b.name).cloned();
            b.identity = aliases.disk_ids.get(&b.name).cloned().unwrap_or_default();
            b.label = super::aliases::label(b.alias.as_deref(), &b.name, mode);
        }
    }

    /// The devices named in bulk stats, to notice a hot-plug.
    pub fn device_names(params: &[(String, ParamValue)]) -> Vec<String> {
        params
            .iter()
            .filter(|(k, _)| (k.starts_with("net.") || k.starts_with("block.")) && k.ends_with(".name"))
            .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
            .collect()
    }
}

/// Splits `prefix.N.rest` into `(N, rest)`.
fn indexed<'a>(key: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('.')?;
    let (idx, field) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    (idx < MAX_DEVICES).then_some((idx, field))
}

impl DomainSample {
    /// Builds a sample from bulk-stats parameters and `virDomainMemoryStats` tags.
    /// Unknown keys are ignored (they stay visible in the debug endpoint's raw data).
    pub fn from_libvirt(params: &[(String, ParamValue)], memory_stats: &[(u32, u64)]) -> Self {
        let mut s = DomainSample::default();
        let mut state = None;
        let mut reason = None;
        let mut vcpus: BTreeMap<usize, VcpuSample> = BTreeMap::new();
        let mut nets: BTreeMap<usize, NetSample> = BTreeMap::new();
        let mut blocks: BTreeMap<usize, BlockSample> = BTreeMap::new();
        for (key, value) in params {
            let u = value.as_u64();
            match key.as_str() {
                "state.state" => state = value.as_f64().map(|v| v as i64),
                "state.reason" => reason = value.as_f64().map(|v| v as i64),
                "cpu.time" => s.cpu_time_ns = u,
                "cpu.user" => s.cpu_user_ns = u,
                "cpu.system" => s.cpu_system_ns = u,
                "balloon.current" => {
                    s.memory.actual_balloon_kib = u;
                    s.memory.current_kib = u;
                }
                "balloon.maximum" => s.memory.maximum_kib = u,
                "balloon.swap_in" => s.memory.swap_in_kib = u,
                "balloon.swap_out" => s.memory.swap_out_kib = u,
                "balloon.major_fault" => s.memory.major_fault = u,
                "balloon.minor_fault" => s.memory.minor_fault = u,
                "balloon.unused" => s.memory.unused_kib = u,
                "balloon.available" => s.memory.available_kib = u,
                "balloon.usable" => s.memory.usable_kib = u,
                "balloon.disk_caches" => s.memory.disk_caches_kib = u,
                "balloon.rss" => s.memory.rss_kib = u,
                "balloon.last-update" => s.memory.last_update = u,
                "vcpu.current" => s.vcpu_current = u,
                "vcpu.maximum" => s.vcpu_maximum = u,
                "net.count" => s.net_count = u,
                "block.count" => s.block_count = u,
                "dirtyrate.megabytes_per_second" => s.dirty_rate_mib_per_second = u,
                _ => {
                    if let Some((i, field)) = indexed(key, "vcpu") {
                        let v = vcpus.entry(i).or_insert_with(|| VcpuSample { id: i, ..Default::default() });
                        match field {
                            "state" => v.state = value.as_f64().map(|x| x as i64),
                            "time" => v.time_ns = u,
                            "wait" => v.wait_ns = u,
                            "delay" => v.delay_ns = u,
                            _ => {}
                        }
                    } else if let Some((i, field)) = indexed(key, "net") {
                        let n = nets.entry(i).or_default();
                        match field {
                            "name" => n.name = value.as_str().unwrap_or_default().to_owned(),
                            "rx.bytes" => n.rx_bytes = u,
                            "rx.pkts" => n.rx_pkts = u,
                            "rx.errs" => n.rx_errs = u,
                            "rx.drop" => n.rx_drop = u,
                            "tx.bytes" => n.tx_bytes = u,
                            "tx.pkts" => n.tx_pkts = u,
                            "tx.errs" => n.tx_errs = u,
                            "tx.drop" => n.tx_drop = u,
                            _ => {}
                        }
                    } else if let Some((i, field)) = indexed(key, "block") {
                        let b = blocks.entry(i).or_default();
                        match field {
                            "name" => b.name = value.as_str().unwrap_or_default().to_owned(),
                            "path" => b.path = value.as_str().map(str::to_owned),
                            "rd.reqs" => b.rd_reqs = u,
                            "rd.bytes" => b.rd_bytes = u,
                            "rd.times" => b.rd_times_ns = u,
                            "wr.reqs" => b.wr_reqs = u,
                            "wr.bytes" => b.wr_bytes = u,
                            "wr.times" => b.wr_times_ns = u,
                            "fl.reqs" => b.fl_reqs = u,
                            "fl.times" => b.fl_times_ns = u,
                            "allocation" => b.allocation = u,
                            "capacity" => b.capacity = u,
                            "physical" => b.physical = u,
                            "threshold" => b.threshold = u,
                            _ => {}
                        }
                    }
                }
            }
        }
        s.state = state.map(|state| DomainState { state, reason: reason.unwrap_or(0) });
        s.vcpus = vcpus.into_values().collect();
        // A device whose name libvirt did not report cannot be labelled; leave it out.
        s.nets = nets.into_values().filter(|n| !n.name.is_empty()).collect();
        s.blocks = blocks.into_values().filter(|b| !b.name.is_empty()).collect();
        s.memory.merge_memory_stats(memory_stats);
        s
    }
}

impl MemorySample {
    /// Overlays `virDomainMemoryStats` tags (`VIR_DOMAIN_MEMORY_STAT_*`) on the balloon group:
    /// both come from the same QEMU query, memory stats are what `virsh dommemstat` shows.
    pub fn merge_memory_stats(&mut self, stats: &[(u32, u64)]) {
        for &(tag, val) in stats {
            let slot = match tag {
                virt::sys::VIR_DOMAIN_MEMORY_STAT_SWAP_IN => &mut self.swap_in_kib,
                virt::sys::VIR_DOMAIN_MEMORY_STAT_SWAP_OUT => &mut self.swap_out_kib,
                virt::sys::VIR_DOMAIN_MEMORY_STAT_MAJOR_FAULT => &mut self.major_fault,
                virt::sys::VIR_DOMAIN_MEMORY_STAT_MINOR_FAULT => &mut self.minor_fault,
                virt::sys::VIR_DOMAIN_MEMORY_STAT_UNUSED => &mut self.unused_kib,
                virt::sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE => &mut self.available_kib,
                virt::sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON => &mut self.actual_balloon_kib,
                virt::sys::VIR_DOMAIN_MEMORY_STAT_RSS => &mut self.rss_kib,
                virt::sys::VIR_DOMAIN_MEMORY_STAT_USABLE => &mut self.usable_kib,
                virt::sys::VIR_DOMAIN_MEMORY_STAT_LAST_UPDATE => &mut self.last_update,
                virt::sys::VIR_DOMAIN_MEMORY_STAT_DISK_CACHES => &mut self.disk_caches_kib,
                _ => continue,
            };
            *slot = Some(val);
        }
    }
}

/// The `virsh dommemstat` tag name of a bulk-stats `balloon.*` key that carries one of
/// `virDomainMemoryStats`' figures (`balloon.maximum` has no tag).
pub fn balloon_key_tag(key: &str) -> Option<&'static str> {
    Some(match key.strip_prefix("balloon.")? {
        "current" => "actual",
        "swap_in" => "swap_in",
        "swap_out" => "swap_out",
        "major_fault" => "major_fault",
        "minor_fault" => "minor_fault",
        "unused" => "unused",
        "available" => "available",
        "usable" => "usable",
        "rss" => "rss",
        "last-update" => "last_update",
        "disk_caches" => "disk_caches",
        _ => return None,
    })
}

/// `virsh dommemstat`'s tag names, for the debug endpoint's raw view.
pub fn memory_stat_name(tag: u32) -> &'static str {
    match tag {
        virt::sys::VIR_DOMAIN_MEMORY_STAT_SWAP_IN => "swap_in",
        virt::sys::VIR_DOMAIN_MEMORY_STAT_SWAP_OUT => "swap_out",
        virt::sys::VIR_DOMAIN_MEMORY_STAT_MAJOR_FAULT => "major_fault",
        virt::sys::VIR_DOMAIN_MEMORY_STAT_MINOR_FAULT => "minor_fault",
        virt::sys::VIR_DOMAIN_MEMORY_STAT_UNUSED => "unused",
        virt::sys::VIR_DOMAIN_MEMORY_STAT_AVAILABLE => "available",
        virt::sys::VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON => "actual",
        virt::sys::VIR_DOMAIN_MEMORY_STAT_RSS => "rss",
        virt::sys::VIR_DOMAIN_MEMORY_STAT_USABLE => "usable",
        virt::sys::VIR_DOMAIN_MEMORY_STAT_LAST_UPDATE => "last_update",
        virt::sys::VIR_DOMAIN_MEMORY_STAT_DISK_CACHES => "disk_caches",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: ParamValue) -> (String, ParamValue) {
        (k.to_owned(), v)
    }

    #[test]
    fn parses_every_group_with_mixed_param_types() {
        use ParamValue::*;
        let params = vec![
            p("state.state", Int(1)),
            p("state.reason", Int(1)),
            p("cpu.time", UInt(2_500_000_000)),
            p("cpu.user", UInt(1_000_000_000)),
            p("cpu.system", UInt(500_000_000)),
            p("balloon.current", UInt(32768)),
            p("balloon.maximum", UInt(65536)),
            p("vcpu.current", UInt(1)),
            p("vcpu.maximum", UInt(2)),
            p("vcpu.0.state", Int(1)),
            p("vcpu.0.time", UInt(7)),
            p("vcpu.0.wait", UInt(8)),
            p("vcpu.0.delay", UInt(9)),
            p("net.count", UInt(1)),
            p("net.0.name", Str("vnet3".into())),
            p("net.0.rx.bytes", UInt(100)),
            p("net.0.tx.drop", UInt(2)),
            p("block.count", UInt(1)),
            p("block.0.name", Str("vda".into())),
            p("block.0.path", Str("/x.qcow2".into())),
            p("block.0.rd.reqs", UInt(5)),
            p("block.0.fl.times", UInt(42)),
            p("block.0.capacity", UInt(1 << 20)),
            p("dirtyrate.megabytes_per_second", Int(3)),
            p("future.key", Double(1.5)),
        ];
        let s = DomainSample::from_libvirt(&params, &[(virt::sys::VIR_DOMAIN_MEMORY_STAT_RSS, 4242)]);
        assert_eq!(s.state, Some(DomainState { state: 1, reason: 1 }));
        assert_eq!(s.state.map(|x| (x.state_name(), x.reason_name())), Some(("running", "booted")));
        assert_eq!(s.cpu_time_ns, Some(2_500_000_000));
        assert_eq!(s.memory.maximum_kib, Some(65536));
        assert_eq!(s.memory.rss_kib, Some(4242));
        assert_eq!(
            s.vcpus,
            vec![VcpuSample { id: 0, state: Some(1), time_ns: Some(7), wait_ns: Some(8), delay_ns: Some(9) }]
        );
        assert_eq!(s.nets[0].name, "vnet3");
        assert_eq!(s.nets[0].rx_bytes, Some(100));
        assert_eq!(s.nets[0].tx_drop, Some(2));
        assert_eq!(s.blocks[0].path.as_deref(), Some("/x.qcow2"));
        assert_eq!(s.blocks[0].fl_times_ns, Some(42));
        assert_eq!(s.dirty_rate_mib_per_second, Some(3));
    }

    #[test]
    fn ignores_absurd_indices_and_nameless_devices() {
        let params = vec![
            p("net.99999999.rx.bytes", ParamValue::UInt(1)),
            p("net.1.rx.bytes", ParamValue::UInt(1)),
            p("vcpu.x.time", ParamValue::UInt(1)),
        ];
        let s = DomainSample::from_libvirt(&params, &[]);
        assert!(s.nets.is_empty());
        assert!(s.vcpus.is_empty());
    }

    #[test]
    fn unknown_state_and_reason_codes_map_to_fixed_words() {
        let st = DomainState { state: 99, reason: 77 };
        assert_eq!((st.state_name(), st.reason_name()), ("nostate", "unknown"));
        let paused = DomainState { state: 3, reason: 5 };
        assert_eq!(paused.reason_name(), "ioerror");
    }
}
