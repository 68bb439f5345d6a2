//! The QMP source's configuration: the `[qmp]` section as written, and validated.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::validate::Check;

/// `[qmp]`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QmpFileConfig {
    /// A second monitor socket per VM, with `{domain}`, `{namespace}` and `{name}` replaced,
    /// e.g. `/run/vms/{domain}.qmp`. Unset: no QMP source (libvirt supplies job stats).
    pub socket_pattern: Option<String>,
    /// Deadline per QMP command. Default `3s`.
    pub timeout: Option<String>,
    /// Largest QMP message accepted, in bytes. Default 1048576.
    pub max_message_bytes: Option<usize>,
    /// Most bytes one poll reads from a monitor, events and replies together, each counted
    /// as its bytes plus the size it takes once parsed; past it the
    /// connection is dropped and the poll fails (the breaker does the rest). Default 8388608.
    pub max_poll_bytes: Option<u64>,
}

/// Validated QMP settings.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpRuntime {
    /// Socket pattern; `None` disables the source for discovered VMs.
    pub socket_pattern: Option<String>,
    /// Deadline per command.
    pub timeout: Duration,
    /// Largest message.
    pub max_message_bytes: usize,
    /// Most bytes per poll.
    pub max_poll_bytes: u64,
}

impl QmpRuntime {
    /// The monitor socket of a VM, from the pattern.
    pub fn socket_for(&self, domain: &str, id: &crate::vm::VmId) -> Option<std::path::PathBuf> {
        self.socket_pattern.as_ref().map(|p| crate::config::validate::expand_socket_pattern(p, domain, id))
    }
}

/// Validates `[qmp]`.
pub fn validate(file: &QmpFileConfig, check: &mut Check) -> QmpRuntime {
    let timeout = check.duration("qmp.timeout", &file.timeout, Duration::from_secs(3));
    let max_message_bytes = file.max_message_bytes.unwrap_or(1 << 20);
    if !(4096..=64 << 20).contains(&max_message_bytes) {
        check.err("qmp.max_message_bytes", "must be between 4096 and 67108864");
    }
    let max_poll_bytes = file.max_poll_bytes.unwrap_or(8 << 20);
    if max_poll_bytes < max_message_bytes as u64 || max_poll_bytes > 1 << 30 {
        check.err("qmp.max_poll_bytes", "must be at least qmp.max_message_bytes and at most 1073741824");
    }
    check.socket_pattern("qmp.socket_pattern", &file.socket_pattern);
    QmpRuntime { socket_pattern: file.socket_pattern.clone(), timeout, max_message_bytes, max_poll_bytes }
}
