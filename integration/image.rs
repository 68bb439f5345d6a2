//! The OCI image runs: the archive `deploy/image/build.sh` wrote (`integration/test.sh` builds
//! it) is unpacked with umoci, and the image's own `vmbridge` runs inside the unpacked root
//! filesystem — chroot in a private mount namespace, as the image config's user, with its
//! entrypoint and environment, the lab's libvirt socket directory and `/proc` bind-mounted, as
//! the DaemonSet mounts them. It must see every lab VM with the values the host binary reports.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (tar, umoci, unshare, chroot)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Families read from libvirt whose values two exporters polling the same idle VMs must agree
/// on (a scrape pair may straddle a change, so the comparison retries).
const SAME_VALUES: &[&str] = &[
    "kubevirt_vmi_domain_state",
    "kubevirt_vmi_memory_domain_bytes",
    "kubevirt_vmi_memory_actual_balloon_bytes",
    "kubevirt_vmi_vcpu_current",
    "kubevirt_vmi_vcpu_maximum",
    "kubevirt_vmi_network_interfaces",
    "kubevirt_vmi_storage_devices",
    "kubevirt_vmi_network_receive_bytes_total",
    "kubevirt_vmi_network_transmit_bytes_total",
    "kubevirt_vmi_network_receive_packets_total",
    "kubevirt_vmi_network_transmit_packets_total",
    "kubevirt_vmi_storage_iops_read_total",
    "kubevirt_vmi_storage_iops_write_total",
    "kubevirt_vmi_storage_read_traffic_bytes_total",
    "kubevirt_vmi_storage_write_traffic_bytes_total",
    "kubevirt_vmi_storage_capacity_bytes",
];

/// Families read from libvirt that change while the VM runs: the same series, not the same values.
const SAME_SERIES: &[&str] = &[
    "kubevirt_vmi_cpu_usage_seconds_total",
    "kubevirt_vmi_cpu_user_usage_seconds_total",
    "kubevirt_vmi_cpu_system_usage_seconds_total",
    "kubevirt_vmi_vcpu_seconds_total",
];

/// The compared part of one exposition: (family, sorted labels) → value, for the given VMs.
fn libvirt_part(e: &Exposition, vms: &BTreeSet<String>) -> BTreeMap<(String, String), f64> {
    e.samples
        .iter()
        .filter(|s| SAME_VALUES.contains(&s.name.as_str()) || SAME_SERIES.contains(&s.name.as_str()))
        .filter(|s| s.labels.get("name").is_some_and(|n| vms.contains(n)))
        .map(|s| {
            let value = if SAME_SERIES.contains(&s.name.as_str()) { 0.0 } else { s.value };
            ((s.name.clone(), format!("{:?}", s.labels)), value)
        })
        .collect()
}

/// A host user and group for the image's uid and gid, created only if the host has none and
/// removed on drop (what an admin of a plain host running the image as its user must do).
struct HostUser {
    created_user: bool,
    created_group: bool,
}

impl HostUser {
    const NAME: &str = "vmbridge-image-it";

    fn ensure(uid: u64, gid: u64) -> HostUser {
        let known = |db: &str, id: u64| {
            Command::new("getent").args([db, &id.to_string()]).output().is_ok_and(|o| o.status.success())
        };
        let created_group = !known("group", gid);
        if created_group {
            run("groupadd", &["-r", "-g", &gid.to_string(), Self::NAME]);
        }
        let created_user = !known("passwd", uid);
        if created_user {
            let (uid, gid) = (uid.to_string(), gid.to_string());
            run(
                "useradd",
                &["-r", "-M", "-u", &uid, "-g", &gid, "-d", "/nonexistent", "-s", "/usr/sbin/nologin", Self::NAME],
            );
        }
        HostUser { created_user, created_group }
    }
}

impl Drop for HostUser {
    fn drop(&mut self) {
        if self.created_user {
            let _ = Command::new("userdel").arg(Self::NAME).status();
        }
        // userdel removes a primary group of the user's name itself.
        let group_left = Command::new("getent").args(["group", Self::NAME]).output().is_ok_and(|o| o.status.success());
        if self.created_group && group_left {
            let _ = Command::new("groupdel").arg(Self::NAME).status();
        }
    }
}

/// The image's vmbridge, killed on drop.
struct Contained(Child);

impl Drop for Contained {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_image_runs_as_its_user_and_reports_what_the_host_binary_reports() {
    let _serial = serial();
    let archive = root().join("target/image/vmbridge.oci.tar");
    assert!(
        archive.exists(),
        "{} is missing: integration/test.sh builds it (bash deploy/image/build.sh)",
        archive.display()
    );
    let work = std::env::temp_dir().join(format!("vmbridge-image-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let layout = work.join("layout");
    std::fs::create_dir_all(&layout).expect("scratch dir");
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(work.clone());

    // Unpack: the archive is an OCI layout; umoci turns its one tag into a runtime bundle.
    run("tar", &["-xf", archive.to_str().unwrap(), "-C", layout.to_str().unwrap()]);
    let tags = run("umoci", &["ls", "--layout", layout.to_str().unwrap()]);
    let tag = tags.lines().next().expect("a tag in the layout").trim().to_owned();
    let bundle = work.join("bundle");
    run("umoci", &["unpack", "--image", &format!("{}:{tag}", layout.display()), bundle.to_str().unwrap()]);
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).expect("config.json")).expect("json");
    let rootfs = bundle.join("rootfs");
    let process = &spec["process"];
    let args: Vec<String> =
        process["args"].as_array().expect("process.args").iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    let env: Vec<String> =
        process["env"].as_array().expect("process.env").iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    let (uid, gid) = (process["user"]["uid"].as_u64().expect("uid"), process["user"]["gid"].as_u64().expect("gid"));
    assert_eq!(args.first().map(String::as_str), Some("/usr/bin/vmbridge"), "entrypoint");
    assert_ne!(uid, 0, "the image must not run as root");
    assert!(Path::new(&rootfs.join("usr/bin/vmbridge")).exists());

    // libvirtd looks up every client's uid in the host's user database and refuses a client it
    // cannot name ("Failed to find user record for uid"). A plain host that runs the image as
    // its user needs that uid known; the test adds it for its run, if missing, and removes it.
    let _host_user = HostUser::ensure(uid, gid);
    let doms: Vec<Domain> = ["iti-a", "iti-b"].iter().map(|n| Domain::new(n)).collect();
    let host = Bridge::start(&["--poll-interval", "1s"]);

    // The image's vmbridge: its entrypoint, environment and user, in the unpacked root; the
    // libvirt sockets and /proc of the host, as the DaemonSet mounts them.
    let script = r#"set -e
r=$1; shift
mkdir -p "$r/run/libvirt" "$r/proc"
mount --bind /run/libvirt "$r/run/libvirt"
mount --rbind /proc "$r/proc"
exec "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"])
        .arg(&rootfs)
        .args(["env", "-i"])
        .args(&env)
        .args(["chroot", &format!("--userspec={uid}:{gid}")])
        .arg(&rootfs)
        .args(&args)
        .args(["--listen", "127.0.0.1:0", "--debug-listen", "off", "--log-json", "--node-name", "it-node"])
        .args(["--libvirt-uri", URI, "--poll-interval", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("unshare");
    let stderr = child.stderr.take().expect("stderr");
    let contained = Contained(child);
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
    let addr = addr.unwrap_or_else(|| panic!("the image's vmbridge did not listen:\n{}", log.join("\n")));
    // The process is the image's binary, running as the image's user.
    let pid = contained.0.id();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert_eq!(exe, rootfs.join("usr/bin/vmbridge"), "not the image's binary");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let real_uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).expect("Uid line");
    assert_eq!(real_uid.split_whitespace().next(), Some(uid.to_string().as_str()), "{real_uid}");

    // Every lab VM, seen by both with their libvirt source up, with the same libvirt values.
    let vms: BTreeSet<String> =
        virsh(&["list", "--name"]).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    assert!(doms.iter().all(|d| vms.contains(&d.name)));
    let all_up = |e: &Exposition| {
        vms.iter().all(|n| e.value("vmbridge_source_up", &[("source", "libvirt"), ("name", n)]) == Some(1.0))
    };
    host.wait_for(Duration::from_secs(30), "every lab VM up on the host binary", all_up);
    let image_metrics = || {
        let r = http_get(addr, "/metrics", None);
        assert_eq!(r.status, 200, "{}", r.body);
        Exposition::parse(&r.body)
    };
    let t = Instant::now();
    let (mut last_host, mut last_image);
    loop {
        let i = image_metrics();
        let h = host.metrics();
        last_image = libvirt_part(&i, &vms);
        last_host = libvirt_part(&h, &vms);
        if all_up(&i) && last_image == last_host {
            break;
        }
        log.extend(rx.try_iter());
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the image's vmbridge never reported what the host binary reports; differences:\n{}\nimage log:\n{}",
            diff(&last_host, &last_image),
            log.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let per_vm: BTreeMap<&str, usize> = vms
        .iter()
        .map(|n| (n.as_str(), last_image.keys().filter(|(_, l)| l.contains(&format!("\"name\": \"{n}\""))).count()))
        .collect();
    assert!(per_vm.values().all(|c| *c >= 10), "too few series compared per VM: {per_vm:?}");
    eprintln!(
        "image {tag} ran as uid {uid}: {} VMs, {} libvirt series equal to the host binary's ({per_vm:?}) after {:?}",
        vms.len(),
        last_image.len(),
        t.elapsed()
    );
    drop(contained);
    drop(doms);
}

fn diff(host: &BTreeMap<(String, String), f64>, image: &BTreeMap<(String, String), f64>) -> String {
    let keys: BTreeSet<_> = host.keys().chain(image.keys()).collect();
    keys.into_iter()
        .filter(|k| host.get(*k) != image.get(*k))
        .take(40)
        .map(|k| format!("  {} {}: host {:?}, image {:?}", k.0, k.1, host.get(k), image.get(k)))
        .collect::<Vec<_>>()
        .join("\n")
}
