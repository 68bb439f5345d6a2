//! Hostile HTTP clients against a real vmbridge process: a thousand half-sent requests, a
//! thousand idle keep-alive connections, silent TLS clients. Scrapes keep being answered, file
//! descriptors and memory stay bounded and fall back once the deadlines pass, nothing is logged
//! at error level, and SIGTERM is still honoured.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, curl)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// GET `path`: the status code, or 0 when the connection failed (refused at the cap).
fn try_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let attempt = || -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((status, text))
    };
    attempt().unwrap_or((0, String::new()))
}

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("vmbridge.toml");
    std::fs::write(
        &cfg,
        "[libvirt]\nuris = [\"test:///default\"]\n[http]\nheader_timeout = \"2s\"\nidle_timeout = \"4s\"\nmax_connections = 256\n",
    )
    .expect("config");
    cfg
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vmbridge-http-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// Waits until `cond` holds, for at most `limit`.
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what} did not happen within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn half_sent_and_idle_connections_cannot_starve_scrapes_memory_or_descriptors() {
    let _serial = serial();
    let dir = scratch("plain");
    let cfg = config(&dir);
    let mut bridge = Bridge::start_without_libvirt(&["--config", cfg.to_str().unwrap()]);
    let pid = bridge.pid();
    eventually(Duration::from_secs(20), "the first scrape", || bridge.get("/metrics", None).status == 200);
    let (fds0, rss0) = (open_fds(pid), rss_bytes(pid));

    // 1,000 requests that never finish their head, then 1,000 keep-alive connections that
    // finish one request and stay idle.
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(bridge.addr).expect("connect");
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
        held.push(s);
    }
    // Past EVICTABLE_AFTER (1 s) the stalled requests make room for the keep-alive clients.
    std::thread::sleep(Duration::from_millis(1200));
    let mut idle_served = 0;
    for _ in 0..1000 {
        let mut s = TcpStream::connect(bridge.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = [0u8; 512];
        if let Ok(n) = s.read(&mut buf) {
            if buf[..n].starts_with(b"HTTP/1.1 200") {
                idle_served += 1;
            }
        }
        held.push(s);
    }
    // And 100 more stalled requests, which nothing newer evicts: they meet the header timeout.
    for _ in 0..100 {
        let mut s = TcpStream::connect(bridge.addr).expect("connect");
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
        held.push(s);
    }
    // Descriptors as held (the least of 20 readings over 1 s: an evicted connection's socket
    // is closed when its task next runs, a moment after its slot went to the newcomer).
    let peak_fds = fds_and_threads(pid).0;
    let peak_rss = rss_bytes(pid);

    // While all 2,100 are held, fresh scrapes are answered (one that arrives while every slot
    // is younger than a second may get a 503 and retries).
    let mut answered = 0;
    for _ in 0..10 {
        let start = Instant::now();
        loop {
            let (status, body) = try_get(bridge.addr, "/metrics");
            if status == 200 {
                let open = Exposition::parse(body.split("\r\n\r\n").nth(1).unwrap_or_default())
                    .value("vmbridge_http_connections", &[("listener", "public")])
                    .expect("open connections gauge");
                assert!(open <= 256.0, "{open} connections open with the cap at 256");
                answered += 1;
                break;
            }
            assert!(status == 503 || status == 0, "{status}: {body}");
            // Refusals last only while every slot is younger than EVICTABLE_AFTER (1 s).
            assert!(start.elapsed() < Duration::from_secs(30), "no scrape answered within 30 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(answered, 10);
    assert!(idle_served >= 100, "only {idle_served} of the keep-alive requests were served");
    // The cap, plus at most 64 refusals being answered.
    assert!(peak_fds <= fds0 + 256 + 64 + 16, "fds {fds0} -> {peak_fds} with the cap at 256");
    assert!(peak_rss < 100 << 20, "RSS {rss0} -> {peak_rss} bytes");

    // Past the deadlines (2 s per request, 4 s idle) every held connection is closed by vmbridge.
    let took = eventually(Duration::from_secs(60), "descriptors to fall back", || open_fds(pid) <= fds0 + 4);
    eprintln!(
        "fds {fds0} -> {peak_fds} -> {} ({took:?} after the flood); RSS {} -> {} MiB; {idle_served} keep-alive requests served",
        open_fds(pid),
        rss0 >> 20,
        peak_rss >> 20
    );
    let e = bridge.metrics();
    let closed = |reason: &str| {
        e.value("vmbridge_http_connections_closed_total", &[("listener", "public"), ("reason", reason)]).unwrap_or(0.0)
    };
    eprintln!(
        "closed: header_timeout {}, idle_timeout {}, evicted {}, refused {}, error {}",
        closed("header_timeout"),
        closed("idle_timeout"),
        closed("evicted"),
        closed("refused"),
        closed("error")
    );
    assert!(closed("evicted") > 0.0 && closed("refused") > 0.0, "the cap was not enforced");
    // Every one of the 2,100 was admitted and closed, or refused.
    assert!(closed("header_timeout") + closed("idle_timeout") + closed("evicted") + closed("refused") >= 2100.0);
    drop(held);

    // Below the cap, without eviction in play: 50 stalled requests are closed at the header
    // timeout (2 s), and 50 keep-alive connections at the idle timeout (4 s) after their reply.
    let (h0, i0) = (closed("header_timeout"), closed("idle_timeout"));
    let mut stalled = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(bridge.addr).expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").expect("half a request");
        stalled.push(s);
        let mut s = TcpStream::connect(bridge.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("a request");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).expect("reply");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        idle.push(s);
    }
    let counts = || {
        let e = bridge.metrics();
        let c = |r: &str| {
            e.value("vmbridge_http_connections_closed_total", &[("listener", "public"), ("reason", r)]).unwrap_or(0.0)
        };
        (c("header_timeout"), c("idle_timeout"))
    };
    let took = eventually(Duration::from_secs(60), "50 header and 50 idle timeouts", || {
        let (h, i) = counts();
        h >= h0 + 50.0 && i >= i0 + 50.0
    });
    eprintln!("50 stalled requests and 50 idle connections closed by their deadlines within {took:?}");
    // The client sees each one closed: end of stream, or a reset.
    for mut s in stalled.into_iter().chain(idle) {
        s.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "still open after its deadline"),
            Ok(n) => panic!("data after the deadline: {}", String::from_utf8_lossy(&buf[..n])),
        }
    }

    // Nothing about these clients at error level.
    let errors: Vec<String> =
        bridge.log.lock().unwrap().iter().filter(|l| l.contains("\"level\":\"ERROR\"")).cloned().collect();
    assert!(errors.is_empty(), "{} error lines, e.g. {:?}", errors.len(), errors.first());

    // With 600 half-sent requests open, SIGTERM still ends vmbridge within 5 s, with status 0.
    let mut again = Vec::new();
    for _ in 0..600 {
        let mut s = TcpStream::connect(bridge.addr).expect("connect");
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n");
        again.push(s);
    }
    let (status, took) = bridge.terminate(Duration::from_secs(5)).expect("vmbridge still running 5 s after SIGTERM");
    assert!(status.success(), "exit status {status}");
    eprintln!("SIGTERM with 600 open connections: exit in {took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn silent_tls_clients_are_dropped_at_the_header_timeout_and_https_keeps_answering() {
    let _serial = serial();
    let dir = scratch("tls");
    let cfg = config(&dir);
    let bridge = Bridge::start_without_libvirt(&["--config", cfg.to_str().unwrap(), "--tls-self-signed"]);
    let pid = bridge.pid();
    let url = format!("https://127.0.0.1:{}/metrics", bridge.addr.port());
    let curl = || {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", &url])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    eventually(Duration::from_secs(20), "the first HTTPS scrape", || curl() == "200");
    let fds0 = open_fds(pid);
    // 500 clients that connect and never start the TLS handshake.
    let held: Vec<TcpStream> = (0..500).map(|_| TcpStream::connect(bridge.addr).expect("connect")).collect();
    // The cap holds under TLS (refused TLS clients are closed at once); the least of 20
    // readings over 1 s, as an evicted connection's socket closes a moment after its slot went.
    let held_fds = fds_and_threads(pid).0;
    assert!(held_fds <= fds0 + 256 + 16, "fds {fds0} -> {held_fds} with the cap at 256");
    let mut open = None;
    eventually(Duration::from_secs(30), "an HTTPS scrape with the gauge", || {
        let out = Command::new("curl").args(["-sk", "--max-time", "10", &url]).output().expect("curl");
        open = Exposition::parse(&String::from_utf8_lossy(&out.stdout))
            .value("vmbridge_http_connections", &[("listener", "public")]);
        open.is_some()
    });
    assert!(open.is_some_and(|n| n <= 256.0), "{open:?} connections open with the cap at 256");
    std::thread::sleep(Duration::from_millis(1200));
    eventually(Duration::from_secs(30), "an HTTPS scrape among the silent clients", || curl() == "200");
    let took = eventually(Duration::from_secs(60), "silent TLS clients to be dropped", || open_fds(pid) <= fds0 + 4);
    eprintln!("500 silent TLS clients: fds back to {} within {took:?}", open_fds(pid));
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One HTTP/2 frame: 9-byte header (length, type, flags, stream) and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length").to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HTTP/2 client (cleartext, prior knowledge) that sends `streams` requests for
/// `/metrics` at once and never reads a byte of what comes back: not the replies, not even the
/// server's SETTINGS. Written frame by frame (HPACK without indexing or Huffman), so nothing in
/// it reads, acknowledges or opens a flow-control window the way a client library would.
fn hostile_h2(addr: std::net::SocketAddr, streams: u32) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS, all defaults
    // :method GET (static 2), :scheme http (static 6), :path /metrics (name 4, literal value),
    // :authority x (name 1, literal value).
    let mut block = vec![0x82, 0x86, 0x04, 8];
    block.extend_from_slice(b"/metrics");
    block.extend_from_slice(&[0x01, 1, b'x']);
    for i in 0..streams {
        out.extend(h2_frame(0x1, 0x4 | 0x1, 2 * i + 1, &block)); // HEADERS, END_HEADERS | END_STREAM
    }
    let _ = s.write_all(&out);
    s
}

#[test]
fn http2_clients_that_never_read_their_replies_cannot_exhaust_memory() {
    const CONNS: usize = 50;
    const STREAMS: u32 = 200;
    let _serial = serial();
    let dir = scratch("h2");
    let cfg = dir.join("vmbridge.toml");
    std::fs::write(
        &cfg,
        "[libvirt]\nuris = [\"test:///default\"]\n[http]\nheader_timeout = \"2s\"\nidle_timeout = \"4s\"\n\
         max_connections = 256\nwrite_timeout = \"20s\"\n",
    )
    .expect("config");
    let bridge = Bridge::start_without_libvirt(&["--config", cfg.to_str().unwrap()]);
    let pid = bridge.pid();
    eventually(Duration::from_secs(20), "the first scrape", || bridge.get("/metrics", None).status == 200);
    let reply = bridge.get("/metrics", None).body.len() as u64;
    let (fds0, rss0) = (open_fds(pid), rss_bytes(pid));
    // What vmbridge may hold for these clients: a few private copies of the reply per
    // connection (it shares one body; this leaves room for a new body per scrape), plus
    // per-connection buffers. Without any bound it holds every reply of every stream:
    // CONNS x STREAMS x reply.
    let bound = rss0 + (24 << 20) + CONNS as u64 * 8 * reply;

    let held: Vec<TcpStream> = (0..CONNS).map(|_| hostile_h2(bridge.addr, STREAMS)).collect();
    // A PING on every connection twice a second keeps it from the idle deadline: only the
    // replies it never reads make it stall.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinger = {
        let mut conns: Vec<TcpStream> = held.iter().map(|s| s.try_clone().expect("clone")).collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for s in &mut conns {
                    let _ = s.write_all(&h2_frame(0x6, 0, 0, &[0u8; 8]));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    // While they hold their connections, a fresh scrape is answered, and sees them open.
    let (status, body) = try_get(bridge.addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let open = Exposition::parse(body.split("\r\n\r\n").nth(1).unwrap_or_default())
        .value("vmbridge_http_connections", &[("listener", "public")])
        .expect("open connections gauge");
    assert!(open >= CONNS as f64, "only {open} connections open while {CONNS} hostile ones are held");

    // Until vmbridge has closed every hostile connection at the write deadline (a peer that
    // reads nothing), its RSS stays under the bound.
    let mut peak = rss_bytes(pid);
    let closed = || {
        let (status, body) = try_get(bridge.addr, "/metrics");
        (status == 200)
            .then(|| {
                Exposition::parse(body.split("\r\n\r\n").nth(1).unwrap_or_default()).value(
                    "vmbridge_http_connections_closed_total",
                    &[("listener", "public"), ("reason", "write_timeout")],
                )
            })
            .flatten()
            .unwrap_or(0.0)
    };
    let took = eventually(Duration::from_secs(180), "the hostile connections to meet the write deadline", || {
        peak = peak.max(rss_bytes(pid));
        assert!(
            peak < bound,
            "RSS {rss0} -> {peak} bytes with {CONNS} x {STREAMS} unread replies of {reply} bytes (bound {bound})"
        );
        closed() >= CONNS as f64
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pinger.join().expect("pinger");
    let fds_back = eventually(Duration::from_secs(30), "descriptors to fall back", || open_fds(pid) <= fds0 + 4);
    let shed = bridge.metrics().value("vmbridge_http_replies_shed_total", &[]).expect("shed counter");
    eprintln!(
        "{CONNS} x {STREAMS} unread HTTP/2 replies of {reply} bytes: RSS {} -> peak {} MiB (bound {} MiB); \
         closed at the write deadline within {took:?}, fds back within {fds_back:?}; {shed} requests shed",
        rss0 >> 20,
        peak >> 20,
        bound >> 20
    );
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}
