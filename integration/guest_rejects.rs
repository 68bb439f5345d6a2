//! Impossible guest values end to end (issue 25 point 3): a scripted agent reports a
//! filesystem whose used bytes exceed its capacity and a negative load average. vmbridge
//! withholds exactly those values, counts them in `vmbridge_guest_values_rejected_total`,
//! shows them raw in `/debug`, keeps the VM's guest source up (a rejection is not a poll
//! failure), and another VM's agent is unaffected. Lab-free: two scripted agents on sockets.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive a real vmbridge process

mod common;

use std::path::Path;
use std::time::Duration;

use common::agents::*;
use common::*;
use serde_json::Value;

const REJECTED: &str = "vmbridge_guest_values_rejected_total";

#[test]
fn impossible_guest_values_are_withheld_counted_and_shown_raw_and_the_source_stays_up() {
    let _watchdog = common::watchdog();
    let dir = scratch("rejects");
    let (liar, honest) = (dir.join("liar.sock"), dir.join("honest.sock"));
    let _liar = hostile_agent(liar.clone(), Misbehaviour::Impossible);
    let _honest = hostile_agent(honest.clone(), Misbehaviour::Healthy);
    let vms: Vec<(&str, &str, &Path)> = vec![("qga", "liar", &liar), ("qga", "honest", &honest)];
    let bridge = Bridge::start_without_libvirt(&["--config", qga_config(&dir, &[], &vms, "").to_str().expect("utf-8")]);
    let rejected = |e: &Exposition, vm: &str, family: &str, reason: &str| {
        e.value(REJECTED, &[("name", vm), ("family", family), ("reason", reason)])
    };
    // Polled every second: wait until each rejection happened at least twice (counted per reply).
    let (e, took) = bridge.wait_for(Duration::from_secs(30), "both rejections counted twice", |e| {
        rejected(e, "liar", "kubevirt_vmi_filesystem_used_bytes", "used_over_capacity") >= Some(2.0)
            && rejected(e, "liar", "kubevirt_vmi_guest_load_1m", "negative") >= Some(2.0)
    });
    eprintln!("rejections counted twice after {took:?}");
    for line in e.text.lines().filter(|l| l.starts_with(REJECTED)) {
        eprintln!("{line}");
    }

    // Exactly the impossible values are withheld; the rest of each reply stays.
    let root = [("name", "liar"), ("mount_point", "/")];
    assert!(e.find("kubevirt_vmi_filesystem_used_bytes", &root).is_empty(), "{}", e.text);
    assert_eq!(e.value("kubevirt_vmi_filesystem_capacity_bytes", &root), Some(1000.0));
    assert_eq!(
        e.value("kubevirt_vmi_filesystem_used_bytes", &[("name", "liar"), ("mount_point", "/data")]),
        Some(100.0)
    );
    assert_eq!(e.value("kubevirt_vmi_guest_load_1m", &[("name", "liar")]), None, "{}", e.text);
    assert_eq!(e.value("kubevirt_vmi_guest_load_5m", &[("name", "liar")]), Some(0.25));
    assert_eq!(e.value("kubevirt_vmi_guest_load_15m", &[("name", "liar")]), Some(0.125));
    // Only the pairs that occurred have a series, with the fixed label values.
    let liar_series = e.find(REJECTED, &[("name", "liar")]);
    assert_eq!(liar_series.len(), 2, "{}", e.text);
    assert!(liar_series.iter().all(|s| s.labels["namespace"] == "qga" && s.labels.contains_key("node")));

    // A rejection is not a poll failure: the source is up, its breaker closed, no errors.
    let up = |e: &Exposition, vm: &str| e.value("vmbridge_source_up", &[("name", vm), ("source", "qga")]);
    assert_eq!(up(&e, "liar"), Some(1.0));
    assert_eq!(
        e.value("vmbridge_breaker_state", &[("name", "liar"), ("source", "qga"), ("state", "closed")]),
        Some(1.0)
    );
    assert!(e.find("vmbridge_source_errors_total", &[("name", "liar"), ("source", "qga")]).is_empty(), "{}", e.text);

    // The other VM is unaffected: all its values, no rejection series.
    assert_eq!(up(&e, "honest"), Some(1.0));
    assert_eq!(e.value("kubevirt_vmi_filesystem_used_bytes", &[("name", "honest"), ("mount_point", "/")]), Some(10.0));
    assert!(e.find(REJECTED, &[("name", "honest")]).is_empty(), "{}", e.text);

    // `/debug` shows the raw values, when, and the bound each broke.
    let doc: Value = serde_json::from_str(&bridge.get("/debug/vms/qga/liar", None).body).expect("json");
    let last = doc["sources"]["qga"]["sample"]["rejected"]["last"].as_array().cloned().unwrap_or_default();
    let find = |reason: &str| last.iter().find(|r| r["reason"] == reason).cloned().unwrap_or_else(|| panic!("{doc}"));
    let used = find("used_over_capacity");
    assert_eq!(
        (&used["raw"], &used["bound"], &used["item"]),
        (&Value::from(2000), &Value::from(1000.0), &Value::from("/"))
    );
    assert_eq!(used["family"], "kubevirt_vmi_filesystem_used_bytes");
    assert!(used["at"].as_f64().is_some_and(|t| t > 1.7e9), "{used}");
    let load = find("negative");
    assert_eq!(
        (&load["raw"], &load["bound"], &load["family"]),
        (&Value::from(-0.5), &Value::from(0.0), &Value::from("kubevirt_vmi_guest_load_1m"))
    );
    eprintln!("/debug: {}", serde_json::to_string(&Value::Array(last.clone())).expect("json"));
    // One entry per family, reason and item however often it happened.
    assert_eq!(last.len(), 2, "{last:?}");
    let counts = &doc["sources"]["qga"]["sample"]["rejected"]["counts"];
    assert!(counts["kubevirt_vmi_guest_load_1m"]["negative"].as_u64() >= Some(2), "{counts}");

    // Counted since discovery: never decreasing across scrapes.
    let before = rejected(&e, "liar", "kubevirt_vmi_guest_load_1m", "negative").expect("counted");
    let (after, _) = bridge.wait_for(Duration::from_secs(10), "the next rejection", |e| {
        rejected(e, "liar", "kubevirt_vmi_guest_load_1m", "negative") > Some(before)
    });
    assert_eq!(up(&after, "liar"), Some(1.0));
}
