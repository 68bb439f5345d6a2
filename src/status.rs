//! The status page at `/`: a page for a person, like Prometheus' targets page, made to be
//! read at a glance. On top, a box names every VM (and endpoint) that needs attention, with
//! the failed source, its breaker, the error kind and message, and the age of its last good
//! data; below, one row per VM (those needing attention first) with one cell per source.
//! A VM without a guest agent is a state ("no agent"), not a failure. Plain, self-contained
//! HTML (inline CSS, no script) from the same snapshot `/debug/vms` serialises; every text
//! from libvirt or a guest is escaped.

use std::fmt::Write as _;

use crate::breaker::BreakerState;
use crate::debug::{DebugIndex, SourceSummary, VmSummary};
use crate::model::ErrorKind;
use crate::source::SourceKind;

/// Escapes text for HTML element content and attribute values (`&`, `<`, `>`, `"`, `'`).
pub fn escape(s: &str) -> String {
    html_escape::encode_quoted_attribute(s).into_owned()
}

/// "12 s ago", "3 min ago", "never".
fn age(seconds: Option<f64>) -> String {
    match seconds {
        None => "never".into(),
        Some(s) if s < 120.0 => format!("{s:.0} s ago"),
        Some(s) if s < 7200.0 => format!("{:.0} min ago", s / 60.0),
        Some(s) => format!("{:.1} h ago", s / 3600.0),
    }
}

/// "1 VM", "2 VMs".
fn count(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// What one source's summary means to a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// The last poll succeeded.
    Ok,
    /// No guest agent: a state of the VM, not a fault (the breaker stays closed).
    NoAgent,
    /// The VM opted out of agent polling (`qga.exclude`, domain metadata): a choice, not a fault.
    AgentOff,
    /// Not polled yet.
    Pending,
    /// Failing: the breaker is not closed, or the last poll failed for a real reason.
    Failing,
}

impl Health {
    fn of(s: &SourceSummary) -> Health {
        if s.breaker != BreakerState::Closed {
            return Health::Failing;
        }
        if s.up {
            return Health::Ok;
        }
        match s.last_error_kind {
            Some(ErrorKind::AgentUnavailable) => Health::NoAgent,
            Some(ErrorKind::AgentDisabled) => Health::AgentOff,
            Some(_) => Health::Failing,
            None => Health::Pending,
        }
    }

    fn class(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::NoAgent | Health::AgentOff => "noagent",
            Health::Pending => "pending",
            Health::Failing => "failing",
        }
    }
}

/// The sources of `vm` that need attention, in column order.
fn failing(vm: &VmSummary) -> Vec<(SourceKind, &SourceSummary)> {
    SourceKind::ALL
        .into_iter()
        .filter_map(|k| vm.sources.get(&k).map(|s| (k, s)))
        .filter(|(_, s)| Health::of(s) == Health::Failing)
        .collect()
}

/// "timeout: libvirt call timed out after 1s", or "" when there is no error.
fn reason(s: &SourceSummary) -> String {
    match (s.last_error_kind, &s.last_error) {
        (Some(k), Some(m)) => format!("{}: {m}", k.as_str()),
        (Some(k), None) => k.as_str().to_owned(),
        (None, Some(m)) => m.clone(),
        (None, None) => String::new(),
    }
}

const STYLE: &str = "body{font-family:'DejaVu Sans',sans-serif;font-size:13px;margin:12px 18px;color:#222}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:14px 0 4px}p{margin:4px 0}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}\
th{background:#eee}#attention{border:2px solid #b00;background:#fdecec;padding:6px 10px;margin:8px 0}\
#attention.allok{border-color:#393;background:#e8f6e8}#attention h2{margin:0 0 4px;color:#900}\
#attention.allok h2{color:#262}#attention ul{margin:0;padding-left:18px}#attention li{margin:2px 0}\
.ok{background:#d9f2d9}.noagent{background:#e6e6e6;color:#555}.pending{background:#fbe7b5}\
.failing{background:#f7c6c6;font-weight:bold;color:#700}tr.attn td.vm{border-left:4px solid #b00;font-weight:bold}\
.err{color:#900}.dim{color:#666}td.why{max-width:34em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}";

/// Renders the page.
pub fn render(index: &DebugIndex) -> String {
    let mut h = String::with_capacity(8192 + index.vms.len() * 1024);
    let mut vms: Vec<(&VmSummary, Vec<(SourceKind, &SourceSummary)>)> =
        index.vms.iter().map(|vm| (vm, failing(vm))).collect();
    // Those needing attention first; the index is already sorted by namespace/name.
    vms.sort_by_key(|(_, f)| f.is_empty());
    let attention = vms.iter().filter(|(_, f)| !f.is_empty()).count();
    // Down, or saturated (it answers no call: one node-level state, not a failure per VM).
    let down: Vec<_> = index.endpoints.iter().filter(|e| !e.up || e.saturated_since.is_some()).collect();
    let no_agent = index.vms.iter().filter(|vm| vm.sources.values().any(|s| Health::of(s) == Health::NoAgent)).count();
    let generated = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(index.generated_at.max(0.0));
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>vmbridge on {node}</title>\
<style>{STYLE}</style></head><body><h1>vmbridge on {node}</h1>\
<p id=\"summary\">{n} VMs: <b>{attention} need attention</b>, {ok} healthy; {no_agent} without a guest agent \
(a state, not a failure). Generated {at} UTC. \
JSON: <a href=\"/debug/vms\">/debug/vms</a> · <a href=\"/metrics\">/metrics</a></p>",
        node = escape(&index.node),
        n = index.vms.len(),
        ok = index.vms.len() - attention,
        at = humantime::format_rfc3339_seconds(generated).to_string().trim_end_matches('Z').replace('T', " "),
    );
    attention_box(&mut h, &vms, &down);
    h.push_str("<h2>VMs</h2><table id=\"vms\"><tr><th>VM</th><th>domain</th>");
    for k in SourceKind::ALL {
        let _ = write!(h, "<th>{}</th>", k.as_str());
    }
    h.push_str("<th>why</th><th>JSON</th></tr>");
    for (vm, failed) in &vms {
        vm_row(&mut h, vm, failed);
    }
    h.push_str(
        "</table><h2>Endpoints</h2><table id=\"endpoints\"><tr><th>libvirt URI</th><th>state</th><th>domains</th>\
<th>connections</th><th>slow calls</th><th>last error</th></tr>",
    );
    for e in &index.endpoints {
        let state = match (e.up, e.saturated_since) {
            (false, _) => "down",
            (true, Some(_)) => "saturated",
            (true, None) => "up",
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            escape(&e.uri),
            if state == "up" { "ok" } else { "failing" },
            state,
            e.domains,
            e.connections.connections,
            e.connections.slow_calls,
            escape(e.last_error.as_deref().unwrap_or("")),
        );
    }
    let _ = write!(
        h,
        "</table><p class=\"dim\">Data age: time since the source's last successful poll. \
generated at {:.0} (Unix seconds)</p></body></html>",
        index.generated_at
    );
    h
}

fn attention_box(
    h: &mut String,
    vms: &[(&VmSummary, Vec<(SourceKind, &SourceSummary)>)],
    down: &[&crate::store::EndpointStatus],
) {
    let n = vms.iter().filter(|(_, f)| !f.is_empty()).count();
    if n == 0 && down.is_empty() {
        h.push_str("<div id=\"attention\" class=\"allok\"><h2>Nothing needs attention</h2></div>");
        return;
    }
    let _ = write!(
        h,
        "<div id=\"attention\"><h2>Needs attention: {}, {}</h2><ul>",
        count(n, "VM"),
        count(down.len(), "endpoint")
    );
    for e in down {
        match e.saturated_since.filter(|_| e.up) {
            Some(since) => {
                let _ = write!(
                    h,
                    "<li data-endpoint=\"{uri}\">endpoint <b>{uri}</b> saturated for {age:.0} s: \
<span class=\"err\">it answers no call; all its worker threads are held, most likely by {slow} calls on hung VMs. \
Its VMs keep their last data until the staleness window.</span></li>",
                    uri = escape(&e.uri),
                    age = (crate::clock::now_unix() - since).max(0.0),
                    slow = e.connections.slow_calls,
                );
            }
            None => {
                let _ = write!(
                    h,
                    "<li data-endpoint=\"{uri}\">endpoint <b>{uri}</b> down: <span class=\"err\">{why}</span></li>",
                    uri = escape(&e.uri),
                    why = escape(e.last_error.as_deref().unwrap_or("")),
                );
            }
        }
    }
    for (vm, failed) in vms.iter().filter(|(_, f)| !f.is_empty()) {
        let _ = write!(
            h,
            "<li data-vm=\"{ns}/{name}\"><a href=\"{href}\"><b>{ns}/{name}</b></a>:",
            ns = escape(&vm.id.namespace),
            name = escape(&vm.id.name),
            href = escape(&vm.href),
        );
        if let Some(stall) = &vm.stall {
            let _ = write!(
                h,
                " <span class=\"stall\" data-stall=\"{r}\">stalled: <b>{r}</b> ({d});</span>",
                r = stall.reason.as_str(),
                d = escape(&stall.detail),
            );
        }
        for (i, (k, s)) in failed.iter().enumerate() {
            let _ = write!(
                h,
                "{sep} <span data-source=\"{k}\"><b>{k}</b> {state}, <span class=\"err\">{why}</span>; last data {age}</span>",
                sep = if i > 0 { ";" } else { "" },
                k = k.as_str(),
                state = s.breaker.as_str().replace('_', "-"),
                why = escape(&reason(s)),
                age = age(s.data_age_seconds),
            );
        }
        h.push_str("</li>");
    }
    h.push_str("</ul></div>");
}

fn vm_row(h: &mut String, vm: &VmSummary, failed: &[(SourceKind, &SourceSummary)]) {
    let _ = write!(
        h,
        "<tr data-vm=\"{ns}/{name}\"{attn}><td class=\"vm\"><a href=\"{href}\">{ns}/{name}</a></td><td>{dom}</td>",
        ns = escape(&vm.id.namespace),
        name = escape(&vm.id.name),
        href = escape(&vm.href),
        dom = escape(&vm.domain),
        attn = if failed.is_empty() { "" } else { " class=\"attn\"" },
    );
    for k in SourceKind::ALL {
        let Some(s) = vm.sources.get(&k) else {
            h.push_str("<td class=\"dim\">off</td>");
            continue;
        };
        let health = Health::of(s);
        let state = s.breaker.as_str();
        let text = match health {
            Health::Ok => format!("ok · {}", age(s.data_age_seconds)),
            Health::NoAgent => "no agent".to_owned(),
            Health::AgentOff => "agent polling off".to_owned(),
            Health::Pending => "not polled yet".to_owned(),
            Health::Failing if s.breaker == BreakerState::Closed => {
                format!("failing · data {}", age(s.data_age_seconds))
            }
            Health::Failing => format!("{} · data {}", state.replace('_', "-"), age(s.data_age_seconds)),
        };
        let _ = write!(
            h,
            "<td class=\"{class}\" data-source=\"{k}\" data-state=\"{state}\" data-health=\"{class}\" title=\"{title}\">{text}</td>",
            class = health.class(),
            k = k.as_str(),
            title = escape(&reason(s)),
        );
    }
    // The stall reason first: it says why, where the sources say what failed.
    let why: Vec<String> = vm
        .stall
        .iter()
        .map(|s| format!("stalled: {} ({})", s.reason.as_str(), s.detail))
        .chain(failed.iter().map(|(k, s)| format!("{}: {}", k.as_str(), reason(s))))
        .collect();
    let why = why.join("; ");
    let _ = write!(
        h,
        "<td class=\"why err\" title=\"{w}\">{w}</td><td><a href=\"{href}\">JSON</a></td></tr>",
        w = escape(&why),
        href = escape(&vm.href),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::VmId;

    #[test]
    fn escapes_everything_a_guest_or_libvirt_could_inject() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;"
        );
    }

    fn source(breaker: BreakerState, up: bool, kind: Option<ErrorKind>, msg: &str) -> SourceSummary {
        SourceSummary {
            breaker,
            up,
            data_age_seconds: if up { Some(1.0) } else { Some(42.0) },
            last_error: kind.map(|_| msg.to_owned()),
            last_error_kind: kind,
        }
    }

    fn vm(name: &str, sources: Vec<(SourceKind, SourceSummary)>) -> VmSummary {
        VmSummary {
            id: VmId { namespace: "default".into(), name: name.into() },
            domain: name.into(),
            endpoint: "qemu:///system".into(),
            href: format!("/debug/vms/default/{name}"),
            sources: sources.into_iter().collect(),
            stall: None,
            heartbeat: crate::heartbeat::Pulse {
                state: crate::heartbeat::Heartbeat::Ok,
                rtt_seconds: None,
                bounds: Default::default(),
            },
        }
    }

    #[test]
    fn failing_vms_come_first_and_no_agent_is_a_state() {
        let no_agent = || source(BreakerState::Closed, false, Some(ErrorKind::AgentUnavailable), "not connected");
        let index = DebugIndex {
            node: "n<1>".into(),
            generated_at: 1_700_000_000.0,
            endpoints: vec![],
            vms: vec![
                vm(
                    "a-fine",
                    vec![
                        (SourceKind::Libvirt, source(BreakerState::Closed, true, None, "")),
                        (SourceKind::Qga, no_agent()),
                    ],
                ),
                vm(
                    "b-<stuck>",
                    vec![
                        (
                            SourceKind::Libvirt,
                            source(BreakerState::Open, false, Some(ErrorKind::Timeout), "call <timed> out"),
                        ),
                        (SourceKind::Qga, no_agent()),
                    ],
                ),
            ],
            conflicts: vec![],
        };
        let page = render(&index);
        let attention =
            page.split("<div id=\"attention\">").nth(1).and_then(|s| s.split("</div>").next()).expect("box");
        assert!(attention.contains("default/b-&lt;stuck&gt;"), "{attention}");
        assert!(attention.contains("timeout: call &lt;timed&gt; out"), "{attention}");
        assert!(attention.contains("last data 42 s ago"), "{attention}");
        assert!(!attention.contains("a-fine"), "{attention}");
        let table = page.split("id=\"vms\"").nth(1).expect("table");
        assert!(table.find("b-&lt;stuck&gt;") < table.find("a-fine"), "the failing VM is listed first");
        assert!(table.contains("no agent"));
        assert!(page.contains("href=\"/debug/vms\""));
        assert!(page.contains("vmbridge on n&lt;1&gt;"));
        assert!(!page.contains("<stuck>") && !page.contains("<timed>"));
    }
}
