//! Generated files: the JSON Schemas in `schemas/` (from the Rust types), `docs/METRICS.md`
//! (from the catalogue) and, in the tests, the man pages in `debian/` (from the flags, see
//! `src/manpage.rs`). A test fails when a checked-in copy drifts; run
//! `VMBRIDGE_UPDATE_GENERATED=1 cargo test --lib generated` to rewrite them.

use crate::config::FileConfig;
use crate::debug::{DebugIndex, DebugVm};

fn pretty(schema: schemars::Schema) -> String {
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// Every generated file: (path relative to the crate root, content).
pub fn generated() -> Vec<(&'static str, String)> {
    vec![
        ("schemas/config.schema.json", pretty(schemars::schema_for!(FileConfig))),
        ("schemas/debug-vms.schema.json", pretty(schemars::schema_for!(DebugIndex))),
        ("schemas/debug-vm.schema.json", pretty(schemars::schema_for!(DebugVm))),
        ("schemas/check.schema.json", pretty(schemars::schema_for!(crate::check::CheckReport))),
        ("docs/METRICS.md", crate::catalogue::markdown()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_are_up_to_date() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let update = std::env::var_os("VMBRIDGE_UPDATE_GENERATED").is_some();
        for (path, content) in generated().into_iter().chain(crate::manpage::pages()) {
            let full = root.join(path);
            if update {
                std::fs::create_dir_all(full.parent().expect("generated paths have a parent")).expect("mkdir");
                std::fs::write(&full, &content).expect("write generated file");
            } else {
                let on_disk = std::fs::read_to_string(&full).unwrap_or_default();
                assert!(
                    on_disk == content,
                    "{path} is out of date: run `VMBRIDGE_UPDATE_GENERATED=1 cargo test --lib generated`"
                );
            }
        }
    }
}
