//! libvirt's errors in vmbridge's words: the bounded error kinds, whether the connection is
//! unusable, and whether a domain simply has no guest agent.

use crate::model::ErrorKind;

/// Maps a libvirt error to the bounded error kinds; `true` when the connection is unusable.
pub fn classify(err: &virt::error::Error) -> (ErrorKind, bool) {
    use virt::enumutil::Enum;
    use virt::error::ErrorNumber as N;
    match err.code() {
        _ if agent_absent(err) => (ErrorKind::AgentUnavailable, false),
        Enum::Known(N::NoDomain) => (ErrorKind::NoDomain, false),
        Enum::Known(N::OperationTimeout | N::AgentUnresponsive) => (ErrorKind::Timeout, false),
        Enum::Known(N::SystemError | N::Rpc | N::NoConnect | N::InvalidConn | N::AuthFailed) => {
            (ErrorKind::Connection, true)
        }
        _ => (ErrorKind::Remote, false),
    }
}

/// Whether libvirt says the domain has no agent to talk to: "QEMU guest agent is not
/// connected" (`VIR_ERR_AGENT_UNRESPONSIVE`, libvirt 9.0's code when the guest never opened
/// the channel or closed it; the same code with another text means a hung agent) or "QEMU
/// guest agent is not configured" (`VIR_ERR_ARGUMENT_UNSUPPORTED`: no channel at all).
pub fn agent_absent(e: &virt::error::Error) -> bool {
    use virt::enumutil::Enum;
    use virt::error::ErrorNumber as N;
    let msg = e.message();
    match e.code() {
        Enum::Known(N::AgentUnresponsive) => msg.contains("agent is not connected"),
        Enum::Known(N::ArgumentUnsupported) => msg.contains("agent is not configured"),
        _ => false,
    }
}
