//! libvirt's families (core and hypervisor groups), in the order its encoder writes them.

use crate::model::metric::{B, N, S, family};
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
