//! Overload is not failure (issue 23, point 4): many real domains, one SIGSTOPped, and
//! vmbridge's own call bound squeezed so that polls must wait for a call slot. Waiting for a
//! slot, or a daemon slow for everyone, must never open a VM's breaker nor set its `source_up`
//! to 0 before its data is stale: polling stretches instead, and
//! `vmbridge_source_effective_interval_seconds` shows it. The stopped VM is still flagged.
//!
//! Sized by the environment, so the same test runs in CI and at node scale by hand:
//! `VMB_OVERLOAD_VMS` (default 100), `VMB_OVERLOAD_SECS` (default 120), `VMB_OVERLOAD_INTERVAL`
//! (seconds, default 5), `VMB_OVERLOAD_MAX_CALLS` (`libvirt.max_concurrent_calls`, default 2)
//! and `VMB_LAB_MODE` (`paused` by default: domains whose vCPUs never run, so hundreds fit on
//! two cores; `halted` or `boot` for running ones). Throughout, another libvirt client polls
//! every domain and a busy loop keeps a core busy. The report goes to stderr and
//! `target/overload.md`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, lab.sh)

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PREFIX: &str = "itovl-";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The test's domains: created by `lab.sh up` in the chosen mode, torn down on drop.
struct Domains(Vec<String>);

impl Domains {
    fn up(n: u64, mode: &str) -> Domains {
        let out = Command::new("bash")
            .arg(root().join("integration/lab.sh"))
            .args(["up", &n.to_string(), PREFIX])
            .env("VMB_LAB_MODE", mode)
            .stderr(Stdio::inherit())
            .output()
            .expect("run lab.sh up");
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().skip(1).map(str::to_owned).collect();
        let domains = Domains(names);
        assert!(out.status.success(), "lab.sh up {n} {PREFIX} failed");
        assert_eq!(domains.0.len() as u64, n, "lab.sh up listed {:?}", domains.0);
        domains
    }
}

impl Drop for Domains {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(root().join("integration/lab.sh")).args(["down", PREFIX]).output();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn waiting_for_a_call_slot_never_fails_a_vm() {
    let _serial = serial();
    let (n, secs, interval, max_calls) = (
        env_or("VMB_OVERLOAD_VMS", 100),
        env_or("VMB_OVERLOAD_SECS", 120),
        env_or("VMB_OVERLOAD_INTERVAL", 5),
        env_or("VMB_OVERLOAD_MAX_CALLS", 2),
    );
    let mode = std::env::var("VMB_LAB_MODE").unwrap_or_else(|_| "paused".into());
    let made = Instant::now();
    let domains = Domains::up(n, &mode);
    let created = made.elapsed();
    // Named without a namespace separator: the VM's name is the domain's.
    let names: Vec<String> = domains.0.clone();
    let stopped = names[0].clone();
    let cfg = std::env::temp_dir().join(format!("vmbridge-it-overload-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        format!("[libvirt]\nmax_concurrent_calls = {max_calls}\n[poll]\ninterval = \"{interval}s\"\n"),
    )
    .expect("cfg");
    let bridge = Bridge::start(&["--config", cfg.to_str().unwrap(), "--no-qga"]);
    let interval = Duration::from_secs(interval);
    bridge.wait_for(interval * 12 + Duration::from_secs(60), "every VM's libvirt data", |e| {
        names.iter().all(|d| {
            e.value("vmbridge_source_last_success_timestamp_seconds", &[("name", d), ("source", "libvirt")]).is_some()
        })
    });
    let _other = OtherClient::start();
    let _busy = Busy::start();
    let before = bridge.metrics();
    lab(&["stop-vm", &stopped]);
    let started = Instant::now();
    let (mut samples, mut too_old, mut flagged) = (0usize, Vec::new(), None);
    let mut worst_age = 0f64;
    let mut effective_p50 = Vec::new();
    let mut last = before.text.clone();
    while started.elapsed() < Duration::from_secs(secs) {
        let e = bridge.metrics();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let eff: Vec<f64> = e
            .find("vmbridge_source_effective_interval_seconds", &[("source", "libvirt")])
            .iter()
            .map(|s| s.value)
            .collect();
        // The interval as the endpoint serves it: the configured one, or the median of the
        // stretched ones when polling stretches.
        let served = median(eff).max(interval.as_secs_f64());
        effective_p50.push(served);
        for d in names.iter().filter(|d| **d != stopped) {
            samples += 1;
            let at = e.value("vmbridge_source_last_success_timestamp_seconds", &[("name", d), ("source", "libvirt")]);
            let age = at.map_or(f64::INFINITY, |t| now - t);
            worst_age = worst_age.max(age);
            if age >= 3.0 * served {
                too_old.push((d.clone(), age, served));
            }
        }
        if flagged.is_none() && e.value("vmbridge_source_up", &[("name", &stopped), ("source", "libvirt")]) == Some(0.0)
        {
            flagged = Some(started.elapsed());
        }
        last = e.text.clone();
        std::thread::sleep(Duration::from_secs(1));
    }
    let _ = Command::new("bash").arg(root().join("integration/lab.sh")).args(["cont-vm", &stopped]).output();
    let end = Exposition::parse(&last);
    let transitions: Vec<(String, f64)> = names
        .iter()
        .filter(|d| **d != stopped)
        .map(|d| (d.clone(), libvirt_breaker_openings(&end, d) - libvirt_breaker_openings(&before, d)))
        .filter(|(_, t)| *t != 0.0)
        .collect();
    let down_healthy = names
        .iter()
        .filter(|d| **d != stopped)
        .filter(|d| end.value("vmbridge_source_up", &[("name", d), ("source", "libvirt")]) != Some(1.0))
        .count();
    let count = |kind: &str| -> f64 {
        end.find("vmbridge_source_errors_total", &[("source", "libvirt"), ("kind", kind)])
            .iter()
            .map(|s| s.value)
            .sum::<f64>()
            + 0.0
    };
    let report = format!(
        "overload: {n} {mode} domains (created in {:.0} s), 1 stopped, interval {} s, max_concurrent_calls {max_calls}, \
         {secs} s: {samples} VM-samples; breaker openings on the others: {}; data older than 3 served intervals: {}; \
         worst data age {worst_age:.1} s; served interval median {:.1} s, max {:.1} s; pool_saturated polls {}, \
         endpoint_saturated polls {}, timeouts {}; healthy VMs down at the end {down_healthy}; stopped VM flagged after {:?}",
        created.as_secs_f64(),
        interval.as_secs(),
        transitions.len(),
        too_old.len(),
        median(effective_p50.clone()),
        effective_p50.iter().copied().fold(0.0, f64::max),
        count("pool_saturated"),
        count("endpoint_saturated"),
        count("timeout"),
        flagged,
    );
    eprintln!("{report}");
    let _ = std::fs::write(root().join("target/overload.md"), &report);
    assert!(transitions.is_empty(), "breakers opened on VMs that were not stopped: {transitions:?}\n{report}");
    assert!(
        too_old.is_empty(),
        "data older than 3 served intervals: {:?}\n{report}",
        &too_old[..too_old.len().min(10)]
    );
    assert_eq!(down_healthy, 0, "{report}");
    assert!(flagged.is_some(), "the stopped VM was never flagged\n{report}");
    drop(domains);
}
