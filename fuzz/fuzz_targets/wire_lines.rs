//! Raw QMP / guest-agent lines as `LineConn` reads them (trim, 0xFF sentinel, JSON), then what
//! the QMP connection and poller take from a greeting, a reply or an event, and `truncate` for
//! error texts: never a panic, truncation honours its bound and character boundaries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vmbridge::source::wire::{ParseError, parse_bounded, preview, truncate};

fn check_truncate(s: &str, max: usize) {
    let t = truncate(s, max);
    if s.len() <= max {
        assert_eq!(t, s);
    } else {
        let head = t.split("… (").next().unwrap_or_default();
        assert!(head.len() <= max, "truncate kept {} bytes > {max}", head.len());
        assert!(s.starts_with(head));
    }
}

fn line(raw: &str) {
    // src/source/wire.rs LineConn::read_until.
    let trimmed = raw.trim_matches(|c: char| c.is_whitespace() || c == '\u{FF}' || c == '\u{FFFD}');
    if trimmed.is_empty() {
        return;
    }
    // Parsed within a cap, as LineConn does; the charge never exceeds it.
    let limit = 4 * raw.len().max(64);
    let value: Value = match parse_bounded(trimmed, limit) {
        Ok((v, charged)) => {
            assert!(charged <= limit);
            v
        }
        Err(ParseError::TooBig) => return,
        Err(ParseError::Syntax) => {
            check_truncate(trimmed, 120);
            return;
        }
    };
    // What /debug shows of a value is bounded.
    let shown = preview(&value, 256);
    assert!(shown.len() <= 256 + 40, "preview of {} bytes", shown.len());
    // Greeting: src/source/qmp/conn.rs and poller.rs.
    if let Some(g) = value.get("QMP") {
        let v = &g["version"]["qemu"];
        let _ = format!("{}.{}.{}", v["major"], v["minor"], v["micro"]);
        let _: Vec<String> = g["capabilities"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
    }
    // Event shown in /debug: data truncated to 512 bytes.
    if value.get("event").is_some() {
        if let Some(d) = value.get("data") {
            check_truncate(&d.to_string(), 512);
        }
    }
    // Reply: `return`, else the error's class and description (QMP and QGA alike).
    let _ = value.get("id").and_then(Value::as_u64);
    let _ = value.to_string().len();
    if let Value::Object(mut m) = value {
        if m.remove("return").is_none() {
            let e = m.remove("error").unwrap_or(Value::Null);
            let class = e.get("class").and_then(Value::as_str).unwrap_or("GenericError");
            let desc = e.get("desc").and_then(Value::as_str).unwrap_or("unknown error");
            check_truncate(&format!("{class}: {desc}"), 300);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // tokio's LinesCodec splits on '\n' (dropping a trailing '\r') and rejects non-UTF-8 lines.
    for raw in data.split(|&b| b == b'\n') {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(raw) = std::str::from_utf8(raw) else { continue };
        line(raw);
    }
    // Arbitrary cut points, including inside multi-byte characters' neighbourhoods.
    let text = String::from_utf8_lossy(data);
    for max in [0, 1, 2, 3, 120, 300] {
        check_truncate(&text, max);
    }
});
