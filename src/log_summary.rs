//! Repeated identical log events, summarised: the first of a kind is logged, the repeats are
//! counted, and at most one summary line per window says how many there were. A hung VM's
//! breaker re-probes every back-off for as long as it stays hung; without this its
//! `open → half_open → open` transitions would be logged at every probe, forever.
//!
//! Free of I/O and of the clock (the caller passes `now`), so tests drive it directly.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// How long repeats are counted before one summary line is due (10 min).
pub const WINDOW: Duration = Duration::from_secs(600);

/// What to do with one occurrence of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first of its kind (since the last [`LogSummary::reset`]): log it.
    Log,
    /// A repeat within the window: counted, not logged.
    Quiet,
    /// A repeat that ends a window: log one summary of `repeats` occurrences (this one
    /// included) over `over`.
    Summary {
        /// Occurrences since the last line about this kind, this one included.
        repeats: u64,
        /// Since that line.
        over: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    since: Instant,
    repeats: u64,
}

/// Counts repeats of events keyed by `K` (e.g. a breaker transition and its error kind).
#[derive(Debug)]
pub struct LogSummary<K: Ord> {
    window: Duration,
    seen: BTreeMap<K, Seen>,
}

impl<K: Ord> Default for LogSummary<K> {
    fn default() -> Self {
        Self::new(WINDOW)
    }
}

impl<K: Ord> LogSummary<K> {
    /// A summariser with one summary per `window` and kind.
    pub fn new(window: Duration) -> Self {
        LogSummary { window, seen: BTreeMap::new() }
    }

    /// Records one occurrence of `key` at `now`.
    pub fn note(&mut self, key: K, now: Instant) -> Verdict {
        match self.seen.get_mut(&key) {
            None => {
                self.seen.insert(key, Seen { since: now, repeats: 0 });
                Verdict::Log
            }
            Some(s) => {
                s.repeats += 1;
                let over = now.saturating_duration_since(s.since);
                if over < self.window {
                    return Verdict::Quiet;
                }
                let repeats = s.repeats;
                *s = Seen { since: now, repeats: 0 };
                Verdict::Summary { repeats, over }
            }
        }
    }

    /// Forgets every kind (the source recovered: the next failure is news again) and returns
    /// the repeats not yet reported, for the recovery line.
    pub fn reset(&mut self) -> u64 {
        let pending = self.seen.values().map(|s| s.repeats).sum();
        self.seen.clear();
        pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_is_logged_repeats_are_counted_and_summarised_once_per_window() {
        let mut s: LogSummary<&str> = LogSummary::new(Duration::from_secs(600));
        let t0 = Instant::now();
        assert_eq!(s.note("probe_failed", t0), Verdict::Log);
        assert_eq!(s.note("backoff_elapsed", t0), Verdict::Log, "another kind is news");
        // A probe every 60 s: 9 repeats within the window are quiet, the 10th summarises.
        for i in 1..10 {
            assert_eq!(s.note("probe_failed", t0 + Duration::from_secs(60 * i)), Verdict::Quiet, "repeat {i}");
        }
        let at = t0 + Duration::from_secs(600);
        assert_eq!(s.note("probe_failed", at), Verdict::Summary { repeats: 10, over: Duration::from_secs(600) });
        // The next window starts at that summary.
        assert_eq!(s.note("probe_failed", at + Duration::from_secs(60)), Verdict::Quiet);
        assert_eq!(s.note("probe_failed", at + Duration::from_secs(599)), Verdict::Quiet);
        assert_eq!(
            s.note("probe_failed", at + Duration::from_secs(600)),
            Verdict::Summary { repeats: 3, over: Duration::from_secs(600) }
        );
        // Recovery: the repeats not yet reported are handed back, and the next failure is news.
        assert_eq!(s.note("probe_failed", at + Duration::from_secs(601)), Verdict::Quiet);
        assert_eq!(s.note("probe_failed", at + Duration::from_secs(661)), Verdict::Quiet);
        assert_eq!(s.reset(), 2);
        assert_eq!(s.note("probe_failed", at + Duration::from_secs(700)), Verdict::Log);
    }
}
