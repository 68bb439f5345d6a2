//! The two ways to reach a guest agent:
//! - **through libvirt** (`virDomainQemuAgentCommand`, with an explicit timeout, on the
//!   endpoint's read-write agent connection): the default for libvirt-managed VMs, KubeVirt
//!   included, since libvirt owns the agent channel there;
//! - **a direct Unix socket** (plain QEMU, or a channel vmbridge owns): our own timeout-safe
//!   line connection, `guest-sync` with a random id on connect, one command in flight, a
//!   deadline per command, reconnect after any failure, replies capped in size.
//!
//! Both take only [`AgentRequest`]s, which only allow-listed commands can produce.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use virt::domain::Domain;

use super::allow::AgentRequest;
use crate::model::{ErrorKind, PollError};
use crate::source::libvirt::blocking::{BlockingSlot, SlotError};
use crate::source::libvirt::endpoint::{self, Conn, Endpoint};
use crate::source::wire::{LineConn, PARSED_PER_LINE_BYTE, ParseError, WireError, parse_bounded, truncate};

/// How an agent command failed.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentError {
    /// The agent could not be reached or misbehaved: a poll failure for the breaker.
    Transport(PollError),
    /// The agent answered with an error for this command (unsupported, disabled, failed).
    Command(String),
}

/// A successful reply: its `return` value and the reply's size.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The `return` member.
    pub value: Value,
    /// Size of the raw reply in bytes.
    pub bytes: usize,
}

/// Splits a QAPI reply into its `return` value or its error text.
fn unwrap_reply(v: Value, bytes: usize) -> Result<Reply, AgentError> {
    match v {
        Value::Object(mut m) => {
            if let Some(ret) = m.remove("return") {
                Ok(Reply { value: ret, bytes })
            } else if let Some(err) = m.remove("error") {
                let desc = err.get("desc").and_then(Value::as_str).unwrap_or("unknown error");
                let class = err.get("class").and_then(Value::as_str).unwrap_or("GenericError");
                Err(AgentError::Command(truncate(&format!("{class}: {desc}"), 300)))
            } else {
                Err(AgentError::Transport(PollError::new(ErrorKind::Protocol, "reply has neither return nor error")))
            }
        }
        _ => Err(AgentError::Transport(PollError::new(ErrorKind::Protocol, "reply is not a JSON object"))),
    }
}

fn wire_error(e: WireError) -> AgentError {
    use std::io::ErrorKind as Io;
    let kind = match e {
        // No socket, or nothing listening on it: no agent (a state, not a fault).
        WireError::Connect { io: Io::NotFound | Io::ConnectionRefused, .. } => ErrorKind::AgentUnavailable,
        WireError::Timeout(_) => ErrorKind::Timeout,
        WireError::TooLong(_) | WireError::TooBig(_) | WireError::Garbage(_) | WireError::OverBudget(_) => {
            ErrorKind::Protocol
        }
        WireError::Connect { .. } | WireError::Closed | WireError::Io(_) | WireError::Poisoned => ErrorKind::Connection,
    };
    AgentError::Transport(PollError::new(kind, e.to_string()))
}

/// The direct-socket transport.
#[derive(Debug)]
pub struct SocketAgent {
    path: PathBuf,
    conn: Option<LineConn>,
    max_reply: usize,
    reconnected: bool,
}

impl SocketAgent {
    /// An agent at `path`; replies longer than `max_reply` bytes fail.
    pub fn new(path: PathBuf, max_reply: usize) -> Self {
        SocketAgent { path, conn: None, max_reply, reconnected: false }
    }

    async fn connect(&mut self, until: Instant) -> Result<(), AgentError> {
        let started = Instant::now();
        let mut conn = LineConn::connect(&self.path, until.saturating_duration_since(started), self.max_reply)
            .await
            .map_err(wire_error)?;
        // A fresh random id per connection: replies to an earlier client's commands still
        // queued in the channel are skipped until the agent echoes it.
        let id = fastrand::i64(1..i64::from(i32::MAX));
        conn.send(AgentRequest::new(qapi::qga::guest_sync { id }).into_json(), until).await.map_err(wire_error)?;
        conn.read_until(until, started, |v, _| (v.get("return").and_then(Value::as_i64) == Some(id)).then_some(()))
            .await
            .map_err(wire_error)?;
        self.conn = Some(conn);
        self.reconnected = true;
        Ok(())
    }

    async fn execute(&mut self, req: &AgentRequest, deadline: Duration) -> Result<Reply, AgentError> {
        let started = Instant::now();
        let until = started + deadline;
        if self.conn.as_ref().is_none_or(LineConn::is_poisoned) {
            self.conn = None;
            self.connect(until).await?;
        }
        let Some(conn) = self.conn.as_mut() else { return Err(wire_error(WireError::Poisoned)) };
        let result = async {
            conn.send(req.json().to_owned(), until).await?;
            // QGA answers in order and carries no event stream: the next object is the reply.
            conn.read_until(until, started, |v, bytes| Some((v, bytes))).await
        }
        .await;
        match result {
            Ok((v, bytes)) => unwrap_reply(v, bytes),
            Err(e) => {
                self.conn = None;
                Err(wire_error(e))
            }
        }
    }
}

type AgentCall = (Result<String, virt::error::Error>, u64, Option<(u64, Domain)>);

/// The through-libvirt transport.
pub struct LibvirtAgent {
    endpoint: Arc<Endpoint>,
    uuid: String,
    domain: Option<(u64, Domain)>,
    slot: BlockingSlot<AgentCall>,
    open_slot: BlockingSlot<Result<virt::connect::Connect, virt::error::Error>>,
    max_reply: usize,
}

impl std::fmt::Debug for LibvirtAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtAgent")
            .field("endpoint", &self.endpoint.uri)
            .field("uuid", &self.uuid)
            .finish_non_exhaustive()
    }
}

impl LibvirtAgent {
    /// The agent of domain `uuid` on `endpoint`.
    pub fn new(endpoint: Arc<Endpoint>, uuid: String, limiter: Arc<Semaphore>, max_reply: usize) -> Self {
        LibvirtAgent {
            endpoint,
            uuid,
            domain: None,
            slot: BlockingSlot::new(limiter.clone()),
            open_slot: BlockingSlot::new(limiter),
            max_reply,
        }
    }

    async fn connection(&mut self, deadline: Duration) -> Result<Conn, AgentError> {
        if let Some(c) = self.endpoint.agent_connection() {
            return Ok(c);
        }
        let uri = self.endpoint.agent_uri.clone();
        match self.open_slot.run(deadline, move || endpoint::open_for_agent(&uri)).await {
            Ok(Ok(c)) => Ok(self.endpoint.install_agent(c)),
            Ok(Err(e)) => Err(AgentError::Transport(PollError::new(
                ErrorKind::Connection,
                format!("open agent connection: {}", e.message()),
            ))),
            Err(e) => {
                Err(AgentError::Transport(PollError::new(ErrorKind::Connection, format!("open agent connection: {e}"))))
            }
        }
    }

    async fn execute(&mut self, req: &AgentRequest, deadline: Duration) -> Result<Reply, AgentError> {
        let started = Instant::now();
        let conn = self.connection(deadline).await?;
        let remaining = deadline.saturating_sub(started.elapsed());
        // libvirt's own agent timeout, in whole seconds (at least 1), a little inside ours.
        let libvirt_timeout = i32::try_from(remaining.as_secs().max(1)).unwrap_or(i32::MAX);
        let (json, uuid, cached) = (req.json().to_owned(), self.uuid.clone(), self.domain.take());
        let call = move || -> AgentCall {
            let generation = conn.generation;
            let dom = match cached {
                Some((g, d)) if g == generation => d,
                _ => match conn.connect.lookup_domain_by_uuid_string(&uuid) {
                    Ok(d) => d,
                    Err(e) => return (Err(e), generation, None),
                },
            };
            #[allow(clippy::disallowed_methods)] // the one call path to the agent; `json` is an AgentRequest
            let r = dom.qemu_agent_command(&json, libvirt_timeout, 0);
            (r, generation, Some((generation, dom)))
        };
        let (result, generation, domain) = match self.slot.run(remaining, call).await {
            Ok(out) => out,
            Err(SlotError::Timeout { running_for }) => {
                return Err(AgentError::Transport(PollError {
                    kind: ErrorKind::Timeout,
                    message: format!("agent call still running after {:.1}s", running_for.as_secs_f64()),
                    hard: false,
                    monitor: None,
                }));
            }
            Err(e) => return Err(AgentError::Transport(PollError::new(ErrorKind::PoolSaturated, e.to_string()))),
        };
        self.domain = domain;
        match result {
            Ok(text) if text.len() > self.max_reply => Err(AgentError::Transport(PollError::new(
                ErrorKind::Protocol,
                format!("reply of {} bytes exceeds the {} byte cap", text.len(), self.max_reply),
            ))),
            Ok(text) => {
                let cap = self.max_reply.saturating_mul(PARSED_PER_LINE_BYTE);
                let v = match parse_bounded(&text, cap) {
                    Ok((v, _)) => v,
                    Err(ParseError::TooBig) => return Err(wire_error(WireError::TooBig(cap))),
                    Err(ParseError::Syntax) => return Err(wire_error(WireError::Garbage(truncate(&text, 120)))),
                };
                let bytes = text.len();
                drop(text);
                unwrap_reply(v, bytes)
            }
            Err(e) => {
                use virt::enumutil::Enum;
                use virt::error::ErrorNumber as N;
                let msg = e.message().to_owned();
                match e.code() {
                    _ if crate::source::libvirt::errors::agent_absent(&e) => {
                        Err(AgentError::Transport(PollError::new(ErrorKind::AgentUnavailable, msg)))
                    }
                    // The agent itself said no to this command: not a transport failure.
                    Enum::Known(N::AgentCommandFailed) => Err(AgentError::Command(truncate(&msg, 300))),
                    Enum::Known(N::InternalError) if msg.contains("unable to execute QEMU agent command") => {
                        Err(AgentError::Command(truncate(&msg, 300)))
                    }
                    Enum::Known(
                        N::AgentUnresponsive | N::AgentUnsynced | N::AgentCommandTimeout | N::OperationTimeout,
                    ) => Err(AgentError::Transport(PollError::new(ErrorKind::Timeout, msg))),
                    _ => {
                        let (kind, broken) = crate::source::libvirt::errors::classify(&e);
                        if broken {
                            self.endpoint.report_agent_broken(generation);
                        }
                        Err(AgentError::Transport(PollError::new(kind, msg)))
                    }
                }
            }
        }
    }
}

/// A VM's agent transport.
#[derive(Debug)]
pub enum Transport {
    /// Through libvirt.
    Libvirt(LibvirtAgent),
    /// A direct socket.
    Socket(SocketAgent),
}

impl Transport {
    /// `libvirt` or `socket`, for the debug view.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Libvirt(_) => "libvirt",
            Transport::Socket(_) => "socket",
        }
    }

    /// Sends one allow-listed request and waits at most `deadline` for its reply.
    pub async fn execute(&mut self, req: &AgentRequest, deadline: Duration) -> Result<Reply, AgentError> {
        match self {
            Transport::Libvirt(a) => a.execute(req, deadline).await,
            Transport::Socket(a) => a.execute(req, deadline).await,
        }
    }

    /// True once after each (re)connection, so capabilities are re-read.
    pub fn take_reconnected(&mut self) -> bool {
        match self {
            Transport::Libvirt(_) => false,
            Transport::Socket(a) => std::mem::take(&mut a.reconnected),
        }
    }

    /// Stuck-call counter of the blocking slot (libvirt transport only).
    pub fn stuck_calls(&self) -> Arc<std::sync::atomic::AtomicU64> {
        match self {
            Transport::Libvirt(a) => a.slot.stuck_counter(),
            Transport::Socket(_) => Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }
}
