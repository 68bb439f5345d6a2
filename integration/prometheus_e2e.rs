//! End to end with the real consumers of the exposition: a real Prometheus server scraping
//! vmbridge (which negotiates OpenMetrics, as Prometheus does by default), `promtool check
//! metrics` on every exposition vmbridge serves, and a golden file of the whole exposition for
//! one VM whose guest agent is a scripted, deterministic fake.
//!
//! `prometheus` and `promtool` (Debian package `prometheus`) are required: a missing tool fails
//! the test with an install hint, it never skips.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, qemu-ga, prometheus, promtool)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::agents::{Agent, qga_config};
use common::*;
use serde_json::{Value, json};

const OPENMETRICS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0";

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// A scratch directory, removed on drop unless the test failed (kept for its logs). Declared
/// first in a test, it is dropped last, after the processes writing into it.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn scratch(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("vmbridge-prom-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    Scratch(d)
}

/// The path of a required external tool; panics (never skips) when it is not installed.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: these tests need a real Prometheus server and promtool \
                 (Debian: `apt-get install prometheus`, which provides /usr/bin/prometheus and /usr/bin/promtool)"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Percent-encodes a query parameter.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Real processes: qemu-ga, Prometheus, promtool.

/// A real Prometheus server on loopback, killed on drop (even on panic).
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second as job `vmbridge`, and waits until it
    /// is ready. The scrape config keeps Prometheus' default `Accept` header (OpenMetrics first).
    fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let bin = tool("prometheus");
        std::fs::create_dir_all(dir).expect("prometheus dir");
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: vmbridge\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("prometheus.yml");
        // The free port may be taken between probing and binding: retry a few times.
        for attempt in 1..=3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let out = std::fs::File::create(&log).expect("log file");
            let child = Command::new(&bin)
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(out.try_clone().expect("log fd"))
                .stderr(out)
                .spawn()
                .expect("start prometheus");
            let mut p = Prometheus { child, addr, log };
            let start = Instant::now();
            loop {
                if let Some(status) = p.child.try_wait().expect("wait") {
                    let log = p.log_text();
                    assert!(
                        log.contains("address already in use") && attempt < 3,
                        "prometheus exited ({status}) before it was ready:\n{log}"
                    );
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                    && http_get(addr, "/-/ready", None).status == 200
                {
                    return p;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "prometheus not ready after 60 s:\n{}",
                    p.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        unreachable!("the last attempt panics")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/…`: the `data` member of a successful reply.
    fn api(&self, path: &str) -> Value {
        let r = http_get(self.addr, path, None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", r.body));
        assert_eq!(v["status"], "success", "GET {path}: {v}");
        v["data"].clone()
    }

    /// An instant query: its vector result.
    fn query(&self, q: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", enc(q)));
        assert_eq!(data["resultType"], "vector", "{q}: {data}");
        data["result"].as_array().expect("result").clone()
    }

    /// The value of an instant query that must return exactly one series.
    fn scalar(&self, q: &str) -> f64 {
        match self.query(q).as_slice() {
            [one] => one["value"][1].as_str().expect("value").parse().expect("float"),
            other => panic!("{q} returned {} series: {other:?}", other.len()),
        }
    }

    /// The vmbridge target as `/api/v1/targets` shows it (`Value::Null` until Prometheus'
    /// discovery has handed it to the scrape manager).
    fn vmbridge_target(&self) -> Value {
        let data = self.api("/api/v1/targets?state=active");
        let targets: Vec<&Value> = data["activeTargets"]
            .as_array()
            .expect("activeTargets")
            .iter()
            .filter(|t| t["labels"]["job"] == "vmbridge")
            .collect();
        assert!(targets.len() <= 1, "more than one vmbridge target: {data}");
        targets.first().map_or(Value::Null, |t| (*t).clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` on `text` (stdin): whether it exited 0, and everything it printed.
fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = text.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("promtool");
    writer.join().expect("stdin writer");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), printed)
}

/// promtool must exit 0 and print nothing: every lint finding (a counter without `_total`,
/// a missing HELP, a non-base unit, …) fails the test. No finding is allowed.
fn assert_promtool_clean(what: &str, text: &str) {
    let (ok, printed) = promtool_check_metrics(text);
    assert!(ok && printed.trim().is_empty(), "promtool check metrics on {what} (exit ok: {ok}):\n{printed}");
}

// ------------------------------------------------------------------------------------------
// vmbridge configuration.

/// A config with the given libvirt URIs and static guest-agent VMs (namespace, name, socket);
/// everything polled every second.
fn bridge_config(dir: &Path, uris: &[&str], vms: &[(&str, &str, &Path)]) -> PathBuf {
    qga_config(dir, uris, vms, "")
}

fn start_bridge(cfg: &Path) -> Bridge {
    Bridge::start_without_libvirt(&["--config", cfg.to_str().expect("utf-8")])
}

// ------------------------------------------------------------------------------------------
// A strict reader of both exposition formats.

/// One sample line, label values kept as written (escaped).
#[derive(Debug, Clone, PartialEq)]
struct RawSample {
    name: String,
    labels: Vec<(String, String)>,
    value: String,
    rest: Option<String>,
}

impl RawSample {
    fn series(&self) -> String {
        let mut labels = self.labels.clone();
        labels.sort();
        format!("{}{labels:?}", self.name)
    }
    fn label(&self, k: &str) -> Option<&str> {
        self.labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    fn render(&self) -> String {
        let mut s = self.name.clone();
        if !self.labels.is_empty() {
            let l: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            s.push_str(&format!("{{{}}}", l.join(",")));
        }
        s.push(' ');
        s.push_str(&self.value);
        if let Some(r) = &self.rest {
            s.push(' ');
            s.push_str(r);
        }
        s
    }
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn parse_raw(line: &str) -> Result<RawSample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_name(name, true) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                r = after;
                break;
            }
            let eq = r.find('=').ok_or("label without =")?;
            let key = &r[..eq];
            if !is_name(key, false) {
                return Err(format!("invalid label name {key:?}"));
            }
            r = r[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
            let mut end = None;
            let mut chars = r.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, '\\' | '"' | 'n')) => {}
                        other => return Err(format!("invalid escape {other:?} in label {key}")),
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or("unterminated label value")?;
            if labels.iter().any(|(k, _): &(String, String)| k == key) {
                return Err(format!("label {key} twice"));
            }
            labels.push((key.to_owned(), r[..end].to_owned()));
            r = &r[end + 1..];
            if let Some(after) = r.strip_prefix(',') {
                if after.starts_with('}') {
                    return Err("trailing comma in labels".into());
                }
                r = after;
            } else if !r.starts_with('}') {
                return Err("labels not separated by ','".into());
            }
        }
        rest = r;
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let (value, ts) = match rest.split_once(' ') {
        Some((v, t)) => (v, Some(t.to_owned())),
        None => (rest, None),
    };
    let numeric = value.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c));
    if !(numeric || ["NaN", "+Inf", "-Inf"].contains(&value)) || value.parse::<f64>().is_err() {
        return Err(format!("invalid value {value:?}"));
    }
    Ok(RawSample { name: name.to_owned(), labels, value: value.to_owned(), rest: ts })
}

#[derive(Default)]
struct FamilyMeta {
    ty: Option<String>,
    help: bool,
    unit: bool,
    samples: usize,
}

/// Checks an exposition's structure, in the classic text format (`om == false`) or
/// OpenMetrics 1.0: metadata before samples and at most once per family, families contiguous,
/// every sample of a declared TYPE with a name that fits it, HELP everywhere, UNIT a suffix of
/// its family, valid names and escapes, no duplicate series, no NaN (vmbridge invents no
/// values), counters finite and non-negative, info values 1, and `# EOF` last in OpenMetrics.
/// Returns the problems found and the samples.
fn validate(text: &str, om: bool) -> (Vec<String>, Vec<RawSample>) {
    let mut problems = Vec::new();
    let body = if om {
        let trimmed = text.strip_suffix('\n').unwrap_or(text);
        match trimmed.strip_suffix("# EOF") {
            Some(b) if b.is_empty() || b.ends_with('\n') => b,
            _ => {
                problems.push("OpenMetrics exposition does not end with `# EOF`".to_owned());
                trimmed
            }
        }
    } else {
        if !text.is_empty() && !text.ends_with('\n') {
            problems.push("text exposition does not end with a newline".to_owned());
        }
        text
    };
    let types: &[&str] = if om {
        &["counter", "gauge", "info", "stateset", "histogram", "gaugehistogram", "summary", "unknown"]
    } else {
        &["counter", "gauge", "histogram", "summary", "untyped"]
    };
    let mut families: BTreeMap<String, FamilyMeta> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut series = BTreeSet::new();
    let mut samples = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            problems.push(format!("line {n}: empty line"));
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.strip_prefix(' ').unwrap_or(comment).splitn(3, ' ');
            let (kind, name, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
            let allowed = if om { ["HELP", "TYPE", "UNIT"].contains(&kind) } else { ["HELP", "TYPE"].contains(&kind) };
            if !allowed || !is_name(name, true) {
                problems.push(format!("line {n}: unexpected comment {line:?}"));
                continue;
            }
            if current.as_deref() != Some(name) {
                if families.contains_key(name) {
                    problems.push(format!("line {n}: family {name} appears twice (not contiguous)"));
                }
                current = Some(name.to_owned());
            }
            let fam = families.entry(name.to_owned()).or_default();
            if fam.samples > 0 {
                problems.push(format!("line {n}: {kind} of {name} after its samples"));
            }
            match kind {
                "HELP" => {
                    if std::mem::replace(&mut fam.help, true) {
                        problems.push(format!("line {n}: second HELP for {name}"));
                    }
                    if arg.is_none_or(|h| h.trim().is_empty()) {
                        problems.push(format!("line {n}: empty HELP for {name}"));
                    }
                }
                "TYPE" => {
                    let ty = arg.unwrap_or_default();
                    if !types.contains(&ty) {
                        problems.push(format!("line {n}: unknown type {ty:?} for {name}"));
                    }
                    if fam.ty.replace(ty.to_owned()).is_some() {
                        problems.push(format!("line {n}: second TYPE for {name}"));
                    }
                }
                _ => {
                    let unit = arg.unwrap_or_default();
                    if std::mem::replace(&mut fam.unit, true) {
                        problems.push(format!("line {n}: second UNIT for {name}"));
                    }
                    if unit.is_empty() || !name.ends_with(&format!("_{unit}")) {
                        problems.push(format!("line {n}: family {name} does not end with its unit {unit:?}"));
                    }
                }
            }
            continue;
        }
        let s = match parse_raw(line) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("line {n}: {e}: {line:?}"));
                continue;
            }
        };
        if s.rest.is_some() {
            problems.push(format!("line {n}: unexpected timestamp or exemplar: {line:?}"));
        }
        let Some(fam_name) = current.clone() else {
            problems.push(format!("line {n}: sample before any metadata: {line:?}"));
            continue;
        };
        let fam = families.get_mut(&fam_name).expect("current family");
        fam.samples += 1;
        let ty = fam.ty.clone().unwrap_or_default();
        if fam.ty.is_none() {
            problems.push(format!("line {n}: sample of {fam_name}, which has no TYPE"));
        }
        let suffixes: &[&str] = match (om, ty.as_str()) {
            (true, "counter") => &["_total", "_created"],
            (true, "info") => &["_info"],
            (true, "histogram") => &["_bucket", "_count", "_sum", "_created"],
            (true, "gaugehistogram") => &["_bucket", "_gcount", "_gsum"],
            (true, "summary") => &["", "_count", "_sum", "_created"],
            (false, "histogram") => &["_bucket", "_count", "_sum"],
            (false, "summary") => &["", "_count", "_sum"],
            _ => &[""],
        };
        if !suffixes.iter().any(|suf| s.name == format!("{fam_name}{suf}")) {
            problems.push(format!("line {n}: sample {} does not belong to family {fam_name} ({ty})", s.name));
        }
        if !series.insert(s.series()) {
            problems.push(format!("line {n}: duplicate series {line:?}"));
        }
        let v: f64 = s.value.parse().unwrap_or(f64::NAN);
        if v.is_nan() {
            problems.push(format!("line {n}: NaN: {line:?}"));
        }
        if ty == "counter" && !(v.is_finite() && v >= 0.0) {
            problems.push(format!("line {n}: counter value {v} is not finite and non-negative"));
        }
        if (ty == "info" || (!om && s.name.ends_with("_info"))) && v != 1.0 {
            problems.push(format!("line {n}: info value {v} is not 1"));
        }
        samples.push(s);
    }
    for (name, fam) in &families {
        if !fam.help {
            problems.push(format!("family {name} has no HELP"));
        }
        if fam.ty.is_none() {
            problems.push(format!("family {name} has no TYPE"));
        }
    }
    (problems, samples)
}

fn assert_valid(what: &str, text: &str, om: bool) -> Vec<RawSample> {
    let (problems, samples) = validate(text, om);
    assert!(problems.is_empty(), "{what}: {} problems:\n{}", problems.len(), problems.join("\n"));
    samples
}

/// The structural checks are not vacuous: each broken exposition is reported.
#[test]
fn validator_rejects_broken_expositions() {
    let good_om = "# HELP a_seconds A.\n# TYPE a_seconds counter\n# UNIT a_seconds seconds\na_seconds_total{x=\"1\"} 2.0\n\
                   # HELP b B.\n# TYPE b info\nb_info{v=\"a\\\"b\"} 1\n# EOF\n";
    assert_eq!(validate(good_om, true).0, Vec::<String>::new());
    let good_text = "# HELP a_seconds_total A.\n# TYPE a_seconds_total counter\na_seconds_total{x=\"1\"} 2.0\n";
    assert_eq!(validate(good_text, false).0, Vec::<String>::new());
    for (what, text, om) in [
        ("no EOF", good_om.replace("# EOF\n", ""), true),
        ("EOF in text", format!("{good_text}# EOF\n"), false),
        ("counter without _total", good_om.replace("a_seconds_total{", "a_seconds{"), true),
        ("text counter family name", good_text.replace("a_seconds_total counter", "a_seconds counter"), false),
        ("info in text", "# HELP b B.\n# TYPE b info\nb_info 1\n".to_owned(), false),
        ("unit not a suffix", good_om.replace("UNIT a_seconds seconds", "UNIT a_seconds bytes"), true),
        ("no TYPE", "# HELP g G.\ng 1\n".to_owned(), false),
        ("no HELP", "# TYPE g gauge\ng 1\n".to_owned(), false),
        ("duplicate series", "# HELP g G.\n# TYPE g gauge\ng{a=\"1\"} 1\ng{a=\"1\"} 2\n".to_owned(), false),
        ("NaN", "# HELP g G.\n# TYPE g gauge\ng NaN\n".to_owned(), false),
        ("bad escape", "# HELP g G.\n# TYPE g gauge\ng{a=\"\\x\"} 1\n".to_owned(), false),
        (
            "interleaved",
            "# HELP g G.\n# TYPE g gauge\ng 1\n# HELP h H.\n# TYPE h gauge\nh 1\n# TYPE g gauge\n".to_owned(),
            false,
        ),
        ("negative counter", good_text.replace("2.0", "-1"), false),
        ("info value", good_om.replace("} 1\n", "} 2\n"), true),
    ] {
        assert!(!validate(&text, om).0.is_empty(), "{what} not reported:\n{text}");
    }
}

// ------------------------------------------------------------------------------------------
// 1. A real Prometheus server scrapes vmbridge.

/// Two lab domains and a real qemu-ga static VM in one vmbridge, scraped by a real Prometheus
/// every second over OpenMetrics: the target is up without error, range queries return the
/// samples, guest series are stored, and Prometheus counted no rejected sample.
#[test]
fn prometheus_scrapes_vmbridge_end_to_end() {
    let _serial = serial();
    tool("prometheus");
    let t0 = Instant::now();
    let dir = scratch("e2e");
    let names = ["ite-prom-a", "ite-prom-b"];
    let _domains: Vec<Domain> = names.iter().map(|n| Domain::new(n)).collect();
    let agent = Agent::start(&dir, "agent");
    let bridge = start_bridge(&bridge_config(&dir, &[URI], &[("e2e", "agent-vm", &agent.socket)]));
    bridge.wait_for(Duration::from_secs(30), "both lab domains and the agent VM exported", |e| {
        names.iter().all(|n| e.value("kubevirt_vmi_memory_resident_bytes", &[("name", n)]).is_some())
            && !e.find("kubevirt_vmi_filesystem_capacity_bytes", &[("name", "agent-vm")]).is_empty()
    });
    let lab_ready = t0.elapsed();

    let prom = Prometheus::start(&dir.join("prometheus"), bridge.addr);
    let prom_ready = t0.elapsed();
    // At least two scrape intervals: wait until both domains have ≥ 2 points in range queries.
    let range = |name: &str| {
        let end = now();
        let q = format!("kubevirt_vmi_memory_resident_bytes{{name=\"{name}\"}}");
        prom.api(&format!("/api/v1/query_range?query={}&start={:.3}&end={end:.3}&step=1s", enc(&q), end - 30.0))
    };
    let points = |data: &Value| -> usize {
        data["result"].as_array().and_then(|r| r.first()).and_then(|s| s["values"].as_array()).map_or(0, Vec::len)
    };
    let start = Instant::now();
    loop {
        let target = prom.vmbridge_target();
        if target["health"] == "up" && names.iter().all(|n| points(&range(n)) >= 2) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no two good scrapes within 60 s; target: {target}\nprometheus log:\n{}",
            prom.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let two_scrapes = t0.elapsed();

    // The target: the right URL, up, no error.
    let target = prom.vmbridge_target();
    assert_eq!(target["scrapeUrl"], format!("http://{}/metrics", bridge.addr), "{target}");
    assert_eq!(target["health"], "up", "{target}");
    assert_eq!(target["lastError"], "", "{target}");
    eprintln!("last scrape took {} s", target["lastScrapeDuration"]);

    // Range queries: a matrix with one series per domain, ≥ 2 points, positive RSS.
    for n in names {
        let data = range(n);
        assert_eq!(data["resultType"], "matrix", "{data}");
        let result = data["result"].as_array().expect("result");
        assert_eq!(result.len(), 1, "{n}: {data}");
        assert_eq!(result[0]["metric"]["namespace"], "default", "{data}");
        assert_eq!(result[0]["metric"]["job"], "vmbridge", "{data}");
        let values = result[0]["values"].as_array().expect("values");
        assert!(values.len() >= 2, "{n}: {data}");
        for v in values {
            let x: f64 = v[1].as_str().expect("value").parse().expect("float");
            assert!(x > 0.0, "{n}: resident bytes {x}");
        }
    }

    // The real agent's guest data was stored.
    let fs = prom.query("kubevirt_vmi_filesystem_capacity_bytes{name=\"agent-vm\"}");
    assert!(!fs.is_empty(), "no filesystem series for agent-vm");
    assert!(fs.iter().all(|s| s["metric"]["namespace"] == "e2e"), "{fs:?}");
    assert_eq!(prom.scalar("vmbridge_source_up{name=\"agent-vm\",source=\"qga\"}"), 1.0);

    // No scrape failed and Prometheus took every sample.
    assert_eq!(prom.scalar("up{job=\"vmbridge\"}"), 1.0);
    assert_eq!(prom.scalar("min_over_time(up{job=\"vmbridge\"}[1m])"), 1.0, "every scrape so far was up");
    assert!(prom.scalar("scrape_samples_scraped{job=\"vmbridge\"}") > 0.0);
    assert_eq!(
        prom.scalar(
            "scrape_samples_scraped{job=\"vmbridge\"} - scrape_samples_post_metric_relabeling{job=\"vmbridge\"}"
        ),
        0.0
    );
    // Prometheus' own counters of rejected samples (it does not scrape itself here, so they are
    // read from its /metrics rather than through the query API).
    let own = http_get(prom.addr, "/metrics", None);
    assert_eq!(own.status, 200);
    let mut rejected = Vec::new();
    let mut seen = 0;
    for line in own.body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("sample");
        let counts_rejects = series.starts_with("prometheus_target_scrapes_")
            || series.starts_with("prometheus_target_scrape_pool_exceeded_")
            || series.starts_with("prometheus_target_scrape_pools_failed_total")
            || series.starts_with("prometheus_target_scrape_pool_reloads_failed_total");
        if counts_rejects {
            seen += 1;
            if value.parse::<f64>().expect("float") != 0.0 {
                rejected.push(line.to_owned());
            }
        }
    }
    assert!(seen >= 8, "Prometheus' scrape error counters not found in its /metrics");
    assert!(rejected.is_empty(), "Prometheus rejected samples:\n{}", rejected.join("\n"));
    let log = prom.log_text();
    let scrape_warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("scrape") && (l.contains("level=warn") || l.contains("level=error")))
        .collect();
    assert!(scrape_warnings.is_empty(), "prometheus logged scrape problems:\n{}", scrape_warnings.join("\n"));

    // Prometheus negotiated OpenMetrics: the metadata it stored has info types and units,
    // which the classic text format cannot carry.
    let meta = prom.api("/api/v1/metadata?metric=vmbridge_build");
    assert_eq!(meta["vmbridge_build"][0]["type"], "info", "{meta}");
    let meta = prom.api("/api/v1/metadata?metric=kubevirt_vmi_cpu_usage_seconds");
    assert_eq!(meta["kubevirt_vmi_cpu_usage_seconds"][0]["type"], "counter", "{meta}");
    assert_eq!(meta["kubevirt_vmi_cpu_usage_seconds"][0]["unit"], "seconds", "{meta}");
    eprintln!(
        "lab + bridge ready {lab_ready:?}, prometheus ready {prom_ready:?}, ≥ 2 points stored {two_scrapes:?}, \
         total {:?}",
        t0.elapsed()
    );
}

// ------------------------------------------------------------------------------------------
// 2. promtool on every exposition.

/// Both formats, with a libvirt domain and a real qemu-ga VM: the classic text passes
/// `promtool check metrics` with no finding at all; OpenMetrics (which promtool 2.42 cannot
/// parse: its `check metrics` reads only the classic format and stops at `# TYPE … info`)
/// passes the structural checks of [`validate`], and both formats carry the same series.
#[test]
fn every_exposition_passes_promtool_check_metrics() {
    let _serial = serial();
    tool("promtool");
    let dir = scratch("lint");
    let domain = Domain::new("ite-lint-a");
    let agent = Agent::start(&dir, "agent");
    let bridge = start_bridge(&bridge_config(&dir, &[URI], &[("e2e", "agent-vm", &agent.socket)]));
    bridge.wait_for(Duration::from_secs(30), "the lab domain and the agent VM exported", |e| {
        e.value("kubevirt_vmi_memory_resident_bytes", &[("name", &domain.name)]).is_some()
            && e.value("kubevirt_vmi_guest_vcpus", &[("name", "agent-vm")]).is_some()
            && !e.find("kubevirt_vmi_filesystem_capacity_bytes", &[("name", "agent-vm")]).is_empty()
    });

    // Same series in both formats: all of the lab domain's, and the agent VM's metric names
    // (its addresses and filesystems are this host's and may change between two scrapes). A
    // poll landing between the two scrapes may change a series set: up to 5 pairs are taken,
    // and every one of them must pass promtool and the structural checks.
    let of = |samples: &[RawSample], vm: &str| -> BTreeSet<String> {
        samples.iter().filter(|s| s.label("name") == Some(vm)).map(RawSample::series).collect()
    };
    let names = |samples: &[RawSample], vm: &str| -> BTreeSet<String> {
        samples.iter().filter(|s| s.label("name") == Some(vm)).map(|s| s.name.clone()).collect()
    };
    for attempt in 1..=5 {
        let text = bridge.get("/metrics", None);
        assert_eq!(text.status, 200);
        assert_eq!(text.content_type, "text/plain; version=0.0.4; charset=utf-8");
        let om = bridge.get("/metrics", Some(OPENMETRICS_ACCEPT));
        assert_eq!(om.status, 200);
        assert_eq!(om.content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");

        let started = Instant::now();
        assert_promtool_clean("the text exposition", &text.body);
        let promtool_took = started.elapsed();
        let text_samples = assert_valid("text exposition", &text.body, false);
        let om_samples = assert_valid("OpenMetrics exposition", &om.body, true);

        let (dom_text, dom_om) = (of(&text_samples, &domain.name), of(&om_samples, &domain.name));
        assert!(dom_text.len() > 30, "only {} series for {}", dom_text.len(), domain.name);
        let (agent_text, agent_om) = (names(&text_samples, "agent-vm"), names(&om_samples, "agent-vm"));
        assert!(agent_text.contains("kubevirt_vmi_guest_os_info"), "{agent_text:?}");
        if (dom_text != dom_om || agent_text != agent_om) && attempt < 5 {
            continue;
        }
        assert_eq!(dom_text, dom_om, "the lab domain's series differ between the formats");
        assert_eq!(agent_text, agent_om, "the agent VM's metric names differ between the formats");

        // What promtool says about OpenMetrics, for the record (asserted only through `validate`).
        let (ok, printed) = promtool_check_metrics(&om.body);
        eprintln!("promtool on OpenMetrics: exit ok {ok}: {}", printed.lines().next().unwrap_or(""));
        eprintln!(
            "text: {} samples, {} lines; OpenMetrics: {} samples; promtool took {promtool_took:?}; attempt {attempt}",
            text_samples.len(),
            text.body.lines().count(),
            om_samples.len()
        );
        break;
    }
}

// ------------------------------------------------------------------------------------------
// 3. A golden exposition.

/// Commands the fake agent lists in `guest-info` (all enabled but the last).
const FAKE_COMMANDS: &[&str] = &[
    "guest-sync",
    "guest-ping",
    "guest-info",
    "guest-get-fsinfo",
    "guest-network-get-interfaces",
    "guest-get-osinfo",
    "guest-get-vcpus",
    "guest-get-users",
    "guest-get-timezone",
    "guest-get-host-name",
    "guest-get-memory-block-info",
    "guest-get-diskstats",
    "guest-get-cpustats",
    "guest-get-load",
    "guest-exec",
];

/// The fixed reply (`return` value) of the fake agent to `cmd`; `None`: CommandNotFound.
fn fake_reply(cmd: &str) -> Option<Value> {
    Some(match cmd {
        "guest-ping" => json!({}),
        "guest-info" => json!({
            "version": "9.9.9-golden",
            "supported_commands": FAKE_COMMANDS
                .iter()
                .map(|c| json!({"name": c, "enabled": *c != "guest-exec", "success-response": true}))
                .collect::<Vec<_>>(),
        }),
        "guest-get-fsinfo" => json!([
            {"name": "vda1", "mountpoint": "/", "type": "ext4", "disk": [],
             "total-bytes": 10_737_418_240_u64, "used-bytes": 4_294_967_296_u64},
            {"name": "vdb", "mountpoint": "/srv/my \"data\"", "type": "xfs", "disk": [],
             "total-bytes": 1_073_741_824_u64, "used-bytes": 1_048_576_u64},
        ]),
        "guest-network-get-interfaces" => json!([
            {"name": "lo", "hardware-address": "00:00:00:00:00:00",
             "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8},
                              {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128}],
             "statistics": {"rx-bytes": 1000, "rx-packets": 10, "rx-errs": 0, "rx-dropped": 0,
                            "tx-bytes": 1000, "tx-packets": 10, "tx-errs": 0, "tx-dropped": 0}},
            {"name": "eth0", "hardware-address": "52:54:00:12:34:56",
             "ip-addresses": [{"ip-address": "10.0.2.15", "ip-address-type": "ipv4", "prefix": 24},
                              {"ip-address": "fe80::5054:ff:fe12:3456", "ip-address-type": "ipv6", "prefix": 64}],
             "statistics": {"rx-bytes": 123_456_789, "rx-packets": 98_765, "rx-errs": 1, "rx-dropped": 2,
                            "tx-bytes": 987_654_321, "tx-packets": 54_321, "tx-errs": 3, "tx-dropped": 4}},
        ]),
        "guest-get-osinfo" => json!({
            "id": "golden", "name": "Golden OS", "pretty-name": "Golden \"Test\" OS \\ 1.0",
            "version": "1.0 (gold)", "version-id": "1.0", "kernel-release": "6.1.0-golden",
            "kernel-version": "#1 SMP PREEMPT_DYNAMIC Golden", "machine": "x86_64",
        }),
        "guest-get-vcpus" => json!([
            {"logical-id": 0, "online": true, "can-offline": false},
            {"logical-id": 1, "online": true, "can-offline": true},
            {"logical-id": 2, "online": false, "can-offline": true},
        ]),
        "guest-get-users" => json!([
            {"user": "alice", "login-time": 1_700_000_000.5},
            {"user": "bob", "login-time": 1_700_000_100.25},
        ]),
        "guest-get-timezone" => json!({"zone": "CET", "offset": 3600}),
        "guest-get-host-name" => json!({"host-name": "golden-guest"}),
        "guest-get-memory-block-info" => json!({"size": 134_217_728}),
        "guest-get-diskstats" => json!([
            {"name": "vda", "major": 253, "minor": 0, "stats": {
                "read-sectors": 2048, "read-ios": 100, "read-merges": 5, "read-ticks": 1500,
                "write-sectors": 4096, "write-ios": 200, "write-merges": 6, "write-ticks": 2500,
                "discard-sectors": 0, "discard-ios": 0, "discard-merges": 0, "discard-ticks": 0,
                "flush-ios": 7, "flush-ticks": 70, "ios-pgr": 1, "total-ticks": 4000, "weight-ticks": 4100}},
        ]),
        "guest-get-cpustats" => json!([
            {"type": "linux", "cpu": 0, "user": 12_340, "nice": 10, "system": 5_670, "idle": 1_000_000,
             "iowait": 250, "irq": 5, "softirq": 15, "steal": 0, "guest": 0, "guestnice": 0},
            {"type": "linux", "cpu": 1, "user": 22_340, "nice": 20, "system": 6_670, "idle": 900_000,
             "iowait": 350, "irq": 6, "softirq": 16, "steal": 1, "guest": 0, "guestnice": 0},
        ]),
        "guest-get-load" => json!({"load1": 0.5, "load5": 0.25, "load15": 0.125}),
        _ => return None,
    })
}

/// A scripted agent that answers every command with the same fixed reply.
fn deterministic_agent(path: &Path) {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).expect("bind");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut w = conn.try_clone().expect("clone");
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    let Ok(req) = serde_json::from_str::<Value>(&line) else { continue };
                    let cmd = req["execute"].as_str().unwrap_or_default();
                    let reply = if cmd == "guest-sync" {
                        json!({"return": req["arguments"]["id"]})
                    } else {
                        match fake_reply(cmd) {
                            Some(r) => json!({"return": r}),
                            None => json!({"error": {"class": "CommandNotFound", "desc": format!("{cmd} not found")}}),
                        }
                    };
                    if writeln!(w, "{reply}").is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Series whose value changes from scrape to scrape: the value becomes `<masked>`.
const MASKED_VALUES: &[&str] = &[
    "vmbridge_source_last_success_timestamp_seconds",
    "vmbridge_source_poll_duration_seconds",
    "vmbridge_source_polls_total",
    // The guest agent's ping round trip and each command's call are measured.
    "vmbridge_guest_agent_rtt_seconds",
    "vmbridge_guest_agent_command_duration_seconds",
    // How many scrapers are connected, and how many connections ended, depend on the test's
    // own polling.
    "vmbridge_http_connections",
    "vmbridge_http_connections_closed_total",
];
/// Series with build-dependent labels: those label values become `<masked>`.
const MASKED_LABELS: &[(&str, &[&str])] = &[("vmbridge_build_info", &["revision", "rustc"])];

fn mask(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let masked = (!line.starts_with('#')).then(|| parse_raw(line).expect("sample line")).and_then(|mut s| {
            let mut changed = false;
            if MASKED_VALUES.contains(&s.name.as_str()) {
                s.value = "<masked>".into();
                changed = true;
            }
            for (_, keys) in MASKED_LABELS.iter().filter(|(n, _)| *n == s.name) {
                for (k, v) in &mut s.labels {
                    if keys.contains(&k.as_str()) {
                        *v = "<masked>".into();
                        changed = true;
                    }
                }
            }
            changed.then(|| s.render())
        });
        out.push_str(masked.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The whole text exposition of one static VM behind a deterministic fake agent, with the
/// volatile values masked, equals `integration/golden/exposition.txt`
/// (`VMBRIDGE_UPDATE_GOLDEN=1` rewrites it), and passes promtool.
#[test]
fn golden_exposition() {
    let _serial = serial();
    tool("promtool");
    let dir = scratch("golden");
    let sock = dir.join("fake.sock");
    deterministic_agent(&sock);
    let bridge = start_bridge(&bridge_config(&dir, &[], &[("golden", "fake-vm", &sock)]));
    let families = [
        "kubevirt_vmi_guest_agent_info",
        "kubevirt_vmi_guest_os_info",
        "kubevirt_vmi_filesystem_capacity_bytes",
        "kubevirt_vmi_guest_interface_address_info",
        "kubevirt_vmi_guest_network_receive_bytes_total",
        "kubevirt_vmi_guest_vcpus_online",
        "kubevirt_vmi_guest_users",
        "kubevirt_vmi_guest_timezone_offset_seconds",
        "kubevirt_vmi_guest_memory_block_size_bytes",
        "kubevirt_vmi_guest_disk_read_ios_total",
        "kubevirt_vmi_guest_cpu_seconds_total",
        "kubevirt_vmi_guest_load_1m",
    ];
    // Two consecutive scrapes with every family present and equal once masked.
    let mut previous = String::new();
    let (e, _) = bridge.wait_for(Duration::from_secs(30), "a complete, stable guest exposition", |e| {
        let complete = families.iter().all(|f| !e.find(f, &[("name", "fake-vm")]).is_empty())
            && e.value("vmbridge_source_up", &[("name", "fake-vm"), ("source", "qga")]) == Some(1.0);
        let masked = mask(&e.text);
        let stable = complete && masked == previous;
        previous = masked;
        stable
    });
    let raw = e.text;
    // The agent named two users: they are counted, and named nowhere, not in the debug
    // documents' raw replies nor on the status page.
    assert!(
        raw.contains("kubevirt_vmi_guest_users{namespace=\"golden\",name=\"fake-vm\",node=\"it-node\"} 2"),
        "{raw}"
    );
    let doc = bridge.get("/debug/vms/golden/fake-vm", None).body;
    assert!(doc.contains("guest-get-users") && doc.contains("<redacted>"), "{doc}");
    for page in [doc, bridge.get("/debug/vms", None).body, http_get(bridge.debug_addr, "/", None).body, raw.clone()] {
        assert!(!page.contains("alice") && !page.contains("bob"), "a user name leaked: {page}");
    }
    assert_promtool_clean("the golden exposition", &raw);
    assert_valid("golden text exposition", &raw, false);
    let om = bridge.get("/metrics", Some(OPENMETRICS_ACCEPT));
    assert_valid("golden OpenMetrics exposition", &om.body, true);
    // What Prometheus asks for by default: the same exposition, gzip-compressed.
    let (head, gz) = gzip_get(bridge.addr, "/metrics");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-encoding: gzip") && lower.contains("vary: accept-encoding"), "{head}");
    let mut unzipped = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut unzipped).expect("gunzip");
    assert!(gz.len() * 4 < unzipped.len(), "compressed {} of {} bytes", gz.len(), unzipped.len());
    assert_eq!(mask(&unzipped), mask(&raw), "gzip carries the same exposition");

    let actual = mask(&raw);
    let path = root().join("integration/golden/exposition.txt");
    if std::env::var_os("VMBRIDGE_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("golden dir");
        std::fs::write(&path, &actual).expect("write golden");
        eprintln!("rewrote {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with VMBRIDGE_UPDATE_GOLDEN=1 cargo test --test prometheus_e2e golden",
            path.display()
        )
    });
    if actual != expected {
        let (exp, act): (BTreeSet<&str>, BTreeSet<&str>) = (expected.lines().collect(), actual.lines().collect());
        let missing: Vec<&str> = expected.lines().filter(|l| !act.contains(l)).take(40).collect();
        let extra: Vec<&str> = actual.lines().filter(|l| !exp.contains(l)).take(40).collect();
        panic!(
            "the exposition differs from {} (if intended: VMBRIDGE_UPDATE_GOLDEN=1 cargo test --test prometheus_e2e \
             golden, and review the diff)\n--- only in the golden file:\n{}\n+++ only in this scrape:\n{}{}",
            path.display(),
            missing.join("\n"),
            extra.join("\n"),
            if missing.is_empty() && extra.is_empty() { "\n(same lines, different order)" } else { "" }
        );
    }
}

/// `GET path` with `Accept-Encoding: gzip`: the response head and the raw body bytes.
fn gzip_get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
    use std::io::Read;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept-Encoding: gzip, deflate\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("http response");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    (head, raw[split + 4..].to_vec())
}
