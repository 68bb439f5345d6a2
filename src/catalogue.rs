//! The one catalogue of every metric family vmbridge exports (the guest agent's are declared
//! with their commands in `source::qga::commands`). It drives the collector,
//! `--list-metrics` and the generated `docs/METRICS.md` (a test fails when they drift, and
//! another when a declared family is never emitted).
//!
//! Names follow KubeVirt where KubeVirt already has the metric (`kubevirt_vmi_*`, same type,
//! unit and labels), so existing dashboards and alerts keep working. Names here are *base*
//! names: `prometheus-client` appends the unit and `_total` (counters) or `_info` (info).

use std::fmt::Write as _;

use crate::source::{Source, SourceKind, Visit};

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter (`_total`).
    Counter,
    /// Gauge.
    Gauge,
    /// Info: value 1, descriptive labels (`_info`).
    Info,
}

/// Base unit appended to the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Seconds.
    Seconds,
    /// Bytes.
    Bytes,
}

/// Which group a family belongs to (see the README); `metrics_groups` selects them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize, schemars::JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// CPU, vCPU, NIC and block counters.
    Core,
    /// State, memory and balloon, device counts, block sizes.
    Hypervisor,
    /// What only the guest agent knows.
    Guest,
    /// What only a direct QMP monitor tells (run status, extended block and accelerator stats).
    Qmp,
    /// The VM's processes, from /proc.
    Process,
    /// vmbridge's own health.
    Bridge,
}

impl Group {
    /// Every group, in documentation order.
    pub const ALL: [Group; 6] =
        [Group::Core, Group::Hypervisor, Group::Guest, Group::Qmp, Group::Process, Group::Bridge];

    /// The name used in `metrics_groups` and the docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Core => "core",
            Group::Hypervisor => "hypervisor",
            Group::Guest => "guest",
            Group::Qmp => "qmp",
            Group::Process => "process",
            Group::Bridge => "bridge",
        }
    }
}

/// Whether a family is per VM (labels `namespace`, `name`, `node` first) or per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One series (or several, by extra labels) per VM.
    Vm,
    /// Per VM with `namespace` and `name` only (KubeVirt's panic counter has no `node`).
    VmWithoutNode,
    /// Per node: label `node` only, plus extra labels.
    Node,
}

/// One metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    /// Base name, without unit, `_total` or `_info`.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// Unit suffix, if any.
    pub unit: Option<Unit>,
    /// Help text.
    pub help: &'static str,
    /// Labels beyond the scope's.
    pub labels: &'static [&'static str],
    /// Group.
    pub group: Group,
    /// Where the value comes from.
    pub source: &'static str,
    /// Scope.
    pub scope: Scope,
}

impl MetricDef {
    /// The name samples carry on the wire.
    pub fn exposed_name(&self) -> String {
        let mut n = self.name.to_owned();
        match self.unit {
            Some(Unit::Seconds) => n.push_str("_seconds"),
            Some(Unit::Bytes) => n.push_str("_bytes"),
            None => {}
        }
        match self.kind {
            Kind::Counter => n.push_str("_total"),
            Kind::Info => n.push_str("_info"),
            Kind::Gauge => {}
        }
        n
    }

    /// Whether KubeVirt's virt-handler exports this family too (same name, type and labels):
    /// left out by the `kubevirt-complement` profile.
    pub fn from_virt_handler(&self) -> bool {
        VIRT_HANDLER.contains(&self.name)
    }

    /// Every label, scope labels first.
    pub fn all_labels(&self) -> Vec<&'static str> {
        let mut l = match self.scope {
            Scope::Vm => vec!["namespace", "name", "node"],
            Scope::VmWithoutNode => vec!["namespace", "name"],
            Scope::Node => vec!["node"],
        };
        l.extend_from_slice(self.labels);
        l
    }
}

/// Declares a family: `family!(ID, "name", Kind, unit, [labels], Group, "source", Scope, "help.")`.
macro_rules! family {
    ($id:ident, $name:literal, $kind:ident, $unit:expr, [$($l:literal),*], $group:ident, $src:literal, $scope:ident, $help:literal) => {
        #[doc = $help]
        pub const $id: $crate::catalogue::MetricDef = $crate::catalogue::MetricDef {
            name: $name, kind: $crate::catalogue::Kind::$kind, unit: $unit, help: $help, labels: &[$($l),*],
            group: $crate::catalogue::Group::$group, source: $src, scope: $crate::catalogue::Scope::$scope,
        };
    };
}
pub(crate) use family;

/// Unit: seconds.
pub(crate) const S: Option<Unit> = Some(Unit::Seconds);
/// Unit: bytes.
pub(crate) const B: Option<Unit> = Some(Unit::Bytes);
/// No unit.
pub(crate) const N: Option<Unit> = None;

// Core group: libvirt bulk stats.
family!(
    CPU_USAGE,
    "kubevirt_vmi_cpu_usage",
    Counter,
    S,
    [],
    Core,
    "libvirt cpu.time",
    Vm,
    "Total CPU time spent in all modes (sum of both vcpu and hypervisor usage)."
);
family!(
    CPU_USER,
    "kubevirt_vmi_cpu_user_usage",
    Counter,
    S,
    [],
    Core,
    "libvirt cpu.user",
    Vm,
    "Total CPU time spent in user mode."
);
family!(
    CPU_SYSTEM,
    "kubevirt_vmi_cpu_system_usage",
    Counter,
    S,
    [],
    Core,
    "libvirt cpu.system",
    Vm,
    "Total CPU time spent in system mode."
);
family!(
    VCPU_TIME,
    "kubevirt_vmi_vcpu",
    Counter,
    S,
    ["id", "state"],
    Core,
    "libvirt vcpu.N.time",
    Vm,
    "Total amount of time spent in each state by each vcpu (cpu_time excluding hypervisor time)."
);
family!(
    VCPU_WAIT,
    "kubevirt_vmi_vcpu_wait",
    Counter,
    S,
    ["id"],
    Core,
    "libvirt vcpu.N.wait",
    Vm,
    "Amount of time spent by each vcpu while waiting on I/O."
);
family!(
    VCPU_DELAY,
    "kubevirt_vmi_vcpu_delay",
    Counter,
    S,
    ["id"],
    Core,
    "libvirt vcpu.N.delay",
    Vm,
    "Amount of time spent by each vcpu waiting in the queue instead of running."
);
family!(
    NET_RX_BYTES,
    "kubevirt_vmi_network_receive",
    Counter,
    B,
    ["interface"],
    Core,
    "libvirt net.N.rx.bytes",
    Vm,
    "Total network traffic received in bytes."
);
family!(
    NET_TX_BYTES,
    "kubevirt_vmi_network_transmit",
    Counter,
    B,
    ["interface"],
    Core,
    "libvirt net.N.tx.bytes",
    Vm,
    "Total network traffic transmitted in bytes."
);
family!(
    NET_RX_PACKETS,
    "kubevirt_vmi_network_receive_packets",
    Counter,
    N,
    ["interface"],
    Core,
    "libvirt net.N.rx.pkts",
    Vm,
    "Total network traffic received packets."
);
family!(
    NET_TX_PACKETS,
    "kubevirt_vmi_network_transmit_packets",
    Counter,
    N,
    ["interface"],
    Core,
    "libvirt net.N.tx.pkts",
    Vm,
    "Total network traffic transmitted packets."
);
family!(
    NET_RX_ERRORS,
    "kubevirt_vmi_network_receive_errors",
    Counter,
    N,
    ["interface"],
    Core,
    "libvirt net.N.rx.errs",
    Vm,
    "Total network received error packets."
);
family!(
    NET_TX_ERRORS,
    "kubevirt_vmi_network_transmit_errors",
    Counter,
    N,
    ["interface"],
    Core,
    "libvirt net.N.tx.errs",
    Vm,
    "Total network transmitted error packets."
);
family!(
    NET_RX_DROPPED,
    "kubevirt_vmi_network_receive_packets_dropped",
    Counter,
    N,
    ["interface"],
    Core,
    "libvirt net.N.rx.drop",
    Vm,
    "The total number of rx packets dropped on vNIC interfaces."
);
family!(
    NET_TX_DROPPED,
    "kubevirt_vmi_network_transmit_packets_dropped",
    Counter,
    N,
    ["interface"],
    Core,
    "libvirt net.N.tx.drop",
    Vm,
    "The total number of tx packets dropped on vNIC interfaces."
);
family!(
    NET_TRAFFIC,
    "kubevirt_vmi_network_traffic",
    Counter,
    B,
    ["interface", "type"],
    Core,
    "libvirt net.N.rx.bytes / net.N.tx.bytes",
    Vm,
    "[Deprecated in KubeVirt; kept for its dashboards] Network traffic in bytes, type rx or tx."
);
family!(
    STORAGE_IOPS_READ,
    "kubevirt_vmi_storage_iops_read",
    Counter,
    N,
    ["drive"],
    Core,
    "libvirt block.N.rd.reqs",
    Vm,
    "Total number of I/O read operations."
);
family!(
    STORAGE_IOPS_WRITE,
    "kubevirt_vmi_storage_iops_write",
    Counter,
    N,
    ["drive"],
    Core,
    "libvirt block.N.wr.reqs",
    Vm,
    "Total number of I/O write operations."
);
family!(
    STORAGE_READ_BYTES,
    "kubevirt_vmi_storage_read_traffic",
    Counter,
    B,
    ["drive"],
    Core,
    "libvirt block.N.rd.bytes",
    Vm,
    "Total number of bytes read from storage."
);
family!(
    STORAGE_WRITE_BYTES,
    "kubevirt_vmi_storage_write_traffic",
    Counter,
    B,
    ["drive"],
    Core,
    "libvirt block.N.wr.bytes",
    Vm,
    "Total number of written bytes."
);
family!(
    STORAGE_READ_TIMES,
    "kubevirt_vmi_storage_read_times",
    Counter,
    S,
    ["drive"],
    Core,
    "libvirt block.N.rd.times",
    Vm,
    "Total time spent on read operations."
);
family!(
    STORAGE_WRITE_TIMES,
    "kubevirt_vmi_storage_write_times",
    Counter,
    S,
    ["drive"],
    Core,
    "libvirt block.N.wr.times",
    Vm,
    "Total time spent on write operations."
);
family!(
    STORAGE_FLUSH_REQUESTS,
    "kubevirt_vmi_storage_flush_requests",
    Counter,
    N,
    ["drive"],
    Core,
    "libvirt block.N.fl.reqs",
    Vm,
    "Total storage flush requests."
);
family!(
    STORAGE_FLUSH_TIMES,
    "kubevirt_vmi_storage_flush_times",
    Counter,
    S,
    ["drive"],
    Core,
    "libvirt block.N.fl.times",
    Vm,
    "Total time spent on cache flushing."
);

// Hypervisor group: state, memory, devices.
family!(
    DOMAIN_STATE,
    "kubevirt_vmi_domain_state",
    Gauge,
    N,
    ["state", "reason"],
    Hypervisor,
    "libvirt state.state, state.reason",
    Vm,
    "The domain's libvirt run state and reason as labels; the value is always 1."
);
family!(
    MEMORY_RESIDENT,
    "kubevirt_vmi_memory_resident",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt memory stat rss",
    Vm,
    "Resident set size of the process running the domain."
);
family!(
    MEMORY_AVAILABLE,
    "kubevirt_vmi_memory_available",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt memory stat available",
    Vm,
    "Amount of usable memory as seen by the domain. This value may not be accurate if a balloon driver is in use or if the guest OS does not initialize all assigned pages."
);
family!(
    MEMORY_UNUSED,
    "kubevirt_vmi_memory_unused",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt memory stat unused",
    Vm,
    "The amount of memory left completely unused by the system. Memory that is available but used for reclaimable caches should NOT be reported as free."
);
family!(
    MEMORY_USABLE,
    "kubevirt_vmi_memory_usable",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt memory stat usable",
    Vm,
    "The amount of memory which can be reclaimed by balloon without pushing the guest system to swap, corresponds to 'Available' in /proc/meminfo."
);
family!(
    MEMORY_CACHED,
    "kubevirt_vmi_memory_cached",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt memory stat disk_caches",
    Vm,
    "The amount of memory that is being used to cache I/O and is available to be reclaimed, corresponds to the sum of 'Buffers' + 'Cached' + 'SwapCached' in /proc/meminfo."
);
family!(
    MEMORY_ACTUAL_BALLOON,
    "kubevirt_vmi_memory_actual_balloon",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt memory stat actual",
    Vm,
    "Current balloon size in bytes."
);
family!(
    MEMORY_DOMAIN,
    "kubevirt_vmi_memory_domain",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt balloon.current",
    Vm,
    "The amount of memory in bytes allocated to the domain: its current balloon size (libvirt balloon.current, as KubeVirt)."
);
family!(
    MEMORY_SWAP_IN,
    "kubevirt_vmi_memory_swap_in_traffic",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt memory stat swap_in",
    Vm,
    "The total amount of data read from swap space of the guest in bytes."
);
family!(
    MEMORY_SWAP_OUT,
    "kubevirt_vmi_memory_swap_out_traffic",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt memory stat swap_out",
    Vm,
    "The total amount of memory written out to swap space of the guest in bytes."
);
family!(
    MEMORY_PGMAJFAULT,
    "kubevirt_vmi_memory_pgmajfault",
    Counter,
    N,
    [],
    Hypervisor,
    "libvirt memory stat major_fault",
    Vm,
    "The number of page faults when disk IO was required. Page faults occur when a process makes a valid access to virtual memory that is not available."
);
family!(
    MEMORY_PGMINFAULT,
    "kubevirt_vmi_memory_pgminfault",
    Counter,
    N,
    [],
    Hypervisor,
    "libvirt memory stat minor_fault",
    Vm,
    "The number of other page faults, when disk IO was not required. Page faults occur when a process makes a valid access to virtual memory that is not available."
);
family!(
    GUEST_MEMORY_STATS,
    "vmbridge_guest_memory_stats",
    Gauge,
    N,
    ["state"],
    Hypervisor,
    "libvirt balloon.last-update",
    Vm,
    "Whether the guest-reported memory figures (available, usable, unused, cached, swap, faults) are exported; one series (value 1), the current state: fresh (balloon.last-update at most 3 stats periods old), stale (older: withheld), unavailable (never reported). actual_balloon and domain memory stay."
);
family!(
    MEMORY_STATS_UPDATED,
    "kubevirt_vmi_memory_stats_last_update_timestamp",
    Gauge,
    S,
    [],
    Hypervisor,
    "libvirt memory stat last_update",
    Vm,
    "When the guest's balloon driver last updated its memory statistics, seconds since the Unix epoch."
);
family!(
    VCPU_CURRENT,
    "kubevirt_vmi_vcpu_current",
    Gauge,
    N,
    [],
    Hypervisor,
    "libvirt vcpu.current",
    Vm,
    "Number of vCPUs currently plugged into the domain."
);
family!(
    VCPU_MAXIMUM,
    "kubevirt_vmi_vcpu_maximum",
    Gauge,
    N,
    [],
    Hypervisor,
    "libvirt vcpu.maximum",
    Vm,
    "Maximum number of vCPUs the domain may have."
);
family!(
    CPU_AFFINITY,
    "kubevirt_vmi_node_cpu_affinity",
    Gauge,
    N,
    [],
    Hypervisor,
    "libvirt virDomainGetVcpuPinInfo",
    Vm,
    "Number of VMI CPU affinities to node physical cores: the (vCPU, host CPU) pairs the pinning map allows, as KubeVirt."
);
family!(
    NET_INTERFACES,
    "kubevirt_vmi_network_interfaces",
    Gauge,
    N,
    [],
    Hypervisor,
    "libvirt net.count",
    Vm,
    "Number of network interfaces of the domain."
);
family!(
    STORAGE_DEVICES,
    "kubevirt_vmi_storage_devices",
    Gauge,
    N,
    [],
    Hypervisor,
    "libvirt block.count",
    Vm,
    "Number of block devices of the domain."
);
family!(
    STORAGE_ALLOCATION,
    "kubevirt_vmi_storage_allocation",
    Gauge,
    B,
    ["drive"],
    Hypervisor,
    "libvirt block.N.allocation",
    Vm,
    "Offset of the highest written sector of the block device (its allocation)."
);
family!(
    STORAGE_CAPACITY,
    "kubevirt_vmi_storage_capacity",
    Gauge,
    B,
    ["drive"],
    Hypervisor,
    "libvirt block.N.capacity",
    Vm,
    "Logical size of the block device as the guest sees it."
);
family!(
    STORAGE_PHYSICAL,
    "kubevirt_vmi_storage_physical",
    Gauge,
    B,
    ["drive"],
    Hypervisor,
    "libvirt block.N.physical",
    Vm,
    "Host storage used by the block device's image."
);
family!(
    STORAGE_THRESHOLD,
    "kubevirt_vmi_storage_threshold",
    Gauge,
    B,
    ["drive"],
    Hypervisor,
    "libvirt block.N.threshold",
    Vm,
    "Write threshold of the block device; present only when one is set."
);
family!(
    DIRTY_RATE,
    "kubevirt_vmi_dirty_rate_bytes_per_second",
    Gauge,
    N,
    [],
    Hypervisor,
    "libvirt dirtyrate.megabytes_per_second",
    Vm,
    "Last measured guest memory dirty rate, in bytes per second; present only after libvirt measured it."
);

// Hypervisor group, from a direct QMP monitor (and libvirt job stats for migrations).
family!(
    QEMU_STATUS,
    "kubevirt_vmi_qemu_status",
    Gauge,
    N,
    ["status"],
    Qmp,
    "qmp query-status",
    Vm,
    "QEMU's run state as a label (running, paused, guest-panicked, io-error, …); the value is always 1."
);
family!(
    STORAGE_FAILED_READ,
    "kubevirt_vmi_storage_failed_read_operations",
    Counter,
    N,
    ["drive"],
    Qmp,
    "qmp query-blockstats failed_rd_operations",
    Vm,
    "Failed read operations (drive is QEMU's device id)."
);
family!(
    STORAGE_FAILED_WRITE,
    "kubevirt_vmi_storage_failed_write_operations",
    Counter,
    N,
    ["drive"],
    Qmp,
    "qmp query-blockstats failed_wr_operations",
    Vm,
    "Failed write operations."
);
family!(
    STORAGE_FAILED_FLUSH,
    "kubevirt_vmi_storage_failed_flush_operations",
    Counter,
    N,
    ["drive"],
    Qmp,
    "qmp query-blockstats failed_flush_operations",
    Vm,
    "Failed flush operations."
);
family!(
    STORAGE_INVALID_READ,
    "kubevirt_vmi_storage_invalid_read_operations",
    Counter,
    N,
    ["drive"],
    Qmp,
    "qmp query-blockstats invalid_rd_operations",
    Vm,
    "Invalid read operations."
);
family!(
    STORAGE_INVALID_WRITE,
    "kubevirt_vmi_storage_invalid_write_operations",
    Counter,
    N,
    ["drive"],
    Qmp,
    "qmp query-blockstats invalid_wr_operations",
    Vm,
    "Invalid write operations."
);
family!(
    STORAGE_INVALID_FLUSH,
    "kubevirt_vmi_storage_invalid_flush_operations",
    Counter,
    N,
    ["drive"],
    Qmp,
    "qmp query-blockstats invalid_flush_operations",
    Vm,
    "Invalid flush operations."
);
family!(
    STORAGE_UNMAP_OPS,
    "kubevirt_vmi_storage_unmap_operations",
    Counter,
    N,
    ["drive"],
    Qmp,
    "qmp query-blockstats unmap_operations",
    Vm,
    "Unmap (discard) operations."
);
family!(
    STORAGE_UNMAP_BYTES,
    "kubevirt_vmi_storage_unmap",
    Counter,
    B,
    ["drive"],
    Qmp,
    "qmp query-blockstats unmap_bytes",
    Vm,
    "Bytes unmapped (discarded)."
);
family!(
    STORAGE_MERGED_READ,
    "kubevirt_vmi_storage_merged_read_operations",
    Counter,
    N,
    ["drive"],
    Qmp,
    "qmp query-blockstats rd_merged",
    Vm,
    "Read operations merged into others."
);
family!(
    STORAGE_MERGED_WRITE,
    "kubevirt_vmi_storage_merged_write_operations",
    Counter,
    N,
    ["drive"],
    Qmp,
    "qmp query-blockstats wr_merged",
    Vm,
    "Write operations merged into others."
);
family!(
    STORAGE_IDLE,
    "kubevirt_vmi_storage_idle_time",
    Gauge,
    S,
    ["drive"],
    Qmp,
    "qmp query-blockstats idle_time_ns",
    Vm,
    "Time since the drive's last I/O."
);
family!(
    QEMU_STAT,
    "kubevirt_vmi_qemu_stat",
    Gauge,
    N,
    ["stat"],
    Qmp,
    "qmp query-stats target vm",
    Vm,
    "Accelerator statistics QEMU reports for the VM (query-stats; KVM only), by provider/name."
);
family!(
    MIG_DOWNTIME,
    "kubevirt_vmi_migration_downtime",
    Gauge,
    S,
    [],
    Hypervisor,
    "qmp query-migrate / libvirt job downtime",
    Vm,
    "Migration downtime: expected while running, actual once completed."
);
family!(
    MIG_ELAPSED,
    "kubevirt_vmi_migration_elapsed",
    Gauge,
    S,
    [],
    Hypervisor,
    "qmp query-migrate total-time / libvirt job time_elapsed",
    Vm,
    "Time the migration has been running."
);
family!(
    MIG_DATA_TOTAL,
    "kubevirt_vmi_migration_data",
    Counter,
    B,
    [],
    Hypervisor,
    "libvirt job data_total / qmp ram+disk total",
    Vm,
    "The total Guest OS data to be migrated to the new VM (memory and disks), as KubeVirt."
);
family!(
    MIG_DATA_PROCESSED,
    "kubevirt_vmi_migration_data_processed",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job data_processed / qmp ram+disk transferred",
    Vm,
    "Bytes the migration transferred."
);
family!(
    MIG_DATA_REMAINING,
    "kubevirt_vmi_migration_data_remaining",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job data_remaining / qmp ram+disk remaining",
    Vm,
    "Bytes the migration has left to transfer."
);
family!(
    MIG_MEM_TOTAL,
    "kubevirt_vmi_migration_memory_total",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job memory_total / qmp ram.total",
    Vm,
    "Guest memory to migrate."
);
family!(
    MIG_MEM_PROCESSED,
    "kubevirt_vmi_migration_memory_processed",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job memory_processed / qmp ram.transferred",
    Vm,
    "Guest memory transferred."
);
family!(
    MIG_MEM_REMAINING,
    "kubevirt_vmi_migration_memory_remaining",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job memory_remaining / qmp ram.remaining",
    Vm,
    "Guest memory left to transfer."
);
family!(
    MIG_MEM_BPS,
    "kubevirt_vmi_migration_memory_transfer_rate",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job memory_bps / qmp ram.mbps",
    Vm,
    "The rate at which the memory is being transferred, in bytes per second."
);
family!(
    MIG_CONSTANT,
    "kubevirt_vmi_migration_memory_constant_pages",
    Gauge,
    N,
    [],
    Hypervisor,
    "libvirt job memory_constant / qmp ram.duplicate",
    Vm,
    "Pages found to be constant (zero) and not sent in full."
);
family!(
    MIG_COMPRESSION,
    "kubevirt_vmi_migration_compression",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job compression_bytes / qmp compression.compressed-size",
    Vm,
    "Compressed bytes sent."
);
family!(
    MIG_DIRTY_RATE,
    "kubevirt_vmi_migration_dirty_memory_rate",
    Gauge,
    B,
    [],
    Hypervisor,
    "libvirt job memory_dirty_rate x memory_page_size / qmp ram.dirty-pages-rate x ram.page-size",
    Vm,
    "The rate of memory being dirtied in the Guest OS during migration, in bytes per second."
);
family!(
    MIG_ITERATION,
    "kubevirt_vmi_migration_iteration",
    Gauge,
    N,
    [],
    Hypervisor,
    "libvirt job memory_iteration / qmp ram.dirty-sync-count",
    Vm,
    "Memory copy iterations so far."
);
family!(
    MIG_LAST_COMPLETED,
    "kubevirt_vmi_migration_last_completed_timestamp",
    Gauge,
    S,
    [],
    Hypervisor,
    "vmbridge (with --keep-ephemeral)",
    Vm,
    "When vmbridge first saw the last migration job completed, seconds since the Unix epoch."
);
family!(
    GUEST_PANICS,
    "kubevirt_vmi_guest_os_panic",
    Counter,
    N,
    ["type", "bugcheck_code"],
    Hypervisor,
    "qmp event GUEST_PANICKED (info.type, info.arg1) / libvirt CRASHED event (unknown, unknown)",
    VmWithoutNode,
    "Guest OS panics vmbridge has seen since it discovered the VM, by panic type and (Hyper-V) bugcheck code, as KubeVirt (no node label)."
);
family!(
    BLOCK_IO_ERRORS,
    "kubevirt_vmi_block_io_errors",
    Counter,
    N,
    ["drive", "operation"],
    Hypervisor,
    "qmp event BLOCK_IO_ERROR / libvirt IO_ERROR event",
    Vm,
    "Block I/O errors vmbridge has seen since it discovered the VM."
);
family!(
    REBOOTS,
    "kubevirt_vmi_reboots",
    Counter,
    N,
    ["initiator"],
    Hypervisor,
    "qmp event RESET / libvirt REBOOT event",
    Vm,
    "Resets and reboots vmbridge has seen since it discovered the VM, by initiator (guest: reboot, triple fault, firmware; host: virsh reset, system_reset; unknown: from libvirt's REBOOT event, which does not say)."
);
family!(
    AGENT_CONNECTS,
    "kubevirt_vmi_agent_connects",
    Counter,
    N,
    [],
    Hypervisor,
    "qmp event VSERPORT_CHANGE (agent port) / libvirt AGENT_LIFECYCLE event",
    Vm,
    "Times the guest agent connected its channel since vmbridge discovered the VM."
);
family!(
    AGENT_CONNECTED,
    "kubevirt_vmi_agent_connected",
    Gauge,
    N,
    [],
    Hypervisor,
    "qmp event VSERPORT_CHANGE (agent port) / libvirt AGENT_LIFECYCLE event",
    Vm,
    "1 while the guest agent's channel is open, 0 when closed; absent until a change was seen."
);
family!(
    STATE_CHANGES,
    "kubevirt_vmi_state_changes",
    Counter,
    N,
    ["to"],
    Hypervisor,
    "qmp events STOP, RESUME, SUSPEND, WAKEUP, SHUTDOWN, GUEST_PANICKED / libvirt LIFECYCLE events",
    Vm,
    "Run-state changes vmbridge has seen since it discovered the VM, by the state entered."
);

// Hypervisor group: infra processes (kube-metrics-collector's pod_infra group).
family!(
    INFRA_CPU_USER,
    "kubevirt_pod_infra_cpu_user",
    Counter,
    S,
    ["process"],
    Process,
    "/proc/<pid>/stat utime",
    Vm,
    "User CPU time of the VM's QEMU process and, in a virt-launcher, of the processes beside it."
);
family!(
    INFRA_CPU_SYSTEM,
    "kubevirt_pod_infra_cpu_system",
    Counter,
    S,
    ["process"],
    Process,
    "/proc/<pid>/stat stime",
    Vm,
    "System CPU time of the VM's QEMU process and launcher-side processes."
);
family!(
    INFRA_MEM_RESIDENT,
    "kubevirt_pod_infra_memory_resident",
    Gauge,
    B,
    ["process"],
    Process,
    "/proc/<pid>/statm resident",
    Vm,
    "Resident memory of the VM's QEMU process and launcher-side processes."
);
family!(
    INFRA_MEM_VIRTUAL,
    "kubevirt_pod_infra_memory_virtual",
    Gauge,
    B,
    ["process"],
    Process,
    "/proc/<pid>/statm size",
    Vm,
    "Virtual memory size of the VM's QEMU process and launcher-side processes."
);
family!(
    INFRA_MEM_SHARED,
    "kubevirt_pod_infra_memory_shared",
    Gauge,
    B,
    ["process"],
    Process,
    "/proc/<pid>/statm shared",
    Vm,
    "Shared (file-backed resident) memory of the VM's QEMU process and launcher-side processes."
);
family!(
    START_TIME,
    "kubevirt_vmi_start_time",
    Gauge,
    S,
    [],
    Process,
    "/proc/<pid>/stat starttime + /proc/stat btime",
    Vm,
    "Start time of the VM's QEMU process, seconds since the Unix epoch (uptime is time() minus this; a restart changes it)."
);

// Guest group: the qemu-guest-agent.

// Bridge health.
family!(
    SOURCE_UP,
    "vmbridge_source_up",
    Gauge,
    N,
    ["source"],
    Bridge,
    "vmbridge",
    Vm,
    "1 when the last poll of this source succeeded, else 0."
);
family!(
    BREAKER_STATE,
    "vmbridge_breaker_state",
    Gauge,
    N,
    ["source", "state"],
    Bridge,
    "vmbridge",
    Vm,
    "Circuit breaker state of this source (closed, open, half_open): by default one series, the current state, at 1; with --health-detail every state, 0 for the others."
);
family!(
    SOURCE_LAST_SUCCESS,
    "vmbridge_source_last_success_timestamp",
    Gauge,
    S,
    ["source"],
    Bridge,
    "vmbridge",
    Vm,
    "When this source was last polled successfully, seconds since the Unix epoch."
);
family!(
    SOURCE_POLL_DURATION,
    "vmbridge_source_poll_duration",
    Gauge,
    S,
    ["source"],
    Bridge,
    "vmbridge",
    Vm,
    "Duration of the last poll of this source. Only with --health-detail."
);
family!(
    SOURCE_POLLS,
    "vmbridge_source_polls",
    Counter,
    N,
    ["source"],
    Bridge,
    "vmbridge",
    Vm,
    "Polls of this source since the VM was discovered. Only with --health-detail."
);
family!(
    SOURCE_ERRORS,
    "vmbridge_source_errors",
    Counter,
    N,
    ["source", "kind"],
    Bridge,
    "vmbridge",
    Vm,
    "Failed polls of this source since the VM was discovered, by kind. By default only kinds that occurred have a series; every kind with --health-detail."
);
family!(
    BREAKER_TRANSITIONS,
    "vmbridge_breaker_transitions",
    Counter,
    N,
    ["source", "reason"],
    Bridge,
    "vmbridge",
    Vm,
    "Circuit breaker state changes since the VM was discovered, by reason. By default only reasons that occurred have a series; every reason with --health-detail."
);
family!(
    STUCK_CALLS,
    "vmbridge_stuck_calls",
    Gauge,
    N,
    ["source"],
    Bridge,
    "vmbridge",
    Vm,
    "Calls to this source abandoned at their deadline and still running (at most one per VM and source). By default exported only while it is above 0; always with --health-detail."
);
family!(
    SOURCE_PARTIAL,
    "vmbridge_source_partial",
    Counter,
    N,
    ["source", "group"],
    Bridge,
    "vmbridge",
    Vm,
    "Answers a source gave in part (libvirt's NOWAIT skipped a stats group, or a device's counters, while another client held the domain's job) since discovery, by group; the missing values were carried from their last observation within the staleness window. Only groups that occurred have a series."
);
family!(VMS, "vmbridge_vms", Gauge, N, [], Bridge, "vmbridge", Node, "VMs vmbridge currently knows on this node.");
family!(
    VM_CONFLICTS,
    "vmbridge_vm_conflicts",
    Gauge,
    N,
    [],
    Bridge,
    "vmbridge",
    Node,
    "Namespace/name pairs that more than one live domain claims (e.g. `vm1` and `default_vm1`, or two daemons). Only the first discovered claimant is exported; /debug/vms lists them all."
);
family!(
    ENDPOINT_UP,
    "vmbridge_endpoint_up",
    Gauge,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "1 when the last connect and listing of this libvirt endpoint succeeded, else 0."
);
family!(
    ENDPOINT_DOMAINS,
    "vmbridge_endpoint_domains",
    Gauge,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "Running domains at the last listing of this libvirt endpoint."
);
family!(
    VM_STALL_REASON,
    "vmbridge_vm_stall_reason",
    Gauge,
    N,
    ["reason", "wchan"],
    Bridge,
    "vmbridge",
    Vm,
    "Why the VM is stuck, present (value 1) only while it is: process_stopped (QEMU in /proc state T), io_blocked (QEMU's main thread in state D; wchan names the kernel function it waits in), monitor_busy (the QEMU monitor occupied or held by a job past the poll timeout while libvirt polls fail, from virDomainGetControlInfo), agent_unresponsive (the guest agent's polls timing out). The first that holds, in that order."
);
family!(
    GUEST_HEARTBEAT,
    "vmbridge_guest_heartbeat",
    Gauge,
    N,
    ["state"],
    Bridge,
    "vmbridge",
    Vm,
    "Whether the guest is alive; one series (value 1), the current state: ok (guest-ping within qga.heartbeat_slow), agent_slow, agent_silent (channel connected, no answer), guest_stalled (running, no vCPU time for qga.heartbeat_stalled_polls polls and 30 s, agent silent), no_agent, unknown (host side not answering, not running, not yet polled). Never ok while the host does not answer."
);
family!(
    GUEST_AGENT_RTT,
    "vmbridge_guest_agent_rtt",
    Gauge,
    S,
    [],
    Bridge,
    "vmbridge",
    Vm,
    "Round-trip time of the guest-ping at the start of each guest-agent poll, while the agent answers."
);
family!(
    GUEST_VALUES_REJECTED,
    "vmbridge_guest_values_rejected",
    Counter,
    N,
    ["family", "reason"],
    Bridge,
    "vmbridge",
    Vm,
    "Guest values withheld as impossible, by family and reason."
);
family!(
    SOURCE_EFFECTIVE_INTERVAL,
    "vmbridge_source_effective_interval",
    Gauge,
    S,
    ["source"],
    Bridge,
    "vmbridge",
    Vm,
    "Seconds between the source's last two successful polls: the poll interval as the endpoint serves it. Polls the node or the daemon cannot serve in time (error kinds pool_saturated, endpoint_saturated) are deferred, not failed: one that waited for a call slot queues again at once, one the daemon did not answer comes back an interval later, so polling stretches instead of failing. Written while polling is stretched (over 1.5 intervals, or the last poll deferred), and always with --health-detail."
);
family!(
    ENDPOINT_SATURATED,
    "vmbridge_endpoint_saturated",
    Gauge,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "1 while this libvirt daemon answers no call, not even a probe that needs no QEMU: all its worker threads (max_workers, default 20) are held, most likely by calls on hung VMs. Its VMs keep their last data until the staleness window, and their polls are deferred (error kind endpoint_saturated), not counted as their failures."
);
family!(
    ENDPOINT_CONNECTIONS,
    "vmbridge_endpoint_connections",
    Gauge,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "Read-only connections open to this libvirt daemon for the pollers' calls (at most libvirt.max_connections). A connection with a call running long takes no new calls and another one carries them, so each hung VM can hold one."
);
family!(
    ENDPOINT_SLOW_CALLS,
    "vmbridge_endpoint_slow_calls",
    Gauge,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "The pollers' calls to this libvirt daemon running for longer than 500 ms now: calls stuck on hung VMs, or a daemon slow for everyone."
);
family!(
    ENDPOINT_CALLS,
    "vmbridge_endpoint_calls",
    Counter,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "libvirt calls (round trips) the pollers made to this libvirt daemon: a batch of many domains' bulk statistics counts one."
);
family!(
    ENDPOINT_BATCHED_POLLS,
    "vmbridge_endpoint_batched_polls",
    Counter,
    N,
    ["uri"],
    Bridge,
    "vmbridge",
    Node,
    "Domains' bulk statistics this libvirt daemon answered in a batch (libvirt.batch_window) rather than in a call of the domain's own."
);
family!(
    HTTP_CONNECTIONS,
    "vmbridge_http_connections",
    Gauge,
    N,
    ["listener"],
    Bridge,
    "vmbridge",
    Node,
    "HTTP connections open now, per listener (public or debug); at most http.max_connections."
);
family!(
    HTTP_CLOSED,
    "vmbridge_http_connections_closed",
    Counter,
    N,
    ["listener", "reason"],
    Bridge,
    "vmbridge",
    Node,
    "HTTP connections vmbridge closed or refused, per listener and reason: header_timeout, idle_timeout, write_timeout (a reply its peer did not read within http.write_timeout), evicted (room for a new one), refused (503 at the cap), error (the client's)."
);
family!(
    HTTP_SHED,
    "vmbridge_http_replies_shed",
    Counter,
    N,
    [],
    Bridge,
    "vmbridge",
    Node,
    "Requests answered 503 (with Retry-After) because the reply budget, http.reply_budget_bytes over both listeners, had no room for a new body: replies that peers read slowly or not at all hold it until written or until http.write_timeout."
);
family!(
    LAUNCHER_DAEMONS,
    "vmbridge_launcher_daemons",
    Gauge,
    N,
    ["status"],
    Bridge,
    "vmbridge",
    Node,
    "KubeVirt mode: libvirt daemons in other mount namespaces at the last scan, by status: accepted (a virt-launcher's, polled), untrusted (no virt-launcher parent in its container or no KubeVirt launcher socket layout: ignored), over_cap (past kubevirt.max_launchers)."
);
family!(
    BUILD_INFO,
    "vmbridge_build",
    Info,
    N,
    ["version", "revision", "rustc"],
    Bridge,
    "vmbridge",
    Node,
    "vmbridge build information; the value is always 1."
);

/// The families virt-handler exports too (base names), checked against
/// `integration/fixtures/kubevirt-virt-handler-metrics.tsv` by a test.
pub const VIRT_HANDLER: &[&str] = &[
    "kubevirt_vmi_cpu_usage",
    "kubevirt_vmi_cpu_user_usage",
    "kubevirt_vmi_cpu_system_usage",
    "kubevirt_vmi_guest_load_1m",
    "kubevirt_vmi_guest_load_5m",
    "kubevirt_vmi_guest_load_15m",
    "kubevirt_vmi_vcpu",
    "kubevirt_vmi_vcpu_wait",
    "kubevirt_vmi_vcpu_delay",
    "kubevirt_vmi_memory_resident",
    "kubevirt_vmi_memory_available",
    "kubevirt_vmi_memory_unused",
    "kubevirt_vmi_memory_cached",
    "kubevirt_vmi_memory_swap_in_traffic",
    "kubevirt_vmi_memory_swap_out_traffic",
    "kubevirt_vmi_memory_pgmajfault",
    "kubevirt_vmi_memory_pgminfault",
    "kubevirt_vmi_memory_actual_balloon",
    "kubevirt_vmi_memory_usable",
    "kubevirt_vmi_memory_domain",
    "kubevirt_vmi_network_traffic",
    "kubevirt_vmi_network_receive",
    "kubevirt_vmi_network_transmit",
    "kubevirt_vmi_network_receive_packets",
    "kubevirt_vmi_network_transmit_packets",
    "kubevirt_vmi_network_receive_errors",
    "kubevirt_vmi_network_transmit_errors",
    "kubevirt_vmi_network_receive_packets_dropped",
    "kubevirt_vmi_network_transmit_packets_dropped",
    "kubevirt_vmi_storage_iops_read",
    "kubevirt_vmi_storage_iops_write",
    "kubevirt_vmi_storage_read_traffic",
    "kubevirt_vmi_storage_write_traffic",
    "kubevirt_vmi_storage_read_times",
    "kubevirt_vmi_storage_write_times",
    "kubevirt_vmi_storage_flush_requests",
    "kubevirt_vmi_storage_flush_times",
    "kubevirt_vmi_filesystem_capacity",
    "kubevirt_vmi_filesystem_used",
    "kubevirt_vmi_node_cpu_affinity",
    "kubevirt_vmi_dirty_rate_bytes_per_second",
    "kubevirt_vmi_migration_data",
    "kubevirt_vmi_migration_data_remaining",
    "kubevirt_vmi_migration_data_processed",
    "kubevirt_vmi_migration_dirty_memory_rate",
    "kubevirt_vmi_migration_memory_transfer_rate",
    "kubevirt_vmi_guest_os_panic",
];

/// Which families a vmbridge exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Every family.
    #[default]
    Full,
    /// None that KubeVirt's virt-handler exports too, so vmbridge can run beside it without
    /// doubling any series: what only vmbridge has (guest agent beyond KubeVirt's, QMP, events,
    /// processes, per-VM health).
    KubevirtComplement,
}

impl Profile {
    /// The name in `metrics_profile`.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Full => "full",
            Profile::KubevirtComplement => "kubevirt-complement",
        }
    }
}

/// The families a vmbridge exports: a profile and the groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The profile.
    pub profile: Profile,
    /// The groups exported.
    pub groups: Vec<Group>,
}

impl Default for Selection {
    fn default() -> Self {
        Selection { profile: Profile::Full, groups: Group::ALL.to_vec() }
    }
}

impl Selection {
    /// Whether `def` is exported. vmbridge's build info always is.
    pub fn includes(&self, def: &MetricDef) -> bool {
        if def.name == BUILD_INFO.name {
            return true;
        }
        let profile = match self.profile {
            Profile::Full => true,
            Profile::KubevirtComplement => !def.from_virt_handler(),
        };
        profile && self.groups.contains(&def.group)
    }
}

/// vmbridge's own families (written by `collector::bridge`), in order.
pub const BRIDGE: [&MetricDef; 26] = [
    &SOURCE_UP,
    &BREAKER_STATE,
    &SOURCE_LAST_SUCCESS,
    &SOURCE_POLL_DURATION,
    &SOURCE_EFFECTIVE_INTERVAL,
    &SOURCE_POLLS,
    &SOURCE_ERRORS,
    &BREAKER_TRANSITIONS,
    &STUCK_CALLS,
    &VM_STALL_REASON,
    &GUEST_HEARTBEAT,
    &GUEST_AGENT_RTT,
    &GUEST_VALUES_REJECTED,
    &VMS,
    &VM_CONFLICTS,
    &ENDPOINT_UP,
    &ENDPOINT_DOMAINS,
    &ENDPOINT_SATURATED,
    &ENDPOINT_CONNECTIONS,
    &ENDPOINT_SLOW_CALLS,
    &ENDPOINT_CALLS,
    &ENDPOINT_BATCHED_POLLS,
    &HTTP_CONNECTIONS,
    &HTTP_CLOSED,
    &HTTP_SHED,
    &LAUNCHER_DAEMONS,
];

/// Every family, in exposition order: each source's (in [`SourceKind::ALL`] order), the
/// event and migration families, then vmbridge's own.
pub fn all() -> &'static [&'static MetricDef] {
    static ALL: std::sync::LazyLock<Vec<&'static MetricDef>> = std::sync::LazyLock::new(|| {
        struct Collect(Vec<&'static MetricDef>);
        impl Visit for Collect {
            fn visit<S: Source>(&mut self) {
                self.0.extend(S::families());
            }
        }
        let mut c = Collect(Vec::new());
        for kind in SourceKind::ALL {
            kind.visit(&mut c);
        }
        c.0.extend(crate::collector::events::FAMILIES);
        c.0.extend(BRIDGE);
        c.0.push(&BUILD_INFO);
        c.0
    });
    &ALL
}

fn kind_str(k: Kind) -> &'static str {
    match k {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Info => "info",
    }
}

fn group_str(g: Group) -> &'static str {
    g.as_str()
}

/// The profiles that export `d`.
fn profiles(d: &MetricDef) -> &'static str {
    if d.from_virt_handler() { "full" } else { "full,kubevirt-complement" }
}

/// The families `selection` exports as plain text, one per line (`--list-metrics`).
pub fn list_text(selection: &Selection) -> String {
    let mut out = String::new();
    for d in all().iter().filter(|d| selection.includes(d)) {
        let _ = writeln!(
            out,
            "{:<58} {:<8} {:<10} {:<19} {{{}}}  {}",
            d.exposed_name(),
            kind_str(d.kind),
            group_str(d.group),
            profiles(d),
            d.all_labels().join(","),
            d.help
        );
    }
    out
}

/// `docs/METRICS.md`, generated.
pub fn markdown() -> String {
    let mut out = String::from(
        "# vmbridge metrics\n\n\
         Generated from the catalogue (`src/catalogue.rs` and each source's families; `vmbridge --list-metrics` prints the same list); \
         do not edit by hand: run `VMBRIDGE_UPDATE_GENERATED=1 cargo test --lib generated` after changing the catalogue.\n\n\
         Per-VM families carry `namespace`, `name` and `node`. Values are in base units \
         (seconds, bytes); libvirt's nanoseconds and KiB are converted. A family whose data a \
         VM does not have (no balloon driver, no measurement yet) has no sample for that VM: \
         vmbridge never invents zeros. When a source's breaker is open, its last good values \
         stay exported for the staleness window (`breaker.staleness`), then disappear, while \
         `vmbridge_source_up` and `vmbridge_source_last_success_timestamp_seconds` say why.\n\n\
         Profiles (`metrics_profile`, `--metrics-profile`): `full` exports every family; \
         `kubevirt-complement` leaves out every family KubeVirt's virt-handler exports too, so \
         vmbridge can run beside virt-handler without doubling a series. Groups \
         (`metrics_groups`, `--metrics-groups`) select the sections below by the name in parentheses.\n",
    );
    for (group, title) in [
        (Group::Core, "Core"),
        (Group::Hypervisor, "Hypervisor"),
        (Group::Guest, "Guest (qemu-guest-agent)"),
        (Group::Qmp, "QMP (direct monitor)"),
        (Group::Process, "Process (/proc)"),
        (Group::Bridge, "Bridge health"),
    ] {
        let _ = write!(
            out,
            "\n## {title} (`{}`)\n\n| name | type | labels | profiles | source | help |\n|---|---|---|---|---|---|\n",
            group.as_str()
        );
        for d in all().iter().filter(|d| d.group == group) {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} |",
                d.exposed_name(),
                kind_str(d.kind),
                d.all_labels().join(", "),
                profiles(d),
                d.source,
                d.help
            );
        }
    }
    out.push_str(&rejection_rules());
    out
}

/// The section of `docs/METRICS.md` on impossible values, from [`crate::source::reject::RULES`].
fn rejection_rules() -> String {
    use crate::source::reject::{KEEP, RULES};
    let mut out = format!(
        "\n## Impossible values (`{name}`)\n\n\
         Every value a guest reports (through its agent, or through its balloon driver into \
         libvirt's memory statistics) is checked where it is parsed, every poll, against the rules \
         below, in order; the first it breaks rejects it. A rejected value is withheld: its series \
         is absent until a later reply passes (the other values of the same reply stay, and a \
         rejection is not a poll failure). Each rejection adds 1 to \
         `{name}{{namespace,name,node,family,reason}}`, where `family` is the exported name of the \
         family the value would have been in and `reason` the rule's. The counter counts per poll \
         that withheld a value since the VM was discovered (it resets only when vmbridge restarts \
         or the VM is rediscovered), and a (family, reason) pair has no series until its first \
         rejection: vmbridge writes no zeros for it. `/debug/vms/{{namespace}}/{{name}}` shows the \
         last rejected values under each source's `rejected.last` (at most {KEEP} per source, \
         newest kept, one per family, reason and item): the value as received (`raw`; libvirt's \
         memory figures in KiB), the value and the `bound` it broke in the family's unit, the rule \
         in words, and when (`at`). A libvirt-side rejection is counted once per poll, an \
         agent-side one once per reply of its command.\n\n\
         A counter (swap, faults) may go back only with a reset: QEMU restarted (its `cpu.time` \
         went back) or the guest rebooted (every counter last accepted above zero went back in \
         the same poll). One counter going back while another does not is rejected until it passes \
         its last accepted value again. Memory figures are checked after the freshness judgement \
         (`vmbridge_guest_memory_stats`): stale figures are withheld for that reason, not counted \
         here.\n\n| family | reason | bound |\n|---|---|---|\n",
        name = GUEST_VALUES_REJECTED.exposed_name()
    );
    for r in RULES {
        let _ = writeln!(out, "| `{}` | `{}` | {} |", r.family.exposed_name(), r.reason.as_str(), r.bound);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KubeVirt virt-handler families vmbridge deliberately does not export, with the reason.
    const NOT_EXPORTED: &[(&str, &str)] = &[
        // Needs the kubelet's pod-resources API (which GPU a pod holds); vmbridge reads only
        // libvirt, QEMU and /proc.
        ("kubevirt_vmi_gpu_info", "needs the kubelet pod-resources API"),
        // Counts virt-handler's own reconciliations of a VMI; vmbridge reconciles nothing.
        ("kubevirt_vmi_sync_total", "counts virt-handler's own work"),
    ];

    fn type_str(d: &MetricDef) -> &'static str {
        // An info family is a gauge of value 1 to Prometheus.
        match d.kind {
            Kind::Counter => "counter",
            Kind::Gauge | Kind::Info => "gauge",
        }
    }

    /// Names, types and label sets of every family virt-handler exports, against a checked-in
    /// copy of KubeVirt's table. (KubeVirt also adds `kubernetes_vmi_label_*` from the VMI's
    /// labels, which needs the Kubernetes API; vmbridge never does, and the table leaves them
    /// out.)
    #[test]
    fn every_virt_handler_family_has_kubevirts_name_type_and_labels_or_a_reason() {
        let table = include_str!("../integration/fixtures/kubevirt-virt-handler-metrics.tsv");
        let mut kubevirt = std::collections::BTreeSet::new();
        let mut problems = Vec::new();
        for line in table.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let cols: Vec<&str> = line.split('\t').collect();
            let [name, ty, labels, _file] = cols[..] else { panic!("bad fixture line {line:?}") };
            kubevirt.insert(name);
            if NOT_EXPORTED.iter().any(|(n, _)| *n == name) {
                assert!(all().iter().all(|d| d.exposed_name() != name), "{name} is listed as not exported but is");
                continue;
            }
            let Some(d) = all().iter().find(|d| d.exposed_name() == name) else {
                problems.push(format!("{name}: not exported and no reason given"));
                continue;
            };
            if type_str(d) != ty {
                problems.push(format!("{name}: type {} here, {ty} in KubeVirt", type_str(d)));
            }
            let ours: std::collections::BTreeSet<&str> = d.all_labels().into_iter().collect();
            let theirs: std::collections::BTreeSet<&str> = labels.split(',').collect();
            if ours != theirs {
                problems.push(format!("{name}: labels {ours:?} here, {theirs:?} in KubeVirt"));
            }
            if !d.from_virt_handler() {
                problems.push(format!("{name}: shared with virt-handler but not in VIRT_HANDLER"));
            }
        }
        for d in all().iter().filter(|d| d.from_virt_handler()) {
            if !kubevirt.contains(d.exposed_name().as_str()) {
                problems.push(format!("{}: in VIRT_HANDLER but virt-handler does not export it", d.exposed_name()));
            }
        }
        for (n, _) in NOT_EXPORTED {
            assert!(kubevirt.contains(n), "{n} is not a virt-handler family");
        }
        assert_eq!(VIRT_HANDLER.len() + NOT_EXPORTED.len(), kubevirt.len(), "VIRT_HANDLER has duplicates or strays");
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn the_complement_profile_shares_no_family_with_virt_handler_and_keeps_the_rest() {
        let complement = Selection { profile: Profile::KubevirtComplement, ..Selection::default() };
        for d in all() {
            assert_eq!(complement.includes(d), !d.from_virt_handler(), "{}", d.exposed_name());
            assert!(Selection::default().includes(d), "full leaves out {}", d.exposed_name());
        }
        let guest_only = Selection { groups: vec![Group::Guest], ..Selection::default() };
        let listed = list_text(&guest_only);
        assert!(listed.lines().all(|l| l.contains(" guest ") || l.starts_with("vmbridge_build_info")), "{listed}");
        assert!(listed.contains("kubevirt_vmi_filesystem_used_bytes"), "{listed}");
    }

    #[test]
    fn names_are_unique_and_valid() {
        let mut seen = std::collections::BTreeSet::new();
        for d in all() {
            let n = d.exposed_name();
            assert!(seen.insert(n.clone()), "duplicate {n}");
            assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{n}");
            for doubled in ["_total_total", "_bytes_bytes", "_seconds_seconds", "_info_info"] {
                assert!(!n.contains(doubled), "{n} repeats a suffix");
            }
            assert!(d.help.ends_with('.'), "{n}: help should be a sentence");
        }
    }

    #[test]
    fn kubevirt_names_are_exact() {
        let names: Vec<String> = all().iter().map(|d| d.exposed_name()).collect();
        for expected in [
            "kubevirt_vmi_cpu_usage_seconds_total",
            "kubevirt_vmi_vcpu_seconds_total",
            "kubevirt_vmi_vcpu_wait_seconds_total",
            "kubevirt_vmi_vcpu_delay_seconds_total",
            "kubevirt_vmi_network_receive_bytes_total",
            "kubevirt_vmi_network_transmit_packets_dropped_total",
            "kubevirt_vmi_storage_iops_read_total",
            "kubevirt_vmi_storage_read_traffic_bytes_total",
            "kubevirt_vmi_storage_write_times_seconds_total",
            "kubevirt_vmi_storage_flush_requests_total",
            "kubevirt_vmi_storage_flush_times_seconds_total",
            "kubevirt_vmi_memory_resident_bytes",
            "kubevirt_vmi_memory_actual_balloon_bytes",
            "kubevirt_vmi_memory_swap_in_traffic_bytes",
            "kubevirt_vmi_memory_pgmajfault_total",
            "vmbridge_source_last_success_timestamp_seconds",
            "vmbridge_source_poll_duration_seconds",
            "vmbridge_source_errors_total",
            "vmbridge_breaker_transitions_total",
            "vmbridge_build_info",
        ] {
            assert!(names.iter().any(|n| n == expected), "missing {expected}");
        }
    }
}
