//! A guest agent's reply (tenant-controlled) through `GuestData::apply` for every allow-listed
//! command: never a panic, caps always hold, every exported label is short and clean.
#![no_main]

#[path = "qga_check.rs"]
mod qga_check;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vmbridge::source::qga::GuestLimits;
use vmbridge::source::qga::commands::allowed;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(value) = serde_json::from_str::<Value>(&text) else { return };
    let names = allowed();
    for lim in [GuestLimits::default(), qga_check::TIGHT] {
        qga_check::run(&names, &value, &lim);
        // Seeds are whole agent replies (`{"return": …}`): feed the `return` member too.
        if let Some(ret) = value.get("return") {
            qga_check::run(&names, ret, &lim);
        }
    }
});
