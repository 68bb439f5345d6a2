//! KubeVirt discovery without Kubernetes: `integration/launcher.sh` starts libvirt daemons
//! each in its own mount (and network) namespace with a private /run/libvirt and one domain
//! named `<namespace>_<name>`, as virt-launcher pods have. vmbridge must find them through
//! /proc/<pid>/root, survive one being SIGSTOPped or killed, and export infra process metrics
//! equal to /proc at the same moment.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, launcher.sh)

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

impl Launcher {
    /// A daemon vmbridge must not trust (`how`: launcher.sh's `start-impostor` or
    /// `start-namesake`), and its libvirtd PID.
    fn start_rogue(how: &str, name: &str, domain: &str) -> (Launcher, String) {
        let _ = Command::new("bash").arg(root().join("integration/launcher.sh")).args(["kill", name]).output();
        let out = launcher(&[how, name, domain]);
        let pid = out.lines().find_map(|l| l.strip_prefix("pid ")).expect("pid").trim().to_owned();
        (Launcher(name.to_owned()), pid)
    }
}

/// Waits until the real launcher's VM `ns`/`name` is up and a rogue daemon is counted as
/// untrusted.
fn wait_real_vm_and_rogue_counted(bridge: &Bridge, ns: &str, name: &str) -> Exposition {
    let what = format!("{ns}/{name} up and an untrusted daemon counted");
    let (e, _) = bridge.wait_for(Duration::from_secs(30), &what, |e| {
        e.value("vmbridge_source_up", &[("namespace", ns), ("name", name), ("source", "libvirt")]) == Some(1.0)
            && e.value("vmbridge_launcher_daemons", &[("status", "untrusted")]).is_some_and(|n| n >= 1.0)
    });
    e
}

/// Only the real daemon is an endpoint; the rogue's socket is never connected to.
fn assert_real_endpoint_only(e: &Exposition, real_pid: &str, rogue_pid: &str) {
    let endpoints: Vec<String> =
        e.find("vmbridge_endpoint_up", &[]).iter().filter_map(|s| s.labels.get("uri").cloned()).collect();
    assert!(endpoints.iter().any(|u| u.contains(&format!("/proc/{real_pid}/"))), "{endpoints:?}");
    assert!(
        !endpoints.iter().any(|u| u.contains(&format!("/proc/{rogue_pid}/"))),
        "the rogue daemon {rogue_pid} became an endpoint: {endpoints:?}"
    );
}

fn statm(pid: u32) -> Vec<f64> {
    let page = 4096.0;
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .expect("statm")
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap() * page)
        .collect()
}

fn qemu_pid(domain: &str) -> u32 {
    let out = Command::new("pgrep").args(["-f", &format!("guest={domain},")]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().next().expect("qemu running").trim().parse().expect("pid")
}

#[test]
fn launchers_are_discovered_isolated_and_dropped() {
    let _serial = serial();
    let l1 = Launcher::start("kvt1", "kvt-ns1_vm-a");
    let l2 = Launcher::start("kvt2", "kvt-ns2_vm-b");
    let bridge = Bridge::start_without_libvirt(&[
        // Poll counts are read below; they are exported only with --health-detail.
        "--health-detail",
        "--discovery",
        "kubevirt",
        "--poll-interval",
        "1s",
        "--poll-timeout",
        "1s",
        "--no-qga",
    ]);
    let a = [("namespace", "kvt-ns1"), ("name", "vm-a")];
    let b = [("namespace", "kvt-ns2"), ("name", "vm-b")];
    let (_, found) = bridge.wait_for(Duration::from_secs(20), "both launchers' VMs", |e| {
        e.value("kubevirt_vmi_cpu_usage_seconds_total", &a).is_some()
            && e.value("kubevirt_vmi_cpu_usage_seconds_total", &b).is_some()
    });
    eprintln!("both launchers' VMs exported {found:?} after start");
    assert_eq!(bridge.get("/readyz", None).status, 200);

    // Infra process metrics equal /proc at the same moment: QEMU and the launcher's libvirtd.
    // A scrape serves the last poll's reading: wait for a poll that *started* after `before`
    // was read (polls_total P0 + 2: poll P0 + 1 completes after P0 was seen, and P0 + 2 starts
    // after it), so the reading lies between the two /proc reads. Once, taking any scrape made
    // a reading from before `before` fail by 1 MB of a just-booted QEMU's growth.
    let qemu = qemu_pid("kvt-ns1_vm-a");
    let before = statm(qemu);
    let polls = |e: &Exposition| {
        e.value("vmbridge_source_polls_total", &[("name", "vm-a"), ("source", "process")]).unwrap_or(0.0)
    };
    let p0 = polls(&bridge.metrics());
    let e = bridge
        .wait_for(Duration::from_secs(10), "a poll started after the first /proc read", |e| polls(e) >= p0 + 2.0)
        .0;
    let after = statm(qemu);
    fn proc_vm(p: &str) -> [(&str, &str); 3] {
        [("namespace", "kvt-ns1"), ("name", "vm-a"), ("process", p)]
    }
    let name = std::fs::read_to_string(format!("/proc/{qemu}/comm")).expect("comm").trim().to_owned();
    let virt = e.value("kubevirt_pod_infra_memory_virtual_bytes", &proc_vm(&name)).expect("qemu virtual");
    assert!(
        virt >= before[0].min(after[0]) && virt <= before[0].max(after[0]),
        "virtual {virt} vs /proc {} / {}",
        before[0],
        after[0]
    );
    assert!(
        e.value("kubevirt_pod_infra_memory_resident_bytes", &proc_vm("libvirtd")).is_some(),
        "launcher-side daemon reported"
    );
    assert!(e.value("kubevirt_pod_infra_cpu_user_seconds_total", &proc_vm(&name)).is_some_and(|v| v > 0.0));

    // A hung launcher only darkens its own VM.
    launcher(&["stop-daemon", "kvt2"]);
    let (_, flagged) = bridge.wait_for(Duration::from_secs(20), "vm-b flagged", |e| {
        e.value("vmbridge_source_up", &[("name", "vm-b"), ("source", "libvirt")]) == Some(0.0)
    });
    for _ in 0..10 {
        let e = bridge.metrics();
        let ts = e
            .value("vmbridge_source_last_success_timestamp_seconds", &[("name", "vm-a"), ("source", "libvirt")])
            .expect("ts");
        let age = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() - ts;
        assert!(age < 3.0, "vm-a went stale ({age:.1}s) while another launcher hangs");
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("hung launcher flagged {flagged:?} after SIGSTOP");
    // Its endpoint is down, and that is a metric, never readiness: the pod stays Ready.
    bridge.wait_for(Duration::from_secs(30), "the hung launcher's endpoint down", |e| {
        e.find("vmbridge_endpoint_up", &[]).iter().any(|s| s.value == 0.0)
    });
    let r = bridge.get("/readyz", None);
    assert_eq!(r.status, 200, "a hung launcher turned vmbridge NotReady: {}", r.body);
    launcher(&["cont-daemon", "kvt2"]);
    bridge.wait_for(Duration::from_secs(20), "vm-b recovered", |e| {
        e.value("vmbridge_source_up", &[("name", "vm-b"), ("source", "libvirt")]) == Some(1.0)
    });

    // A killed launcher takes its VM's series with it within one discovery interval.
    drop(l2);
    let (e, gone) = bridge.wait_for(Duration::from_secs(10), "vm-b gone", |e| e.of_vm("vm-b").is_empty());
    assert!(e.value("kubevirt_vmi_cpu_usage_seconds_total", &a).is_some());
    eprintln!("killed launcher's VM gone {gone:?} after kill returned");
    drop(l1);
}

/// A libvirt daemon that only has a launcher's name (started outside any virt-launcher, as any
/// pod could run one) is rejected and counted, even while it claims the very VM a real
/// launcher serves; the real launcher's VM is exported from the real one, undisturbed.
#[test]
fn an_impostor_daemon_is_rejected_and_counted_and_the_real_launcher_is_unaffected() {
    let _serial = serial();
    let real = Launcher::start("kvt-real", "kvt-ns_web");
    let (fake, fake_pid) = Launcher::start_rogue("start-impostor", "kvt-fake", "kvt-ns_web");
    let real_pid = launcher(&["pid", &real.0]).trim().to_owned();
    let bridge = Bridge::start_without_libvirt(&["--discovery", "kubevirt", "--poll-interval", "1s", "--no-qga"]);
    let vm = [("namespace", "kvt-ns"), ("name", "web")];
    let e = wait_real_vm_and_rogue_counted(&bridge, "kvt-ns", "web");
    assert!(e.value("vmbridge_launcher_daemons", &[("status", "accepted")]).is_some_and(|n| n >= 1.0));
    assert_real_endpoint_only(&e, &real_pid, &fake_pid);
    assert_eq!(e.value("vmbridge_vm_conflicts", &[]), Some(0.0), "the impostor's claim reached the store");
    assert!(e.value("kubevirt_vmi_cpu_usage_seconds_total", &vm).is_some());
    assert!(
        bridge.log.lock().unwrap().iter().any(|l| l.contains("not taken for launchers") && l.contains(&fake_pid)),
        "the rejection is logged with the impostor's PID"
    );
    drop(fake);
    drop(real);
}

/// A libvirt daemon below a process named `virt-launcher`, in its own mount namespace but
/// without KubeVirt's launcher layout (no virt-launcher command socket
/// `/run/kubevirt/sockets/launcher-sock`): any pod can name its processes so. It is rejected
/// and its VM is never exported, while a launcher with the layout still is.
#[test]
fn a_daemon_named_like_a_launcher_without_kubevirts_layout_is_not_trusted() {
    let _serial = serial();
    let real = Launcher::start("kvt-ok", "kvt-nsok_db");
    let (fake, fake_pid) = Launcher::start_rogue("start-namesake", "kvt-alias", "kvt-nsalias_evil");
    let real_pid = launcher(&["pid", &real.0]).trim().to_owned();
    // The namesake's parent really is named virt-launcher: only the layout tells them apart.
    let ppid = std::fs::read_to_string(format!("/proc/{fake_pid}/stat")).expect("stat");
    let ppid = ppid.rsplit_once(')').expect("stat").1.split_whitespace().nth(1).expect("ppid").to_owned();
    assert_eq!(std::fs::read_to_string(format!("/proc/{ppid}/comm")).expect("comm").trim(), "virt-launcher");
    let bridge = Bridge::start_without_libvirt(&["--discovery", "kubevirt", "--poll-interval", "1s", "--no-qga"]);
    let e = wait_real_vm_and_rogue_counted(&bridge, "kvt-nsok", "db");
    // Two more scans: the namesake's VM never appears.
    std::thread::sleep(Duration::from_secs(3));
    for e in [e, bridge.metrics()] {
        assert!(e.of_vm("evil").is_empty(), "the namesake's VM was exported");
        assert_real_endpoint_only(&e, &real_pid, &fake_pid);
    }
    assert!(
        bridge.log.lock().unwrap().iter().any(|l| l.contains("not taken for launchers") && l.contains(&fake_pid)),
        "the rejection is logged with the namesake's PID"
    );
    drop(fake);
    drop(real);
}
