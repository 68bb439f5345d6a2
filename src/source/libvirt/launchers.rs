//! KubeVirt discovery: on a KubeVirt node there is no host libvirtd; each VM's libvirt daemon
//! (`virtqemud`, or `libvirtd` in older launchers) runs in its virt-launcher pod, in its own
//! mount namespace. With `hostPID`, vmbridge finds every such daemon whose mount namespace
//! differs from its own and reaches its socket through `/proc/<pid>/root/...`.
//!
//! Each daemon found becomes an endpoint with its own discovery task; a daemon that goes away
//! is dropped (its VMs' series disappear) within one scan interval, and one that hangs only
//! stalls its own endpoint.

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

/// How to find launchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LauncherScan {
    /// The proc filesystem (`/proc`).
    pub proc_root: PathBuf,
    /// Daemon process names.
    pub process_names: Vec<String>,
    /// Socket paths relative to the daemon's root, read-only ones first.
    pub socket_paths: Vec<String>,
}

impl Default for LauncherScan {
    fn default() -> Self {
        LauncherScan {
            proc_root: PathBuf::from("/proc"),
            process_names: vec!["virtqemud".into(), "libvirtd".into()],
            // `run/...` first: in many images `/var/run` is an *absolute* symlink to `/run`,
            // which the kernel resolves against vmbridge's root, not the launcher's, and would
            // lead to the host's own daemon.
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

/// `qemu+unix:///system?socket=PATH`.
pub fn socket_uri(path: &Path) -> String {
    format!("qemu+unix:///system?socket={}", path.display())
}

impl LauncherScan {
    /// Every launcher daemon now running. Blocking (reads /proc), but cheap.
    pub fn scan(&self) -> Vec<Launcher> {
        let own_ns = std::fs::read_link(self.proc_root.join("self/ns/mnt")).ok();
        let Ok(entries) = std::fs::read_dir(&self.proc_root) else { return Vec::new() };
        let mut found = Vec::new();
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
                found.push(Launcher { pid, uri: socket_uri(ro), agent_uri: rw.map(|(_, p)| socket_uri(p)) });
            }
        }
        found.sort_by_key(|l| l.pid);
        found
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
        mk("40", "bash", "mnt:[4]", &["var/run/libvirt/libvirt-sock"]);
        mk("50", "libvirtd", "mnt:[5]", &[]); // no socket yet
        let scan = LauncherScan { proc_root: root.clone(), ..Default::default() };
        let found = scan.scan();
        let pids: Vec<u32> = found.iter().map(|l| l.pid).collect();
        assert_eq!(pids, vec![20, 30]);
        assert!(found[0].uri.ends_with("/20/root/var/run/libvirt/virtqemud-sock-ro"), "{}", found[0].uri);
        assert!(found[0].agent_uri.as_deref().is_some_and(|u| u.ends_with("virtqemud-sock")));
        assert!(found[1].uri.ends_with("/30/root/var/run/libvirt/libvirt-sock"));
        let before: BTreeMap<u32, Launcher> = found.iter().map(|l| (l.pid, l.clone())).collect();
        let (added, gone) = diff(&before, &found[1..]);
        assert!(added.is_empty());
        assert_eq!(gone, vec![20]);
        let _ = std::fs::remove_dir_all(root);
    }
}
