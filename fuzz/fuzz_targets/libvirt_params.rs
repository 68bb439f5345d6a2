//! libvirt bulk-stats typed parameters and memory stats (what a daemon, or a QEMU behind it,
//! reports) through `DomainSample::from_libvirt`, `LibvirtSample::new` and
//! `Migration::from_libvirt_job`: never a panic, per-domain device lists stay bounded.
//!
//! Input encoding (read with `arbitrary::Unstructured`, so any bytes decode to something):
//! - `u8` job type, `u8` n, then n memory stats of (`u32` tag LE, `u64` value LE);
//! - then parameters until the input ends, each a key and a value:
//!   - key: `u8` selector; `s % 4 == 0`: a known fixed key (`u8` index into `FIXED`);
//!     `s % 4 == 1`: an indexed key `PREFIX.N.FIELD` (`u8` prefix, `u16` N LE, `u8` field);
//!     otherwise a raw key (`u8` length, bytes, UTF-8 lossy);
//!   - value: `u8` tag % 5: 0 `Int` (i64 LE), 1 `UInt` (u64 LE), 2 `Double` (f64 bits LE),
//!     3 `Bool` (u8), 4 `Str` (`u8` length, bytes, UTF-8 lossy).
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vmbridge::source::libvirt::stats::MAX_DEVICES;
use vmbridge::source::libvirt::{DomainSample, LibvirtSample, ParamValue};
use vmbridge::source::events::Migration;

const FIXED: &[&str] = &[
    "state.state",
    "state.reason",
    "cpu.time",
    "cpu.user",
    "cpu.system",
    "balloon.current",
    "balloon.maximum",
    "balloon.swap_in",
    "balloon.swap_out",
    "balloon.major_fault",
    "balloon.minor_fault",
    "balloon.unused",
    "balloon.available",
    "balloon.usable",
    "balloon.disk_caches",
    "balloon.rss",
    "balloon.last-update",
    "vcpu.current",
    "vcpu.maximum",
    "net.count",
    "block.count",
    "dirtyrate.megabytes_per_second",
    // Job stats (`from_libvirt_job`).
    "downtime",
    "time_elapsed",
    "data_total",
    "data_processed",
    "data_remaining",
    "memory_total",
    "memory_processed",
    "memory_remaining",
    "memory_bps",
    "memory_constant",
    "compression_bytes",
    "memory_dirty_rate",
    "memory_iteration",
];

const PREFIXES: &[(&str, &[&str])] = &[
    ("vcpu", &["state", "time", "wait", "delay", "halted"]),
    ("net", &["name", "rx.bytes", "rx.pkts", "rx.errs", "rx.drop", "tx.bytes", "tx.pkts", "tx.errs", "tx.drop"]),
    (
        "block",
        &[
            "name",
            "path",
            "backingIndex",
            "rd.reqs",
            "rd.bytes",
            "rd.times",
            "wr.reqs",
            "wr.bytes",
            "wr.times",
            "fl.reqs",
            "fl.times",
            "allocation",
            "capacity",
            "physical",
            "threshold",
        ],
    ),
];

fn u64_le(u: &mut Unstructured<'_>) -> Result<u64> {
    let b = u.bytes(8)?;
    Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

fn short_string(u: &mut Unstructured<'_>) -> Result<String> {
    let n = usize::from(u8::arbitrary(u)?);
    let n = n.min(u.len());
    Ok(String::from_utf8_lossy(u.bytes(n)?).into_owned())
}

fn key(u: &mut Unstructured<'_>) -> Result<String> {
    let sel = u8::arbitrary(u)?;
    Ok(match sel % 4 {
        0 => FIXED[usize::from(u8::arbitrary(u)?) % FIXED.len()].to_owned(),
        1 => {
            let (prefix, fields) = PREFIXES[usize::from(u8::arbitrary(u)?) % PREFIXES.len()];
            let b = u.bytes(2)?;
            let idx = u16::from_le_bytes([b[0], b[1]]);
            let field = fields[usize::from(u8::arbitrary(u)?) % fields.len()];
            format!("{prefix}.{idx}.{field}")
        }
        _ => short_string(u)?,
    })
}

fn value(u: &mut Unstructured<'_>) -> Result<ParamValue> {
    Ok(match u8::arbitrary(u)? % 5 {
        0 => ParamValue::Int(u64_le(u)? as i64),
        1 => ParamValue::UInt(u64_le(u)?),
        2 => ParamValue::Double(f64::from_bits(u64_le(u)?)),
        3 => ParamValue::Bool(u8::arbitrary(u)? & 1 == 1),
        _ => ParamValue::Str(short_string(u)?),
    })
}

#[derive(Debug)]
struct Input {
    job_type: i32,
    memory: Vec<(u32, u64)>,
    params: Vec<(String, ParamValue)>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let job_type = i32::from(u8::arbitrary(u)?) - 1;
        let n = u8::arbitrary(u)?;
        let mut memory = Vec::new();
        for _ in 0..n {
            let Ok(t) = u.bytes(4) else { break };
            let tag = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
            let Ok(v) = u64_le(u) else { break };
            memory.push((tag, v));
        }
        let mut params = Vec::new();
        while !u.is_empty() {
            let Ok(k) = key(u) else { break };
            let Ok(v) = value(u) else { break };
            params.push((k, v));
        }
        Ok(Input { job_type, memory, params })
    }
}

fuzz_target!(|input: Input| {
    let s = DomainSample::from_libvirt(&input.params, &input.memory);
    assert!(s.vcpus.len() <= MAX_DEVICES, "{} vcpus", s.vcpus.len());
    assert!(s.nets.len() <= MAX_DEVICES, "{} nets", s.nets.len());
    assert!(s.blocks.len() <= MAX_DEVICES, "{} blocks", s.blocks.len());
    assert!(s.vcpus.windows(2).all(|w| w[0].id < w[1].id), "vCPU ids not unique and ordered");
    assert!(s.vcpus.iter().all(|v| v.id < MAX_DEVICES));
    assert!(s.nets.iter().all(|n| !n.name.is_empty()), "a nameless NIC was kept");
    assert!(s.blocks.iter().all(|b| !b.name.is_empty()), "a nameless disk was kept");
    if let Some(st) = s.state {
        let _ = (st.state_name(), st.reason_name());
    }
    for v in &s.vcpus {
        let _ = v.state_name();
    }
    let _ = serde_json::to_string(&s);

    if let Some(m) = Migration::from_libvirt_job(input.job_type, &input.params) {
        assert_eq!(m.active, m.status == "active");
    }
    let sample = LibvirtSample::new(input.params, input.memory);
    assert_eq!(sample.parsed, s);
    let _ = serde_json::to_string(&sample);
});
