//! `vmbridge check`: with the same configuration and flags as the exporter, probe every
//! libvirt endpoint, VM and source once, with the normal timeouts, and say for each what
//! works and, for what does not, why and how to fix it — the install-time question "why is
//! this series missing?" answered without reading `/debug` JSON.
//!
//! It drives the real pollers (each source's [`Source::poller`], one [`Poller::poll`] each)
//! and the real endpoint connection code; nothing here is a second client. What it adds is
//! the diagnosis: a [`PollError`] turned into a sentence and a fix, looking at the socket
//! involved (mode, owner, group) where a permission is the problem.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::config::{QgaTransportKind, Settings};
use crate::model::{ErrorKind, PollError};
use crate::source::SourceKind;
use crate::source::api::{Source, Visit};
use crate::source::libvirt::{discovery, endpoint, endpoint::Endpoint};
use crate::source::{Poller, VmStart};
use crate::vm::VmId;

/// Everything `vmbridge check` found (`--output json`; schema in
/// `schemas/check.schema.json`).
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CheckReport {
    /// Each libvirt endpoint: could vmbridge connect and list its domains?
    pub endpoints: Vec<EndpointCheck>,
    /// Each VM found, with each source that applies to it.
    pub vms: Vec<VmCheck>,
    /// Sources that answered, over all VMs.
    pub working_sources: usize,
    /// Sources probed, over all VMs.
    pub probed_sources: usize,
}

impl CheckReport {
    /// At least one source of one VM works (the exit status is 0 then).
    pub fn any_working(&self) -> bool {
        self.working_sources > 0
    }
}

/// One libvirt endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct EndpointCheck {
    /// Its URI.
    pub uri: String,
    /// Connected (read-only) and listed.
    pub ok: bool,
    /// Running domains listed.
    pub domains: Option<usize>,
    /// `ok`, or what went wrong.
    pub message: String,
    /// What to do about it.
    pub fix: Option<String>,
}

/// One VM.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct VmCheck {
    /// Namespace label.
    pub namespace: String,
    /// Name label.
    pub name: String,
    /// libvirt domain name (for a `[[vms]]` entry, its name).
    pub domain: String,
    /// The endpoint it was found on; `static` for `[[vms]]`.
    pub endpoint: String,
    /// One entry per source that applies to it.
    pub sources: Vec<SourceCheck>,
}

/// One source of one VM.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct SourceCheck {
    /// Which.
    pub source: SourceKind,
    /// Its one poll succeeded.
    pub ok: bool,
    /// The failure's kind, as in `vmbridge_source_errors_total`.
    pub kind: Option<ErrorKind>,
    /// `ok`, or why not.
    pub message: String,
    /// What to do about it.
    pub fix: Option<String>,
    /// The poll's own error text, unedited.
    pub detail: Option<String>,
}

/// Probes everything once. Blocking libvirt calls run on tokio's blocking pool, each within
/// the `[poll]` timeout; each source's poll within its poller's own deadline.
pub async fn run(settings: &Settings) -> CheckReport {
    discovery::init();
    let limiter = Arc::new(Semaphore::new(settings.max_concurrent_calls));
    let mut endpoints = Vec::new();
    let mut probes: Vec<(VmCheck, Vec<Probe>)> = Vec::new();
    for ep in endpoints_of(settings).await {
        let (check, domains) = connect_and_list(&ep, settings.poll.timeout).await;
        endpoints.push(check);
        for (name, uuid) in domains {
            let id = VmId::from_domain(&name, settings.domain_naming, &settings.default_namespace);
            let vm = VmStart {
                id: &id,
                domain: &name,
                uuid: &uuid,
                endpoint: Some(&ep),
                sockets: None,
                poll: &settings.poll,
                limiter: &limiter,
            };
            let started = start_probes(&vm, settings);
            probes.push((vm_check(&id, &name, &ep.uri), started));
        }
    }
    for s in &settings.static_vms {
        let uuid = format!("static:{}/{}", s.id.namespace, s.id.name);
        let vm = VmStart {
            id: &s.id,
            domain: &s.id.name,
            uuid: &uuid,
            endpoint: None,
            sockets: Some(s),
            poll: &settings.poll,
            limiter: &limiter,
        };
        let started = start_probes(&vm, settings);
        probes.push((vm_check(&s.id, &s.id.name, "static"), started));
    }
    let mut vms = Vec::new();
    for (mut vm, started) in probes {
        for p in started {
            vm.sources.push(p.finish().await);
        }
        vms.push(vm);
    }
    let probed_sources = vms.iter().map(|v| v.sources.len()).sum();
    let working_sources = vms.iter().flat_map(|v| &v.sources).filter(|s| s.ok).count();
    CheckReport { endpoints, vms, working_sources, probed_sources }
}

fn vm_check(id: &VmId, domain: &str, endpoint: &str) -> VmCheck {
    VmCheck {
        namespace: id.namespace.clone(),
        name: id.name.clone(),
        domain: domain.to_owned(),
        endpoint: endpoint.to_owned(),
        sources: Vec::new(),
    }
}

/// The endpoints discovery would use: the URIs, or in KubeVirt mode each launcher found by
/// one scan.
async fn endpoints_of(settings: &Settings) -> Vec<Arc<Endpoint>> {
    match settings.launchers.clone() {
        None => settings.uris.iter().map(|u| Endpoint::with_limits(u.clone(), u.clone(), settings.lanes)).collect(),
        Some(scan) => {
            let found = tokio::task::spawn_blocking(move || scan.scan()).await.unwrap_or_default();
            found
                .launchers
                .into_iter()
                .map(|l| {
                    let agent_uri = l.agent_uri.unwrap_or_else(|| l.uri.clone());
                    Endpoint::with_limits(l.uri, agent_uri, settings.lanes)
                })
                .collect()
        }
    }
}

/// Opens the endpoint's read-only connection (installed for the pollers) and lists its
/// running domains, each call within `timeout`.
async fn connect_and_list(ep: &Arc<Endpoint>, timeout: Duration) -> (EndpointCheck, Vec<(String, String)>) {
    let uri = ep.uri.clone();
    let fail = |message: String, fix: Option<String>| EndpointCheck {
        uri: uri.clone(),
        ok: false,
        domains: None,
        message: format!("libvirt at {uri}: {message}"),
        fix,
    };
    let u = uri.clone();
    let opened = tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || endpoint::open_read_only(&u))).await;
    let conn = match opened {
        Ok(Ok(Ok(c))) => ep.install(c),
        Ok(Ok(Err(e))) => {
            let (message, fix) = explain_libvirt(e.message(), false);
            return (fail(message, fix), Vec::new());
        }
        Ok(Err(_)) => return (fail("the connect call panicked".into(), None), Vec::new()),
        Err(_) => {
            let fix = Some("the daemon is hung or overloaded: check it (systemctl status libvirtd / virtqemud)".into());
            return (fail(format!("no answer to connect within {}", secs(timeout)), fix), Vec::new());
        }
    };
    let listed =
        tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || discovery::list_running(&conn))).await;
    match listed {
        Ok(Ok(Ok(domains))) => {
            let check = EndpointCheck {
                uri: uri.clone(),
                ok: true,
                domains: Some(domains.len()),
                message: format!("ok, {} running domain{}", domains.len(), if domains.len() == 1 { "" } else { "s" }),
                fix: None,
            };
            (check, domains)
        }
        Ok(Ok(Err(e))) => (fail(format!("listing domains: {}", e.message()), None), Vec::new()),
        Ok(Err(_)) => (fail("the list call panicked".into(), None), Vec::new()),
        Err(_) => (fail(format!("no answer to listing within {}", secs(timeout)), None), Vec::new()),
    }
}

/// One source's poll in flight, with what the diagnosis needs to know about it.
struct Probe {
    source: SourceKind,
    /// The socket it uses and where that path came from (`--qmp-socket '…'`), if any.
    socket: Option<(PathBuf, String)>,
    /// The guest agent goes through libvirt.
    via_libvirt: bool,
    task: tokio::task::JoinHandle<Result<(), PollError>>,
}

impl Probe {
    async fn finish(self) -> SourceCheck {
        let Probe { source, socket, via_libvirt, task } = self;
        let result = task.await.ok();
        let (ok, kind, message, fix, detail) = match result {
            Some(Ok(())) => (true, None, "ok".to_owned(), None, None),
            Some(Err(e)) => {
                let (message, fix) = explain(source, socket.as_ref(), via_libvirt, &e);
                (false, Some(e.kind), message, fix, Some(e.message))
            }
            None => (false, Some(ErrorKind::Internal), "the probe failed (a panic)".to_owned(), None, None),
        };
        SourceCheck { source, ok, kind, message, fix, detail }
    }
}

/// Starts one poll per source that applies to `vm` (the same pollers the exporter runs).
fn start_probes(vm: &VmStart<'_>, settings: &Settings) -> Vec<Probe> {
    struct Start<'a, 'b> {
        vm: &'a VmStart<'b>,
        settings: &'a Settings,
        out: Vec<Probe>,
    }
    impl Visit for Start<'_, '_> {
        fn visit<S: Source>(&mut self) {
            let Some(mut poller) = S::poller(self.vm, S::settings(&self.settings.sources)) else { return };
            let deadline = poller.deadline();
            let task = tokio::spawn(async move {
                match tokio::time::timeout(deadline, poller.poll()).await {
                    Ok(r) => r.map(|_| ()),
                    Err(_) => Err(PollError::new(
                        ErrorKind::Timeout,
                        format!("{} poll did not finish within {}", S::KIND.as_str(), secs(deadline)),
                    )),
                }
            });
            let (socket, via_libvirt) = socket_of(S::KIND, self.vm, self.settings);
            self.out.push(Probe { source: S::KIND, socket, via_libvirt, task });
        }
    }
    let mut start = Start { vm, settings, out: Vec::new() };
    for kind in SourceKind::ALL {
        crate::source::visit(kind, &mut start);
    }
    start.out
}

/// The socket a source of `vm` uses, named after where its path was configured.
fn socket_of(kind: SourceKind, vm: &VmStart<'_>, settings: &Settings) -> (Option<(PathBuf, String)>, bool) {
    let (qga, qmp) = (&settings.sources.qga, &settings.sources.qmp);
    match (kind, vm.sockets) {
        (SourceKind::Qga, Some(s)) => (s.qga_socket.clone().map(|p| (p, "vms[].qga_socket".into())), false),
        (SourceKind::Qmp, Some(s)) => (s.qmp_socket.clone().map(|p| (p, "vms[].qmp_socket".into())), false),
        (SourceKind::Qga, None) if qga.transport == QgaTransportKind::Socket => {
            let pattern = qga.socket_pattern.clone().unwrap_or_default();
            (qga.socket_for(vm.domain, vm.id).map(|p| (p, format!("pattern --qga-socket '{pattern}'"))), false)
        }
        (SourceKind::Qga, None) => (None, true),
        (SourceKind::Qmp, None) => {
            let pattern = qmp.socket_pattern.clone().unwrap_or_default();
            (qmp.socket_for(vm.domain, vm.id).map(|p| (p, format!("pattern --qmp-socket '{pattern}'"))), false)
        }
        _ => (None, false),
    }
}

/// A failed poll as a sentence and a fix.
fn explain(
    source: SourceKind,
    socket: Option<&(PathBuf, String)>,
    via_libvirt: bool,
    e: &PollError,
) -> (String, Option<String>) {
    let msg = e.message.as_str();
    let denied = msg.contains("Permission denied") || msg.contains("os error 13");
    if let Some((_, libvirt_msg)) = msg.split_once("open agent connection: ").filter(|_| via_libvirt) {
        // The read-write connection the agent calls need.
        let (m, fix) = explain_libvirt(libvirt_msg, true);
        return (format!("guest agent through libvirt: {m}"), fix);
    }
    if let Some((path, origin)) = socket {
        if denied {
            return (socket_access(path), Some(access_fix(path)));
        }
        let missing = msg.contains("No such file or directory");
        let refused = msg.contains("Connection refused");
        match (source, missing, refused) {
            (SourceKind::Qmp, true, _) => {
                return (
                    format!("no QMP socket at {} ({origin})", path.display()),
                    Some(
                        "fix the pattern ({domain}, {namespace} and {name} are replaced), or give the VM an \
                         extra monitor: -qmp unix:PATH,server=on,wait=off"
                            .into(),
                    ),
                );
            }
            (SourceKind::Qmp, _, true) => {
                return (
                    format!("nothing listens at {} ({origin})", path.display()),
                    Some("the QEMU that served this monitor is gone; check the VM is running".into()),
                );
            }
            (SourceKind::Qga, true, _) => {
                return (
                    format!("no guest-agent socket at {} ({origin})", path.display()),
                    Some("fix the pattern, or start the VM with its guest-agent channel at that path".into()),
                );
            }
            (SourceKind::Qga, _, true) => {
                return (
                    format!("agent not connected: nothing listens at {} ({origin})", path.display()),
                    Some("start qemu-guest-agent (or the QEMU serving this channel)".into()),
                );
            }
            _ => {}
        }
    }
    match e.kind {
        ErrorKind::AgentUnavailable => (
            "agent not connected".into(),
            Some("start qemu-guest-agent in the guest (install it if missing); vmbridge re-checks on its own".into()),
        ),
        ErrorKind::AgentDisabled => (
            format!("agent polling off for this VM: {msg}"),
            Some("remove the VM from qga.exclude, or its vmbridge metadata element, to poll its agent".into()),
        ),
        ErrorKind::Timeout => (
            format!("no answer in time: {msg}"),
            Some("the VM, its monitor or its agent is hung or very busy (paused, stopped, overloaded)".into()),
        ),
        ErrorKind::NoDomain => ("the domain went away during the check".into(), None),
        ErrorKind::PoolSaturated => {
            ("too many libvirt calls at once".into(), Some("raise libvirt.max_concurrent_calls".into()))
        }
        _ => (msg.to_owned(), None),
    }
}

/// A libvirt connection error as a sentence and a fix; `rw` when the read-write socket (the
/// guest agent's) was wanted.
fn explain_libvirt(msg: &str, rw: bool) -> (String, Option<String>) {
    // libvirt names the socket: "Failed to connect socket to '/run/libvirt/libvirt-sock': …".
    let socket = msg.split('\'').nth(1).filter(|s| s.starts_with('/')).map(PathBuf::from);
    let lower = msg.to_ascii_lowercase();
    let without = if rw { "; or, without guest-agent metrics: [qga] enabled = false (--no-qga)" } else { "" };
    if lower.contains("permission denied") {
        let m = socket.as_deref().map(socket_access).unwrap_or_else(|| format!("permission denied ({msg})"));
        let fix = socket.as_deref().map(access_fix).unwrap_or_else(|| "run as root".into());
        return (format!("permission denied: {m}"), Some(format!("{fix}{without}")));
    }
    if lower.contains("no such file or directory") {
        let at = socket.map(|s| format!(" (no socket at {})", s.display())).unwrap_or_default();
        return (
            format!("libvirt daemon not running{at}"),
            Some("start libvirtd (or virtqemud), or fix --libvirt-uri".into()),
        );
    }
    if lower.contains("authentication") || lower.contains("polkit") || lower.contains("access denied") {
        return (
            format!("refused: {msg}"),
            Some(format!(
                "allow this user in libvirt's auth (polkit, or auth_unix_{} in libvirtd.conf){without}",
                if rw { "rw" } else { "ro" }
            )),
        );
    }
    (msg.to_owned(), None)
}

/// "socket /x is 0660 root:libvirt", from the socket's metadata.
fn socket_access(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "socket {} is {:04o} {}:{}",
            path.display(),
            m.permissions().mode() & 0o7777,
            user_name(m.uid()),
            group_name(m.gid())
        ),
        Err(e) => format!("socket {}: {e}", path.display()),
    }
}

/// How to get access to the socket at `path`.
fn access_fix(path: &Path) -> String {
    let Ok(m) = std::fs::metadata(path) else { return "run as root".into() };
    let group = group_name(m.gid());
    let user = user_name(nix::unistd::geteuid().as_raw());
    if m.permissions().mode() & 0o020 != 0 && m.gid() != 0 {
        format!("run as root or add user {user} to group {group} (usermod -aG {group} {user})")
    } else {
        "run as root, or have the socket created group-writable (0660) for a group this user is in".into()
    }
}

/// The name of user `uid` (the system's user database: `/etc/passwd`, or LDAP/sssd through
/// NSS), else the number.
fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into()).ok().flatten().map_or_else(|| uid.to_string(), |u| u.name)
}

/// The name of group `gid`, else the number.
fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(gid.into()).ok().flatten().map_or_else(|| gid.to_string(), |g| g.name)
}

fn secs(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The report as a table: endpoints, then one row per VM and source.
pub fn table(r: &CheckReport) -> String {
    let mut out = String::new();
    for e in &r.endpoints {
        out.push_str(&format!(
            "libvirt {}: {}\n",
            e.uri,
            e.message.trim_start_matches(&format!("libvirt at {}: ", e.uri))
        ));
        if let Some(fix) = &e.fix {
            out.push_str(&format!("  fix: {fix}\n"));
        }
    }
    let rows: Vec<(String, &str, String)> = r
        .vms
        .iter()
        .flat_map(|vm| {
            vm.sources.iter().map(move |s| {
                let result = match &s.fix {
                    Some(fix) => format!("{} (fix: {fix})", s.message),
                    None => s.message.clone(),
                };
                (format!("{}/{}", vm.namespace, vm.name), s.source.as_str(), result)
            })
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no VM found\n");
    } else {
        let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(2).max(2);
        out.push_str(&format!("{:<w$}  {:<7}  RESULT\n", "VM", "SOURCE"));
        for (vm, source, result) in rows {
            out.push_str(&format!("{vm:<w$}  {source:<7}  {result}\n"));
        }
    }
    out.push_str(&format!("{} of {} sources work\n", r.working_sources, r.probed_sources));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirt_errors_name_the_socket_and_the_fix() {
        let (m, fix) = explain_libvirt(
            "Failed to connect socket to '/nonexistent/libvirt-sock': No such file or directory",
            false,
        );
        assert_eq!(m, "libvirt daemon not running (no socket at /nonexistent/libvirt-sock)");
        assert!(fix.is_some_and(|f| f.contains("start libvirtd")));
        let (m, fix) = explain_libvirt("Failed to connect socket to '/etc/passwd': Permission denied", true);
        assert!(m.starts_with("permission denied: socket /etc/passwd is 0644 root:root"), "{m}");
        assert!(fix.is_some_and(|f| f.contains("run as root") && f.contains("--no-qga")));
    }

    #[test]
    fn the_table_has_a_row_per_source_with_its_fix() {
        let r = CheckReport {
            endpoints: vec![EndpointCheck {
                uri: "qemu:///system".into(),
                ok: true,
                domains: Some(1),
                message: "ok, 1 running domain".into(),
                fix: None,
            }],
            vms: vec![VmCheck {
                namespace: "lab".into(),
                name: "vm-01".into(),
                domain: "lab_vm-01".into(),
                endpoint: "qemu:///system".into(),
                sources: vec![
                    SourceCheck {
                        source: SourceKind::Libvirt,
                        ok: true,
                        kind: None,
                        message: "ok".into(),
                        fix: None,
                        detail: None,
                    },
                    SourceCheck {
                        source: SourceKind::Qga,
                        ok: false,
                        kind: Some(ErrorKind::AgentUnavailable),
                        message: "agent not connected".into(),
                        fix: Some("start qemu-guest-agent in the guest".into()),
                        detail: None,
                    },
                ],
            }],
            working_sources: 1,
            probed_sources: 2,
        };
        assert_eq!(
            table(&r),
            "libvirt qemu:///system: ok, 1 running domain\n\
             VM         SOURCE   RESULT\n\
             lab/vm-01  libvirt  ok\n\
             lab/vm-01  qga      agent not connected (fix: start qemu-guest-agent in the guest)\n\
             1 of 2 sources work\n"
        );
        assert!(r.any_working());
    }
}
