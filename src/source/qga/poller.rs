//! Polls one VM's guest agent: a timed `guest-ping` at the start of every poll (the guest
//! heartbeat's round-trip time, [`crate::heartbeat`]), `guest-info` (and again periodically or after a
//! reconnect) to learn which commands exist and are enabled, then each supported command on
//! its own period. A transport failure (timeout, garbage, oversized reply) fails the poll and
//! feeds the breaker; no agent at all (`agent_unavailable`) fails the poll without feeding it,
//! and is re-checked on the capability period or when libvirt reports the agent connected. An
//! agent error for one command is recorded for that command only.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use qapi::qga;
use tokio::time::Instant;

use super::QgaSample;
use super::allow::AgentRequest;
use super::commands::{COMMANDS, by_key};
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
}

impl Default for QgaSettings {
    fn default() -> Self {
        QgaSettings {
            timeout: Duration::from_secs(5),
            max_reply_bytes: 1 << 20,
            periods: COMMANDS.iter().map(|c| (c.key.to_owned(), c.period)).collect(),
            limits: GuestLimits::default(),
            heartbeat: Bounds::default(),
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
    sample: QgaSample,
    /// Fired by libvirt's agent-connected event, when the VM came through libvirt.
    wake: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// The VM's opt-out (`qga.exclude`, domain metadata): asked before every poll.
    gate: super::optout::Gate,
}

impl QgaPoller {
    /// A poller over `transport`.
    pub fn new(transport: Transport, settings: QgaSettings) -> Self {
        let sample =
            QgaSample { transport: transport.name().to_owned(), heartbeat: settings.heartbeat, ..Default::default() };
        let gate = super::optout::Gate::open();
        QgaPoller { transport, settings, enabled: None, due: BTreeMap::new(), sample, wake: None, gate }
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

    /// Runs one command. `Ok(Some(reply))` when it succeeded, `Ok(None)` when the agent
    /// refused it; `Err` for a transport failure or an unusable reply (fails the poll).
    async fn run(&mut self, key: &'static str, req: AgentRequest) -> Result<Option<serde_json::Value>, PollError> {
        let period = self.period(key);
        let name = req.name();
        let result = self.transport.execute(&req, self.settings.timeout).await;
        // A command that got an answer (data or a refusal) is next due one period later; one
        // that failed in transport stays due, so the next poll retries it and the breaker
        // counts consecutive failures instead of seeing empty "successful" polls in between.
        if !matches!(result, Err(AgentError::Transport(_))) {
            self.due.insert(key, Instant::now() + period);
        }
        let state = self.sample.commands.entry(name.to_owned()).or_default();
        state.period_seconds = period.as_secs_f64();
        state.next_due_at = Some(unix_seconds(SystemTime::now() + period));
        match result {
            Ok(reply) => {
                // Personal data (user names) never reaches `/debug`; the reply is copied only
                // to redact it, and only ever shown in part.
                let redacted =
                    by_key(key).filter(|c| !c.private.is_empty()).map(|c| super::commands::shown(c, &reply.value));
                state.last_reply = Some(preview(redacted.as_ref().unwrap_or(&reply.value), 2048));
                state.last_reply_bytes = Some(reply.bytes);
                let applied = self.sample.data.apply(
                    name,
                    &reply.value,
                    &self.settings.limits,
                    &mut self.sample.dropped,
                    &mut self.sample.rejected,
                );
                let state = self.sample.commands.entry(name.to_owned()).or_default();
                match applied {
                    Ok(()) => {
                        state.last_ok_at = Some(now_unix());
                        state.last_error = None;
                        Ok(Some(reply.value))
                    }
                    Err(e) => {
                        let msg = truncate(&format!("{name}: unusable reply: {e}"), 300);
                        state.last_error = Some(msg.clone());
                        Err(PollError::new(ErrorKind::Protocol, msg))
                    }
                }
            }
            Err(AgentError::Command(msg)) => {
                state.last_error = Some(msg);
                Ok(None)
            }
            Err(AgentError::Transport(e)) => {
                state.last_error = Some(e.message.clone());
                Err(PollError { message: format!("{name}: {}", e.message), ..e })
            }
        }
    }

    /// Re-reads `guest-info`: the agent version and which commands are enabled.
    async fn discover(&mut self) -> Result<(), PollError> {
        let Some(reply) = self.run("info", AgentRequest::new(qga::guest_info {})).await? else {
            return Err(PollError::new(ErrorKind::Remote, "the agent refused guest-info"));
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
        // Every command once, `guest-info` up to twice, a ping up to twice, and the
        // transport's sync.
        let calls = u32::try_from(COMMANDS.len()).unwrap_or(u32::MAX).saturating_add(5);
        self.settings.timeout.saturating_mul(calls)
    }

    async fn poll(&mut self) -> Result<SourceSample, PollError> {
        self.gate.admit(self.settings.timeout).await?;
        // The heartbeat: a ping first, every poll, timed. It also notices a hung agent within
        // one poll interval rather than one command period. A ping that had to (re)connect
        // first is sent again, so the time is the agent's, not the connection's.
        self.sample.rtt_seconds = None;
        let mut reconnected = false;
        for _ in 0..2 {
            let ping = AgentRequest::new(qga::guest_ping {});
            let started = Instant::now();
            match self.transport.execute(&ping, self.settings.timeout).await {
                Ok(_) | Err(AgentError::Command(_)) => {
                    self.sample.rtt_seconds = Some(started.elapsed().as_secs_f64());
                }
                Err(AgentError::Transport(e)) => {
                    return Err(PollError { message: format!("guest-ping: {}", e.message), ..e });
                }
            }
            if !self.transport.take_reconnected() {
                break;
            }
            reconnected = true;
        }
        let info_due = self.due.get("info").is_none_or(|d| Instant::now() >= *d);
        if self.enabled.is_none() || info_due || reconnected {
            self.enabled = None;
            self.discover().await?;
        }
        for c in COMMANDS {
            let key = c.key;
            if key == "info" {
                continue;
            }
            let req = (c.request)();
            let enabled = self.enabled.as_ref().is_some_and(|e| e.iter().any(|n| n == req.name()));
            let due = self.due.get(key).is_none_or(|d| Instant::now() >= *d);
            if enabled && due {
                self.run(key, req).await?;
            }
            // A reconnect in the middle (socket transport) means capabilities may have changed.
            if self.transport.take_reconnected() {
                self.enabled = None;
                self.discover().await?;
            }
        }
        Ok(SourceSample::Qga(self.sample.clone()))
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
