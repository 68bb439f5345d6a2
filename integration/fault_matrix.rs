//! The fault matrix, as one suite on the real lab: every fault is applied while 8 clients
//! scrape continuously, and for each the suite measures the time until the faulty part is
//! flagged, the time until it recovers once the fault is lifted, and how many series of the
//! healthy VMs were lost (must be 0). The table goes to stderr and `target/fault-matrix.md`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, lab.sh, launcher.sh)

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::agents::*;
use common::*;

const HEALTHY: [&str; 2] = ["itx-h1", "itx-h2"];

struct Row {
    fault: String,
    flagged: Option<Duration>,
    recovered: Option<Duration>,
    lost: usize,
}

/// Scrapers that check, on every scrape, that no series of a healthy VM went missing.
struct Scrapers {
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicUsize>,
    scrapes: Arc<AtomicUsize>,
    slowest: Arc<Mutex<Duration>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

fn healthy_series(e: &Exposition) -> BTreeSet<String> {
    e.samples
        .iter()
        .filter(|s| {
            let n = s.labels.get("name").map(String::as_str).unwrap_or_default();
            // Bridge health series may legitimately change; the data of healthy VMs may not vanish.
            (HEALTHY.contains(&n) || n == "agent-ok") && s.name.starts_with("kubevirt_")
        })
        .map(|s| format!("{}{:?}", s.name, s.labels))
        .collect()
}

impl Scrapers {
    fn start(addr: std::net::SocketAddr, baseline: BTreeSet<String>) -> Scrapers {
        let (stop, lost, scrapes) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let slowest = Arc::new(Mutex::new(Duration::ZERO));
        let baseline = Arc::new(baseline);
        let handles = (0..8)
            .map(|_| {
                let (stop, lost, scrapes, slowest, baseline) =
                    (stop.clone(), lost.clone(), scrapes.clone(), slowest.clone(), baseline.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let r = http_get(addr, "/metrics", None);
                        let took = t.elapsed();
                        {
                            let mut s = slowest.lock().unwrap();
                            *s = (*s).max(took);
                        }
                        scrapes.fetch_add(1, Ordering::Relaxed);
                        let now = healthy_series(&Exposition::parse(&r.body));
                        lost.fetch_add(baseline.difference(&now).count(), Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
            })
            .collect();
        Scrapers { stop, lost, scrapes, slowest, handles }
    }

    fn take_lost(&self) -> usize {
        self.lost.swap(0, Ordering::Relaxed)
    }
}

impl Drop for Scrapers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Waits until `cond`, returning how long it took (or `None` after `limit`).
fn until(bridge: &Bridge, limit: Duration, mut cond: impl FnMut(&Exposition) -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond(&bridge.metrics()) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn source_up(e: &Exposition, vm: &str, source: &str) -> Option<f64> {
    e.value("vmbridge_source_up", &[("name", vm), ("source", source)])
}

fn open(e: &Exposition, vm: &str, source: &str) -> bool {
    e.value("vmbridge_breaker_state", &[("name", vm), ("source", source), ("state", "open")]) == Some(1.0)
}

fn resources(pid: u32) -> (usize, usize, u64) {
    let (fds, threads) = fds_and_threads(pid);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches(" kB").parse().ok()))
        .unwrap();
    (fds, threads, rss)
}

fn fmt(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

#[test]
fn fault_matrix() {
    let _serial = serial();
    let healthy: Vec<Domain> = HEALTHY.iter().map(|n| Domain::new(n)).collect();
    let stuck = Domain::new("itx-stuck");
    let doomed = Domain::new("itx-doomed");
    let dir = scratch("matrix");
    // The healthy agent is scripted and answers the same every time: a real qemu-ga reports this
    // host, whose tap devices come and go with the churn below.
    let _agent_ok = hostile_agent(dir.join("agent-ok.sock"), Misbehaviour::Healthy);
    let agent_hung = Agent::start(&dir, "hung");
    let bad: Vec<(&str, HostileAgent)> = [
        ("agent-garbage", Misbehaviour::Garbage),
        ("agent-slowloris", Misbehaviour::SlowLoris),
        ("agent-oversized", Misbehaviour::Oversized),
    ]
    .into_iter()
    .map(|(n, m)| (n, hostile_agent(dir.join(format!("{n}.sock")), m)))
    .collect();
    let mut toml = String::from(
        "[poll]\ninterval = \"1s\"\ntimeout = \"1s\"\nretry_delay = \"100ms\"\n[breaker]\nbackoff_min = \"500ms\"\nbackoff_max = \"3s\"\n\
         [qga]\ntimeout = \"1s\"\n[qga.periods]\nfsinfo = \"1s\"\nosinfo = \"1s\"\ninfo = \"5s\"\n",
    );
    for (n, p) in [("agent-ok", dir.join("agent-ok.sock")), ("agent-hung", agent_hung.socket.clone())]
        .into_iter()
        .chain(bad.iter().map(|(n, _)| (*n, dir.join(format!("{n}.sock")))))
    {
        toml.push_str(&format!("[[vms]]\nname = \"{n}\"\nqga_socket = \"{}\"\n", p.display()));
    }
    let cfg = dir.join("vmbridge.toml");
    std::fs::write(&cfg, toml).unwrap();
    let bridge = Bridge::start(&["--config", cfg.to_str().unwrap()]);
    let started = Instant::now();
    bridge.wait_for(Duration::from_secs(30), "healthy VMs and agent up", |e| {
        HEALTHY.iter().chain(["itx-stuck", "itx-doomed"].iter()).all(|n| source_up(e, n, "libvirt") == Some(1.0))
            && source_up(e, "agent-ok", "qga") == Some(1.0)
            && source_up(e, "agent-hung", "qga") == Some(1.0)
    });
    let baseline = healthy_series(&bridge.metrics());
    assert!(baseline.len() > 40, "baseline has {} healthy series", baseline.len());
    let scrapers = Scrapers::start(bridge.addr, baseline);
    let mut rows = Vec::new();

    // Hostile agents misbehave from the start: flagged since vmbridge started; recovery once
    // they turn healthy.
    for (name, agent) in &bad {
        let flagged =
            until(&bridge, Duration::from_secs(30), |e| open(e, name, "qga") && source_up(e, name, "qga") == Some(0.0));
        let flagged = flagged.map(|_| started.elapsed());
        agent.set(Misbehaviour::Healthy);
        let recovered = until(&bridge, Duration::from_secs(15), |e| source_up(e, name, "qga") == Some(1.0));
        rows.push(Row {
            fault: format!("guest agent: {}", name.trim_start_matches("agent-")),
            flagged,
            recovered,
            lost: scrapers.take_lost(),
        });
    }

    // A hung QEMU.
    stuck.stop();
    let flagged = until(&bridge, Duration::from_secs(20), |e| open(e, "itx-stuck", "libvirt"));
    stuck.cont();
    let recovered = until(&bridge, Duration::from_secs(15), |e| source_up(e, "itx-stuck", "libvirt") == Some(1.0));
    rows.push(Row { fault: "QEMU SIGSTOP".into(), flagged, recovered, lost: scrapers.take_lost() });

    // A hung real qemu-ga.
    agent_hung.signal("STOP");
    let flagged = until(&bridge, Duration::from_secs(20), |e| open(e, "agent-hung", "qga"));
    agent_hung.signal("CONT");
    let recovered = until(&bridge, Duration::from_secs(15), |e| source_up(e, "agent-hung", "qga") == Some(1.0));
    rows.push(Row { fault: "qemu-ga SIGSTOP".into(), flagged, recovered, lost: scrapers.take_lost() });

    // A VM destroyed while it is being polled.
    drop(doomed);
    let flagged = until(&bridge, Duration::from_secs(10), |e| e.of_vm("itx-doomed").is_empty());
    rows.push(Row {
        fault: "VM destroyed mid-poll (series gone)".into(),
        flagged,
        recovered: None,
        lost: scrapers.take_lost(),
    });

    // libvirtd restarted: vmbridge reconnects; /readyz says so meanwhile.
    let t = Instant::now();
    let restart = std::thread::spawn(|| lab(&["restart-libvirtd"]));
    let mut saw_unready = None;
    while !restart.is_finished() {
        if saw_unready.is_none() && bridge.get("/readyz", None).status == 503 {
            saw_unready = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    restart.join().unwrap();
    let recovered = until(&bridge, Duration::from_secs(30), |e| {
        e.value("vmbridge_endpoint_up", &[("uri", URI)]) == Some(1.0)
            && HEALTHY.iter().all(|n| source_up(e, n, "libvirt") == Some(1.0))
            && bridge.get("/readyz", None).status == 200
    })
    .map(|d| d + t.elapsed() - d);
    rows.push(Row {
        fault: "libvirtd restarted (readyz 503 seen)".into(),
        flagged: saw_unready,
        recovered,
        lost: scrapers.take_lost(),
    });
    assert!(recovered.is_some(), "vmbridge did not recover from a libvirtd restart");

    // 100 create/destroy cycles, 10 at a time: no fd, thread or memory growth, no stale series.
    // The blocking pool keeps as many threads as the peak concurrency needed (idle threads
    // are reused before they can time out), so the check is for growth with the number of
    // cycles: the second half of the rounds must not need more than the first half.
    let mut per_round = Vec::new();
    let t = Instant::now();
    for round in 0..10 {
        let batch: Vec<std::thread::JoinHandle<()>> = (0..10)
            .map(|i| {
                std::thread::spawn(move || {
                    let name = format!("itx-c{round}-{i}");
                    let d = Domain::new(&name);
                    std::thread::sleep(Duration::from_millis(1500));
                    drop(d);
                })
            })
            .collect();
        for h in batch {
            h.join().unwrap();
        }
        per_round.push(resources(bridge.pid()));
    }
    let churn = t.elapsed();
    let max = |r: &[(usize, usize, u64)]| {
        (
            r.iter().map(|x| x.0).max().unwrap(),
            r.iter().map(|x| x.1).max().unwrap(),
            r.iter().map(|x| x.2).max().unwrap(),
        )
    };
    let before = max(&per_round[..5]);
    let stale = until(&bridge, Duration::from_secs(10), |e| {
        !e.samples.iter().any(|s| s.labels.get("name").is_some_and(|n| n.starts_with("itx-c")))
    });
    std::thread::sleep(Duration::from_secs(3));
    let after = resources(bridge.pid());
    eprintln!(
        "100 create/destroy cycles in {churn:?}: fds {} → {}, threads {} → {}, RSS {} → {} KiB",
        before.0, after.0, before.1, after.1, before.2, after.2
    );
    rows.push(Row {
        fault: "100 VM create/destroy cycles (stale series gone)".into(),
        flagged: stale,
        recovered: None,
        lost: scrapers.take_lost(),
    });
    assert!(stale.is_some(), "series of destroyed VMs stayed");
    assert!(after.0 <= before.0 + 2, "fds grew {} → {}", before.0, after.0);
    // Thread counts wobble with the pool's high-water mark; a leak would climb with the rounds
    // (one thread per cycle is a slope of 10 per round). Least-squares slope over the rounds:
    let n = per_round.len() as f64;
    let (mx, my) = ((n - 1.0) / 2.0, per_round.iter().map(|r| r.1 as f64).sum::<f64>() / n);
    let slope = per_round.iter().enumerate().map(|(i, r)| (i as f64 - mx) * (r.1 as f64 - my)).sum::<f64>()
        / per_round.iter().enumerate().map(|(i, _)| (i as f64 - mx).powi(2)).sum::<f64>();
    eprintln!("thread-count slope over rounds: {slope:.2} per round of 10 cycles");
    // The pool may approach its concurrency bound (a few blocking calls per VM alive at once:
    // 10 churned + 3 lab VMs), but a leak of even one thread per four cycles (2.5 per round)
    // or a count beyond that bound fails.
    assert!(slope < 2.5, "threads climb with the cycles: {slope:.2} per round");
    assert!(after.1 <= 8 + 3 * 13, "{} threads exceed the concurrency bound", after.1);
    assert!(after.2 <= before.2 + 8 * 1024, "RSS grew {} → {} KiB", before.2, after.2);

    let scrapes = scrapers.scrapes.load(Ordering::Relaxed);
    let slowest = *scrapers.slowest.lock().unwrap();
    drop(scrapers);
    let mut table =
        String::from("| fault | time to flag | time to recover | healthy series lost |\n|---|---|---|---|\n");
    for r in &rows {
        table.push_str(&format!("| {} | {} | {} | {} |\n", r.fault, fmt(r.flagged), fmt(r.recovered), r.lost));
    }
    table.push_str(&format!(
        "\n{scrapes} scrapes by 8 concurrent clients during the matrix; slowest {:.1} ms.\n",
        slowest.as_secs_f64() * 1e3
    ));
    eprintln!("{table}");
    std::fs::write(root().join("target/fault-matrix.md"), &table).unwrap();
    for r in &rows {
        assert_eq!(r.lost, 0, "{}: healthy series lost", r.fault);
        assert!(r.flagged.is_some(), "{}: never flagged", r.fault);
    }
    for r in rows.iter().filter(|r| !r.fault.contains("destroyed") && !r.fault.contains("cycles")) {
        assert!(r.recovered.is_some(), "{}: never recovered", r.fault);
    }
    assert!(slowest < Duration::from_secs(1), "a scrape took {slowest:?}");
    drop(healthy);
}
