//! What the event and migration families count, shared by the two sources that can tell it
//! (a direct QMP monitor, or libvirt's events and job stats): [`EventCounts`] and
//! [`Migration`]. Pure data and their parsers; no source is named here.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// Migration statistics (exported only while a job runs, unless `keep_ephemeral`), from
/// `query-migrate` or libvirt's job stats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Migration {
    /// Status (`active`, `completed`, `failed`, …).
    pub status: String,
    /// True while the migration runs.
    pub active: bool,
    /// Downtime, seconds (expected while active, actual once completed).
    pub downtime_seconds: Option<f64>,
    /// Time elapsed, seconds.
    pub elapsed_seconds: Option<f64>,
    /// Total bytes to transfer (memory and disks).
    pub data_total_bytes: Option<u64>,
    /// Bytes transferred.
    pub data_processed_bytes: Option<u64>,
    /// Bytes left.
    pub data_remaining_bytes: Option<u64>,
    /// Guest memory in bytes.
    pub memory_total_bytes: Option<u64>,
    /// Memory transferred, bytes.
    pub memory_processed_bytes: Option<u64>,
    /// Memory left, bytes.
    pub memory_remaining_bytes: Option<u64>,
    /// Memory transfer rate, bytes per second.
    pub memory_bps: Option<f64>,
    /// Pages that were all zero (constant), not sent in full.
    pub memory_constant_pages: Option<u64>,
    /// Compressed bytes sent.
    pub compression_bytes: Option<u64>,
    /// Pages dirtied per second.
    pub dirty_rate_pages_per_second: Option<u64>,
    /// The size of those pages, bytes.
    pub page_size_bytes: Option<u64>,
    /// Memory iterations (dirty-sync count).
    pub iteration: Option<u64>,
}

/// The largest migration speed believed, in bytes per second (1 Pbit/s; QEMU's own
/// bandwidth limit parameter stops far below it).
const MAX_BPS: f64 = 1e15 / 8.0;

impl Migration {
    /// From a `query-migrate` reply; `None` when no migration ever ran.
    pub fn from_query_migrate(v: &Value) -> Option<Migration> {
        let status = v.get("status")?.as_str()?.to_owned();
        if status == "none" {
            return None;
        }
        let ram = &v["ram"];
        let disk = &v["disk"];
        let u = |x: &Value, k: &str| x.get(k).and_then(Value::as_u64);
        let ms = |k: &str| v.get(k).and_then(Value::as_f64).map(|x| x / 1000.0);
        let sum = |k: &str| match (u(ram, k), u(disk, k)) {
            (None, None) => None,
            // Saturating: a monitor reporting u64::MAX must not wrap (or panic in debug builds).
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        };
        let active = !matches!(status.as_str(), "completed" | "failed" | "cancelled");
        Some(Migration {
            downtime_seconds: if active { ms("expected-downtime") } else { ms("downtime") },
            elapsed_seconds: ms("total-time"),
            data_total_bytes: sum("total"),
            data_processed_bytes: sum("transferred"),
            data_remaining_bytes: sum("remaining"),
            memory_total_bytes: u(ram, "total"),
            memory_processed_bytes: u(ram, "transferred"),
            memory_remaining_bytes: u(ram, "remaining"),
            // QEMU reports megabits per second.
            // A value no link reaches (or that overflows to infinity) is left out.
            memory_bps: ram
                .get("mbps")
                .and_then(Value::as_f64)
                .map(|m| m * 1e6 / 8.0)
                .filter(|b| b.is_finite() && *b >= 0.0 && *b <= MAX_BPS),
            memory_constant_pages: u(ram, "duplicate"),
            compression_bytes: v.get("compression").and_then(|c| u(c, "compressed-size")),
            dirty_rate_pages_per_second: u(ram, "dirty-pages-rate"),
            page_size_bytes: u(ram, "page-size"),
            iteration: u(ram, "dirty-sync-count"),
            status,
            active,
        })
    }
}

impl Migration {
    /// The dirty-page rate in bytes per second, when both figures are known.
    pub fn dirty_rate_bytes_per_second(&self) -> Option<f64> {
        Some(self.dirty_rate_pages_per_second? as f64 * self.page_size_bytes? as f64)
    }

    /// From `virDomainGetJobStats`: the job type and its typed parameters; `None` when no job
    /// ran (type NONE).
    pub fn from_libvirt_job(
        job_type: i32,
        params: &[(String, crate::source::libvirt::ffi::ParamValue)],
    ) -> Option<Migration> {
        let status = match job_type {
            1 | 2 => "active",
            3 => "completed",
            4 => "failed",
            5 => "cancelled",
            _ => return None,
        };
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let u = |k: &str| get(k).and_then(|v| v.as_u64());
        let ms = |k: &str| get(k).and_then(|v| v.as_f64()).map(|x| x / 1000.0);
        Some(Migration {
            status: status.to_owned(),
            active: status == "active",
            downtime_seconds: ms("downtime"),
            elapsed_seconds: ms("time_elapsed"),
            data_total_bytes: u("data_total"),
            data_processed_bytes: u("data_processed"),
            data_remaining_bytes: u("data_remaining"),
            memory_total_bytes: u("memory_total"),
            memory_processed_bytes: u("memory_processed"),
            memory_remaining_bytes: u("memory_remaining"),
            memory_bps: get("memory_bps").and_then(|v| v.as_f64()),
            memory_constant_pages: u("memory_constant"),
            compression_bytes: u("compression_bytes"),
            dirty_rate_pages_per_second: u("memory_dirty_rate"),
            page_size_bytes: u("memory_page_size"),
            iteration: u("memory_iteration"),
        })
    }
}

/// Event counts since vmbridge discovered the VM (they survive reconnects).
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct EventCounts {
    /// Guest panics (`GUEST_PANICKED`, libvirt's CRASHED/panicked).
    pub guest_panics: u64,
    /// The same by panic type (`hyper-v`, `s390`, `unknown`), then bugcheck code (`0x…` or
    /// `unknown`), as KubeVirt labels them; bounded.
    pub panics: BTreeMap<String, BTreeMap<String, u64>>,
    /// `RESET` the guest itself initiated (reboot, triple fault, firmware).
    pub reboots_guest: u64,
    /// `RESET` the host initiated (`virsh reset`, `system_reset`).
    pub reboots_host: u64,
    /// Resets reported by libvirt's REBOOT event, which does not say who initiated them.
    pub reboots_unknown: u64,
    /// Run-state changes by the state entered.
    pub state_changes: BTreeMap<String, u64>,
    /// `BLOCK_IO_ERROR` by drive, then operation.
    pub block_io_errors: BTreeMap<String, BTreeMap<String, u64>>,
    /// Guest-agent channel opened (`VSERPORT_CHANGE` on the agent's port).
    pub agent_connects: u64,
    /// Whether the agent's channel is open now, when known.
    pub agent_connected: Option<bool>,
    /// The run state the last counted change entered: a state is counted only when entered.
    #[serde(skip)]
    #[schemars(skip)]
    state: Option<&'static str>,
    /// When the last reset was seen (seconds; the event's own timestamp when it has one).
    #[serde(skip)]
    #[schemars(skip)]
    last_reset_at: Option<f64>,
}

/// A reset this soon after another is the same reboot: QEMU reports a `virsh reset` as a host
/// `RESET` and then the firmware's own guest `RESET` about 0.1 s later, and a guest reboot as
/// two guest `RESET`s; libvirt relays each as a `REBOOT`.
pub const RESET_FOLLOW_UP: f64 = 1.0;

/// A QMP event's `timestamp` (`{"seconds": …, "microseconds": …}`) in seconds.
fn event_time(ev: &Value) -> Option<f64> {
    let t = ev.get("timestamp")?;
    let s = t.get("seconds")?.as_f64()?;
    let us = t.get("microseconds").and_then(Value::as_f64).unwrap_or(0.0);
    Some(s + us / 1e6).filter(|t| t.is_finite())
}

/// Most distinct drives counted per VM; QEMU names drives, but keep the label set bounded.
const MAX_DRIVES: usize = 64;

/// Most distinct (panic type, bugcheck code) pairs counted per VM: the guest chooses the code.
const MAX_PANIC_KINDS: usize = 16;

/// KubeVirt's label values of a panic: the type (`unknown` when none is given) and the Hyper-V
/// bugcheck code (`arg1`) in hex (`unknown` when zero or absent).
pub fn panic_labels(info: Option<&Value>) -> (String, String) {
    let ty = info.and_then(|i| i.get("type")).and_then(Value::as_str).filter(|t| !t.is_empty());
    let code = info.and_then(|i| i.get("arg1")).and_then(Value::as_u64).filter(|c| *c != 0);
    (
        ty.map_or_else(|| "unknown".to_owned(), |t| crate::model::label(t, 32)),
        code.map_or_else(|| "unknown".to_owned(), |c| format!("{c:#x}")),
    )
}

impl EventCounts {
    /// Counts one panic of type `ty` with bugcheck code `code`.
    fn panic(&mut self, ty: String, code: String) {
        self.guest_panics += 1;
        let pairs: usize = self.panics.values().map(BTreeMap::len).sum();
        let known = self.panics.get(&ty).is_some_and(|c| c.contains_key(&code));
        let (ty, code) =
            if known || pairs < MAX_PANIC_KINDS { (ty, code) } else { ("unknown".into(), "unknown".into()) };
        *self.panics.entry(ty).or_default().entry(code).or_default() += 1;
    }

    /// Counts entering `to`, unless the VM is already in it.
    fn enter(&mut self, to: &'static str) {
        if self.state != Some(to) {
            self.state = Some(to);
            *self.state_changes.entry(to.to_owned()).or_default() += 1;
        }
    }

    /// Whether a reset at `at` starts a reboot (else it is the follow-up of the last one).
    /// `follow_up` says whether this kind of reset can be one.
    fn new_reboot(&mut self, at: f64, follow_up: bool) -> bool {
        let previous = self.last_reset_at.replace(at);
        let soon = previous.is_some_and(|p| (0.0..RESET_FOLLOW_UP).contains(&(at - p)));
        // A reset is not a state change: the VM stays running.
        !(follow_up && soon)
    }

    /// Counts one libvirt domain event (VMs without a direct QMP monitor), seen at `at`
    /// (Unix seconds).
    pub fn count_libvirt(&mut self, ev: &crate::source::libvirt::ffi::DomainEvent, at: f64) {
        use crate::source::libvirt::ffi::DomainEvent;
        match ev {
            DomainEvent::Lifecycle { event, detail } => {
                // virDomainEventType: 2 STARTED, 3 SUSPENDED, 4 RESUMED, 6 SHUTDOWN,
                // 7 PMSUSPENDED, 8 CRASHED (detail 0: panicked).
                let to = match event {
                    2 | 4 => Some("running"),
                    3 => Some("paused"),
                    6 => Some("shutdown"),
                    7 => Some("pmsuspended"),
                    8 => Some("crashed"),
                    _ => None,
                };
                if let Some(to) = to {
                    self.enter(to);
                }
                if *event == 8 && *detail == 0 {
                    // libvirt's event carries no panic information.
                    self.panic("unknown".into(), "unknown".into());
                }
            }
            // libvirt does not say who reset: any reset soon after another is its follow-up.
            DomainEvent::Reboot => {
                if self.new_reboot(at, true) {
                    self.reboots_unknown += 1;
                }
            }
            DomainEvent::IoError { device } => {
                // Devices libvirt did not define (e.g. added by <qemu:commandline>) have no alias.
                let drive = if device.is_empty() { "unknown".to_owned() } else { crate::model::label(device, 128) };
                if self.block_io_errors.len() < MAX_DRIVES || self.block_io_errors.contains_key(&drive) {
                    *self.block_io_errors.entry(drive).or_default().entry("unknown".to_owned()).or_default() += 1;
                }
            }
            DomainEvent::Agent { connected } => {
                if *connected {
                    self.agent_connects += 1;
                }
                self.agent_connected = Some(*connected);
            }
        }
    }

    /// Counts one QMP event. `agent_port` says whether a virtio-serial port id is the agent's.
    pub fn count(&mut self, ev: &Value, agent_port: impl Fn(&str) -> bool) {
        let name = ev.get("event").and_then(Value::as_str).unwrap_or_default();
        let data = &ev["data"];
        // `POWERDOWN` is only a power-button request (`virsh shutdown`): the guest may ignore
        // it and keep running, so it changes no state; `SHUTDOWN` is the guest going down.
        let to = match name {
            "STOP" => Some("paused"),
            "RESUME" | "WAKEUP" => Some("running"),
            "SUSPEND" | "SUSPEND_DISK" => Some("pmsuspended"),
            "SHUTDOWN" => Some("shutdown"),
            "GUEST_PANICKED" => Some("crashed"),
            _ => None,
        };
        if let Some(to) = to {
            self.enter(to);
        }
        match name {
            "GUEST_PANICKED" => {
                let (ty, code) = panic_labels(data.get("info"));
                self.panic(ty, code);
            }
            "RESET" => {
                let guest = data.get("guest").and_then(Value::as_bool) == Some(true);
                // QEMU's own timestamp, so a late read does not split or merge resets; a guest
                // reset soon after another reset is the firmware's (or guest's) follow-up, and a
                // host reset is always one of its own.
                let at = event_time(ev).unwrap_or_else(crate::clock::now_unix);
                if self.new_reboot(at, guest) {
                    if guest {
                        self.reboots_guest += 1;
                    } else {
                        self.reboots_host += 1;
                    }
                }
            }
            "BLOCK_IO_ERROR" => {
                let drive = data.get("device").and_then(Value::as_str).filter(|d| !d.is_empty());
                let drive = drive.or_else(|| data.get("node-name").and_then(Value::as_str)).unwrap_or("unknown");
                let drive = crate::model::label(drive, 128);
                let op = match data.get("operation").and_then(Value::as_str) {
                    Some("read") => "read",
                    Some("write") => "write",
                    _ => "other",
                };
                if self.block_io_errors.len() < MAX_DRIVES || self.block_io_errors.contains_key(&drive) {
                    *self.block_io_errors.entry(drive).or_default().entry(op.to_owned()).or_default() += 1;
                }
            }
            "VSERPORT_CHANGE" => {
                let id = data.get("id").and_then(Value::as_str).unwrap_or_default();
                if agent_port(id) {
                    let open = data.get("open").and_then(Value::as_bool).unwrap_or(false);
                    if open {
                        self.agent_connects += 1;
                    }
                    self.agent_connected = Some(open);
                }
            }
            _ => {}
        }
    }
}
