//! The binary's command line, without a lab: catalogue listing, version, config errors.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, virsh, lab.sh)

use std::process::Command;

fn vmbridge(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmbridge")).args(args).output().expect("run vmbridge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn list_metrics_prints_the_catalogue_without_connecting() {
    // An unreachable URI: listing must not try it.
    let (code, out, _) = vmbridge(&["--list-metrics", "--libvirt-uri", "qemu+tcp://192.0.2.1/system"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("kubevirt_vmi_cpu_usage_seconds_total ")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("vmbridge_breaker_transitions_total ")), "{out}");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METRICS.md")).expect("docs");
    for line in out.lines() {
        let name = line.split_whitespace().next().expect("name");
        assert!(docs.contains(&format!("`{name}`")), "{name} missing from docs/METRICS.md");
    }
}

#[test]
fn version_is_printed() {
    let (code, out, _) = vmbridge(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(concat!("vmbridge ", env!("CARGO_PKG_VERSION"))), "{out}");
}

#[test]
fn a_bad_config_names_every_field_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("vmbridge-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[poll]\ninterval = \"soon\"\n[breaker]\nfailure_threshold = 0\n").expect("write");
    let (code, _, err) = vmbridge(&["--config", bad.to_str().expect("utf-8")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("poll.interval: \"soon\" is not a duration"), "{err}");
    assert!(err.contains("breaker.failure_threshold: must be at least 1"), "{err}");

    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "[libvirt]\nuri = \"qemu:///system\"\n").expect("write");
    let (code, _, err) = vmbridge(&["--config", typo.to_str().expect("utf-8")]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown field `uri`"), "{err}");

    let (code, _, err) = vmbridge(&["--config", "/nonexistent/vmbridge.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read config file /nonexistent/vmbridge.toml"), "{err}");
}

#[test]
fn flags_override_the_file_and_are_validated_too() {
    let (code, _, err) = vmbridge(&["--poll-interval", "0s", "--listen", "not-an-address"]);
    assert_eq!(code, 2);
    assert!(err.contains("poll.interval: must be greater than zero"), "{err}");
    assert!(err.contains("listen: \"not-an-address\""), "{err}");
}
