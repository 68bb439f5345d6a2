//! Which source a fact came from: the bounded set of sources, as data (the `source` label).
//! The one place that maps each kind to its implementation is `catalogue::visit`.

use serde::Serialize;

/// The sources vmbridge polls. Adding one is a variant here plus its module; the compiler's
/// exhaustive matches find the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// libvirt bulk stats and memory stats.
    Libvirt,
    /// The qemu-guest-agent.
    Qga,
    /// A direct QMP monitor.
    Qmp,
    /// The VM's processes, from /proc.
    Process,
}

impl SourceKind {
    /// Every source, in the order their families are exposed.
    pub const ALL: [SourceKind; 4] = [SourceKind::Libvirt, SourceKind::Qmp, SourceKind::Process, SourceKind::Qga];

    /// The `source` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Libvirt => "libvirt",
            SourceKind::Qga => "qga",
            SourceKind::Qmp => "qmp",
            SourceKind::Process => "process",
        }
    }
}
