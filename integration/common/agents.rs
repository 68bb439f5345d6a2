//! Guest agents for tests: a real qemu-ga on a Unix socket (it reports this host as its
//! guest), and a scripted agent for the faults a real one cannot be made to produce.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmbridge-qga-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A real qemu-ga listening on a Unix socket.
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
}

impl Agent {
    pub fn start(dir: &Path, name: &str) -> Agent {
        Self::spawn(dir, name, &[])
    }

    /// A real qemu-ga that logs every request it reads (`-v -l`): count them with
    /// [`requests_read`] on the returned log path.
    pub fn start_logged(dir: &Path, name: &str) -> (Agent, PathBuf) {
        let log = dir.join(format!("{name}.log"));
        let agent = Self::spawn(dir, name, &["-v".as_ref(), "-l".as_ref(), log.as_os_str()]);
        (agent, log)
    }

    fn spawn(dir: &Path, name: &str, extra: &[&std::ffi::OsStr]) -> Agent {
        let socket = dir.join(format!("{name}.sock"));
        let state = dir.join(format!("{name}.state"));
        std::fs::create_dir_all(&state).expect("state dir");
        let qemu_ga = ["/usr/sbin/qemu-ga", "/usr/bin/qemu-ga"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("qemu-ga installed (integration/lab.sh install)");
        let child = Command::new(qemu_ga)
            .args(["-m", "unix-listen", "-p"])
            .arg(&socket)
            .arg("-t")
            .arg(&state)
            .arg("-f")
            .arg(dir.join(format!("{name}.pid")))
            .args(extra)
            .spawn()
            .expect("start qemu-ga");
        let start = Instant::now();
        while !socket.exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "qemu-ga did not create its socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent { child, socket }
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().expect("kill");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The requests a logging qemu-ga ([`Agent::start_logged`]) has read so far: its debug log has
/// one "read data, count: N, data: {...}" line per request (guest-sync included).
pub fn requests_read(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once("read data, count: ").map(|(_, rest)| rest.to_owned()))
        .collect()
}

/// What a scripted agent does after answering guest-sync and guest-info.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Answers like a well-behaved (if small) agent.
    Healthy,
    Garbage,
    SlowLoris,
    Oversized,
    Flood,
    /// Replies of just under 1 MiB of tiny values (`[0,0,…]`), which grow sixteenfold when
    /// parsed without a bound.
    TinyValues,
    /// Well-formed replies with impossible values: fsinfo with `/` used (2000) over its
    /// capacity (1000) beside a sane `/data`, and `guest-get-load` (also advertised) with a
    /// negative 1-minute load beside sane 5- and 15-minute ones.
    Impossible,
}

/// A scripted agent for faults a real one cannot be made to produce; its behaviour can be
/// switched while it runs (to measure recovery).
pub struct HostileAgent(Arc<Mutex<Misbehaviour>>);

impl HostileAgent {
    pub fn set(&self, mode: Misbehaviour) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }
}

pub fn hostile_agent(path: PathBuf, mode: Misbehaviour) -> HostileAgent {
    let listener = UnixListener::bind(&path).expect("bind");
    let shared = Arc::new(Mutex::new(mode));
    let handle = HostileAgent(shared.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().expect("clone");
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    let Ok(req) = serde_json::from_str::<Value>(&line) else { continue };
                    let reply = match req["execute"].as_str().unwrap_or_default() {
                        "guest-sync" => json!({"return": req["arguments"]["id"]}).to_string(),
                        "guest-info" => {
                            let impossible =
                                *shared.lock().unwrap_or_else(|e| e.into_inner()) == Misbehaviour::Impossible;
                            json!({"return": {"version": "evil\"1.0\n", "supported_commands": [
                                {"name": "guest-get-fsinfo", "enabled": true, "success-response": true},
                                {"name": "guest-get-osinfo", "enabled": true, "success-response": true},
                                {"name": "guest-get-load", "enabled": impossible, "success-response": true}]}})
                            .to_string()
                        }
                        _ => match *shared.lock().unwrap_or_else(|e| e.into_inner()) {
                            Misbehaviour::Healthy => match req["execute"].as_str() {
                                Some("guest-get-fsinfo") => json!({"return": [{"name": "vda1", "mountpoint": "/", "type": "ext4", "disk": [], "total-bytes": 1000, "used-bytes": 10}]}).to_string(),
                                _ => json!({"return": {"id": "fake", "pretty-name": "Fake OS"}}).to_string(),
                            },
                            Misbehaviour::Impossible => match req["execute"].as_str() {
                                Some("guest-get-fsinfo") => json!({"return": [
                                    {"name": "vda1", "mountpoint": "/", "type": "ext4", "disk": [], "total-bytes": 1000, "used-bytes": 2000},
                                    {"name": "vdb", "mountpoint": "/data", "type": "xfs", "disk": [], "total-bytes": 5000, "used-bytes": 100}]})
                                .to_string(),
                                Some("guest-get-load") => {
                                    json!({"return": {"load1": -0.5, "load5": 0.25, "load15": 0.125}}).to_string()
                                }
                                _ => json!({"return": {"id": "fake", "pretty-name": "Fake OS"}}).to_string(),
                            },
                            Misbehaviour::Garbage => "}}}{{{ not json at all".to_owned(),
                            Misbehaviour::SlowLoris => {
                                for b in b"{\"return\": [" {
                                    if w.write_all(&[*b]).is_err() {
                                        return;
                                    }
                                    std::thread::sleep(Duration::from_millis(300));
                                }
                                continue;
                            }
                            Misbehaviour::Oversized => {
                                format!("{{\"return\": {{\"id\": \"{}\"}}}}", "x".repeat(2 << 20))
                            }
                            Misbehaviour::TinyValues => {
                                format!("{{\"return\": [{}0]}}", "0,".repeat((1 << 19) - 32))
                            }
                            Misbehaviour::Flood => {
                                let fs: Vec<Value> = (0..1000)
                                    .map(|i| json!({"name": format!("sd{i}"), "mountpoint": format!("/mnt/\"{i}\"\n{}", "y".repeat(400)), "type": "ext4", "disk": [], "total-bytes": 100, "used-bytes": 1}))
                                    .collect();
                                if req["execute"] == "guest-get-fsinfo" {
                                    json!({"return": fs}).to_string()
                                } else {
                                    json!({"return": {"id": "x\\y"}}).to_string()
                                }
                            }
                        },
                    };
                    if writeln!(w, "{reply}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    handle
}

/// Every request a scripted agent read: when, and its command name.
pub type RequestLog = Arc<Mutex<Vec<(Instant, String)>>>;

/// Requests of `command` in `log` read in `[from, to)`.
pub fn count_between(log: &RequestLog, command: &str, from: Instant, to: Instant) -> usize {
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    log.iter().filter(|(t, c)| c == command && *t >= from && *t < to).count()
}

/// A scripted agent that answers like a small healthy one (`guest-get-fsinfo` and
/// `guest-get-osinfo` enabled), except that its reply to `slow` comes `delay` late, which a
/// real agent cannot be made to do for one command alone. Every request it reads is logged
/// with its time; connections are served side by side, so a reply still being delayed on a
/// connection vmbridge abandoned does not hold up the next one.
pub fn delaying_agent(path: PathBuf, slow: &'static str, delay: Duration) -> RequestLog {
    let listener = UnixListener::bind(&path).expect("bind");
    let log: RequestLog = Arc::default();
    let shared = log.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let log = shared.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().expect("clone");
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    let Ok(req) = serde_json::from_str::<Value>(&line) else { continue };
                    let cmd = req["execute"].as_str().unwrap_or_default().to_owned();
                    log.lock().unwrap_or_else(|e| e.into_inner()).push((Instant::now(), cmd.clone()));
                    let reply = match cmd.as_str() {
                        "guest-sync" => json!({"return": req["arguments"]["id"]}),
                        "guest-info" => json!({"return": {"version": "8.2.0", "supported_commands": [
                            {"name": "guest-ping", "enabled": true, "success-response": true},
                            {"name": "guest-get-fsinfo", "enabled": true, "success-response": true},
                            {"name": "guest-get-osinfo", "enabled": true, "success-response": true}]}}),
                        "guest-get-fsinfo" => json!({"return": [{"name": "vda1", "mountpoint": "/", "type": "ext4",
                            "disk": [], "total-bytes": 1000, "used-bytes": 10}]}),
                        "guest-get-osinfo" => json!({"return": {"id": "debian", "name": "Debian GNU/Linux",
                            "version-id": "12", "kernel-release": "6.1.0", "machine": "x86_64"}}),
                        "guest-ping" => json!({"return": {}}),
                        _ => json!({"error": {"class": "CommandNotFound", "desc": "not scripted"}}),
                    };
                    if cmd == slow {
                        std::thread::sleep(delay);
                    }
                    if writeln!(w, "{reply}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    log
}

/// Every `[qga.periods]` key.
pub const QGA_PERIODS: [&str; 12] = [
    "info",
    "fsinfo",
    "network",
    "users",
    "osinfo",
    "vcpus",
    "load",
    "diskstats",
    "cpustats",
    "timezone",
    "hostname",
    "memory_block_info",
];

/// Writes a vmbridge config polling everything every second: the given libvirt URIs, static
/// guest-agent VMs `(namespace, name, socket)`, and `extra` TOML; returns its path.
pub fn qga_config(dir: &Path, uris: &[&str], vms: &[(&str, &str, &Path)], extra: &str) -> PathBuf {
    let every_second: Vec<(&str, &str)> = QGA_PERIODS.iter().map(|k| (*k, "1s")).collect();
    vms_config(dir, uris, vms, "timeout = \"1s\"", &every_second, extra)
}

/// Writes a vmbridge config with 1 s polls and a fast breaker: the given libvirt URIs, static
/// guest-agent VMs `(namespace, name, socket)`, the `[qga]` keys `qga`, the command periods
/// `periods` (`[qga.periods]`), and `extra` TOML; returns its path.
pub fn vms_config(
    dir: &Path,
    uris: &[&str],
    vms: &[(&str, &str, &Path)],
    qga: &str,
    periods: &[(&str, &str)],
    extra: &str,
) -> PathBuf {
    let uris: Vec<String> = uris.iter().map(|u| format!("\"{u}\"")).collect();
    let mut toml = format!(
        "[libvirt]\nuris = [{}]\n[poll]\ninterval = \"1s\"\ntimeout = \"1s\"\nretry_delay = \"100ms\"\n\
         [breaker]\nbackoff_min = \"500ms\"\nbackoff_max = \"2s\"\n[qga]\n{qga}\n[qga.periods]\n",
        uris.join(", ")
    );
    for (k, v) in periods {
        toml.push_str(&format!("{k} = \"{v}\"\n"));
    }
    toml.push_str(extra);
    for (ns, name, sock) in vms {
        toml.push_str(&format!(
            "[[vms]]\nnamespace = \"{ns}\"\nname = \"{name}\"\nqga_socket = \"{}\"\n",
            sock.display()
        ));
    }
    let path = dir.join("vmbridge.toml");
    std::fs::write(&path, toml).expect("config");
    path
}
