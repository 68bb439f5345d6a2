//! The QMP allow-list, enforced by type: only `query-*`, `qom-get` and `qmp_capabilities`
//! can be turned into a [`QmpRequest`]. Raw monitor passthrough through libvirt is banned by
//! clippy (`Domain::qemu_monitor_command`), so this is the only way to talk to a monitor.

use qapi::qmp;
use serde::Serialize;

mod sealed {
    pub trait Sealed {}
}

/// A QMP command vmbridge may send. Sealed: only this module can implement it.
pub trait ReadOnlyQmpCommand: qapi::Command + sealed::Sealed {}

/// `query-stats` for target `vm` (and `vcpu`): `qapi_qmp`'s own type cannot serialise the
/// `vm` target (its `StatsFilter` has no variant for it), so the request is built here.
#[derive(Debug, Clone, Serialize)]
pub struct QueryStats {
    /// `vm` or `vcpu`.
    pub target: &'static str,
}

impl qapi::Command for QueryStats {
    type Ok = serde_json::Value;
    const NAME: &'static str = "query-stats";
    const ALLOW_OOB: bool = false;
}

macro_rules! allow {
    ($($t:ty),* $(,)?) => {
        $( impl sealed::Sealed for $t {} impl ReadOnlyQmpCommand for $t {} )*
        /// Every command name vmbridge can send to a QEMU monitor.
        pub const ALLOWED: &[&str] = &[$(<$t as qapi::Command>::NAME),*];
    };
}

allow!(
    qmp::qmp_capabilities,
    qmp::query_version,
    qmp::query_status,
    qmp::query_blockstats,
    qmp::query_balloon,
    qmp::query_migrate,
    qmp::qom_get,
    QueryStats,
);

/// A serialised, allow-listed QMP request.
///
/// Its fields are private: [`QmpRequest::new`] with a [`ReadOnlyQmpCommand`] is the only way
/// to make one. Neither a literal nor a mutating `qapi` command compiles:
///
/// ```compile_fail
/// use vmbridge::source::qmp::allow::QmpRequest;
/// let _ = QmpRequest { name: "human-monitor-command", json: String::new() };
/// ```
///
/// ```compile_fail
/// use vmbridge::source::qmp::allow::QmpRequest;
/// let _ = QmpRequest::new(
///     qapi::qmp::human_monitor_command { command_line: "quit".into(), cpu_index: None },
///     1,
/// );
/// ```
///
/// ```compile_fail
/// use vmbridge::source::qmp::allow::QmpRequest;
/// let _ = QmpRequest::new(qapi::qmp::quit {}, 1);
/// ```
///
/// The allow-listed form does compile (so the failures above are about the allow-list):
///
/// ```
/// use vmbridge::source::qmp::allow::QmpRequest;
/// assert_eq!(QmpRequest::new(qapi::qmp::query_status {}, 1).name(), "query-status");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpRequest {
    name: &'static str,
    json: String,
}

impl QmpRequest {
    /// Builds the request for an allow-listed command with the given id.
    pub fn new<C: ReadOnlyQmpCommand>(cmd: C, id: u64) -> QmpRequest {
        let json =
            serde_json::to_string(&qapi::Execute::<C, u64>::with_id(cmd, id)).unwrap_or_else(|_| "{}".to_owned());
        QmpRequest { name: C::NAME, json }
    }

    /// The command name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The JSON line, with `id`.
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
    fn the_allow_list_is_queries_only() {
        assert_eq!(
            ALLOWED,
            &[
                "qmp_capabilities",
                "query-version",
                "query-status",
                "query-blockstats",
                "query-balloon",
                "query-migrate",
                "qom-get",
                "query-stats"
            ]
        );
        for n in ALLOWED {
            assert!(n.starts_with("query-") || *n == "qom-get" || *n == "qmp_capabilities", "{n}");
        }
    }

    #[test]
    fn requests_carry_their_id() {
        let r = QmpRequest::new(QueryStats { target: "vm" }, 7);
        assert_eq!(r.json(), r#"{"execute":"query-stats","arguments":{"target":"vm"},"id":7}"#);
        let r = QmpRequest::new(qmp::query_status {}, 8);
        assert_eq!(r.json(), r#"{"execute":"query-status","arguments":{},"id":8}"#);
    }
}
