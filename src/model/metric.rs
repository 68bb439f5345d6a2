//! What a metric family is: its type, unit, group, scope and labels ([`MetricDef`], declared
//! with `family!`), and which families an exporter selects (profile and groups). Each
//! source declares its own families; `catalogue` lists them all.

/// The base name of `vmbridge_build_info`, exported whatever the selection.
pub const BUILD_INFO: &str = "vmbridge_build";

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
        pub const $id: $crate::model::metric::MetricDef = $crate::model::metric::MetricDef {
            name: $name, kind: $crate::model::metric::Kind::$kind, unit: $unit, help: $help, labels: &[$($l),*],
            group: $crate::model::metric::Group::$group, source: $src, scope: $crate::model::metric::Scope::$scope,
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
        if def.name == BUILD_INFO {
            return true;
        }
        let profile = match self.profile {
            Profile::Full => true,
            Profile::KubevirtComplement => !def.from_virt_handler(),
        };
        profile && self.groups.contains(&def.group)
    }
}
