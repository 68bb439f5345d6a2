//! QMP monitor messages (events, `query-migrate` and `query-blockstats` replies) through the
//! QMP source's parsers: never a panic, the per-VM drive set stays bounded, labels are clean.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use vmbridge::source::events::{EventCounts, Migration};
use vmbridge::source::qmp::BlockExt;

/// `MAX_DRIVES` in src/source/qmp/mod.rs (private there).
const MAX_DRIVES: usize = 64;

fn check_counts(c: &EventCounts) {
    assert!(c.block_io_errors.len() <= MAX_DRIVES, "{} drives > {MAX_DRIVES}", c.block_io_errors.len());
    for ops in c.block_io_errors.values() {
        assert!(!ops.is_empty());
        for op in ops.keys() {
            assert!(["read", "write", "other"].contains(&op.as_str()), "operation {op:?}");
        }
    }
    for s in c.state_changes.keys() {
        assert!(["paused", "running", "pmsuspended", "shutdown", "crashed"].contains(&s.as_str()), "state {s:?}");
    }
    assert!(c.agent_connected.is_some() || c.agent_connects == 0);
}

fn check_migration(v: &Value) {
    if let Some(m) = Migration::from_query_migrate(v) {
        assert_ne!(m.status, "none");
        assert_eq!(m.active, !matches!(m.status.as_str(), "completed" | "failed" | "cancelled"));
    }
}

fn check_block(v: &Value) {
    if let Some(b) = BlockExt::from_blockstats(v) {
        assert!(b.drive.len() <= 128, "drive label {} bytes", b.drive.len());
        assert!(!b.drive.chars().any(char::is_control), "drive label {:?}", b.drive);
    }
}

/// Every value in the message, depth first (serde_json caps nesting at 128).
fn visit(v: &Value, counts: &mut EventCounts, port_ok: bool) {
    counts.count(v, |_| port_ok);
    check_counts(counts);
    check_migration(v);
    check_block(v);
    match v {
        Value::Array(items) => items.iter().for_each(|x| visit(x, counts, port_ok)),
        Value::Object(m) => m.values().for_each(|x| visit(x, counts, port_ok)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(v) = serde_json::from_str::<Value>(&text) else { return };
    let port_ok = data.len() % 2 == 0;
    let mut counts = EventCounts::default();
    visit(&v, &mut counts, port_ok);

    // A flood of BLOCK_IO_ERRORs, each for a new drive named after the input, must not grow
    // the drive set past its cap; drives already counted keep counting.
    let base = v.get("data").and_then(|d| d.get("device")).and_then(Value::as_str).unwrap_or("drive");
    let n = 70 + data.len() % 64;
    for i in 0..n {
        let ev = json!({"event": "BLOCK_IO_ERROR", "data": {"device": format!("{base}{i}"), "operation": "read"}});
        counts.count(&ev, |_| port_ok);
    }
    check_counts(&counts);
    if let Some((first, ops)) = counts.block_io_errors.iter().next() {
        let (first, before) = (first.clone(), ops.values().sum::<u64>());
        counts.count(&json!({"event": "BLOCK_IO_ERROR", "data": {"device": first, "operation": "write"}}), |_| true);
        assert_eq!(counts.block_io_errors[&first].values().sum::<u64>(), before + 1, "a known drive stopped counting");
    }
    // The same message once more, now with a full drive set.
    visit(&v, &mut counts, !port_ok);
});
