//! HTTPS on the public port and the debug endpoint's placement, end to end with curl:
//! a certificate from files (reloaded when the files change), a self-signed one, debug data
//! kept off the public port unless a bearer token is presented.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, curl, openssl)

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().expect("curl installed");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn make_cert(dir: &Path, cn: &str) {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .arg("-keyout")
        .arg(dir.join("tls.key.new"))
        .arg("-out")
        .arg(dir.join("tls.crt.new"))
        .args(["-subj", &format!("/CN={cn}"), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .output()
        .expect("openssl installed");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    // Key first, then the certificate, each by rename, as a Secret update appears.
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).expect("rename");
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).expect("rename");
}

fn subject(url: &str) -> String {
    let (_, err) = curl(&["-k", "-v", "-o", "/dev/null", url]);
    err.lines().find(|l| l.contains("subject:")).unwrap_or_default().to_owned()
}

#[test]
fn https_from_files_reloads_and_debug_stays_off_the_public_port() {
    let _watchdog = common::watchdog();
    let dir = std::env::temp_dir().join(format!("vmbridge-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    make_cert(&dir, "first");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret-token-0123456789\n").expect("token");
    let cfg = dir.join("vmbridge.toml");
    std::fs::write(
        &cfg,
        format!("[libvirt]\nuris = []\n[[vms]]\nname = \"none\"\nqga_socket = \"{}/absent.sock\"\n", dir.display()),
    )
    .expect("cfg");
    let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
    let bridge = Bridge::start_without_libvirt(&[
        "--config",
        cfg.to_str().unwrap(),
        "--tls-cert",
        c.to_str().unwrap(),
        "--tls-key",
        k.to_str().unwrap(),
        "--debug-token-file",
        token.to_str().unwrap(),
    ]);
    let url = format!("https://127.0.0.1:{}", bridge.addr.port());
    let (body, err) = curl(&["--cacert", c.to_str().unwrap(), &format!("{url}/metrics")]);
    assert!(body.contains("vmbridge_build_info"), "{err}");
    assert!(subject(&format!("{url}/healthz")).contains("CN=first"));
    // Plain HTTP on the TLS port fails.
    let (body, _) = curl(&[&format!("http://127.0.0.1:{}/metrics", bridge.addr.port())]);
    assert!(!body.contains("vmbridge_build_info"));
    // /debug: not on the public port without the token; with it, yes; always on the debug port.
    let (body, _) = curl(&["-k", &format!("{url}/debug/vms")]);
    assert!(!body.contains("\"vms\""), "debug leaked without a token: {body}");
    let (body, _) = curl(&["-k", "-H", "Authorization: Bearer wrong-token-0123456789", &format!("{url}/debug/vms")]);
    assert!(!body.contains("\"vms\""));
    let (body, _) = curl(&["-k", "-H", "Authorization: Bearer s3cret-token-0123456789", &format!("{url}/debug/vms")]);
    assert!(body.contains("\"vms\""), "{body}");
    assert!(bridge.get("/debug/vms", None).body.contains("\"vms\""));

    // Rotate the certificate: new connections get it within the check interval (10 s).
    make_cert(&dir, "second");
    let start = Instant::now();
    while !subject(&format!("{url}/healthz")).contains("CN=second") {
        assert!(start.elapsed() < Duration::from_secs(25), "certificate not reloaded");
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("certificate reloaded {:?} after rotation", start.elapsed());
}

#[test]
fn self_signed_https_when_no_certificate_is_mounted() {
    let _watchdog = common::watchdog();
    let dir = std::env::temp_dir().join(format!("vmbridge-tls-ss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("vmbridge.toml");
    std::fs::write(
        &cfg,
        format!("[libvirt]\nuris = []\n[[vms]]\nname = \"none\"\nqga_socket = \"{}/absent.sock\"\n", dir.display()),
    )
    .expect("cfg");
    // The Secret is optional in the DaemonSet: absent files mean a generated certificate.
    let bridge = Bridge::start_without_libvirt(&[
        "--config",
        cfg.to_str().unwrap(),
        "--tls-cert",
        "/nonexistent/tls.crt",
        "--tls-key",
        "/nonexistent/tls.key",
    ]);
    let url = format!("https://127.0.0.1:{}/metrics", bridge.addr.port());
    let (_, err) = curl(&[&url]);
    assert!(err.contains("certificate"), "an unknown CA must be refused without -k: {err}");
    let (body, _) = curl(&["-k", "--http2", &url]);
    assert!(body.contains("vmbridge_build_info"));
}
