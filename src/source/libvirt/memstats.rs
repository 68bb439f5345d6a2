//! Are the guest's memory statistics current? The balloon driver in the guest reports them
//! every stats period (`<memballoon><stats period>`), and QEMU stamps each report
//! (`balloon.last-update`, host seconds since the epoch). A driver that stops reporting
//! (virtio-win#680: `last_update` never changes; a stats period set to 0; a wedged guest)
//! leaves the last figures in place, and libvirt keeps returning them as if current. So once
//! the stamp has not advanced for [`STALE_PERIODS`] stats periods, the guest-reported figures
//! (available, usable, unused, cached, swap, faults) are withheld; what the host knows
//! (`actual_balloon`, the domain's memory, QEMU's RSS) stays. `vmbridge_guest_memory_stats{state}`
//! says which: `fresh`, `stale` or `unavailable` (the guest never reported).
//!
//! libvirt's bulk stats do not give the period, so it is measured: the last positive step of
//! the stamp. Until a step was seen, [`ASSUMED_PERIOD`] stands in.

use serde::Serialize;
use serde_json::Value;

use super::stats::MemorySample;
use super::families as c;
use crate::model::metric::MetricDef;
use crate::source::reject::{self, BYTES, COUNT, Context, MAX_BYTES, MAX_COUNT, Rejections, Rule, at_most, backwards, finite, memory, not_negative};

/// Stats periods without a new report after which the figures are stale.
pub const STALE_PERIODS: f64 = 3.0;

/// The period assumed before one was measured, in seconds (KubeVirt's and a common default).
pub const ASSUMED_PERIOD: f64 = 10.0;

/// Whether the guest-reported memory figures are exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemoryStatsState {
    /// Reported within the last [`STALE_PERIODS`] periods: exported.
    Fresh,
    /// Not reported for longer: withheld.
    Stale,
    /// The guest never reported (no balloon driver, stats period 0 from the start): absent.
    Unavailable,
}

impl MemoryStatsState {
    /// Every state, in exposition order.
    pub const ALL: [MemoryStatsState; 3] =
        [MemoryStatsState::Fresh, MemoryStatsState::Stale, MemoryStatsState::Unavailable];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryStatsState::Fresh => "fresh",
            MemoryStatsState::Stale => "stale",
            MemoryStatsState::Unavailable => "unavailable",
        }
    }
}

/// The judgement of one poll, kept in the sample (and shown in `/debug`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct GuestMemoryStats {
    /// The state.
    pub state: MemoryStatsState,
    /// The stats period as measured (or assumed), in seconds.
    pub period_seconds: f64,
    /// Seconds since the guest's last report, when it ever reported.
    pub age_seconds: Option<f64>,
}

impl Default for GuestMemoryStats {
    fn default() -> Self {
        GuestMemoryStats { state: MemoryStatsState::Unavailable, period_seconds: ASSUMED_PERIOD, age_seconds: None }
    }
}

/// What the poller remembers between polls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Freshness {
    /// The last stamp seen.
    last: Option<u64>,
    /// The last positive step of the stamp, in seconds.
    period: Option<u64>,
}

impl Freshness {
    /// Judges `mem` at `now` (seconds since the epoch) and, unless fresh, withholds its
    /// guest-reported figures.
    pub fn judge(&mut self, mem: &mut MemorySample, now: f64) -> GuestMemoryStats {
        let stamp = mem.last_update.filter(|t| *t > 0);
        if let (Some(new), Some(old)) = (stamp, self.last) {
            if new > old {
                self.period = Some(new - old);
            }
        }
        if stamp.is_some() {
            self.last = stamp;
        }
        let period = self.period.map_or(ASSUMED_PERIOD, |p| p.max(1) as f64);
        let reported = [
            mem.unused_kib,
            mem.available_kib,
            mem.usable_kib,
            mem.disk_caches_kib,
            mem.swap_in_kib,
            mem.swap_out_kib,
            mem.major_fault,
            mem.minor_fault,
        ]
        .iter()
        .any(Option::is_some);
        // A stamp from the future (host clock stepped back) counts as age 0, not as fresher.
        let age = stamp.map(|t| (now - t as f64).max(0.0));
        let state = match age {
            _ if !reported => MemoryStatsState::Unavailable,
            None => MemoryStatsState::Unavailable,
            Some(a) if a > STALE_PERIODS * period => MemoryStatsState::Stale,
            Some(_) => MemoryStatsState::Fresh,
        };
        if state != MemoryStatsState::Fresh {
            withhold(mem);
        }
        GuestMemoryStats { state, period_seconds: period, age_seconds: age }
    }
}

/// Drops the figures only the guest reports; the host's stay.
fn withhold(mem: &mut MemorySample) {
    for v in [
        &mut mem.unused_kib,
        &mut mem.available_kib,
        &mut mem.usable_kib,
        &mut mem.disk_caches_kib,
        &mut mem.swap_in_kib,
        &mut mem.swap_out_kib,
        &mut mem.major_fault,
        &mut mem.minor_fault,
    ] {
        *v = None;
    }
}

/// Checks the guest's memory figures against [`RULES`] after [`Freshness::judge`]:
/// a figure above the domain's memory or past `i64::MAX` bytes, or a counter (swap, faults)
/// below its last accepted value, is withheld for the poll and counted.
///
/// A counter may go back only with a reset: QEMU restarted (its CPU time, `cpu.time`, went
/// back) or the guest rebooted (every counter last accepted above zero went back at once: a
/// new kernel starts them all from zero). One counter going back while the others do not is
/// impossible; it stays withheld until it passes its last accepted value again.
#[derive(Debug, Clone, Default)]
pub struct Plausibility {
    /// The last accepted value of each counter in [`COUNTERS`] order, in exported units.
    counters: [Option<f64>; 4],
    /// QEMU's CPU time at the last poll, nanoseconds.
    cpu_time_ns: Option<u64>,
    /// Rejections since discovery.
    pub rejected: Rejections,
}

/// The guest-reported counters, in [`Plausibility`]'s order, with their scale to exported units.
const COUNTERS: [(&MetricDef, f64); 4] = [
    (&c::MEMORY_SWAP_IN, 1024.0),
    (&c::MEMORY_SWAP_OUT, 1024.0),
    (&c::MEMORY_PGMAJFAULT, 1.0),
    (&c::MEMORY_PGMINFAULT, 1.0),
];

impl Plausibility {
    /// Withholds `mem`'s impossible guest figures and records them; `cpu_time_ns` is QEMU's.
    pub fn check(&mut self, mem: &mut MemorySample, cpu_time_ns: Option<u64>) {
        let mut out = Vec::new();
        // The domain's memory: the most the host gives it, by any of its figures.
        let domain = [mem.maximum_kib, mem.current_kib, mem.actual_balloon_kib].into_iter().flatten().max();
        let within = Context { limit: domain.map(|k| k as f64 * 1024.0), previous: None };
        for (def, v) in [
            (&c::MEMORY_AVAILABLE, &mut mem.available_kib),
            (&c::MEMORY_USABLE, &mut mem.usable_kib),
            (&c::MEMORY_UNUSED, &mut mem.unused_kib),
            (&c::MEMORY_CACHED, &mut mem.disk_caches_kib),
        ] {
            if let Some(raw) = *v {
                if reject::check(&RULES, def, &Value::from(raw), 1024.0, within, None, &mut out).is_none() {
                    *v = None;
                }
            }
        }
        let restarted = matches!((self.cpu_time_ns, cpu_time_ns), (Some(old), Some(new)) if new < old);
        if cpu_time_ns.is_some() {
            self.cpu_time_ns = cpu_time_ns;
        }
        let mut values = [&mut mem.swap_in_kib, &mut mem.swap_out_kib, &mut mem.major_fault, &mut mem.minor_fault];
        let (mut back, mut held) = (0, 0);
        for (i, v) in values.iter().enumerate() {
            if let (Some(prev), Some(new)) = (self.counters[i], **v) {
                if prev > 0.0 {
                    if (new as f64) * COUNTERS[i].1 < prev { back += 1 } else { held += 1 }
                }
            }
        }
        if restarted || (back > 0 && held == 0) {
            self.counters = [None; 4];
        }
        for (i, v) in values.iter_mut().enumerate() {
            let Some(raw) = **v else { continue };
            let (def, scale) = COUNTERS[i];
            let since = Context { limit: None, previous: self.counters[i] };
            match reject::check(&RULES, def, &Value::from(raw), scale, since, None, &mut out) {
                Some(x) => self.counters[i] = Some(x),
                None => **v = None,
            }
        }
        self.rejected.record_all(out);
    }
}

/// Every rule for libvirt's guest-reported figures, checked in this order for a family; the
/// first that fails rejects the value.
pub const RULES: [Rule; 28] = [
    // The balloon driver's figures (libvirt memory statistics, KiB converted to bytes).
    finite(&c::MEMORY_AVAILABLE),
    not_negative(&c::MEMORY_AVAILABLE),
    at_most(&c::MEMORY_AVAILABLE, MAX_BYTES, BYTES),
    memory(&c::MEMORY_AVAILABLE),
    finite(&c::MEMORY_USABLE),
    not_negative(&c::MEMORY_USABLE),
    at_most(&c::MEMORY_USABLE, MAX_BYTES, BYTES),
    memory(&c::MEMORY_USABLE),
    finite(&c::MEMORY_UNUSED),
    not_negative(&c::MEMORY_UNUSED),
    at_most(&c::MEMORY_UNUSED, MAX_BYTES, BYTES),
    memory(&c::MEMORY_UNUSED),
    finite(&c::MEMORY_CACHED),
    not_negative(&c::MEMORY_CACHED),
    at_most(&c::MEMORY_CACHED, MAX_BYTES, BYTES),
    memory(&c::MEMORY_CACHED),
    // The balloon driver's counters.
    finite(&c::MEMORY_SWAP_IN),
    at_most(&c::MEMORY_SWAP_IN, MAX_BYTES, BYTES),
    backwards(&c::MEMORY_SWAP_IN),
    finite(&c::MEMORY_SWAP_OUT),
    at_most(&c::MEMORY_SWAP_OUT, MAX_BYTES, BYTES),
    backwards(&c::MEMORY_SWAP_OUT),
    finite(&c::MEMORY_PGMAJFAULT),
    at_most(&c::MEMORY_PGMAJFAULT, MAX_COUNT, COUNT),
    backwards(&c::MEMORY_PGMAJFAULT),
    finite(&c::MEMORY_PGMINFAULT),
    at_most(&c::MEMORY_PGMINFAULT, MAX_COUNT, COUNT),
    backwards(&c::MEMORY_PGMINFAULT),
];


#[cfg(test)]
mod tests {
    use super::*;

    /// Balloon figures as libvirt returned them from the lab guest (128 MiB, stats period 2 s),
    /// with the stamp `last_update`.
    fn recorded(last_update: u64) -> MemorySample {
        MemorySample {
            actual_balloon_kib: Some(131_072),
            current_kib: Some(131_072),
            maximum_kib: Some(131_072),
            swap_in_kib: Some(0),
            swap_out_kib: Some(0),
            major_fault: Some(263),
            minor_fault: Some(40_113),
            unused_kib: Some(83_500),
            available_kib: Some(116_468),
            usable_kib: Some(88_412),
            disk_caches_kib: Some(6_008),
            rss_kib: Some(171_232),
            last_update: Some(last_update),
        }
    }

    #[test]
    fn a_stamp_that_stops_withholds_the_guest_figures_after_three_periods() {
        let t0 = 1_764_800_000;
        let mut f = Freshness::default();
        let state = |f: &mut Freshness, stamp: u64, now: u64| {
            let mut m = recorded(stamp);
            let g = f.judge(&mut m, now as f64);
            (g, m)
        };
        // Reports every 2 s, polled every second: fresh, period measured.
        for (stamp, now) in [(t0, t0), (t0, t0 + 1), (t0 + 2, t0 + 2), (t0 + 2, t0 + 3), (t0 + 4, t0 + 4)] {
            let (g, m) = state(&mut f, stamp, now);
            assert_eq!(g.state, MemoryStatsState::Fresh, "{stamp} at {now}");
            assert_eq!(m.usable_kib, Some(88_412));
        }
        assert_eq!(state(&mut f, t0 + 4, t0 + 4).0.period_seconds, 2.0);
        // The stamp stops at t0+4: fresh up to 3 periods (6 s) later, stale after.
        let (g, _) = state(&mut f, t0 + 4, t0 + 10);
        assert_eq!((g.state, g.age_seconds), (MemoryStatsState::Fresh, Some(6.0)));
        let (g, m) = state(&mut f, t0 + 4, t0 + 11);
        assert_eq!(g.state, MemoryStatsState::Stale);
        assert_eq!(
            (m.available_kib, m.usable_kib, m.unused_kib, m.disk_caches_kib, m.swap_in_kib, m.major_fault),
            (None, None, None, None, None, None),
            "guest figures withheld"
        );
        assert_eq!(
            (m.actual_balloon_kib, m.current_kib, m.rss_kib, m.last_update),
            (Some(131_072), Some(131_072), Some(171_232), Some(t0 + 4)),
            "host figures and the stamp stay"
        );
        // Reports resume: fresh at once.
        assert_eq!(state(&mut f, t0 + 30, t0 + 30).0.state, MemoryStatsState::Fresh);
    }

    #[test]
    fn without_a_measured_period_the_assumed_one_counts() {
        let t0 = 1_764_800_000;
        let mut f = Freshness::default();
        let mut m = recorded(t0);
        assert_eq!(f.judge(&mut m, (t0 + 30) as f64).state, MemoryStatsState::Fresh);
        let mut m = recorded(t0);
        let g = f.judge(&mut m, (t0 + 31) as f64);
        assert_eq!((g.state, g.period_seconds), (MemoryStatsState::Stale, ASSUMED_PERIOD));
    }

    #[test]
    fn a_guest_that_never_reported_is_unavailable() {
        let mut f = Freshness::default();
        // libvirt's answer for stats period 0 from boot: host figures, no stamp, no guest figures.
        let mut m = MemorySample {
            actual_balloon_kib: Some(131_072),
            current_kib: Some(131_072),
            rss_kib: Some(171_232),
            last_update: Some(0),
            ..Default::default()
        };
        let g = f.judge(&mut m, 1_764_800_000.0);
        assert_eq!((g.state, g.age_seconds), (MemoryStatsState::Unavailable, None));
        assert_eq!(m.actual_balloon_kib, Some(131_072));
        // Figures without a stamp cannot be judged: withheld too.
        let mut m = MemorySample { usable_kib: Some(5), last_update: None, ..Default::default() };
        assert_eq!(f.judge(&mut m, 1_764_800_000.0).state, MemoryStatsState::Unavailable);
        assert_eq!(m.usable_kib, None);
        // A stamp from the future (clock stepped back) is not stale.
        let mut m = recorded(1_764_800_100);
        assert_eq!(f.judge(&mut m, 1_764_800_000.0).state, MemoryStatsState::Fresh);
    }
}
