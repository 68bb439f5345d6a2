"""The top of scale.sh's report: the main table (one row per lab mode and size, in the order
run) and the goals table (issue 24 point 2), both computed from the results.

Imports report and fmt.
"""

from .fmt import fmt_bytes, fmt_lat, fmt_num, fmt_t, opt
from .report import LABEL, dig

ORDER = ("vmbridge", "exporter", "collectd")
CPU_SHARE_GOAL = 0.33  # vmbridge's CPU s/min at most this share of collectd's, at 250 and 500 VMs
SYNTH_P99_GOAL_S = 0.005  # synthetic 1,000 VMs (libvirt+qga): scrape p99 at most 5 ms
SYNTH_MEMCPY_GOAL = 2.0  # ... and scrape p50 at most 2× a memcpy of the same body


class Notes:
    """Numbered footnotes of a table: the same text gets the same number."""

    def __init__(self):
        self.texts = []

    def mark(self, text):
        if text not in self.texts:
            self.texts.append(text)
        return f"<sup>{self.texts.index(text) + 1}</sup>"

    def lines(self):
        return [f"{i + 1}. {t}" for i, t in enumerate(self.texts)]


def _cells(r, fn):
    """vmbridge / exporter / collectd: fn(system, its healthy result) or — if not scraped."""
    out = []
    for s in ORDER:
        x = (r or {}).get("systems", {}).get(s)
        v = fn(s, x) if x is not None else None
        out.append("—" if v is None else v)
    return " / ".join(out)


def _proc(r, key, fmt):
    """vmbridge / exporter / collectd of a per-process reading (CPU, RSS, threads)."""
    vals = (r or {}).get(key) or {}
    return " / ".join("—" if vals.get(s) is None else fmt(vals[s]) for s in ORDER)


def main_table(rows, ready, failed, runs, label, timeout):
    """One row per (mode, N): the healthy phase's numbers of each system and the time until
    each reported every lab VM; then the sizes the lab did not reach (`failed`)."""
    healthy = {k: next((r for r in rows if (r["mode"], r["n"]) == k and r["phase"] == "healthy"), None)
               for k in runs}
    ready_by = {}
    for d in ready:
        ready_by.setdefault((d["mode"], d["n"]), d)
    notes = Notes()
    out = ["### Summary: every lab size, healthy phase", ""]
    out.append(
        "Each cell: vmbridge / prometheus-libvirt-exporter / collectd virt (— where a system was not run or "
        "not scraped). Sizes in the order run."
    )
    out.append("")
    out.append(
        "| VMs (mode) | CPU s/min | vmbridge ÷ collectd CPU | scrape p50 plain | scrape p99 plain "
        "| scrape p50 gzip | scrape p99 gzip | bytes on the wire plain | bytes on the wire gzip | RSS MB "
        "| threads | vmbridge libvirt calls per VM per cycle | series per VM | every VM reported after |"
    )
    out.append("|---|---|---:|---|---|---|---|---|---|---|---|---:|---|---|")
    for key in runs:
        mode, n = key
        r = healthy.get(key)
        d = ready_by.get(key)
        vms = label(key)
        why = (r or d or {}).get("not_run") or {}
        if why:
            vms += notes.mark(" ".join(dict.fromkeys(why.values())) + ".")
        if r is not None and "threads" not in r:
            vms += notes.mark("These results predate the gzip scrapes, the thread counts and the libvirt call "
                              "count: those cells are empty.")
        if r is None:
            out.append(f"| {vms} | no healthy phase recorded |" + " |" * 12)
            continue
        cpu = r.get("cpu_s_per_min") or {}
        ratio = (f"{cpu['vmbridge'] / cpu['collectd']:.2f}×"
                 if cpu.get("vmbridge") is not None and cpu.get("collectd") else "—")

        def gz_bytes(s, x):
            z = x.get("gzip")
            if not z:
                return None
            b = fmt_bytes(z.get("bytes_median"))
            return b + (notes.mark(f"{LABEL[s]} did not compress (no `Content-Encoding: gzip` in its answer).")
                        if z.get("ok") and not z.get("compressed") else "")

        lat = lambda v: fmt_lat(v, timeout)  # noqa: E731

        def answered(field, variant):
            """The latency, marked when some scrapes failed (their latency is the failure's)."""
            def cell(s, x):
                y = x if variant == "plain" else x.get("gzip")
                if not y:
                    return None
                v = lat(y[field])
                if y["ok"] < r["k"]:
                    bad = ", ".join(f"{c}× {st}" for st, c in y["statuses"].items() if st != "200")
                    v += notes.mark(f"{label(key)}, {LABEL[s]}, {variant}: {y['ok']} of {r['k']} scrapes "
                                    f"answered ({bad}); a failed scrape counts with the time it took to fail, "
                                    f"a timed-out one as {timeout:g} s.")
                return v
            return cell

        calls = dig(r, "libvirt_calls", "per_vm_per_cycle")
        callc = ("—" if "libvirt_calls" not in r else fmt_num(calls)) + notes.mark(
            "prometheus-libvirt-exporter and collectd count no libvirt calls (not instrumented); vmbridge: "
            "increase of `vmbridge_endpoint_calls_total` (all label sets) from its first to its last scrape "
            "of the phase ÷ the domains it polls (`vmbridge_endpoint_domains`, median of the phase: the lab's plus any other "
            "tenant's on the same libvirtd) ÷ poll cycles in between. The counter grows once per cycle, so "
            "over the phase's few cycles the quotient can be off by one cycle's calls; at a few VMs the "
            "per-daemon calls (listing) weigh in.")
        if calls is None and dig(r, "libvirt_calls", "why"):
            callc += notes.mark(f"Not computed: {r['libvirt_calls']['why']}.")
        if d is None:
            rd = "not recorded" + notes.mark("The results of this size predate the readiness record.")
        else:
            parts = []
            for s in ORDER:
                v = (d.get("ready_s") or {}).get(s)
                if isinstance(v, (int, float)):
                    parts.append(f"{v:.0f} s" if v >= 10 else f"{v:.1f} s")
                elif v:
                    parts.append("not ready" + notes.mark(f"{label(key)}, {LABEL[s]}: {v}."))
                else:
                    parts.append("—")
            rd = " / ".join(parts)
        out.append(
            f"| {vms} | {_proc(r, 'cpu_s_per_min', fmt_num)} | {ratio} "
            f"| {_cells(r, answered('p50_s', 'plain'))} | {_cells(r, answered('p99_s', 'plain'))} "
            f"| {_cells(r, answered('p50_s', 'gzip'))} | {_cells(r, answered('p99_s', 'gzip'))} "
            f"| {_cells(r, lambda s, x: fmt_bytes(x.get('bytes_median')))} | {_cells(r, gz_bytes)} "
            f"| {_proc(r, 'rss_mb', lambda v: f'{v:.1f}')} | {_proc(r, 'threads', lambda v: f'{v:d}')} "
            f"| {callc} "
            f"| {_cells(r, lambda s, x: opt(lambda v: f'{v / n:.0f}', x.get('series_lab_median')))} "
            f"| {rd} |"
        )
    for d in failed:
        out.append(f"| {d['n']} {d['mode']} | lab not reached: {d['why']} |" + " |" * 12)
    out.append("")
    k = rows[0]["k"] if rows else "?"
    out.append(
        f"- Healthy phase: each system scraped {k} times plain and {k} times with `Accept-Encoding: gzip` (what "
        "Prometheus sends), interleaved; p99 is nearest-rank (the slowest). *Bytes on the wire*: the body as "
        "received (compressed if the system compressed), median. CPU s/min, RSS and threads (`Threads:` of "
        "/proc/PID/status) at the end of the healthy phase. *Series per VM*: sample lines naming a lab VM in a "
        "plain scrape ÷ N (median). *Every VM reported after*: seconds from the system's start until one scrape "
        "had data for every lab VM (vmbridge: also `vmbridge_source_up{source=\"libvirt\"} 1` for each)."
    )
    out.append("")
    out.extend(notes.lines())
    if notes.texts:
        out.append("")
    return out


def _ok(cond):
    return "**met**" if cond else "**missed**"


def goals_table(rows, runs, failed, label, synth, timeout):
    """Issue 24 point 2's goals, each met, missed or not measured (why), with the numbers."""
    healthy = {k: next((r for r in rows if (r["mode"], r["n"]) == k and r["phase"] == "healthy"), None)
               for k in runs}
    G = []  # (goal, VMs, measured, result)
    ga = f"(a) vmbridge CPU s/min ≤ {CPU_SHARE_GOAL:g}× collectd's"
    for target in (250, 500):
        keys = [k for k in runs if k[1] == target]
        for d in failed:
            if d["n"] == target:
                G.append((ga, f"{target} {d['mode']}", "—", f"not measured (the lab did not reach it: {d['why']})"))
        if not keys and not any(d["n"] == target for d in failed):
            G.append((ga, str(target), "—", f"not measured (no {target}-VM lab in this run)"))
        for key in keys:
            r = healthy.get(key)
            cpu = (r or {}).get("cpu_s_per_min") or {}
            v, c = cpu.get("vmbridge"), cpu.get("collectd")
            if r is None:
                G.append((ga, label(key), "—", "not measured (no healthy phase)"))
            elif "collectd" not in (r.get("running") or []):
                why = (r.get("not_run") or {}).get("collectd", "collectd was not run")
                G.append((ga, label(key), f"vmbridge {fmt_num(v)}", f"not measured ({why})"))
            elif v is None or not c:
                G.append((ga, label(key), f"vmbridge {fmt_num(v)}, collectd {fmt_num(c)}",
                          "not measured (a CPU reading is missing or zero)"))
            else:
                G.append((ga, label(key), f"vmbridge {v:.2f}, collectd {c:.2f} CPU s/min: {v / c:.2f}×",
                          _ok(v <= CPU_SHARE_GOAL * c)))
    gg = "(a) vmbridge CPU grows no faster than the VM count, 250 → 500"
    modes = [m for m in dict.fromkeys(m for m, _ in runs) if (m, 250) in healthy and (m, 500) in healthy]
    if not modes:
        G.append((gg, "250 → 500", "—", "not measured (no mode ran both 250 and 500 VMs)"))
    for m in modes:
        v0 = dig(healthy[(m, 250)], "cpu_s_per_min", "vmbridge")
        v1 = dig(healthy[(m, 500)], "cpu_s_per_min", "vmbridge")
        if not v0 or v1 is None:
            G.append((gg, f"250 → 500 {m}", "—", "not measured (CPU reading missing)"))
        else:
            g = (v1 / v0) / 2.0
            G.append((gg, f"250 → 500 {m}", f"{v0:.2f} → {v1:.2f} CPU s/min: ×{v1 / v0:.2f} for ×2 VMs "
                      f"(CPU ratio ÷ VM ratio {g:.2f})", _ok(g <= 1.0)))
    gb = "(b) vmbridge gzip scrape p99 ≤ collectd's plain p99"
    have_b = False
    for key in runs:
        r = healthy.get(key)
        vb, cd = dig(r, "systems", "vmbridge"), dig(r, "systems", "collectd")
        if not cd:
            continue
        have_b = True
        if not vb or not vb.get("gzip"):
            G.append((gb, label(key), f"collectd plain p99 {fmt_lat(cd['p99_s'], timeout)}",
                      "not measured (no gzip scrapes in these results)"))
            continue
        z = vb["gzip"]["p99_s"]
        G.append((gb, label(key), f"{fmt_lat(z, timeout)} vs {fmt_lat(cd['p99_s'], timeout)}",
                  _ok(z <= cd["p99_s"])))
    if not have_b:
        G.append((gb, "—", "—", "not measured (collectd ran at no size)"))
    for key in runs:
        r = healthy.get(key)
        m = dig(r, "rss_mb", "vmbridge")
        n = key[1]
        goal = 20 + 50 * n / 1024
        G.append(("(c) vmbridge RSS ≤ 20 MB + 50 KiB per VM", label(key),
                  f"{fmt_num(m, 1)} MB (goal {goal:.1f} MB)",
                  "not measured (no healthy phase)" if m is None else _ok(m <= goal)))
    x = next((x for x in (synth or {}).get("results") or []
              if x.get("profile") == "libvirt+qga" and x.get("n") == 1000), None)
    gd = "(d) synthetic 1,000 VMs, libvirt+qga"
    if x is None:
        G.append((gd + ": scrape p99 ≤ 5 ms and p50 ≤ 2× memcpy", "1,000", "—",
                  "not measured (no scrape_path.json with a libvirt+qga row at 1,000 VMs)"))
    else:
        p99, p50, mc = x.get("scrape_p99_s"), x.get("scrape_p50_s"), x.get("memcpy_p50_s")
        G.append((gd + ": scrape p99 ≤ 5 ms", "1,000", fmt_t(p99),
                  "not measured" if p99 is None else _ok(p99 <= SYNTH_P99_GOAL_S)))
        G.append((gd + ": scrape p50 ≤ 2× memcpy", "1,000",
                  f"{fmt_t(p50)} vs memcpy {fmt_t(mc)}" + (f": {p50 / mc:.1f}×" if p50 and mc else ""),
                  "not measured" if not (p50 and mc) else _ok(p50 <= SYNTH_MEMCPY_GOAL * mc)))
    out = ["### Goals (issue 24 point 2)", "", "| goal | VMs | measured | result |", "|---|---|---|---|"]
    out.extend(f"| {g} | {w} | {m} | {v} |" for g, w, m, v in G)
    out.append("")
    out.append(
        "- CPU and RSS from the healthy phase (vmbridge and collectd both poll every "
        f"{rows[0].get('poll_s') or 5:g} s; MB = MiB, from `VmRSS`); scrape p99 is the slowest of the healthy "
        "phase's scrapes; the synthetic row is `cargo bench --bench scrape_path` (the scrape path alone, no "
        "HTTP), its `libvirt+qga` profile."
    )
    out.append("")
    return out
