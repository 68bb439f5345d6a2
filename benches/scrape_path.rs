//! Synthetic scrape-path benchmark: vmbridge's `/metrics` work for 10, 100 and 1,000 VMs
//! without libvirt, QEMU or HTTP.
//!
//! Run: `cargo bench --bench scrape_path` (release profile). Environment:
//!   SCRAPE_PATH_SIZES   VM counts, comma-separated (default `10,100,1000`)
//!   SCRAPE_PATH_ITERS   measured scrapes per size and profile (default 300, at least 200)
//!   SCRAPE_PATH_OUT     also write the final JSON line to this file
//!
//! For each profile and size it builds a snapshot store the way `src/collector/tests.rs`
//! does, with realistic per-VM data (every VM its own sample, values differ per VM), and
//! measures what `/metrics` does (`VmCollector::render_bytes`: each family's header, then every
//! VM's pre-encoded sample lines of that family), against a plain copy of the same
//! exposition into a new buffer (`memcpy`, the floor). No HTTP, no sockets.
//!
//! Profiles:
//!   `libvirt`      libvirt source only: 2 vCPUs, 1 NIC, 2 disks, every balloon and memory
//!                  stat, plus a guest-agent source with no sample (what the lab looks like:
//!                  no guest OS, agent breaker open)
//!   `libvirt+qga`  the same plus a full guest-agent sample (filesystems, interfaces,
//!                  OS info, users, load, disk and CPU stats)
//!
//! Per size and profile it reports: scrape p50/p99 in both formats and the thread CPU of one;
//! the memcpy peer and the ratio; a cold encode of every VM (what every scrape did before
//! the series were pre-encoded, and what a poll cycle's publishes now do); gzip at levels 1,
//! 3 and 6 (bytes, ratio, time, CPU per scrape with and without it) and a gzip scrape that
//! reuses the compressed body; exposition bytes, series and series per VM by family group;
//! the process RSS growth per VM of holding the store and the pre-encoded series (in a fresh
//! child process per size, so memory freed by a previous size cannot hide the growth); and
//! the CPU of the non-I/O half of one poll cycle (parse every VM's libvirt reply and publish
//! it), with the encode the publish triggers and without it. The last stdout line is one
//! JSON object.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde_json::json;
use vmbridge::breaker::{Breaker, BreakerConfig};
use vmbridge::collector::VmCollector;
use vmbridge::model::text::Format;
use vmbridge::source::SourceKind;
use vmbridge::source::SourceSample;
use vmbridge::source::libvirt::{LibvirtSample, ParamValue};
use vmbridge::source::qga::{GuestLimits, QgaSample};
use vmbridge::store::{SourceSnapshot, Store, VmSnapshot};
use vmbridge::vm::VmId;

const URI: &str = "qemu:///system";
const NODE: &str = "node-1";
const STALENESS: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Profile {
    Libvirt,
    LibvirtQga,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Libvirt => "libvirt",
            Profile::LibvirtQga => "libvirt+qga",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "libvirt" => Some(Profile::Libvirt),
            "libvirt+qga" => Some(Profile::LibvirtQga),
            _ => None,
        }
    }
}

/// What `virConnectGetAllDomainStats` returns for a running VM with 2 vCPUs, 1 NIC and
/// 2 disks (state, cpu, balloon, vcpu, net, block groups), values varied by `i`.
fn params(i: usize) -> Vec<(String, ParamValue)> {
    use ParamValue::*;
    let k = i as u64;
    let mut p: Vec<(String, ParamValue)> = Vec::with_capacity(96);
    let mut put = |key: String, v: ParamValue| p.push((key, v));
    put("state.state".into(), Int(1));
    put("state.reason".into(), Int(1));
    put("cpu.time".into(), UInt(1_500_000_000 + 7_919 * k));
    put("cpu.user".into(), UInt(1_000_000_000 + 3_001 * k));
    put("cpu.system".into(), UInt(500_000_000 + 1_009 * k));
    put("cpu.haltpoll.success.time".into(), UInt(0));
    put("cpu.haltpoll.fail.time".into(), UInt(0));
    for (f, v) in [
        ("current", 1_048_576),
        ("maximum", 2_097_152),
        ("swap_in", 0),
        ("swap_out", 0),
        ("major_fault", 312 + k),
        ("minor_fault", 190_211 + k),
        ("unused", 612_004 + k),
        ("available", 1_012_244),
        ("usable", 780_112 + k),
        ("last-update", 1_763_700_000 + k),
        ("disk_caches", 201_312 + k),
        ("hugetlb_pgalloc", 0),
        ("hugetlb_pgfail", 0),
        ("rss", 402_116 + k),
    ] {
        put(format!("balloon.{f}"), UInt(v));
    }
    put("vcpu.current".into(), UInt(2));
    put("vcpu.maximum".into(), UInt(2));
    for c in 0..2u64 {
        put(format!("vcpu.{c}.state"), Int(1));
        put(format!("vcpu.{c}.time"), UInt(700_000_000 + 11 * k + c));
        put(format!("vcpu.{c}.wait"), UInt(0));
        put(format!("vcpu.{c}.delay"), UInt(12_000 + k));
        put(format!("vcpu.{c}.halted"), Bool(false));
    }
    put("net.count".into(), UInt(1));
    put("net.0.name".into(), Str(format!("vnet{i}")));
    for (f, v) in [
        ("rx.bytes", 10_240 + k),
        ("rx.pkts", 120 + k),
        ("rx.errs", 0),
        ("rx.drop", 0),
        ("tx.bytes", 20_480 + k),
        ("tx.pkts", 240 + k),
        ("tx.errs", 0),
        ("tx.drop", 0),
    ] {
        put(format!("net.0.{f}"), UInt(v));
    }
    put("block.count".into(), UInt(2));
    for (b, dev) in ["vda", "vdb"].into_iter().enumerate() {
        put(format!("block.{b}.name"), Str(dev.into()));
        put(format!("block.{b}.path"), Str(format!("/var/lib/vms/vm-{i:04}/{dev}.qcow2")));
        put(format!("block.{b}.backingIndex"), UInt(1));
        for (f, v) in [
            ("rd.reqs", 3_000 + k),
            ("rd.bytes", 40_960_000 + k),
            ("rd.times", 250_000_000 + k),
            ("wr.reqs", 1_000 + k),
            ("wr.bytes", 5_120_000 + k),
            ("wr.times", 90_000_000 + k),
            ("fl.reqs", 100 + k),
            ("fl.times", 1_000_000 + k),
            ("allocation", 1_073_741_824 + k),
            ("capacity", 10_737_418_240),
            ("physical", 1_073_741_824 + k),
        ] {
            put(format!("block.{b}.{f}"), UInt(v));
        }
    }
    p
}

/// `virDomainMemoryStats`: every tag from 0 (swap_in) to 10 (disk_caches), as the lab's
/// balloon with a stats period reports them.
fn memory(i: usize) -> Vec<(u32, u64)> {
    (0..=10).map(|t| (t, 100_000 + u64::from(t) * 1_000 + i as u64)).collect()
}

fn guest(i: usize) -> QgaSample {
    let mut q = QgaSample { transport: "libvirt".into(), ..Default::default() };
    let lim = GuestLimits::default();
    let replies = [
        ("guest-info", json!({"version": "9.1.0", "supported_commands": []})),
        (
            "guest-get-fsinfo",
            json!([
                {"name": "vda1", "mountpoint": "/", "type": "ext4", "disk": [], "total-bytes": 10_000_000_000u64, "used-bytes": 4_000_000_000u64 + i as u64},
                {"name": "vdb1", "mountpoint": "/data", "type": "xfs", "disk": [], "total-bytes": 50_000_000_000u64, "used-bytes": 1_000_000_000u64 + i as u64}
            ]),
        ),
        (
            "guest-network-get-interfaces",
            json!([
                {"name": "lo", "hardware-address": "00:00:00:00:00:00",
                 "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}],
                 "statistics": {"rx-bytes": 1, "rx-packets": 2, "rx-errs": 0, "rx-dropped": 0, "tx-bytes": 3, "tx-packets": 4, "tx-errs": 0, "tx-dropped": 0}},
                {"name": "eth0", "hardware-address": format!("52:54:00:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff),
                 "ip-addresses": [{"ip-address": format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff), "ip-address-type": "ipv4", "prefix": 16}],
                 "statistics": {"rx-bytes": 1000 + i, "rx-packets": 20, "rx-errs": 0, "rx-dropped": 0, "tx-bytes": 3000 + i, "tx-packets": 40, "tx-errs": 0, "tx-dropped": 0}}
            ]),
        ),
        (
            "guest-get-vcpus",
            json!([{"logical-id": 0, "online": true, "can-offline": false}, {"logical-id": 1, "online": true, "can-offline": true}]),
        ),
        (
            "guest-get-osinfo",
            json!({"id": "debian", "name": "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 12 (bookworm)", "version-id": "12", "kernel-release": "6.1.0-28-amd64", "machine": "x86_64"}),
        ),
        ("guest-get-host-name", json!({"host-name": format!("vm-{i:04}")})),
        ("guest-get-users", json!([{"user": "root", "login-time": 1.5}])),
        ("guest-get-timezone", json!({"zone": "UTC", "offset": 0})),
        ("guest-get-load", json!({"load1": 0.5, "load5": 0.25, "load15": 0.125})),
        (
            "guest-get-diskstats",
            json!([
                {"name": "vda", "major": 254, "minor": 0, "stats": {"read-ios": 10 + i, "read-sectors": 20, "read-ticks": 1500,
                 "write-ios": 1, "write-sectors": 2, "write-ticks": 3, "flush-ios": 4, "flush-ticks": 5, "ios-pgr": 0, "total-ticks": 6}},
                {"name": "vdb", "major": 254, "minor": 16, "stats": {"read-ios": 10, "read-sectors": 20, "read-ticks": 1500,
                 "write-ios": 1 + i, "write-sectors": 2, "write-ticks": 3, "flush-ios": 4, "flush-ticks": 5, "ios-pgr": 0, "total-ticks": 6}}
            ]),
        ),
        (
            "guest-get-cpustats",
            json!([
                {"type": "linux", "cpu": 0, "user": 2500 + i, "nice": 0, "system": 100, "idle": 9000, "iowait": 10, "irq": 0, "softirq": 1, "steal": 0, "guest": 0, "guestnice": 0},
                {"type": "linux", "cpu": 1, "user": 2400 + i, "nice": 0, "system": 90, "idle": 9100, "iowait": 11, "irq": 0, "softirq": 2, "steal": 0, "guest": 0, "guestnice": 0}
            ]),
        ),
        ("guest-get-memory-block-info", json!({"size": 134217728})),
    ];
    for (cmd, v) in replies {
        q.data.apply(cmd, &v, &lim, &mut q.dropped, &mut q.rejected).expect("guest fixture parses");
    }
    q
}

fn snapshot(
    sample: Option<SourceSample>,
    last_success_at: Option<f64>,
    now: tokio::time::Instant,
) -> Arc<SourceSnapshot> {
    Arc::new(SourceSnapshot {
        sample: sample.map(Arc::new),
        last_success_at,
        last_attempt_at: Some(vmbridge::clock::now_unix()),
        last_poll_duration_seconds: Some(0.012),
        effective_interval_seconds: None,
        stretched: false,
        monitor: None,
        polls_total: 120,
        errors_total: BTreeMap::new(),
        last_errors: VecDeque::new(),
        breaker: Breaker::new(BreakerConfig::default()).view(now),
        stuck_calls: Arc::new(AtomicU64::new(0)),
    })
}

fn vm_id(i: usize) -> (VmId, String) {
    (
        VmId { namespace: format!("ns-{}", i % 10), name: format!("vm-{i:04}") },
        format!("6d3c1e2a-0000-4000-8000-{i:012}"),
    )
}

/// A store holding `n` VMs with fresh samples, as the supervisor leaves it after a poll cycle.
fn build_store(n: usize, profile: Profile) -> Arc<Store> {
    let store = Arc::new(Store::new([URI]));
    store.endpoint_listed(URI, n);
    let now_unix = vmbridge::clock::now_unix();
    let now = tokio::time::Instant::now();
    for i in 0..n {
        let (id, uuid) = vm_id(i);
        let mut sources = BTreeMap::new();
        let lv = SourceSample::Libvirt(LibvirtSample::new(params(i), memory(i)));
        sources.insert(SourceKind::Libvirt, snapshot(Some(lv), Some(now_unix), now));
        let qga = match profile {
            Profile::Libvirt => snapshot(None, None, now),
            Profile::LibvirtQga => snapshot(Some(SourceSample::Qga(guest(i))), Some(now_unix), now),
        };
        sources.insert(SourceKind::Qga, qga);
        store.insert_vm(VmSnapshot {
            domain: format!("{}_{}", id.namespace, id.name),
            id,
            uuid,
            endpoint: URI.into(),
            discovered_at: now_unix - 3600.0,
            sources,
            revision: 0,
        });
    }
    store
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    let k = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[k.min(sorted.len()) - 1]
}

/// Child mode: RSS growth of building and holding a store of `n` VMs and the collector's
/// pre-encoded series, and after one scrape, printed as one JSON line.
fn rss_child(profile: Profile, n: usize) {
    // Touch the allocator and the encoder once with a tiny store so their fixed start-up
    // cost is not charged to the VMs.
    {
        let c = VmCollector::new(build_store(1, profile), NODE.into(), STALENESS).observing();
        std::hint::black_box(c.render(Format::Prometheus));
    }
    let before = rss_kib();
    let store = build_store(n, profile);
    let held = rss_kib();
    let collector = VmCollector::new(store.clone(), NODE.into(), STALENESS).observing();
    // The first scrape encodes every VM (as the publishes of a poll cycle would).
    drop(collector.render(Format::Prometheus));
    let encoded = rss_kib();
    let text = collector.render(Format::Prometheus);
    let after_scrape = rss_kib();
    println!(
        "{}",
        json!({"n": n, "profile": profile.name(), "rss_before_kib": before, "rss_store_kib": held,
               "rss_encoded_kib": encoded, "rss_after_scrape_kib": after_scrape,
               "vms": store.vms().len(), "bytes": text.len()})
    );
}

// The benchmark re-executes itself (a fresh process per size); vmbridge itself never execs.
#[allow(clippy::disallowed_methods)]
fn measure_rss(profile: Profile, n: usize) -> serde_json::Value {
    let exe = std::env::current_exe().expect("current_exe");
    let out = std::process::Command::new(exe)
        .args(["--rss-child", profile.name(), &n.to_string()])
        .output()
        .expect("spawn rss child");
    assert!(out.status.success(), "rss child failed: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.lines().last().unwrap_or("{}")).expect("rss child json")
}

/// The non-I/O part of one poll cycle: parse every VM's libvirt reply and publish it.
fn poll_cycle_cpu(store: &Store, n: usize, rounds: usize) -> (f64, f64) {
    let replies: Vec<_> = (0..n).map(|i| (params(i), memory(i))).collect();
    let now = tokio::time::Instant::now();
    let mut wall = Vec::with_capacity(rounds);
    let mut cpu = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let batch = replies.clone(); // the FFI layer hands over owned vectors too
        let (t0, c0) = (Instant::now(), thread_cpu());
        let ts = vmbridge::clock::now_unix();
        for (i, (p, m)) in batch.into_iter().enumerate() {
            let (_, uuid) = vm_id(i);
            let s = SourceSample::Libvirt(LibvirtSample::new(p, m));
            store.publish(
                &vmbridge::store::VmKey::new(URI, uuid),
                SourceKind::Libvirt,
                snapshot(Some(s), Some(ts), now),
            );
        }
        wall.push(t0.elapsed().as_secs_f64());
        cpu.push((thread_cpu() - c0).as_secs_f64());
    }
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (pct(&wall, 50.0), pct(&cpu, 50.0))
}

/// Series per VM by the catalogue's family group, from an exposition of `n` VMs.
fn series_by_group(text: &str, n: usize) -> serde_json::Value {
    let mut by_name: BTreeMap<String, &'static str> = BTreeMap::new();
    for d in vmbridge::catalogue::all() {
        by_name.insert(d.exposed_name(), d.group.as_str());
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for l in text.lines().filter(|l| !l.starts_with('#') && l.contains("name=\"vm-")) {
        let name = l.split(['{', ' ']).next().unwrap_or_default();
        *counts.entry(by_name.get(name).copied().unwrap_or("other")).or_default() += 1;
    }
    counts.into_iter().map(|(g, c)| (g.to_owned(), json!(c as f64 / n as f64))).collect()
}

/// p50 and p99 wall time and p50 thread CPU of `f`, run `iters` times after 10 warm-ups.
fn time<T>(iters: usize, mut f: impl FnMut() -> T) -> (f64, f64, f64) {
    for _ in 0..10.min(iters) {
        std::hint::black_box(f());
    }
    let (mut wall, mut cpu) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    for _ in 0..iters {
        let (c0, t0) = (thread_cpu(), Instant::now());
        std::hint::black_box(f());
        wall.push(t0.elapsed().as_secs_f64());
        cpu.push((thread_cpu() - c0).as_secs_f64());
    }
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (pct(&wall, 50.0), pct(&wall, 99.0), pct(&cpu, 50.0))
}

fn run(profile: Profile, n: usize, iters: usize) -> serde_json::Value {
    let store = build_store(n, profile);
    let started = Instant::now();
    // Encoding every VM from scratch: what each scrape did before the series were pre-encoded,
    // and what a poll cycle's publishes now do, spread over the cycle.
    let cold_iters = if n >= 1000 { 20 } else { 50 };
    let (cold_p50, cold_p99, cold_cpu) =
        time(cold_iters, || VmCollector::new(store.clone(), NODE.into(), STALENESS).render(Format::Prometheus));
    let collector = VmCollector::new(store.clone(), NODE.into(), STALENESS).observing();
    let (text, first) = collector.render_with_stats(Format::Prometheus);
    let text = String::from_utf8(text).expect("the exposition is UTF-8");
    assert_eq!(first.encoded, n, "the first scrape encodes every VM");
    let (_, again) = collector.render_with_stats(Format::Prometheus);
    assert_eq!((again.reused, again.encoded), (n, 0), "later scrapes reuse every VM");
    let om = collector.render(Format::OpenMetrics);
    let series = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
    // A scrape: headers plus every VM's pre-encoded runs, family by family.
    let (scrape_p50, scrape_p99, scrape_cpu) = time(iters, || collector.render_bytes(Format::Prometheus));
    let (mut gather, mut concat): (Vec<f64>, Vec<f64>) = (0..iters.min(100))
        .map(|_| {
            let s = collector.render_with_stats(Format::Prometheus).1;
            (s.gather_seconds, s.concat_seconds)
        })
        .unzip();
    gather.sort_by(f64::total_cmp);
    concat.sort_by(f64::total_cmp);
    let (om_p50, om_p99, _) = time(iters, || collector.render_bytes(Format::OpenMetrics));
    // The peer: a plain copy of the same exposition into a new buffer.
    let (memcpy_p50, memcpy_p99, _) = time(iters, || text.as_bytes().to_vec());
    // gzip at several levels, compressing every time (what a scrape pays when anything changed).
    let gz_iters = (iters / 4).max(20);
    let mut gzip = serde_json::Map::new();
    for level in [1u32, 3, 6] {
        let z = vmbridge::collector::expo::gzip(text.as_bytes(), level);
        let (p50, p99, cpu) = time(gz_iters, || vmbridge::collector::expo::gzip(text.as_bytes(), level));
        gzip.insert(
            format!("level_{level}"),
            json!({"bytes": z.len(), "ratio": text.len() as f64 / z.len() as f64,
                   "compress_p50_s": p50, "compress_p99_s": p99, "compress_cpu_p50_s": cpu,
                   "scrape_cpu_with_gzip_p50_s": scrape_cpu + cpu}),
        );
    }
    // A gzip scrape while nothing changed: the compressed body is reused.
    let (reuse_p50, reuse_p99, _) = time(iters, || collector.render_gzip(Format::Prometheus, 1));
    let elapsed = started.elapsed().as_secs_f64();
    let (poll_wall, poll_cpu) = poll_cycle_cpu(&store, n, if n >= 1000 { 20 } else { 50 });
    drop(collector);
    let (poll_wall_noenc, poll_cpu_noenc) = poll_cycle_cpu(&store, n, if n >= 1000 { 20 } else { 50 });
    let rss = measure_rss(profile, n);
    let kib = |k: &str| rss[k].as_u64().unwrap_or(0).saturating_sub(rss["rss_before_kib"].as_u64().unwrap_or(0));
    json!({
        "profile": profile.name(),
        "n": n,
        "iterations": iters,
        "elapsed_s": elapsed,
        "scrape_p50_s": scrape_p50, "scrape_p99_s": scrape_p99, "scrape_cpu_p50_s": scrape_cpu,
        "scrape_openmetrics_p50_s": om_p50, "scrape_openmetrics_p99_s": om_p99,
        "scrape_gather_p50_s": pct(&gather, 50.0), "scrape_concat_p50_s": pct(&concat, 50.0),
        "memcpy_p50_s": memcpy_p50, "memcpy_p99_s": memcpy_p99,
        "scrape_over_memcpy_p50": scrape_p50 / memcpy_p50,
        "scrape_over_memcpy_p99": scrape_p99 / memcpy_p99,
        "cold_encode_p50_s": cold_p50, "cold_encode_p99_s": cold_p99, "cold_encode_cpu_p50_s": cold_cpu,
        "gzip": gzip,
        "gzip_reused_p50_s": reuse_p50, "gzip_reused_p99_s": reuse_p99,
        "openmetrics_bytes": om.len(),
        "prometheus_bytes": text.len(),
        "bytes_per_vm": text.len() as f64 / n as f64,
        "series": series,
        "series_per_vm": series as f64 / n as f64,
        "series_per_vm_by_group": series_by_group(&text, n),
        "rss_store_kib": kib("rss_store_kib"),
        "rss_store_per_vm_kib": kib("rss_store_kib") as f64 / n as f64,
        "rss_store_and_encoded_kib": kib("rss_encoded_kib"),
        "rss_store_and_encoded_per_vm_kib": kib("rss_encoded_kib") as f64 / n as f64,
        "rss_store_and_scrape_kib": kib("rss_after_scrape_kib"),
        "poll_cycle_parse_publish_encode_wall_p50_s": poll_wall,
        "poll_cycle_parse_publish_encode_cpu_p50_s": poll_cpu,
        "poll_cycle_parse_publish_wall_p50_s": poll_wall_noenc,
        "poll_cycle_parse_publish_cpu_p50_s": poll_cpu_noenc,
    })
}

fn fmt_t(s: f64) -> String {
    if s < 1e-3 { format!("{:.1} µs", s * 1e6) } else { format!("{:.2} ms", s * 1e3) }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(pos) = args.iter().position(|a| a == "--rss-child") {
        let profile = args.get(pos + 1).and_then(|p| Profile::parse(p)).expect("profile");
        let n: usize = args.get(pos + 2).and_then(|n| n.parse().ok()).expect("n");
        rss_child(profile, n);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it:
    // then only a quick smoke run (10 VMs, a few scrapes) checks that the path works.
    let smoke = !args.iter().any(|a| a == "--bench");
    if smoke {
        let r = run(Profile::LibvirtQga, 10, 5);
        assert!(r["series"].as_u64().unwrap_or(0) > 0, "no series: {r}");
        println!("scrape_path smoke run (use `cargo bench --bench scrape_path` to measure): {r}");
        return;
    }
    let sizes: Vec<usize> = std::env::var("SCRAPE_PATH_SIZES")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    let iters: usize = std::env::var("SCRAPE_PATH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(300).max(200);
    let t0 = Instant::now();
    let mut results = vec![];
    println!(
        "{:<12} {:>5} {:>10} {:>10} {:>10} {:>7} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>11} {:>12}",
        "profile",
        "VMs",
        "scrape p50",
        "scrape p99",
        "memcpy p50",
        "ratio",
        "cold enc",
        "gzip1 p50",
        "bytes",
        "gz1 B",
        "B/VM",
        "series",
        "RSS KiB/VM",
        "poll cpu"
    );
    for profile in [Profile::Libvirt, Profile::LibvirtQga] {
        for &n in &sizes {
            let r = run(profile, n, iters);
            println!(
                "{:<12} {:>5} {:>10} {:>10} {:>10} {:>7.2} {:>10} {:>10} {:>10} {:>9} {:>9.0} {:>9} {:>11.1} {:>12}",
                profile.name(),
                n,
                fmt_t(r["scrape_p50_s"].as_f64().unwrap_or(0.0)),
                fmt_t(r["scrape_p99_s"].as_f64().unwrap_or(0.0)),
                fmt_t(r["memcpy_p50_s"].as_f64().unwrap_or(0.0)),
                r["scrape_over_memcpy_p50"].as_f64().unwrap_or(0.0),
                fmt_t(r["cold_encode_p50_s"].as_f64().unwrap_or(0.0)),
                fmt_t(r["gzip"]["level_1"]["compress_p50_s"].as_f64().unwrap_or(0.0)),
                r["prometheus_bytes"],
                r["gzip"]["level_1"]["bytes"],
                r["bytes_per_vm"].as_f64().unwrap_or(0.0),
                r["series"],
                r["rss_store_and_encoded_per_vm_kib"].as_f64().unwrap_or(0.0),
                fmt_t(r["poll_cycle_parse_publish_encode_cpu_p50_s"].as_f64().unwrap_or(0.0)),
            );
            println!(
                "    gather p50 {}, concat p50 {}; series per VM by group: {}",
                fmt_t(r["scrape_gather_p50_s"].as_f64().unwrap_or(0.0)),
                fmt_t(r["scrape_concat_p50_s"].as_f64().unwrap_or(0.0)),
                r["series_per_vm_by_group"]
            );
            results.push(r);
        }
    }
    let summary = json!({
        "bench": "scrape_path",
        "version": env!("CARGO_PKG_VERSION"),
        "iterations": iters,
        "elapsed_s": t0.elapsed().as_secs_f64(),
        "results": results,
    });
    let line = summary.to_string();
    if let Ok(path) = std::env::var("SCRAPE_PATH_OUT") {
        std::fs::write(&path, format!("{line}\n")).expect("write SCRAPE_PATH_OUT");
    }
    println!("{line}");
}
