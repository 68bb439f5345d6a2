//! A direct QMP monitor connection over [`LineConn`]: greeting, `qmp_capabilities`, then one
//! command in flight with an id and a deadline. Events that arrive meanwhile — including ones
//! a newer QEMU invented — are kept for the poller, never fatal.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::allow::{QmpRequest, ReadOnlyQmpCommand};
use crate::source::wire::{LineConn, WireError, truncate};

/// Why a QMP command failed.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpError {
    /// The monitor is unreachable or misbehaved: the connection is dropped.
    Transport(WireError),
    /// QEMU answered with an error for this command.
    Command(String),
}

/// One monitor connection.
#[derive(Debug)]
pub struct QmpConn {
    line: LineConn,
    next_id: u64,
    /// The greeting's `QMP` object (version, capabilities).
    pub greeting: Value,
    events: Vec<Value>,
}

/// Keeps a QMP message that is an event; gives it back when it is not one.
fn keep_event(events: &mut Vec<Value>, v: Value) -> Option<Value> {
    if v.get("event").is_some() {
        // A flood cannot grow this without bound: the poller drains it every poll, and the
        // poll's read budget counts each event's parsed size.
        if events.len() < 10_000 {
            events.push(v);
        }
        None
    } else {
        Some(v)
    }
}

impl QmpConn {
    /// Connects, reads the greeting and negotiates capabilities within `deadline`, reading
    /// at most `budget` bytes (events included) meanwhile.
    pub async fn connect(path: &Path, deadline: Duration, max_line: usize, budget: u64) -> Result<QmpConn, WireError> {
        let started = Instant::now();
        let until = started + deadline;
        let mut line = LineConn::connect(path, deadline, max_line).await?;
        line.budget_reads(budget);
        let greeting = line.read_until(until, started, |v, _| v.get("QMP").cloned()).await?;
        let mut conn = QmpConn { line, next_id: 1, greeting, events: Vec::new() };
        match conn
            .execute(qapi::qmp::qmp_capabilities { enable: None }, until.saturating_duration_since(Instant::now()))
            .await
        {
            Ok(_) => Ok(conn),
            Err(QmpError::Transport(e)) => Err(e),
            Err(QmpError::Command(e)) => Err(WireError::Garbage(format!("qmp_capabilities refused: {e}"))),
        }
    }

    /// Runs one allow-listed command; returns its `return` value and the reply's size.
    pub async fn execute<C: ReadOnlyQmpCommand>(
        &mut self,
        cmd: C,
        deadline: Duration,
    ) -> Result<(Value, usize), QmpError> {
        let started = Instant::now();
        let until = started + deadline;
        let id = self.next_id;
        self.next_id += 1;
        let req = QmpRequest::new(cmd, id);
        self.line.send(req.into_json(), until).await.map_err(QmpError::Transport)?;
        let events = &mut self.events;
        let (reply, bytes) = self
            .line
            .read_until(until, started, |v, bytes| {
                let v = keep_event(events, v)?;
                // Replies to other ids (stale, from an earlier timed-out command) are skipped.
                (v.get("id").and_then(Value::as_u64) == Some(id)).then_some((v, bytes))
            })
            .await
            .map_err(QmpError::Transport)?;
        match reply {
            Value::Object(mut m) => {
                if let Some(r) = m.remove("return") {
                    Ok((r, bytes))
                } else {
                    let e = m.remove("error").unwrap_or(Value::Null);
                    let class = e.get("class").and_then(Value::as_str).unwrap_or("GenericError");
                    let desc = e.get("desc").and_then(Value::as_str).unwrap_or("unknown error");
                    Err(QmpError::Command(truncate(&format!("{class}: {desc}"), 300)))
                }
            }
            _ => Err(QmpError::Transport(WireError::Garbage("reply is not an object".into()))),
        }
    }

    /// Events received so far, oldest first. Events sent between polls wait in the socket
    /// and are read, in order, ahead of the next command's reply.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    /// From now on, at most `budget` bytes (events and replies) may be read, until the next
    /// call: past it the connection fails (and is dropped) with [`WireError::OverBudget`].
    pub fn budget_reads(&mut self, budget: u64) {
        self.line.budget_reads(budget);
    }

    /// True once the connection must be replaced.
    pub fn is_poisoned(&self) -> bool {
        self.line.is_poisoned()
    }
}
