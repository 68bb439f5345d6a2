//! The collector over a synthetic store: every catalogue family is emitted, values are
//! converted to base units, stale data is dropped while health stays, labels are escaped.

use crate::source::SourceKind;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::*;
use crate::breaker::{Breaker, BreakerConfig};
use crate::model::text::Format;
use crate::source::SourceSample;
use crate::source::libvirt::{LibvirtSample, ParamValue};
use crate::store::{SourceSnapshot, VmSnapshot};
use crate::vm::VmId;

fn rich_params() -> Vec<(String, ParamValue)> {
    use ParamValue::*;
    let p = |k: &str, v| (k.to_owned(), v);
    vec![
        p("state.state", Int(3)),
        p("state.reason", Int(1)),
        p("cpu.time", UInt(1_500_000_000)),
        p("cpu.user", UInt(1_000_000_000)),
        p("cpu.system", UInt(500_000_000)),
        p("balloon.current", UInt(32768)),
        p("balloon.maximum", UInt(65536)),
        p("vcpu.current", UInt(1)),
        p("vcpu.maximum", UInt(2)),
        p("vcpu.0.state", Int(1)),
        p("vcpu.0.time", UInt(2_000_000_000)),
        p("vcpu.0.wait", UInt(0)),
        p("vcpu.0.delay", UInt(1000)),
        p("net.count", UInt(1)),
        p("net.0.name", Str("vnet\"0\\\n".into())),
        p("net.0.rx.bytes", UInt(10)),
        p("net.0.rx.pkts", UInt(1)),
        p("net.0.rx.errs", UInt(0)),
        p("net.0.rx.drop", UInt(0)),
        p("net.0.tx.bytes", UInt(20)),
        p("net.0.tx.pkts", UInt(2)),
        p("net.0.tx.errs", UInt(0)),
        p("net.0.tx.drop", UInt(0)),
        p("block.count", UInt(1)),
        p("block.0.name", Str("vda".into())),
        p("block.0.rd.reqs", UInt(3)),
        p("block.0.rd.bytes", UInt(4096)),
        p("block.0.rd.times", UInt(250_000_000)),
        p("block.0.wr.reqs", UInt(1)),
        p("block.0.wr.bytes", UInt(512)),
        p("block.0.wr.times", UInt(1)),
        p("block.0.fl.reqs", UInt(1)),
        p("block.0.fl.times", UInt(1)),
        p("block.0.allocation", UInt(1)),
        p("block.0.capacity", UInt(1 << 30)),
        p("block.0.physical", UInt(1)),
        p("block.0.threshold", UInt(1)),
        p("dirtyrate.megabytes_per_second", Int(2)),
    ]
}

fn rich_memory() -> Vec<(u32, u64)> {
    // Every VIR_DOMAIN_MEMORY_STAT_* tag from 0 (swap_in) to 10 (disk_caches).
    (0..=10).map(|t| (t, 100 + u64::from(t))).collect()
}

fn source(sample: Option<LibvirtSample>, last_success_at: Option<f64>) -> Arc<SourceSnapshot> {
    Arc::new(SourceSnapshot {
        sample: sample.map(|s| Arc::new(SourceSample::Libvirt(s))),
        last_success_at,
        last_attempt_at: last_success_at,
        last_poll_duration_seconds: Some(0.01),
        effective_interval_seconds: None,
        stretched: false,
        monitor: None,
        polls_total: 1,
        errors_total: BTreeMap::new(),
        last_errors: VecDeque::new(),
        breaker: Breaker::new(BreakerConfig::default()).view(tokio::time::Instant::now()),
        stuck_calls: Arc::new(AtomicU64::new(0)),
    })
}

fn rich_guest() -> crate::source::qga::QgaSample {
    use serde_json::json;
    let mut q = crate::source::qga::QgaSample { transport: "socket".into(), ..Default::default() };
    let lim = crate::source::qga::GuestLimits::default();
    let replies = [
        ("guest-info", json!({"version": "9.1.0", "supported_commands": []})),
        (
            "guest-get-fsinfo",
            json!([{"name": "vda1", "mountpoint": "/", "type": "ext4", "disk": [{"serial": "pvc-root", "bus-type": "virtio"}],
                "total-bytes": 1000, "used-bytes": 400}]),
        ),
        (
            "guest-network-get-interfaces",
            json!([{"name": "eth0", "hardware-address": "52:54:00:12:34:56",
            "ip-addresses": [{"ip-address": "10.0.2.15", "ip-address-type": "ipv4", "prefix": 24}],
            "statistics": {"rx-bytes": 1, "rx-packets": 2, "rx-errs": 0, "rx-dropped": 0, "tx-bytes": 3, "tx-packets": 4, "tx-errs": 0, "tx-dropped": 0}}]),
        ),
        (
            "guest-get-vcpus",
            json!([{"logical-id": 0, "online": true, "can-offline": false}, {"logical-id": 1, "online": false}]),
        ),
        (
            "guest-get-osinfo",
            json!({"id": "debian", "name": "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 12 (bookworm)", "version-id": "12", "kernel-release": "6.1.0", "machine": "x86_64"}),
        ),
        ("guest-get-host-name", json!({"host-name": "guest-1"})),
        ("guest-get-users", json!([{"user": "root", "login-time": 1.5}])),
        ("guest-get-timezone", json!({"zone": "CET", "offset": 3600})),
        ("guest-get-load", json!({"load1": 0.5, "load5": 0.25, "load15": 0.125})),
        (
            "guest-get-diskstats",
            json!([{"name": "vda", "major": 254, "minor": 0, "stats": {"read-ios": 10, "read-sectors": 20, "read-ticks": 1500,
            "write-ios": 1, "write-sectors": 2, "write-ticks": 3, "flush-ios": 4, "flush-ticks": 5, "ios-pgr": 0, "total-ticks": 6}}]),
        ),
        (
            "guest-get-cpustats",
            json!([{"type": "linux", "cpu": 0, "user": 2500, "nice": 0, "system": 100, "idle": 9000}]),
        ),
        ("guest-get-memory-block-info", json!({"size": 134217728})),
    ];
    for (cmd, v) in replies {
        q.data.apply(cmd, &v, &lim, &mut q.dropped, &mut q.rejected).expect("fixture parses");
    }
    // The last calls' durations of two commands sent (the others deselected or not yet due).
    q.commands.entry("guest-info".into()).or_default().duration_seconds = Some(0.0015);
    q.commands.entry("guest-get-fsinfo".into()).or_default().duration_seconds = Some(0.25);
    q
}

fn guest_source(q: crate::source::qga::QgaSample) -> Arc<SourceSnapshot> {
    let mut s = (*source(None, Some(crate::clock::now_unix()))).clone();
    s.sample = Some(Arc::new(SourceSample::Qga(q)));
    Arc::new(s)
}

fn rich_qmp() -> crate::source::qmp::QmpSample {
    use crate::source::events::Migration;
    use crate::source::qmp::{BlockExt, QmpSample};
    use serde_json::json;
    let mut q = QmpSample { status: Some("running".into()), ..Default::default() };
    q.blocks = vec![
        BlockExt::from_blockstats(&json!({"device": "drive-virtio-disk0", "stats": {
        "failed_rd_operations": 1, "failed_wr_operations": 2, "failed_flush_operations": 3, "invalid_rd_operations": 4,
        "invalid_wr_operations": 5, "invalid_flush_operations": 6, "unmap_operations": 7, "unmap_bytes": 8,
        "rd_merged": 9, "wr_merged": 10, "idle_time_ns": 2_000_000_000u64}}))
        .expect("block"),
    ];
    q.stats.insert("kvm/exits".into(), 42.0);
    q.migration = Migration::from_query_migrate(
        &json!({"status": "active", "total-time": 1000, "expected-downtime": 300,
        "ram": {"total": 100, "transferred": 50, "remaining": 50, "mbps": 8.0, "duplicate": 3, "dirty-pages-rate": 4, "page-size": 4096, "dirty-sync-count": 1},
        "compression": {"compressed-size": 5}}),
    );
    q.migration_last_completed_at = Some(1.0);
    for ev in [
        json!({"event": "GUEST_PANICKED"}),
        json!({"event": "RESET"}),
        json!({"event": "STOP"}),
        json!({"event": "BLOCK_IO_ERROR", "data": {"device": "drive-virtio-disk0", "operation": "read"}}),
        json!({"event": "VSERPORT_CHANGE", "data": {"id": "channel0", "open": true}}),
    ] {
        q.events.count(&ev, |_| true);
    }
    q
}

fn qmp_source(q: crate::source::qmp::QmpSample) -> Arc<SourceSnapshot> {
    let mut s = (*source(None, Some(crate::clock::now_unix()))).clone();
    s.sample = Some(Arc::new(SourceSample::Qmp(q)));
    Arc::new(s)
}

/// A fresh process source whose QEMU is in `/proc` state `state`.
fn process_source(state: &str) -> Arc<SourceSnapshot> {
    let mut p = (*source(None, Some(crate::clock::now_unix()))).clone();
    let qemu = crate::source::process::ProcessStats {
        pid: 1,
        name: "qemu-kvm".into(),
        cpu_user_seconds: 1.5,
        start_time_seconds: Some(1_700_000_000.5),
        state: state.into(),
        ..Default::default()
    };
    p.sample = Some(Arc::new(SourceSample::Process(crate::source::process::ProcessSample { processes: vec![qemu] })));
    Arc::new(p)
}

fn store_with(vms: Vec<(&str, Arc<SourceSnapshot>)>) -> Arc<Store> {
    store_with_guest(vms, None)
}

fn store_with_guest(vms: Vec<(&str, Arc<SourceSnapshot>)>, guest: Option<Arc<SourceSnapshot>>) -> Arc<Store> {
    let store = Arc::new(Store::new(["qemu:///system"]));
    store.endpoint_listed("qemu:///system", vms.len());
    for (name, src) in vms {
        let mut sources = BTreeMap::new();
        sources.insert(SourceKind::Libvirt, src);
        if let Some(g) = &guest {
            sources.insert(SourceKind::Qga, g.clone());
            sources.insert(SourceKind::Qmp, qmp_source(rich_qmp()));
            sources.insert(SourceKind::Process, process_source("S"));
        }
        store.insert_vm(VmSnapshot {
            id: VmId { namespace: "ns".into(), name: name.into() },
            domain: format!("ns_{name}"),
            uuid: format!("uuid-{name}"),
            endpoint: "qemu:///system".into(),
            discovered_at: 0.0,
            sources,
            revision: 0,
        });
    }
    store
}

fn scrape(store: Arc<Store>) -> String {
    VmCollector::new(store, "node-1".into(), Duration::from_secs(60))
        .with_options(ExportOptions { health_detail: true, ..ExportOptions::default() })
        .render(Format::OpenMetrics)
}

fn value(text: &str, series_prefix: &str) -> f64 {
    let line =
        text.lines().find(|l| l.starts_with(series_prefix)).unwrap_or_else(|| panic!("no series {series_prefix}"));
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("numeric value")
}

/// vda as KubeVirt names it (`ua-rootdisk`), with serial `pvc-root`.
fn rootdisk_with_serial() -> crate::source::libvirt::aliases::Aliases {
    crate::source::libvirt::aliases::Aliases::parse(
        "<domain><devices><disk><target dev='vda' bus='virtio'/><serial>pvc-root</serial>\
         <alias name='ua-rootdisk'/></disk></devices></domain>",
    )
}

#[test]
fn guest_filesystems_are_joined_to_their_drive_by_a_family_of_their_own() {
    let mut sample = LibvirtSample::new(rich_params(), rich_memory());
    let store_of = |sample: LibvirtSample| {
        store_with_guest(
            vec![("a", source(Some(sample), Some(crate::clock::now_unix())))],
            Some(guest_source(rich_guest())),
        )
    };
    let text = scrape(store_of(sample.clone()));
    assert!(!text.contains("vmbridge_guest_filesystem_drive_info{"), "no libvirt serial, no join:\n{text}");
    sample.parsed.apply_aliases(&rootdisk_with_serial(), crate::source::libvirt::aliases::DeviceLabels::Auto);
    let text = scrape(store_of(sample));
    let join = r#"vmbridge_guest_filesystem_drive_info{namespace="ns",name="a",node="node-1",mount_point="/",disk_name="vda1",drive="rootdisk"} 1"#;
    assert!(text.lines().any(|l| l.starts_with(join)), "{text}");
    // KubeVirt's filesystem families keep KubeVirt's labels; the storage ones carry the drive.
    let used = r#"kubevirt_vmi_filesystem_used_bytes{namespace="ns",name="a",node="node-1",disk_name="vda1",mount_point="/",file_system_type="ext4"} 400"#;
    assert!(text.lines().any(|l| l.starts_with(used)), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("kubevirt_vmi_storage_read_traffic_bytes_total{")
                && l.contains(r#"drive="rootdisk""#)),
        "{text}"
    );
}

#[test]
fn every_declared_family_is_emitted() {
    let mut sample = LibvirtSample::new(rich_params(), rich_memory());
    sample.partial_total.insert("block".into(), 1);
    sample.parsed.cpu_affinity = Some(2);
    // Its disk carries the serial the guest reports: the filesystem is joined to its drive.
    sample.parsed.apply_aliases(&rootdisk_with_serial(), crate::source::libvirt::aliases::DeviceLabels::Auto);
    sample.guest_memory = Some(crate::source::libvirt::memstats::GuestMemoryStats {
        state: crate::source::libvirt::memstats::MemoryStatsState::Fresh,
        period_seconds: 2.0,
        age_seconds: Some(1.0),
    });
    // Polling stretched (the node busy): the effective interval is written.
    let mut libvirt = (*source(Some(sample), Some(crate::clock::now_unix()))).clone();
    (libvirt.stretched, libvirt.effective_interval_seconds) = (true, Some(12.5));
    // The agent's ping was timed: its round-trip time is written.
    let mut guest = crate::source::qga::QgaSample { rtt_seconds: Some(0.004), ..rich_guest() };
    // One impossible value (a second filesystem's used over its capacity): the rejection
    // counter is written.
    let fs = serde_json::json!([
        {"name": "vda1", "mountpoint": "/", "type": "ext4", "disk": [{"serial": "pvc-root", "bus-type": "virtio"}],
            "total-bytes": 1000, "used-bytes": 400},
        {"name": "vdb", "mountpoint": "/data", "type": "ext4", "disk": [], "total-bytes": 1000, "used-bytes": 4000}
    ]);
    let lim = crate::source::qga::GuestLimits::default();
    guest.data.apply("guest-get-fsinfo", &fs, &lim, &mut guest.dropped, &mut guest.rejected).expect("parses");
    // A command name outside the polled list (a corrupted sample) is never a label value.
    guest.commands.entry("guest-exec".into()).or_default().duration_seconds = Some(9.0);
    let store = store_with_guest(vec![("a", Arc::new(libvirt))], Some(guest_source(guest)));
    // Its QEMU stopped: the stall reason is written.
    store.publish(&crate::store::VmKey::new("qemu:///system", "uuid-a"), SourceKind::Process, process_source("T"));
    // KubeVirt mode's launcher counts.
    store.launchers_scanned(3, 1, 0);
    let text = scrape(store);
    for def in crate::catalogue::documented() {
        let name = def.exposed_name();
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name}{{"))),
            "family {name} declared but never emitted:\n{text}"
        );
    }
    let durations: Vec<&str> =
        text.lines().filter(|l| l.starts_with("vmbridge_guest_agent_command_duration_seconds{")).collect();
    assert_eq!(
        durations,
        [
            r#"vmbridge_guest_agent_command_duration_seconds{namespace="ns",name="a",node="node-1",command="guest-get-fsinfo"} 0.25"#,
            r#"vmbridge_guest_agent_command_duration_seconds{namespace="ns",name="a",node="node-1",command="guest-info"} 0.0015"#,
        ],
        "one series per command sent, none for a name outside the list"
    );
}

#[test]
fn stale_guest_memory_figures_are_withheld_and_the_host_ones_stay() {
    use crate::source::libvirt::memstats::Freshness;
    let mut sample = LibvirtSample::new(rich_params(), rich_memory());
    let stamp = 1_764_800_000;
    sample.parsed.memory.last_update = Some(stamp);
    let mut f = Freshness::default();
    let mut fresh = sample.clone();
    fresh.guest_memory = Some(f.judge(&mut fresh.parsed.memory, stamp as f64 + 1.0));
    let text = scrape(store_with(vec![("a", source(Some(fresh), Some(crate::clock::now_unix())))]));
    assert!(text.contains("kubevirt_vmi_memory_usable_bytes{"), "{text}");
    assert!(
        text.contains("vmbridge_guest_memory_stats{namespace=\"ns\",name=\"a\",node=\"node-1\",state=\"fresh\"} 1")
    );
    // The stamp never moved again: after 3 (assumed 10 s) periods the guest's figures go.
    let mut stale = sample.clone();
    stale.guest_memory = Some(f.judge(&mut stale.parsed.memory, stamp as f64 + 31.0));
    let text = scrape(store_with(vec![("a", source(Some(stale), Some(crate::clock::now_unix())))]));
    for gone in [
        "kubevirt_vmi_memory_usable_bytes{",
        "kubevirt_vmi_memory_available_bytes{",
        "kubevirt_vmi_memory_unused_bytes{",
        "kubevirt_vmi_memory_cached_bytes{",
    ] {
        assert!(!text.contains(gone), "{gone} withheld:\n{text}");
    }
    for stays in ["kubevirt_vmi_memory_actual_balloon_bytes{", "kubevirt_vmi_memory_domain_bytes{"] {
        assert!(text.contains(stays), "{stays} stays:\n{text}");
    }
    assert!(
        text.contains("vmbridge_guest_memory_stats{namespace=\"ns\",name=\"a\",node=\"node-1\",state=\"stale\"} 1")
    );
    // (This scrape writes every state, the others at 0.)
    assert!(
        text.contains("vmbridge_guest_memory_stats{namespace=\"ns\",name=\"a\",node=\"node-1\",state=\"fresh\"} 0")
    );
}

#[test]
fn values_are_in_base_units() {
    let sample = LibvirtSample::new(rich_params(), rich_memory());
    let text = scrape(store_with(vec![("a", source(Some(sample), Some(crate::clock::now_unix())))]));
    let vm = "{namespace=\"ns\",name=\"a\",node=\"node-1\"";
    assert_eq!(value(&text, &format!("kubevirt_vmi_cpu_usage_seconds_total{vm}}}")), 1.5);
    assert_eq!(value(&text, &format!("kubevirt_vmi_storage_read_times_seconds_total{vm},drive=\"vda\"}}")), 0.25);
    // rss tag (7) = 107 KiB.
    assert_eq!(value(&text, &format!("kubevirt_vmi_memory_resident_bytes{vm}}}")), 107.0 * 1024.0);
    // balloon.current 32768 KiB, as KubeVirt (not balloon.maximum, 65536).
    assert_eq!(value(&text, &format!("kubevirt_vmi_memory_domain_bytes{vm}}}")), 32768.0 * 1024.0);
    assert_eq!(value(&text, &format!("kubevirt_vmi_dirty_rate_bytes_per_second{vm}}}")), 2.0 * 1_048_576.0);
    assert_eq!(value(&text, &format!("kubevirt_vmi_domain_state{vm},state=\"paused\",reason=\"user\"}}")), 1.0);
    assert_eq!(value(&text, &format!("kubevirt_vmi_vcpu_seconds_total{vm},id=\"0\",state=\"running\"}}")), 2.0);
}

#[test]
fn label_values_from_libvirt_are_escaped() {
    let sample = LibvirtSample::new(rich_params(), vec![]);
    let text = scrape(store_with(vec![("a", source(Some(sample), Some(crate::clock::now_unix())))]));
    assert!(text.contains("interface=\"vnet\\\"0\\\\\\n\""), "{text}");
}

#[test]
fn stale_data_is_dropped_but_health_stays() {
    let sample = LibvirtSample::new(rich_params(), rich_memory());
    let old = crate::clock::now_unix() - 3600.0;
    let text = scrape(store_with(vec![
        ("old", source(Some(sample.clone()), Some(old))),
        ("new", source(Some(sample), Some(crate::clock::now_unix()))),
    ]));
    assert!(!text.contains("kubevirt_vmi_cpu_usage_seconds_total{namespace=\"ns\",name=\"old\""));
    assert!(text.contains("kubevirt_vmi_cpu_usage_seconds_total{namespace=\"ns\",name=\"new\""));
    assert!(text.contains("vmbridge_source_last_success_timestamp_seconds{namespace=\"ns\",name=\"old\""));
    assert!(text.contains(
        "vmbridge_breaker_state{namespace=\"ns\",name=\"old\",node=\"node-1\",source=\"libvirt\",state=\"closed\"} 1"
    ));
}

#[test]
fn a_vm_without_data_gets_no_fake_zeros() {
    let text = scrape(store_with(vec![("empty", source(None, None))]));
    assert!(!text.lines().any(|l| l.starts_with("kubevirt_vmi_")), "{text}");
    assert!(
        text.contains("vmbridge_source_up{namespace=\"ns\",name=\"empty\",node=\"node-1\",source=\"libvirt\"} 0"),
        "{text}"
    );
}

#[test]
fn guest_values_are_converted_and_described() {
    let sample = LibvirtSample::new(rich_params(), vec![]);
    let text = scrape(store_with_guest(
        vec![("g", source(Some(sample), Some(crate::clock::now_unix())))],
        Some(guest_source(rich_guest())),
    ));
    let vm = "{namespace=\"ns\",name=\"g\",node=\"node-1\"";
    assert_eq!(
        value(
            &text,
            &format!(
                "kubevirt_vmi_filesystem_used_bytes{vm},disk_name=\"vda1\",mount_point=\"/\",file_system_type=\"ext4\"}}"
            )
        ),
        400.0
    );
    assert_eq!(value(&text, &format!("kubevirt_vmi_guest_disk_read_bytes_total{vm},disk=\"vda\"}}")), 20.0 * 512.0);
    assert_eq!(value(&text, &format!("kubevirt_vmi_guest_disk_read_time_seconds_total{vm},disk=\"vda\"}}")), 1.5);
    assert_eq!(value(&text, &format!("kubevirt_vmi_guest_cpu_seconds_total{vm},cpu=\"0\",mode=\"user\"}}")), 2.5);
    assert_eq!(value(&text, &format!("kubevirt_vmi_guest_vcpus_online{vm}}}")), 1.0);
    assert_eq!(value(&text, &format!("kubevirt_vmi_guest_vcpus{vm}}}")), 2.0);
    assert_eq!(value(&text, &format!("kubevirt_vmi_guest_users{vm}}}")), 1.0);
    assert!(!text.contains("root"), "user names are never exported");
    assert!(text.contains("kubevirt_vmi_guest_interface_address_info{namespace=\"ns\",name=\"g\",node=\"node-1\",interface=\"eth0\",address=\"10.0.2.15\",family=\"ipv4\",prefix=\"24\",mac=\"52:54:00:12:34:56\"} 1"), "{text}");
    // KubeVirt's own labels for this family (os_name, os_version, os_id, kernel_release, machine).
    let os = text.lines().find(|l| l.starts_with("kubevirt_vmi_guest_os_info{")).expect("os info");
    for label in ["os_name=", "os_version=", "os_id=\"debian\"", "kernel_release=", "machine="] {
        assert!(os.contains(label), "{label} missing in {os}");
    }
    assert!(!os.contains("pretty_name") && !os.contains("hostname"), "{os}");
    assert!(
        text.contains(
            "kubevirt_vmi_guest_hostname_info{namespace=\"ns\",name=\"g\",node=\"node-1\",hostname=\"guest-1\"} 1"
        ),
        "{text}"
    );
}

#[test]
fn export_all_known_writes_nan_not_zero_and_keep_ephemeral_keeps_completed_migrations() {
    use crate::source::events::Migration;
    let store = store_with(vec![("empty", source(None, None))]);
    let text = VmCollector::new(store, "node-1".into(), Duration::from_secs(60))
        .with_options(ExportOptions { export_all_known: true, ..ExportOptions::default() })
        .render(Format::OpenMetrics);
    let line =
        text.lines().find(|l| l.starts_with("kubevirt_vmi_cpu_usage_seconds_total{")).expect("exported before data");
    assert!(line.ends_with(" NaN"), "{line}");
    assert!(!text.lines().any(|l| l.starts_with("kubevirt_vmi_") && l.ends_with(" 0.0")), "no fake zeros:\n{text}");

    let mut q = rich_qmp();
    q.migration = Migration::from_query_migrate(
        &serde_json::json!({"status": "completed", "total-time": 10, "downtime": 5, "ram": {"total": 9, "transferred": 9, "remaining": 0}}),
    );
    let store_for = |q: &crate::source::qmp::QmpSample| {
        let s = store_with(vec![("m", source(None, None))]);
        s.publish(&crate::store::VmKey::new("qemu:///system", "uuid-m"), SourceKind::Qmp, qmp_source(q.clone()));
        s
    };
    let render = |keep: bool| {
        VmCollector::new(store_for(&q), "node-1".into(), Duration::from_secs(60))
            .with_options(ExportOptions { keep_ephemeral: keep, ..ExportOptions::default() })
            .render(Format::OpenMetrics)
    };
    assert!(!render(false).contains("kubevirt_vmi_migration_memory_processed_bytes{"), "ephemeral values go away");
    let kept = render(true);
    assert_eq!(
        value(&kept, "kubevirt_vmi_migration_memory_processed_bytes{namespace=\"ns\",name=\"m\",node=\"node-1\"}"),
        9.0
    );
    assert_eq!(
        value(
            &kept,
            "kubevirt_vmi_migration_last_completed_timestamp_seconds{namespace=\"ns\",name=\"m\",node=\"node-1\"}"
        ),
        1.0
    );
}

/// Every `…_total` sample of VM `name`: series (name and labels) → value.
fn totals(text: &str, name: &str) -> BTreeMap<String, f64> {
    let vm = format!("name=\"{name}\"");
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&vm))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let family = series.split('{').next()?;
            let v: f64 = v.parse().ok()?;
            family.ends_with("_total").then(|| (series.to_owned(), v))
        })
        .collect()
}

#[test]
fn a_qmp_source_going_stale_leaves_every_counter_monotonic() {
    use crate::source::libvirt::ffi::DomainEvent;
    // libvirt counted other events over another span (it saw 0 panics, 3 reboots, 2 pauses).
    let mut lv = LibvirtSample::new(rich_params(), rich_memory());
    for (i, ev) in [DomainEvent::Reboot, DomainEvent::Lifecycle { event: 3, detail: 0 }].iter().enumerate() {
        lv.events.count_libvirt(ev, i as f64 * 10.0);
    }
    lv.events.count_libvirt(&DomainEvent::Reboot, 100.0);
    lv.events.count_libvirt(&DomainEvent::Reboot, 200.0);
    let libvirt = source(Some(lv), Some(crate::clock::now_unix()));
    let store_at = |qmp_success: f64| {
        let store = store_with(vec![("q", libvirt.clone())]);
        let mut s = (*qmp_source(rich_qmp())).clone();
        s.last_success_at = Some(qmp_success);
        store.publish(&crate::store::VmKey::new("qemu:///system", "uuid-q"), SourceKind::Qmp, Arc::new(s));
        store
    };
    let now = crate::clock::now_unix();
    // Fresh QMP, then QMP stale (beyond the 60 s window) while libvirt stays fresh, then fresh.
    let scrapes = [scrape(store_at(now)), scrape(store_at(now - 600.0)), scrape(store_at(now))];
    let fresh = totals(&scrapes[0], "q");
    assert!(fresh.keys().any(|k| k.starts_with("kubevirt_vmi_reboots_total")), "{fresh:?}");
    assert!(fresh.keys().any(|k| k.starts_with("kubevirt_vmi_guest_os_panic_total")), "{fresh:?}");
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    for (i, text) in scrapes.iter().enumerate() {
        for (series, v) in totals(text, "q") {
            if let Some(prev) = last.get(&series) {
                assert!(v >= *prev, "scrape {i}: {series} went from {prev} to {v}");
            }
            last.insert(series, v);
        }
    }
    // While stale, QMP's event counters are absent rather than libvirt's different ones.
    let stale = totals(&scrapes[1], "q");
    assert!(!stale.keys().any(|k| k.starts_with("kubevirt_vmi_reboots_total")), "{stale:?}");
    assert!(
        !scrapes[1].contains("kubevirt_vmi_migration_memory_processed_bytes{namespace=\"ns\",name=\"q\""),
        "libvirt's job stats do not stand in for a stale QMP source"
    );
    assert_eq!(totals(&scrapes[2], "q"), fresh, "fresh again: the same series and values");
}

#[test]
fn kubevirt_parity_values_migration_rates_and_panic_labels() {
    use crate::source::qmp::QmpSample;
    use serde_json::json;
    let mut sample = LibvirtSample::new(rich_params(), rich_memory());
    sample.parsed.cpu_affinity = Some(3);
    let text = scrape(store_with_guest(
        vec![("k", source(Some(sample), Some(crate::clock::now_unix())))],
        Some(guest_source(rich_guest())),
    ));
    let vm = "{namespace=\"ns\",name=\"k\",node=\"node-1\"";
    assert_eq!(value(&text, &format!("kubevirt_vmi_node_cpu_affinity{vm}}}")), 3.0);
    // KubeVirt's deprecated combined family equals the per-direction ones.
    assert_eq!(
        value(
            &text,
            &format!("kubevirt_vmi_network_traffic_bytes_total{vm},interface=\"vnet\\\"0\\\\\\n\",type=\"rx\"}}")
        ),
        10.0
    );
    assert_eq!(
        value(
            &text,
            &format!("kubevirt_vmi_network_traffic_bytes_total{vm},interface=\"vnet\\\"0\\\\\\n\",type=\"tx\"}}")
        ),
        20.0
    );
    // Migration: the total is KubeVirt's counter; rates are bytes per second (4 pages of 4 KiB;
    // 8 Mbit/s).
    assert_eq!(value(&text, &format!("kubevirt_vmi_migration_data_bytes_total{vm}}}")), 100.0);
    assert_eq!(value(&text, &format!("kubevirt_vmi_migration_dirty_memory_rate_bytes{vm}}}")), 4.0 * 4096.0);
    assert_eq!(value(&text, &format!("kubevirt_vmi_migration_memory_transfer_rate_bytes{vm}}}")), 1e6);
    assert!(text.contains("# TYPE kubevirt_vmi_migration_data_bytes counter"), "{text}");
    assert_eq!(value(&text, &format!("kubevirt_vmi_start_time_seconds{vm}}}")), 1_700_000_000.5);
    // The panic counter has KubeVirt's labels and, like KubeVirt's, no node.
    assert_eq!(
        value(
            &text,
            "kubevirt_vmi_guest_os_panic_total{namespace=\"ns\",name=\"k\",type=\"unknown\",bugcheck_code=\"unknown\"}"
        ),
        1.0
    );
    let mut q = QmpSample::default();
    for ev in [
        json!({"event": "GUEST_PANICKED", "data": {"action": "pause", "info": {"type": "hyper-v", "arg1": 159, "arg2": 3}}}),
        json!({"event": "GUEST_PANICKED", "data": {"action": "pause", "info": {"type": "hyper-v", "arg1": 159}}}),
        json!({"event": "GUEST_PANICKED", "data": {"action": "pause", "info": {"type": "s390", "core": 0}}}),
    ] {
        q.events.count(&ev, |_| true);
    }
    let mut sources = BTreeMap::new();
    sources.insert(SourceKind::Qmp, qmp_source(q));
    let store = Arc::new(Store::new(["qemu:///system"]));
    store.insert_vm(VmSnapshot {
        id: VmId { namespace: "ns".into(), name: "w".into() },
        domain: "ns_w".into(),
        uuid: "uuid-w".into(),
        endpoint: "qemu:///system".into(),
        discovered_at: 0.0,
        sources,
        revision: 0,
    });
    let text = scrape(store);
    let panic = |ty: &str, code: &str| {
        value(
            &text,
            &format!(
                "kubevirt_vmi_guest_os_panic_total{{namespace=\"ns\",name=\"w\",type=\"{ty}\",bugcheck_code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(panic("hyper-v", "0x9f"), 2.0);
    assert_eq!(panic("s390", "unknown"), 1.0);
    // Exported at 0 from the start, so a first panic is an increase.
    assert_eq!(panic("unknown", "unknown"), 0.0);
}

#[test]
fn drive_and_interface_labels_are_kubevirts_alias_names_in_every_family() {
    use crate::source::libvirt::aliases::{Aliases, DeviceLabels};
    use crate::source::qmp::{BlockExt, QmpSample};
    use serde_json::json;
    let mut sample = LibvirtSample::new(rich_params(), rich_memory());
    let aliases = Aliases {
        disks: [("vda".to_owned(), "ua-rootdisk".to_owned())].into(),
        nets: [("vnet\"0\\\n".to_owned(), "ua-default".to_owned())].into(),
        ..Default::default()
    };
    sample.parsed.apply_aliases(&aliases, DeviceLabels::Auto);
    // QEMU names the disk by its device id, or by the QOM path of its backend.
    let mut q = QmpSample {
        blocks: vec![
            BlockExt::from_blockstats(&json!({"device": "", "qdev": "/machine/peripheral/ua-rootdisk/virtio-backend",
                "stats": {"failed_rd_operations": 1}}))
            .expect("block"),
        ],
        ..Default::default()
    };
    q.events
        .count(&json!({"event": "BLOCK_IO_ERROR", "data": {"device": "ua-rootdisk", "operation": "write"}}), |_| true);
    let mut sources = BTreeMap::new();
    sources.insert(SourceKind::Libvirt, source(Some(sample.clone()), Some(crate::clock::now_unix())));
    sources.insert(SourceKind::Qmp, qmp_source(q));
    let store = Arc::new(Store::new(["qemu:///system"]));
    store.insert_vm(VmSnapshot {
        id: VmId { namespace: "ns".into(), name: "a".into() },
        domain: "ns_a".into(),
        uuid: "uuid-a".into(),
        endpoint: "qemu:///system".into(),
        discovered_at: 0.0,
        sources,
        revision: 0,
    });
    let text = scrape(store);
    let vm = "{namespace=\"ns\",name=\"a\",node=\"node-1\"";
    assert_eq!(value(&text, &format!("kubevirt_vmi_storage_iops_read_total{vm},drive=\"rootdisk\"}}")), 3.0);
    assert_eq!(
        value(&text, &format!("kubevirt_vmi_storage_capacity_bytes{vm},drive=\"rootdisk\"}}")),
        (1u64 << 30) as f64
    );
    assert_eq!(value(&text, &format!("kubevirt_vmi_network_receive_bytes_total{vm},interface=\"default\"}}")), 10.0);
    assert_eq!(
        value(&text, &format!("kubevirt_vmi_storage_failed_read_operations_total{vm},drive=\"rootdisk\"}}")),
        1.0
    );
    assert_eq!(
        value(&text, &format!("kubevirt_vmi_block_io_errors_total{vm},drive=\"rootdisk\",operation=\"write\"}}")),
        1.0
    );
    assert!(!text.contains("drive=\"vda\""), "no family keeps the target name:\n{text}");
    // `target`: the target name everywhere, QMP's too (mapped through libvirt's alias).
    sample.parsed.apply_aliases(&aliases, DeviceLabels::Target);
    assert_eq!(sample.parsed.blocks[0].label(), "vda");
    assert_eq!(sample.parsed.nets[0].label(), "vnet\"0\\\n");
}

#[test]
fn the_complement_profile_exports_no_virt_handler_family_and_groups_select() {
    use crate::model::metric::{Group, Profile, Selection};
    let store = || {
        let sample = LibvirtSample::new(rich_params(), rich_memory());
        store_with_guest(
            vec![("a", source(Some(sample), Some(crate::clock::now_unix())))],
            Some(guest_source(rich_guest())),
        )
    };
    let encode = |selection: Selection| {
        VmCollector::new(store(), "node-1".into(), Duration::from_secs(60))
            .with_selection(selection)
            .render(Format::OpenMetrics)
    };
    let full = encode(Selection::default());
    let complement = encode(Selection { profile: Profile::KubevirtComplement, ..Selection::default() });
    let families = |t: &str| -> std::collections::BTreeSet<String> {
        t.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
            .collect()
    };
    let (f, c) = (families(&full), families(&complement));
    // `# TYPE` names a family by its name and unit, without `_total` or `_info`.
    let type_name = |d: &crate::model::metric::MetricDef| {
        let n = d.exposed_name();
        n.strip_suffix("_total").or_else(|| n.strip_suffix("_info")).unwrap_or(&n).to_owned()
    };
    for d in crate::catalogue::all() {
        let base = type_name(d);
        assert!(f.contains(&base), "full lacks {base}");
        assert_eq!(c.contains(&base), !d.from_virt_handler(), "{base} under kubevirt-complement");
    }
    assert!(
        complement.contains("kubevirt_vmi_guest_vcpus_online{")
            && !complement.contains("kubevirt_vmi_cpu_usage_seconds_total{")
    );
    let guest = encode(Selection { groups: vec![Group::Guest], ..Selection::default() });
    for t in families(&guest) {
        let d = crate::catalogue::all().iter().find(|d| type_name(d) == t).expect("a catalogue family");
        assert!(
            d.group == Group::Guest || d.name == crate::collector::bridge::BUILD_INFO.name,
            "{t} is not in the guest group"
        );
    }
    assert!(guest.contains("kubevirt_vmi_filesystem_used_bytes{"), "{guest}");
}

/// Bridge-health sample lines of VM `name`, by family.
fn bridge_lines<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
    let vm = format!("{{namespace=\"ns\",name=\"{name}\",");
    text.lines().filter(|l| l.starts_with("vmbridge_") && l.contains(&vm)).collect()
}

#[test]
fn health_stays_within_twelve_series_per_vm_and_shows_what_occurred() {
    let sample = LibvirtSample::new(rich_params(), rich_memory());
    let store = store_with_guest(
        vec![("a", source(Some(sample), Some(crate::clock::now_unix())))],
        Some(guest_source(rich_guest())),
    );
    let compact = VmCollector::new(store.clone(), "node-1".into(), Duration::from_secs(60)).render(Format::OpenMetrics);
    let (durations, lines): (Vec<&str>, Vec<&str>) = bridge_lines(&compact, "a")
        .into_iter()
        .partition(|l| l.starts_with("vmbridge_guest_agent_command_duration_seconds{"));
    // The guest agent's command durations: one per command sent, at most one per polled command.
    assert_eq!(durations.len(), 2, "{durations:#?}");
    assert!(durations.len() <= crate::source::qga::commands::COMMANDS.len());
    let (heartbeat, lines): (Vec<&str>, Vec<&str>) = lines
        .into_iter()
        .partition(|l| l.starts_with("vmbridge_guest_heartbeat{") || l.starts_with("vmbridge_guest_agent_rtt"));
    // Four sources, three series each; plus the VM's one guest heartbeat state (the domain
    // is paused in these parameters, so the guest cannot be judged; the ping is untimed in
    // this sample: no round-trip time).
    assert_eq!(lines.len(), 12, "{lines:#?}");
    assert_eq!(
        heartbeat,
        ["vmbridge_guest_heartbeat{namespace=\"ns\",name=\"a\",node=\"node-1\",state=\"unknown\"} 1.0"]
    );
    for family in ["vmbridge_source_up{", "vmbridge_source_last_success_timestamp_seconds{", "vmbridge_breaker_state{"]
    {
        assert_eq!(lines.iter().filter(|l| l.starts_with(family)).count(), 4, "{family}: {lines:#?}");
    }
    assert!(lines.iter().all(|l| !l.contains("state=\"open\"")), "only the current state: {lines:#?}");
    // The families are still described, for `absent()`-free queries and for the dashboard.
    assert!(compact.contains("# TYPE vmbridge_source_errors counter"));

    // Failures of one kind and the breaker transitions they caused, on the guest agent.
    let mut failing = (*guest_source(rich_guest())).clone();
    failing.errors_total.insert(crate::model::ErrorKind::Protocol, 3);
    let mut breaker = Breaker::new(BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() });
    let now = tokio::time::Instant::now();
    breaker.on_failure(now, false);
    failing.breaker = breaker.view(now);
    let key = crate::store::VmKey::new("qemu:///system", "uuid-a");
    store.publish(&key, SourceKind::Qga, Arc::new(failing));
    let text = VmCollector::new(store.clone(), "node-1".into(), Duration::from_secs(60)).render(Format::OpenMetrics);
    let lines = bridge_lines(&text, "a");
    let errors: Vec<_> = lines.iter().filter(|l| l.starts_with("vmbridge_source_errors_total{")).collect();
    assert_eq!(
        errors,
        [
            &"vmbridge_source_errors_total{namespace=\"ns\",name=\"a\",node=\"node-1\",source=\"qga\",kind=\"protocol\"} 3.0"
        ]
    );
    assert!(lines.iter().any(|l| l.starts_with("vmbridge_breaker_transitions_total{") && l.contains("source=\"qga\"")));
    assert!(lines.contains(
        &"vmbridge_breaker_state{namespace=\"ns\",name=\"a\",node=\"node-1\",source=\"qga\",state=\"open\"} 1.0"
    ));
    assert!(lines.contains(&"vmbridge_source_up{namespace=\"ns\",name=\"a\",node=\"node-1\",source=\"qga\"} 0.0"));

    // --health-detail: every state, kind and reason, at zero too, and poll counts.
    let detail = VmCollector::new(store, "node-1".into(), Duration::from_secs(60))
        .with_options(ExportOptions { health_detail: true, ..ExportOptions::default() })
        .render(Format::OpenMetrics);
    let lines = bridge_lines(&detail, "a");
    let per_source = 1
        + crate::breaker::BreakerState::ALL.len()
        + 3
        + crate::model::ErrorKind::ALL.len()
        + crate::breaker::TransitionReason::ALL.len()
        + 1;
    // Plus the guest agent's five dropped-item counters, every heartbeat state, and the two
    // command durations (only commands sent, detail or not).
    assert_eq!(lines.len(), 4 * per_source + 5 + crate::heartbeat::Heartbeat::ALL.len() + 2, "{lines:#?}");
}

#[test]
fn pre_encoded_series_follow_publishes_removals_and_the_staleness_window() {
    let sample = LibvirtSample::new(rich_params(), rich_memory());
    let store = store_with(vec![
        ("a", source(Some(sample.clone()), Some(crate::clock::now_unix()))),
        ("b", source(Some(sample.clone()), Some(crate::clock::now_unix()))),
    ]);
    let collector = VmCollector::new(store.clone(), "node-1".into(), Duration::from_secs(2)).observing();
    let first = collector.render_with_stats(Format::Prometheus);
    assert_eq!(first.1.encoded, 2, "not seen before the first scrape: encoded by it");
    let again = collector.render_with_stats(Format::Prometheus);
    assert_eq!((again.1.reused, again.1.encoded), (2, 0));
    assert_eq!(again.0, first.0, "nothing changed");

    // A publish is encoded by the publisher; the scrape only concatenates.
    let mut params = rich_params();
    for (k, v) in &mut params {
        if k == "cpu.time" {
            *v = ParamValue::UInt(9_000_000_000);
        }
    }
    let key_a = crate::store::VmKey::new("qemu:///system", "uuid-a");
    store.publish(
        &key_a,
        SourceKind::Libvirt,
        source(Some(LibvirtSample::new(params, rich_memory())), Some(crate::clock::now_unix())),
    );
    let (text, stats) = collector.render_with_stats(Format::Prometheus);
    let text = String::from_utf8(text).expect("UTF-8");
    assert_eq!((stats.reused, stats.encoded), (2, 0), "encoded at publish, not at scrape");
    assert_eq!(value(&text, "kubevirt_vmi_cpu_usage_seconds_total{namespace=\"ns\",name=\"a\",node=\"node-1\"}"), 9.0);
    // What a collector that never saw the publish encodes from the same store is the same.
    let cold = VmCollector::new(store.clone(), "node-1".into(), Duration::from_secs(2)).render(Format::Prometheus);
    assert_eq!(text, cold);
    let om = collector.render(Format::OpenMetrics);
    assert_eq!(
        om,
        VmCollector::new(store.clone(), "node-1".into(), Duration::from_secs(2)).render(Format::OpenMetrics)
    );
    assert_eq!(crate::model::text::openmetrics_to_prometheus(&om), text, "the two formats differ only in headers");

    // A VM that leaves the store leaves the exposition.
    store.remove_vm(&crate::store::VmKey::new("qemu:///system", "uuid-b"));
    let text = collector.render(Format::Prometheus);
    assert!(!text.contains("name=\"b\""), "{text}");

    // Data ages out of the window without any publish: the scrape encodes the VM again.
    std::thread::sleep(Duration::from_millis(2500));
    let (text, stats) = collector.render_with_stats(Format::Prometheus);
    let text = String::from_utf8(text).expect("UTF-8");
    assert_eq!(stats.encoded, 1);
    assert!(!text.contains("kubevirt_vmi_cpu_usage_seconds_total{"), "{text}");
    // The VM stays visible, and its source shows down once its data is stale (a source whose
    // polls are deferred keeps `source_up` 1 only within the staleness window).
    assert!(text.contains("vmbridge_source_up{namespace=\"ns\",name=\"a\",node=\"node-1\",source=\"libvirt\"} 0.0"));
}

#[test]
fn gzip_bodies_decompress_to_the_plain_exposition_and_are_reused_while_nothing_changed() {
    let sample = LibvirtSample::new(rich_params(), rich_memory());
    let store = store_with(vec![("a", source(Some(sample), Some(crate::clock::now_unix())))]);
    let collector = VmCollector::new(store, "node-1".into(), Duration::from_secs(60)).observing();
    let z = collector.render_gzip(Format::Prometheus, 1).expect("within the reply budget");
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&z[..]), &mut plain).expect("gunzip");
    assert_eq!(plain, collector.render(Format::Prometheus));
    let again = collector.render_gzip(Format::Prometheus, 1).expect("within the reply budget");
    assert_eq!(again.as_ptr(), z.as_ptr(), "the same body, not compressed again");
    let om = collector.render_gzip(Format::OpenMetrics, 1).expect("within the reply budget");
    assert_ne!(om.as_ptr(), z.as_ptr(), "another format is another body");
}

#[test]
fn a_publish_encodes_only_its_sources_part_and_matches_a_cold_full_encode_byte_for_byte() {
    use crate::source::libvirt::aliases::{Aliases, DeviceLabels};
    use crate::source::qmp::{BlockExt, QmpSample};
    use serde_json::json;
    let now = crate::clock::now_unix;
    let labelled = |labels: DeviceLabels, cpu: u64| {
        let mut params = rich_params();
        for (k, v) in &mut params {
            if k == "cpu.time" {
                *v = ParamValue::UInt(cpu);
            }
        }
        let mut s = LibvirtSample::new(params, rich_memory());
        let aliases = Aliases { disks: [("vda".to_owned(), "ua-rootdisk".to_owned())].into(), ..Default::default() };
        s.parsed.apply_aliases(&aliases, labels);
        source(Some(s), Some(now()))
    };
    // QMP names the disk by its device id: its `drive` label comes from libvirt's aliases.
    let qmp = |failed: u64| {
        let mut q = QmpSample { status: Some("running".into()), ..rich_qmp() };
        q.blocks = vec![
            BlockExt::from_blockstats(&json!({"device": "ua-rootdisk", "stats": {"failed_rd_operations": failed}}))
                .expect("block"),
        ];
        qmp_source(q)
    };
    let store = store_with_guest(
        vec![("a", labelled(DeviceLabels::Auto, 1_000_000_000)), ("b", labelled(DeviceLabels::Auto, 2_000_000_000))],
        Some(guest_source(rich_guest())),
    );
    let key_a = crate::store::VmKey::new("qemu:///system", "uuid-a");
    store.publish(&key_a, SourceKind::Qmp, qmp(1));
    let opts = ExportOptions { health_detail: true, ..ExportOptions::default() };
    let collector =
        VmCollector::new(store.clone(), "node-1".into(), Duration::from_secs(60)).with_options(opts).observing();
    let cold = |format| {
        VmCollector::new(store.clone(), "node-1".into(), Duration::from_secs(60)).with_options(opts).render(format)
    };
    let check = |what: &str| {
        for format in [Format::Prometheus, Format::OpenMetrics] {
            assert_eq!(collector.render(format), cold(format), "{what}, {format:?}: incremental and cold differ");
        }
    };
    check("first scrape");
    let part = |kind: SourceKind| SourceKind::ALL.iter().position(|k| *k == kind).expect("a source");
    let (libvirt, qmp_part, qga, process) =
        (part(SourceKind::Libvirt), part(SourceKind::Qmp), part(SourceKind::Qga), part(SourceKind::Process));
    let (events, bridge) = (SourceKind::ALL.len(), SourceKind::ALL.len() + 1);
    let delta =
        |before: &[u64]| -> Vec<u64> { collector.parts_encoded().iter().zip(before).map(|(a, b)| a - b).collect() };
    let want = |parts: &[usize]| -> Vec<u64> {
        (0..SourceKind::ALL.len() + 2).map(|p| u64::from(parts.contains(&p))).collect()
    };

    // The guest agent publishes: its part and the bridge's, nothing else.
    let before = collector.parts_encoded();
    let mut g = rich_guest();
    g.transport = "virtio-serial".into();
    store.publish(&key_a, SourceKind::Qga, guest_source(g));
    assert_eq!(delta(&before), want(&[qga, bridge]));
    check("after a guest publish");

    // QMP publishes: its part, the events' (QMP's events and migration), the bridge's.
    let before = collector.parts_encoded();
    store.publish(&key_a, SourceKind::Qmp, qmp(7));
    assert_eq!(delta(&before), want(&[qmp_part, events, bridge]));
    let text = collector.render(Format::Prometheus);
    assert!(text.contains("drive=\"rootdisk\""), "QMP's disk labelled by libvirt's alias: {text}");
    check("after a QMP publish");

    // libvirt publishes with the same aliases: its part, the events', the bridge's.
    let before = collector.parts_encoded();
    store.publish(&key_a, SourceKind::Libvirt, labelled(DeviceLabels::Auto, 9_000_000_000));
    assert_eq!(delta(&before), want(&[libvirt, events, bridge]));
    check("after a libvirt publish");

    // libvirt labels the disk otherwise (its target name): every part that labels drives by
    // libvirt's labels is encoded again.
    let before = collector.parts_encoded();
    store.publish(&key_a, SourceKind::Libvirt, labelled(DeviceLabels::Target, 9_500_000_000));
    let d = delta(&before);
    assert_eq!((d[libvirt], d[qmp_part], d[qga], d[process], d[events], d[bridge]), (1, 1, 1, 1, 1, 1), "{d:?}");
    let text = collector.render(Format::Prometheus);
    let a_drives: Vec<&str> = text.lines().filter(|l| l.contains("name=\"a\"") && l.contains("drive=")).collect();
    assert!(
        a_drives.iter().any(|l| l.starts_with("kubevirt_vmi_storage_failed_read_operations_total")),
        "{a_drives:?}"
    );
    assert!(
        a_drives.iter().all(|l| l.contains("drive=\"vda\"") || l.contains("drive=\"drive-virtio-disk0\"")),
        "{a_drives:?}"
    );
    check("after a drive rename");

    // A scrape with nothing changed encodes nothing.
    let before = collector.parts_encoded();
    let (_, stats) = collector.render_with_stats(Format::Prometheus);
    assert_eq!((stats.reused, stats.encoded), (2, 0));
    assert_eq!(delta(&before), want(&[]));
}

#[test]
fn plain_bodies_are_shared_between_scrapes_and_charged_once_to_the_reply_budget() {
    use crate::http::budget::{OverBudget, ReplyBudget};
    use crate::http::limits::HttpStats;
    let sample = LibvirtSample::new(rich_params(), rich_memory());
    let store = store_with(vec![("a", source(Some(sample), Some(crate::clock::now_unix())))]);
    let http = Arc::new(HttpStats { budget: Arc::new(ReplyBudget::new(1 << 20)), ..HttpStats::default() });
    let collector =
        VmCollector::new(store.clone(), "node-1".into(), Duration::from_secs(60)).with_http(http.clone()).observing();
    let body = collector.render_shared(Format::Prometheus).expect("within the reply budget");
    assert_eq!(&body[..], &collector.render_bytes(Format::Prometheus)[..]);
    assert!(body.len() >= crate::http::budget::UNCHARGED_BELOW, "{} bytes: too small to be charged", body.len());
    let held = http.budget.held();
    assert_eq!(held, body.len());
    // A second scrape of the unchanged exposition shares the body and its charge.
    let again = collector.render_shared(Format::Prometheus).expect("shared");
    assert_eq!(again.as_ptr(), body.as_ptr(), "the same body, not a copy");
    assert_eq!(http.budget.held(), held);
    // Another format is another body, charged too; both are given back once nobody holds them.
    let om = collector.render_shared(Format::OpenMetrics).expect("within the reply budget");
    assert_ne!(om.as_ptr(), body.as_ptr());
    assert_eq!(http.budget.held(), body.len() + om.len());
    drop((body, again));
    assert_eq!(http.budget.held(), om.len(), "the cache now holds the OpenMetrics body only");

    // With a budget too small for a second body while the first is held, a new body is refused.
    let size = collector.render_bytes(Format::Prometheus).len();
    let http = Arc::new(HttpStats { budget: Arc::new(ReplyBudget::new(size + 10)), ..HttpStats::default() });
    let tight = VmCollector::new(store, "node-1".into(), Duration::from_secs(60)).with_http(http.clone()).observing();
    let first = tight.render_shared(Format::Prometheus).expect("the first fits");
    assert_eq!(tight.render_shared(Format::OpenMetrics), Err(OverBudget));
    assert_eq!(http.budget.shed(), 1);
    drop(first);
}

// ---------------------------------------------------------------------------------------------
// Impossible guest values (`source::reject`): one test per rule, on raw agent replies or
// recorded libvirt memory statistics.

/// The `vmbridge_guest_values_rejected_total` line of VM `vm` for `family` and `reason`.
fn rejected_line(vm: &str, family: &str, reason: &str, n: u64) -> String {
    format!(
        "vmbridge_guest_values_rejected_total{{namespace=\"ns\",name=\"{vm}\",node=\"node-1\",family=\"{family}\",reason=\"{reason}\"}} {n}"
    )
}

/// A guest sample after the agent's raw `replies`.
fn guest_after(replies: &[(&str, serde_json::Value)]) -> crate::source::qga::QgaSample {
    let mut q = crate::source::qga::QgaSample { transport: "socket".into(), ..Default::default() };
    let lim = crate::source::qga::GuestLimits::default();
    for (cmd, v) in replies {
        q.data
            .apply(cmd, v, &lim, &mut q.dropped, &mut q.rejected)
            .expect("a reply with impossible values still parses");
    }
    q
}

fn scrape_guest(q: crate::source::qga::QgaSample) -> String {
    let libvirt = source(Some(LibvirtSample::new(rich_params(), rich_memory())), Some(crate::clock::now_unix()));
    scrape(store_with_guest(vec![("a", libvirt)], Some(guest_source(q))))
}

#[test]
fn reject_used_over_capacity_withholds_used_and_keeps_the_capacity_and_other_filesystems() {
    let reply = serde_json::json!([
        {"name": "vda1", "mountpoint": "/", "type": "ext4", "disk": [], "total-bytes": 1000, "used-bytes": 2000},
        {"name": "vdb", "mountpoint": "/data", "type": "xfs", "disk": [], "total-bytes": 5000, "used-bytes": 100}
    ]);
    let q = guest_after(&[("guest-get-fsinfo", reply)]);
    let text = scrape_guest(q.clone());
    let root =
        "namespace=\"ns\",name=\"a\",node=\"node-1\",disk_name=\"vda1\",mount_point=\"/\",file_system_type=\"ext4\"";
    assert!(!text.contains(&format!("kubevirt_vmi_filesystem_used_bytes{{{root}}}")), "{text}");
    assert!(text.contains(&format!("kubevirt_vmi_filesystem_capacity_bytes{{{root}}} 1000")), "{text}");
    assert!(text.contains("mount_point=\"/data\",file_system_type=\"xfs\"} 100"), "{text}");
    assert!(
        text.contains(&rejected_line("a", "kubevirt_vmi_filesystem_used_bytes", "used_over_capacity", 1)),
        "{text}"
    );
    // `/debug`: the raw value, the bound, the mount point.
    let shown = serde_json::to_value(&q.rejected).expect("serialises");
    let last = &shown["last"][0];
    assert_eq!(
        (&last["raw"], &last["bound"], &last["item"]),
        (&serde_json::json!(2000), &serde_json::json!(1000.0), &serde_json::json!("/"))
    );
    assert_eq!(last["reason"], "used_over_capacity");
}

#[test]
fn reject_negative_load_withholds_that_average_only() {
    let q = guest_after(&[("guest-get-load", serde_json::json!({"load1": -0.5, "load5": 0.25, "load15": 0.125}))]);
    let text = scrape_guest(q);
    let vm = "{namespace=\"ns\",name=\"a\",node=\"node-1\"}";
    assert!(!text.contains(&format!("kubevirt_vmi_guest_load_1m{vm}")), "{text}");
    assert!(text.contains(&format!("kubevirt_vmi_guest_load_5m{vm} 0.25")), "{text}");
    assert!(text.contains(&format!("kubevirt_vmi_guest_load_15m{vm} 0.125")), "{text}");
    assert!(text.contains(&rejected_line("a", "kubevirt_vmi_guest_load_1m", "negative", 1)), "{text}");
}

#[test]
fn reject_not_finite_load_and_a_negative_filesystem_size() {
    // JSON has no NaN: an agent that prints one sends a string (or the reply is not JSON at all).
    let q = guest_after(&[
        ("guest-get-load", serde_json::json!({"load1": 1.0, "load5": "NaN", "load15": "inf"})),
        (
            "guest-get-fsinfo",
            serde_json::json!([{"name": "vda1", "mountpoint": "/", "type": "ext4", "disk": [], "total-bytes": -4096, "used-bytes": 10}]),
        ),
    ]);
    let text = scrape_guest(q.clone());
    let vm = "{namespace=\"ns\",name=\"a\",node=\"node-1\"}";
    assert!(text.contains(&format!("kubevirt_vmi_guest_load_1m{vm} 1")), "{text}");
    assert!(!text.contains("kubevirt_vmi_guest_load_5m{") && !text.contains("kubevirt_vmi_guest_load_15m{"), "{text}");
    assert!(text.contains(&rejected_line("a", "kubevirt_vmi_guest_load_5m", "not_finite", 1)), "{text}");
    assert!(text.contains(&rejected_line("a", "kubevirt_vmi_guest_load_15m", "not_finite", 1)), "{text}");
    // A negative capacity is withheld; used stays (there is no capacity to compare it with).
    assert!(!text.contains("kubevirt_vmi_filesystem_capacity_bytes{"), "{text}");
    assert!(
        text.contains("kubevirt_vmi_filesystem_used_bytes{") && text.contains("file_system_type=\"ext4\"} 10"),
        "{text}"
    );
    assert!(text.contains(&rejected_line("a", "kubevirt_vmi_filesystem_capacity_bytes", "negative", 1)), "{text}");
    let shown = serde_json::to_value(&q.rejected).expect("serialises");
    assert!(shown["last"].as_array().is_some_and(|l| l.iter().any(|r| r["raw"] == "NaN")), "{shown}");
}

#[test]
fn reject_over_range_vcpus_and_a_wrapped_negative_used_size() {
    let cpus: Vec<serde_json::Value> =
        (0..5000).map(|i| serde_json::json!({"logical-id": i, "online": i < 2, "can-offline": true})).collect();
    let q = guest_after(&[
        ("guest-get-vcpus", serde_json::Value::Array(cpus)),
        // -1 went through a u64: 2^64 - 1.
        (
            "guest-get-fsinfo",
            serde_json::json!([{"name": "vda1", "mountpoint": "/", "type": "ext4", "disk": [], "total-bytes": 1000, "used-bytes": u64::MAX}]),
        ),
    ]);
    let text = scrape_guest(q);
    let vm = "{namespace=\"ns\",name=\"a\",node=\"node-1\"}";
    assert!(!text.contains("kubevirt_vmi_guest_vcpus{"), "{text}");
    assert!(text.contains(&format!("kubevirt_vmi_guest_vcpus_online{vm} 2")), "{text}");
    assert!(text.contains(&rejected_line("a", "kubevirt_vmi_guest_vcpus", "over_range", 1)), "{text}");
    assert!(text.contains(&rejected_line("a", "kubevirt_vmi_filesystem_used_bytes", "over_range", 1)), "{text}");
    assert!(text.contains("kubevirt_vmi_filesystem_capacity_bytes{"), "{text}");
}

/// Memory statistics as libvirt returned them from the lab guest (128 MiB, tags as
/// `virDomainMemoryStats` numbers them), with `over` replacing some.
fn recorded_memory(over: &[(u32, u64)]) -> LibvirtSample {
    let mut params = rich_params();
    for (k, v) in [("balloon.current", 131_072), ("balloon.maximum", 131_072)] {
        params.retain(|(p, _)| p != k);
        params.push((k.to_owned(), ParamValue::UInt(v)));
    }
    let mut tags: BTreeMap<u32, u64> = [
        (0, 0),
        (1, 0),
        (2, 263),
        (3, 40_113),
        (4, 83_500),
        (5, 116_468),
        (6, 131_072),
        (7, 171_232),
        (8, 88_412),
        (10, 6_008),
    ]
    .into_iter()
    .collect();
    tags.extend(over.iter().copied());
    LibvirtSample::new(params, tags.into_iter().collect())
}

/// Each poll's sample through one VM's plausibility check, as the poller runs it.
fn checked(p: &mut crate::source::libvirt::memstats::Plausibility, mut s: LibvirtSample) -> LibvirtSample {
    p.check(&mut s.parsed.memory, s.parsed.cpu_time_ns);
    s.rejected = p.rejected.clone();
    s
}

fn scrape_libvirt(vms: Vec<(&str, LibvirtSample)>) -> String {
    let now = crate::clock::now_unix();
    scrape(store_with(vms.into_iter().map(|(n, s)| (n, source(Some(s), Some(now)))).collect()))
}

#[test]
fn reject_over_domain_memory_and_an_over_range_figure_the_host_figures_and_other_vms_stay() {
    let mut p = crate::source::libvirt::memstats::Plausibility::default();
    // available above the domain's 128 MiB; unused 1.8e19 bytes (incus#1686) in KiB.
    let bad = checked(&mut p, recorded_memory(&[(5, 140_000), (4, 17_578_125_000_000_000)]));
    let good = checked(&mut crate::source::libvirt::memstats::Plausibility::default(), recorded_memory(&[]));
    let text = scrape_libvirt(vec![("a", bad), ("b", good)]);
    let a = "{namespace=\"ns\",name=\"a\",node=\"node-1\"}";
    let b = "{namespace=\"ns\",name=\"b\",node=\"node-1\"}";
    for gone in ["kubevirt_vmi_memory_available_bytes", "kubevirt_vmi_memory_unused_bytes"] {
        assert!(!text.contains(&format!("{gone}{a}")), "{gone}:\n{text}");
        assert!(text.contains(&format!("{gone}{b}")), "{gone} of b:\n{text}");
    }
    assert!(text.contains(&format!("kubevirt_vmi_memory_usable_bytes{a} {}", 88_412 * 1024)), "{text}");
    assert!(text.contains(&format!("kubevirt_vmi_memory_actual_balloon_bytes{a} {}", 131_072 * 1024)), "{text}");
    assert!(
        text.contains(&rejected_line("a", "kubevirt_vmi_memory_available_bytes", "over_domain_memory", 1)),
        "{text}"
    );
    assert!(text.contains(&rejected_line("a", "kubevirt_vmi_memory_unused_bytes", "over_range", 1)), "{text}");
    assert!(!text.contains("vmbridge_guest_values_rejected_total{namespace=\"ns\",name=\"b\""), "{text}");
    // The raw value as libvirt gave it (KiB), the value and bound in bytes.
    let shown = serde_json::to_value(&p.rejected).expect("serialises");
    let r = shown["last"].as_array().and_then(|l| l.iter().find(|r| r["reason"] == "over_domain_memory").cloned());
    let r = r.expect("shown");
    assert_eq!(
        (&r["raw"], &r["value"], &r["bound"]),
        (&serde_json::json!(140_000), &serde_json::json!(143_360_000.0), &serde_json::json!(134_217_728.0))
    );
}

#[test]
fn reject_counter_backwards_unless_the_guest_rebooted_or_qemu_restarted() {
    use crate::source::libvirt::memstats::Plausibility;
    let mut p = Plausibility::default();
    let with_cpu = |mut s: LibvirtSample, ns: u64| {
        s.parsed.cpu_time_ns = Some(ns);
        s
    };
    let first = checked(&mut p, with_cpu(recorded_memory(&[(1, 64), (2, 263), (3, 40_113)]), 10));
    assert!(first.rejected.counts.is_empty());
    // Major faults go back while minor faults and swap-out go on: impossible.
    let s = checked(&mut p, with_cpu(recorded_memory(&[(1, 64), (2, 100), (3, 41_000)]), 20));
    let text = scrape_libvirt(vec![("a", s)]);
    let a = "{namespace=\"ns\",name=\"a\",node=\"node-1\"}";
    assert!(!text.contains(&format!("kubevirt_vmi_memory_pgmajfault_total{a}")), "{text}");
    assert!(text.contains(&format!("kubevirt_vmi_memory_pgminfault_total{a} 41000")), "{text}");
    assert!(
        text.contains(&rejected_line("a", "kubevirt_vmi_memory_pgmajfault_total", "counter_backwards", 1)),
        "{text}"
    );
    // Still below the last accepted 263: withheld again, counted again (monotonic).
    let s = checked(&mut p, with_cpu(recorded_memory(&[(1, 64), (2, 200), (3, 42_000)]), 30));
    let text = scrape_libvirt(vec![("a", s)]);
    assert!(
        text.contains(&rejected_line("a", "kubevirt_vmi_memory_pgmajfault_total", "counter_backwards", 2)),
        "{text}"
    );
    // Past it: exported again.
    let s = checked(&mut p, with_cpu(recorded_memory(&[(1, 64), (2, 300), (3, 43_000)]), 40));
    assert_eq!(s.parsed.memory.major_fault, Some(300));
    // The guest rebooted: every counter above zero went back at once. Accepted, counted no more.
    let s = checked(&mut p, with_cpu(recorded_memory(&[(1, 0), (2, 5), (3, 900)]), 50));
    assert_eq!(
        (s.parsed.memory.swap_out_kib, s.parsed.memory.major_fault, s.parsed.memory.minor_fault),
        (Some(0), Some(5), Some(900))
    );
    assert_eq!(
        p.rejected.count("kubevirt_vmi_memory_pgmajfault_total", crate::source::reject::Reason::CounterBackwards),
        2
    );
    // QEMU restarted (its CPU time went back): one counter going back alone is accepted too.
    let s = checked(&mut p, with_cpu(recorded_memory(&[(1, 0), (2, 1), (3, 2_000)]), 5));
    assert_eq!(s.parsed.memory.major_fault, Some(1));
    assert_eq!(p.rejected.counts.values().flat_map(|r| r.values()).sum::<u64>(), 2);
}
