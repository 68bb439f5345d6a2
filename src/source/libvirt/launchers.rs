//! KubeVirt discovery: on a KubeVirt node there is no host libvirtd; each VM's libvirt daemon
//! (`virtqemud`, or `libvirtd` in older launchers) runs in its virt-launcher pod, in its own
//! mount namespace. With `hostPID`, vmbridge finds every such daemon whose mount namespace
//! differs from its own and reaches its socket through `/proc/<pid>/root/...`.
//!
//! Each daemon found becomes an endpoint with its own discovery task; a daemon that goes away
//! is dropped (its VMs' series disappear) within one scan interval, and one that hangs only
//! stalls its own endpoint.
//!
//! A process *name* proves nothing: any pod can run a process called `libvirtd`, or start it
//! below one it calls `virt-launcher`; and every pod sits in a kubepods cgroup. A daemon is
//! trusted as a launcher's only when all of these hold together (see `Trust::Launcher`):
//! - a `virt-launcher` process is among its ancestors (KubeVirt starts virtqemud as
//!   virt-launcher's child), in the daemon's own mount namespace and cgroup (the same
//!   container: KubeVirt's `compute`);
//! - its root has KubeVirt's launcher layout: virt-launcher's command socket
//!   `run/kubevirt/sockets/launcher-sock` and the daemon's own socket in `run/libvirt/`, both
//!   real sockets reached without following any symlink.
//!
//! A pod that forges all of that on purpose (its own image laid out like virt-launcher's) is
//! still not told apart: only the API server knows which pods are launchers. What the rule
//! rules out is a daemon that merely has a launcher's name or parent.
//! Other daemons are rejected and counted
//! (`vmbridge_launcher_daemons{status="untrusted"}`). At most `max_launchers` are accepted.
//! One that claims a VM another launcher already serves never replaces it (the store keeps
//! both and flags the conflict).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A launcher's libvirt daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    /// Its PID (in vmbridge's PID namespace).
    pub pid: u32,
    /// The URI of its read-only socket (or the read-write one when no read-only socket exists).
    pub uri: String,
    /// The URI of its read-write socket, for the guest agent, if present.
    pub agent_uri: Option<String>,
}

/// Which daemons count as launchers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// Only a daemon below a `virt-launcher` process of its own container, whose root has
    /// KubeVirt's launcher layout (module docs).
    #[default]
    Launcher,
    /// Any daemon of the configured names in another mount namespace (test rigs without
    /// KubeVirt).
    Any,
}

/// How to find launchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LauncherScan {
    /// The proc filesystem (`/proc`).
    pub proc_root: PathBuf,
    /// Daemon process names.
    pub process_names: Vec<String>,
    /// Socket paths relative to the daemon's root, read-only ones first.
    pub socket_paths: Vec<String>,
    /// Which daemons are trusted.
    pub trust: Trust,
    /// Launchers accepted at most.
    pub max_launchers: usize,
}

/// One scan's result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Trusted launchers, by PID (at most `max_launchers`).
    pub launchers: Vec<Launcher>,
    /// Daemons of a launcher's name that failed the trust check.
    pub untrusted: Vec<u32>,
    /// Trusted ones past the cap.
    pub over_cap: usize,
}

/// How far up the process tree a `virt-launcher` ancestor is looked for.
const MAX_ANCESTRY: usize = 16;

/// The parent PID and name of a process, from `proc/<pid>/stat`.
fn parent_and_comm(proc_root: &Path, pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

/// Whether a process has a `virt-launcher` (or `virt-launcher-monitor`, cut to 15 bytes in
/// `comm`) among its ancestors in its own container: the same mount namespace and cgroup.
fn below_virt_launcher(proc_root: &Path, pid: u32) -> bool {
    let dir = |p: u32| proc_root.join(p.to_string());
    let container = |p: u32| {
        let ns = std::fs::read_link(dir(p).join("ns/mnt")).ok()?;
        let cgroup = std::fs::read_to_string(dir(p).join("cgroup")).ok()?;
        Some((ns, cgroup))
    };
    let Some(own) = container(pid) else { return false };
    let mut cur = pid;
    for _ in 0..MAX_ANCESTRY {
        let Some((ppid, _)) = parent_and_comm(proc_root, cur) else { return false };
        if ppid <= 1 {
            return false;
        }
        match parent_and_comm(proc_root, ppid) {
            Some((_, comm)) if comm.starts_with("virt-launcher") => {
                return container(ppid).as_ref() == Some(&own);
            }
            Some(_) => cur = ppid,
            None => return false,
        }
    }
    false
}

/// virt-launcher's command socket, relative to the pod's root. KubeVirt mounts the `sockets`
/// emptyDir at `/var/run/kubevirt/sockets` (pkg/virt-controller/services/rendervolumes.go) and
/// virt-launcher listens on `launcher-sock` in it (pkg/virt-handler/cmd-client/client.go:
/// `baseDir = "/var/run/kubevirt"`, `SocketsDirectory`, `StandardLauncherSocketFileName`), both
/// at kubevirt/kubevirt d923fdb815cd2016ddaebdaaa51db04133576d72. The launcher image's
/// `/var/run` links to `../run`, so the path is looked up under `run/`, which never goes through
/// that link.
const LAUNCHER_CMD_SOCKET: &str = "run/kubevirt/sockets/launcher-sock";

/// The daemon's own sockets, relative to the pod's root: KubeVirt's virt-launcher talks to
/// `/var/run/libvirt/virtqemud-sock` (cmd/virt-launcher/virt-launcher.go, same commit); older
/// launchers ran libvirtd (`libvirt-sock`).
const LAUNCHER_DAEMON_SOCKETS: [&str; 2] = ["run/libvirt/virtqemud-sock", "run/libvirt/libvirt-sock"];

/// Whether `rel` below `root` is a Unix socket reached without following a symlink at any
/// step: a pod's own symlink could otherwise point the walk at vmbridge's root.
fn socket_no_follow(root: &Path, rel: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let mut path = root.to_path_buf();
    let mut parts = rel.split('/').peekable();
    while let Some(part) = parts.next() {
        path.push(part);
        let Ok(meta) = std::fs::symlink_metadata(&path) else { return false };
        let kind = meta.file_type();
        let ok = if parts.peek().is_some() { kind.is_dir() } else { kind.is_socket() };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether the root of process `pid` is laid out as KubeVirt's virt-launcher `compute`
/// container: virt-launcher's command socket and a libvirt daemon socket, both real sockets.
fn has_launcher_layout(proc_root: &Path, pid: u32) -> bool {
    let root = proc_root.join(pid.to_string()).join("root");
    socket_no_follow(&root, LAUNCHER_CMD_SOCKET) && LAUNCHER_DAEMON_SOCKETS.iter().any(|s| socket_no_follow(&root, s))
}

impl Default for LauncherScan {
    fn default() -> Self {
        LauncherScan {
            proc_root: PathBuf::from("/proc"),
            process_names: vec!["virtqemud".into(), "libvirtd".into()],
            // `run/...` first: in many images `/var/run` is an *absolute* symlink to `/run`,
            // which the kernel resolves against vmbridge's root, not the launcher's, and would
            // lead to the host's own daemon.
            trust: Trust::Launcher,
            max_launchers: 512,
            socket_paths: vec![
                "run/libvirt/virtqemud-sock-ro".into(),
                "run/libvirt/libvirt-sock-ro".into(),
                "run/libvirt/virtqemud-sock".into(),
                "run/libvirt/libvirt-sock".into(),
                "var/run/libvirt/virtqemud-sock-ro".into(),
                "var/run/libvirt/libvirt-sock-ro".into(),
                "var/run/libvirt/virtqemud-sock".into(),
                "var/run/libvirt/libvirt-sock".into(),
            ],
        }
    }
}

/// `qemu+unix:///system?socket=PATH`, or `qemu+unix:///session?socket=PATH` for a daemon that
/// does not run as root: such a daemon (KubeVirt's non-root launchers, the default, run
/// virtqemud as uid 107) refuses `/system` ("unexpected qemu URI path '/system', try
/// qemu:///session", seen with libvirt 9.0).
pub fn socket_uri(path: &Path, session: bool) -> String {
    let driver = if session { "session" } else { "system" };
    format!("qemu+unix:///{driver}?socket={}", path.display())
}

/// Whether the process `pid` runs as a user other than root (its real uid in
/// `/proc/<pid>/status`); `false` when that cannot be read.
fn unprivileged(proc_root: &Path, pid: u32) -> bool {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            .is_some_and(|uid| uid != "0")
    })
}

impl LauncherScan {
    /// Whether the daemon `pid` may be taken for a launcher's.
    fn trusted(&self, pid: u32) -> bool {
        match self.trust {
            Trust::Any => true,
            Trust::Launcher => below_virt_launcher(&self.proc_root, pid) && has_launcher_layout(&self.proc_root, pid),
        }
    }

    /// Every launcher daemon now running, and the daemons rejected. Blocking (reads /proc),
    /// but cheap.
    pub fn scan(&self) -> Found {
        let own_ns = std::fs::read_link(self.proc_root.join("self/ns/mnt")).ok();
        let Ok(entries) = std::fs::read_dir(&self.proc_root) else { return Found::default() };
        let mut found = Vec::new();
        let mut untrusted = Vec::new();
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let dir = e.path();
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
            if !self.process_names.iter().any(|n| n == comm.trim()) {
                continue;
            }
            // The host's own daemon shares our mount namespace: not a launcher.
            let ns = std::fs::read_link(dir.join("ns/mnt")).ok();
            if ns.is_none() || ns == own_ns {
                continue;
            }
            if !self.trusted(pid) {
                untrusted.push(pid);
                continue;
            }
            let root = dir.join("root");
            let existing: Vec<(bool, PathBuf)> = self
                .socket_paths
                .iter()
                .map(|p| (p.ends_with("-ro"), root.join(p)))
                .filter(|(_, p)| p.exists())
                .collect();
            let ro = existing.iter().find(|(ro, _)| *ro).or_else(|| existing.first());
            let rw = existing.iter().find(|(ro, _)| !*ro);
            if let Some((_, ro)) = ro {
                let session = unprivileged(&self.proc_root, pid);
                found.push(Launcher {
                    pid,
                    uri: socket_uri(ro, session),
                    agent_uri: rw.map(|(_, p)| socket_uri(p, session)),
                });
            }
        }
        found.sort_by_key(|l| l.pid);
        untrusted.sort_unstable();
        let over_cap = found.len().saturating_sub(self.max_launchers);
        found.truncate(self.max_launchers);
        Found { launchers: found, untrusted, over_cap }
    }
}

/// What changed between two scans, by PID.
pub fn diff(before: &BTreeMap<u32, Launcher>, now: &[Launcher]) -> (Vec<Launcher>, Vec<u32>) {
    let added = now.iter().filter(|l| before.get(&l.pid) != Some(l)).cloned().collect();
    let gone = before.keys().filter(|pid| !now.iter().any(|l| l.pid == **pid)).copied().collect();
    (added, gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_a_fake_proc_tree() {
        let root = std::env::temp_dir().join(format!("vmbridge-proc-{}-{}", std::process::id(), fastrand::u32(..)));
        let mk = |pid: &str, comm: &str, ns: &str, sockets: &[&str]| {
            let d = root.join(pid);
            std::fs::create_dir_all(d.join("ns")).expect("mkdir");
            std::fs::write(d.join("comm"), format!("{comm}\n")).expect("comm");
            std::fs::write(d.join("stat"), format!("{pid} ({comm}) S 1 1 1 0")).expect("stat");
            std::os::unix::fs::symlink(ns, d.join("ns/mnt")).expect("ns");
            for s in sockets {
                let p = d.join("root").join(s);
                std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                std::fs::write(&p, "").expect("socket stand-in");
            }
        };
        mk("self", "vmbridge", "mnt:[1]", &[]);
        mk("10", "libvirtd", "mnt:[1]", &["var/run/libvirt/libvirt-sock-ro"]); // host daemon
        mk("20", "virtqemud", "mnt:[2]", &["var/run/libvirt/virtqemud-sock-ro", "var/run/libvirt/virtqemud-sock"]);
        mk("30", "libvirtd", "mnt:[3]", &["var/run/libvirt/libvirt-sock"]);
        // A non-root launcher's daemon (KubeVirt's default: virtqemud as uid 107) serves only
        // session URIs; a root one, system URIs.
        std::fs::write(root.join("20/status"), "Name:\tvirtqemud\nUid:\t0\t0\t0\t0\n").expect("status");
        std::fs::write(root.join("30/status"), "Name:\tlibvirtd\nUid:\t107\t107\t107\t107\n").expect("status");
        mk("40", "bash", "mnt:[4]", &["var/run/libvirt/libvirt-sock"]);
        mk("50", "libvirtd", "mnt:[5]", &[]); // no socket yet
        let scan = LauncherScan { proc_root: root.clone(), trust: Trust::Any, ..Default::default() };
        let found = scan.scan().launchers;
        let pids: Vec<u32> = found.iter().map(|l| l.pid).collect();
        assert_eq!(pids, vec![20, 30]);
        assert!(found[0].uri.ends_with("/20/root/var/run/libvirt/virtqemud-sock-ro"), "{}", found[0].uri);
        assert!(found[0].agent_uri.as_deref().is_some_and(|u| u.ends_with("virtqemud-sock")));
        assert!(found[1].uri.ends_with("/30/root/var/run/libvirt/libvirt-sock"));
        assert!(found[0].uri.starts_with("qemu+unix:///system?socket="), "{}", found[0].uri);
        assert!(found[1].uri.starts_with("qemu+unix:///session?socket="), "{}", found[1].uri);
        assert!(found[1].agent_uri.as_deref().is_some_and(|u| u.starts_with("qemu+unix:///session?socket=")));
        let before: BTreeMap<u32, Launcher> = found.iter().map(|l| (l.pid, l.clone())).collect();
        let (added, gone) = diff(&before, &found[1..]);
        assert!(added.is_empty());
        assert_eq!(gone, vec![20]);
        let _ = std::fs::remove_dir_all(root);
    }
}

#[cfg(test)]
mod trust_tests {
    use super::*;

    /// A real Unix socket at `path` (the listener is dropped; the socket file stays).
    fn socket_at(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        drop(std::os::unix::net::UnixListener::bind(path).expect("bind"));
    }

    #[test]
    fn only_daemons_below_virt_launcher_with_kubevirts_layout_are_trusted_and_the_cap_holds() {
        let root = std::env::temp_dir().join(format!("vmbridge-trust-{}-{}", std::process::id(), fastrand::u32(..)));
        let pod = "0::/kubepods/pod1b2c3d4e-1111-2222-3333-444455556666/c\n";
        let mk = |pid: u32, ppid: u32, comm: &str, ns: &str, cgroup: &str| {
            let d = root.join(pid.to_string());
            std::fs::create_dir_all(d.join("ns")).expect("mkdir");
            std::fs::write(d.join("comm"), format!("{comm}\n")).expect("comm");
            std::fs::write(d.join("stat"), format!("{pid} ({comm}) S {ppid} 1 1 0")).expect("stat");
            std::fs::write(d.join("cgroup"), cgroup).expect("cgroup");
            std::os::unix::fs::symlink(ns, d.join("ns/mnt")).expect("ns");
        };
        // KubeVirt's layout in a daemon's root: virt-launcher's command socket and its own.
        let layout = |pid: u32| {
            let r = root.join(pid.to_string()).join("root");
            socket_at(&r.join(LAUNCHER_CMD_SOCKET));
            socket_at(&r.join("run/libvirt/virtqemud-sock-ro"));
            socket_at(&r.join("run/libvirt/virtqemud-sock"));
        };
        std::fs::create_dir_all(root.join("self/ns")).expect("self");
        std::os::unix::fs::symlink("mnt:[1]", root.join("self/ns/mnt")).expect("self ns");
        // A launcher as KubeVirt runs it: monitor, virt-launcher, virtqemud, one container.
        mk(100, 1, "virt-launcher-m", "mnt:[2]", pod);
        mk(101, 100, "virt-launcher", "mnt:[2]", pod);
        mk(102, 101, "virtqemud", "mnt:[2]", pod);
        layout(102);
        // Below a process named virt-launcher, but without virt-launcher's command socket.
        mk(110, 1, "virt-launcher", "mnt:[3]", pod);
        mk(111, 110, "virtqemud", "mnt:[3]", pod);
        socket_at(&root.join("111/root/run/libvirt/virtqemud-sock"));
        // ... or with a plain file where the socket should be.
        mk(120, 1, "virt-launcher", "mnt:[4]", pod);
        mk(121, 120, "virtqemud", "mnt:[4]", pod);
        socket_at(&root.join("121/root/run/libvirt/virtqemud-sock"));
        let fake = root.join("121/root").join(LAUNCHER_CMD_SOCKET);
        std::fs::create_dir_all(fake.parent().expect("parent")).expect("mkdir");
        std::fs::write(&fake, "").expect("plain file");
        // ... or with the layout reached through a symlink.
        mk(130, 1, "virt-launcher", "mnt:[5]", pod);
        mk(131, 130, "virtqemud", "mnt:[5]", pod);
        socket_at(&root.join("131/elsewhere/kubevirt/sockets/launcher-sock"));
        socket_at(&root.join("131/root/run/libvirt/virtqemud-sock"));
        std::os::unix::fs::symlink(root.join("131/elsewhere/kubevirt"), root.join("131/root/run/kubevirt"))
            .expect("ln");
        // ... or whose virt-launcher is in another container (mount namespace, cgroup).
        mk(140, 1, "virt-launcher", "mnt:[6]", pod);
        mk(141, 140, "virtqemud", "mnt:[7]", pod);
        layout(141);
        mk(150, 1, "virt-launcher", "mnt:[8]", "0::/kubepods/pod1b2c3d4e-1111-2222-3333-444455556666/other\n");
        mk(151, 150, "virtqemud", "mnt:[8]", pod);
        layout(151);
        // The layout in a pod's cgroup, without a virt-launcher parent (was trusted before).
        mk(200, 1, "virtqemud", "mnt:[9]", pod);
        layout(200);
        mk(300, 1, "bash", "mnt:[10]", "0::/\n");
        mk(301, 300, "libvirtd", "mnt:[10]", "0::/\n"); // a libvirtd under a shell
        layout(301);
        // A second real launcher, for the cap.
        mk(400, 1, "virt-launcher", "mnt:[11]", "0::/\n");
        mk(401, 400, "libvirtd", "mnt:[11]", "0::/\n");
        layout(401);
        let scan = LauncherScan { proc_root: root.clone(), ..Default::default() };
        let found = scan.scan();
        assert_eq!(found.launchers.iter().map(|l| l.pid).collect::<Vec<_>>(), [102, 401]);
        assert_eq!(found.untrusted, [111, 121, 131, 141, 151, 200, 301]);
        assert_eq!(found.over_cap, 0);
        let capped = LauncherScan { max_launchers: 1, ..scan }.scan();
        assert_eq!((capped.launchers.len(), capped.over_cap), (1, 1));
        let _ = std::fs::remove_dir_all(root);
    }
}
