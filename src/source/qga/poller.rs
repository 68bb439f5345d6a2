//! Polls one VM's guest agent: a timed `guest-ping` at the start of every poll (the guest
//! heartbeat's round-trip time, [`crate::heartbeat`]), `guest-info` (and again periodically or after a
//! reconnect) to learn which commands exist and are enabled, then each supported command the
//! metrics selection needs ([`super::cost::in_use`]) on its own period, each call timed.
//!
//! What fails the poll (and feeds the breaker): the ping, `guest-info`, or a command failing in
//! transport when a ping right after it fails too (a dead agent). No agent at all
//! (`agent_unavailable`) fails the poll without feeding the breaker, and is re-checked on the
//! capability period or when libvirt reports the agent connected. A command that fails alone
//! (timeout, garbage, an error reply, an unusable reply) is backed off by itself
//! ([`super::cost::Backoff`]) while the others keep their periods. Every call takes one from
//! the VM's calls-per-minute budget ([`super::cost::Budget`]); a due command that finds it
//! spent waits for a later poll, whose ping goes first.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use qapi::qga;
use tokio::time::Instant;

use super::QgaSample;
use super::allow::AgentRequest;
use super::commands::{COMMANDS, Command, by_key};
use super::cost::{Backoff, Budget, BudgetSettings, Caller, in_use};
use super::guest::GuestLimits;
use super::transport::{AgentError, Transport};
use crate::clock::{now_unix, unix_seconds};
use crate::model::{ErrorKind, PollError};
use crate::source::SourceKind;
use crate::source::wire::{preview, truncate};
use crate::source::{Poller, SourceSample};

/// Default period of the command with config key `key`.
pub fn default_period(key: &str) -> Duration {
    by_key(key).map_or(Duration::from_secs(30), |c| c.period)
}

/// How the guest source polls.
#[derive(Debug, Clone, PartialEq)]
pub struct QgaSettings {
    /// Deadline per agent command.
    pub timeout: Duration,
    /// Largest reply accepted, in bytes.
    pub max_reply_bytes: usize,
    /// Period per config key of [`COMMANDS`].
    pub periods: BTreeMap<String, Duration>,
    /// Per-VM caps.
    pub limits: GuestLimits,
    /// The guest heartbeat's bounds.
    pub heartbeat: Bounds,
    /// The calls-per-minute budget per VM.
    pub budget: BudgetSettings,
    /// The families exported: a command feeding none of them is not sent.
    pub selection: crate::model::metric::Selection,
}

impl Default for QgaSettings {
    fn default() -> Self {
        QgaSettings {
            timeout: Duration::from_secs(5),
            max_reply_bytes: 1 << 20,
            periods: COMMANDS.iter().map(|c| (c.key.to_owned(), c.period)).collect(),
            limits: GuestLimits::default(),
            heartbeat: Bounds::default(),
            budget: BudgetSettings::default(),
            selection: crate::model::metric::Selection::default(),
        }
    }
}

/// The guest-agent poller for one VM.
#[derive(Debug)]
pub struct QgaPoller {
    transport: Transport,
    settings: QgaSettings,
    /// Enabled commands per `guest-info`; `None` until it answered.
    enabled: Option<Vec<String>>,
    due: BTreeMap<&'static str, Instant>,
    /// Commands failing now, by config key.
    backoff: BTreeMap<&'static str, Backoff>,
    budget: Budget,
    sample: QgaSample,
    /// Fired by libvirt's agent-connected event, when the VM came through libvirt.
    wake: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// The VM's opt-out (`qga.exclude`, domain metadata): asked before every poll.
    gate: super::optout::Gate,
}

impl QgaPoller {
    /// A poller over `transport`.
    pub fn new(transport: Transport, settings: QgaSettings) -> Self {
        let mut sample =
            QgaSample { transport: transport.name().to_owned(), heartbeat: settings.heartbeat, ..Default::default() };
        sample.budget.max_calls_per_minute = settings.budget.max_calls_per_minute;
        sample.budget.ping_reserve = settings.budget.ping_reserve;
        for c in COMMANDS.iter().filter(|c| !in_use(c, &settings.selection)) {
            sample.commands.entry(c.name().to_owned()).or_default().deselected = true;
        }
        let gate = super::optout::Gate::open();
        let budget = Budget::new(settings.budget);
        QgaPoller {
            transport,
            settings,
            enabled: None,
            due: BTreeMap::new(),
            backoff: BTreeMap::new(),
            budget,
            sample,
            wake: None,
            gate,
        }
    }

    /// Asks `gate` before every poll: a VM that opted out gets no agent call at all.
    pub fn with_gate(mut self, gate: super::optout::Gate) -> Self {
        self.gate = gate;
        self
    }

    /// Also re-checks an absent agent as soon as `wake` fires.
    pub fn with_wake(mut self, wake: std::sync::Arc<tokio::sync::Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    fn period(&self, key: &str) -> Duration {
        self.settings.periods.get(key).copied().unwrap_or_else(|| default_period(key))
    }

    /// Runs one command (its budget already taken) in the poll that began at `poll_start`,
    /// timed, and schedules it: one period on after a success, backed off after a failure.
    async fn run(&mut self, key: &'static str, req: AgentRequest, poll_start: Instant) -> Outcome {
        let period = self.period(key);
        let name = req.name();
        let started = Instant::now();
        let result = self.transport.execute(&req, self.settings.timeout).await;
        let took = started.elapsed();
        let outcome = match result {
            Ok(reply) => {
                // Personal data (user names) never reaches `/debug`; the reply is copied only
                // to redact it, and only ever shown in part.
                let redacted =
                    by_key(key).filter(|c| !c.private.is_empty()).map(|c| super::commands::shown(c, &reply.value));
                let state = self.sample.commands.entry(name.to_owned()).or_default();
                state.last_reply = Some(preview(redacted.as_ref().unwrap_or(&reply.value), 2048));
                state.last_reply_bytes = Some(reply.bytes);
                match self.sample.data.apply(name, &reply.value, &self.settings.limits, &mut self.sample.dropped, &mut self.sample.rejected) {
                    Ok(()) => Outcome::Ok(reply.value),
                    Err(e) => {
                        Outcome::Failed(ErrorKind::Protocol, truncate(&format!("{name}: unusable reply: {e}"), 300))
                    }
                }
            }
            Err(AgentError::Command(msg)) => Outcome::Failed(ErrorKind::Remote, msg),
            Err(AgentError::Transport(e)) => {
                Outcome::Transport(PollError { message: format!("{name}: {}", e.message), ..e })
            }
        };
        // A success is next due one period after this poll began (so a period equal to the
        // poll interval is kept); a failure of this command alone backs it off, exponentially.
        let wait = match &outcome {
            Outcome::Ok(_) => {
                self.backoff.remove(key);
                period
            }
            _ => self.backoff.entry(key).or_insert_with(|| Backoff::new(period)).fail(),
        };
        self.due.insert(key, poll_start + wait);
        let state = self.sample.commands.entry(name.to_owned()).or_default();
        state.period_seconds = period.as_secs_f64();
        state.duration_seconds = Some(took.as_secs_f64());
        state.next_due_at = Some(unix_seconds(SystemTime::now() + wait.saturating_sub(poll_start.elapsed())));
        match &outcome {
            Outcome::Ok(_) => {
                state.last_ok_at = Some(now_unix());
                state.last_error = None;
                state.consecutive_failures = 0;
                state.backoff_seconds = None;
            }
            Outcome::Failed(_, msg) | Outcome::Transport(PollError { message: msg, .. }) => {
                state.last_error = Some(msg.clone());
                state.failures_total += 1;
                state.consecutive_failures = self.backoff.get(key).map_or(1, |b| b.failures);
                state.backoff_seconds = Some(wait.as_secs_f64());
            }
        }
        outcome
    }

    /// Re-reads `guest-info`: the agent version and which commands are enabled.
    /// Fails the poll when it fails: without it, no other command is sent.
    async fn discover(&mut self, poll_start: Instant) -> Result<(), PollError> {
        let reply = match self.run("info", AgentRequest::new(qga::guest_info {}), poll_start).await {
            Outcome::Ok(reply) => reply,
            // Asked again on the next poll, not after a back-off: nothing runs without it.
            Outcome::Failed(kind, msg) => {
                self.due.remove("info");
                return Err(PollError::new(kind, format!("guest-info failed: {msg}")));
            }
            Outcome::Transport(e) => {
                self.due.remove("info");
                return Err(e);
            }
        };
        let info: qga::GuestAgentInfo = serde_json::from_value(reply)
            .map_err(|e| PollError::new(ErrorKind::Protocol, format!("guest-info: {e}")))?;
        let enabled: Vec<String> = info.supported_commands.into_iter().filter(|c| c.enabled).map(|c| c.name).collect();
        let polled: Vec<String> =
            COMMANDS.iter().map(|c| c.name().to_owned()).filter(|n| enabled.contains(n)).collect();
        for c in COMMANDS {
            let name = c.name();
            self.sample.commands.entry(name.to_owned()).or_default().supported = Some(polled.iter().any(|p| p == name));
        }
        self.sample.supported_commands = polled.clone();
        self.enabled = Some(polled);
        Ok(())
    }
}

impl Poller for QgaPoller {
    fn kind(&self) -> SourceKind {
        SourceKind::Qga
    }

    fn stuck_calls(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.transport.stuck_calls()
    }

    /// An absent agent is looked for again on the capability period (`qga.periods.info`).
    fn recheck_period(&self) -> Option<Duration> {
        Some(self.period("info"))
    }

    fn wake(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        self.wake.clone()
    }

    fn deadline(&self) -> std::time::Duration {
        // Every command once, `guest-info` up to twice, a ping up to twice (after waiting up to
        // one timeout for the budget), the transport's sync, and per command failing in
        // transport a ping to check the agent, its reconnection and `guest-info` again.
        let calls = u32::try_from(COMMANDS.len()).unwrap_or(u32::MAX).saturating_add(6 + 3 * MAX_TRANSPORT_FAILURES);
        self.settings.timeout.saturating_mul(calls)
    }

    async fn poll(&mut self) -> Result<SourceSample, PollError> {
        self.gate.admit(self.settings.timeout).await?;
        let poll_start = Instant::now();
        self.sample.budget.waiting.clear();
        // The heartbeat: a ping first, every poll, timed. It also notices a hung agent within
        // one poll interval rather than one command period. A ping that had to (re)connect
        // first is sent again, so the time is the agent's, not the connection's.
        self.sample.rtt_seconds = None;
        let mut reconnected = false;
        for _ in 0..2 {
            self.ping(None).await?;
            if !self.transport.take_reconnected() {
                break;
            }
            reconnected = true;
        }
        let info_due = self.due.get("info").is_none_or(|d| Instant::now() >= *d);
        if self.enabled.is_none() || info_due || reconnected {
            if !self.budget.try_take(Instant::now(), Caller::Command) {
                // Without capabilities nothing else is sent; with them, the old ones serve.
                self.wait_noted("guest-info");
                if self.enabled.is_none() {
                    return Ok(self.finish());
                }
            } else {
                self.enabled = None;
                self.discover(poll_start).await?;
            }
        }
        let mut transport_failures = 0;
        for c in COMMANDS.iter().filter(|c| c.key != "info") {
            if !self.wanted(c) {
                continue;
            }
            if !self.budget.try_take(Instant::now(), Caller::Command) {
                // Stays due: sent first in a later poll with room.
                self.wait_noted(c.name());
                continue;
            }
            if let Outcome::Transport(e) = self.run(c.key, (c.request)(), poll_start).await {
                // The agent gone, or vmbridge's own slots busy: not this command's doing.
                if e.kind == ErrorKind::AgentUnavailable || e.kind.deferred() {
                    return Err(e);
                }
                // Only this command, or the agent? A ping tells; a dead agent fails the poll
                // as before. (Through libvirt, a call still running in the blocking slot is
                // waited for by the ping, so nothing is sent beside it.) Past a few such
                // failures in one poll, the rest wait for the next.
                transport_failures += 1;
                if !self.ping(Some(e)).await? || transport_failures >= MAX_TRANSPORT_FAILURES {
                    break;
                }
            }
            // A reconnect in the middle (socket transport) means capabilities may have changed.
            if self.transport.take_reconnected() {
                if self.budget.try_take(Instant::now(), Caller::Command) {
                    self.enabled = None;
                    self.discover(poll_start).await?;
                } else {
                    self.wait_noted("guest-info");
                    self.due.remove("info");
                }
            }
        }
        Ok(self.finish())
    }
}

/// Commands failing in transport (the agent answering a ping after each) after which a poll
/// stops sending; the rest wait for the next poll.
const MAX_TRANSPORT_FAILURES: u32 = 2;

/// How one command went.
enum Outcome {
    /// Its reply, applied.
    Ok(serde_json::Value),
    /// The agent refused it ([`ErrorKind::Remote`]) or its reply was unusable
    /// ([`ErrorKind::Protocol`]).
    Failed(ErrorKind, String),
    /// It failed in transport (timeout, garbage, connection).
    Transport(PollError),
}

impl QgaPoller {
    /// Whether `c` is to be sent now: the selection needs it, the agent has it, it is due.
    fn wanted(&self, c: &Command) -> bool {
        let name = c.name();
        let enabled = self.enabled.as_ref().is_some_and(|e| e.iter().any(|n| n == name));
        let due = self.due.get(c.key).is_none_or(|d| Instant::now() >= *d);
        enabled && due && in_use(c, &self.settings.selection)
    }

    /// Sends a `guest-ping`, once the budget allows one (waiting up to a command timeout).
    /// The heartbeat's (`after` = `None`) is timed and fails the poll when the agent does not
    /// answer. One checking the agent after a command's transport failure `after` returns
    /// that failure when the agent does not answer either, and `Ok(false)` when the budget has
    /// no ping left (the poll ends there).
    async fn ping(&mut self, after: Option<PollError>) -> Result<bool, PollError> {
        if !self.budget.wait_for_ping(self.settings.timeout).await {
            self.wait_noted("guest-ping");
            return match after {
                Some(_) => Ok(false),
                None => Err(PollError::new(
                    ErrorKind::PoolSaturated,
                    format!(
                        "qga.max_calls_per_minute ({}) spent: no room for guest-ping",
                        self.settings.budget.max_calls_per_minute
                    ),
                )),
            };
        }
        let started = Instant::now();
        match (self.transport.execute(&AgentRequest::new(qga::guest_ping {}), self.settings.timeout).await, after) {
            (Ok(_) | Err(AgentError::Command(_)), None) => {
                self.sample.rtt_seconds = Some(started.elapsed().as_secs_f64());
                Ok(true)
            }
            (Ok(_) | Err(AgentError::Command(_)), Some(_)) => Ok(true),
            (Err(AgentError::Transport(e)), None) => {
                Err(PollError { message: format!("guest-ping: {}", e.message), ..e })
            }
            (Err(AgentError::Transport(_)), Some(first)) => Err(first),
        }
    }

    /// Notes that `command` was due but waited for the budget.
    fn wait_noted(&mut self, command: &str) {
        let b = &mut self.sample.budget;
        b.waiting.push(command.to_owned());
        b.waits_total += 1;
        b.last_wait_at = Some(now_unix());
    }

    /// The sample at the end of a poll.
    fn finish(&mut self) -> SourceSample {
        self.sample.budget.calls_last_minute = self.budget.used(Instant::now());
        SourceSample::Qga(self.sample.clone())
    }
}

/// The bounds the state is judged with (`[qga]` `heartbeat_slow`, `heartbeat_stalled_polls`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Bounds {
    /// A ping slower than this, in seconds, is `agent_slow`.
    pub slow_seconds: f64,
    /// This many libvirt polls in a row without vCPU time is `guest_stalled`.
    pub stalled_polls: u32,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds { slow_seconds: 1.0, stalled_polls: 3 }
    }
}
