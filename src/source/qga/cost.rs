//! What agent commands cost, and how vmbridge keeps it to what it needs: the per-command
//! back-off ([`Backoff`]), the per-VM calls-per-minute budget ([`Budget`]), and which commands
//! the metrics selection needs at all ([`in_use`]).

use std::collections::VecDeque;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use serde::Serialize;
use tokio::time::Instant;

use super::commands::Command;
use crate::model::metric::Selection;

/// The longest a failing command is backed off (or its period, when that is longer).
pub const BACKOFF_CAP: Duration = Duration::from_secs(600);

/// The budget's window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Whether `command` is sent under `selection`: when at least one family it feeds is
/// exported. `guest-info` (the capability probe) and commands without families always are.
pub fn in_use(command: &Command, selection: &Selection) -> bool {
    command.key == "info" || command.families.is_empty() || command.families.iter().any(|f| selection.includes(f))
}

/// The back-off of one failing command: exponential from twice its period, doubling, capped
/// at [`BACKOFF_CAP`] (or the period when that is longer), without jitter. Reset by a success.
#[derive(Debug)]
pub struct Backoff {
    delays: ExponentialBackoff,
    /// Failures in a row.
    pub failures: u32,
}

impl Backoff {
    /// A fresh back-off for a command polled every `period`.
    pub fn new(period: Duration) -> Self {
        let cap = BACKOFF_CAP.max(period);
        let delays = ExponentialBuilder::default()
            .with_min_delay(period.saturating_mul(2).min(cap))
            .with_max_delay(cap)
            .with_factor(2.0)
            .without_max_times()
            .build();
        Backoff { delays, failures: 0 }
    }

    /// One more failure: how long until the command is tried again.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delays.next().unwrap_or(BACKOFF_CAP)
    }
}

/// `[qga] max_calls_per_minute`, and how many of them the heartbeat's pings need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct BudgetSettings {
    /// Agent calls per VM per minute, every kind counted (`guest-sync` on a reconnect aside).
    pub max_calls_per_minute: u32,
    /// Of those, kept for the `guest-ping` of each poll (one per `poll.interval` a minute):
    /// other commands may not use them.
    pub ping_reserve: u32,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        // The defaults of `poll.interval` (5 s) and of the command periods.
        BudgetSettings { max_calls_per_minute: 120, ping_reserve: 12 }
    }
}

impl BudgetSettings {
    /// The pings a minute a poll every `interval` sends.
    pub fn pings_per_minute(interval: Duration) -> u32 {
        let per = WINDOW.as_secs_f64() / interval.as_secs_f64().max(0.001);
        per.ceil().min(f64::from(u32::MAX)) as u32
    }

    /// What polling every command on its period and pinging every `interval` takes a minute.
    pub fn needed(interval: Duration, periods: impl IntoIterator<Item = Duration>) -> u32 {
        periods
            .into_iter()
            .map(|p| Self::pings_per_minute(p.max(Duration::from_millis(1))))
            .fold(Self::pings_per_minute(interval), u32::saturating_add)
    }
}

/// Who asks the budget for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A `guest-ping` (the heartbeat, or checking the agent after a command failed): may use
    /// the whole budget.
    Ping,
    /// Any other command: leaves the pings' reserve alone.
    Command,
}

/// A per-VM calls-per-minute budget over a sliding window of [`WINDOW`].
#[derive(Debug)]
pub struct Budget {
    settings: BudgetSettings,
    /// When each call in the window was made, and whether it was a ping.
    calls: VecDeque<(Instant, bool)>,
}

impl Budget {
    /// An unspent budget.
    pub fn new(settings: BudgetSettings) -> Self {
        Budget { settings, calls: VecDeque::new() }
    }

    fn expire(&mut self, now: Instant) {
        while self.calls.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) >= WINDOW) {
            self.calls.pop_front();
        }
    }

    fn room(&self, caller: Caller) -> bool {
        let used = u32::try_from(self.calls.len()).unwrap_or(u32::MAX);
        let max = self.settings.max_calls_per_minute;
        match caller {
            Caller::Ping => used < max,
            Caller::Command => {
                let pings = u32::try_from(self.calls.iter().filter(|(_, p)| *p).count()).unwrap_or(u32::MAX);
                let kept = self.settings.ping_reserve.saturating_sub(pings);
                used.saturating_add(kept) < max
            }
        }
    }

    /// Takes one call for `caller` at `now`, when the budget has room for it.
    pub fn try_take(&mut self, now: Instant, caller: Caller) -> bool {
        self.expire(now);
        let room = self.room(caller);
        if room {
            self.calls.push_back((now, caller == Caller::Ping));
        }
        room
    }

    /// How long from `now` until the oldest call leaves the window (zero when none is in it).
    pub fn next_free(&self, now: Instant) -> Duration {
        self.calls.front().map_or(Duration::ZERO, |(t, _)| (*t + WINDOW).saturating_duration_since(now))
    }

    /// Calls in the window ending `now`.
    pub fn used(&mut self, now: Instant) -> u32 {
        self.expire(now);
        u32::try_from(self.calls.len()).unwrap_or(u32::MAX)
    }

    /// Waits (at most `limit`) until a ping may be sent; false when it still may not.
    pub async fn wait_for_ping(&mut self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            let now = Instant::now();
            if self.try_take(now, Caller::Ping) {
                return true;
            }
            let free = now + self.next_free(now).max(Duration::from_millis(1));
            if free > until {
                return false;
            }
            tokio::time::sleep_until(free).await;
        }
    }
}

/// The budget as `/debug` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct BudgetView {
    /// `[qga] max_calls_per_minute`.
    pub max_calls_per_minute: u32,
    /// Of those, kept for the pings.
    pub ping_reserve: u32,
    /// Calls in the last minute, at the end of the last poll.
    pub calls_last_minute: u32,
    /// Commands that were due in the last poll but waited for the budget (sent in a later
    /// poll, `guest-ping` first).
    pub waiting: Vec<String>,
    /// Times a due command waited for the budget, since discovery.
    pub waits_total: u64,
    /// When a command last waited, seconds since the Unix epoch.
    pub last_wait_at: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::metric::Group;
    use crate::source::qga::commands::{COMMANDS, by_key};

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_back_off_doubles_from_twice_the_period_up_to_its_cap_and_starts_over_after_a_success() {
        let mut b = Backoff::new(secs(30));
        let got: Vec<u64> = (0..7).map(|_| b.fail().as_secs()).collect();
        assert_eq!(got, [60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(b.failures, 7);
        // A success makes a fresh one (the poller drops the old): it starts at 2 periods again.
        assert_eq!(Backoff::new(secs(30)).fail(), secs(60));
        // A period longer than the cap: the cap is the period.
        let mut slow = Backoff::new(secs(900));
        assert_eq!((slow.fail(), slow.fail()), (secs(900), secs(900)));
        // Sub-second periods back off in sub-second steps.
        let mut fast = Backoff::new(Duration::from_millis(500));
        assert_eq!((fast.fail(), fast.fail(), fast.fail()), (secs(1), secs(2), secs(4)));
    }

    #[test]
    fn commands_whose_families_are_all_deselected_are_not_in_use() {
        let all = Selection::default();
        assert!(COMMANDS.iter().all(|c| in_use(c, &all)));
        let no_guest = Selection { groups: vec![Group::Core, Group::Hypervisor, Group::Bridge], ..all.clone() };
        let used: Vec<&str> = COMMANDS.iter().filter(|c| in_use(c, &no_guest)).map(|c| c.key).collect();
        // The capability probe only: every other command feeds guest families alone.
        assert_eq!(used, ["info"]);
        // The complement profile drops virt-handler's copies: its load families (so no
        // guest-get-load), while guest-get-fsinfo still feeds vmbridge's own
        // vmbridge_guest_filesystem_drive_info.
        let complement = Selection { profile: crate::model::metric::Profile::KubevirtComplement, ..all };
        assert!(!in_use(by_key("load").expect("load"), &complement));
        assert!(in_use(by_key("fsinfo").expect("fsinfo"), &complement));
        assert!(in_use(by_key("diskstats").expect("diskstats"), &complement));
    }

    #[test]
    fn the_default_budget_leaves_room_for_the_default_periods_twice_over() {
        let needed = BudgetSettings::needed(secs(5), COMMANDS.iter().map(|c| c.period));
        let d = BudgetSettings::default();
        assert!(needed * 2 <= d.max_calls_per_minute, "{needed} a minute needed");
        assert_eq!(d.ping_reserve, BudgetSettings::pings_per_minute(secs(5)));
        assert_eq!(BudgetSettings::pings_per_minute(Duration::from_millis(700)), 86);
    }

    /// Ten calls a minute, four kept for pings: six commands go, the seventh waits while the
    /// pings still go; a minute after the first call, commands go again.
    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_makes_commands_wait_and_pings_go_first() {
        let mut b = Budget::new(BudgetSettings { max_calls_per_minute: 10, ping_reserve: 4 });
        let t0 = Instant::now();
        for i in 0..6 {
            assert!(b.try_take(t0 + secs(i), Caller::Command), "command {i}");
        }
        assert!(!b.try_take(t0 + secs(6), Caller::Command), "the reserve is the pings'");
        for i in 0..4 {
            assert!(b.try_take(t0 + secs(7 + i), Caller::Ping), "ping {i}");
        }
        assert!(!b.try_take(t0 + secs(11), Caller::Ping), "spent");
        assert_eq!(b.used(t0 + secs(11)), 10);
        assert_eq!(b.next_free(t0 + secs(11)), secs(49));
        // The first call leaves the window at t0 + 60 s: one call may go, a ping first.
        assert!(!b.try_take(t0 + secs(59), Caller::Command));
        tokio::time::advance(secs(30)).await;
        // A ping waits for its token (paused time: the wait is instant, the clock moves).
        let before = Instant::now();
        assert!(b.wait_for_ping(secs(40)).await);
        assert_eq!(Instant::now() - before, secs(30), "until the first call left the window");
        // Not within a limit shorter than the wait.
        assert!(!b.wait_for_ping(Duration::from_millis(500)).await);
        // Two seconds on, the calls of t0 and t0 + 1 s have left the window; the pings in it
        // (five) cover the reserve, so a command may use the free room.
        tokio::time::advance(secs(2)).await;
        let now = Instant::now();
        assert_eq!(now - t0, secs(62));
        assert_eq!(b.used(now), 8);
        assert!(b.try_take(now, Caller::Command) && b.try_take(now, Caller::Command));
        assert!(!b.try_take(now, Caller::Command), "spent again");
    }

    #[test]
    fn the_budget_a_configuration_needs_counts_every_period_and_the_pings() {
        // One ping and one command every second: 120 a minute.
        assert_eq!(BudgetSettings::needed(secs(1), [secs(1)]), 120);
        assert_eq!(BudgetSettings::needed(secs(5), [secs(300), secs(30)]), 12 + 1 + 2);
    }

    #[test]
    fn max_calls_per_minute_defaults_to_twice_the_need_and_a_set_value_must_leave_room_for_pings() {
        use crate::config::{ConfigError, FileConfig};
        let budget =
            |toml: &str| FileConfig::parse(toml).expect("parses").validate("n").map(|s| s.sources.qga.poll.budget);
        // Defaults: 5 s polls, default periods.
        assert_eq!(budget("").expect("valid"), BudgetSettings::default());
        // Everything every second: 60 pings and 12 × 60 commands, twice over.
        let mut every_second = "[poll]\ninterval = \"1s\"\n[qga.periods]\n".to_owned();
        for c in COMMANDS {
            every_second.push_str(&format!("{} = \"1s\"\n", c.key));
        }
        assert_eq!(
            budget(&every_second).expect("valid"),
            BudgetSettings { max_calls_per_minute: 1560, ping_reserve: 60 }
        );
        assert_eq!(budget("[qga]\nmax_calls_per_minute = 30\n").expect("valid").max_calls_per_minute, 30);
        let Err(ConfigError::Invalid(errs)) = budget("[qga]\nmax_calls_per_minute = 12\n") else {
            panic!("12 calls leave no room beyond the 12 pings")
        };
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "qga.max_calls_per_minute");
        assert!(
            errs[0].problem.contains("must be between 13 and 1000000") && errs[0].problem.contains("5s"),
            "{}",
            errs[0].problem
        );
        // The selection reaches the poller's settings.
        let s = FileConfig::parse("metrics_groups = [\"core\", \"bridge\"]\n")
            .expect("parses")
            .validate("n")
            .expect("valid");
        assert_eq!(s.sources.qga.poll.selection, s.selection);
        assert!(!s.sources.qga.poll.selection.groups.contains(&Group::Guest));
    }
}
