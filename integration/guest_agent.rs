//! The guest source against a real qemu-guest-agent (`qemu-ga -m unix-listen`, which reports
//! this host as its guest) over the direct-socket transport, plus scripted hostile agents for
//! the faults a real agent cannot be made to produce (garbage, slow-loris, oversized replies,
//! floods of items with nasty names).
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, qemu-ga)

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::agents::*;
use common::*;
use serde_json::{Value, json};

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// The test's own client of a real agent: raw replies, parsed by the test itself.
struct RawClient(BufReader<UnixStream>);

impl RawClient {
    fn connect(path: &Path) -> RawClient {
        let s = UnixStream::connect(path).expect("connect agent");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        RawClient(BufReader::new(s))
    }
    fn call(&mut self, cmd: &str) -> Value {
        writeln!(self.0.get_mut(), "{}", json!({"execute": cmd})).expect("write");
        let mut line = String::new();
        self.0.read_line(&mut line).expect("read");
        serde_json::from_str(&line).expect("agent reply is json")
    }
    fn ret(&mut self, cmd: &str) -> Value {
        let v = self.call(cmd);
        v.get("return").cloned().unwrap_or_else(|| panic!("{cmd}: {v}"))
    }
}

fn config(dir: &Path, vms: &[(&str, &Path)], extra: &str) -> PathBuf {
    let vms: Vec<(&str, &str, &Path)> = vms.iter().map(|(n, p)| ("qga", *n, *p)).collect();
    qga_config(dir, &[], &vms, extra)
}

fn start_bridge(cfg: &Path) -> Bridge {
    Bridge::start_without_libvirt(&["--config", cfg.to_str().expect("utf-8")])
}

type Labels = BTreeMap<String, String>;

fn if_count(reply: &Value) -> usize {
    reply.as_array().map_or(0, Vec::len)
}

/// Every exported guest value equals the agent's own reply for the same command, fetched and
/// parsed by this test; moving counters lie between a reply fetched before vmbridge's poll and
/// one fetched after the scrape.
#[test]
fn direct_socket_values_equal_the_agents_own_replies() {
    let _watchdog = common::watchdog();
    let dir = scratch("values");
    let for_bridge = Agent::start(&dir, "a");
    let for_test = Agent::start(&dir, "b");
    let bridge = start_bridge(&config(&dir, &[("host", &for_bridge.socket)], ""));
    let vm = [("namespace", "qga"), ("name", "host")];
    bridge.wait_for(Duration::from_secs(20), "guest data", |e| e.value("kubevirt_vmi_guest_vcpus", &vm).is_some());

    let mut raw = RawClient::connect(&for_test.socket);
    let cmds = [
        "guest-info",
        "guest-get-fsinfo",
        "guest-network-get-interfaces",
        "guest-get-vcpus",
        "guest-get-osinfo",
        "guest-get-host-name",
        "guest-get-users",
        "guest-get-timezone",
        "guest-get-diskstats",
        "guest-get-cpustats",
        "guest-get-memory-block-info",
    ];
    let before: BTreeMap<&str, Value> = cmds.iter().map(|c| (*c, raw.ret(c))).collect();
    let t0 = now();
    // Wait until every command was polled again after the "before" replies.
    bridge.wait_for(Duration::from_secs(20), "a full poll after the raw replies", |_| {
        let doc: Value = serde_json::from_str(&bridge.get("/debug/vms/qga/host", None).body).expect("json");
        let commands = &doc["sources"]["qga"]["sample"]["commands"];
        cmds.iter().all(|c| commands[*c]["last_ok_at"].as_f64().is_some_and(|t| t > t0))
    });
    let e = bridge.metrics();
    let after: BTreeMap<&str, Value> = cmds.iter().map(|c| (*c, raw.ret(c))).collect();

    let mut checked = 0usize;
    let mut exact = |metric: &str, labels: &[(&str, &str)], want: f64| {
        let mut all = vm.to_vec();
        all.extend_from_slice(labels);
        assert_eq!(e.value(metric, &all), Some(want), "{metric} {labels:?}");
        checked += 1;
    };
    // Static facts: exact.
    let vcpus = before["guest-get-vcpus"].as_array().expect("list");
    exact("kubevirt_vmi_guest_vcpus", &[], vcpus.len() as f64);
    exact("kubevirt_vmi_guest_vcpus_online", &[], vcpus.iter().filter(|c| c["online"] == true).count() as f64);
    exact("kubevirt_vmi_guest_users", &[], before["guest-get-users"].as_array().expect("list").len() as f64);
    exact(
        "kubevirt_vmi_guest_timezone_offset_seconds",
        &[],
        before["guest-get-timezone"]["offset"].as_f64().expect("offset"),
    );
    exact(
        "kubevirt_vmi_guest_memory_block_size_bytes",
        &[],
        before["guest-get-memory-block-info"]["size"].as_f64().expect("size"),
    );
    let version = before["guest-info"]["version"].as_str().expect("version");
    exact("kubevirt_vmi_guest_agent_info", &[("version", version)], 1.0);
    let os = &before["guest-get-osinfo"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let host = s(&before["guest-get-host-name"]["host-name"]);
    // KubeVirt's labels for this family; the host name is a family of its own.
    let os_labels = [
        ("os_name", s(&os["name"])),
        ("os_version", s(&os["version"])),
        ("os_id", s(&os["id"])),
        ("kernel_release", s(&os["kernel-release"])),
        ("machine", s(&os["machine"])),
    ];
    let os_pairs: Vec<(&str, &str)> = os_labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    exact("kubevirt_vmi_guest_os_info", &os_pairs, 1.0);
    exact("kubevirt_vmi_guest_hostname_info", &[("hostname", &host)], 1.0);
    // Addresses: every address in both replies is exported, and nothing outside either (this
    // host's tap devices come and go while lab VMs start and stop).
    let addrs = |reply: &Value| -> Vec<Labels> {
        let mut out = Vec::new();
        for i in reply.as_array().expect("list") {
            for a in i["ip-addresses"].as_array().into_iter().flatten() {
                let l: Labels = [
                    ("namespace", "qga".to_owned()),
                    ("name", "host".to_owned()),
                    ("node", "it-node".to_owned()),
                    ("interface", s(&i["name"])),
                    ("address", s(&a["ip-address"])),
                    ("family", s(&a["ip-address-type"])),
                    ("prefix", a["prefix"].to_string()),
                    ("mac", s(&i["hardware-address"])),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
                out.push(l);
            }
        }
        out
    };
    let (addr_b, addr_a) =
        (addrs(&before["guest-network-get-interfaces"]), addrs(&after["guest-network-get-interfaces"]));
    let got_addrs: Vec<Labels> =
        e.find("kubevirt_vmi_guest_interface_address_info", &vm).iter().map(|s| s.labels.clone()).collect();
    assert!(!addr_b.is_empty(), "the host has addresses");
    // At most 64 addresses and 32 interfaces are exported per VM (the rest are counted as
    // dropped); this host can have more when many lab VMs' taps exist.
    let stable: Vec<&Labels> = addr_b.iter().filter(|a| addr_a.contains(a)).collect();
    if addr_b.len().max(addr_a.len()) <= 64 && if_count(&before["guest-network-get-interfaces"]) <= 32 {
        for a in &stable {
            assert!(got_addrs.contains(a), "address {a:?} not exported");
        }
    } else {
        assert!(got_addrs.len() <= 64);
        assert!(
            e.value("vmbridge_guest_items_dropped_total", &[("name", "host"), ("kind", "address")]).unwrap_or(0.0)
                > 0.0
                || e.value("vmbridge_guest_items_dropped_total", &[("name", "host"), ("kind", "interface")])
                    .unwrap_or(0.0)
                    > 0.0
        );
    }
    for g in &got_addrs {
        assert!(addr_b.contains(g) || addr_a.contains(g), "exported address {g:?} the agent never reported");
    }
    checked += got_addrs.len();

    // Moving values: bracketed.
    let mut bracket = |metric: &str, labels: &[(&str, &str)], b: f64, a: f64| {
        let mut all = vm.to_vec();
        all.extend_from_slice(labels);
        let got = e.value(metric, &all).unwrap_or_else(|| panic!("{metric} {labels:?} missing"));
        assert!(
            got >= b.min(a) - 1e-9 && got <= b.max(a) + 1e-9,
            "{metric} {labels:?} = {got}, agent said {b} then {a}"
        );
        checked += 1;
    };
    let by = |v: &Value, key: &str| -> BTreeMap<String, Value> {
        v.as_array()
            .expect("list")
            .iter()
            .map(|x| (x[key].as_str().map(str::to_owned).unwrap_or_else(|| x[key].to_string()), x.clone()))
            .collect()
    };
    let (fs_b, fs_a) = (by(&before["guest-get-fsinfo"], "mountpoint"), by(&after["guest-get-fsinfo"], "mountpoint"));
    for (mp, f) in fs_b.iter().take(64) {
        let labels = [
            ("disk_name", f["name"].as_str().expect("name")),
            ("mount_point", mp.as_str()),
            ("file_system_type", f["type"].as_str().expect("type")),
        ];
        let Some(fa) = fs_a.get(mp) else { continue };
        if let (Some(b), Some(a)) = (f["used-bytes"].as_f64(), fa["used-bytes"].as_f64()) {
            bracket("kubevirt_vmi_filesystem_used_bytes", &labels, b, a);
        }
        if let Some(t) = f["total-bytes"].as_f64() {
            bracket("kubevirt_vmi_filesystem_capacity_bytes", &labels, t, fa["total-bytes"].as_f64().unwrap_or(t));
        }
    }
    let (if_b, if_a) =
        (by(&before["guest-network-get-interfaces"], "name"), by(&after["guest-network-get-interfaces"], "name"));
    for (name, i) in &if_b {
        for (metric, key) in [
            ("kubevirt_vmi_guest_network_receive_bytes_total", "rx-bytes"),
            ("kubevirt_vmi_guest_network_transmit_packets_total", "tx-packets"),
            ("kubevirt_vmi_guest_network_receive_packets_dropped_total", "rx-dropped"),
        ] {
            let Some(ia) = if_a.get(name) else { continue };
            if e.find("kubevirt_vmi_guest_network_receive_bytes_total", &[("name", "host"), ("interface", name)])
                .is_empty()
            {
                continue; // beyond the interface cap
            }
            if let (Some(b), Some(a)) = (i["statistics"][key].as_f64(), ia["statistics"][key].as_f64()) {
                bracket(metric, &[("interface", name)], b, a);
            }
        }
    }
    let (d_b, d_a) = (by(&before["guest-get-diskstats"], "name"), by(&after["guest-get-diskstats"], "name"));
    for (name, d) in d_b.iter().take(64) {
        let st = |v: &Value, k: &str| v["stats"][k].as_f64();
        for (metric, key, scale) in [
            ("kubevirt_vmi_guest_disk_read_ios_total", "read-ios", 1.0),
            ("kubevirt_vmi_guest_disk_write_bytes_total", "write-sectors", 512.0),
            ("kubevirt_vmi_guest_disk_io_time_seconds_total", "total-ticks", 1e-3),
        ] {
            let Some(da) = d_a.get(name) else { continue };
            if let (Some(b), Some(a)) = (st(d, key), st(da, key)) {
                bracket(metric, &[("disk", name)], b * scale, a * scale);
            }
        }
    }
    let (c_b, c_a) = (by(&before["guest-get-cpustats"], "cpu"), by(&after["guest-get-cpustats"], "cpu"));
    for (cpu, c) in &c_b {
        for mode in ["user", "system", "idle"] {
            bracket(
                "kubevirt_vmi_guest_cpu_seconds_total",
                &[("cpu", cpu), ("mode", mode)],
                c[mode].as_f64().expect("ms") / 1e3,
                c_a[cpu][mode].as_f64().expect("ms") / 1e3,
            );
        }
    }
    // qemu-ga 7.2 has no guest-get-load: no load series, and the debug view says so.
    assert_eq!(e.value("kubevirt_vmi_guest_load_1m", &vm), None);
    let doc: Value = serde_json::from_str(&bridge.get("/debug/vms/qga/host", None).body).expect("json");
    let q = &doc["sources"]["qga"]["sample"];
    assert_eq!(q["transport"], "socket");
    assert_eq!(q["commands"]["guest-get-load"]["supported"], false, "{q}");
    assert!(q["commands"]["guest-get-fsinfo"]["last_reply"].as_str().is_some_and(|r| r.contains("mountpoint")));
    assert!(checked > 20, "only {checked} values compared");
    eprintln!("compared {checked} guest values with the agent's own replies");
}

/// Garbage, slow-loris, oversized and flooding agents, and a SIGSTOPped real agent, each get
/// their own VM's guest source marked failed (or capped); the healthy real agent's VM is not
/// affected, and vmbridge neither panics nor grows without bound.
#[test]
fn hostile_and_hung_agents_are_isolated() {
    let _watchdog = common::watchdog();
    let dir = scratch("hostile");
    let healthy = Agent::start(&dir, "healthy");
    let hung = Agent::start(&dir, "hung");
    let paths: Vec<(&str, PathBuf, Misbehaviour)> = vec![
        ("garbage", dir.join("garbage.sock"), Misbehaviour::Garbage),
        ("slowloris", dir.join("slowloris.sock"), Misbehaviour::SlowLoris),
        ("oversized", dir.join("oversized.sock"), Misbehaviour::Oversized),
        ("flood", dir.join("flood.sock"), Misbehaviour::Flood),
    ];
    for (_, p, m) in &paths {
        hostile_agent(p.clone(), *m);
    }
    let mut vms: Vec<(&str, &Path)> = vec![("healthy", &healthy.socket), ("hung", &hung.socket)];
    vms.extend(paths.iter().map(|(n, p, _)| (*n, p.as_path())));
    let bridge = start_bridge(&config(&dir, &vms, "[qga.limits]\nfilesystems = 10\nlabel_bytes = 64\n"));
    let up = |e: &Exposition, n: &str| e.value("vmbridge_source_up", &[("name", n), ("source", "qga")]);
    let open = |e: &Exposition, n: &str| {
        e.value("vmbridge_breaker_state", &[("name", n), ("source", "qga"), ("state", "open")])
    };
    bridge.wait_for(Duration::from_secs(20), "both real agents up", |e| {
        up(e, "healthy") == Some(1.0) && up(e, "hung") == Some(1.0)
    });
    hung.signal("STOP");
    let started = Instant::now();
    let (e, took) = bridge.wait_for(Duration::from_secs(30), "every misbehaving agent flagged", |e| {
        ["garbage", "slowloris", "oversized", "hung"].iter().all(|n| open(e, n) == Some(1.0) && up(e, n) == Some(0.0))
    });
    eprintln!("all bad agents flagged {took:?} after the hang");
    let errors = |e: &Exposition, n: &str, kind: &str| {
        e.value("vmbridge_source_errors_total", &[("name", n), ("source", "qga"), ("kind", kind)]).unwrap_or(0.0)
    };
    assert!(errors(&e, "garbage", "protocol") >= 1.0);
    assert!(errors(&e, "oversized", "protocol") >= 1.0);
    assert!(errors(&e, "slowloris", "timeout") >= 1.0);
    assert!(errors(&e, "hung", "timeout") >= 1.0);
    let doc: Value = serde_json::from_str(&bridge.get("/debug/vms/qga/oversized", None).body).expect("json");
    assert!(doc["sources"]["qga"]["last_errors"].to_string().contains("reply longer than 1048576 bytes"), "{doc}");

    // The flooding agent is capped, not failed: 10 filesystems exported, the rest counted.
    let flood_fs = e.find("kubevirt_vmi_filesystem_capacity_bytes", &[("name", "flood")]);
    assert_eq!(flood_fs.len(), 10);
    assert!(flood_fs.iter().all(|s| s.labels["mount_point"].len() <= 64 && !s.labels["mount_point"].contains('\n')));
    assert!(e.value("vmbridge_guest_items_dropped_total", &[("name", "flood"), ("kind", "filesystem")]) >= Some(990.0));
    assert_eq!(up(&e, "flood"), Some(1.0));
    assert!(e.text.contains("version=\"evil\\\"1.0?\""), "agent version label escaped and cleaned");

    // The healthy VM never noticed: up and fresh throughout.
    while started.elapsed() < Duration::from_secs(5) {
        let e = bridge.metrics();
        assert_eq!(up(&e, "healthy"), Some(1.0));
        let age = now()
            - e.value("vmbridge_source_last_success_timestamp_seconds", &[("name", "healthy"), ("source", "qga")])
                .expect("ts");
        assert!(age < 3.0, "healthy agent data {age:.1}s old");
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = bridge.get("/healthz", None).status;
    assert_eq!(status, 200, "vmbridge survived");
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", bridge.pid()))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()))
        .expect("rss");
    assert!(rss_kib < 100 * 1024, "RSS {rss_kib} KiB after oversized replies");

    hung.signal("CONT");
    bridge.wait_for(Duration::from_secs(10), "the hung agent to recover", |e| up(e, "hung") == Some(1.0));
}

/// Eight agents answering every command with just under 1 MiB of tiny values (`[0,0,…]`,
/// about 17 MB each once parsed without a bound): each reply is refused while it is parsed,
/// at twice the reply cap, so vmbridge's peak memory stays far below what eight such
/// values would take (before: 183 MB peak on the release binary).
#[test]
fn agents_replying_megabytes_of_tiny_values_are_refused_within_bounded_memory() {
    let _watchdog = common::watchdog();
    let dir = scratch("tiny-values");
    let paths: Vec<(String, PathBuf)> =
        (0..8).map(|i| (format!("tiny{i}"), dir.join(format!("tiny{i}.sock")))).collect();
    for (_, p) in &paths {
        hostile_agent(p.clone(), Misbehaviour::TinyValues);
    }
    let vms: Vec<(&str, &Path)> = paths.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
    let bridge = start_bridge(&config(&dir, &vms, ""));
    let errors = |e: &Exposition, n: &str| {
        e.value("vmbridge_source_errors_total", &[("name", n), ("source", "qga"), ("kind", "protocol")]).unwrap_or(0.0)
    };
    // Every agent's replies refused ten times over (each a megabyte parsed in part).
    let (e, _) = bridge.wait_for(Duration::from_secs(90), "each agent's replies refused 10 times", |e| {
        paths.iter().all(|(n, _)| errors(e, n) >= 10.0)
    });
    for (n, _) in &paths {
        assert_eq!(e.value("vmbridge_source_up", &[("name", n), ("source", "qga")]), Some(0.0), "{n}");
    }
    let doc = bridge.get("/debug/vms/qga/tiny0", None).body;
    assert!(doc.contains("parses into more than 2097152 bytes"), "the cap is named in the last error: {doc}");
    let peak = peak_rss_bytes(bridge.pid());
    eprintln!("peak RSS {} MiB with 8 agents sending 1 MiB of tiny values", peak >> 20);
    assert!(peak < 64 << 20, "RSS peaked at {} MiB", peak >> 20);
}
