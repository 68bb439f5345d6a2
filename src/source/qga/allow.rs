//! The guest-agent allow-list, enforced by type: [`AgentRequest`] is the only way to build an
//! agent command's wire text, and it only accepts types implementing the sealed
//! [`ReadOnlyAgentCommand`], which this file implements for read-only `guest-*` queries and
//! nothing else (vmbridge is read-only). `virt`'s `qemu_agent_command` is banned by clippy outside the
//! transport module, so no other path can reach a guest.

use qapi::qga;
use serde::{Deserialize, Serialize};

mod sealed {
    pub trait Sealed {}
}

/// A guest-agent command vmbridge may send. Sealed: only this module can implement it.
pub trait ReadOnlyAgentCommand: qapi::Command + sealed::Sealed {}

/// `guest-get-load` (QEMU ≥ 10.0), which the `qapi-qga` 0.13 schema predates.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GuestGetLoad {}

/// Its reply.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
pub struct GuestLoadInfo {
    /// 1-minute load average.
    pub load1: f64,
    /// 5-minute load average.
    pub load5: f64,
    /// 15-minute load average.
    pub load15: f64,
}

impl qapi::Command for GuestGetLoad {
    type Ok = GuestLoadInfo;
    const NAME: &'static str = "guest-get-load";
    const ALLOW_OOB: bool = false;
}

macro_rules! allow {
    ($($t:ty),* $(,)?) => {
        $( impl sealed::Sealed for $t {} impl ReadOnlyAgentCommand for $t {} )*
        /// Every command name vmbridge can send to a guest agent.
        pub const ALLOWED: &[&str] = &[$(<$t as qapi::Command>::NAME),*];
    };
}

allow!(
    qga::guest_sync,
    qga::guest_ping,
    qga::guest_info,
    qga::guest_get_fsinfo,
    qga::guest_network_get_interfaces,
    qga::guest_get_vcpus,
    qga::guest_get_osinfo,
    qga::guest_get_users,
    qga::guest_get_timezone,
    qga::guest_get_host_name,
    qga::guest_get_diskstats,
    qga::guest_get_cpustats,
    qga::guest_get_memory_block_info,
    GuestGetLoad,
);

/// A serialised, allow-listed agent request.
///
/// Its fields are private: [`AgentRequest::new`] with a [`ReadOnlyAgentCommand`] is the only
/// way to make one. Neither a literal nor a mutating `qapi` command compiles:
///
/// ```compile_fail
/// use vmbridge::source::qga::allow::AgentRequest;
/// let _ = AgentRequest { name: "guest-exec", json: String::new() };
/// ```
///
/// ```compile_fail
/// use vmbridge::source::qga::allow::AgentRequest;
/// let _ = AgentRequest::new(qapi::qga::guest_exec {
///     path: "/bin/sh".into(),
///     arg: None,
///     env: None,
///     input_data: None,
///     capture_output: None,
/// });
/// ```
///
/// ```compile_fail
/// use vmbridge::source::qga::allow::AgentRequest;
/// let _ = AgentRequest::new(qapi::qga::guest_shutdown { mode: None });
/// ```
///
/// The allow-listed form does compile (so the failures above are about the allow-list):
///
/// ```
/// use vmbridge::source::qga::allow::AgentRequest;
/// assert_eq!(AgentRequest::new(qapi::qga::guest_ping {}).name(), "guest-ping");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRequest {
    name: &'static str,
    json: String,
}

impl AgentRequest {
    /// Builds the request for an allow-listed command.
    pub fn new<C: ReadOnlyAgentCommand>(cmd: C) -> AgentRequest {
        let json = serde_json::to_string(&qapi::Execute::<C, qapi::Never>::with_command(cmd))
            // Serialising these plain structs cannot fail; an empty object makes the agent
            // answer with an error, which is handled as one.
            .unwrap_or_else(|_| "{}".to_owned());
        AgentRequest { name: C::NAME, json }
    }

    /// The command name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The JSON line to send (no id: QGA does not echo ids reliably).
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The JSON line, by value.
    pub fn into_json(self) -> String {
        self.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_is_read_only_guest_queries() {
        assert_eq!(
            ALLOWED,
            &[
                "guest-sync",
                "guest-ping",
                "guest-info",
                "guest-get-fsinfo",
                "guest-network-get-interfaces",
                "guest-get-vcpus",
                "guest-get-osinfo",
                "guest-get-users",
                "guest-get-timezone",
                "guest-get-host-name",
                "guest-get-diskstats",
                "guest-get-cpustats",
                "guest-get-memory-block-info",
                "guest-get-load",
            ]
        );
        for name in ALLOWED {
            let read_only = *name == "guest-sync"
                || *name == "guest-ping"
                || *name == "guest-info"
                || *name == "guest-network-get-interfaces"
                || name.starts_with("guest-get-");
            assert!(read_only, "{name} is not a read-only query");
        }
    }

    #[test]
    fn requests_serialise_as_qga_expects() {
        assert_eq!(
            AgentRequest::new(qga::guest_get_osinfo {}).json(),
            r#"{"execute":"guest-get-osinfo","arguments":{}}"#
        );
        assert_eq!(
            AgentRequest::new(qga::guest_sync { id: 5 }).json(),
            r#"{"execute":"guest-sync","arguments":{"id":5}}"#
        );
        assert_eq!(AgentRequest::new(GuestGetLoad {}).name(), "guest-get-load");
    }
}
