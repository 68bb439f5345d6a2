//! The exposition writer's primitives: where an encoder writes ([`Out`]), one family at a
//! time ([`family`], [`Family`]), sample lines byte for byte as `prometheus-client` writes
//! them, and the slot [`Layout`] the collector builds from the whole catalogue.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::metric::{Kind, MetricDef, Scope, Selection, Unit};
use super::text::Format;

/// A VM's labels as every per-VM family writes them, and how absent values are written.
#[derive(Debug, Clone, Copy)]
pub struct VmLabels<'a> {
    /// `namespace`.
    pub namespace: &'a str,
    /// `name`.
    pub name: &'a str,
    /// `node`.
    pub node: &'a str,
    /// `export_all_known`: absent per-VM values are written as NaN.
    pub all_known: bool,
}

/// Every family's slot (its index in the catalogue the layout was built from), sample name
/// and headers. Built once by the collector from the whole catalogue.
pub struct Layout {
    defs: &'static [&'static MetricDef],
    slots: HashMap<&'static str, u16>,
    names: Vec<String>,
    om_headers: Vec<String>,
    prom_headers: Vec<String>,
}

impl Layout {
    /// The layout of `defs`, in that order.
    pub fn build(defs: &'static [&'static MetricDef]) -> Layout {
        let mut l = Layout {
            defs,
            slots: HashMap::with_capacity(defs.len()),
            names: Vec::with_capacity(defs.len()),
            om_headers: Vec::with_capacity(defs.len()),
            prom_headers: Vec::with_capacity(defs.len()),
        };
        for (i, d) in defs.iter().enumerate() {
            let dup = l.slots.insert(d.name, i as u16);
            debug_assert!(dup.is_none(), "{} twice in the catalogue", d.name);
            l.names.push(d.exposed_name());
            // OpenMetrics: the family is named without `_total` / `_info`, with its unit.
            let unit = d.unit.map(|u| match u {
                Unit::Seconds => "seconds",
                Unit::Bytes => "bytes",
            });
            let base = match unit {
                Some(u) => format!("{}_{u}", d.name),
                None => d.name.to_owned(),
            };
            let (om_ty, prom_name, prom_ty) = match d.kind {
                Kind::Counter => ("counter", format!("{base}_total"), "counter"),
                Kind::Gauge => ("gauge", base.clone(), "gauge"),
                Kind::Info => ("info", format!("{base}_info"), "gauge"),
            };
            let mut om = format!("# HELP {base} {}\n# TYPE {base} {om_ty}\n", d.help);
            if let Some(u) = unit {
                let _ = writeln!(om, "# UNIT {base} {u}");
            }
            l.om_headers.push(om);
            l.prom_headers.push(format!("# HELP {prom_name} {}\n# TYPE {prom_name} {prom_ty}\n", d.help));
        }
        l
    }

    /// Every family, by slot.
    pub fn defs(&self) -> &'static [&'static MetricDef] {
        self.defs
    }

    /// Whether it has no family.
    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// Number of families.
    pub fn len(&self) -> usize {
        self.defs.len()
    }

    /// `def`'s slot.
    pub fn slot(&self, def: &'static MetricDef) -> Option<u16> {
        self.slots.get(def.name).copied()
    }

    /// The name samples of `slot` carry.
    pub fn sample_name(&self, slot: u16) -> &str {
        &self.names[usize::from(slot)]
    }

    /// The `# HELP`/`# TYPE` (and `# UNIT`) lines of `slot` in `format`.
    pub fn header(&self, slot: usize, format: Format) -> &str {
        match format {
            Format::OpenMetrics => &self.om_headers[slot],
            Format::Prometheus => &self.prom_headers[slot],
        }
    }
}

/// Appends one sample line, byte for byte as `prometheus-client` 0.25.2 writes it: the name,
/// `{labels}` (values escaped: `\\`, `"`, newline), a space, the value (`dtoa` for counters
/// and gauges, `1` for info), a newline.
pub fn write_sample(buf: &mut String, name: &str, labels: &[(&str, &str)], kind: Kind, value: f64) {
    buf.push_str(name);
    buf.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        buf.push_str(k);
        buf.push_str("=\"");
        push_escaped(buf, v);
        buf.push('"');
    }
    buf.push_str("} ");
    match kind {
        Kind::Info => buf.push('1'),
        Kind::Counter | Kind::Gauge => buf.push_str(dtoa::Buffer::new().format(value)),
    }
    buf.push('\n');
}

fn push_escaped(buf: &mut String, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        buf.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '"' => buf.push_str("\\\""),
            '\n' => buf.push_str("\\n"),
            c => buf.push(c),
        }
    }
}

/// Where the encoders write: sample lines, one run per family, and which families the
/// exposition is to contain. The headers (`# HELP`, `# TYPE`, `# UNIT`) are not written here:
/// the collector adds them once per family at scrape time, in the format the scraper asked for.
pub struct Out<'a> {
    buf: &'a mut String,
    selection: &'a Selection,
    layout: &'a Layout,
    /// (catalogue slot, start offset in `buf`) of each family run, in the order written.
    runs: Vec<(u16, u32)>,
}

impl<'a> Out<'a> {
    /// Writing into `buf`, the families of `selection`, slotted by `layout`.
    pub fn new(buf: &'a mut String, selection: &'a Selection, layout: &'a Layout) -> Self {
        Out { buf, selection, layout, runs: Vec::with_capacity(layout.len()) }
    }

    /// Takes the (slot, start offset) of each family run written so far, in order.
    pub fn take_runs(&mut self) -> Vec<(u16, u32)> {
        std::mem::take(&mut self.runs)
    }
}

/// A family being written (`buf` is `None` for a family the selection leaves out: its
/// samples are dropped).
pub struct Family<'s> {
    buf: Option<&'s mut String>,
    def: &'static MetricDef,
    /// The name its samples carry (`…_total`, `…_info`, unit suffix).
    name: &'s str,
}

impl Family<'_> {
    /// Writes one sample. `labels` must follow `def.all_labels()` (checked in debug builds).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> std::fmt::Result {
        debug_assert!(
            labels.iter().map(|(k, _)| *k).eq(self.def.all_labels()),
            "labels of {} do not match the catalogue",
            self.def.name
        );
        let Some(buf) = self.buf.as_deref_mut() else { return Ok(()) };
        write_sample(buf, self.name, labels, self.def.kind, value);
        Ok(())
    }

    /// Writes one per-VM sample: the VM's labels, then `extra`, when `value` is present.
    pub fn vm_sample(&mut self, vm: &VmLabels<'_>, extra: &[(&str, &str)], value: Option<f64>) -> std::fmt::Result {
        if self.buf.is_none() {
            return Ok(());
        }
        // With `export_all_known`, an absent value of a family without extra labels is written
        // as NaN ("no value"), never as zero.
        let value = match value {
            Some(v) => v,
            None if vm.all_known && extra.is_empty() && self.def.kind != Kind::Info => f64::NAN,
            None => return Ok(()),
        };
        let mut labels: [(&str, &str); 8] = [("", ""); 8];
        let mut n = 0;
        for l in [("namespace", vm.namespace), ("name", vm.name)] {
            labels[n] = l;
            n += 1;
        }
        if self.def.scope == Scope::Vm {
            labels[n] = ("node", vm.node);
            n += 1;
        }
        if n + extra.len() > labels.len() {
            let mut all: Vec<(&str, &str)> = labels[..n].to_vec();
            all.extend_from_slice(extra);
            return self.sample(&all, value);
        }
        labels[n..n + extra.len()].copy_from_slice(extra);
        self.sample(&labels[..n + extra.len()], value)
    }
}

/// Starts a family from its catalogue entry (nothing is written for one the selection leaves
/// out).
pub fn family<'s>(out: &'s mut Out<'_>, def: &'static MetricDef) -> Result<Family<'s>, std::fmt::Error> {
    let layout = out.layout;
    let Some(slot) = layout.slot(def) else {
        debug_assert!(false, "{} is not in the catalogue", def.name);
        return Ok(Family { buf: None, def, name: "" });
    };
    if !out.selection.includes(def) {
        return Ok(Family { buf: None, def, name: "" });
    }
    out.runs.push((slot, out.buf.len() as u32));
    Ok(Family { buf: Some(&mut *out.buf), def, name: layout.sample_name(slot) })
}

/// Nanoseconds to seconds.
pub fn ns(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64 / 1e9)
}

/// KiB to bytes.
pub fn kib(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64 * 1024.0)
}

/// A plain count or byte value.
pub fn num(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}
