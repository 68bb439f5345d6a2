//! The Debian package on the lab machine: `dpkg -i` the `.deb` that `cargo deb` wrote
//! (`integration/test.sh` builds it), run the installed binary with the installed config as
//! the packaged user against the lab, see a lab VM with its libvirt source up, then
//! `dpkg --purge` and check that nothing is left behind.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (dpkg, runuser, vmbridge)

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The newest `.deb` of vmbridge in target/debian.
fn package() -> PathBuf {
    let dir = root().join("target/debian");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (integration/test.sh builds the package with cargo deb)", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmbridge_") && n.ends_with(".deb"))
        })
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop().expect("no vmbridge_*.deb in target/debian")
}

fn lines(path: &str) -> BTreeSet<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${db:Status-Abbrev}", "vmbridge"]).1.starts_with("ii")
}

/// A unit's sandbox: the syscall filter, W^X, a private umask, no capabilities, and
/// systemd-analyze's exposure score (0 safe .. 10 exposed) at most 2.0. Checked offline: the lab
/// has no systemd as PID 1.
fn assert_sandboxed(unit_path: &str, unit: &str) {
    let keys =
        ["SystemCallFilter=@system-service", "MemoryDenyWriteExecute=yes", "UMask=0077", "CapabilityBoundingSet="];
    for k in keys {
        assert!(unit.lines().any(|l| l.trim() == k), "{unit_path}: no {k}");
    }
    let (_, out) = run("systemd-analyze", &["security", "--offline=true", unit_path]);
    let score: f64 = out
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for vmbridge.service:"))
        .and_then(|(_, v)| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in systemd-analyze security:\n{out}"));
    assert!(score <= 2.0, "{unit_path}: exposure {score} (1.8 when written):\n{out}");
}

/// The unit for a plain install from source (deploy/systemd): its own user, sandboxed like the
/// package's (exposure 8.9 before, without User= and most of the sandbox; 1.8 now), and free of
/// syntax errors (verify only misses the binary, which is not installed here).
#[test]
fn the_plain_host_unit_runs_as_its_own_user_sandboxed() {
    let unit_path = root().join("deploy/systemd/vmbridge.service").to_str().expect("utf-8 path").to_owned();
    let unit = std::fs::read_to_string(&unit_path).expect("unit");
    assert!(unit.lines().any(|l| l.trim() == "User=vmbridge"), "{unit_path}: no User=vmbridge");
    assert_sandboxed(&unit_path, &unit);
    let (_, out) = run("systemd-analyze", &["verify", &unit_path]);
    assert!(!out.contains(&unit_path), "systemd-analyze verify {unit_path}:\n{out}");
}

#[test]
fn the_package_installs_runs_as_its_user_and_purges_clean() {
    let _serial = serial();
    let deb = package();
    if installed() || Path::new("/etc/vmbridge").exists() {
        let _ = run("dpkg", &["--purge", "vmbridge"]);
    }
    let (passwd, group) = (lines("/etc/passwd"), lines("/etc/group"));
    let dom = Domain::new("itp-deb");

    let (ok, out) = run("dpkg", &["-i", deb.to_str().unwrap()]);
    assert!(ok, "dpkg -i {}: {out}", deb.display());
    // What the package put in place.
    assert!(run("getent", &["passwd", "vmbridge"]).0, "no system user vmbridge");
    // Group libvirt is root-equivalent: never joined unless asked for (see the opt-in below).
    let groups = run("id", &["-nG", "vmbridge"]).1;
    assert!(!groups.split_whitespace().any(|g| g == "libvirt"), "vmbridge joined group libvirt by default: {groups}");
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "vmbridge"]).1;
    assert!(conffiles.contains("/etc/vmbridge/vmbridge.toml"), "not a conffile: {conffiles}");
    let files = run("dpkg", &["-L", "vmbridge"]).1;
    for f in [
        "/usr/bin/vmbridge",
        "vmbridge.service",
        "/usr/share/man/man1/vmbridge.1",
        "/usr/share/man/man1/vmbridge-check.1",
        "/usr/share/doc/vmbridge/",
    ] {
        assert!(files.contains(f), "{f} not in the package:\n{files}");
    }
    let deps = run("dpkg-query", &["-W", "-f=${Depends}", "vmbridge"]).1;
    assert!(deps.contains("libvirt0"), "dependencies not computed from the binary: {deps}");

    // The installed unit's command line and user (the installed binary with the installed
    // config); flags only move the listeners to free loopback ports.
    let unit_path = files.lines().find(|l| l.ends_with("/vmbridge.service")).expect("unit file").to_owned();
    let unit = std::fs::read_to_string(&unit_path).expect("unit");
    let key = |k: &str| unit.lines().find_map(|l| l.strip_prefix(k)).map(str::trim).unwrap_or_default().to_owned();
    let (user, exec_start) = (key("User="), key("ExecStart="));
    assert_eq!(user, "vmbridge", "{unit_path}: User=");
    assert!(exec_start.starts_with("/usr/bin/vmbridge --config /etc/vmbridge/vmbridge.toml"), "ExecStart={exec_start}");
    let (ok, out) = run("systemd-analyze", &["verify", &unit_path]);
    assert!(ok && !out.contains(&unit_path), "systemd-analyze verify {unit_path}:\n{out}");
    // systemd-analyze's exposure score: 3.2 before the syscall filter, W^X and umask; 1.8 now.
    assert_sandboxed(&unit_path, &unit);
    let mut child = Command::new("runuser")
        .args(["-u", &user, "--"])
        .args(exec_start.split_whitespace())
        .args(["--listen", "127.0.0.1:0", "--debug-listen", "off", "--log-json", "--node-name", "it-node"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the installed vmbridge");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut addr: Option<SocketAddr> = None;
    let mut log = Vec::new();
    while addr.is_none() && started.elapsed() < Duration::from_secs(30) {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else { continue };
        if line.contains("vmbridge listening") {
            let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
            addr = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
        }
        log.push(line);
    }
    let addr = addr.unwrap_or_else(|| panic!("the installed vmbridge did not listen:\n{}", log.join("\n")));
    let uid = run("ps", &["-o", "user=", "-p", &child.id().to_string()]).1;
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(60) {
        let r = http_get(addr, "/metrics", None);
        let e = Exposition::parse(&r.body);
        if e.value("kubevirt_vmi_cpu_usage_seconds_total", &[("name", &dom.name)]).is_some()
            && e.value("vmbridge_source_up", &[("name", &dom.name), ("source", "libvirt")]) == Some(1.0)
        {
            seen = Some(e);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The process tree: runuser (root) → vmbridge as the packaged user.
    let users = run("ps", &["-o", "user=", "--ppid", &child.id().to_string()]).1;
    let _ = child.kill();
    let _ = child.wait();
    let _ = Command::new("pkill").args(["-KILL", "-u", "vmbridge", "-x", "vmbridge"]).status();
    std::thread::sleep(Duration::from_millis(500));
    let e = seen.unwrap_or_else(|| panic!("{} never exported with its libvirt source up", dom.name));
    assert!(users.contains("vmbridge") || uid.contains("vmbridge"), "not running as vmbridge: {uid} / {users}");
    assert!(e.samples.iter().any(|s| s.name.starts_with("kubevirt_vmi_storage_")), "no block series");

    let (ok, out) = run("dpkg", &["--purge", "vmbridge"]);
    assert!(ok, "dpkg --purge: {out}");
    assert!(!installed(), "still installed after purge");
    assert!(!run("getent", &["passwd", "vmbridge"]).0, "user vmbridge left behind");
    assert!(!run("getent", &["group", "vmbridge"]).0, "group vmbridge left behind");
    for p in [
        "/etc/vmbridge",
        "/usr/bin/vmbridge",
        "/usr/share/doc/vmbridge",
        "/usr/share/man/man1/vmbridge.1.gz",
        "/usr/share/man/man1/vmbridge-check.1.gz",
    ] {
        assert!(!Path::new(p).exists(), "{p} left behind after purge");
    }
    assert_eq!(lines("/etc/passwd"), passwd, "/etc/passwd differs after install and purge");
    assert_eq!(lines("/etc/group"), group, "/etc/group differs after install and purge");

    // The opt-in: VMBRIDGE_LIBVIRT_GROUP=yes at the first installation joins group libvirt.
    if run("getent", &["group", "libvirt"]).0 {
        let out = Command::new("dpkg")
            .args(["-i", deb.to_str().unwrap()])
            .env("VMBRIDGE_LIBVIRT_GROUP", "yes")
            .output()
            .expect("dpkg -i");
        assert!(
            out.status.success(),
            "dpkg -i with VMBRIDGE_LIBVIRT_GROUP=yes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let groups = run("id", &["-nG", "vmbridge"]).1;
        let (ok, purged) = run("dpkg", &["--purge", "vmbridge"]);
        assert!(groups.split_whitespace().any(|g| g == "libvirt"), "the opt-in did not join group libvirt: {groups}");
        assert!(ok, "dpkg --purge: {purged}");
        assert_eq!(lines("/etc/group"), group, "/etc/group differs after the opt-in's install and purge");
    }
    eprintln!("{}: installed, exported {} as user vmbridge, purged clean", deb.display(), dom.name);
}

/// `lintian` (Debian's package checker) on the `.deb`: no error-level tag. Its whole output is
/// printed, so the warnings and informational tags are in the test log too.
#[test]
fn lintian_reports_no_errors() {
    let _watchdog = watchdog();
    let deb = package();
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--display-info", "--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .expect("run lintian (integration/test.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("lintian {}:\n{text}", deb.display());
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
    assert!(out.status.success(), "lintian exited with {}:\n{text}", out.status);
}
