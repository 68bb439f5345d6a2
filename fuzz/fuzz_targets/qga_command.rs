//! One allow-listed guest-agent command's reply decode at a time. Input: a first line naming
//! the command (`guest-get-fsinfo`; any other first line picks `allowed()[its first byte % n]`),
//! then the reply's JSON (a whole `{"return": …}` reply or the `return` value). Where `qga_reply` spreads each input over every command, this
//! target lets the fuzzer grow each command's own shapes. Never a panic, caps hold, labels clean.
#![no_main]

#[path = "qga_check.rs"]
mod qga_check;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vmbridge::source::qga::GuestLimits;
use vmbridge::source::qga::commands::allowed;

fuzz_target!(|data: &[u8]| {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else { return };
    let (first, rest) = (&data[..nl], &data[nl + 1..]);
    let names = allowed();
    let name = names
        .iter()
        .copied()
        .find(|n| n.as_bytes() == first)
        .unwrap_or_else(|| names[usize::from(first.first().copied().unwrap_or(0)) % names.len()]);
    let text = String::from_utf8_lossy(rest);
    let Ok(value) = serde_json::from_str::<Value>(&text) else { return };
    let reply = value.get("return").cloned().unwrap_or(value);
    for lim in [GuestLimits::default(), qga_check::TIGHT] {
        qga_check::run(&[name], &reply, &lim);
        // The same reply twice: what a second poll of an unchanged guest does.
        qga_check::run(&[name, name], &reply, &lim);
    }
});
