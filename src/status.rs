//! The status page at `/`: every VM, each source's breaker state, data age and last error,
//! with links to its debug JSON and to `/metrics` — a page for a person, like Prometheus'
//! targets page. Plain HTML from the same snapshot the debug endpoint serialises.

use std::fmt::Write as _;

use crate::debug::DebugIndex;

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn age(seconds: Option<f64>) -> String {
    match seconds {
        None => "never".into(),
        Some(s) if s < 120.0 => format!("{s:.0} s"),
        Some(s) if s < 7200.0 => format!("{:.0} min", s / 60.0),
        Some(s) => format!("{:.1} h", s / 3600.0),
    }
}

/// Renders the page.
pub fn render(index: &DebugIndex) -> String {
    let mut h = String::with_capacity(4096 + index.vms.len() * 512);
    let open = index
        .vms
        .iter()
        .filter(|v| v.sources.values().any(|s| s.breaker != crate::breaker::BreakerState::Closed))
        .count();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>vmbridge on {node}</title>\
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}}\
th{{background:#eee}}.closed{{background:#d9f2d9}}.open{{background:#f7c6c6;font-weight:bold}}.half_open{{background:#fbe7b5}}.err{{color:#900;font-size:.85em;max-width:40em}}\
.down{{color:#900}}</style></head><body><h1>vmbridge on {node}</h1>\
<p>{n} VMs, {open} with a source not healthy. <a href=\"/metrics\">/metrics</a> · <a href=\"/debug/vms\">/debug/vms</a></p>",
        node = escape(&index.node),
        n = index.vms.len(),
    );
    h.push_str(
        "<h2>Endpoints</h2><table><tr><th>libvirt URI</th><th>state</th><th>domains</th><th>last error</th></tr>",
    );
    for e in &index.endpoints {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            escape(&e.uri),
            if e.up { "closed" } else { "open" },
            if e.up { "up" } else { "down" },
            e.domains,
            escape(e.last_error.as_deref().unwrap_or("")),
        );
    }
    h.push_str("</table><h2>VMs</h2><table id=\"vms\"><tr><th>namespace</th><th>name</th><th>domain</th><th>source</th><th>breaker</th><th>data age</th><th>last error</th></tr>");
    for vm in &index.vms {
        let rows = vm.sources.len().max(1);
        let _ = write!(
            h,
            "<tr data-vm=\"{ns}/{name}\"><td rowspan=\"{rows}\">{ns}</td><td rowspan=\"{rows}\"><a href=\"{href}\">{name}</a></td><td rowspan=\"{rows}\">{dom}</td>",
            ns = escape(&vm.id.namespace),
            name = escape(&vm.id.name),
            href = escape(&vm.href),
            dom = escape(&vm.domain),
        );
        if vm.sources.is_empty() {
            h.push_str("<td colspan=\"4\">not polled yet</td></tr>");
        }
        for (i, (kind, s)) in vm.sources.iter().enumerate() {
            if i > 0 {
                let _ = write!(h, "<tr data-vm=\"{}/{}\">", escape(&vm.id.namespace), escape(&vm.id.name));
            }
            let state = s.breaker.as_str();
            let _ = write!(
                h,
                "<td>{}</td><td class=\"{state}\" data-source=\"{}\" data-state=\"{state}\">{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
                kind.as_str(),
                kind.as_str(),
                state.replace('_', "-"),
                age(s.data_age_seconds),
                escape(s.last_error.as_deref().unwrap_or("")),
            );
        }
    }
    let _ = write!(h, "</table><p>generated at {:.0} (Unix seconds)</p></body></html>", index.generated_at);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_a_guest_or_libvirt_could_inject() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
