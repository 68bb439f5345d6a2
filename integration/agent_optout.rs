//! A VM can opt out of guest-agent polling (issue 27 point 2): on real lab domains, each with a
//! real qemu-ga on its own socket (`qga.transport = "socket"`, found through libvirt), a domain
//! carrying vmbridge's metadata element (`virsh metadata … urn:vmbridge:1`) and one matched by
//! `qga.exclude` get no agent request at all, counted on the agent's side (qemu-ga's own debug
//! log), while a third domain's agent is polled as usual. The opted-out VMs' guest source
//! reads `agent_disabled` (a state: breaker closed, no transition) and `/debug` says why.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, lab.sh, virsh, qemu-ga)

mod common;

use std::time::Duration;

use common::agents::{Agent, requests_read, scratch};
use common::*;
use serde_json::Value;

#[test]
fn opted_out_vms_get_no_agent_request_and_read_agent_disabled() {
    let _serial = serial();
    let _watchdog = watchdog();
    let dir = scratch("optout");
    let names = ["itoo-meta", "itoo-glob", "itoo-polled"];
    let _domains: Vec<Domain> = names.iter().map(|n| Domain::new(n)).collect();
    // The opt-out on the live domain, as an admin sets it on a plain host.
    virsh(&[
        "metadata",
        "itoo-meta",
        "urn:vmbridge:1",
        "--key",
        "vmbridge",
        "--set",
        r#"<agent poll="off"/>"#,
        "--live",
    ]);
    let meta = virsh(&["metadata", "itoo-meta", "urn:vmbridge:1", "--live"]);
    assert!(meta.contains(r#"poll="off""#), "metadata set: {meta}");
    let agents: Vec<(Agent, std::path::PathBuf)> = names.iter().map(|n| Agent::start_logged(&dir, n)).collect();
    let cfg = dir.join("vmbridge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[poll]\ninterval = \"1s\"\n[qga]\ntimeout = \"2s\"\ntransport = \"socket\"\n\
             socket_pattern = \"{}/{{domain}}.sock\"\nexclude = [\"*/itoo-glob\"]\n",
            dir.display()
        ),
    )
    .expect("config");
    let bridge = Bridge::start(&["--config", cfg.to_str().expect("utf-8")]);
    let up = |e: &Exposition, name: &str| {
        e.value("vmbridge_source_up", &[("namespace", "default"), ("name", name), ("source", "qga")])
    };
    let disabled = |e: &Exposition, name: &str| {
        e.value(
            "vmbridge_source_errors_total",
            &[("namespace", "default"), ("name", name), ("source", "qga"), ("kind", "agent_disabled")],
        )
        .unwrap_or(0.0)
    };
    // The polled VM answers; both opted-out VMs have said "disabled" at least once.
    bridge.wait_for(Duration::from_secs(60), "the polled VM's agent up, the others disabled", |e| {
        up(e, "itoo-polled") == Some(1.0) && disabled(e, "itoo-meta") >= 1.0 && disabled(e, "itoo-glob") >= 1.0
    });
    // Several more poll intervals, during which nothing may reach the opted-out agents.
    std::thread::sleep(Duration::from_secs(8));
    let e = bridge.metrics();
    let read: Vec<Vec<String>> = agents.iter().map(|(_, log)| requests_read(log)).collect();
    assert_eq!(read[0], Vec::<String>::new(), "the agent of the VM with the metadata element was called");
    assert_eq!(read[1], Vec::<String>::new(), "the agent of the VM under qga.exclude was called");
    assert!(
        read[2].iter().filter(|r| r.contains("guest-")).count() >= 5,
        "the polled VM's agent saw its requests: {:?}",
        read[2]
    );
    eprintln!("agent requests read: meta {}, glob {}, polled {}", read[0].len(), read[1].len(), read[2].len());
    for (name, why) in [("itoo-meta", "domain metadata"), ("itoo-glob", "qga.exclude \"*/itoo-glob\"")] {
        assert_eq!(up(&e, name), Some(0.0), "{name}: guest source down");
        let vm = [("namespace", "default"), ("name", name), ("source", "qga")];
        let transitions: f64 = e.find("vmbridge_breaker_transitions_total", &vm).iter().map(|s| s.value).sum();
        assert_eq!(transitions, 0.0, "{name}: a choice, not a fault: the breaker never moved");
        let r = bridge.get(&format!("/debug/vms/default/{name}"), None);
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).expect("json");
        let qga = &v["sources"]["qga"];
        assert_eq!(qga["breaker"]["state"], "closed", "{name}");
        let errors = qga["last_errors"].as_array().expect("last_errors");
        assert_eq!(errors.len(), 1, "{name}: recorded once: {errors:?}");
        assert_eq!(errors[0]["kind"], "agent_disabled", "{name}");
        let message = errors[0]["message"].as_str().expect("message");
        assert!(message.contains(why), "{name}: {message:?} should name {why:?}");
    }
    // The VM whose agent is polled has guest data; the others have none.
    assert_eq!(
        e.find("kubevirt_vmi_guest_agent_info", &[("namespace", "default"), ("name", "itoo-polled")]).len(),
        1,
        "the polled VM's agent info: {}",
        e.text
    );
    for name in ["itoo-meta", "itoo-glob"] {
        let guest: Vec<_> = e
            .of_vm(name)
            .into_iter()
            // The agent's families (a guest panic is QEMU's event, not the agent's).
            .filter(|s| s.name.starts_with("kubevirt_vmi_guest") || s.name.starts_with("kubevirt_vmi_filesystem"))
            .filter(|s| s.name != "kubevirt_vmi_guest_os_panic_total")
            .collect();
        assert!(guest.is_empty(), "{name}: no guest data: {guest:?}");
    }
}
