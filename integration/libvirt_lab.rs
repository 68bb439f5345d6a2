//! End-to-end tests against the real lab: libvirtd + QEMU domains started by
//! `integration/lab.sh`, and a real `vmbridge` process scraped over HTTP.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, virsh, lab.sh)

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

/// How every core/hypervisor family maps to `virsh domstats` / `virsh dommemstat`, written
/// independently of vmbridge's own mapping: (metric, type, source key, scale).
/// `{N}` is the device index; per-device label values come from `*.N.name`.
const VM_MAP: &[(&str, &str, &str, f64)] = &[
    ("kubevirt_vmi_cpu_usage_seconds_total", "counter", "cpu.time", 1e-9),
    ("kubevirt_vmi_cpu_user_usage_seconds_total", "counter", "cpu.user", 1e-9),
    ("kubevirt_vmi_cpu_system_usage_seconds_total", "counter", "cpu.system", 1e-9),
    // KubeVirt's value: the current balloon size, not the maximum.
    ("kubevirt_vmi_memory_domain_bytes", "gauge", "balloon.current", 1024.0),
    ("kubevirt_vmi_vcpu_current", "gauge", "vcpu.current", 1.0),
    ("kubevirt_vmi_vcpu_maximum", "gauge", "vcpu.maximum", 1.0),
    ("kubevirt_vmi_network_interfaces", "gauge", "net.count", 1.0),
    ("kubevirt_vmi_storage_devices", "gauge", "block.count", 1.0),
];
const MEM_MAP: &[(&str, &str, &str, f64)] = &[
    ("kubevirt_vmi_memory_resident_bytes", "gauge", "rss", 1024.0),
    ("kubevirt_vmi_memory_actual_balloon_bytes", "gauge", "actual", 1024.0),
    ("kubevirt_vmi_memory_available_bytes", "gauge", "available", 1024.0),
    ("kubevirt_vmi_memory_unused_bytes", "gauge", "unused", 1024.0),
    ("kubevirt_vmi_memory_usable_bytes", "gauge", "usable", 1024.0),
    ("kubevirt_vmi_memory_cached_bytes", "gauge", "disk_caches", 1024.0),
    ("kubevirt_vmi_memory_swap_in_traffic_bytes", "gauge", "swap_in", 1024.0),
    ("kubevirt_vmi_memory_swap_out_traffic_bytes", "gauge", "swap_out", 1024.0),
    ("kubevirt_vmi_memory_pgmajfault_total", "counter", "major_fault", 1.0),
    ("kubevirt_vmi_memory_pgminfault_total", "counter", "minor_fault", 1.0),
];
const VCPU_MAP: &[(&str, &str, &str, f64)] = &[
    ("kubevirt_vmi_vcpu_seconds_total", "counter", "time", 1e-9),
    ("kubevirt_vmi_vcpu_wait_seconds_total", "counter", "wait", 1e-9),
    ("kubevirt_vmi_vcpu_delay_seconds_total", "counter", "delay", 1e-9),
];
const NET_MAP: &[(&str, &str, &str, f64)] = &[
    ("kubevirt_vmi_network_receive_bytes_total", "counter", "rx.bytes", 1.0),
    ("kubevirt_vmi_network_transmit_bytes_total", "counter", "tx.bytes", 1.0),
    ("kubevirt_vmi_network_receive_packets_total", "counter", "rx.pkts", 1.0),
    ("kubevirt_vmi_network_transmit_packets_total", "counter", "tx.pkts", 1.0),
    ("kubevirt_vmi_network_receive_errors_total", "counter", "rx.errs", 1.0),
    ("kubevirt_vmi_network_transmit_errors_total", "counter", "tx.errs", 1.0),
    ("kubevirt_vmi_network_receive_packets_dropped_total", "counter", "rx.drop", 1.0),
    ("kubevirt_vmi_network_transmit_packets_dropped_total", "counter", "tx.drop", 1.0),
];
const BLOCK_MAP: &[(&str, &str, &str, f64)] = &[
    ("kubevirt_vmi_storage_iops_read_total", "counter", "rd.reqs", 1.0),
    ("kubevirt_vmi_storage_iops_write_total", "counter", "wr.reqs", 1.0),
    ("kubevirt_vmi_storage_read_traffic_bytes_total", "counter", "rd.bytes", 1.0),
    ("kubevirt_vmi_storage_write_traffic_bytes_total", "counter", "wr.bytes", 1.0),
    ("kubevirt_vmi_storage_read_times_seconds_total", "counter", "rd.times", 1e-9),
    ("kubevirt_vmi_storage_write_times_seconds_total", "counter", "wr.times", 1e-9),
    ("kubevirt_vmi_storage_flush_requests_total", "counter", "fl.reqs", 1.0),
    ("kubevirt_vmi_storage_flush_times_seconds_total", "counter", "fl.times", 1e-9),
    ("kubevirt_vmi_storage_allocation_bytes", "gauge", "allocation", 1.0),
    ("kubevirt_vmi_storage_capacity_bytes", "gauge", "capacity", 1.0),
    ("kubevirt_vmi_storage_physical_bytes", "gauge", "physical", 1.0),
    ("kubevirt_vmi_storage_threshold_bytes", "gauge", "threshold", 1.0),
];

/// A series: metric name and labels.
type SeriesKey = (String, BTreeMap<String, String>);
/// Expected type, virsh value before the poll, virsh value after the scrape.
type Bracket = (String, f64, f64);

/// The family name a `# TYPE` line names for a sample name in the classic text format.
fn type_of<'a>(e: &'a Exposition, sample: &str) -> Option<&'a str> {
    e.types.get(sample).map(String::as_str)
}

/// The `drive` and `interface` label values KubeVirt would give the domain's devices, from
/// `virsh dumpxml` (read here with roxmltree, independently of vmbridge's own reader): the user
/// alias without `ua-`, else the target name. Target name → label, for disks and interfaces.
fn device_labels(dom: &str) -> BTreeMap<String, String> {
    let xml = virsh(&["dumpxml", dom]);
    let doc = roxmltree::Document::parse(&xml).expect("domain XML");
    let mut out = BTreeMap::new();
    for dev in doc.descendants().filter(|n| n.has_tag_name("disk") || n.has_tag_name("interface")) {
        let attr = |tag: &str, a: &str| dev.children().find(|c| c.has_tag_name(tag)).and_then(|c| c.attribute(a));
        if let Some(target) = attr("target", "dev") {
            let label = attr("alias", "name").and_then(|a| a.strip_prefix("ua-")).unwrap_or(target);
            out.insert(target.to_owned(), label.to_owned());
        }
    }
    out
}

/// (vCPU, host CPU) pairs `virsh vcpupin` lists as allowed, e.g. `0  0-1` and `1  0,3`.
fn vcpupin_pairs(dom: &str) -> f64 {
    let mut n = 0usize;
    for line in virsh(&["vcpupin", dom]).lines() {
        let mut cols = line.split_whitespace();
        let (Some(vcpu), Some(set)) = (cols.next(), cols.next()) else { continue };
        if vcpu.parse::<u32>().is_err() {
            continue;
        }
        for part in set.split(',') {
            n += match part.split_once('-') {
                Some((a, b)) => b.parse::<usize>().expect("cpu") - a.parse::<usize>().expect("cpu") + 1,
                None => 1,
            };
        }
    }
    n as f64
}

/// When a process started, Unix seconds, from `/proc/<pid>/stat` (field 22, clock ticks after
/// boot) and `/proc/stat`'s `btime`.
fn process_start(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = stat.rsplit_once(')').expect("comm").1;
    let ticks: f64 = after_name.split_whitespace().nth(19).expect("starttime").parse().expect("number");
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .expect("/proc/stat")
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .expect("btime")
        .trim()
        .parse()
        .expect("number");
    let hz: f64 =
        String::from_utf8(std::process::Command::new("getconf").arg("CLK_TCK").output().expect("getconf").stdout)
            .expect("utf8")
            .trim()
            .parse()
            .expect("CLK_TCK");
    btime + ticks / hz
}

/// Every core/hypervisor value vmbridge exports for a VM equals what `virsh domstats` and
/// `virsh dommemstat` report for it, after unit conversion, with the right type. The VM is
/// paused (`virsh suspend`) so its counters hold still; each value must lie between a virsh
/// reading taken before vmbridge's poll and one taken after the scrape.
#[test]
fn values_equal_virsh_domstats_and_dommemstat() {
    let _serial = serial();
    // A KubeVirt-shaped domain: named <namespace>_<name>, with user aliases on its devices.
    let dom = Domain::new("itv_values");
    let bridge = Bridge::start(&["--poll-interval", "1s", "--poll-timeout", "3s"]);
    let vm = [("namespace", "itv"), ("name", "values"), ("node", "it-node")];
    let labels = device_labels(&dom.name);
    assert_eq!(labels.get("vda").map(String::as_str), Some("rootdisk"), "the lab gives its disk KubeVirt's alias");
    bridge.wait_for(Duration::from_secs(20), "first sample", |e| {
        e.value("kubevirt_vmi_cpu_usage_seconds_total", &vm).is_some()
    });
    virsh(&["suspend", &dom.name]);
    let (before, mem_before) = (domstats(&dom.name), dommemstat(&dom.name));
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    let (e, _) = bridge.wait_for(Duration::from_secs(20), "a poll after the virsh reading", |e| {
        e.value("vmbridge_source_last_success_timestamp_seconds", &[("source", "libvirt"), ("name", "values")])
            .is_some_and(|t| t > t0)
    });
    let (after, mem_after) = (domstats(&dom.name), dommemstat(&dom.name));

    let mut expected: BTreeMap<SeriesKey, Bracket> = BTreeMap::new();
    let base: BTreeMap<String, String> = vm.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut expect = |metric: &str, ty: &str, extra: &[(&str, String)], b: Option<f64>, a: Option<f64>, scale: f64| {
        if let (Some(b), Some(a)) = (b, a) {
            let mut labels = base.clone();
            labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
            expected.insert((metric.to_owned(), labels), (ty.to_owned(), b * scale, a * scale));
        }
    };
    let num = |m: &BTreeMap<String, String>, k: &str| m.get(k).and_then(|v| v.parse::<f64>().ok());
    for (metric, ty, key, scale) in VM_MAP {
        expect(metric, ty, &[], num(&before, key), num(&after, key), *scale);
    }
    for (metric, ty, key, scale) in MEM_MAP {
        expect(metric, ty, &[], mem_before.get(*key).copied(), mem_after.get(*key).copied(), *scale);
    }
    let last_update = |m: &BTreeMap<String, f64>| m.get("last_update").copied().filter(|v| *v > 0.0);
    expect(
        "kubevirt_vmi_memory_stats_last_update_timestamp_seconds",
        "gauge",
        &[],
        last_update(&mem_before),
        last_update(&mem_after),
        1.0,
    );
    for i in 0..num(&after, "vcpu.maximum").unwrap_or(0.0) as usize {
        let state = match before.get(&format!("vcpu.{i}.state")).map(String::as_str) {
            Some("0") => "offline",
            Some("1") => "running",
            Some("2") => "blocked",
            _ => continue,
        };
        for (metric, ty, key, scale) in VCPU_MAP {
            let k = format!("vcpu.{i}.{key}");
            let mut extra = vec![("id", i.to_string())];
            if *metric == "kubevirt_vmi_vcpu_seconds_total" {
                extra.push(("state", state.to_owned()));
            }
            expect(metric, ty, &extra, num(&before, &k), num(&after, &k), *scale);
        }
    }
    for i in 0..num(&after, "net.count").unwrap_or(0.0) as usize {
        let target = after[&format!("net.{i}.name")].clone();
        let name = labels.get(&target).cloned().unwrap_or(target);
        assert_eq!(name, "default", "the lab gives its NIC KubeVirt's alias");
        for (metric, ty, key, scale) in NET_MAP {
            let k = format!("net.{i}.{key}");
            expect(metric, ty, &[("interface", name.clone())], num(&before, &k), num(&after, &k), *scale);
        }
        // KubeVirt's deprecated combined family.
        for (ty, key) in [("rx", "rx.bytes"), ("tx", "tx.bytes")] {
            let k = format!("net.{i}.{key}");
            let extra = [("interface", name.clone()), ("type", ty.to_owned())];
            expect(
                "kubevirt_vmi_network_traffic_bytes_total",
                "counter",
                &extra,
                num(&before, &k),
                num(&after, &k),
                1.0,
            );
        }
    }
    for i in 0..num(&after, "block.count").unwrap_or(0.0) as usize {
        let target = after[&format!("block.{i}.name")].clone();
        let name = labels.get(&target).cloned().unwrap_or(target);
        for (metric, ty, key, scale) in BLOCK_MAP {
            let k = format!("block.{i}.{key}");
            expect(metric, ty, &[("drive", name.clone())], num(&before, &k), num(&after, &k), *scale);
        }
    }
    assert_eq!(before.get("state.state").map(String::as_str), Some("3"), "virsh suspend pauses the domain");
    // Event counters (libvirt's domain event API) since vmbridge started: exactly the one
    // suspension this test caused, nothing else.
    for (to, n) in [("paused", 1.0), ("running", 0.0), ("pmsuspended", 0.0), ("shutdown", 0.0), ("crashed", 0.0)] {
        expect("kubevirt_vmi_state_changes_total", "counter", &[("to", to.into())], Some(n), Some(n), 1.0);
    }
    for initiator in ["guest", "host", "unknown"] {
        expect("kubevirt_vmi_reboots_total", "counter", &[("initiator", initiator.into())], Some(0.0), Some(0.0), 1.0);
    }
    let pairs = vcpupin_pairs(&dom.name);
    expect("kubevirt_vmi_node_cpu_affinity", "gauge", &[], Some(pairs), Some(pairs), 1.0);
    let started = process_start(dom.pid());
    expect("kubevirt_vmi_start_time_seconds", "gauge", &[], Some(started), Some(started), 1.0);
    expect("kubevirt_vmi_agent_connects_total", "counter", &[], Some(0.0), Some(0.0), 1.0);
    expect(
        "kubevirt_vmi_domain_state",
        "gauge",
        &[("state", "paused".into()), ("reason", "user".into())],
        Some(1.0),
        Some(1.0),
        1.0,
    );

    // KubeVirt's panic counter has no node label.
    expected.insert(
        (
            "kubevirt_vmi_guest_os_panic_total".to_owned(),
            [("namespace", "itv"), ("name", "values"), ("type", "unknown"), ("bugcheck_code", "unknown")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ("counter".to_owned(), 0.0, 0.0),
    );

    // Every expected series is exported with a value inside the virsh bracket and the right type…
    let mut checked = 0;
    for ((metric, labels), (ty, b, a)) in &expected {
        let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let got = e.value(metric, &pairs).unwrap_or_else(|| panic!("{metric} {labels:?} not exported"));
        let (lo, hi) = (b.min(*a), b.max(*a));
        let eps = 1e-9 * hi.abs().max(1.0);
        assert!(got >= lo - eps && got <= hi + eps, "{metric} {labels:?} = {got}, virsh said {b} then {a}");
        assert_eq!(type_of(&e, metric), Some(ty.as_str()), "{metric} type");
        checked += 1;
    }
    // …and vmbridge exports no kubevirt_vmi_* series for this VM that virsh cannot vouch for.
    for s in e.of_vm("values").iter().filter(|s| s.name.starts_with("kubevirt_vmi_")) {
        assert!(
            expected.contains_key(&(s.name.clone(), s.labels.clone())),
            "unchecked series {} {:?}",
            s.name,
            s.labels
        );
    }
    assert!(checked >= 30, "only {checked} values compared");
    eprintln!("compared {checked} values with virsh");
    virsh(&["resume", &dom.name]);

    // Pinning the vCPU to one host CPU (a read-only call shows it) makes the affinity 1.
    virsh(&["vcpupin", &dom.name, "0", "0", "--live"]);
    assert_eq!(vcpupin_pairs(&dom.name), 1.0, "virsh vcpupin shows the new pinning");
    bridge.wait_for(Duration::from_secs(20), "the new affinity", |e| {
        e.value("kubevirt_vmi_node_cpu_affinity", &[("name", "values")]) == Some(1.0)
    });
}

/// With one of four VMs SIGSTOPped: scrapes stay prompt, the other VMs keep every series and
/// their CPU counters advance, the stuck VM is flagged (up 0, breaker open) within
/// timeout × threshold, and recovers within the back-off maximum after SIGCONT. Another
/// libvirt client polls every domain throughout, as on a real node.
#[test]
fn a_stopped_vm_is_isolated_flagged_and_recovers() {
    let _serial = serial();
    let doms: Vec<Domain> = (1..=4).map(|i| Domain::new(&format!("its-{i:02}"))).collect();
    let other = OtherClient::start();
    let cfg = std::env::temp_dir().join("vmbridge-it-stuck.toml");
    std::fs::write(&cfg, "[poll]\ninterval = \"1s\"\ntimeout = \"1s\"\nretry_delay = \"100ms\"\n[breaker]\nfailure_threshold = 3\nbackoff_min = \"500ms\"\nbackoff_max = \"3s\"\n").expect("config");
    let bridge = Bridge::start(&["--config", cfg.to_str().expect("utf-8")]);
    let names: Vec<&str> = doms.iter().map(|d| d.name.as_str()).collect();
    // The baseline needs each VM's whole sample: a first poll while the other client holds a
    // domain's job has no block group yet (nothing to carry), and counting from it once made
    // a later, complete sample look like a change (31 → 43 series).
    let (e0, _) = bridge.wait_for(Duration::from_secs(20), "all four VMs, block stats included", |e| {
        names.iter().all(|n| {
            e.value("kubevirt_vmi_cpu_usage_seconds_total", &[("name", n)]).is_some()
                && !e.find("kubevirt_vmi_storage_read_traffic_bytes_total", &[("name", n)]).is_empty()
        })
    });
    let series_count =
        |e: &Exposition, n: &str| e.of_vm(n).iter().filter(|s| s.name.starts_with("kubevirt_vmi_")).count();
    let healthy = &names[..1].iter().chain(&names[2..]).copied().collect::<Vec<_>>();
    let baseline: Vec<(usize, f64)> = healthy
        .iter()
        .map(|n| (series_count(&e0, n), e0.value("kubevirt_vmi_cpu_usage_seconds_total", &[("name", n)]).expect("cpu")))
        .collect();

    doms[1].stop();
    let stopped_at = Instant::now();
    let mut worst_scrape = Duration::ZERO;
    let mut flagged_after = None;
    let open = [("name", names[1]), ("source", "libvirt"), ("state", "open")];
    // Watch for at least 10 s (so idle CPU counters visibly advance), and until flagged.
    while stopped_at.elapsed() < Duration::from_secs(10) || flagged_after.is_none() {
        assert!(stopped_at.elapsed() < Duration::from_secs(30), "stuck VM never flagged");
        let t = Instant::now();
        let e = bridge.metrics();
        worst_scrape = worst_scrape.max(t.elapsed());
        for (n, (count, _)) in healthy.iter().zip(&baseline) {
            assert_eq!(series_count(&e, n), *count, "healthy VM {n} lost series while {} is stopped", names[1]);
            assert_eq!(
                e.value("vmbridge_source_up", &[("source", "libvirt"), ("name", n)]),
                Some(1.0),
                "{n} must stay up"
            );
        }
        if flagged_after.is_none()
            && e.value("vmbridge_breaker_state", &open) == Some(1.0)
            && e.value("vmbridge_source_up", &[("source", "libvirt"), ("name", names[1])]) == Some(0.0)
        {
            flagged_after = Some(stopped_at.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let e = bridge.metrics();
    for (n, (_, cpu0)) in healthy.iter().zip(&baseline) {
        let cpu = e.value("kubevirt_vmi_cpu_usage_seconds_total", &[("name", n)]).expect("cpu");
        assert!(cpu > *cpu0, "{n}: CPU counter did not advance ({cpu0} → {cpu})");
        let age = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64()
            - e.value("vmbridge_source_last_success_timestamp_seconds", &[("source", "libvirt"), ("name", n)])
                .expect("timestamp");
        assert!(age < 3.0, "{n}: data is {age:.1}s old");
    }
    // Who is stuck in the stopped VM's monitor depends on who asked first: vmbridge's own
    // call (abandoned and counted), or the other client's full query, after which vmbridge's
    // NOWAIT calls answer at once without the monitor and the monitor's state gives it away.
    let stuck_calls = e.value("vmbridge_stuck_calls", &[("source", "libvirt"), ("name", names[1])]);
    let doc: serde_json::Value =
        serde_json::from_str(&bridge.get(&format!("/debug/vms/default/{}", names[1]), None).body).expect("json");
    let last_error = doc["sources"]["libvirt"]["last_errors"][0]["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        stuck_calls >= Some(1.0) || last_error.contains("QEMU monitor busy"),
        "neither an abandoned call ({stuck_calls:?}) nor a busy monitor ({last_error:?})"
    );
    let flagged_after = flagged_after.expect("flagged");
    // Wall-clock figures are reported, and bounded only at 10× what they typically measure
    // here, so a loaded 2-core machine cannot fail the test: flagging typically takes ~4.3 s
    // (interval + threshold × (timeout + retry delay)), and the loop above fails it at 30 s;
    // a scrape from memory takes milliseconds, and one that waited on the stopped VM would
    // never finish.
    assert!(worst_scrape < Duration::from_secs(5), "slowest scrape {worst_scrape:?}");

    doms[1].cont();
    // Typically ~1.7 s (back-off maximum 3 s, then the probe).
    let (_, recovered_after) = bridge.wait_for(Duration::from_secs(20), "recovery after SIGCONT", |e| {
        e.value("vmbridge_breaker_state", &[("source", "libvirt"), ("name", names[1]), ("state", "closed")])
            == Some(1.0)
            && e.value("vmbridge_source_up", &[("source", "libvirt"), ("name", names[1])]) == Some(1.0)
    });
    eprintln!(
        "flagged after {flagged_after:?} ({}), recovered {recovered_after:?} after SIGCONT, slowest scrape \
         {worst_scrape:?}, {} rounds of another libvirt client",
        if stuck_calls >= Some(1.0) { "own call stuck" } else { "monitor held by the other client" },
        other.rounds()
    );
}

/// A VM whose QEMU hangs while *another* client's command waits in its monitor: vmbridge's
/// NOWAIT bulk stats still answer at once (without what needs the monitor), so no call of its
/// own ever gets stuck. The monitor's state (`virDomainGetControlInfo`: occupied for N s) still
/// flags the VM within threshold × interval, the healthy VM is untouched, and it recovers when
/// QEMU answers again. This is the order of events the other test can only hit by chance.
#[test]
fn a_hung_vm_whose_monitor_another_client_holds_is_flagged() {
    let _serial = serial();
    let ok = Domain::new("ith-ok");
    let hung = Domain::new("ith-hung");
    hung.stop();
    // The other client: a full query that waits in the stopped QEMU's monitor (killed on drop;
    // libvirtd's own wait ends when QEMU answers).
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _blocked = Kill(
        std::process::Command::new("virsh")
            .args(["-c", URI, "domstats", &hung.name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("virsh"),
    );
    let t = Instant::now();
    while !virsh(&["domcontrol", &hung.name]).contains("occupied") {
        assert!(t.elapsed() < Duration::from_secs(20), "the other client never entered the monitor");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cfg = std::env::temp_dir().join("vmbridge-it-held.toml");
    std::fs::write(&cfg, "[poll]\ninterval = \"1s\"\ntimeout = \"1s\"\nretry_delay = \"100ms\"\n[breaker]\nfailure_threshold = 3\nbackoff_min = \"500ms\"\nbackoff_max = \"2s\"\n").expect("config");
    // --health-detail: the stuck-call gauge is read at 0 below (by default it is exported only while a call is stuck).
    let bridge = Bridge::start(&["--config", cfg.to_str().expect("utf-8"), "--health-detail"]);
    let (e, flagged) = bridge.wait_for(Duration::from_secs(30), "the hung VM flagged", |e| {
        e.value("vmbridge_breaker_state", &[("source", "libvirt"), ("name", "ith-hung"), ("state", "open")])
            == Some(1.0)
            && e.value("vmbridge_source_up", &[("source", "libvirt"), ("name", "ith-hung")]) == Some(0.0)
    });
    assert_eq!(e.value("vmbridge_source_up", &[("source", "libvirt"), ("name", &ok.name)]), Some(1.0));
    assert!(e.value("kubevirt_vmi_cpu_usage_seconds_total", &[("name", &ok.name)]).is_some());
    assert_eq!(
        e.value("vmbridge_stuck_calls", &[("source", "libvirt"), ("name", "ith-hung")]),
        Some(0.0),
        "vmbridge's own calls never waited for the monitor"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&bridge.get("/debug/vms/default/ith-hung", None).body).expect("json");
    let err = &doc["sources"]["libvirt"]["last_errors"][0];
    assert_eq!(err["kind"], "timeout", "{doc}");
    assert!(err["message"].as_str().is_some_and(|m| m.contains("QEMU monitor busy")), "{doc}");
    hung.cont();
    let (_, recovered) = bridge.wait_for(Duration::from_secs(20), "recovery after SIGCONT", |e| {
        e.value("vmbridge_breaker_state", &[("source", "libvirt"), ("name", "ith-hung"), ("state", "closed")])
            == Some(1.0)
            && e.value("vmbridge_source_up", &[("source", "libvirt"), ("name", "ith-hung")]) == Some(1.0)
    });
    eprintln!("flagged {flagged:?} after start, recovered {recovered:?} after SIGCONT; last error: {}", err["message"]);
}

/// A started VM appears and a destroyed VM's series disappear within one poll interval.
#[test]
fn started_vm_appears_and_destroyed_vm_disappears_within_one_interval() {
    let _serial = serial();
    let bridge = Bridge::start(&["--poll-interval", "2s"]);
    bridge.wait_for(Duration::from_secs(10), "readiness", |_| bridge.get("/readyz", None).status == 200);
    let started = Instant::now();
    let dom = Domain::new("itl-new");
    let created = started.elapsed();
    // Discovery lists every interval (2 s); its first poll follows at once: typically 1.6 s,
    // bounded at 10× that.
    let (_, seen) = bridge.wait_for(Duration::from_secs(16), "the new VM", |e| {
        e.value("kubevirt_vmi_cpu_usage_seconds_total", &[("name", "itl-new")]).is_some()
    });
    eprintln!("appeared {seen:?} after creation (creation took {created:?})");
    let gone_start = Instant::now();
    drop(dom);
    let destroy_took = gone_start.elapsed();
    let (_, gone) =
        bridge.wait_for(Duration::from_secs(10), "the destroyed VM to disappear", |e| e.of_vm("itl-new").is_empty());
    assert!(
        gone <= Duration::from_millis(2000 + 500),
        "series stayed {gone:?} after destroy returned (destroy took {destroy_took:?})"
    );
    eprintln!("appeared after {seen:?}, disappeared {gone:?} after destroy");
}

/// A configured URI whose socket does not exist: vmbridge is ready (it can serve the other
/// endpoint's VMs) and says the endpoint is down in `vmbridge_endpoint_up`, not in readiness.
#[test]
fn a_missing_endpoint_is_a_metric_not_unreadiness() {
    let _serial = serial();
    let missing = "qemu+unix:///system?socket=/nonexistent/libvirt-sock";
    let bridge = Bridge::start(&["--libvirt-uri", missing, "--poll-interval", "1s", "--no-qga"]);
    bridge.wait_for(Duration::from_secs(20), "both endpoints tried", |e| {
        e.value("vmbridge_endpoint_up", &[("uri", missing)]) == Some(0.0)
            && e.value("vmbridge_endpoint_up", &[("uri", URI)]) == Some(1.0)
    });
    let r = bridge.get("/readyz", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let index: serde_json::Value = serde_json::from_str(&bridge.get("/debug/vms", None).body).expect("json");
    let ep = index["endpoints"].as_array().and_then(|a| a.iter().find(|e| e["uri"] == missing)).expect("listed");
    assert_eq!(ep["up"], false);
    assert_eq!(ep["attempted"], true);
    assert!(ep["last_error"].as_str().is_some_and(|m| !m.is_empty()), "{ep}");
}

/// KubeVirt names domains `<namespace>_<name>`: they become `namespace` and `name` labels,
/// and the debug endpoint serves them at `/debug/vms/{namespace}/{name}`.
#[test]
fn kubevirt_domain_names_become_namespace_and_name() {
    let _serial = serial();
    let dom = Domain::new("itk-ns_vm-a");
    let bridge = Bridge::start(&["--poll-interval", "1s"]);
    let (e, _) = bridge.wait_for(Duration::from_secs(15), "the VM", |e| {
        e.value("kubevirt_vmi_cpu_usage_seconds_total", &[("namespace", "itk-ns"), ("name", "vm-a")]).is_some()
    });
    assert!(e.of_vm(&dom.name).is_empty(), "the raw domain name must not be used as the VM name");
    let r = bridge.get("/debug/vms/itk-ns/vm-a", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["domain"], "itk-ns_vm-a");
    assert_eq!(bridge.get("/debug/vms/itk-ns/nope", None).status, 404);
}

/// Two live domains that map to one namespace/name (`itw1`, plain, and `itwns_itw1`) with
/// `--default-namespace itwns`: the first discovered keeps the series, the second never
/// silently takes them over, the clash is counted, and destroying the second leaves the first
/// exported (before: the second took over, and after it went the first was never exported again).
#[test]
fn two_domains_claiming_one_name_neither_replaces_the_other() {
    let _serial = serial();
    let first = Domain::new("itw1");
    let bridge = Bridge::start(&["--poll-interval", "1s", "--no-qga", "--default-namespace", "itwns"]);
    let cpu =
        |e: &Exposition| e.value("kubevirt_vmi_cpu_usage_seconds_total", &[("namespace", "itwns"), ("name", "itw1")]);
    let (e, _) = bridge.wait_for(Duration::from_secs(20), "the first VM", |e| cpu(e).is_some());
    let before = cpu(&e).expect("cpu");
    assert_eq!(e.value("vmbridge_vm_conflicts", &[]), Some(0.0));
    let second = Domain::new("itwns_itw1");
    let (e, _) = bridge
        .wait_for(Duration::from_secs(20), "the clash counted", |e| e.value("vmbridge_vm_conflicts", &[]) == Some(1.0));
    let index: serde_json::Value = serde_json::from_str(&bridge.get("/debug/vms", None).body).expect("json");
    let claimants = &index["conflicts"][0]["claimants"];
    assert_eq!(claimants[0]["domain"], "itw1", "{index}");
    assert_eq!(claimants[1]["domain"], "itwns_itw1", "{index}");
    let doc: serde_json::Value = serde_json::from_str(&bridge.get("/debug/vms/itwns/itw1", None).body).expect("json");
    assert_eq!(doc["domain"], "itw1", "the first discovered stays the exported one");
    // Its counter kept going: the series did not switch to the new (younger) domain.
    std::thread::sleep(Duration::from_secs(3));
    let now = cpu(&bridge.metrics()).expect("still exported");
    assert!(now >= before, "CPU went backwards {before} -> {now}: the series switched domains");
    assert_eq!(e.of_vm("itw1").iter().filter(|s| s.name == "kubevirt_vmi_cpu_usage_seconds_total").count(), 1);
    drop(second);
    bridge.wait_for(Duration::from_secs(20), "the clash over", |e| e.value("vmbridge_vm_conflicts", &[]) == Some(0.0));
    std::thread::sleep(Duration::from_secs(2));
    let e = bridge.metrics();
    assert!(cpu(&e).is_some(), "the first VM is still exported after the second went away");
    let doc: serde_json::Value = serde_json::from_str(&bridge.get("/debug/vms/itwns/itw1", None).body).expect("json");
    assert_eq!(doc["domain"], "itw1");
    drop(first);
}

/// `/debug/vms` and `/debug/vms/{ns}/{name}` validate against the checked-in JSON Schemas,
/// including for a VM whose breaker is open.
#[test]
fn debug_documents_match_their_json_schemas() {
    let _serial = serial();
    let ok = Domain::new("itd-ok");
    let stuck = Domain::new("itd-stuck");
    let cfg = std::env::temp_dir().join("vmbridge-it-debug.toml");
    std::fs::write(&cfg, "[poll]\ninterval = \"1s\"\ntimeout = \"500ms\"\nretry_delay = \"50ms\"\n").expect("config");
    let bridge = Bridge::start(&["--config", cfg.to_str().expect("utf-8")]);
    bridge.wait_for(Duration::from_secs(15), "both VMs", |e| {
        ["itd-ok", "itd-stuck"]
            .iter()
            .all(|n| e.value("vmbridge_source_up", &[("source", "libvirt"), ("name", n)]) == Some(1.0))
    });
    stuck.stop();
    bridge.wait_for(Duration::from_secs(15), "the breaker to open", |e| {
        e.value("vmbridge_breaker_state", &[("source", "libvirt"), ("name", "itd-stuck"), ("state", "open")])
            == Some(1.0)
    });
    let load = |p: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(root().join(p)).expect("schema file")).expect("schema json")
    };
    let index_schema = jsonschema::validator_for(&load("schemas/debug-vms.schema.json")).expect("valid schema");
    let vm_schema = jsonschema::validator_for(&load("schemas/debug-vm.schema.json")).expect("valid schema");
    let r = bridge.get("/debug/vms", None);
    assert_eq!((r.status, r.content_type.as_str()), (200, "application/json"));
    let index: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    let errs: Vec<String> = index_schema.iter_errors(&index).map(|e| e.to_string()).collect();
    assert!(errs.is_empty(), "index invalid: {errs:?}");
    for name in [&ok.name, &stuck.name] {
        let r = bridge.get(&format!("/debug/vms/default/{name}"), None);
        let doc: serde_json::Value = serde_json::from_str(&r.body).expect("json");
        let errs: Vec<String> = vm_schema.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errs.is_empty(), "{name} invalid: {errs:?}");
    }
    let doc: serde_json::Value =
        serde_json::from_str(&bridge.get("/debug/vms/default/itd-stuck", None).body).expect("json");
    let src = &doc["sources"]["libvirt"];
    assert_eq!(src["breaker"]["state"], "open");
    assert!(src["breaker"]["history"].as_array().is_some_and(|h| !h.is_empty()));
    assert_eq!(src["last_errors"][0]["kind"], "timeout");
    assert!(src["sample"]["params"]["cpu.time"].is_number(), "raw last sample kept: {src}");
    // A bogus-but-valid-schema document would pass anything: prove the schema rejects a broken one.
    let mut broken = doc.clone();
    broken["sources"]["libvirt"]["breaker"]["state"] = serde_json::json!("exploded");
    assert!(!vm_schema.is_valid(&broken));
}

/// `/metrics` serves the classic text format by default and OpenMetrics when asked.
#[test]
fn metrics_content_negotiation() {
    let _serial = serial();
    let _dom = Domain::new("itm-a");
    let bridge = Bridge::start(&["--poll-interval", "1s"]);
    bridge.wait_for(Duration::from_secs(15), "the VM", |e| {
        e.value("kubevirt_vmi_cpu_usage_seconds_total", &[("name", "itm-a")]).is_some()
    });
    let text = bridge.get("/metrics", None);
    assert!(text.content_type.starts_with("text/plain; version=0.0.4"), "{}", text.content_type);
    assert!(text.body.contains("# TYPE kubevirt_vmi_cpu_usage_seconds_total counter"));
    assert!(!text.body.contains("# EOF"));
    let om =
        bridge.get("/metrics", Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2"));
    assert!(om.content_type.starts_with("application/openmetrics-text"), "{}", om.content_type);
    assert!(om.body.contains("# TYPE kubevirt_vmi_cpu_usage_seconds counter"));
    assert!(om.body.contains("# UNIT kubevirt_vmi_cpu_usage_seconds seconds"));
    assert!(om.body.ends_with("# EOF\n"));
    assert_eq!(bridge.get("/healthz", None).status, 200);
    assert_eq!(bridge.get("/nope", None).status, 404);
}

/// No fd or thread growth over 50 poll cycles while one VM is stuck: the abandoned call holds
/// one blocking thread and is never duplicated.
#[test]
fn no_fd_or_thread_growth_with_a_stuck_vm() {
    // Every VM polled alone: the stuck VM's own call is the one stuck.
    fds_and_threads_stay_flat_with_a_stuck_vm("itf", "batch_window = \"0s\"\n", true);
}

/// The same with batched bulk stats (both VMs on one daemon): the call stuck on the hung VM is
/// a batch's, which its members stopped waiting for; the hung VM's own calls then return (its
/// job is held, libvirt skips what needs it) and fail on the monitor's state. Still at most one
/// stuck call, and no growth.
#[test]
fn no_fd_or_thread_growth_with_a_stuck_vm_and_batched_stats() {
    fds_and_threads_stay_flat_with_a_stuck_vm("itg", "batch_window = \"50ms\"\n", false);
}

fn fds_and_threads_stay_flat_with_a_stuck_vm(prefix: &str, libvirt: &str, own_call_stuck: bool) {
    let _serial = serial();
    let ok = Domain::new(&format!("{prefix}-ok"));
    let stuck = Domain::new(&format!("{prefix}-stuck"));
    let cfg = std::env::temp_dir().join(format!("vmbridge-it-fds-{prefix}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[poll]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nretry_delay = \"50ms\"\n[breaker]\nbackoff_min = \"200ms\"\nbackoff_max = \"400ms\"\n[libvirt]\n{libvirt}"
        ),
    )
    .expect("config");
    // --health-detail: poll counts are only exported with it.
    let bridge = Bridge::start(&["--config", cfg.to_str().expect("utf-8"), "--health-detail"]);
    bridge.wait_for(Duration::from_secs(15), "both VMs", |e| {
        [&ok.name, &stuck.name]
            .iter()
            .all(|n| e.value("vmbridge_source_up", &[("source", "libvirt"), ("name", n)]) == Some(1.0))
    });
    stuck.stop();
    let stuck_name = stuck.name.clone();
    if own_call_stuck {
        bridge.wait_for(Duration::from_secs(15), "the stuck call", |e| {
            e.value("vmbridge_stuck_calls", &[("source", "libvirt"), ("name", &stuck_name)]) == Some(1.0)
        });
    } else {
        bridge.wait_for(Duration::from_secs(15), "the stuck VM flagged", |e| {
            e.value("vmbridge_source_up", &[("source", "libvirt"), ("name", &stuck_name)]) == Some(0.0)
        });
    }
    std::thread::sleep(Duration::from_secs(2));
    let polls = |e: &Exposition| {
        e.value("vmbridge_source_polls_total", &[("source", "libvirt"), ("name", &stuck_name)]).unwrap_or(0.0)
    };
    let p0 = polls(&bridge.metrics());
    let (fds0, threads0) = fds_and_threads(bridge.pid());
    let ok_name = ok.name.clone();
    let ok_polls0 = bridge
        .metrics()
        .value("vmbridge_source_polls_total", &[("source", "libvirt"), ("name", &ok_name)])
        .unwrap_or(0.0);
    bridge.wait_for(Duration::from_secs(60), "50 poll cycles", |e| {
        e.value("vmbridge_source_polls_total", &[("source", "libvirt"), ("name", &ok_name)]).unwrap_or(0.0)
            >= ok_polls0 + 50.0
    });
    let (fds1, threads1) = fds_and_threads(bridge.pid());
    let e = bridge.metrics();
    assert!(polls(&e) > p0, "the stuck VM kept being probed ({p0} → {})", polls(&e));
    let stuck_calls = e.value("vmbridge_stuck_calls", &[("source", "libvirt"), ("name", &stuck_name)]);
    if own_call_stuck {
        assert_eq!(stuck_calls, Some(1.0), "one stuck call, never a second");
    } else {
        assert!(stuck_calls.is_some_and(|n| n <= 1.0), "one stuck call at most, never a second: {stuck_calls:?}");
        assert_eq!(e.value("vmbridge_source_up", &[("source", "libvirt"), ("name", &stuck_name)]), Some(0.0));
        assert_eq!(e.value("vmbridge_source_up", &[("source", "libvirt"), ("name", &ok_name)]), Some(1.0));
    }
    assert!(fds1 <= fds0, "fds grew {fds0} → {fds1}");
    // The leak this guards against is a thread per stuck poll: 50 or more here. tokio's blocking
    // pool itself spawns a thread when calls overlap (the stuck call, the other VM's, an agent
    // call, an encode) and keeps it idle for 10 s, so one more at the second count is not growth
    // (seen once on CI: 9 → 10).
    assert!(threads1 <= threads0 + 2, "threads grew {threads0} → {threads1} over 50 poll cycles");
    eprintln!("fds {fds0} → {fds1}, threads {threads0} → {threads1}");
}

/// SIGTERM must end vmbridge promptly even while a libvirt call is stuck in a SIGSTOPped QEMU
/// (it never returns) and clients hold HTTP connections open: a half-sent request and an idle
/// keep-alive on the public port, and one on the debug port. The exit is bounded by design
/// (2 s drain + 1 s for blocking threads); 5 s is the pod-side promise.
#[test]
fn sigterm_with_a_stopped_vm_and_open_connections_exits_0_within_5s() {
    use std::io::Write;
    let _serial = serial();
    let stopped = Domain::new("itl-term");
    let mut bridge = Bridge::start(&["--no-qga", "--poll-interval", "1s", "--poll-timeout", "1s"]);
    bridge.wait_for(Duration::from_secs(30), "the VM up", |e| {
        e.value("vmbridge_source_up", &[("name", "itl-term"), ("source", "libvirt")]) == Some(1.0)
    });
    stopped.stop();
    bridge.wait_for(Duration::from_secs(60), "a libvirt call stuck in the stopped VM", |e| {
        e.value("vmbridge_source_up", &[("name", "itl-term"), ("source", "libvirt")]) == Some(0.0)
    });
    let mut half = std::net::TcpStream::connect(bridge.addr).expect("connect");
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").expect("half-sent request");
    let mut idle = std::net::TcpStream::connect(bridge.addr).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut buf = [0u8; 512];
    let n = std::io::Read::read(&mut idle, &mut buf).expect("reply");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "keep-alive reply");
    let mut debug_half = std::net::TcpStream::connect(bridge.debug_addr).expect("connect");
    debug_half.write_all(b"GET /debug/vms HTTP/1.1\r\n").expect("half-sent request");
    let (status, took) = bridge.terminate(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!("vmbridge still running 5 s after SIGTERM");
    });
    eprintln!("exit after SIGTERM: {status} in {:.2}s", took.as_secs_f64());
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let log = bridge.log.lock().unwrap().join("\n");
    assert!(log.contains("shutting down") && log.contains("vmbridge stopped"), "{log}");
    drop((half, idle, debug_half));
}

/// A disk hot-plugged into a running VM gets KubeVirt's label (its user alias without `ua-`)
/// on every drive family, without restarting anything: the changed device set makes vmbridge
/// read the domain XML again. Unplugged, its series go.
#[test]
fn a_hot_plugged_disk_is_labelled_by_its_alias_and_unplugged_goes() {
    let _serial = serial();
    let dom = Domain::new("ith_plug");
    let bridge = Bridge::start(&["--poll-interval", "1s"]);
    let vm = |drive: &'static str| [("namespace", "ith"), ("name", "plug"), ("drive", drive)];
    bridge.wait_for(Duration::from_secs(20), "the lab disk by its alias", |e| {
        e.value("kubevirt_vmi_storage_iops_read_total", &vm("rootdisk")).is_some()
    });
    let dir = std::env::temp_dir().join(format!("vmbridge-hotplug-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let image = dir.join("hot.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", image.to_str().expect("path"), "16M"])
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "qemu-img: {}", String::from_utf8_lossy(&out.stderr));
    let xml = dir.join("hot.xml");
    std::fs::write(
        &xml,
        format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/>\
             <target dev='sdb' bus='usb'/><alias name='ua-hotdisk'/></disk>",
            image.display()
        ),
    )
    .expect("xml");
    virsh(&["attach-device", &dom.name, xml.to_str().expect("path"), "--live"]);
    let (e, _) = bridge.wait_for(Duration::from_secs(20), "the hot-plugged disk by its alias", |e| {
        e.value("kubevirt_vmi_storage_capacity_bytes", &vm("hotdisk")).is_some()
    });
    assert_eq!(e.value("kubevirt_vmi_storage_capacity_bytes", &vm("hotdisk")), Some(16.0 * 1024.0 * 1024.0));
    assert!(e.value("kubevirt_vmi_storage_iops_read_total", &vm("hotdisk")).is_some());
    assert_eq!(e.value("kubevirt_vmi_storage_devices", &[("name", "plug")]), Some(2.0));
    assert!(e.find("kubevirt_vmi_storage_iops_read_total", &[("name", "plug"), ("drive", "sdb")]).is_empty());
    virsh(&["detach-device", &dom.name, xml.to_str().expect("path"), "--live"]);
    bridge.wait_for(Duration::from_secs(20), "the unplugged disk's series to go", |e| {
        e.value("kubevirt_vmi_storage_capacity_bytes", &vm("hotdisk")).is_none()
            && e.value("kubevirt_vmi_storage_devices", &[("name", "plug")]) == Some(1.0)
    });
    let _ = std::fs::remove_dir_all(&dir);
}
