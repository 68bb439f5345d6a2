//! Impossible guest values are rejected, not exported. Every value the guest reports (through
//! its agent, or through its balloon driver into libvirt's memory statistics) is checked
//! against [`RULES`] where it is parsed, per VM and per poll. A value that breaks a rule is
//! withheld (its series is absent for that poll; the other values of the same reply stay),
//! counted by family and reason (`vmbridge_guest_values_rejected_total`, from the first
//! rejection on), and kept raw, with when and the bound it broke, for `/debug` (at most
//! [`KEEP`] per VM, newest kept). A rejection is not a poll failure.
//!
//! Every label value comes from a fixed set: `family` is the exported name of a family in
//! [`RULES`], `reason` one of [`Reason::ALL`].

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::clock::now_unix;
use crate::model::metric::MetricDef;

/// Why a value was rejected (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not a finite number: NaN, ±infinity, or not a number at all (a string, a bool).
    NotFinite,
    /// Below zero, for a quantity that cannot be.
    Negative,
    /// Above the largest value the quantity can take.
    OverRange,
    /// A filesystem's used bytes above its capacity in the same reply.
    UsedOverCapacity,
    /// A guest memory figure above the domain's memory (the largest of its maximum, current
    /// and balloon sizes).
    OverDomainMemory,
    /// A guest counter below its last accepted value, with no reboot or QEMU restart seen.
    CounterBackwards,
}

impl Reason {
    /// Every reason, in exposition order.
    pub const ALL: [Reason; 6] = [
        Reason::NotFinite,
        Reason::Negative,
        Reason::OverRange,
        Reason::UsedOverCapacity,
        Reason::OverDomainMemory,
        Reason::CounterBackwards,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotFinite => "not_finite",
            Reason::Negative => "negative",
            Reason::OverRange => "over_range",
            Reason::UsedOverCapacity => "used_over_capacity",
            Reason::OverDomainMemory => "over_domain_memory",
            Reason::CounterBackwards => "counter_backwards",
        }
    }
}

/// What a rule tests, on the value in the family's exported unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Test {
    /// Fails when the value is not finite.
    Finite,
    /// Fails below zero.
    NotNegative,
    /// Fails above a fixed bound.
    AtMost(f64),
    /// Fails above the bound the caller gives ([`Context::limit`]: a capacity, the domain's
    /// memory), when it knows one.
    AtMostLimit,
    /// Fails below the previous accepted value ([`Context::previous`]), when there is one.
    NotBelowPrevious,
}

/// One rule: the family it guards, why it rejects, what it tests, and the bound in words.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The family whose value it checks.
    pub family: &'static MetricDef,
    /// The `reason` label of a rejection.
    pub reason: Reason,
    /// The test.
    pub test: Test,
    /// The bound, for the docs and `/debug`.
    pub bound: &'static str,
}

/// The most bytes any guest quantity can be: `i64::MAX`. A larger one is a negative number
/// that went through an unsigned type (incus#1686: MemAvailable 1.8e19).
pub const MAX_BYTES: f64 = i64::MAX as f64;
/// The most of anything a guest can count, for the same reason.
pub const MAX_COUNT: f64 = i64::MAX as f64;
/// The highest load average a Linux guest can have: every task runnable, and there are at
/// most `PID_MAX_LIMIT` (2^22) tasks.
pub const MAX_LOAD: f64 = 4_194_304.0;
/// The most vCPUs a VM can have (`KVM_MAX_VCPUS` on x86-64).
pub const MAX_VCPUS: f64 = 4096.0;

/// The words of the finiteness bound.
pub const FINITE: &str = "a finite number";
/// The words of the sign bound.
pub const NOT_NEGATIVE: &str = ">= 0";
/// The words of the byte-size bound.
pub const BYTES: &str = "<= 2^63-1 (i64::MAX)";
/// The words of the count bound.
pub const COUNT: &str = "<= 2^63-1 (i64::MAX)";

/// A rule of `reason` for `family`.
pub const fn rule(family: &'static MetricDef, reason: Reason, test: Test, bound: &'static str) -> Rule {
    Rule { family, reason, test, bound }
}
/// `family` must be a finite number.
pub const fn finite(family: &'static MetricDef) -> Rule {
    rule(family, Reason::NotFinite, Test::Finite, FINITE)
}
/// `family` must not be negative.
pub const fn not_negative(family: &'static MetricDef) -> Rule {
    rule(family, Reason::Negative, Test::NotNegative, NOT_NEGATIVE)
}
/// `family` must be at most `max`.
pub const fn at_most(family: &'static MetricDef, max: f64, bound: &'static str) -> Rule {
    rule(family, Reason::OverRange, Test::AtMost(max), bound)
}
/// `family` must not exceed the domain's memory.
pub const fn memory(family: &'static MetricDef) -> Rule {
    rule(
        family,
        Reason::OverDomainMemory,
        Test::AtMostLimit,
        "<= the domain's memory (max of balloon.maximum, balloon.current, actual)",
    )
}
/// `family`, a counter, must not go back without a reset.
pub const fn backwards(family: &'static MetricDef) -> Rule {
    rule(
        family,
        Reason::CounterBackwards,
        Test::NotBelowPrevious,
        ">= the last accepted value (no reboot, no QEMU restart)",
    )
}

/// What a value is checked against besides the fixed bounds, in the family's exported unit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Context {
    /// The bound of [`Test::AtMostLimit`].
    pub limit: Option<f64>,
    /// The value of [`Test::NotBelowPrevious`].
    pub previous: Option<f64>,
}

/// One rejected value, as `/debug` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Rejected {
    /// The family it would have been exported in (the `family` label).
    pub family: String,
    /// The `reason` label.
    pub reason: Reason,
    /// Which item of the reply, when the family has several (a mount point).
    pub item: Option<String>,
    /// The value as received (strings shortened to 64 bytes).
    pub raw: Value,
    /// The value in the family's exported unit, when it was a number.
    pub value: Option<f64>,
    /// The bound it broke, in the same unit, when it is a number.
    pub bound: Option<f64>,
    /// The rule, in words.
    pub rule: String,
    /// When it was rejected, seconds since the Unix epoch.
    pub at: f64,
}

/// The most rejected values kept per VM for `/debug`.
pub const KEEP: usize = 32;

/// A VM's rejections since discovery: counts and the last raw values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Rejections {
    /// Rejections by family, then reason (`vmbridge_guest_values_rejected_total`).
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// The last rejected values, oldest first: one per family, reason and item, at most
    /// [`KEEP`].
    pub last: Vec<Rejected>,
}

impl Rejections {
    /// Counts `r` and keeps it as the last of its family, reason and item.
    pub fn record(&mut self, r: Rejected) {
        *self.counts.entry(r.family.clone()).or_default().entry(r.reason.as_str().to_owned()).or_default() += 1;
        self.last.retain(|o| !(o.family == r.family && o.reason == r.reason && o.item == r.item));
        self.last.push(r);
        if self.last.len() > KEEP {
            let extra = self.last.len() - KEEP;
            self.last.drain(..extra);
        }
    }

    /// Records every pending rejection.
    pub fn record_all(&mut self, pending: Vec<Rejected>) {
        for r in pending {
            self.record(r);
        }
    }

    /// How many rejections of `family` (exported name) for `reason`.
    pub fn count(&self, family: &str, reason: Reason) -> u64 {
        self.counts.get(family).and_then(|r| r.get(reason.as_str())).copied().unwrap_or(0)
    }
}

/// The raw value as kept: strings shortened, containers summarised.
fn kept(raw: &Value) -> Value {
    match raw {
        Value::String(s) => Value::String(crate::source::wire::truncate(s, 64)),
        Value::Array(a) => Value::String(format!("<list of {}>", a.len())),
        Value::Object(o) => Value::String(format!("<object of {}>", o.len())),
        v => v.clone(),
    }
}

/// Checks `raw` (as received; a number, else not a number) scaled by `scale` into the exported
/// unit of `family` against every rule of `rules` for it (each source declares its own). The value in that unit when it passes, `None`
/// when absent (`null`) or rejected; a rejection is pushed to `out`. Never panics.
pub fn check(
    rules: &[Rule],
    family: &'static MetricDef,
    raw: &Value,
    scale: f64,
    ctx: Context,
    item: Option<&str>,
    out: &mut Vec<Rejected>,
) -> Option<f64> {
    let value = match raw {
        Value::Null => return None,
        Value::Number(n) => n.as_f64().map_or(f64::NAN, |v| v * scale),
        _ => f64::NAN,
    };
    for r in rules.iter().filter(|r| r.family.name == family.name) {
        let broken = match r.test {
            Test::Finite => (!value.is_finite()).then_some(None),
            Test::NotNegative => (value < 0.0).then_some(Some(0.0)),
            Test::AtMost(max) => (value > max).then_some(Some(max)),
            Test::AtMostLimit => ctx.limit.filter(|l| value > *l).map(Some),
            Test::NotBelowPrevious => ctx.previous.filter(|p| value < *p).map(Some),
        };
        if let Some(bound) = broken {
            out.push(Rejected {
                family: family.exposed_name(),
                reason: r.reason,
                item: item.map(str::to_owned),
                raw: kept(raw),
                value: value.is_finite().then_some(value),
                bound,
                rule: r.bound.to_owned(),
                at: now_unix(),
            });
            return None;
        }
    }
    // A family without a finiteness rule still never exports a non-number.
    value.is_finite().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::qga::commands as q;

    /// Every source's rules, as the docs list them.
    fn all_rules() -> Vec<Rule> {
        q::RULES.iter().chain(&crate::source::libvirt::memstats::RULES).copied().collect()
    }

    /// Every family a rule guards, once each.
    fn guarded() -> Vec<&'static MetricDef> {
        let mut out: Vec<&'static MetricDef> = Vec::new();
        for r in all_rules() {
            if !out.iter().any(|f| f.name == r.family.name) {
                out.push(r.family);
            }
        }
        out
    }

    #[test]
    fn every_guarded_family_is_checked_for_finiteness_and_every_reason_has_a_rule() {
        let rules = all_rules();
        for f in guarded() {
            assert!(
                rules.iter().any(|r| r.family.name == f.name && r.test == Test::Finite),
                "{} has no not_finite rule",
                f.name
            );
        }
        for reason in Reason::ALL {
            assert!(rules.iter().any(|r| r.reason == reason), "no rule for {}", reason.as_str());
        }
        // A reason's label is the same in the JSON of `/debug`.
        for reason in Reason::ALL {
            assert_eq!(serde_json::to_value(reason).ok(), Some(Value::String(reason.as_str().into())));
        }
    }

    #[test]
    fn the_first_broken_rule_rejects_and_nothing_panics() {
        let mut out = Vec::new();
        let load = &q::GUEST_LOAD_1M;
        assert_eq!(check(&q::RULES, load, &serde_json::json!(0.5), 1.0, Context::default(), None, &mut out), Some(0.5));
        assert_eq!(check(&q::RULES, load, &Value::Null, 1.0, Context::default(), None, &mut out), None);
        assert!(out.is_empty());
        for (raw, reason) in [
            (serde_json::json!("NaN"), Reason::NotFinite),
            (serde_json::json!("inf"), Reason::NotFinite),
            (serde_json::json!(true), Reason::NotFinite),
            (serde_json::json!([1, 2]), Reason::NotFinite),
            (serde_json::json!(-0.1), Reason::Negative),
            (serde_json::json!(1e300), Reason::OverRange),
        ] {
            assert_eq!(check(&q::RULES, load, &raw, 1.0, Context::default(), None, &mut out), None, "{raw}");
            assert_eq!(out.last().map(|r| r.reason), Some(reason), "{raw}");
        }
        // A long string is kept short.
        let long = Value::String("x".repeat(10_000));
        check(&q::RULES, load, &long, 1.0, Context::default(), None, &mut out);
        assert!(out.last().is_some_and(|r| r.raw.as_str().is_some_and(|s| s.len() < 100)));
    }

    #[test]
    fn at_most_32_last_values_are_kept_newest_last_one_per_family_reason_and_item() {
        let mut r = Rejections::default();
        for i in 0..100 {
            let mut out = Vec::new();
            let item = format!("/mnt/{i}");
            check(&q::RULES, &q::FS_USED, &serde_json::json!(-1), 1.0, Context::default(), Some(&item), &mut out);
            r.record_all(out);
        }
        assert_eq!(r.last.len(), KEEP);
        assert_eq!(r.last.last().and_then(|x| x.item.as_deref()), Some("/mnt/99"));
        assert_eq!(r.count("kubevirt_vmi_filesystem_used_bytes", Reason::Negative), 100);
        // The same item again replaces its entry.
        let mut out = Vec::new();
        check(&q::RULES, &q::FS_USED, &serde_json::json!(-2), 1.0, Context::default(), Some("/mnt/99"), &mut out);
        r.record_all(out);
        assert_eq!(r.last.len(), KEEP);
        assert_eq!(r.last.iter().filter(|x| x.item.as_deref() == Some("/mnt/99")).count(), 1);
    }
}
