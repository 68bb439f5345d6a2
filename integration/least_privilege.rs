//! Least privilege, measured (issue 27 point 4): which uid and capabilities vmbridge needs to
//! reach a KubeVirt launcher's daemon, on the lab's launchers (`integration/launcher.sh`: a
//! libvirtd in its own mount namespace, reachable only through `/proc/<pid>/root`, as on a node).
//! vmbridge runs under `setpriv` with an exact capability set (inheritable, ambient and bounding
//! alike), in KubeVirt discovery mode, with the guest agent polled through the launcher's
//! read-write socket:
//!
//! | vmbridge runs as | capabilities | libvirt data | agent path |
//! |---|---|---|---|
//! | uid 0, as the lab's launcher daemons | SYS_PTRACE | yes | yes |
//! | uid 0 | none | no: the daemon holds capabilities vmbridge lacks, so no ptrace access | no |
//! | another uid (65534) | SYS_PTRACE, DAC_OVERRIDE | yes | yes |
//! | another uid | SYS_PTRACE | yes (read-only socket, mode 0777) | no: the read-write socket is 0700 |
//! | another uid | DAC_OVERRIDE | no: `/proc/<pid>/root` needs ptrace access | no |
//! | another uid | none | no | no |
//!
//! So SYS_PTRACE is always needed: entering `/proc/<pid>/root` needs ptrace access to the
//! daemon, which a caller has without the capability only if it has the daemon's uid *and* all
//! of its capabilities (the kernel's `cap_ptrace_access_check`). DAC_OVERRIDE is needed only for
//! a uid other than the daemon's, and only for the agent path (the read-write socket).
//! DAC_READ_SEARCH is never needed (the socket directories are searchable by all). Root is not
//! needed: uid 65534 reached everything. "Yes" for the agent path means the launcher's daemon
//! answered the agent call ("not connected": the lab's domain has no agent), so the read-write
//! socket was opened. The launchers' daemons run without polkit (a pod has no D-Bus), with
//! sockets 0777 (read-only) and 0700 (read-write); libvirt's client also needs a passwd entry
//! for vmbridge's uid (the image has one for 65532).
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // tests drive real processes (vmbridge, launcher.sh, setpriv)

mod common;

use std::time::{Duration, Instant};

use common::*;

/// `setpriv` running vmbridge as `uid` with exactly `caps` (e.g. `["sys_ptrace"]`).
fn setpriv(uid: u32, caps: &[&str]) -> Vec<String> {
    let set: String =
        std::iter::once("-all".to_owned()).chain(caps.iter().map(|c| format!("+{c}"))).collect::<Vec<_>>().join(",");
    let mut v = vec!["setpriv".to_owned(), format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()];
    v.push(format!("--inh-caps={set}"));
    if !caps.is_empty() {
        v.push(format!("--ambient-caps={set}"));
    }
    v.push(format!("--bounding-set={set}"));
    v.push("--".into());
    v
}

/// What vmbridge under `prefix` reaches of launcher VM `vm` within `limit`: (libvirt data,
/// agent path answered), and its last error of the guest source.
fn reach(prefix: &[String], vm: [(&str, &str); 2], limit: Duration) -> (bool, bool, String) {
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let bridge = Bridge::start_under(
        &prefix,
        &["--discovery", "kubevirt", "--poll-interval", "1s", "--poll-timeout", "2s", "--health-detail"],
    );
    // The VM's own labels plus the source.
    let src = |s: &'static str| [vm[0], vm[1], ("source", s)];
    let agent_answered = |e: &Exposition| {
        e.value("vmbridge_source_errors_total", &[vm[0], vm[1], ("source", "qga"), ("kind", "agent_unavailable")])
            .unwrap_or(0.0)
            > 0.0
    };
    let start = Instant::now();
    let (mut libvirt, mut agent) = (false, false);
    while start.elapsed() < limit && !(libvirt && agent) {
        let e = bridge.metrics();
        libvirt |= e.value("vmbridge_source_up", &src("libvirt")) == Some(1.0);
        agent |= agent_answered(&e);
        std::thread::sleep(Duration::from_millis(200));
    }
    let debug = bridge.get(&format!("/debug/vms/{}/{}", vm[0].1, vm[1].1), None);
    let last = serde_json::from_str::<serde_json::Value>(&debug.body)
        .ok()
        .and_then(|v| v["sources"]["qga"]["last_errors"].as_array().and_then(|a| a.last().cloned()))
        .map(|e| format!("{}: {}", e["kind"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or("")))
        .unwrap_or_else(|| format!("(no guest source: /debug {})", debug.status));
    (libvirt, agent, last)
}

#[test]
fn sys_ptrace_is_always_needed_and_dac_override_only_for_another_uids_agent_path() {
    let _serial = serial();
    let _watchdog = watchdog();
    let _l = Launcher::start("kvlp", "kvlp-ns_vm-p");
    let vm = [("namespace", "kvlp-ns"), ("name", "vm-p")];
    // Found and answered: within 30 s (discovery and polls run every second or two).
    let found = Duration::from_secs(30);
    // Not found: given as long as the runs that do find it took at most, and more.
    let not_found = Duration::from_secs(15);
    // Another uid with a passwd entry, as the image's 65532 has one: libvirt's client refuses
    // to open a connection for a uid without one ("Failed to find user record").
    let other = 65534;
    let runs = [
        (0, &["sys_ptrace"][..], found, true, true),
        (0, &[][..], not_found, false, false),
        (other, &["sys_ptrace", "dac_override"][..], found, true, true),
        (other, &["sys_ptrace"][..], found, true, false),
        (other, &["dac_override"][..], not_found, false, false),
        (other, &[][..], not_found, false, false),
    ];
    // All six at once (each its own vmbridge process, the same launcher): the runs that must
    // not find it take their whole window, and one after another they took 85 s of CI.
    let results: Vec<(bool, bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|&(uid, caps, limit, _, _)| s.spawn(move || reach(&setpriv(uid, caps), vm, limit)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("a run panicked")).collect()
    });
    let mut table = Vec::new();
    let mut failed = Vec::new();
    for ((uid, caps, _, want_libvirt, want_agent), (libvirt, agent, last)) in runs.iter().zip(results) {
        let row = format!("uid {uid}, caps {caps:?}: libvirt {libvirt}, agent {agent}; guest source: {last}");
        eprintln!("{row}");
        if (libvirt, agent) != (*want_libvirt, *want_agent) {
            failed.push(format!("{row} (expected libvirt {want_libvirt}, agent {want_agent})"));
        } else if *want_libvirt && !*want_agent && !last.contains("ermission denied") {
            // The read-write socket was refused, not missing.
            failed.push(format!("{row} (expected the agent path to fail on the socket's mode)"));
        }
        table.push(row);
    }
    assert!(failed.is_empty(), "not as measured before:\n{}\nall runs:\n{}", failed.join("\n"), table.join("\n"));
}
