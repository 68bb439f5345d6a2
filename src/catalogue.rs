//! The catalogue of every metric family vmbridge exports, derived from what each registered
//! source declares (`Source::families`, through `source::visit`), then the event and
//! migration families and vmbridge's own. It drives the collector,
//! `--list-metrics` and the generated `docs/METRICS.md` (a test fails when they drift, and
//! another when a declared family is never emitted).
//!
//! Names follow KubeVirt where KubeVirt already has the metric (`kubevirt_vmi_*`, same type,
//! unit and labels), so existing dashboards and alerts keep working. Names here are *base*
//! names: `prometheus-client` appends the unit and `_total` (counters) or `_info` (info).

use std::fmt::Write as _;

use crate::collector::{bridge, events};
use crate::model::metric::{Group, Kind, MetricDef, Selection};
use crate::source::SourceKind;
use crate::source::api::{Source, Visit};

/// The families the sources of `kinds` declare, in that order.
fn declared_by(kinds: impl Iterator<Item = SourceKind>) -> Vec<&'static MetricDef> {
    struct Collect(Vec<&'static MetricDef>);
    impl Visit for Collect {
        fn visit<S: Source>(&mut self) {
            self.0.extend(S::families());
        }
    }
    let mut c = Collect(Vec::new());
    for kind in kinds {
        crate::source::visit(kind, &mut c);
    }
    c.0
}

/// Every family, in exposition order: each source's (in [`SourceKind::ALL`] order), the
/// event and migration families, then vmbridge's own.
pub fn all() -> &'static [&'static MetricDef] {
    static ALL: std::sync::LazyLock<Vec<&'static MetricDef>> = std::sync::LazyLock::new(|| {
        let mut all = declared_by(SourceKind::ALL.into_iter());
        all.extend(events::FAMILIES);
        all.extend(bridge::BRIDGE);
        all.push(&bridge::BUILD_INFO);
        all
    });
    &ALL
}

/// Every family a real source exports: [`all`] without the families of sources registered
/// only under a condition (a test source). `docs/METRICS.md` and `--list-metrics` list these.
pub fn documented() -> &'static [&'static MetricDef] {
    static DOCUMENTED: std::sync::LazyLock<Vec<&'static MetricDef>> = std::sync::LazyLock::new(|| {
        let conditional = declared_by(SourceKind::ALL.into_iter().filter(|k| k.conditional()));
        all().iter().copied().filter(|d| !conditional.iter().any(|c| c.name == d.name)).collect()
    });
    &DOCUMENTED
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
    for d in documented().iter().filter(|d| selection.includes(d)) {
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
        for d in documented().iter().filter(|d| d.group == group) {
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

/// The section of `docs/METRICS.md` on impossible values, from each source's rules (`source::reject`).
fn rejection_rules() -> String {
    use crate::source::reject::KEEP;
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
        name = bridge::GUEST_VALUES_REJECTED.exposed_name()
    );
    for r in crate::source::qga::commands::RULES.iter().chain(&crate::source::libvirt::memstats::RULES) {
        let _ = writeln!(out, "| `{}` | `{}` | {} |", r.family.exposed_name(), r.reason.as_str(), r.bound);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::metric::{Profile, VIRT_HANDLER};

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
