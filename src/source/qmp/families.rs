//! The direct QMP monitor's families, in the order its encoder writes them.

use crate::model::metric::{B, N, S, family};

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
