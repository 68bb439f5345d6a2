//! Scripted QMP monitors for what a real QEMU cannot be made to do: floods of megabyte events
//! before every reply, a new virtio-serial port id in every event, and label values kilobytes
//! long. A well-behaved monitor beside them stays fresh. vmbridge's memory stays bounded. The
//! flooding one fails its polls on the byte budget, and port lookups are bounded per poll.
//! Labels are capped at 128 bytes.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge)

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Honest,
    /// 40 events of 1 MB before every reply.
    Flood,
    /// 50 `VSERPORT_CHANGE` events with ids never seen before, before every reply.
    NewPorts,
    /// Drive names and stat names of 10 kB.
    HugeLabels,
    /// 8 MiB of events carrying small values (`[0,0,…]`) before every reply: they grow
    /// sixteenfold when parsed, unlike the long strings of `Flood`.
    SmallValues,
}

/// Serves QMP on `path` in `mode`; counts the `qom-get` commands it receives.
fn monitor(path: PathBuf, mode: Mode) -> Arc<AtomicU64> {
    let qom_gets = Arc::new(AtomicU64::new(0));
    let counter = qom_gets.clone();
    let listener = UnixListener::bind(&path).expect("bind");
    std::thread::spawn(move || {
        let mut port = 0u64;
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let counter = counter.clone();
            let mut port_base = port;
            port += 1_000_000;
            std::thread::spawn(move || {
                let mut out = conn.try_clone().expect("clone");
                let greeting = json!({"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 0}, "package": ""}, "capabilities": []}});
                if writeln!(out, "{greeting}").is_err() {
                    return;
                }
                let long = "d".repeat(10_000);
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    let Ok(cmd) = serde_json::from_str::<Value>(&line) else { return };
                    let (name, id) = (cmd["execute"].as_str().unwrap_or_default().to_owned(), cmd["id"].clone());
                    if name == "qom-get" {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut pre = String::new();
                    match mode {
                        Mode::Flood => {
                            let pad = "x".repeat(1_000_000);
                            for _ in 0..40 {
                                pre.push_str(&json!({"event": "FLOOD", "data": {"pad": pad}}).to_string());
                                pre.push('\n');
                            }
                        }
                        Mode::NewPorts => {
                            for _ in 0..50 {
                                port_base += 1;
                                let ev = json!({"event": "VSERPORT_CHANGE", "data": {"id": format!("channel{port_base}"), "open": true}});
                                pre.push_str(&ev.to_string());
                                pre.push('\n');
                            }
                        }
                        Mode::HugeLabels => {
                            let ev = json!({"event": "BLOCK_IO_ERROR", "data": {"device": long, "operation": "read"}});
                            pre.push_str(&ev.to_string());
                            pre.push('\n');
                        }
                        Mode::SmallValues => {
                            let ev = json!({"event": "SMALL", "data": {"v": vec![0; 2000]}}).to_string();
                            while pre.len() < 8 << 20 {
                                pre.push_str(&ev);
                                pre.push('\n');
                            }
                        }
                        Mode::Honest => {}
                    }
                    let ret = match (name.as_str(), mode) {
                        ("query-status", _) => json!({"status": "running", "running": true}),
                        ("query-blockstats", Mode::HugeLabels) => {
                            json!([{"device": long, "stats": {"failed_rd_operations": 1}}])
                        }
                        ("query-blockstats", _) => json!([{"device": "drive0", "stats": {"failed_rd_operations": 1}}]),
                        ("query-stats", Mode::HugeLabels) => {
                            json!([{"provider": long, "stats": [{"name": long, "value": 1}]}])
                        }
                        ("query-stats", _) => json!([{"provider": "kvm", "stats": [{"name": "exits", "value": 7}]}]),
                        ("qom-get", _) => json!("not-the-agent"),
                        _ => json!({}),
                    };
                    let reply = json!({"return": ret, "id": id});
                    if out.write_all(pre.as_bytes()).is_err() || writeln!(out, "{reply}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    qom_gets
}

fn config(dir: &Path, vms: &[(&str, &Path)]) -> PathBuf {
    let mut toml = String::from(
        "health_detail = true\n[libvirt]\nuris = []\n[poll]\ninterval = \"1s\"\ntimeout = \"3s\"\n[breaker]\nbackoff_min = \"500ms\"\nbackoff_max = \"2s\"\n",
    );
    for (name, sock) in vms {
        toml.push_str(&format!(
            "[[vms]]\nnamespace = \"qmp\"\nname = \"{name}\"\nqmp_socket = \"{}\"\n",
            sock.display()
        ));
    }
    let cfg = dir.join("vmbridge.toml");
    std::fs::write(&cfg, toml).expect("config");
    cfg
}

#[test]
fn hostile_monitors_are_bounded_and_the_honest_one_stays_fresh() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("vmbridge-hostile-qmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let socks: Vec<(&str, PathBuf, Mode)> = vec![
        ("honest", dir.join("honest.qmp"), Mode::Honest),
        ("flood", dir.join("flood.qmp"), Mode::Flood),
        ("ports", dir.join("ports.qmp"), Mode::NewPorts),
        ("labels", dir.join("labels.qmp"), Mode::HugeLabels),
    ];
    let mut qom = std::collections::BTreeMap::new();
    for (name, path, mode) in &socks {
        qom.insert(*name, monitor(path.clone(), *mode));
    }
    let vms: Vec<(&str, &Path)> = socks.iter().map(|(n, p, _)| (*n, p.as_path())).collect();
    let bridge = Bridge::start_without_libvirt(&["--config", config(&dir, &vms).to_str().unwrap()]);
    let up = |e: &Exposition, name: &str| e.value("vmbridge_source_up", &[("name", name), ("source", "qmp")]);
    bridge.wait_for(Duration::from_secs(20), "the honest and the label monitors up", |e| {
        up(e, "honest") == Some(1.0) && up(e, "labels") == Some(1.0) && up(e, "ports") == Some(1.0)
    });
    // Twenty seconds of floods.
    let mut peak = 0;
    let mut polls_seen = 0.0;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_secs(1));
        peak = peak.max(rss_bytes(bridge.pid()));
        let e = bridge.metrics();
        assert_eq!(up(&e, "honest"), Some(1.0), "the honest monitor's VM went stale beside the hostile ones");
        polls_seen = e.value("vmbridge_source_polls_total", &[("name", "ports"), ("source", "qmp")]).unwrap_or(0.0);
    }
    let e = bridge.metrics();
    // The flood fails its polls on the byte budget: a protocol error each time, never memory.
    assert_eq!(up(&e, "flood"), Some(0.0));
    let protocol =
        e.value("vmbridge_source_errors_total", &[("name", "flood"), ("source", "qmp"), ("kind", "protocol")]);
    assert!(protocol.is_some_and(|n| n >= 3.0), "flood: protocol errors {protocol:?}");
    let doc = bridge.get("/debug/vms/qmp/flood", None).body;
    assert!(doc.contains("bytes in one poll"), "the budget is named in the last error: {doc}");
    assert!(peak < 100 << 20, "RSS peaked at {} MiB", peak >> 20);
    // 50 new port ids per command, but at most 4 lookups per poll.
    let lookups = qom["ports"].load(Ordering::Relaxed) as f64;
    assert!(polls_seen >= 10.0, "only {polls_seen} polls of the port-inventing monitor");
    // Each poll also reads the balloon's guest-stats with one qom-get.
    assert!(lookups <= (polls_seen + 2.0) * 5.0, "{lookups} qom-get commands in {polls_seen} polls");
    // Every label value from the monitors is capped.
    for line in e.text.lines().filter(|l| l.contains("name=\"labels\"")) {
        for part in line.split("=\"").skip(1) {
            let value = part.split('"').next().unwrap_or_default();
            assert!(value.len() <= 128, "a {}-byte label value: {}", value.len(), &line[..200.min(line.len())]);
        }
    }
    assert!(e.text.contains("kubevirt_vmi_block_io_errors_total{namespace=\"qmp\",name=\"labels\""), "{}", e.text);
    eprintln!(
        "RSS peak {} MiB; {lookups} qom-get in {polls_seen} polls; flood protocol errors {protocol:?}",
        peak >> 20
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// 8 MiB of small-value events before every reply (before: a 156-189 MB peak from one such
/// monitor, as the events' parsed size was not counted). The poll budget counts what each
/// event takes once parsed, so the poll fails early and memory stays low.
#[test]
fn a_flood_of_small_value_events_is_bounded_by_the_poll_budget() {
    let _serial = serial();
    let dir = common::agents::scratch("hostile-qmp-small");
    let (honest, small) = (dir.join("honest.qmp"), dir.join("small.qmp"));
    monitor(honest.clone(), Mode::Honest);
    monitor(small.clone(), Mode::SmallValues);
    let bridge = Bridge::start_without_libvirt(&[
        "--config",
        config(&dir, &[("honest", &honest), ("small", &small)]).to_str().unwrap(),
    ]);
    let up = |e: &Exposition, name: &str| e.value("vmbridge_source_up", &[("name", name), ("source", "qmp")]);
    let protocol = |e: &Exposition| {
        e.value("vmbridge_source_errors_total", &[("name", "small"), ("source", "qmp"), ("kind", "protocol")])
            .unwrap_or(0.0)
    };
    let (e, _) = bridge.wait_for(Duration::from_secs(60), "the small-value flood refused 5 times", |e| {
        up(e, "honest") == Some(1.0) && protocol(e) >= 5.0
    });
    assert_eq!(up(&e, "small"), Some(0.0));
    let doc = bridge.get("/debug/vms/qmp/small", None).body;
    assert!(doc.contains("bytes in one poll (read and parsed)"), "the budget is named in the last error: {doc}");
    let peak = peak_rss_bytes(bridge.pid());
    eprintln!("peak RSS {} MiB with a monitor sending 8 MiB of small-value events per command", peak >> 20);
    assert!(peak < 64 << 20, "RSS peaked at {} MiB", peak >> 20);
    let _ = std::fs::remove_dir_all(&dir);
}
