//! The status page at `/` in a real headless Chromium: one of two lab VMs SIGSTOPped; the
//! page must show that VM's libvirt breaker open and the other one closed, and a screenshot
//! is saved for a person to look at.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, chromium, lab.sh)

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromium is not installed: run integration/test.sh (it installs Debian's chromium)")
}

fn headless(url: &str, extra: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!("vmbridge-chromium-{}-{}", std::process::id(), extra.len()));
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_page_shows_the_stopped_vm_in_a_real_browser() {
    let _serial = serial();
    let ok = Domain::new("itp-ok");
    let stopped = Domain::new("itp-stopped");
    let cfg = std::env::temp_dir().join("vmbridge-it-status.toml");
    // The same timeout as the lab's stopped-VM test: 500 ms once let the healthy VM's breaker
    // open on a busy CI machine (no poll error was kept to say why; the debug view now is).
    std::fs::write(&cfg, "[poll]\ninterval = \"1s\"\ntimeout = \"1s\"\nretry_delay = \"100ms\"\n").expect("cfg");
    // Poll failures are logged at debug: a failed run's report shows them.
    let bridge =
        Bridge::start(&["--config", cfg.to_str().unwrap(), "--no-qga", "--log", "info,vmbridge::supervisor=debug"]);
    bridge.wait_for(Duration::from_secs(20), "both VMs up", |e| {
        [&ok.name, &stopped.name]
            .iter()
            .all(|n| e.value("vmbridge_source_up", &[("name", n), ("source", "libvirt")]) == Some(1.0))
    });
    stopped.stop();
    bridge.wait_for(Duration::from_secs(30), "the stopped VM's breaker open", |e| {
        e.value("vmbridge_breaker_state", &[("name", "itp-stopped"), ("source", "libvirt"), ("state", "open")])
            == Some(1.0)
    });
    let url = format!("http://{}/", bridge.debug_addr);
    // The DOM as Chromium built it, after parsing and layout.
    let dom = headless(&url, &["--dump-dom"]);
    let cell = |vm: &str| {
        let table = dom.split("<table id=\"vms\"").nth(1).unwrap_or_else(|| panic!("no VM table:\n{dom}"));
        let row = table
            .split("<tr")
            .find(|r| r.contains(&format!("data-vm=\"default/{vm}\"")) && r.contains("data-source=\"libvirt\""))
            .unwrap_or_else(|| panic!("no libvirt row for {vm}:\n{dom}"));
        row.split("data-state=\"").nth(1).and_then(|s| s.split('"').next()).expect("state").to_owned()
    };
    assert_eq!(cell("itp-stopped"), "open", "the stopped VM is shown as such");
    let ok_state = cell("itp-ok");
    if ok_state != "closed" {
        // The page may be right and the VM really failing: say why it failed.
        let debug = bridge.get("/debug/vms/default/itp-ok", None).body;
        panic!("the healthy VM is shown {ok_state}, expected closed; its debug view:\n{debug}");
    }
    assert!(dom.contains("href=\"/debug/vms/default/itp-stopped\""));
    assert!(dom.contains("href=\"/metrics\""));
    let shot = root().join("target/status-page.png");
    headless(&url, &[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot of {} bytes", png.len());
    eprintln!("screenshot: {}", shot.display());
    // The page's own links work on the debug listener.
    assert_eq!(bridge.get("/debug/vms/default/itp-stopped", None).status, 200);
    assert_eq!(http_get(bridge.debug_addr, "/metrics", None).status, 200);
}
