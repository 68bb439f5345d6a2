//! The QMP source against the lab's real QEMU domains, through each domain's second `-qmp`
//! monitor (`lab.sh` adds it with `<qemu:commandline>`): values equal the monitor's own answers (asked through libvirt's
//! monitor, for comparison only), events are counted exactly, a real job's statistics appear
//! and, with --keep-ephemeral, stay; a SIGSTOPped QEMU opens its qmp and libvirt breakers only.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, virsh, lab.sh)

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const QMP_PATTERN: &str = "/var/lib/vmbridge-lab/{domain}.qmp";

fn monitor(dom: &str, cmd: &str) -> Value {
    let out = virsh(&["qemu-monitor-command", dom, &format!("{{\"execute\":\"{cmd}\"}}")]);
    serde_json::from_str::<Value>(&out).expect("json")["return"].clone()
}

#[test]
fn qmp_values_events_and_jobs_on_a_real_domain() {
    let _serial = serial();
    let dom = Domain::new("itq-a");
    let other = Domain::new("itq-b");
    let bridge = Bridge::start(&["--poll-interval", "1s", "--qmp-socket", QMP_PATTERN, "--keep-ephemeral", "--no-qga"]);
    let vm = [("name", "itq-a")];
    let (e, _) = bridge.wait_for(Duration::from_secs(20), "qmp data", |e| {
        e.value("vmbridge_source_up", &[("name", "itq-a"), ("source", "qmp")]) == Some(1.0)
            && e.value("vmbridge_source_up", &[("name", "itq-b"), ("source", "qmp")]) == Some(1.0)
    });
    // Run state and block counters equal the monitor's own answer.
    let status = monitor(&dom.name, "query-status")["status"].as_str().expect("status").to_owned();
    assert_eq!(e.value("kubevirt_vmi_qemu_status", &[("name", "itq-a"), ("status", &status)]), Some(1.0));
    let blocks = monitor(&dom.name, "query-blockstats");
    let mut compared = 0;
    for b in blocks.as_array().expect("list") {
        let id = b["device"].as_str().filter(|d| !d.is_empty()).or(b["qdev"].as_str()).expect("drive id");
        // QEMU names the lab's disk by its libvirt alias (its QOM path holds `ua-rootdisk`); the
        // label is KubeVirt's, as on the libvirt families: the alias without `ua-`.
        assert!(id.contains("ua-rootdisk"), "QEMU's id of the lab disk: {id}");
        let drive = "rootdisk";
        for (metric, key) in [
            ("kubevirt_vmi_storage_failed_read_operations_total", "failed_rd_operations"),
            ("kubevirt_vmi_storage_invalid_write_operations_total", "invalid_wr_operations"),
            ("kubevirt_vmi_storage_unmap_operations_total", "unmap_operations"),
            ("kubevirt_vmi_storage_merged_read_operations_total", "rd_merged"),
        ] {
            let want = b["stats"][key].as_f64().expect("stat");
            assert_eq!(e.value(metric, &[("name", "itq-a"), ("drive", drive)]), Some(want), "{metric} {drive}");
            compared += 1;
        }
    }
    assert!(compared >= 4);
    // No migration yet: no migration series (ephemeral), and every event counter starts at 0.
    assert_eq!(e.value("kubevirt_vmi_migration_memory_processed_bytes", &vm), None);
    assert_eq!(e.value("kubevirt_vmi_reboots_total", &[("name", "itq-a"), ("initiator", "host")]), Some(0.0));

    // Events: exactly one pause, one resume, two host resets. The firmware's own RESET that
    // follows each `virsh reset` (~0.1 s later, guest=true) is part of the same reboot, so no
    // guest reboot is counted. A power-button request the guest ignores (SeaBIOS does) is no
    // state change: the VM keeps running.
    virsh(&["suspend", &dom.name]);
    virsh(&["resume", &dom.name]);
    virsh(&["reset", &dom.name]);
    virsh(&["reset", &dom.name]);
    virsh(&["shutdown", "--mode", "acpi", &dom.name]);
    let (_, _) = bridge.wait_for(Duration::from_secs(10), "events counted", |e| {
        e.value("kubevirt_vmi_reboots_total", &[("name", "itq-a"), ("initiator", "host")]) == Some(2.0)
    });
    // Any late follow-up RESET would have arrived by now.
    std::thread::sleep(Duration::from_secs(3));
    let e = bridge.metrics();
    let doc: Value = serde_json::from_str(&bridge.get("/debug/vms/default/itq-a", None).body).expect("json");
    let events = &doc["sources"]["qmp"]["sample"]["recent_events"];
    let count = |name: &str| events.as_array().map_or(0, |ev| ev.iter().filter(|x| x["event"] == name).count());
    assert!(count("POWERDOWN") >= 1, "QEMU reported the power-button request: {events}");
    assert!(count("RESET") >= 2, "{events}");
    assert_eq!(e.value("kubevirt_vmi_reboots_total", &[("name", "itq-a"), ("initiator", "host")]), Some(2.0));
    assert_eq!(
        e.value("kubevirt_vmi_reboots_total", &[("name", "itq-a"), ("initiator", "guest")]),
        Some(0.0),
        "the firmware's RESET after a host reset is the same reboot: {events}"
    );
    assert_eq!(e.value("kubevirt_vmi_state_changes_total", &[("name", "itq-a"), ("to", "paused")]), Some(1.0));
    assert_eq!(e.value("kubevirt_vmi_state_changes_total", &[("name", "itq-a"), ("to", "running")]), Some(1.0));
    assert_eq!(
        e.value("kubevirt_vmi_state_changes_total", &[("name", "itq-a"), ("to", "shutdown")]),
        Some(0.0),
        "POWERDOWN is a request, not a state change"
    );
    assert_eq!(virsh(&["domstate", &dom.name]).trim(), "running");
    assert_eq!(
        e.value("kubevirt_vmi_reboots_total", &[("name", "itq-b"), ("initiator", "host")]),
        Some(0.0),
        "other VM untouched"
    );

    // A real job: a live memory dump is a migration to a file.
    let dump = std::env::temp_dir().join(format!("vmbridge-itq-{}.dump", std::process::id()));
    virsh(&["dump", "--live", &dom.name, dump.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&dump);
    let (e, _) = bridge.wait_for(Duration::from_secs(10), "the job's statistics", |e| {
        e.value("kubevirt_vmi_migration_memory_processed_bytes", &vm).is_some_and(|v| v > 0.0)
    });
    let last = e.value("kubevirt_vmi_migration_last_completed_timestamp_seconds", &vm).expect("completion time kept");
    let raw = monitor(&dom.name, "query-migrate");
    assert_eq!(raw["status"], "completed");
    assert_eq!(e.value("kubevirt_vmi_migration_memory_processed_bytes", &vm), raw["ram"]["transferred"].as_f64());
    assert_eq!(e.value("kubevirt_vmi_migration_memory_total_bytes", &vm), raw["ram"]["total"].as_f64());
    std::thread::sleep(Duration::from_secs(2));
    let e = bridge.metrics();
    assert_eq!(
        e.value("kubevirt_vmi_migration_last_completed_timestamp_seconds", &vm),
        Some(last),
        "a completion is noted once"
    );
    let doc: Value = serde_json::from_str(&bridge.get("/debug/vms/default/itq-a", None).body).expect("json");
    let q = &doc["sources"]["qmp"]["sample"];
    assert!(q["recent_events"].as_array().is_some_and(|ev| ev.iter().any(|x| x["event"] == "RESET")), "{q}");
    assert!(
        q["qemu_version"]
            .as_str()
            .is_some_and(|v| v.starts_with('7') || v.starts_with('8') || v.starts_with('9') || v.starts_with("10"))
    );

    // Without a QMP socket, the same job comes from libvirt's job stats.
    let plain = Bridge::start(&["--poll-interval", "1s", "--keep-ephemeral", "--no-qga"]);
    let (e, _) = plain.wait_for(Duration::from_secs(10), "libvirt job stats", |e| {
        e.value("kubevirt_vmi_migration_memory_processed_bytes", &vm).is_some_and(|v| v > 0.0)
    });
    assert!(e.value("kubevirt_vmi_migration_elapsed_seconds", &vm).is_some());
    drop(plain);

    // A SIGSTOPped QEMU: its qmp and libvirt breakers open; the other VM stays up on both.
    dom.stop();
    let (_, took) = bridge.wait_for(Duration::from_secs(20), "both breakers open", |e| {
        ["qmp", "libvirt"].iter().all(|s| {
            e.value("vmbridge_breaker_state", &[("name", "itq-a"), ("source", s), ("state", "open")]) == Some(1.0)
        }) && ["qmp", "libvirt"]
            .iter()
            .all(|s| e.value("vmbridge_source_up", &[("name", "itq-b"), ("source", s)]) == Some(1.0))
    });
    eprintln!("qmp+libvirt breakers open {took:?} after SIGSTOP");
    dom.cont();
    bridge.wait_for(Duration::from_secs(15), "recovery", |e| {
        ["qmp", "libvirt"]
            .iter()
            .all(|s| e.value("vmbridge_source_up", &[("name", "itq-a"), ("source", s)]) == Some(1.0))
    });
    drop(other);
}

/// Without a QMP socket, events come from libvirt's domain event API: exactly one pause and
/// one resume, and the resets (libvirt's REBOOT event does not say who initiated them).
#[test]
fn libvirt_domain_events_are_counted_without_a_qmp_socket() {
    let _serial = serial();
    let dom = Domain::new("itq-ev");
    let bridge = Bridge::start(&["--poll-interval", "1s", "--no-qga"]);
    let vm = [("name", "itq-ev")];
    bridge.wait_for(Duration::from_secs(20), "the VM", |e| {
        e.value("kubevirt_vmi_reboots_total", &[("name", "itq-ev"), ("initiator", "unknown")]) == Some(0.0)
    });
    virsh(&["suspend", &dom.name]);
    virsh(&["resume", &dom.name]);
    // libvirt relays the firmware's follow-up RESET as a second REBOOT; one reset is one reboot.
    // (libvirt does not say who reset, so resets less than 1 s apart count once: space them.)
    let reboots =
        |e: &Exposition| e.value("kubevirt_vmi_reboots_total", &[("name", "itq-ev"), ("initiator", "unknown")]);
    virsh(&["reset", &dom.name]);
    bridge.wait_for(Duration::from_secs(10), "the first reset", |e| reboots(e) == Some(1.0));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(reboots(&bridge.metrics()), Some(1.0), "one reset, one reboot");
    virsh(&["reset", &dom.name]);
    virsh(&["shutdown", "--mode", "acpi", &dom.name]);
    bridge.wait_for(Duration::from_secs(10), "events counted", |e| {
        reboots(e) == Some(2.0)
            && e.value("kubevirt_vmi_state_changes_total", &[("name", "itq-ev"), ("to", "running")]) == Some(1.0)
    });
    std::thread::sleep(Duration::from_secs(2));
    let e = bridge.metrics();
    assert_eq!(reboots(&e), Some(2.0), "two resets, two reboots");
    assert_eq!(e.value("kubevirt_vmi_state_changes_total", &[("name", "itq-ev"), ("to", "paused")]), Some(1.0));
    assert_eq!(
        e.value("kubevirt_vmi_state_changes_total", &[("name", "itq-ev"), ("to", "shutdown")]),
        Some(0.0),
        "an ignored power-button request is no state change"
    );
    assert_eq!(virsh(&["domstate", &dom.name]).trim(), "running");
    let no_panic = [("name", "itq-ev"), ("type", "unknown"), ("bugcheck_code", "unknown")];
    assert_eq!(e.value("kubevirt_vmi_guest_os_panic_total", &no_panic), Some(0.0));
    assert_eq!(e.value("kubevirt_vmi_qemu_status", &vm), None, "no QMP source without a socket");
}
