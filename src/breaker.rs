//! The circuit breaker that stands between each (VM, source) and its poller.
//!
//! A small explicit state machine, free of I/O so paused-time tests can drive it:
//! - **Closed**: polls run; an error or timeout counts a failure. `threshold` consecutive
//!   failures, or one call stuck past the hard limit, open it.
//! - **Open**: no polls. After an exponential back-off with jitter (from `backon`) the next
//!   admission turns it half-open.
//! - **HalfOpen**: exactly one probe. Success closes it and resets the back-off; failure
//!   reopens it with the next, longer back-off.
//!
//! An *unavailable* answer (no guest agent: [`crate::model::ErrorKind::AgentUnavailable`])
//! is a failed poll, so the source shows down, but not a fault: it never counts toward the
//! threshold, and a probe that gets one closes the breaker, since the source answered at once
//! and definitely. A VM without an agent therefore never cycles half-open → open.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use serde::Serialize;
use tokio::time::Instant;

use crate::clock::unix_seconds;

/// The three breaker states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Polls run.
    Closed,
    /// Polls are suspended until the back-off elapses.
    Open,
    /// One probe is allowed.
    HalfOpen,
}

impl BreakerState {
    /// Every state, in the order `vmbridge_breaker_state` exports them.
    pub const ALL: [BreakerState; 3] = [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Why a breaker changed state; a bounded label value of `vmbridge_breaker_transitions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransitionReason {
    /// Closed → Open: the failure threshold was reached.
    ConsecutiveFailures,
    /// Closed → Open: one call outlived the hard timeout.
    HardTimeout,
    /// Open → HalfOpen: the back-off elapsed.
    BackoffElapsed,
    /// HalfOpen → Closed: the probe succeeded, or found the source unavailable (a definite
    /// answer, re-checked on the source's own period).
    ProbeSucceeded,
    /// HalfOpen → Open.
    ProbeFailed,
}

impl TransitionReason {
    /// Every reason, for exporting zero counters.
    pub const ALL: [TransitionReason; 5] = [
        TransitionReason::ConsecutiveFailures,
        TransitionReason::HardTimeout,
        TransitionReason::BackoffElapsed,
        TransitionReason::ProbeSucceeded,
        TransitionReason::ProbeFailed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionReason::ConsecutiveFailures => "consecutive_failures",
            TransitionReason::HardTimeout => "hard_timeout",
            TransitionReason::BackoffElapsed => "backoff_elapsed",
            TransitionReason::ProbeSucceeded => "probe_succeeded",
            TransitionReason::ProbeFailed => "probe_failed",
        }
    }
}

/// One recorded state change.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Transition {
    /// Wall-clock time of the change, seconds since the Unix epoch.
    pub at: f64,
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// Why.
    pub reason: TransitionReason,
}

/// Validated breaker settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker (≥ 1).
    pub failure_threshold: u32,
    /// First back-off after opening.
    pub backoff_min: Duration,
    /// Longest back-off, jitter included.
    pub backoff_max: Duration,
    /// How many transitions the history keeps.
    pub history: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 3,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            history: 16,
        }
    }
}

/// What the poller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: poll as usual.
    Poll,
    /// Half-open: this poll is the single probe.
    Probe,
    /// Open: do not poll before this instant.
    WaitUntil(Instant),
}

/// A serialisable view of a breaker, for snapshots and the debug endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct BreakerView {
    /// Current state.
    pub state: BreakerState,
    /// Consecutive failed polls (unavailable answers included, which do not count toward
    /// opening); 0 after a success.
    pub consecutive_failures: u32,
    /// When the state was entered, seconds since the Unix epoch.
    pub since: f64,
    /// While open: when the next probe is due, seconds since the Unix epoch.
    pub next_probe_at: Option<f64>,
    /// The most recent transitions, oldest first.
    pub history: Vec<Transition>,
    /// Transitions since start, by reason.
    pub transitions_total: BTreeMap<TransitionReason, u64>,
}

/// The breaker itself. One per (VM, source), owned by that pair's poll task.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerState,
    /// Consecutive failed polls of any kind (the view's `consecutive_failures`).
    failures: u32,
    /// Consecutive failures that count toward the threshold.
    strikes: u32,
    since: SystemTime,
    open_until: Option<Instant>,
    backoff: ExponentialBackoff,
    history: VecDeque<Transition>,
    transitions_total: BTreeMap<TransitionReason, u64>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        let backoff = Self::fresh_backoff(&cfg);
        Breaker {
            cfg,
            state: BreakerState::Closed,
            failures: 0,
            strikes: 0,
            since: SystemTime::now(),
            open_until: None,
            backoff,
            history: VecDeque::new(),
            transitions_total: BTreeMap::new(),
        }
    }

    fn fresh_backoff(cfg: &BreakerConfig) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(cfg.backoff_min)
            .with_max_delay(cfg.backoff_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Decides whether a poll may run at `now`; an elapsed back-off turns Open into HalfOpen.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed => Admission::Poll,
            BreakerState::HalfOpen => Admission::Probe,
            BreakerState::Open => match self.open_until {
                Some(until) if now < until => Admission::WaitUntil(until),
                _ => {
                    self.transition(BreakerState::HalfOpen, TransitionReason::BackoffElapsed);
                    Admission::Probe
                }
            },
        }
    }

    /// Records a successful poll. Returns the transition it caused, if any.
    pub fn on_success(&mut self) -> Option<Transition> {
        self.failures = 0;
        self.strikes = 0;
        self.close()
    }

    /// Records an unavailable answer: a failed poll that does not count toward opening; a
    /// probe that gets one closes the breaker. Returns the transition it caused, if any.
    pub fn on_unavailable(&mut self) -> Option<Transition> {
        self.failures = self.failures.saturating_add(1);
        self.strikes = 0;
        self.close()
    }

    fn close(&mut self) -> Option<Transition> {
        match self.state {
            BreakerState::Closed => None,
            BreakerState::HalfOpen | BreakerState::Open => {
                self.backoff = Self::fresh_backoff(&self.cfg);
                self.open_until = None;
                Some(self.transition(BreakerState::Closed, TransitionReason::ProbeSucceeded))
            }
        }
    }

    /// Records a failed poll; `hard` means a call outlived the hard timeout. Returns the
    /// transition it caused, if any.
    pub fn on_failure(&mut self, now: Instant, hard: bool) -> Option<Transition> {
        self.failures = self.failures.saturating_add(1);
        self.strikes = self.strikes.saturating_add(1);
        let reason = match self.state {
            BreakerState::Closed if hard => TransitionReason::HardTimeout,
            BreakerState::Closed if self.strikes >= self.cfg.failure_threshold => TransitionReason::ConsecutiveFailures,
            BreakerState::Closed | BreakerState::Open => return None,
            BreakerState::HalfOpen => TransitionReason::ProbeFailed,
        };
        // The iterator is built without a retry limit, so it never ends; the fallback is the
        // longest delay anyway. Jitter may overshoot the maximum, hence the clamp.
        let delay = self.backoff.next().unwrap_or(self.cfg.backoff_max).min(self.cfg.backoff_max);
        self.open_until = Some(now + delay);
        Some(self.transition(BreakerState::Open, reason))
    }

    fn transition(&mut self, to: BreakerState, reason: TransitionReason) -> Transition {
        let t = Transition { at: unix_seconds(SystemTime::now()), from: self.state, to, reason };
        self.state = to;
        self.since = SystemTime::now();
        if to == BreakerState::Closed {
            self.strikes = 0;
        }
        *self.transitions_total.entry(reason).or_default() += 1;
        if self.cfg.history > 0 {
            if self.history.len() == self.cfg.history {
                self.history.pop_front();
            }
            self.history.push_back(t.clone());
        }
        t
    }

    /// A serialisable view; `now` converts the next probe instant to wall-clock time.
    pub fn view(&self, now: Instant) -> BreakerView {
        let next_probe_at = self
            .open_until
            .filter(|_| self.state == BreakerState::Open)
            .map(|until| unix_seconds(SystemTime::now() + until.saturating_duration_since(now)));
        BreakerView {
            state: self.state,
            consecutive_failures: self.failures,
            since: unix_seconds(self.since),
            next_probe_at,
            history: self.history.iter().cloned().collect(),
            transitions_total: self.transitions_total.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            history: 4,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_recovers_through_one_probe() {
        let mut b = Breaker::new(cfg());
        let now = Instant::now();
        assert_eq!(b.admit(now), Admission::Poll);
        assert_eq!(b.on_failure(now, false), None);
        assert_eq!(b.on_failure(now, false), None);
        let t = b.on_failure(now, false).expect("third failure opens");
        assert_eq!(
            (t.from, t.to, t.reason),
            (BreakerState::Closed, BreakerState::Open, TransitionReason::ConsecutiveFailures)
        );
        let Admission::WaitUntil(until) = b.admit(now) else { panic!("open breaker must make the poller wait") };
        let wait = until - now;
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(2), "first back-off {wait:?}");
        tokio::time::advance(wait).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let t = b.on_success().expect("probe success closes");
        assert_eq!((t.to, t.reason), (BreakerState::Closed, TransitionReason::ProbeSucceeded));
        assert_eq!(b.admit(Instant::now()), Admission::Poll);
        let v = b.view(Instant::now());
        assert_eq!(v.transitions_total.values().sum::<u64>(), 3);
        assert_eq!(v.history.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_back_off_longer_but_never_past_the_maximum() {
        let mut b = Breaker::new(cfg());
        let now = Instant::now();
        b.on_failure(now, true).expect("hard timeout opens at once");
        assert_eq!(b.view(now).history[0].reason, TransitionReason::HardTimeout);
        let mut waits = Vec::new();
        for _ in 0..8 {
            let Admission::WaitUntil(until) = b.admit(Instant::now()) else { panic!("expected open") };
            let wait = until - Instant::now();
            waits.push(wait);
            tokio::time::advance(wait).await;
            assert_eq!(b.admit(Instant::now()), Admission::Probe);
            let t = b.on_failure(Instant::now(), false).expect("failed probe reopens");
            assert_eq!(t.reason, TransitionReason::ProbeFailed);
        }
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(8)), "{waits:?}");
        // Without jitter the 2nd delay is 2 s; with jitter it is in [2 s, 4 s): always > 1st minimum.
        assert!(waits[1] >= Duration::from_secs(2), "{waits:?}");
        assert!(waits[7] >= Duration::from_secs(8), "back-off reaches the maximum: {waits:?}");
        assert_eq!(b.view(Instant::now()).history.len(), 4, "history is bounded");
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_answers_never_open_it_and_close_a_probe() {
        let mut b = Breaker::new(cfg());
        let now = Instant::now();
        for _ in 0..20 {
            assert_eq!(b.on_unavailable(), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.view(now).consecutive_failures, 20, "still a failed poll: the source shows down");
        // Timeouts between unavailable answers start counting afresh.
        b.on_failure(now, false);
        b.on_failure(now, false);
        b.on_unavailable();
        b.on_failure(now, false);
        b.on_failure(now, false);
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(now, false).expect("three timeouts in a row open it");
        let Admission::WaitUntil(until) = b.admit(now) else { panic!("open") };
        tokio::time::advance(until - now).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        let t = b.on_unavailable().expect("a probe that finds no agent closes");
        assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Closed));
        assert!(b.view(Instant::now()).consecutive_failures > 0);
        assert_eq!(b.admit(Instant::now()), Admission::Poll);
        assert!(b.on_success().is_none());
        assert_eq!(b.view(Instant::now()).consecutive_failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_failure_count_while_closed() {
        let mut b = Breaker::new(cfg());
        let now = Instant::now();
        b.on_failure(now, false);
        b.on_failure(now, false);
        assert_eq!(b.on_success(), None);
        b.on_failure(now, false);
        b.on_failure(now, false);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
