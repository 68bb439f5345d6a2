//! The guest-agent allow-list, enforced by type: [`AgentRequest`] is the only way to build an
//! agent command's wire text, and it only accepts types implementing the sealed
//! [`ReadOnlyAgentCommand`], which only `allow_list!` implements (beside each command in
//! `commands`), for read-only `guest-*` queries and nothing else (vmbridge is read-only). `virt`'s `qemu_agent_command` is banned by clippy outside the
//! transport module, so no other path can reach a guest.

pub(super) mod sealed {
    pub trait Sealed {}
}

/// A guest-agent command vmbridge may send. Sealed: only the guest source can implement it,
/// through `allow_list!`, which also checks at compile time that the command is a
/// read-only query ([`read_only`]).
pub trait ReadOnlyAgentCommand: qapi::Command + sealed::Sealed {}

/// Whether `name` is a read-only guest-agent query: the protocol's `guest-sync`,
/// `guest-ping` and `guest-info`, `guest-network-get-interfaces`, and `guest-get-*`.
pub const fn read_only(name: &str) -> bool {
    const fn eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    const fn starts_with(a: &[u8], p: &[u8]) -> bool {
        if a.len() < p.len() {
            return false;
        }
        let mut i = 0;
        while i < p.len() {
            if a[i] != p[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    let b = name.as_bytes();
    starts_with(b, b"guest-get-")
        || eq(b, b"guest-sync")
        || eq(b, b"guest-ping")
        || eq(b, b"guest-info")
        || eq(b, b"guest-network-get-interfaces")
}

/// Puts `qapi` command types on the allow-list; refuses to compile for one that is not a
/// read-only query.
macro_rules! allow_list {
    ($($t:ty),* $(,)?) => {
        $(
            impl $crate::source::qga::allow::sealed::Sealed for $t {}
            impl $crate::source::qga::allow::ReadOnlyAgentCommand for $t {}
            const _: () = assert!(
                $crate::source::qga::allow::read_only(<$t as qapi::Command>::NAME),
                "only read-only guest queries can be allow-listed"
            );
        )*
    };
}
pub(super) use allow_list;

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
    use crate::source::qga::commands::allowed;
    use qapi::qga;

    #[test]
    fn the_allow_list_is_read_only_guest_queries() {
        let mut names = allowed();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "guest-get-cpustats",
                "guest-get-diskstats",
                "guest-get-fsinfo",
                "guest-get-host-name",
                "guest-get-load",
                "guest-get-memory-block-info",
                "guest-get-osinfo",
                "guest-get-timezone",
                "guest-get-users",
                "guest-get-vcpus",
                "guest-info",
                "guest-network-get-interfaces",
                "guest-ping",
                "guest-sync",
            ]
        );
        for name in allowed() {
            assert!(read_only(name), "{name} is not a read-only query");
        }
    }

    #[test]
    fn the_compile_time_check_refuses_mutating_commands() {
        for name in [
            "guest-exec",
            "guest-exec-status",
            "guest-shutdown",
            "guest-file-open",
            "guest-file-write",
            "guest-set-vcpus",
            "guest-set-user-password",
            "guest-fsfreeze-freeze",
            "guest-fstrim",
            "guest-get",
            "guest-sync-delimited-x",
            "",
        ] {
            assert!(!read_only(name), "{name} passed the read-only check");
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
        assert_eq!(AgentRequest::new(super::super::commands::GuestGetLoad {}).name(), "guest-get-load");
    }
}
