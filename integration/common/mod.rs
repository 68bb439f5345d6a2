//! Harness for the integration tests: the real lab (`integration/lab.sh`: libvirtd + QEMU
//! domains), a real `vmbridge` process, a tiny HTTP client, and an exposition parser.
#![allow(dead_code)]

pub mod agents;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const URI: &str = "qemu:///system";

/// The lab's daemons are shared; tests that SIGSTOP a VM or count threads run one at a time.
/// The guard also arms a [`Watchdog`]: no test may hang the suite.
pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let limit = std::env::var("VMB_TEST_WATCHDOG_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(WATCHDOG_LIMIT);
    Serial { _watchdog: Watchdog::arm(limit), _lock: lock }
}

/// A [`Watchdog`] for a test that needs no lab lock but runs processes that could hang.
pub fn watchdog() -> Watchdog {
    Watchdog::arm(WATCHDOG_LIMIT)
}

/// Held by a test that uses the shared lab; see [`serial`].
pub struct Serial {
    // Disarmed before the lock is released (fields drop in declaration order).
    _watchdog: Watchdog,
    _lock: MutexGuard<'static, ()>,
}

/// How long one lab test may run by default (the longest, the fault matrix, takes about 3 min in
/// a debug build on 2 cores); `VMB_TEST_WATCHDOG_SECS` overrides it for longer manual runs.
pub const WATCHDOG_LIMIT: Duration = Duration::from_secs(600);

/// Ends the whole test binary if the test that armed it is still running after its limit: a
/// hang (a call without a deadline, a VM left stopped) then fails this binary with a message
/// naming the test, and `cargo test --no-fail-fast` goes on with the others, instead of CI
/// running into its time limit with nothing printed. Before exiting it resumes every lab
/// domain, so no VM stays SIGSTOPped for the binaries after it.
pub struct Watchdog {
    done: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Watchdog {
    pub fn arm(limit: Duration) -> Watchdog {
        let done = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let d = done.clone();
        let test = std::thread::current().name().unwrap_or("?").to_owned();
        std::thread::spawn(move || {
            let (lock, cv) = &*d;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) = cv.wait_timeout_while(guard, limit, |done| !*done).unwrap_or_else(|e| e.into_inner());
            if *guard {
                return;
            }
            eprintln!("WATCHDOG: test `{test}` still running after {limit:?}; ending this test binary");
            let lab = root().join("integration/lab.sh");
            if let Ok(out) = Command::new("bash").arg(&lab).arg("list").output() {
                for name in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("bash").arg(&lab).args(["cont-vm", name]).output();
                }
            }
            std::process::exit(101);
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.done;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `integration/lab.sh ARGS`; panics with its stderr on failure.
pub fn lab(args: &[&str]) -> String {
    let out = Command::new("bash").arg(root().join("integration/lab.sh")).args(args).output().expect("run lab.sh");
    assert!(out.status.success(), "lab.sh {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the lab may restart libvirtd on this host: only a libvirtd the lab started itself.
/// `Err` carries why not, for a "not run" report.
pub fn lab_owns_libvirtd() -> Result<(), String> {
    let out =
        Command::new("bash").arg(root().join("integration/lab.sh")).arg("owns-libvirtd").output().expect("run lab.sh");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().trim_start_matches("lab: ").to_owned())
    }
}

/// Another libvirt client on the node, as a co-located exporter or management agent is:
/// `virsh domstats` of every domain in a loop, alternating `--nowait` block stats and a full
/// query that takes each domain's job, until dropped. Counts its rounds.
pub struct OtherClient {
    stop: Arc<std::sync::atomic::AtomicBool>,
    rounds: Arc<std::sync::atomic::AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl OtherClient {
    pub fn start() -> OtherClient {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let (stop, rounds) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (s, r) = (stop.clone(), rounds.clone());
        let handle = std::thread::spawn(move || {
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                let args: &[&str] = if i % 2 == 0 { &["domstats", "--block", "--nowait"] } else { &["domstats"] };
                let Ok(mut child) = Command::new("virsh")
                    .arg("-c")
                    .arg(URI)
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                else {
                    return;
                };
                // A full query of a SIGSTOPped VM waits for its monitor for ever: killed when the
                // client is dropped, so a failing test ends instead of hanging in this join.
                while child.try_wait().ok().flatten().is_none() {
                    if s.load(Ordering::Relaxed) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                r.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });
        OtherClient { stop, rounds, handle: Some(handle) }
    }

    pub fn rounds(&self) -> usize {
        self.rounds.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for OtherClient {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh").arg("-c").arg(URI).args(args).output().expect("run virsh");
    assert!(out.status.success(), "virsh {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `virsh domstats --raw NAME` as key → value.
pub fn domstats(name: &str) -> BTreeMap<String, String> {
    virsh(&["domstats", "--raw", name])
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `virsh dommemstat NAME` as tag → KiB (or count).
pub fn dommemstat(name: &str) -> BTreeMap<String, f64> {
    virsh(&["dommemstat", name])
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// A lab domain owned by one test: created on `new`, destroyed on drop (even on panic).
pub struct Domain {
    pub name: String,
}

impl Domain {
    pub fn new(name: &str) -> Domain {
        // A leftover from an interrupted earlier run would make `add` a no-op with stale state.
        let _ = Command::new("bash").arg(root().join("integration/lab.sh")).args(["destroy", name]).output();
        lab(&["add", name]);
        Domain { name: name.to_owned() }
    }
    pub fn pid(&self) -> u32 {
        lab(&["pid", &self.name]).trim().parse().expect("pid")
    }
    pub fn stop(&self) {
        lab(&["stop-vm", &self.name]);
    }
    pub fn cont(&self) {
        lab(&["cont-vm", &self.name]);
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let lab = root().join("integration/lab.sh");
        let _ = Command::new("bash").arg(&lab).args(["cont-vm", &self.name]).output();
        let _ = Command::new("bash").arg(&lab).args(["destroy", &self.name]).output();
    }
}

/// Creates the lab domains `names`, `batch` at a time (the lab serialises what must be; QEMU
/// start-up overlaps).
pub fn domains(names: &[String], batch: usize) -> Vec<Domain> {
    let mut made = Vec::new();
    for chunk in names.chunks(batch) {
        made.extend(std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|n| s.spawn(move || Domain::new(n))).collect();
            handles.into_iter().map(|h| h.join().expect("lab add")).collect::<Vec<_>>()
        }));
    }
    made
}

/// A process that keeps one core busy until dropped, as guests do on a node.
pub struct Busy(Child);

impl Busy {
    pub fn start() -> Busy {
        Busy(Command::new("sh").args(["-c", "while :; do :; done"]).stdout(Stdio::null()).spawn().expect("busy loop"))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A VM's libvirt breaker openings so far (each reason that opens it).
pub fn libvirt_breaker_openings(e: &Exposition, name: &str) -> f64 {
    ["consecutive_failures", "hard_timeout", "probe_failed"]
        .iter()
        .filter_map(|r| {
            e.value("vmbridge_breaker_transitions_total", &[("name", name), ("source", "libvirt"), ("reason", r)])
        })
        .sum()
}

/// A running `vmbridge` process on a random loopback port.
pub struct Bridge {
    child: Child,
    pub addr: SocketAddr,
    pub debug_addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Bridge {
    pub fn start(args: &[&str]) -> Bridge {
        let mut all = vec!["--libvirt-uri", URI];
        all.extend_from_slice(args);
        Self::start_without_libvirt(&all)
    }

    /// Starts vmbridge with exactly `args` (plus listen address, log format and node name).
    pub fn start_without_libvirt(args: &[&str]) -> Bridge {
        Self::start_under(&[], args)
    }

    /// Starts vmbridge as [`start_without_libvirt`](Self::start_without_libvirt) does, run by
    /// `prefix` (e.g. `setpriv --reuid … --` to drop privileges) when it is not empty.
    pub fn start_under(prefix: &[&str], args: &[&str]) -> Bridge {
        let bin = env!("CARGO_BIN_EXE_vmbridge");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0", "--debug-listen", "127.0.0.1:0", "--log-json", "--node-name", "it-node"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vmbridge");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("vmbridge listening") || line.contains("vmbridge debug listening") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let (mut addr, mut debug_addr) = (None, None);
        while addr.is_none() || debug_addr.is_none() {
            let line = rx.recv_timeout(Duration::from_secs(20)).expect("vmbridge did not report its addresses");
            let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
            let a: SocketAddr = v["fields"]["addr"].as_str().expect("addr field").parse().expect("socket addr");
            if line.contains("vmbridge debug listening") { debug_addr = Some(a) } else { addr = Some(a) }
        }
        Bridge { child, addr: addr.expect("public"), debug_addr: debug_addr.expect("debug"), log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `limit` for the exit: its status and how long it took,
    /// or `None` if vmbridge was still running (it is then killed by `Drop`).
    pub fn terminate(&mut self, limit: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let sent = Instant::now();
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(ok.success(), "kill -TERM failed");
        while sent.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some((status, sent.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// GET from the public port, or from the debug port for `/debug/…` paths.
    pub fn get(&self, path: &str, accept: Option<&str>) -> Response {
        let addr = if path.starts_with("/debug") { self.debug_addr } else { self.addr };
        http_get(addr, path, accept)
    }

    pub fn metrics(&self) -> Exposition {
        let r = self.get("/metrics", None);
        assert_eq!(r.status, 200, "{}", r.body);
        Exposition::parse(&r.body)
    }

    /// Scrapes until `cond` holds; panics with the last exposition after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&Exposition) -> bool,
    ) -> (Exposition, Duration) {
        let start = Instant::now();
        loop {
            let e = self.metrics();
            if cond(&e) {
                return (e, start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; last scrape:\n{}",
                e.text
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test's report carries what vmbridge said (breaker transitions, poll errors).
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let from = log.len().saturating_sub(120);
            eprintln!("--- vmbridge log, last {} of {} lines:", log.len() - from, log.len());
            for line in &log[from..] {
                eprintln!("{line}");
            }
        }
    }
}

pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// A minimal HTTP/1.1 GET (Connection: close) so tests depend on nothing but std.
pub fn http_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Response {
    http_get_timed(addr, path, accept).0
}

/// [`http_get`], also returning how long the TCP connect took and the whole request took.
pub fn http_get_timed(addr: SocketAddr, path: &str, accept: Option<&str>) -> (Response, Duration, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    let connected = t.elapsed();
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n").expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    (Response { status, content_type, body }, connected, t.elapsed())
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed text exposition.
pub struct Exposition {
    pub text: String,
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (n, t) = rest.split_once(' ').expect("type line");
                types.insert(n.to_owned(), t.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            samples.push(parse_sample(line));
        }
        Exposition { text: text.to_owned(), samples, types }
    }

    /// Samples of `name` whose labels include every pair in `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.find(name, labels).as_slice() {
            [one] => Some(one.value),
            [] => None,
            many => panic!("{name} {labels:?} matches {} series", many.len()),
        }
    }

    /// Samples of one VM.
    pub fn of_vm(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.labels.get("name").map(String::as_str) == Some(name)).collect()
    }
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("sample line");
    let value: f64 = value.parse().expect("sample value");
    let Some((name, rest)) = series.split_once('{') else {
        return Sample { name: series.to_owned(), labels: BTreeMap::new(), value };
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.trim_end_matches('}').chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label value must be quoted in {line}");
        let mut v = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => v.push('\n'),
                    Some(o) => v.push(o),
                    None => break,
                },
                '"' => break,
                o => v.push(o),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), v);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Sample { name: name.to_owned(), labels, value }
}

/// Open file descriptors and threads of a process: the minimum of each over 20 readings
/// 50 ms apart, since polls and scrapes hold a file or a socket open for a moment; a leak
/// raises the minimum, a poll in flight does not.
pub fn fds_and_threads(pid: u32) -> (usize, usize) {
    let count = |p: String| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    let (mut fds, mut threads) = (usize::MAX, usize::MAX);
    for _ in 0..20 {
        fds = fds.min(count(format!("/proc/{pid}/fd")));
        threads = threads.min(count(format!("/proc/{pid}/task")));
        std::thread::sleep(Duration::from_millis(50));
    }
    (fds, threads)
}

/// A `kB` field of a process's `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect(field)
        * 1024
}

/// Resident set size of a process, bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// Peak resident set size of a process so far, bytes (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// Open file descriptors of a process, now.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Runs `integration/launcher.sh` (an emulated KubeVirt launcher: a libvirtd in its own mount
/// namespace) with `args`; its stdout. Fails the test when the script does.
pub fn launcher(args: &[&str]) -> String {
    let out =
        Command::new("bash").arg(root().join("integration/launcher.sh")).args(args).output().expect("launcher.sh");
    assert!(out.status.success(), "launcher.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A launcher started by `launcher.sh start`, resumed and killed when dropped.
pub struct Launcher(pub String);

impl Launcher {
    /// Launcher `name` with one domain `domain` (a leftover of that name is killed first).
    pub fn start(name: &str, domain: &str) -> Launcher {
        let _ = Command::new("bash").arg(root().join("integration/launcher.sh")).args(["kill", name]).output();
        launcher(&["start", name, domain]);
        Launcher(name.to_owned())
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ =
            Command::new("bash").arg(root().join("integration/launcher.sh")).args(["cont-daemon", &self.0]).output();
        let _ = Command::new("bash").arg(root().join("integration/launcher.sh")).args(["kill", &self.0]).output();
    }
}
