//! Partial answers from libvirt keep the last good values.
//!
//! Bulk stats are asked for with `NOWAIT`: a stats group (or the part of it) that needs the
//! domain's job while another client holds it (another exporter's `virsh domstats`,
//! virt-launcher, a `detach-disk` in progress) is left out of the answer instead of queueing.
//! libvirt then still names every drive (`block.N.name`, `path`, `backingIndex`) but drops its
//! counters, or leaves out the balloon statistics, or a whole group. A value missing from one
//! answer is not a value that is gone: [`Carry`] keeps every parameter's last observation and
//! puts it back into an answer that lacks it, for as long as it is younger than the staleness
//! window.
//!
//! Rules, per parameter key of a requested group (`state`, `cpu`, `balloon`, `vcpu`, `net`,
//! `block`, `dirtyrate`):
//! - a key present in the new answer always wins;
//! - a missing key is carried from its last observation when that is within the window;
//! - per device (`net.N.*`, `block.N.*`), a device is identified by its name, not its index
//!   (indices shift when a device is unplugged); while the group is answered, only devices the
//!   answer still names are carried, so an unplugged drive disappears at once; when the group is
//!   missing altogether, every device of the last observation is carried;
//! - vCPUs have no name and keep their index.
//!
//! A carried value keeps the time it was observed, so it ages out after the window; carrying
//! never makes a value fresher than it is. Each answer that needed carrying counts once per
//! group in [`Carry::partial_total`] (`vmbridge_source_partial_total`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use super::ffi::ParamValue;

/// The bulk-stats groups vmbridge asks for, by their key prefix.
pub const GROUPS: [&str; 7] = ["state", "cpu", "balloon", "vcpu", "net", "block", "dirtyrate"];

/// Groups whose devices are identified by a `name` parameter.
const NAMED: [&str; 2] = ["net", "block"];

/// The group a key belongs to, if it is one vmbridge asks for.
fn group_of(key: &str) -> Option<&'static str> {
    let prefix = key.split('.').next()?;
    GROUPS.iter().copied().find(|g| *g == prefix)
}

/// `G.N.field` → `(N, field)`.
fn device_of<'a>(key: &'a str, group: &str) -> Option<(usize, &'a str)> {
    let rest = key.strip_prefix(group)?.strip_prefix('.')?;
    let (idx, field) = rest.split_once('.')?;
    Some((idx.parse().ok()?, field))
}

/// Device name → index, for one named group of a parameter set.
fn names<'a>(params: impl Iterator<Item = (&'a String, &'a ParamValue)>, group: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (k, v) in params {
        if let Some((idx, "name")) = device_of(k, group) {
            if let Some(name) = v.as_str() {
                out.entry(name.to_owned()).or_insert(idx);
            }
        }
    }
    out
}

/// What one merge did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// The answer with the carried values put back, in key order.
    pub params: Vec<(String, ParamValue)>,
    /// Per group, how many values were carried into this answer (only groups with some).
    pub carried: BTreeMap<&'static str, usize>,
}

/// The last observation of every bulk-stats parameter of one domain.
#[derive(Debug, Default)]
pub struct Carry {
    seen: BTreeMap<String, (ParamValue, Instant)>,
    partial_total: BTreeMap<&'static str, u64>,
}

impl Carry {
    /// An empty carry (the first answer is taken as it is).
    pub fn new() -> Self {
        Carry::default()
    }

    /// Answers that needed carrying, per group, since this carry was made.
    pub fn partial_total(&self) -> &BTreeMap<&'static str, u64> {
        &self.partial_total
    }

    /// Whether merging `fresh` at `now` would put back any value: the answer lacks a parameter
    /// the last one had (still younger than `window`). Read before a merge, so a caller can
    /// ask again instead (a device unplugged since reads as lacking, too).
    pub fn would_carry(&self, fresh: &[(String, ParamValue)], now: Instant, window: Duration) -> bool {
        let keys: BTreeSet<&str> = fresh.iter().map(|(k, _)| k.as_str()).collect();
        self.seen.iter().any(|(k, (_, at))| {
            now.saturating_duration_since(*at) <= window && group_of(k).is_some() && !keys.contains(k.as_str())
        })
    }

    /// Merges a new answer taken at `now` with the last observations younger than `window`.
    pub fn merge(&mut self, fresh: Vec<(String, ParamValue)>, now: Instant, window: Duration) -> Merged {
        let fresh: BTreeMap<String, ParamValue> = fresh.into_iter().collect();
        let answered: BTreeSet<&'static str> = fresh.keys().filter_map(|k| group_of(k)).collect();
        // Per named group: name → index, then and now.
        let old_names: BTreeMap<&str, BTreeMap<String, usize>> =
            NAMED.iter().map(|g| (*g, names(self.seen.iter().map(|(k, (v, _))| (k, v)), g))).collect();
        let new_names: BTreeMap<&str, BTreeMap<String, usize>> =
            NAMED.iter().map(|g| (*g, names(fresh.iter(), g))).collect();
        // Present vCPU indices now.
        let new_vcpus: BTreeSet<usize> = fresh.keys().filter_map(|k| device_of(k, "vcpu").map(|(i, _)| i)).collect();

        let mut next: BTreeMap<String, (ParamValue, Instant)> = BTreeMap::new();
        let mut carried: BTreeMap<&'static str, usize> = BTreeMap::new();
        for (key, (value, at)) in std::mem::take(&mut self.seen) {
            if now.saturating_duration_since(at) > window {
                continue;
            }
            let Some(group) = group_of(&key) else { continue };
            let target = if !answered.contains(group) {
                // The whole group is missing: carry it as it was.
                Some(key)
            } else if NAMED.contains(&group) {
                match device_of(&key, group) {
                    Some((old_idx, field)) => {
                        let name = old_names[group].iter().find(|(_, i)| **i == old_idx).map(|(n, _)| n);
                        // Carried to the index the device has now; a device no longer named is gone.
                        name.and_then(|n| new_names[group].get(n)).map(|new_idx| format!("{group}.{new_idx}.{field}"))
                    }
                    None => Some(key),
                }
            } else if group == "vcpu" {
                match device_of(&key, group) {
                    Some((idx, _)) => new_vcpus.contains(&idx).then_some(key),
                    None => Some(key),
                }
            } else {
                Some(key)
            };
            let Some(target) = target else { continue };
            if fresh.contains_key(&target) || next.contains_key(&target) {
                continue;
            }
            *carried.entry(group).or_default() += 1;
            next.insert(target, (value, at));
        }
        for g in carried.keys() {
            *self.partial_total.entry(g).or_default() += 1;
        }
        for (k, v) in fresh {
            next.insert(k, (v, now));
        }
        let params = next.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect();
        self.seen = next;
        Merged { params, carried }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ParamValue::*;

    const WINDOW: Duration = Duration::from_secs(120);

    fn p(k: &str, v: ParamValue) -> (String, ParamValue) {
        (k.to_owned(), v)
    }

    fn get<'a>(m: &'a Merged, k: &str) -> Option<&'a ParamValue> {
        m.params.iter().find(|(key, _)| key == k).map(|(_, v)| v)
    }

    /// A full answer for two drives, as libvirt gives it when nobody else holds the job.
    fn full(rd_vda: u64, rd_vdb: u64) -> Vec<(String, ParamValue)> {
        vec![
            p("state.state", Int(1)),
            p("cpu.time", UInt(1000)),
            p("balloon.current", UInt(32768)),
            p("balloon.rss", UInt(9000)),
            p("vcpu.current", UInt(1)),
            p("vcpu.0.time", UInt(77)),
            p("block.count", UInt(2)),
            p("block.0.name", Str("vda".into())),
            p("block.0.path", Str("/a.qcow2".into())),
            p("block.0.rd.reqs", UInt(rd_vda)),
            p("block.0.capacity", UInt(1 << 20)),
            p("block.1.name", Str("vdb".into())),
            p("block.1.path", Str("/b.qcow2".into())),
            p("block.1.rd.reqs", UInt(rd_vdb)),
        ]
    }

    #[test]
    fn the_first_answer_is_taken_as_it_is() {
        let mut c = Carry::new();
        let m = c.merge(full(5, 6), Instant::now(), WINDOW);
        assert_eq!(m.params.len(), full(5, 6).len());
        assert!(m.carried.is_empty());
        assert!(c.partial_total().is_empty());
    }

    #[test]
    fn drives_named_without_counters_keep_their_last_counters() {
        // What NOWAIT returns while another client holds the job: names and paths only.
        let mut c = Carry::new();
        let t0 = Instant::now();
        c.merge(full(5, 6), t0, WINDOW);
        let partial = vec![
            p("state.state", Int(1)),
            p("cpu.time", UInt(1100)),
            p("balloon.current", UInt(32768)),
            p("vcpu.current", UInt(1)),
            p("vcpu.0.time", UInt(80)),
            p("block.count", UInt(2)),
            p("block.0.name", Str("vda".into())),
            p("block.0.path", Str("/a.qcow2".into())),
            p("block.1.name", Str("vdb".into())),
            p("block.1.path", Str("/b.qcow2".into())),
        ];
        let m = c.merge(partial, t0 + Duration::from_secs(1), WINDOW);
        assert_eq!(get(&m, "block.0.rd.reqs"), Some(&UInt(5)));
        assert_eq!(get(&m, "block.1.rd.reqs"), Some(&UInt(6)));
        assert_eq!(get(&m, "block.0.capacity"), Some(&UInt(1 << 20)));
        assert_eq!(get(&m, "balloon.rss"), Some(&UInt(9000)));
        // Fresh values win.
        assert_eq!(get(&m, "cpu.time"), Some(&UInt(1100)));
        assert_eq!(get(&m, "vcpu.0.time"), Some(&UInt(80)));
        assert_eq!(m.carried, BTreeMap::from([("balloon", 1), ("block", 3)]));
        assert_eq!(c.partial_total(), &BTreeMap::from([("balloon", 1), ("block", 1)]));
        // The next full answer replaces everything and carries nothing.
        let m = c.merge(full(7, 8), t0 + Duration::from_secs(2), WINDOW);
        assert!(m.carried.is_empty());
        assert_eq!(get(&m, "block.1.rd.reqs"), Some(&UInt(8)));
        assert_eq!(c.partial_total(), &BTreeMap::from([("balloon", 1), ("block", 1)]));
    }

    #[test]
    fn would_carry_says_beforehand_whether_a_merge_carries() {
        let mut c = Carry::new();
        let t0 = Instant::now();
        let first = full(5, 6);
        // Nothing seen yet: nothing to carry.
        assert!(!c.would_carry(&first, t0, WINDOW));
        c.merge(first, t0, WINDOW);
        let t1 = t0 + Duration::from_secs(1);
        assert!(!c.would_carry(&full(7, 8), t1, WINDOW), "a full answer carries nothing");
        // Counters left out (another caller holds the job), or a whole group missing.
        let no_counters: Vec<_> = full(7, 8).into_iter().filter(|(k, _)| !k.ends_with("rd.reqs")).collect();
        let no_balloon: Vec<_> = full(7, 8).into_iter().filter(|(k, _)| !k.starts_with("balloon.")).collect();
        for partial in [no_counters, no_balloon] {
            assert!(c.would_carry(&partial, t1, WINDOW), "{partial:?}");
            // And the merge agrees.
            let mut probe = Carry::new();
            probe.merge(full(5, 6), t0, WINDOW);
            assert!(!probe.merge(partial, t1, WINDOW).carried.is_empty());
        }
        // Past the window the old values are not carried, so an answer lacking them is whole.
        let later = t0 + WINDOW + Duration::from_secs(1);
        let lacking: Vec<_> = full(7, 8).into_iter().filter(|(k, _)| !k.starts_with("balloon.")).collect();
        assert!(!c.would_carry(&lacking, later, WINDOW));
        // The check changes nothing.
        assert!(c.partial_total().is_empty());
    }

    #[test]
    fn a_missing_group_is_carried_whole() {
        let mut c = Carry::new();
        let t0 = Instant::now();
        c.merge(full(5, 6), t0, WINDOW);
        let no_block: Vec<_> = full(0, 0).into_iter().filter(|(k, _)| !k.starts_with("block.")).collect();
        let m = c.merge(no_block, t0 + Duration::from_secs(1), WINDOW);
        assert_eq!(get(&m, "block.count"), Some(&UInt(2)));
        assert_eq!(get(&m, "block.1.name"), Some(&Str("vdb".into())));
        assert_eq!(get(&m, "block.1.rd.reqs"), Some(&UInt(6)));
        assert_eq!(m.carried, BTreeMap::from([("block", 8)]), "count, 2 names, 2 paths, 2 counters, 1 capacity");
    }

    #[test]
    fn an_unplugged_drive_goes_at_once_and_the_others_follow_their_names() {
        // vda unplugged: vdb moves from index 1 to index 0, and its counters are skipped.
        let mut c = Carry::new();
        let t0 = Instant::now();
        c.merge(full(5, 6), t0, WINDOW);
        let after = vec![
            p("state.state", Int(1)),
            p("block.count", UInt(1)),
            p("block.0.name", Str("vdb".into())),
            p("block.0.path", Str("/b.qcow2".into())),
        ];
        let m = c.merge(after, t0 + Duration::from_secs(1), WINDOW);
        assert_eq!(get(&m, "block.0.rd.reqs"), Some(&UInt(6)), "vdb's counters follow its name");
        assert_eq!(get(&m, "block.0.capacity"), None, "vda's capacity must not land on vdb");
        assert!(m.params.iter().all(|(k, _)| !k.starts_with("block.1.")), "{:?}", m.params);
        assert!(m.params.iter().all(|(_, v)| v != &Str("vda".into())));
    }

    #[test]
    fn carried_values_age_out_after_the_window() {
        let mut c = Carry::new();
        let t0 = Instant::now();
        c.merge(full(5, 6), t0, WINDOW);
        let names_only =
            |rd: bool| full(9, 9).into_iter().filter(move |(k, _)| rd || !k.ends_with("rd.reqs")).collect::<Vec<_>>();
        let m = c.merge(names_only(false), t0 + Duration::from_secs(60), WINDOW);
        assert_eq!(get(&m, "block.0.rd.reqs"), Some(&UInt(5)));
        // Carrying does not refresh the observation: 121 s after it, the value is gone.
        let m = c.merge(names_only(false), t0 + Duration::from_secs(121), WINDOW);
        assert_eq!(get(&m, "block.0.rd.reqs"), None);
        assert!(m.carried.is_empty());
    }

    #[test]
    fn vcpus_keep_their_index_and_removed_ones_go() {
        let mut c = Carry::new();
        let t0 = Instant::now();
        c.merge(vec![p("vcpu.0.time", UInt(1)), p("vcpu.1.time", UInt(2)), p("vcpu.1.state", Int(1))], t0, WINDOW);
        let m = c.merge(vec![p("vcpu.1.state", Int(1))], t0 + Duration::from_secs(1), WINDOW);
        assert_eq!(get(&m, "vcpu.1.time"), Some(&UInt(2)));
        assert_eq!(get(&m, "vcpu.0.time"), None, "vCPU 0 is not in the answer: unplugged");
    }

    #[test]
    fn keys_outside_the_requested_groups_are_not_carried() {
        let mut c = Carry::new();
        let t0 = Instant::now();
        c.merge(vec![p("iothread.count", UInt(1)), p("cpu.time", UInt(1))], t0, WINDOW);
        let m = c.merge(vec![p("cpu.time", UInt(2))], t0 + Duration::from_secs(1), WINDOW);
        assert_eq!(m.params, vec![p("cpu.time", UInt(2))]);
    }
}
