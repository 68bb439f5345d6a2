//! Infra process metrics (the `pod_infra` group of kube-metrics-collector): CPU and memory of
//! each VM's QEMU process and, in a launcher (a pod: its own network namespace), of the launcher-side
//! processes beside it (virt-launcher, virtqemud/libvirtd, virtlogd). Read from `/proc`.
//!
//! The QEMU process is found once by its command line (libvirt passes `-name guest=<domain>`)
//! and found again only when it goes away, so a poll reads a few small files per process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::model::exposition::family;
use crate::model::metric::MetricDef;
use crate::model::metric::{B, S, family};
use crate::model::{ErrorKind, PollError};
use crate::source::SourceKind;
use crate::source::api::Source;
use crate::source::api::VmView;
use crate::source::libvirt::blocking::{BlockingSlot, SlotError};
use crate::source::libvirt::ffi::{clock_ticks_per_second, page_size};
use crate::source::{Poller, SourceSample, Sources, VmStart};

/// Most processes reported per VM.
const MAX_PROCESSES: usize = 16;

/// One process's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ProcessStats {
    /// PID.
    pub pid: u32,
    /// Name (`comm`).
    pub name: String,
    /// User CPU time, seconds.
    pub cpu_user_seconds: f64,
    /// System CPU time, seconds.
    pub cpu_system_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual size, bytes.
    pub virtual_bytes: u64,
    /// Shared (file-backed resident) bytes.
    pub shared_bytes: u64,
    /// When the process started, seconds since the Unix epoch (`starttime` after `btime`).
    pub start_time_seconds: Option<f64>,
    /// Its state letter from `stat` (`R`, `S`, `D`, `T`, …).
    pub state: String,
    /// In state `D`: the kernel function it waits in (`wchan`).
    pub wchan: Option<String>,
}

/// The process source's sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ProcessSample {
    /// QEMU first, then launcher-side processes.
    pub processes: Vec<ProcessStats>,
}

/// The boot time (`btime` of `proc/stat`), seconds since the Unix epoch.
pub fn boot_time(proc_root: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join("stat")).ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// Reads one process's stats from `proc/<pid>`; `btime` dates its start.
pub fn read_stats(proc_root: &Path, pid: u32, ticks: u64, page: u64, btime: Option<u64>) -> Option<ProcessStats> {
    let dir = proc_root.join(pid.to_string());
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The name is in parentheses and may contain spaces: split after the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state(0) ppid(1) … utime(11) stime(12) … starttime(19), in clock ticks since boot.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let start: Option<u64> = f.get(19).and_then(|v| v.parse().ok());
    let state = crate::model::label(f.first()?, 1);
    // Where it waits, only when that says why it is stuck (`0` when it does not wait).
    let wchan = (state == "D")
        .then(|| std::fs::read_to_string(dir.join("wchan")).ok())
        .flatten()
        .map(|w| crate::model::label(w.trim(), 64))
        .filter(|w| !w.is_empty() && w != "0");
    let statm = std::fs::read_to_string(dir.join("statm")).ok()?;
    let m: Vec<u64> = statm.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    Some(ProcessStats {
        pid,
        name: crate::model::label(&name, 32),
        cpu_user_seconds: utime as f64 / ticks as f64,
        cpu_system_seconds: stime as f64 / ticks as f64,
        virtual_bytes: m.first()? * page,
        resident_bytes: m.get(1)? * page,
        shared_bytes: m.get(2)? * page,
        start_time_seconds: btime.zip(start).map(|(b, st)| b as f64 + st as f64 / ticks as f64),
        state,
        wchan,
    })
}

/// Whether a NUL-separated command line is the QEMU of domain `domain` with UUID `uuid`:
/// libvirt passes both (`-name guest=<domain>,…` and `-uuid <uuid>`). The UUID decides: a
/// process that merely borrows the name (another pod's, or a leftover) is not the VM's.
fn is_vms_qemu(cmdline: &[u8], domain: &str, uuid: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let named = args.windows(2).any(|w| {
        w[0] == b"-name"
            && (w[1] == domain.as_bytes()
                || w[1]
                    .strip_prefix(b"guest=")
                    .is_some_and(|v| v.split(|b| *b == b',').next() == Some(domain.as_bytes())))
    });
    let same_uuid = args.windows(2).any(|w| w[0] == b"-uuid" && w[1].eq_ignore_ascii_case(uuid.as_bytes()));
    named && same_uuid
}

/// Finds the QEMU process of `domain` (by name and UUID) and, when it lives in another network namespace (a
/// virt-launcher pod: every process of a pod shares its network namespace, while libvirt
/// may give QEMU a mount namespace of its own), the other processes of that namespace.
pub fn find(proc_root: &Path, domain: &str, uuid: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else { return Vec::new() };
    let pids: Vec<u32> = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    let Some(qemu) = pids.iter().copied().find(|pid| {
        std::fs::read(proc_root.join(pid.to_string()).join("cmdline")).is_ok_and(|c| is_vms_qemu(&c, domain, uuid))
    }) else {
        return Vec::new();
    };
    let ns = |pid: u32| std::fs::read_link(proc_root.join(pid.to_string()).join("ns/net")).ok();
    let (own, theirs) = (std::fs::read_link(proc_root.join("self/ns/net")).ok(), ns(qemu));
    let mut out = vec![qemu];
    if theirs.is_some() && theirs != own {
        out.extend(pids.iter().copied().filter(|p| *p != qemu && ns(*p) == theirs).take(MAX_PROCESSES - 1));
    }
    out
}

/// What one scan of `/proc` returns: the VM's processes and their figures.
type Scan = (Vec<u32>, Vec<ProcessStats>, Option<u64>);

/// The process poller for one VM.
pub struct ProcessPoller {
    domain: String,
    uuid: String,
    proc_root: PathBuf,
    pids: Vec<u32>,
    timeout: std::time::Duration,
    /// The host's boot time, read once (`proc/stat` is long and never changes it).
    btime: Option<u64>,
    /// The scan runs on the blocking pool under the process source's own bound
    /// ([`SCANS_AT_ONCE`]): without one, every VM's scan of one poll round took a thread of its
    /// own (102 threads at 100 VMs, each with its own malloc arena and stack pages). Not the
    /// libvirt calls' bound: a libvirtd too slow to answer must not fail this source too.
    slot: BlockingSlot<Scan>,
}

/// `/proc` scans running at once across all VMs (a scan abandoned at its deadline gives its
/// place back). A scan reads a few small files: four keep up with hundreds of VMs.
pub const SCANS_AT_ONCE: usize = 4;

fn scan_limiter() -> Arc<Semaphore> {
    static LIMITER: std::sync::LazyLock<Arc<Semaphore>> =
        std::sync::LazyLock::new(|| Arc::new(Semaphore::new(SCANS_AT_ONCE)));
    LIMITER.clone()
}

impl std::fmt::Debug for ProcessPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPoller").field("domain", &self.domain).field("pids", &self.pids).finish_non_exhaustive()
    }
}

impl ProcessPoller {
    /// A poller for libvirt domain `domain`; one scan of `/proc` may take `timeout` (a `/proc`
    /// read can block, e.g. on a process in D state: the scan is then abandoned and counted
    /// stuck, and its place goes back to the other VMs' scans).
    pub fn new(domain: String, uuid: String, proc_root: PathBuf, timeout: std::time::Duration) -> Self {
        let slot = BlockingSlot::new(scan_limiter());
        ProcessPoller { domain, uuid, proc_root, pids: Vec::new(), timeout, btime: None, slot }
    }
}

impl Poller for ProcessPoller {
    fn kind(&self) -> SourceKind {
        SourceKind::Process
    }

    fn stuck_calls(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.slot.stuck_counter()
    }

    fn deadline(&self) -> std::time::Duration {
        // Waiting for a permit and the scan each get `timeout` (see `BlockingSlot::run`).
        self.timeout * 2
    }

    async fn poll(&mut self) -> Result<SourceSample, PollError> {
        let (domain, uuid, root, known, btime) = (
            self.domain.clone(),
            self.uuid.clone(),
            self.proc_root.clone(),
            std::mem::take(&mut self.pids),
            self.btime,
        );
        let work = move || {
            let (ticks, page) = (clock_ticks_per_second(), page_size());
            let mut pids = known;
            let alive = |p: &u32| root.join(p.to_string()).join("stat").exists();
            if pids.first().is_none_or(|q| !alive(q)) {
                pids = find(&root, &domain, &uuid);
            }
            let btime = btime.or_else(|| boot_time(&root));
            let stats: Vec<ProcessStats> =
                pids.iter().filter_map(|p| read_stats(&root, *p, ticks, page, btime)).collect();
            (pids, stats, btime)
        };
        let (pids, stats, btime) = match self.slot.run(self.timeout, work).await {
            Ok(scan) => scan,
            Err(SlotError::Timeout { running_for }) => {
                return Err(PollError::new(
                    ErrorKind::Timeout,
                    format!("process scan still running after {:.1}s", running_for.as_secs_f64()),
                ));
            }
            Err(SlotError::Saturated) => {
                return Err(PollError::new(ErrorKind::PoolSaturated, "no free /proc scan slot before the deadline"));
            }
            Err(SlotError::Panicked) => return Err(PollError::new(ErrorKind::Internal, "process scan panicked")),
        };
        self.pids = pids;
        self.btime = btime;
        if stats.is_empty() {
            return Err(PollError::new(ErrorKind::NoDomain, format!("no QEMU process found for {}", self.domain)));
        }
        Ok(SourceSample::Process(ProcessSample { processes: stats }))
    }
}

/// The process source.
#[derive(Debug)]
pub enum Process {}

/// The process source's settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessSettings {
    /// The proc filesystem to read; `None` when `process_metrics` is off.
    pub root: Option<PathBuf>,
}

type ProcField = fn(&ProcessStats) -> f64;

const FIELDS: [(&MetricDef, ProcField); 5] = [
    (&INFRA_CPU_USER, |p| p.cpu_user_seconds),
    (&INFRA_CPU_SYSTEM, |p| p.cpu_system_seconds),
    (&INFRA_MEM_RESIDENT, |p| p.resident_bytes as f64),
    (&INFRA_MEM_VIRTUAL, |p| p.virtual_bytes as f64),
    (&INFRA_MEM_SHARED, |p| p.shared_bytes as f64),
];

impl Source for Process {
    const KIND: SourceKind = SourceKind::Process;
    type Sample = ProcessSample;
    type Settings = ProcessSettings;
    type Poller = ProcessPoller;

    fn settings(all: &Sources) -> &ProcessSettings {
        &all.process
    }

    fn sample(sample: &SourceSample) -> Option<&ProcessSample> {
        match sample {
            SourceSample::Process(p) => Some(p),
            _ => None,
        }
    }

    /// A VM a libvirt daemon reported (its QEMU is found by domain name), when enabled.
    fn poller(vm: &VmStart<'_>, settings: &ProcessSettings) -> Option<ProcessPoller> {
        vm.endpoint?;
        Some(ProcessPoller::new(vm.domain.to_owned(), vm.uuid.to_owned(), settings.root.clone()?, vm.poll.timeout))
    }

    fn families() -> Vec<&'static MetricDef> {
        let mut out: Vec<&'static MetricDef> = FIELDS.iter().map(|(d, _)| *d).collect();
        out.push(&START_TIME);
        out
    }

    fn encode(enc: &mut crate::model::exposition::Out<'_>, vms: &[VmView<'_>]) -> std::fmt::Result {
        for (def, get) in FIELDS {
            let mut f = family(enc, def)?;
            for vm in vms {
                let mut seen = std::collections::BTreeSet::new();
                for p in vm.sample::<Process>().map(|p| p.processes.as_slice()).unwrap_or_default() {
                    // One series per process name (a second process of the same name is skipped).
                    if seen.insert(p.name.as_str()) {
                        f.vm_sample(vm, &[("process", &p.name)], Some(get(p)))?;
                    }
                }
            }
        }
        let mut f = family(enc, &START_TIME)?;
        for vm in vms {
            // The QEMU process is the first.
            let qemu = vm.sample::<Process>().and_then(|p| p.processes.first());
            f.vm_sample(vm, &[], qemu.and_then(|p| p.start_time_seconds))?;
        }
        Ok(())
    }
}

// Hypervisor group: infra processes (kube-metrics-collector's pod_infra group).
family!(
    INFRA_CPU_USER,
    "kubevirt_pod_infra_cpu_user",
    Counter,
    S,
    ["process"],
    Process,
    "/proc/<pid>/stat utime",
    Vm,
    "User CPU time of the VM's QEMU process and, in a virt-launcher, of the processes beside it."
);
family!(
    INFRA_CPU_SYSTEM,
    "kubevirt_pod_infra_cpu_system",
    Counter,
    S,
    ["process"],
    Process,
    "/proc/<pid>/stat stime",
    Vm,
    "System CPU time of the VM's QEMU process and launcher-side processes."
);
family!(
    INFRA_MEM_RESIDENT,
    "kubevirt_pod_infra_memory_resident",
    Gauge,
    B,
    ["process"],
    Process,
    "/proc/<pid>/statm resident",
    Vm,
    "Resident memory of the VM's QEMU process and launcher-side processes."
);
family!(
    INFRA_MEM_VIRTUAL,
    "kubevirt_pod_infra_memory_virtual",
    Gauge,
    B,
    ["process"],
    Process,
    "/proc/<pid>/statm size",
    Vm,
    "Virtual memory size of the VM's QEMU process and launcher-side processes."
);
family!(
    INFRA_MEM_SHARED,
    "kubevirt_pod_infra_memory_shared",
    Gauge,
    B,
    ["process"],
    Process,
    "/proc/<pid>/statm shared",
    Vm,
    "Shared (file-backed resident) memory of the VM's QEMU process and launcher-side processes."
);
family!(
    START_TIME,
    "kubevirt_vmi_start_time",
    Gauge,
    S,
    [],
    Process,
    "/proc/<pid>/stat starttime + /proc/stat btime",
    Vm,
    "Start time of the VM's QEMU process, seconds since the Unix epoch (uptime is time() minus this; a restart changes it)."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_vms_qemu_by_name_and_uuid() {
        let u = "1b2c3d4e-1111-2222-3333-444455556666";
        let c = format!("/usr/bin/qemu-system-x86_64\0-name\0guest=ns1_vm-a,debug-threads=on\0-S\0-uuid\0{u}\0");
        let c = c.as_bytes();
        assert!(is_vms_qemu(c, "ns1_vm-a", u));
        assert!(is_vms_qemu(c, "ns1_vm-a", &u.to_uppercase()), "UUIDs compare without case");
        assert!(!is_vms_qemu(c, "ns1_vm", u));
        // The right name but another VM's UUID (or none): not this VM's QEMU.
        assert!(!is_vms_qemu(c, "ns1_vm-a", "99999999-1111-2222-3333-444455556666"));
        assert!(!is_vms_qemu(b"qemu\0-name\0plain\0", "plain", u));
        assert!(is_vms_qemu(format!("qemu\0-name\0plain\0-uuid\0{u}\0").as_bytes(), "plain", u));
        assert!(!is_vms_qemu(b"qemu\0-name=x\0", "x", u));
    }

    #[test]
    fn reads_our_own_stats() {
        let me = std::process::id();
        let btime = boot_time(Path::new("/proc"));
        let s = read_stats(Path::new("/proc"), me, clock_ticks_per_second(), page_size(), btime).expect("own stats");
        assert_eq!(s.pid, me);
        assert!(s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes);
        // This test process started after boot and before now (within the clock tick).
        let now = crate::clock::now_unix();
        let started = s.start_time_seconds.expect("start time");
        assert!(started > btime.expect("btime") as f64 && started <= now + 0.02, "{started} vs now {now}");
    }

    /// A `/proc/<pid>` as recorded from real processes: a QEMU stopped by SIGSTOP (state T) and
    /// one blocked on storage (state D, with its wchan), each with a `comm` holding spaces and
    /// a ')' that a naive split would take for the end of the name.
    fn recorded(dir: &Path, pid: u32, state: char, wchan: &str) {
        let d = dir.join(pid.to_string());
        std::fs::create_dir_all(&d).expect("dir");
        let stat = format!(
            "{pid} (qemu (x) kvm) {state} 1 {pid} {pid} 0 -1 4194624 30217 0 2 0 1520 734 0 0 20 0 7 0 45501 \
             1466744832 12345 18446744073709551615 1 1 0 0 0 0 0 4096 25155 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
        );
        std::fs::write(d.join("stat"), stat).expect("stat");
        std::fs::write(d.join("statm"), "358092 12345 1800 1 0 40000 0\n").expect("statm");
        std::fs::write(d.join("wchan"), wchan).expect("wchan");
    }

    #[test]
    fn state_and_wchan_come_from_recorded_stat_and_wchan() {
        let dir = std::env::temp_dir().join(format!("vmbridge-proc-{}", std::process::id()));
        recorded(&dir, 4242, 'T', "do_signal_stop");
        recorded(&dir, 4343, 'D', "io_schedule");
        recorded(&dir, 4444, 'S', "do_sys_poll");
        let read = |pid| read_stats(&dir, pid, 100, 4096, Some(1_700_000_000)).expect("stats");
        let stopped = read(4242);
        assert_eq!(
            (stopped.name.as_str(), stopped.state.as_str(), stopped.wchan.as_deref()),
            ("qemu (x) kvm", "T", None)
        );
        assert_eq!((stopped.cpu_user_seconds, stopped.cpu_system_seconds), (15.2, 7.34));
        let blocked = read(4343);
        assert_eq!((blocked.state.as_str(), blocked.wchan.as_deref()), ("D", Some("io_schedule")));
        // A sleeping process's wait is no reason for anything: its wchan is not read.
        let sleeping = read(4444);
        assert_eq!((sleeping.state.as_str(), sleeping.wchan.as_deref()), ("S", None));
        // A wchan of "0" (not waiting) or hostile bytes never becomes a label as is.
        recorded(&dir, 4545, 'D', "0");
        assert_eq!(read(4545).wchan, None);
        recorded(&dir, 4646, 'D', "evil\n\u{7}name");
        assert_eq!(read(4646).wchan.as_deref(), Some("evil??name"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
