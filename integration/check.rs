//! `vmbridge check` against the real lab (issue 15): a working VM, a VM without an agent, a
//! wrong `--qmp-socket` pattern, and sockets a non-root user may not open; plus the exit
//! status of an invalid configuration. Each case's table is printed (`--nocapture`) so the
//! output a user sees is on record.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, lab.sh, setpriv)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::Value;

const LAB: &str = "/var/lib/vmbridge-lab";

/// Runs `vmbridge check ARGS` (as `user` when given, through `setpriv`): exit status, stdout,
/// stderr.
fn check(user: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let bin = binary_for_everyone();
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args([&format!("--reuid={u}"), "--regid=nogroup", "--clear-groups"]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let out = cmd.arg("check").args(args).output().expect("run vmbridge check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of the binary that any user may run (the build tree may not be reachable).
fn binary_for_everyone() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmbridge-check-{}", std::process::id()));
    let bin = dir.join("vmbridge");
    if !bin.exists() {
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
        std::fs::copy(env!("CARGO_BIN_EXE_vmbridge"), &bin).expect("copy binary");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod binary");
    }
    bin
}

/// `check --output json` for the lab URI and `extra` flags, and the table of the same run.
fn check_both(user: Option<&str>, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["--libvirt-uri", URI];
    args.extend_from_slice(extra);
    let (code, table, err) = check(user, &args);
    eprintln!("$ vmbridge check {}\n{table}(exit {code}){err}", args.join(" "));
    args.extend_from_slice(&["--output", "json"]);
    let (json_code, json, err) = check(user, &args);
    assert_eq!(code, json_code, "table and json runs agree on the exit status: {err}");
    eprintln!("$ vmbridge check {}\n{json}", args.join(" "));
    (code, serde_json::from_str(&json).expect("json report"), table)
}

/// The report's entry for `source` of VM `ns`/`name`.
fn source<'a>(r: &'a Value, (ns, name): (&str, &str), source: &str) -> &'a Value {
    r["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .find(|v| v["namespace"] == ns && v["name"] == name)
        .unwrap_or_else(|| panic!("VM {ns}/{name} in {r:#}"))["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|s| s["source"] == source)
        .unwrap_or_else(|| panic!("source {source} of {ns}/{name} in {r:#}"))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[test]
fn a_working_vm_is_ok_for_libvirt_qmp_and_process() {
    let _serial = serial();
    let dom = Domain::new("chk_works");
    let pattern = format!("{LAB}/{{domain}}.qmp");
    let (code, r, table) = check_both(None, &["--qmp-socket", &pattern]);
    assert_eq!(code, 0, "something works: exit 0");
    let id = ("chk", "works");
    for s in ["libvirt", "qmp", "process"] {
        assert_eq!(source(&r, id, s)["ok"], true, "{s}: {r:#}");
        assert_eq!(source(&r, id, s)["message"], "ok");
    }
    let ep = r["endpoints"].as_array().expect("endpoints").iter().find(|e| e["uri"] == URI).expect("endpoint");
    assert_eq!(ep["ok"], true);
    assert!(
        table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["chk/works", "libvirt", "ok"]),
        "{table}"
    );
    drop(dom);
}

#[test]
fn a_vm_without_an_agent_says_agent_not_connected() {
    let _serial = serial();
    let _dom = Domain::new("chk_noagent");
    let (code, r, table) = check_both(None, &[]);
    assert_eq!(code, 0, "libvirt works: exit 0");
    let qga = source(&r, ("chk", "noagent"), "qga");
    assert_eq!(qga["ok"], false);
    assert_eq!(qga["kind"], "agent_unavailable");
    assert_eq!(qga["message"], "agent not connected");
    assert!(text(&qga["fix"]).contains("start qemu-guest-agent in the guest"), "{qga}");
    assert!(text(&qga["detail"]).contains("QEMU guest agent is not connected"), "{qga}");
    // The row, whatever the column widths: another domain on the host with a longer name
    // widens the VM column (a real node has them; this test is not alone on the lab either).
    let row = table.lines().find(|l| l.split_whitespace().take(2).eq(["chk/noagent", "qga"])).unwrap_or_default();
    assert!(
        row.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .starts_with("chk/noagent qga agent not connected (fix: start qemu-guest-agent"),
        "{table}"
    );
}

#[test]
fn a_wrong_qmp_socket_pattern_names_the_path_and_the_pattern() {
    let _serial = serial();
    let _dom = Domain::new("chk_wrongqmp");
    // {name} is "wrongqmp", but the lab names the socket after the domain, chk_wrongqmp.
    let pattern = format!("{LAB}/{{name}}.qmp");
    let (code, r, table) = check_both(None, &["--qmp-socket", &pattern]);
    assert_eq!(code, 0, "libvirt works: exit 0");
    let qmp = source(&r, ("chk", "wrongqmp"), "qmp");
    assert_eq!(qmp["ok"], false);
    let want = format!("no QMP socket at {LAB}/wrongqmp.qmp (pattern --qmp-socket '{pattern}')");
    assert_eq!(qmp["message"], want.as_str());
    assert!(text(&qmp["fix"]).contains("fix the pattern"), "{qmp}");
    assert!(table.contains(&want), "{table}");
}

#[test]
fn sockets_a_non_root_user_may_not_open_are_named_with_their_mode_owner_and_the_fix() {
    let _serial = serial();
    let dom = Domain::new("chk_denied");
    // QEMU's own monitor socket of this test's domain, made root-only.
    let qmp = format!("{LAB}/{}.qmp", dom.name);
    std::fs::set_permissions(&qmp, std::fs::Permissions::from_mode(0o600)).expect("chmod socket");
    let pattern = format!("{LAB}/{{domain}}.qmp");
    let (code, r, table) = check_both(Some("nobody"), &["--qmp-socket", &pattern]);
    let id = ("chk", "denied");
    let s = source(&r, id, "qmp");
    assert_eq!(s["ok"], false);
    assert_eq!(s["message"], format!("socket {qmp} is 0600 root:root").as_str(), "{s}");
    assert!(text(&s["fix"]).starts_with("run as root"), "{s}");
    // The guest agent through libvirt needs the read-write socket, which is 0770 root:libvirt
    // on the lab (the read-only one is world-accessible, so the libvirt source works).
    let qga = source(&r, id, "qga");
    assert_eq!(qga["ok"], false);
    assert!(
        text(&qga["message"]).contains("permission denied: socket /var/run/libvirt/libvirt-sock is 0770 root:libvirt"),
        "{qga}"
    );
    let fix = text(&qga["fix"]);
    assert!(fix.contains("add user nobody to group libvirt") && fix.contains("--no-qga"), "{fix}");
    assert_eq!(source(&r, id, "libvirt")["ok"], true, "{r:#}");
    assert_eq!(code, 0, "the libvirt source works: exit 0\n{table}");

    // Only that socket configured, nothing else: nothing works, exit 1.
    let dir = std::env::temp_dir().join(format!("vmbridge-check-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = dir.join("static.toml");
    std::fs::write(&cfg, format!("[libvirt]\nuris = []\n[[vms]]\nname = \"plain\"\nqmp_socket = \"{qmp}\"\n"))
        .expect("cfg");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, out, err) = check(Some("nobody"), &["--config", cfg.to_str().unwrap()]);
    eprintln!("$ vmbridge check --config {}\n{out}(exit {code}){err}", cfg.display());
    assert_eq!(code, 1, "nothing works: exit 1\n{out}{err}");
    assert!(
        out.contains(&format!("default/plain  qmp      socket {qmp} is 0600 root:root (fix: run as root")),
        "{out}"
    );
    assert!(out.contains("0 of 1 sources work"), "{out}");
}

#[test]
fn an_invalid_configuration_exits_2_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("vmbridge-check-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "[poll]\ninterval = \"soon\"\n[breaker]\nfailure_threshold = 0\n").expect("cfg");
    let (code, out, err) = check(None, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "no report for an invalid configuration: {out}");
    assert!(err.contains("poll.interval") && err.contains("breaker.failure_threshold"), "{err}");
    // The same error as the exporter's start, and the flags work after the subcommand too.
    let (code, _, err) = check(None, &["--poll-timeout", "never"]);
    assert_eq!(code, 2);
    assert!(err.contains("poll.timeout"), "{err}");
}
