//! Pre-encoded exposition. A VM's sample lines are written once, when one of its sources
//! publishes (the store tells the collector, [`crate::store::Observer`]), into one buffer with
//! one run per family. A scrape then only writes each family's header, in the format asked
//! for, and concatenates every VM's run of that family after it, so samples of a family stay
//! contiguous. Sample lines are identical in OpenMetrics and in the classic text format
//! (0.0.4); only headers differ, and both header sets are rendered once per process.
//!
//! A VM's runs are kept in parts: one per source (its own families), one for the event and
//! migration families, one for vmbridge's own health of the VM (`bridge`). A publish encodes
//! again only the parts whose inputs changed: the publishing source's part (held with the
//! snapshot it was encoded from, compared by identity) and the small bridge part; a source
//! whose families name drives by libvirt's aliases also when those labels change. A part
//! whose source went in or out of the staleness window is encoded again by the scrape that
//! finds it so (that is how data that ages out of the window disappears).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use crate::catalogue;
use crate::clock::now_unix;
use crate::http::budget::OverBudget;
use crate::source::SourceKind;
use crate::source::api::{Source, Visit};
use crate::store::{Observer, SourceSnapshot, VmKey, VmSnapshot};

use super::{VmCollector, bridge, events};
use crate::model::exposition::{Layout, Out};
use crate::model::text::Format;
use crate::source::api::VmView;

/// The layout, built once.
pub(crate) fn layout() -> &'static Layout {
    static L: LazyLock<Layout> = LazyLock::new(|| Layout::build(catalogue::all()));
    &L
}

/// One VM's (or the node's) sample lines, one run per family slot.
#[derive(Debug, Default)]
pub(crate) struct Fragments {
    text: String,
    /// The non-empty runs, by increasing slot: (slot, start, end) in `text`.
    spans: Vec<(u16, u32, u32)>,
}

impl Fragments {
    /// Orders the runs an encode wrote by slot (they normally already are) and indexes them.
    fn from_runs(mut text: String, mut runs: Vec<(u16, u32)>) -> Fragments {
        // Held until the VM's next publish: no spare capacity (the encode reserves 8 KiB).
        text.shrink_to_fit();
        let total = text.len() as u32;
        let mut spans: Vec<(u16, u32, u32)> = Vec::with_capacity(runs.len());
        runs.push((u16::MAX, total));
        for w in runs.windows(2) {
            if w[1].1 > w[0].1 {
                spans.push((w[0].0, w[0].1, w[1].1));
            }
        }
        spans.shrink_to_fit();
        if spans.windows(2).all(|w| w[0].0 < w[1].0) {
            return Fragments { text, spans };
        }
        // A family written in two runs, or out of catalogue order: gather each slot's runs.
        spans.sort_by_key(|s| s.0);
        let mut t = String::with_capacity(text.len());
        let mut merged: Vec<(u16, u32, u32)> = Vec::with_capacity(spans.len());
        for (slot, a, b) in spans {
            let start = t.len() as u32;
            t.push_str(&text[a as usize..b as usize]);
            match merged.last_mut() {
                Some(last) if last.0 == slot => last.2 = t.len() as u32,
                _ => merged.push((slot, start, t.len() as u32)),
            }
        }
        Fragments { text: t, spans: merged }
    }

    #[cfg(test)]
    fn run(&self, slot: usize) -> &str {
        self.spans.iter().find(|s| usize::from(s.0) == slot).map_or("", |&(_, a, b)| &self.text[a as usize..b as usize])
    }

    /// Bytes of sample lines held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.text.len()
    }
}

/// What a VM's runs were encoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Basis {
    revision: u64,
    /// Bit `i`: source `SourceKind::ALL[i]` was within the staleness window.
    fresh: u16,
    /// The VM's stuck-call gauges, folded.
    stuck: u64,
}

/// Parts of a VM's runs: each source's, then the events', then the bridge's (the order the
/// runs were written in when a VM was encoded whole, so the exposition is the same).
const PARTS: usize = SourceKind::ALL.len() + 2;
const EVENTS: usize = SourceKind::ALL.len();
const BRIDGE: usize = SourceKind::ALL.len() + 1;

/// What one part was encoded from.
#[derive(Debug, Clone)]
enum PartKey {
    /// A source's families: its snapshot (held, so its address is not reused while compared),
    /// whether it was fresh, and the drive labels libvirt's sample gives (see
    /// [`VmView::drive_label`]).
    Source { snap: Option<Arc<SourceSnapshot>>, fresh: bool, drives: u64 },
    /// The event and migration families: libvirt's and QMP's snapshots, their freshness.
    Events { libvirt: Option<Arc<SourceSnapshot>>, qmp: Option<Arc<SourceSnapshot>>, fresh: u16, drives: u64 },
    /// The bridge's families: every source's state, as [`Basis`] says.
    Bridge(Basis),
}

fn same_snap(a: &Option<Arc<SourceSnapshot>>, b: Option<&Arc<SourceSnapshot>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The inputs of part `part` of `vm` now, held. `basis` is the VM's, `drives` its drive labels.
fn part_key(part: usize, vm: &VmSnapshot, basis: Basis, drives: u64) -> PartKey {
    match part_key_shallow(part, vm, basis, drives) {
        Shallow::Source(snap, fresh, drives) => PartKey::Source { snap: snap.cloned(), fresh, drives },
        Shallow::Events(l, q, fresh, drives) => PartKey::Events { libvirt: l.cloned(), qmp: q.cloned(), fresh, drives },
        Shallow::Bridge(b) => PartKey::Bridge(b),
    }
}

impl PartKey {
    /// Whether a part encoded from `self` is still what `vm` gives (without cloning anything).
    fn holds(&self, part: usize, vm: &VmSnapshot, basis: Basis, drives: u64) -> bool {
        match (self, part_key_shallow(part, vm, basis, drives)) {
            (PartKey::Source { snap, fresh, drives: d }, Shallow::Source(s, f, d2)) => {
                same_snap(snap, s) && *fresh == f && *d == d2
            }
            (PartKey::Events { libvirt, qmp, fresh, drives: d }, Shallow::Events(l, q, f, d2)) => {
                same_snap(libvirt, l) && same_snap(qmp, q) && *fresh == f && *d == d2
            }
            (PartKey::Bridge(b), Shallow::Bridge(b2)) => *b == b2,
            _ => false,
        }
    }
}

/// [`PartKey`] by reference, for comparing.
enum Shallow<'a> {
    Source(Option<&'a Arc<SourceSnapshot>>, bool, u64),
    Events(Option<&'a Arc<SourceSnapshot>>, Option<&'a Arc<SourceSnapshot>>, u16, u64),
    Bridge(Basis),
}

fn part_key_shallow(part: usize, vm: &VmSnapshot, basis: Basis, drives: u64) -> Shallow<'_> {
    let fresh =
        |kind: SourceKind| SourceKind::ALL.iter().position(|k| *k == kind).is_some_and(|i| basis.fresh & (1 << i) != 0);
    match part {
        EVENTS => Shallow::Events(
            vm.sources.get(&SourceKind::Libvirt),
            vm.sources.get(&SourceKind::Qmp),
            u16::from(fresh(SourceKind::Libvirt)) | u16::from(fresh(SourceKind::Qmp)) << 1,
            drives,
        ),
        BRIDGE => Shallow::Bridge(basis),
        i => {
            let kind = SourceKind::ALL[i];
            let drives = if kind == SourceKind::Libvirt { 0 } else { drives };
            Shallow::Source(vm.sources.get(&kind), fresh(kind), drives)
        }
    }
}

/// Each part's runs, with what they were encoded from.
type Parts = Vec<(PartKey, Arc<Fragments>)>;

/// One VM's parts, each with what it was encoded from.
#[derive(Debug)]
struct Cached {
    /// The revision of the snapshot the newest part was encoded from.
    revision: u64,
    /// The VM's basis when every part was last found current: while a scrape finds the same,
    /// no part needs checking (a part's inputs change only with the snapshot or its freshness).
    basis: Basis,
    parts: Parts,
    /// The parts with runs, in part order: what a scrape copies (most VMs have two or three;
    /// skipping the others keeps a scrape from touching every part of every VM).
    live: Vec<Arc<Fragments>>,
}

/// The collector's pre-encoded VMs.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    vms: Mutex<HashMap<VmKey, Cached>>,
    gzip: Mutex<Option<BodyCached>>,
    plain: Mutex<Option<BodyCached>>,
    /// Parts encoded so far, by part (for the tests).
    encoded: [std::sync::atomic::AtomicU64; PARTS],
}

/// A whole body, and what it was made from: every concurrent scrape of an unchanged
/// exposition shares it (its storage, and its one charge to the reply budget).
#[derive(Debug)]
struct BodyCached {
    format: Format,
    fingerprint: u64,
    body: bytes::Bytes,
}

/// Figures of one rendering, for the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RenderStats {
    /// VMs whose runs were reused.
    pub reused: usize,
    /// VMs encoded during the scrape (new, changed without a publish, or data aged out).
    pub encoded: usize,
    /// Seconds spent finding each VM's runs (and encoding the ones that changed).
    pub gather_seconds: f64,
    /// Seconds spent writing headers and copying runs.
    pub concat_seconds: f64,
}

fn basis(vm: &VmSnapshot, now: f64, staleness: f64) -> Basis {
    let mut fresh = 0u16;
    let mut stuck = 0u64;
    for (i, kind) in SourceKind::ALL.iter().enumerate() {
        if let Some(s) = vm.sources.get(kind) {
            if s.last_success_at.is_some_and(|t| now - t <= staleness) {
                fresh |= 1 << i;
            }
            stuck = stuck.wrapping_mul(31).wrapping_add(s.stuck_calls.load(Ordering::Acquire)).wrapping_add(1);
        }
    }
    Basis { revision: vm.revision, fresh, stuck }
}

/// A fingerprint of the drive labels libvirt's fresh sample gives `vm` (0 without one): the
/// input other sources' families read through [`VmView::drive_label`].
fn drives(vm: &VmSnapshot, basis: Basis) -> u64 {
    use crate::source::libvirt::Libvirt;
    let libvirt = SourceKind::ALL.iter().position(|k| *k == SourceKind::Libvirt).unwrap_or(0);
    if basis.fresh & (1 << libvirt) == 0 {
        return 0;
    }
    let Some(l) = vm.sources.get(&SourceKind::Libvirt).and_then(|s| s.sample.as_deref()).and_then(Libvirt::sample)
    else {
        return 0;
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for b in &l.parsed.blocks {
        (&b.alias, b.label()).hash(&mut h);
    }
    h.finish() | 1
}

impl VmCollector {
    /// Encodes one part of a VM's runs.
    fn encode_part(&self, part: usize, vm: &VmSnapshot, now: f64) -> Fragments {
        let mut text = String::with_capacity(4 * 1024);
        let mut out = Out::new(&mut text, &self.selection, layout());
        let views = [VmView::new(vm, &self.node, now, self.staleness, self.options)];
        /// One source's families.
        struct Encode<'e, 'o, 'a, 'v> {
            out: &'e mut Out<'a>,
            views: &'o [VmView<'v>],
        }
        impl Visit for Encode<'_, '_, '_, '_> {
            fn visit<S: Source>(&mut self) {
                // Writing into a String cannot fail; the encoders return fmt::Result by convention.
                let _ = S::encode(self.out, self.views);
            }
        }
        match part {
            EVENTS => {
                let _ = events::encode(&mut out, &views);
            }
            BRIDGE => {
                let _ = bridge::encode_vm(&mut out, &views[0], self.options.health_detail);
            }
            i => crate::source::visit(SourceKind::ALL[i], &mut Encode { out: &mut out, views: &views }),
        }
        self.cache.encoded[part].fetch_add(1, Ordering::Relaxed);
        let runs = out.take_runs();
        Fragments::from_runs(text, runs)
    }

    /// `vm`'s parts: those of `old` whose inputs are unchanged, the others encoded now. Also
    /// whether any was encoded.
    fn encode_vm(&self, vm: &VmSnapshot, now: f64, old: Option<&[(PartKey, Arc<Fragments>)]>) -> (Cached, bool) {
        let b = basis(vm, now, self.staleness.as_secs_f64());
        let d = drives(vm, b);
        let mut any = false;
        let parts: Parts = (0..PARTS)
            .map(|p| match old.and_then(|o| o.get(p)) {
                Some((k, f)) if k.holds(p, vm, b, d) => (k.clone(), f.clone()),
                _ => {
                    any = true;
                    (part_key(p, vm, b, d), Arc::new(self.encode_part(p, vm, now)))
                }
            })
            .collect();
        let live = parts.iter().filter(|(_, f)| !f.spans.is_empty()).map(|(_, f)| f.clone()).collect();
        (Cached { revision: vm.revision, basis: b, parts, live }, any)
    }

    /// Encodes what changed of `vm` and keeps the result, unless what is kept is newer.
    fn refresh(&self, key: &VmKey, vm: &VmSnapshot) {
        let now = now_unix();
        let old = self.cache.vms.lock().unwrap_or_else(PoisonError::into_inner).get(key).map(|c| c.parts.clone());
        let (fresh, _) = self.encode_vm(vm, now, old.as_deref());
        let mut cache = self.cache.vms.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.get(key) {
            Some(c) if c.revision > fresh.revision => {}
            _ => {
                cache.insert(key.clone(), fresh);
            }
        }
    }

    /// The per-node families, encoded at every scrape.
    fn encode_node(&self, vms: usize) -> Fragments {
        let mut text = String::with_capacity(2048);
        let mut out = Out::new(&mut text, &self.selection, layout());
        let endpoints = self.store.endpoints();
        let node = bridge::NodeView {
            vms,
            endpoints: &endpoints,
            conflicts: self.store.conflict_count(),
            node: &self.node,
            build: &self.build,
            http: &self.http,
            launchers: self.store.launcher_counts(),
        };
        let _ = bridge::encode_node(&mut out, &node);
        let runs = out.take_runs();
        Fragments::from_runs(text, runs)
    }

    /// Every VM's runs for this scrape (reused, or encoded now: the parts whose inputs
    /// changed), part by part, and the node's.
    fn gather(&self) -> (Vec<Arc<Fragments>>, Fragments, u64, RenderStats) {
        let vms = self.store.vms();
        let now = now_unix();
        let staleness = self.staleness.as_secs_f64();
        let mut stats = RenderStats::default();
        // Per VM, its live parts from the cache, or (for a VM with a part to encode) its index.
        enum Entry {
            Live(Arc<Fragments>),
            Missing(usize),
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(vms.len() * 3);
        let mut fp = std::collections::hash_map::DefaultHasher::new();
        // VMs with a part to encode: their index and their old parts.
        let mut missing: Vec<(usize, Option<Parts>)> = Vec::new();
        {
            let cache = self.cache.vms.lock().unwrap_or_else(PoisonError::into_inner);
            for (i, vm) in vms.iter().enumerate() {
                let b = basis(vm, now, staleness);
                (b.revision, b.fresh, b.stuck).hash(&mut fp);
                let cached = cache.get(&vm.key());
                let current = |c: &Cached| {
                    c.basis == b || {
                        let d = drives(vm, b);
                        c.parts.iter().enumerate().all(|(p, (k, _))| k.holds(p, vm, b, d))
                    }
                };
                match cached {
                    Some(c) if current(c) => entries.extend(c.live.iter().map(|f| Entry::Live(f.clone()))),
                    _ => {
                        entries.push(Entry::Missing(missing.len()));
                        missing.push((i, cached.map(|c| c.parts.clone())));
                    }
                }
            }
        }
        stats.reused = vms.len() - missing.len();
        stats.encoded = missing.len();
        let mut encoded: Vec<Vec<Arc<Fragments>>> = Vec::with_capacity(missing.len());
        if !missing.is_empty() {
            let fresh: Vec<(usize, Cached)> = missing
                .into_iter()
                .map(|(i, old)| {
                    let (c, _) = self.encode_vm(&vms[i], now, old.as_deref());
                    encoded.push(c.live.clone());
                    (i, c)
                })
                .collect();
            let mut cache = self.cache.vms.lock().unwrap_or_else(PoisonError::into_inner);
            for (i, c) in fresh {
                let key = vms[i].key();
                let keep = cache.get(&key).is_some_and(|old| old.revision > c.revision);
                if !keep {
                    cache.insert(key, c);
                }
            }
        }
        let mut out: Vec<Arc<Fragments>> = Vec::with_capacity(entries.len() + encoded.len() * 3);
        for e in entries {
            match e {
                Entry::Live(f) => out.push(f),
                Entry::Missing(j) => out.extend(encoded[j].iter().cloned()),
            }
        }
        {
            // VMs gone from the store (or no longer exported) leave the cache.
            let mut cache = self.cache.vms.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() > vms.len() {
                let live: std::collections::HashSet<VmKey> = vms.iter().map(|v| v.key()).collect();
                cache.retain(|k, _| live.contains(k));
            }
        }
        let node = self.encode_node(vms.len());
        node.text.hash(&mut fp);
        (out, node, fp.finish(), stats)
    }

    /// Parts encoded so far, by part: each source's (in [`SourceKind::ALL`] order), the
    /// events', the bridge's.
    #[cfg(test)]
    pub(crate) fn parts_encoded(&self) -> Vec<u64> {
        self.cache.encoded.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    /// The whole exposition in `format`, as text.
    pub fn render(&self, format: Format) -> String {
        text(self.render_bytes(format))
    }

    /// The whole exposition in `format`, as the UTF-8 bytes `/metrics` serves.
    pub fn render_bytes(&self, format: Format) -> Vec<u8> {
        self.render_with_stats(format).0
    }

    /// The whole exposition in `format`, and what it took.
    pub fn render_with_stats(&self, format: Format) -> (Vec<u8>, RenderStats) {
        let t0 = std::time::Instant::now();
        let (vms, node, _, mut stats) = self.gather();
        let t1 = std::time::Instant::now();
        let body = concat(format, &self.selection, &vms, &node);
        stats.gather_seconds = (t1 - t0).as_secs_f64();
        stats.concat_seconds = t1.elapsed().as_secs_f64();
        (body, stats)
    }

    /// The exposition gzip-compressed at `level` (0–9), reused while nothing it was made from
    /// has changed. A new body is charged to the reply budget; [`OverBudget`] when it has no
    /// room.
    pub fn render_gzip(&self, format: Format, level: u32) -> Result<bytes::Bytes, OverBudget> {
        self.shared(&self.cache.gzip, format, |plain| gzip(&plain, level))
    }

    /// The exposition as [`render_bytes`](Self::render_bytes) makes it, as one body shared
    /// by every scrape while nothing it was made from has changed (as [`render_gzip`](Self::render_gzip)).
    pub fn render_shared(&self, format: Format) -> Result<bytes::Bytes, OverBudget> {
        self.shared(&self.cache.plain, format, |plain| plain)
    }

    fn shared(
        &self,
        slot: &Mutex<Option<BodyCached>>,
        format: Format,
        make: impl FnOnce(Vec<u8>) -> Vec<u8>,
    ) -> Result<bytes::Bytes, OverBudget> {
        let (vms, node, fingerprint, _) = self.gather();
        {
            let g = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(g) = g.as_ref().filter(|g| g.format == format && g.fingerprint == fingerprint) {
                return Ok(g.body.clone());
            }
        }
        let body = self.http.budget.charge(make(concat(format, &self.selection, &vms, &node)))?;
        *slot.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(BodyCached { format, fingerprint, body: body.clone() });
        Ok(body)
    }
}

/// The body as text (for callers that want a `String`; `/metrics` serves the bytes). Every
/// piece copied into it is a whole `str` (a header, or runs of whole sample lines), so it is
/// UTF-8, and the lossy branch is never taken.
fn text(body: Vec<u8>) -> String {
    String::from_utf8(body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// gzip of `data` at `level`.
pub fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc =
        flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 6 + 64), flate2::Compression::new(level));
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// Headers and runs, family by family. Every family's place in the body is known before a
/// byte is copied (its header's length plus the length of all its runs), so each VM's runs are
/// copied in the order they are stored, each to the end of its family's part so far: the
/// reads stream through one VM's text after another and the writes advance in one stream per
/// family, instead of reading every VM's text once per family. Within a family, samples keep
/// the order of `vms`, then the node's.
fn concat(
    format: Format,
    selection: &crate::model::metric::Selection,
    vms: &[Arc<Fragments>],
    node: &Fragments,
) -> Vec<u8> {
    let l = layout();
    let n = l.len();
    let selected: Vec<bool> = (0..n).map(|s| selection.includes(l.defs()[s])).collect();
    let all = || vms.iter().map(|f| f.as_ref()).chain(std::iter::once(node));
    // Pass 1: bytes of runs per family.
    let mut size = vec![0usize; n];
    for f in all() {
        for &(slot, a, b) in &f.spans {
            size[usize::from(slot)] += (b - a) as usize;
        }
    }
    // Where each selected family's header and runs go.
    let mut cursor = vec![0usize; n];
    let mut total = 0usize;
    for s in (0..n).filter(|&s| selected[s]) {
        total += l.header(s, format).len();
        cursor[s] = total;
        total += size[s];
    }
    let eof: &[u8] = if format == Format::OpenMetrics { b"# EOF\n" } else { b"" };
    let mut body = vec![0u8; total + eof.len()];
    for s in (0..n).filter(|&s| selected[s]) {
        let h = l.header(s, format).as_bytes();
        body[cursor[s] - h.len()..cursor[s]].copy_from_slice(h);
    }
    // Pass 2: every run, in storage order, to its family's place.
    for f in all() {
        let text = f.text.as_bytes();
        for &(slot, a, b) in &f.spans {
            let s = usize::from(slot);
            if !selected[s] {
                continue;
            }
            let run = &text[a as usize..b as usize];
            body[cursor[s]..cursor[s] + run.len()].copy_from_slice(run);
            cursor[s] += run.len();
        }
    }
    body[total..].copy_from_slice(eof);
    body
}

impl Observer for VmCollector {
    fn changed(&self, key: &VmKey, vm: &VmSnapshot) {
        self.refresh(key, vm);
    }

    fn removed(&self, key: &VmKey) {
        self.cache.vms.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::exposition::write_sample;
    use crate::model::metric::Kind;
    use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
    use prometheus_client::metrics::MetricType;

    /// One sample as `prometheus-client` writes it (the reference this module must match).
    fn reference(name: &str, kind: Kind, labels: &[(&str, &str)], value: f64) -> String {
        #[derive(Debug)]
        struct One(Kind, Vec<(String, String)>, f64);
        impl EncodeMetric for One {
            fn encode(&self, mut enc: MetricEncoder<'_>) -> std::fmt::Result {
                let labels: Vec<(&str, &str)> = self.1.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                match self.0 {
                    Kind::Counter => enc.encode_family(&labels)?.encode_counter::<NoLabelSet, f64, f64>(&self.2, None),
                    Kind::Gauge => enc.encode_family(&labels)?.encode_gauge(&self.2),
                    Kind::Info => enc.encode_info(&labels),
                }
            }
            fn metric_type(&self) -> MetricType {
                match self.0 {
                    Kind::Counter => MetricType::Counter,
                    Kind::Gauge => MetricType::Gauge,
                    Kind::Info => MetricType::Info,
                }
            }
        }
        let owned = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register(name, "h", One(kind, owned, value));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text.lines().find(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).unwrap_or_default()
    }

    #[test]
    fn sample_lines_match_prometheus_client_byte_for_byte() {
        let values = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            1e-7,
            123_456_789.0,
            1.7e308,
            4.9e-324,
            1e21,
            18_446_744_073_709_551_615.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1_764_700_000.123_456,
        ];
        let labels: [&[(&str, &str)]; 4] = [
            &[("namespace", "ns"), ("name", "vm")],
            &[("namespace", "a\"b"), ("name", "c\\d"), ("node", "line\nbreak")],
            &[("namespace", "ünï"), ("name", "C:\\"), ("node", "\"\"\\\\\n\n")],
            &[("node", "")],
        ];
        let mut checked = 0;
        for kind in [Kind::Counter, Kind::Gauge, Kind::Info] {
            let name = match kind {
                Kind::Counter => "x_total",
                Kind::Gauge => "x",
                Kind::Info => "x_info",
            };
            for l in labels {
                for v in values {
                    let mut mine = String::new();
                    write_sample(&mut mine, name, l, kind, v);
                    assert_eq!(mine, reference("x", kind, l, v), "{kind:?} {l:?} {v}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 3 * 4 * values.len());
    }

    #[test]
    fn headers_match_the_catalogue_in_both_formats() {
        let l = layout();
        assert_eq!(l.len(), catalogue::all().len());
        for (s, d) in catalogue::all().iter().enumerate() {
            let om = l.header(s, Format::OpenMetrics);
            let prom = l.header(s, Format::Prometheus);
            let exposed = d.exposed_name();
            assert!(prom.contains(&format!("# TYPE {exposed} ")), "{prom}");
            assert!(om.starts_with("# HELP "), "{om}");
            assert_eq!(om.contains("# UNIT "), d.unit.is_some(), "{om}");
            // The classic header is what the OpenMetrics one converts to.
            assert_eq!(crate::model::text::openmetrics_to_prometheus(om), prom);
        }
    }

    #[test]
    fn runs_written_out_of_order_are_gathered_by_slot() {
        let text = "c1\nb1\nc2\n".to_owned();
        let f = Fragments::from_runs(text, vec![(2, 0), (1, 3), (2, 6)]);
        assert_eq!(f.run(0), "");
        assert_eq!(f.run(1), "b1\n");
        assert_eq!(f.run(2), "c1\nc2\n");
        assert_eq!(f.run(3), "");
        assert_eq!(f.len(), 9);
    }

    /// The old way, as the reference: each selected family's header, then that family's runs
    /// of every VM in order, then the node's.
    fn family_by_family(format: Format, selection: &crate::model::metric::Selection, frags: &[&Fragments]) -> String {
        let l = layout();
        let mut out = String::new();
        for s in (0..l.len()).filter(|&s| selection.includes(l.defs()[s])) {
            out.push_str(l.header(s, format));
            for f in frags {
                out.push_str(f.run(s));
            }
        }
        if format == Format::OpenMetrics {
            out.push_str("# EOF\n");
        }
        out
    }

    #[test]
    fn runs_are_placed_family_by_family_in_vm_order_with_every_header() {
        let l = layout();
        let all = crate::model::metric::Selection::default();
        let selected: Vec<usize> = (0..l.len()).filter(|&s| all.includes(l.defs()[s])).collect();
        assert!(selected.len() > 10, "the default selection exports families");
        // Three VMs with runs in different families (one family shared by all, one VM with
        // none) and the node, each written in slot order as encoders write them.
        let frag = |tag: &str, slots: &[usize]| {
            let mut text = String::new();
            let mut runs = Vec::new();
            for &s in slots {
                runs.push((s as u16, text.len() as u32));
                text.push_str(&format!("{tag}_{s} 1\n{tag}_{s}b 2\n"));
            }
            Fragments::from_runs(text, runs)
        };
        let (a, b, c) = (selected[0], selected[3], selected[selected.len() - 1]);
        let vms = vec![Arc::new(frag("vm1", &[a, b, c])), Arc::new(frag("vm2", &[])), Arc::new(frag("vm3", &[a, c]))];
        let node = frag("node", &[b]);
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let got = String::from_utf8(concat(format, &all, &vms, &node)).expect("UTF-8");
            let want = family_by_family(format, &all, &[&vms[0], &vms[1], &vms[2], &node]);
            assert_eq!(got, want, "{format:?}");
            // Samples of a family are contiguous, VMs in order, the node last.
            let b_part = &got[got.find(&format!("vm1_{b} 1")).expect("vm1's run")..];
            assert!(b_part.starts_with(&format!("vm1_{b} 1\nvm1_{b}b 2\nnode_{b} 1\nnode_{b}b 2\n")), "{b_part}");
        }
        // A selection without some families leaves their headers and runs out.
        let none = crate::model::metric::Selection { groups: Vec::new(), ..crate::model::metric::Selection::default() };
        let body = String::from_utf8(concat(Format::Prometheus, &none, &vms, &node)).expect("UTF-8");
        assert_eq!(body, family_by_family(Format::Prometheus, &none, &[&vms[0], &vms[1], &vms[2], &node]));
    }

    #[test]
    fn gzip_round_trips() {
        let data = "kubevirt_vmi_vcpu_seconds_total{namespace=\"a\",name=\"b\"} 1\n".repeat(1000);
        let z = gzip(data.as_bytes(), 1);
        assert!(z.len() * 10 < data.len(), "{} of {}", z.len(), data.len());
        let mut back = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(z.as_slice()), &mut back).expect("gunzip");
        assert_eq!(back, data);
    }
}
