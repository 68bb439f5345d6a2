//! KubeVirt discovery: on a KubeVirt node there is no host libvirtd; each VM's libvirt daemon
//! (`virtqemud`, or `libvirtd` in older launchers) runs in its virt-launcher pod, in its own
//! mount namespace. With `hostPID`, vmbridge finds every such daemon whose mount namespace
//! differs from its own and reaches its socket through `/proc/<pid>/root/...`.
//!
//! Each daemon found becomes an endpoint with its own discovery task; a daemon that goes away
//! is dropped (its VMs' series disappear) within one scan interval, and one that hangs only
//! stalls its own endpoint.
//!
//! A process *name* proves nothing: any pod can run a process called `libvirtd`. A daemon is
//! trusted as a launcher's only when a `virt-launcher` process is among its ancestors (KubeVirt
//! starts virtqemud as virt-launcher's child), or when it sits in a kubepods cgroup of a pod
//! (`…/kubepods…/pod<uid>/…`). Other daemons are rejected and counted
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
    /// Only a daemon below a `virt-launcher` process, or in a pod's kubepods cgroup.
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
/// `comm`) among its ancestors.
fn below_virt_launcher(proc_root: &Path, pid: u32) -> bool {
    let mut cur = pid;
    for _ in 0..MAX_ANCESTRY {
        let Some((ppid, _)) = parent_and_comm(proc_root, cur) else { return false };
        if ppid <= 1 {
            return false;
        }
        match parent_and_comm(proc_root, ppid) {
            Some((_, comm)) if comm.starts_with("virt-launcher") => return true,
            Some(_) => cur = ppid,
            None => return false,
        }
    }
    false
}

/// Whether a `/proc/<pid>/cgroup` text places the process in a pod's kubepods cgroup: a path
/// with `kubepods` and a `pod<uid>` element (cgroupfs: `pod1b2c…-…`, systemd: `pod1b2c…_…`).
fn in_pod_cgroup(cgroup: &str) -> bool {
    cgroup.lines().any(|l| {
        let path = l.splitn(3, ':').nth(2).unwrap_or_default();
        path.contains("kubepods")
            && path.split('/').any(|seg| {
                let seg = seg.strip_prefix("kubepods-besteffort-").unwrap_or(seg);
                let seg = seg.strip_prefix("kubepods-burstable-").unwrap_or(seg);
                let seg = seg.strip_suffix(".slice").unwrap_or(seg);
                seg.strip_prefix("pod").is_some_and(|uid| {
                    uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_')
                })
            })
    })
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
            Trust::Launcher => {
                below_virt_launcher(&self.proc_root, pid)
                    || std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup"))
                        .is_ok_and(|c| in_pod_cgroup(&c))
            }
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

    #[test]
    fn pod_cgroups_are_recognised_in_both_drivers_and_nothing_else() {
        let cgroupfs = "0::/kubepods/burstable/pod1b2c3d4e-1111-2222-3333-444455556666/0123abcd\n";
        let systemd = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_1111_2222_3333_444455556666.slice/cri-containerd-0123.scope\n";
        let v1 = "4:memory:/kubepods/besteffort/pod1b2c3d4e-1111-2222-3333-444455556666/abc\n1:cpu:/\n";
        for c in [cgroupfs, systemd, v1] {
            assert!(in_pod_cgroup(c), "{c}");
        }
        for c in [
            "0::/\n",
            "0::/system.slice/libvirtd.service\n",
            "0::/kubepods/burstable/\n",
            "0::/user.slice/pod1b2c3d4e-1111-2222-3333-444455556666\n",
            "0::/kubepods/podnot-a-uid\n",
        ] {
            assert!(!in_pod_cgroup(c), "{c}");
        }
    }

    #[test]
    fn only_daemons_below_virt_launcher_or_in_a_pod_are_trusted_and_the_cap_holds() {
        let root = std::env::temp_dir().join(format!("vmbridge-trust-{}-{}", std::process::id(), fastrand::u32(..)));
        let mk = |pid: u32, ppid: u32, comm: &str, ns: &str, cgroup: &str| {
            let d = root.join(pid.to_string());
            std::fs::create_dir_all(d.join("ns")).expect("mkdir");
            std::fs::write(d.join("comm"), format!("{comm}\n")).expect("comm");
            std::fs::write(d.join("stat"), format!("{pid} ({comm}) S {ppid} 1 1 0")).expect("stat");
            std::fs::write(d.join("cgroup"), cgroup).expect("cgroup");
            std::os::unix::fs::symlink(ns, d.join("ns/mnt")).expect("ns");
            let sock = d.join("root/run/libvirt/virtqemud-sock-ro");
            std::fs::create_dir_all(sock.parent().expect("parent")).expect("mkdir");
            std::fs::write(&sock, "").expect("socket stand-in");
        };
        std::fs::create_dir_all(root.join("self/ns")).expect("self");
        std::os::unix::fs::symlink("mnt:[1]", root.join("self/ns/mnt")).expect("self ns");
        mk(100, 1, "virt-launcher-m", "mnt:[2]", "0::/\n");
        mk(101, 100, "virt-launcher", "mnt:[2]", "0::/\n");
        mk(102, 101, "virtqemud", "mnt:[2]", "0::/\n"); // below virt-launcher
        mk(200, 1, "virtqemud", "mnt:[3]", "0::/kubepods/pod1b2c3d4e-1111-2222-3333-444455556666/c\n"); // in a pod
        mk(300, 1, "bash", "mnt:[4]", "0::/\n");
        mk(301, 300, "libvirtd", "mnt:[4]", "0::/\n"); // an impostor: a libvirtd under a shell
        mk(302, 1, "virtqemud", "mnt:[5]", "0::/system.slice/x\n"); // not in a pod
        let scan = LauncherScan { proc_root: root.clone(), ..Default::default() };
        let found = scan.scan();
        assert_eq!(found.launchers.iter().map(|l| l.pid).collect::<Vec<_>>(), [102, 200]);
        assert_eq!(found.untrusted, [301, 302]);
        assert_eq!(found.over_cap, 0);
        let capped = LauncherScan { max_launchers: 1, ..scan }.scan();
        assert_eq!((capped.launchers.len(), capped.over_cap), (1, 1));
        let _ = std::fs::remove_dir_all(root);
    }
}
