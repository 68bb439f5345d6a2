//! The guest source (`qga`): what only the qemu-guest-agent knows — filesystems, IP addresses,
//! vCPUs online, OS, users, load, guest disk and CPU counters — behind its own breaker per VM,
//! since the agent is where guests hang (absent during boot, stalled when the guest is busy,
//! controlled by the tenant).
//!
//! - [`allow`]: the read-only allow-list, enforced by type.
//! - [`transport`]: through libvirt, or a direct socket over [`crate::source::wire`].
//! - [`guest`]: parsing replies into bounded, label-safe values.
//! - [`poller`]: capability discovery (`guest-info`) and per-command periods.

pub mod allow;
pub mod guest;
pub mod poller;
pub mod transport;

use std::collections::BTreeMap;

use serde::Serialize;

pub use guest::{Dropped, GuestData, GuestLimits};

/// What vmbridge knows about one agent command of one VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct CommandState {
    /// How often it is polled, in seconds.
    pub period_seconds: f64,
    /// Whether the agent reports it as supported and enabled (`None` until `guest-info` ran).
    pub supported: Option<bool>,
    /// When it last succeeded, seconds since the Unix epoch.
    pub last_ok_at: Option<f64>,
    /// The last raw reply, truncated for display.
    pub last_reply: Option<String>,
    /// Size of the last raw reply in bytes.
    pub last_reply_bytes: Option<usize>,
    /// The last error the agent returned for it.
    pub last_error: Option<String>,
    /// When it is next due, seconds since the Unix epoch.
    pub next_due_at: Option<f64>,
}

/// The guest source's sample: parsed data plus the per-command view for `/debug`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct QgaSample {
    /// `libvirt` or `socket`.
    pub transport: String,
    /// Commands the agent reports as enabled, among those vmbridge polls.
    pub supported_commands: Vec<String>,
    /// Per command.
    pub commands: BTreeMap<String, CommandState>,
    /// Parsed values.
    pub data: GuestData,
    /// Items left out by the per-VM caps since discovery, by kind.
    pub dropped: Dropped,
}
