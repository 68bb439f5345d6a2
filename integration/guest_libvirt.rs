//! The guest source through libvirt (`virDomainQemuAgentCommand`, the default for
//! libvirt-managed VMs, KubeVirt included) against a real Linux guest running the real
//! qemu-guest-agent, booted by `integration/lab.sh add-guest` (Debian kernel + a busybox
//! initramfs carrying qemu-ga; TCG).
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, virsh, lab.sh)

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn agent(dom: &str, cmd: &str) -> Value {
    let out = virsh(&["qemu-agent-command", dom, &format!("{{\"execute\":\"{cmd}\"}}")]);
    serde_json::from_str::<Value>(&out).expect("json")["return"].clone()
}

/// Boots lab guest `name` (`lab.sh add-guest`, with `env`) for one test: the domain (destroyed
/// on drop) and what lab.sh said. `None` when TCG could not boot it within the budget
/// (VMB_GUEST_BOOT_TIMEOUT): the `tier` is skipped, saying so; any other failure fails the test.
fn boot_guest(name: &str, env: &[(&str, &str)], tier: &str) -> Option<(Domain, String)> {
    let lab_sh = root().join("integration/lab.sh");
    let _ = Command::new("bash").arg(&lab_sh).args(["destroy", name]).output();
    let out = Command::new("bash").arg(&lab_sh).args(["add-guest", name]).envs(env.iter().copied()).output();
    let out = out.expect("lab.sh");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let _ = Command::new("bash").arg(&lab_sh).args(["destroy", name]).output();
        assert!(stderr.contains("did not answer guest-ping within"), "add-guest failed: {stderr}");
        eprintln!("SKIPPED {tier}: the guest did not boot in time under TCG:\n{stderr}");
        return None;
    }
    Some((Domain { name: name.to_owned() }, stderr))
}

#[test]
fn libvirt_transport_values_equal_the_real_guest_agent() {
    let _serial = serial();
    let name = "itg-agent";
    let Some((dom, stderr)) = boot_guest(name, &[], "libvirt guest-agent tier") else {
        return;
    };
    if let Some(line) = stderr.lines().find(|l| l.contains("boot-to-agent")) {
        eprintln!("{line}");
    }
    let dir = std::env::temp_dir().join(format!("vmbridge-guest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("vmbridge.toml");
    let mut toml = String::from("[poll]\ninterval = \"1s\"\n[qga]\ntimeout = \"3s\"\n[qga.periods]\n");
    for k in [
        "info",
        "fsinfo",
        "network",
        "users",
        "osinfo",
        "vcpus",
        "diskstats",
        "cpustats",
        "timezone",
        "hostname",
        "memory_block_info",
    ] {
        toml.push_str(&format!("{k} = \"1s\"\n"));
    }
    std::fs::write(&cfg, toml).expect("cfg");
    let bridge = Bridge::start(&["--config", cfg.to_str().unwrap()]);
    let vm = [("name", name)];
    let (_, took) = bridge.wait_for(Duration::from_secs(30), "guest data through libvirt", |e| {
        e.value("kubevirt_vmi_filesystem_capacity_bytes", &[("name", name), ("mount_point", "/data")]).is_some()
            && e.value("kubevirt_vmi_guest_os_info", &[("name", name)]).is_some()
    });
    eprintln!("guest data exported {took:?} after vmbridge started");
    let fs_before = agent(name, "guest-get-fsinfo");
    let e = bridge.metrics();
    let fs_after = agent(name, "guest-get-fsinfo");

    let data = |v: &Value| {
        v.as_array().expect("list").iter().find(|f| f["mountpoint"] == "/data").cloned().expect("/data mounted")
    };
    let (b, a) = (data(&fs_before), data(&fs_after));
    let labels = [
        ("name", name),
        ("mount_point", "/data"),
        ("disk_name", b["name"].as_str().expect("name")),
        ("file_system_type", "ext4"),
    ];
    assert_eq!(e.value("kubevirt_vmi_filesystem_capacity_bytes", &labels), b["total-bytes"].as_f64());
    let used = e.value("kubevirt_vmi_filesystem_used_bytes", &labels).expect("used");
    let (ub, ua) = (b["used-bytes"].as_f64().expect("used"), a["used-bytes"].as_f64().expect("used"));
    assert!(used >= ub.min(ua) && used <= ub.max(ua), "used {used}, agent said {ub} then {ua}");

    let vcpus = agent(name, "guest-get-vcpus");
    assert_eq!(e.value("kubevirt_vmi_guest_vcpus", &vm), Some(vcpus.as_array().expect("list").len() as f64));
    let os = agent(name, "guest-get-osinfo");
    let host = agent(name, "guest-get-host-name");
    let info = e.find("kubevirt_vmi_guest_os_info", &vm);
    assert_eq!(info.len(), 1);
    // KubeVirt's labels for this family.
    assert_eq!(info[0].labels["os_name"], os["name"].as_str().unwrap_or_default());
    assert_eq!(info[0].labels["os_id"], os["id"].as_str().unwrap_or_default());
    assert_eq!(info[0].labels["kernel_release"], os["kernel-release"].as_str().unwrap_or_default());
    assert_eq!(info[0].labels["machine"], os["machine"].as_str().unwrap_or_default());
    let host = host["host-name"].as_str().unwrap_or_default();
    assert_eq!(e.value("kubevirt_vmi_guest_hostname_info", &[("name", name), ("hostname", host)]), Some(1.0));
    let version = agent(name, "guest-info")["version"].as_str().expect("version").to_owned();
    assert_eq!(e.value("kubevirt_vmi_guest_agent_info", &[("name", name), ("version", &version)]), Some(1.0));
    assert_eq!(
        e.value("kubevirt_vmi_guest_memory_block_size_bytes", &vm),
        agent(name, "guest-get-memory-block-info")["size"].as_f64()
    );
    // Addresses: the exported set equals the agent's (IPv6 link-local addresses appear a
    // moment after boot, so compare until both agree, within a few polls).
    let agent_addrs = || {
        let mut want: Vec<(String, String)> = Vec::new();
        for i in agent(name, "guest-network-get-interfaces").as_array().expect("list") {
            for a in i["ip-addresses"].as_array().into_iter().flatten() {
                want.push((
                    i["name"].as_str().unwrap_or_default().to_owned(),
                    a["ip-address"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        want.sort();
        want
    };
    let exported = |e: &Exposition| {
        let mut got: Vec<(String, String)> = e
            .find("kubevirt_vmi_guest_interface_address_info", &vm)
            .iter()
            .map(|s| (s.labels["interface"].clone(), s.labels["address"].clone()))
            .collect();
        got.sort();
        got
    };
    let (e, _) = bridge
        .wait_for(Duration::from_secs(15), "exported addresses to equal the agent's", |e| exported(e) == agent_addrs());
    assert!(exported(&e).iter().any(|(_, a)| a == "10.0.2.15"), "the guest configures 10.0.2.15");

    // Guest memory as the guest sees it comes from the balloon driver (core source).
    let (_, _) = bridge.wait_for(Duration::from_secs(20), "balloon statistics", |e| {
        e.value("kubevirt_vmi_memory_usable_bytes", &vm).is_some()
    });

    // KubeVirt's domain memory is the current balloon size: inflate the real guest's balloon
    // (its virtio_balloon driver gives the pages back) and the value follows virsh's
    // balloon.current, not the unchanged maximum.
    let balloon = || -> (f64, f64) {
        let out = virsh(&["domstats", "--balloon", name]);
        let get = |k: &str| {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {k} in {out}"))
        };
        (get("balloon.current"), get("balloon.maximum"))
    };
    let (_, maximum) = balloon();
    virsh(&["setmem", name, &format!("{}K", (maximum * 0.75) as u64), "--live"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while balloon().0 >= maximum && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let (b, _) = balloon();
    assert!(b < maximum, "the guest's balloon did not inflate: current {b} KiB of {maximum}");
    let (e, _) = bridge.wait_for(Duration::from_secs(20), "domain memory to follow the balloon", |e| {
        e.value("kubevirt_vmi_memory_domain_bytes", &vm).is_some_and(|v| v < maximum * 1024.0)
    });
    let (a, _) = balloon();
    let got = e.value("kubevirt_vmi_memory_domain_bytes", &vm).expect("domain memory");
    assert!(got >= b.min(a) * 1024.0 && got <= b.max(a) * 1024.0, "domain memory {got}, virsh said {b} then {a} KiB");

    let doc: Value = serde_json::from_str(&bridge.get(&format!("/debug/vms/default/{name}"), None).body).expect("json");
    let q = &doc["sources"]["qga"]["sample"];
    assert_eq!(q["transport"], "libvirt");
    assert!(q["supported_commands"].as_array().is_some_and(|c| c.iter().any(|x| x == "guest-get-fsinfo")));
    drop(dom);
}

fn exec_in_guest(dom: &str, script: &str) {
    let req = serde_json::json!({"execute": "guest-exec", "arguments": {"path": "/bin/sh", "arg": ["-c", script], "capture-output": true}});
    let pid =
        serde_json::from_str::<Value>(&virsh(&["qemu-agent-command", dom, &req.to_string()])).expect("json")["return"]
            ["pid"]
            .as_i64()
            .expect("pid");
    let status = serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}).to_string();
    let start = std::time::Instant::now();
    while serde_json::from_str::<Value>(&virsh(&["qemu-agent-command", dom, &status])).expect("json")["return"]["exited"]
        != true
    {
        assert!(start.elapsed() < Duration::from_secs(20), "guest command did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Real guest block I/O errors (a disk whose reads fail through a blkdebug rule; the test
/// makes the guest read it) are counted exactly: through the direct QMP monitor
/// (BLOCK_IO_ERROR) and, in a second vmbridge without one, through libvirt's IO_ERROR event;
/// both equal the number of io-error events `virsh event` saw.
#[test]
fn guest_block_io_errors_are_counted_exactly() {
    let _serial = serial();
    let name = "itg-ioerr";
    let Some((_dom, _)) = boot_guest(name, &[("VMB_GUEST_ERROR_DISK", "1")], "I/O error tier") else {
        return;
    };
    let with_qmp =
        Bridge::start(&["--poll-interval", "1s", "--no-qga", "--qmp-socket", "/var/lib/vmbridge-lab/{domain}.qmp"]);
    let without = Bridge::start(&["--poll-interval", "1s", "--no-qga"]);
    let qmp_count = |e: &Exposition| {
        e.value("kubevirt_vmi_block_io_errors_total", &[("name", name), ("drive", "errdisk"), ("operation", "read")])
            .unwrap_or(0.0)
    };
    let lv_count = |e: &Exposition| {
        e.value("kubevirt_vmi_block_io_errors_total", &[("name", name), ("drive", "unknown"), ("operation", "unknown")])
            .unwrap_or(0.0)
    };
    with_qmp.wait_for(Duration::from_secs(20), "qmp source up", |e| {
        e.value("vmbridge_source_up", &[("name", name), ("source", "qmp")]) == Some(1.0)
    });
    without.wait_for(Duration::from_secs(20), "libvirt source up", |e| {
        e.value("vmbridge_source_up", &[("name", name), ("source", "libvirt")]) == Some(1.0)
    });
    let (q0, l0) = (qmp_count(&with_qmp.metrics()), lv_count(&without.metrics()));

    let mut watcher = Command::new("virsh")
        .args(["-c", URI, "event", "--domain", name, "--event", "io-error", "--loop"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("virsh event");
    std::thread::sleep(Duration::from_secs(1));
    exec_in_guest(
        name,
        "for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = vmbridge-errdisk ] && for s in 100 200 300; do \
         dd if=/dev/${d##*/} of=/dev/null bs=512 count=1 iflag=direct skip=$s; done; done; true",
    );
    std::thread::sleep(Duration::from_secs(2));
    let _ = watcher.kill();
    let mut seen = String::new();
    std::io::Read::read_to_string(watcher.stdout.as_mut().expect("stdout"), &mut seen).expect("read");
    let _ = watcher.wait();
    let caused = seen.lines().filter(|l| l.starts_with("event 'io-error'")).count() as f64;
    assert!(caused >= 3.0, "three failing reads caused {caused} io-error events:\n{seen}");
    with_qmp.wait_for(Duration::from_secs(10), "QMP count", |e| qmp_count(e) - q0 == caused);
    without.wait_for(Duration::from_secs(10), "libvirt event count", |e| lv_count(e) - l0 == caused);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(qmp_count(&with_qmp.metrics()) - q0, caused, "QMP count settled");
    assert_eq!(lv_count(&without.metrics()) - l0, caused, "libvirt count settled");
    eprintln!("{caused} I/O errors caused, counted exactly by both paths");
}

/// The VM's current guest heartbeat state, if written.
/// The exposition's lines of `family` for VM `name`, as the closing notes quote them.
fn show(e: &Exposition, family: &str, name: &str) {
    let vm = format!("name=\"{name}\"");
    for l in e.text.lines().filter(|l| l.starts_with(family) && l.contains(&vm)) {
        eprintln!("  {l}");
    }
}

fn heartbeat(e: &Exposition, name: &str) -> Option<String> {
    let states: Vec<String> = e
        .find("vmbridge_guest_heartbeat", &[("name", name)])
        .iter()
        .filter(|s| s.value == 1.0)
        .map(|s| s.labels["state"].clone())
        .collect();
    assert!(states.len() <= 1, "one current state per VM: {states:?}");
    states.into_iter().next()
}

/// The guest heartbeat on the real guest: `ok` with a round-trip time while the agent
/// answers; with its QEMU SIGSTOPped, `unknown` or `guest_stalled` and never `ok` again until
/// SIGCONT; then the guest stops its own qemu-ga (SIGSTOP inside the guest, from
/// `vmb.agent_stop_after`: the channel stays connected) and the state goes `ok` →
/// `agent_silent`.
#[test]
fn guest_heartbeat_follows_a_silent_agent_and_a_stopped_qemu() {
    let _serial = serial();
    let name = "itg-heartbeat";
    // Long enough for vmbridge's first polls and the SIGSTOP phase, on a loaded machine.
    let agent_stop_after = 45;
    let cmdline = format!("vmb.agent_stop_after={agent_stop_after}");
    let Some((dom, _)) = boot_guest(name, &[("VMB_GUEST_CMDLINE", &cmdline)], "heartbeat tier") else {
        return;
    };
    let booted = std::time::Instant::now();
    let dir = std::env::temp_dir().join(format!("vmbridge-heartbeat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("vmbridge.toml");
    std::fs::write(&cfg, "[poll]\ninterval = \"1s\"\ntimeout = \"3s\"\n[qga]\ntimeout = \"2s\"\n").expect("cfg");
    let bridge = Bridge::start(&["--config", cfg.to_str().unwrap()]);
    let vm = [("name", name)];

    let (e, took) =
        bridge.wait_for(Duration::from_secs(30), "heartbeat ok", |e| heartbeat(e, name).as_deref() == Some("ok"));
    let rtt = e.value("vmbridge_guest_agent_rtt_seconds", &vm).expect("a round-trip time while ok");
    assert!(rtt > 0.0 && rtt < 2.0, "rtt {rtt} within the 2 s command deadline");
    eprintln!("ok {took:?} after vmbridge started; vmbridge_guest_agent_rtt_seconds {rtt}");
    show(&e, "vmbridge_guest_heartbeat", name);
    show(&e, "vmbridge_guest_agent_rtt_seconds", name);

    // QEMU stopped: the host cannot vouch for the guest. Never ok once it left ok.
    dom.stop();
    let (e, took) = bridge.wait_for(Duration::from_secs(30), "heartbeat unknown or guest_stalled", |e| {
        matches!(heartbeat(e, name).as_deref(), Some("unknown" | "guest_stalled"))
    });
    eprintln!("QEMU stopped: {:?} after {took:?}", heartbeat(&e, name));
    show(&e, "vmbridge_guest_heartbeat", name);
    let mut seen = Vec::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(500));
        let s = heartbeat(&bridge.metrics(), name);
        assert_ne!(s.as_deref(), Some("ok"), "ok while QEMU is stopped; states so far {seen:?}");
        seen.push(s);
    }
    eprintln!("while stopped: {seen:?}");
    dom.cont();
    let (_, took) =
        bridge.wait_for(Duration::from_secs(60), "heartbeat ok again", |e| heartbeat(e, name).as_deref() == Some("ok"));
    eprintln!("ok again {took:?} after SIGCONT");
    assert!(
        booted.elapsed() < Duration::from_secs(agent_stop_after - 5),
        "the SIGSTOP phase ran past the guest's own agent stop ({:?}); raise agent_stop_after",
        booted.elapsed()
    );

    // The guest stops its own agent: ok → agent_silent, and the round-trip time goes.
    let (e, took) = bridge.wait_for(Duration::from_secs(agent_stop_after + 60), "heartbeat agent_silent", |e| {
        let s = heartbeat(e, name);
        assert!(matches!(s.as_deref(), Some("ok" | "agent_silent")), "ok → agent_silent only, saw {s:?}");
        s.as_deref() == Some("agent_silent")
    });
    eprintln!("agent_silent {took:?} later, {:?} after boot", booted.elapsed());
    show(&e, "vmbridge_guest_heartbeat", name);
    assert_eq!(e.value("vmbridge_guest_agent_rtt_seconds", &vm), None, "no round-trip time for a silent agent");
    let console = std::fs::read_to_string(format!("/var/lib/vmbridge-lab/vms/{name}/console.log")).unwrap_or_default();
    assert!(console.contains("stopped qemu-ga (SIGSTOP)"), "the guest says it stopped its agent:\n{console}");
    // It stays silent (the agent never answers again).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(heartbeat(&bridge.metrics(), name).as_deref(), Some("agent_silent"));
}

/// Memory-stats freshness on the real guest: with the balloon stats period at 2 s the guest's
/// figures are exported (`fresh`); once the period is set to 0 (`virsh dommemstat --period 0`,
/// by the test: QEMU stops asking the guest, and libvirt keeps returning the last figures with
/// a stamp that no longer moves) they are withheld within a few periods (`stale`), while
/// `actual_balloon` and the domain's memory stay.
#[test]
fn guest_memory_figures_whose_stamp_stops_are_withheld() {
    let _serial = serial();
    let name = "itg-memstale";
    let Some((_dom, _)) = boot_guest(name, &[], "memory-freshness tier") else {
        return;
    };
    let bridge = Bridge::start(&["--poll-interval", "1s", "--no-qga"]);
    let vm = [("name", name)];
    let state = |e: &Exposition| {
        e.find("vmbridge_guest_memory_stats", &vm).iter().find(|s| s.value == 1.0).map(|s| s.labels["state"].clone())
    };
    let (e, took) = bridge.wait_for(Duration::from_secs(60), "fresh guest memory figures", |e| {
        state(e).as_deref() == Some("fresh") && e.value("kubevirt_vmi_memory_usable_bytes", &vm).is_some()
    });
    show(&e, "vmbridge_guest_memory_stats", name);
    show(&e, "kubevirt_vmi_memory_usable_bytes", name);
    eprintln!(
        "fresh after {took:?}: usable {:?}, last update {:?}",
        e.value("kubevirt_vmi_memory_usable_bytes", &vm),
        e.value("kubevirt_vmi_memory_stats_last_update_timestamp_seconds", &vm)
    );
    // Let vmbridge see the stamp step at least once (the period is measured from it).
    let first = e.value("kubevirt_vmi_memory_stats_last_update_timestamp_seconds", &vm);
    bridge.wait_for(Duration::from_secs(30), "the stamp to move", |e| {
        e.value("kubevirt_vmi_memory_stats_last_update_timestamp_seconds", &vm) != first
    });
    virsh(&["dommemstat", name, "--period", "0", "--live"]);
    let frozen = std::time::Instant::now();
    let (e, took) = bridge
        .wait_for(Duration::from_secs(60), "stale guest memory figures", |e| state(e).as_deref() == Some("stale"));
    eprintln!("stale {took:?} after the period was set to 0");
    show(&e, "vmbridge_guest_memory_stats", name);
    show(&e, "kubevirt_vmi_memory_actual_balloon_bytes", name);
    for gone in [
        "kubevirt_vmi_memory_usable_bytes",
        "kubevirt_vmi_memory_available_bytes",
        "kubevirt_vmi_memory_unused_bytes",
        "kubevirt_vmi_memory_cached_bytes",
    ] {
        assert_eq!(e.value(gone, &vm), None, "{gone} withheld once stale");
    }
    assert!(e.value("kubevirt_vmi_memory_actual_balloon_bytes", &vm).is_some_and(|v| v > 0.0), "actual_balloon stays");
    assert!(e.value("kubevirt_vmi_memory_domain_bytes", &vm).is_some_and(|v| v > 0.0), "domain memory stays");
    // libvirt still returns the frozen figures: vmbridge withholds them, it did not lose them.
    let raw = dommemstat(name);
    assert!(raw.contains_key("usable"), "libvirt still reports the last figures: {raw:?}");
    assert!(frozen.elapsed() >= Duration::from_secs(2), "not stale before one period passed");
    // Reports resume with the period back: fresh again.
    virsh(&["dommemstat", name, "--period", "2", "--live"]);
    bridge.wait_for(Duration::from_secs(60), "fresh again", |e| {
        state(e).as_deref() == Some("fresh") && e.value("kubevirt_vmi_memory_usable_bytes", &vm).is_some()
    });
}

/// A label set in PromQL's series notation.
fn promql_series(name: &str, labels: &std::collections::BTreeMap<String, String>) -> String {
    let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", esc(v))).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// Guest filesystems joined to their drives on the real guest: two more virtio disks with
/// serials and KubeVirt user aliases (`lab.sh` VMB_GUEST_DRIVE_DISKS=1: ua-datadisk serial
/// vmb-datadisk, ua-logdisk serial vmb-logdisk), which the guest's /init mounts by serial on
/// /data and /logs. Each mount point's `vmbridge_guest_filesystem_drive_info` names its
/// drive, `/debug` says how it matched, and the README's PromQL join, evaluated by
/// Prometheus' own engine (`promtool test rules` over the scraped series), takes KubeVirt's
/// filesystem family to `kubevirt_vmi_storage_*{drive}`.
#[test]
fn guest_filesystems_are_joined_to_their_kubevirt_drives() {
    let _serial = serial();
    let name = "itfsd-drives";
    let Some((dom, _)) = boot_guest(name, &[("VMB_GUEST_DRIVE_DISKS", "1")], "filesystem-to-drive tier") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("vmbridge-fsdrive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("vmbridge.toml");
    std::fs::write(&cfg, "[poll]\ninterval = \"1s\"\n[qga.periods]\nfsinfo = \"1s\"\n").expect("cfg");
    let bridge = Bridge::start(&["--config", cfg.to_str().unwrap()]);
    let want = [("/data", "datadisk", "vmb-datadisk"), ("/logs", "logdisk", "vmb-logdisk")];
    let joins = |e: &Exposition| -> Vec<Sample> {
        e.find("vmbridge_guest_filesystem_drive_info", &[("name", name)]).into_iter().cloned().collect()
    };
    let (e, took) = bridge.wait_for(Duration::from_secs(60), "each mount point's drive", |e| {
        want.iter().all(|(mp, _, _)| joins(e).iter().any(|s| s.labels["mount_point"] == *mp))
    });
    eprintln!("filesystems joined to drives {took:?} after vmbridge started");
    let fsinfo = agent(name, "guest-get-fsinfo");
    let joined = joins(&e);
    assert_eq!(joined.len(), want.len(), "one series per mounted filesystem with a matched disk: {joined:?}");
    for (mp, drive, serial) in want {
        let s = joined.iter().find(|s| s.labels["mount_point"] == mp).expect("joined");
        assert_eq!(s.labels["drive"], drive, "{mp} is on {drive}");
        assert_eq!(s.value, 1.0);
        // The agent's own word: the filesystem at `mp` is on the disk with that serial.
        let fs = fsinfo.as_array().expect("list").iter().find(|f| f["mountpoint"] == mp).expect("mounted");
        assert_eq!(fs["disk"][0]["serial"], serial, "{fs}");
        assert_eq!(s.labels["disk_name"], fs["name"].as_str().expect("name"));
        // The drive exists in the storage families too (KubeVirt's `drive` from the alias).
        let read = e.value("kubevirt_vmi_storage_read_traffic_bytes_total", &[("name", name), ("drive", drive)]);
        assert!(read.is_some(), "no kubevirt_vmi_storage_read_traffic_bytes_total{{drive={drive:?}}}");
    }
    for line in e.text.lines().filter(|l| {
        l.contains(&format!("name=\"{name}\""))
            && (l.starts_with("vmbridge_guest_filesystem_drive_info")
                || l.starts_with("kubevirt_vmi_filesystem_used_bytes")
                || l.starts_with("kubevirt_vmi_storage_read_traffic_bytes_total"))
    }) {
        eprintln!("{line}");
    }

    // /debug says how each filesystem was joined.
    let doc: Value = serde_json::from_str(&bridge.get(&format!("/debug/vms/default/{name}"), None).body).expect("json");
    let drives = doc["filesystem_drives"].as_array().expect("filesystem_drives");
    for (mp, drive, _) in want {
        let d = drives.iter().find(|d| d["mount_point"] == mp).expect("in /debug");
        assert_eq!((d["drive"].as_str(), d["matched_by"].as_str()), (Some(drive), Some("serial")), "{d}");
    }

    // The README's join, evaluated by Prometheus' engine over this scrape's series.
    let families = [
        "kubevirt_vmi_filesystem_used_bytes",
        "vmbridge_guest_filesystem_drive_info",
        "kubevirt_vmi_storage_read_traffic_bytes_total",
    ];
    let mut input = String::new();
    for f in families {
        for s in e.find(f, &[("name", name)]) {
            input.push_str(&format!(
                "      - series: '{}'\n        values: '{}'\n",
                promql_series(f, &s.labels),
                s.value
            ));
        }
    }
    let mut expected = String::new();
    for s in e.find("kubevirt_vmi_filesystem_used_bytes", &[("name", name)]) {
        let Some(j) = joined.iter().find(|j| j.labels["mount_point"] == s.labels["mount_point"]) else { continue };
        let mut labels = s.labels.clone();
        labels.insert("drive".into(), j.labels["drive"].clone());
        expected.push_str(&format!(
            "          - labels: '{}'\n            value: {}\n",
            promql_series("", &labels),
            s.value
        ));
    }
    assert_eq!(expected.matches("labels:").count(), want.len(), "{expected}");
    let query = "(kubevirt_vmi_filesystem_used_bytes * on(namespace, name, disk_name, mount_point) group_left(drive) \
                 vmbridge_guest_filesystem_drive_info) and on(namespace, name, drive) \
                 kubevirt_vmi_storage_read_traffic_bytes_total";
    let rules = dir.join("join_test.yml");
    std::fs::write(
        &rules,
        format!(
            "rule_files: []\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{input}\
             \x20   promql_expr_test:\n      - expr: '{query}'\n        eval_time: 0m\n        exp_samples:\n{expected}"
        ),
    )
    .expect("rules");
    let out =
        Command::new("promtool").args(["test", "rules"]).arg(&rules).output().expect("promtool (Prometheus' tools)");
    assert!(
        out.status.success(),
        "the join failed:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&rules).unwrap_or_default()
    );
    eprintln!("PromQL join (promtool): {query}\n{expected}");
    drop(dom);
    let _ = std::fs::remove_dir_all(&dir);
}
