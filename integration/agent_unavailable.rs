//! A VM without a guest agent is a state, not an outage (issue 15): against a real lab domain
//! whose agent channel has no agent (`lab.sh add`: no guest OS), through both transports, the
//! guest source is down with error kind `agent_unavailable`, its breaker stays closed over
//! many back-off periods, the state is recorded once in `/debug`, and vmbridge logs it once.
//! A real guest whose agent connects later is polled at once, on libvirt's agent event.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, lab.sh)

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Short periods, so the test spans many of them: polls every 1 s, a breaker that would
/// re-probe every 1-2 s, and the agent re-checked every 2 s.
fn config(dir: &Path, info_period: &str) -> String {
    let cfg = dir.join("vmbridge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[poll]\ninterval = \"1s\"\n[breaker]\nbackoff_min = \"1s\"\nbackoff_max = \"2s\"\n\
             [qga]\ntimeout = \"2s\"\n[qga.periods]\ninfo = \"{info_period}\"\n"
        ),
    )
    .expect("config");
    cfg.to_str().expect("utf-8 path").to_owned()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vmbridge-noagent-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Log lines (JSON) about VM `ns`/`name` whose message contains `text` (other lab domains
/// may be running beside the test's).
fn lines_with(bridge: &Bridge, (ns, name): (&str, &str), text: &str) -> Vec<String> {
    let log = bridge.log.lock().unwrap_or_else(|e| e.into_inner());
    log.iter()
        .filter(|l| {
            let Ok(v) = serde_json::from_str::<Value>(l) else { return false };
            let f = &v["fields"];
            f["namespace"] == ns && f["name"] == name && f["message"].as_str().is_some_and(|m| m.contains(text))
        })
        .cloned()
        .collect()
}

/// Runs vmbridge against `dom` for ~15 s (7 or more re-checks, as many breaker back-offs) and
/// checks the whole "no agent" contract; `expect` is a part of the recorded message.
fn assert_agent_unavailable(dom: &Domain, extra: &[&str], expect: &str) {
    let dir = scratch(&dom.name);
    let cfg = config(&dir, "2s");
    let mut args = vec!["--config", cfg.as_str()];
    args.extend_from_slice(extra);
    let bridge = Bridge::start(&args);
    let (ns, name) = dom.name.split_once('_').expect("namespace_name");
    let vm = [("namespace", ns), ("name", name), ("source", "qga")];
    let unavailable = [("namespace", ns), ("name", name), ("source", "qga"), ("kind", "agent_unavailable")];
    bridge.wait_for(Duration::from_secs(30), "agent_unavailable counted", |e| {
        e.value("vmbridge_source_errors_total", &unavailable).is_some_and(|v| v >= 1.0)
    });
    let started = Instant::now();
    // Over 15 s: every scrape shows it down and closed, never open or half-open.
    while started.elapsed() < Duration::from_secs(15) {
        let e = bridge.metrics();
        assert_eq!(e.value("vmbridge_source_up", &vm), Some(0.0), "{}", e.text);
        // The default health budget exports the current state only.
        for (state, want) in [("closed", Some(1.0)), ("open", None), ("half_open", None)] {
            let labels = [("namespace", ns), ("name", name), ("source", "qga"), ("state", state)];
            assert_eq!(e.value("vmbridge_breaker_state", &labels), want, "{state}: {}", e.text);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let e = bridge.metrics();
    let n = e.value("vmbridge_source_errors_total", &unavailable).expect("counted");
    assert!(n >= 5.0, "re-checked every 2 s for 15 s, counted each time: {n}");
    let timeout = [("namespace", ns), ("name", name), ("source", "qga"), ("kind", "timeout")];
    // Only kinds that occurred have a series by default: no timeout series at all.
    assert_eq!(e.value("vmbridge_source_errors_total", &timeout), None, "not a timeout");
    let transitions: f64 = e.find("vmbridge_breaker_transitions_total", &vm).iter().map(|s| s.value).sum();
    assert_eq!(transitions, 0.0, "the breaker never moved: {}", e.text);
    // /debug: the state with its message, recorded once (not once per re-check).
    let r = bridge.get(&format!("/debug/vms/{ns}/{name}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("json");
    let qga = &v["sources"]["qga"];
    let errors = qga["last_errors"].as_array().expect("last_errors");
    assert_eq!(errors.len(), 1, "recorded once: {errors:?}");
    assert_eq!(errors[0]["kind"], "agent_unavailable");
    let message = errors[0]["message"].as_str().expect("message");
    assert!(message.contains(expect), "{message:?} should contain {expect:?}");
    assert_eq!(qga["breaker"]["state"], "closed");
    assert_eq!(qga["breaker"]["history"].as_array().map(Vec::len), Some(0));
    // The log: the state once, at info; no breaker transition of the guest source.
    let said = lines_with(&bridge, (ns, name), "source unavailable");
    assert_eq!(said.len(), 1, "logged once: {said:#?}");
    assert!(said[0].contains("\"level\":\"INFO\"") && said[0].contains(name), "{}", said[0]);
    let qga_transitions: Vec<String> = lines_with(&bridge, (ns, name), "breaker changed state")
        .into_iter()
        .filter(|l| l.contains("\"qga\""))
        .collect();
    assert!(qga_transitions.is_empty(), "{qga_transitions:#?}");
}

#[test]
fn through_libvirt_an_agentless_domain_is_agent_unavailable_closed_and_logged_once() {
    let _serial = serial();
    let dom = Domain::new("noagent_lv");
    assert_agent_unavailable(&dom, &[], "QEMU guest agent is not connected");
}

#[test]
fn a_direct_socket_that_does_not_exist_is_agent_unavailable() {
    let _serial = serial();
    let dom = Domain::new("noagent_missing");
    let dir = scratch("missing");
    let pattern = format!("{}/{{domain}}.absent.qga", dir.display());
    assert_agent_unavailable(&dom, &["--qga-socket", &pattern], "No such file or directory");
}

#[test]
fn a_direct_socket_nothing_listens_on_is_agent_unavailable() {
    let _serial = serial();
    let dom = Domain::new("noagent_refused");
    let dir = scratch("refused");
    // A socket file whose listener is gone: connect() is refused.
    let path = dir.join(format!("{}.qga", dom.name));
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(std::os::unix::net::UnixStream::connect(&path).is_err(), "nothing listens");
    let pattern = format!("{}/{{domain}}.qga", dir.display());
    assert_agent_unavailable(&dom, &["--qga-socket", &pattern], "Connection refused");
}

/// A real guest created after vmbridge started: its agent is absent at first, and once it
/// connects (libvirt's agent-lifecycle event) it is polled at once, well before the 10 min
/// re-check; vmbridge logs "unavailable" and "available again" once each.
#[test]
fn an_agent_that_connects_later_is_polled_at_once_on_libvirts_event() {
    let _serial = serial();
    let dir = scratch("late");
    let cfg = config(&dir, "10m");
    let bridge = Bridge::start(&["--config", &cfg]);
    let name = "noagent_late";
    let lab = root().join("integration/lab.sh");
    let _ = Command::new("bash").arg(&lab).args(["destroy", name]).output();
    let out = Command::new("bash").arg(&lab).args(["add-guest", name]).output().expect("lab.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let _ = Command::new("bash").arg(&lab).args(["destroy", name]).output();
        assert!(stderr.contains("did not answer guest-ping within"), "add-guest failed: {stderr}");
        eprintln!("SKIPPED: the guest did not boot in time under TCG:\n{stderr}");
        return;
    }
    let _dom = Domain { name: name.to_owned() };
    let vm = [("namespace", "noagent"), ("name", "late"), ("source", "qga")];
    let (e, took) = bridge.wait_for(Duration::from_secs(120), "the guest agent polled", |e| {
        e.value("vmbridge_source_up", &vm) == Some(1.0)
    });
    eprintln!("guest source up {took:?} after the agent answered virsh");
    let unavailable = [("namespace", "noagent"), ("name", "late"), ("source", "qga"), ("kind", "agent_unavailable")];
    let seen = e.value("vmbridge_source_errors_total", &unavailable).unwrap_or(0.0);
    if seen >= 1.0 {
        // The first poll found no agent (the usual case: the guest boots for seconds).
        let id = ("noagent", "late");
        for line in lines_with(&bridge, id, "") {
            eprintln!("{line}");
        }
        assert_eq!(lines_with(&bridge, id, "source unavailable").len(), 1);
        assert_eq!(lines_with(&bridge, id, "source available again").len(), 1);
    } else {
        eprintln!("the agent was up before the first guest poll; the event path was not needed");
    }
}
