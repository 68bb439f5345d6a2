//! The debug endpoint's documents: `/debug/vms` (an index) and `/debug/vms/{namespace}/{name}`
//! (everything about one VM: raw last sample per source, breaker state and history, last
//! errors, ages). Their JSON Schemas are generated into `schemas/` from these types.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::breaker::BreakerState;
use crate::clock::now_unix;
use crate::source::SourceKind;
use crate::store::{EndpointStatus, Store, VmSnapshot};
use crate::vm::VmId;

/// One source of one VM, summarised for the index.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SourceSummary {
    /// Breaker state.
    pub breaker: BreakerState,
    /// Whether the last poll succeeded.
    pub up: bool,
    /// Seconds since the last successful poll, if any.
    pub data_age_seconds: Option<f64>,
    /// The most recent error message, if any.
    pub last_error: Option<String>,
    /// The most recent error's kind, if any (`agent_unavailable`: no guest agent, a state).
    pub last_error_kind: Option<crate::model::ErrorKind>,
}

/// One VM in the index.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct VmSummary {
    /// Namespace and name.
    #[serde(flatten)]
    pub id: VmId,
    /// libvirt domain name.
    pub domain: String,
    /// Endpoint URI.
    pub endpoint: String,
    /// Path of this VM's debug document.
    pub href: String,
    /// Per source.
    pub sources: BTreeMap<SourceKind, SourceSummary>,
    /// Why the VM is stuck, while it is (`vmbridge_vm_stall_reason`).
    pub stall: Option<crate::stall::Stall>,
    /// Whether the guest is alive (`vmbridge_guest_heartbeat`), the data's age not judged.
    pub heartbeat: crate::heartbeat::Pulse,
}

/// `/debug/vms`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DebugIndex {
    /// `node` label value.
    pub node: String,
    /// When this document was made, seconds since the Unix epoch.
    pub generated_at: f64,
    /// Configured libvirt endpoints.
    pub endpoints: Vec<EndpointStatus>,
    /// Every exported VM (one per namespace/name).
    pub vms: Vec<VmSummary>,
    /// Namespace/names that more than one live domain claims, with every claimant.
    pub conflicts: Vec<crate::store::Conflict>,
}

/// `/debug/vms/{namespace}/{name}`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DebugVm {
    /// `node` label value.
    pub node: String,
    /// When this document was made, seconds since the Unix epoch.
    pub generated_at: f64,
    /// Seconds since each source's last successful poll.
    pub data_age_seconds: BTreeMap<SourceKind, Option<f64>>,
    /// Why the VM is stuck, while it is (`vmbridge_vm_stall_reason`).
    pub stall: Option<crate::stall::Stall>,
    /// Whether the guest is alive (`vmbridge_guest_heartbeat`), the data's age not judged.
    pub heartbeat: crate::heartbeat::Pulse,
    /// Each guest filesystem's KubeVirt drive, or why it has none
    /// (`vmbridge_guest_filesystem_drive_info`), from the last samples whatever their age.
    pub filesystem_drives: Vec<crate::source::qga::drives::FsDrive>,
    /// The VM's full snapshot.
    #[serde(flatten)]
    pub vm: VmSnapshot,
}

/// What `encode_segment` escapes: everything but RFC 3986's unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes a path segment (warp does not decode path parameters; see `decode_segment`).
fn encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Decodes `%XX` escapes in a path segment (a `%` without two hex digits stays as it is);
/// `None` when the result is not UTF-8.
pub fn decode_segment(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s).decode_utf8().ok().map(std::borrow::Cow::into_owned)
}

fn ages(vm: &VmSnapshot, now: f64) -> BTreeMap<SourceKind, Option<f64>> {
    vm.sources.iter().map(|(k, s)| (*k, s.last_success_at.map(|t| (now - t).max(0.0)))).collect()
}

/// Builds the index.
pub fn index(store: &Store, node: &str) -> DebugIndex {
    let now = now_unix();
    let vms = store
        .vms()
        .iter()
        .map(|vm| VmSummary {
            id: vm.id.clone(),
            domain: vm.domain.clone(),
            endpoint: vm.endpoint.clone(),
            href: format!("/debug/vms/{}/{}", encode_segment(&vm.id.namespace), encode_segment(&vm.id.name)),
            sources: vm
                .sources
                .iter()
                .map(|(k, s)| {
                    let summary = SourceSummary {
                        breaker: s.breaker.state,
                        up: s.is_up(),
                        data_age_seconds: s.last_success_at.map(|t| (now - t).max(0.0)),
                        last_error: s.last_errors.back().map(|e| e.message.clone()),
                        last_error_kind: s.last_errors.back().map(|e| e.kind),
                    };
                    (*k, summary)
                })
                .collect(),
            // The process source's last successful scan counts, however old (the metric
            // also asks that it be within the staleness window).
            stall: crate::stall::of(vm, now, f64::INFINITY),
            heartbeat: crate::heartbeat::of(vm, now, f64::INFINITY),
        })
        .collect();
    DebugIndex {
        node: node.to_owned(),
        generated_at: now,
        endpoints: store.endpoints(),
        vms,
        conflicts: store.conflicts(),
    }
}

/// The filesystem-to-drive join of `vm`'s last guest and libvirt samples.
fn filesystem_drives(vm: &VmSnapshot) -> Vec<crate::source::qga::drives::FsDrive> {
    use crate::source::api::Source;
    use crate::source::{libvirt::Libvirt, qga::Qga};
    let last = |kind| vm.sources.get(&kind).and_then(|s| s.sample.as_deref());
    let Some(fs) = last(SourceKind::Qga).and_then(Qga::sample).and_then(|q| q.data.filesystems.as_deref()) else {
        return Vec::new();
    };
    let blocks = last(SourceKind::Libvirt).and_then(Libvirt::sample).map(|l| l.parsed.blocks.as_slice());
    crate::source::qga::drives::report(fs, blocks.unwrap_or_default())
}

/// Builds one VM's document.
pub fn vm(store: &Store, node: &str, id: &VmId) -> Option<DebugVm> {
    let now = now_unix();
    store.vm(id).map(|vm| DebugVm {
        node: node.to_owned(),
        generated_at: now,
        data_age_seconds: ages(&vm, now),
        stall: crate::stall::of(&vm, now, f64::INFINITY),
        heartbeat: crate::heartbeat::of(&vm, now, f64::INFINITY),
        filesystem_drives: filesystem_drives(&vm),
        vm: (*vm).clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_round_trip() {
        for s in ["default", "vm 1", "a/b", "ünï", "100%", "%ü"] {
            assert_eq!(decode_segment(&encode_segment(s)).as_deref(), Some(s));
        }
        assert_eq!(decode_segment("%zz").as_deref(), Some("%zz"));
        assert_eq!(decode_segment("%").as_deref(), Some("%"));
        assert_eq!(decode_segment("%ü").as_deref(), Some("%ü"));
        // The exact bytes: unreserved characters stay, the rest is `%XX` in upper case.
        assert_eq!(encode_segment("a/b c~-._ü"), "a%2Fb%20c~-._%C3%BC");
        assert_eq!(decode_segment("%ff"), None);
    }
}
