"""The computed parts of scale.sh's report besides its tables: the series-per-VM-by-group
table, "what this run shows", the log evidence and "what went wrong", all derived
from the results so they cannot drift from the tables.

Imports report, stats, expo (constants only) and fmt. The main table and the goals are
scale_summary's.
"""

import json
import os
import re

from .expo import GROUP_COLS, SYSTEMS
from .fmt import fmt_bytes, fmt_lat, fmt_num, fmt_pv, fmt_t, opt
from .report import BENCHES, LABEL, dig, phase_name, synth_sizes
from .stats import back_count, back_while_stopped, load_range


def group_table(rows, runs, lbl, healthy, synth):
    """Series per VM by family group, per N and system (healthy phase), with the rules."""
    out = ["### Series per VM by family group (real lab, healthy)", ""]
    out.append("| N | system | " + " | ".join(GROUP_COLS) + " | total |")
    out.append("|---:|---|" + "---:|" * (len(GROUP_COLS) + 1))
    have = False
    for key in runs:
        n = key[1]
        r = healthy.get(key)
        if not r:
            continue
        entries = []
        for s in SYSTEMS:
            x = r["systems"].get(s)
            if not x:
                continue
            lab = x.get("series_lab_median")
            entries.append((LABEL[s], x.get("series_per_vm_by_group"), lab / n if lab is not None else None))
            if s == "vmbridge":
                entries.append(
                    ("KubeVirt virt-handler (same families)", x.get("kubevirt_series_per_vm_by_group"), None))
        for label, d, total in entries:
            if d is not None:
                have = True
                total = sum(d.values())
            cells = ["—"] * len(GROUP_COLS) if d is None else [fmt_pv(d.get(g, 0.0)) for g in GROUP_COLS]
            out.append(f"| {lbl(key)} | {label} | {' | '.join(cells)} | {opt(fmt_pv, total)} |")
    out.append("")
    if not have:
        out.append(
            "- Not recorded by this run (its results predate the per-group count); *total* is the series per "
            "VM of the table above."
        )
    out.append(
        "- Sample lines naming a lab VM (the exact lab name in vmbridge's `name`, the exporter's `domain`, "
        "collectd's `virt` label) in each system's last answered scrape of the healthy phase, divided by the "
        "lab VMs in that scrape. vmbridge: each family in the group its catalogue gives it (`vmbridge "
        "--list-metrics`); *bridge* is vmbridge's own per-VM health (`vmbridge_source_up`, breaker state, "
        "poll timestamps and counters), *other* a family the catalogue does not list. *KubeVirt virt-handler "
        "(same families)*: the part of vmbridge's series whose family virt-handler exports too (first column "
        "of `integration/fixtures/kubevirt-virt-handler-metrics.tsv`), i.e. what virt-handler would export "
        "for the same VMs from the same data (its dynamic `kubernetes_vmi_label_*` labels aside)."
    )
    out.append(
        "- The exporter and collectd have no groups; their families are put into vmbridge's by name "
        "(collectd's `type` label read with the name): a counter (`…_total`) whose name says cpu/vcpu, "
        "interface/`if_` or block/disk → *core*; otherwise a name saying memory, balloon, state, info/meta, "
        "maximum, a vCPU count (`virtual_cpus`, `vcpus`) or a block size (capacity, allocation, physical) → "
        "*hypervisor*; anything else → *other*."
    )
    def families(s):
        """(size label, {group: families}) of the last size whose healthy phase classified system s."""
        return next(((lbl(key), dig(healthy.get(key), "systems", s, "series_group_families")) for key in reversed(runs)
                     if dig(healthy.get(key), "systems", s, "series_group_families")), (None, None))

    parts = []
    for s, strip in (("exporter", "libvirt_domain_"), ("collectd", "collectd_virt_")):
        n, fams = families(s)
        if fams:
            parts.append(
                f"{LABEL[s]} at N={n} (`{strip}…`): " + "; ".join(
                    f"{g} " + ", ".join(f"`{f[len(strip):] if f.startswith(strip) else f}`" for f in fams[g])
                    for g in GROUP_COLS if fams.get(g))
            )
    n, fams = families("vmbridge")
    if fams and fams.get("other"):
        parts.append(f"vmbridge at N={n}, families its catalogue does not list: "
                     + ", ".join(f"`{f}`" for f in fams["other"]))
    if parts:
        out.append("- Families by group: " + ". ".join(parts) + ".")
    sns = synth_sizes(synth)
    if sns:
        parts = []
        for x in sorted(synth["results"], key=lambda r: r.get("profile", "")):
            d = x.get("series_per_vm_by_group")
            if x.get("n") == sns[-1] and isinstance(d, dict):
                parts.append(f"`{x.get('profile')}` " + ", ".join(
                    f"{g} {fmt_pv(d[g])}" for g in sorted(d, key=lambda g: (GROUP_COLS + (g,)).index(g)))
                    + f" (total {fmt_pv(sum(d.values()))})")
        if parts:
            out.append(f"- The synthetic store at {sns[-1]:,} VMs, same catalogue: " + "; ".join(parts) + ".")
    out.append("")
    return out


def machine_load(rows, runs, lbl, facts):
    """The machine's load over the run (the goals are the goals table's, scale_summary)."""
    out = []
    lo, hi = load_range(rows)
    if lo is not None:
        per = ", ".join(
            f"N={lbl((r['mode'], r['n']))} {fmt_num(r.get('loadavg_start'), 1)} → {fmt_num(r.get('loadavg_end'), 1)}"
            for r in rows if r["phase"] == "healthy")
        out.append(
            f"- Machine load during the run: 1-min load average {lo:.1f} to {hi:.1f} on "
            f"{facts.get('nproc', '?')} cores over all phases (start and end of each; healthy phases: {per}; "
            "every phase in the details table)."
        )
    return out


def findings(rows, runs, lbl, k, timeout, synth, healthy, facts, a):
    out = machine_load(rows, runs, lbl, facts)

    def hx(key, s):
        r = healthy.get(key)
        return r["systems"].get(s) if r else None

    def spv(x, n):
        return opt(lambda v: f"{v / n:.0f}", x.get("series_lab_median"))

    for key in runs:
        n = key[1]
        v, e, c = hx(key, "vmbridge"), hx(key, "exporter"), hx(key, "collectd")
        if not (v and e and c):
            continue
        out.append(
            f"- N={lbl(key)}, healthy: scrape p50 vmbridge {fmt_lat(v['p50_s'], timeout)}, collectd "
            f"{fmt_lat(c['p50_s'], timeout)}, exporter {fmt_lat(e['p50_s'], timeout)} "
            f"(p99 {fmt_lat(v['p99_s'], timeout)} / {fmt_lat(c['p99_s'], timeout)} / "
            f"{fmt_lat(e['p99_s'], timeout)}); series per VM {spv(v, n)} / {spv(c, n)} / {spv(e, n)}; "
            f"exporter scrapes OK {e['ok']}/{k}."
        )
    for key in runs:
        n = key[1]
        r, rb, ra = (next((x for x in rows if (x["mode"], x["n"]) == key and x["phase"] == ph), None)
                     for ph in ("stopped", "stopped-bg", "stopped-alone"))
        if not r:
            continue
        v, e, c = (r["systems"].get(s) for s in SYSTEMS)
        parts = [f"- N={lbl(key)}, one VM stopped:"]
        if v:
            parts.append(
                f"vmbridge answered {v['ok']}/{k} scrapes with {v['vms_min']}–{v['vms_max']} of {n} VMs "
                f"(p99 {fmt_lat(v['p99_s'], timeout)});"
            )
        if c:
            cb = rb["systems"].get("collectd") if rb else None
            def gone(x):
                if x is None or x["first_zero_after_stop_s"] is None:
                    return "kept data for every healthy VM" if x and x["first_below_all_after_stop_s"] is None else "lost some VMs but never all"
                t = f"had no VM at all from +{x['first_zero_after_stop_s']:.0f} s after the SIGSTOP"
                bw = back_while_stopped(x)
                if bw is not None:
                    t += f" until +{bw:.0f} s ({back_count(x)} of {n} VMs back while the VM was still stopped)"
                else:
                    t += " to the end of the phase"
                return t
            parts.append(
                f"collectd {gone(c)} ({c['ok']}/{k} scrapes answered, min {c['vms_min']} VMs)"
                + (f" — and without the exporter (control B) it {gone(cb)}" if cb else "")
                + ";"
            )
        if e:
            pr = r.get("exporter_probe")
            prs = ""
            if pr:
                if pr["status"] == "200":
                    prs = (f"; a single scrape with a {pr['timeout_s']:g} s timeout answered after "
                           f"{pr['latency_s']:.0f} s"
                           + (f" with {pr['vms']} of {n} VMs" if pr.get("vms") is not None else "")
                           + (", only after the SIGCONT" if pr["answered_after_sigcont"] else ", before the SIGCONT"))
                else:
                    prs = (f"; a single scrape with a {pr['timeout_s']:g} s timeout ended with {pr['status']} "
                           f"after {pr['latency_s']:.0f} s")
            parts.append(f"the exporter answered {e['ok']}/{k} scrapes ({e['timeouts']} timed out at {timeout:g} s){prs}.")
        out.append(" ".join(parts))
        if ra and v:
            va = ra["systems"]["vmbridge"]
            pool = r["libvirtd_pool"]
            out.append(
                f"- N={lbl(key)}, shared libvirtd: healthy VMs with vmbridge `source_up 1` (worst scrape): "
                f"{va['healthy_up_min']} of {n - 1} in control A, "
                + (f"{rb['systems']['vmbridge']['healthy_up_min']} of {n - 1} in control B, " if rb else "")
                + f"{v['healthy_up_min']} of {n - 1} with all three; libvirtd workers min free "
                f"{pool['min_free_workers']} of {pool['max_workers']}, max queue {pool['max_queue_depth']} "
                f"(control A: {ra['libvirtd_pool']['min_free_workers']} free, queue {ra['libvirtd_pool']['max_queue_depth']})."
            )
    for mode in dict.fromkeys(m for m, _ in runs):
        keys = [key for key in runs if key[0] == mode]
        big, small = healthy.get(keys[-1]), healthy.get(keys[0])
        d = keys[-1][1] - keys[0][1]
        if not (big and small and d > 0):
            continue
        parts = []
        for s_ in SYSTEMS:
            r1, r0 = big["rss_mb"].get(s_), small["rss_mb"].get(s_)
            c = big["cpu_s_per_min"].get(s_)
            if r1 is None or r0 is None or c is None:
                continue
            parts.append(f"{LABEL[s_]} {r1:.1f} MB ({(r1 - r0) * 1024 / d:+.0f} KiB per added VM from "
                         f"{keys[0][1]}), {c:.2f} CPU s/min")
        out.append(f"- Memory and CPU at {lbl(keys[-1])} VMs (healthy): " + "; ".join(parts) + ".")
    sns = synth_sizes(synth)
    if synth and sns:
        by = {(x.get("profile"), x.get("n")): x for x in synth["results"]}
        a1, a3 = by.get(("libvirt", sns[0])), by.get(("libvirt", sns[-1]))
        q3 = by.get(("libvirt+qga", sns[-1]))
        if a1 and a3:
            ratio = a3.get("scrape_over_memcpy_p50")
            out.append(
                f"- Synthetic, libvirt profile: scrape p50 {opt(fmt_t, a1.get('scrape_p50_s'))} at {sns[0]:,} VMs, "
                f"{opt(fmt_t, a3.get('scrape_p50_s'))} at {sns[-1]:,} (p99 {opt(fmt_t, a3.get('scrape_p99_s'))}"
                + (f"; a plain copy of the same {opt(fmt_bytes, a3.get('prometheus_bytes'))} body "
                   f"{opt(fmt_t, a3.get('memcpy_p50_s'))}, so a scrape costs {ratio:.1f}× a memcpy"
                   if ratio is not None else f"; {opt(fmt_bytes, a3.get('prometheus_bytes'))} per scrape")
                + (f"; encoding every VM from scratch {fmt_t(a3['cold_encode_p50_s'])}"
                   if a3.get("cold_encode_p50_s") is not None else "")
                + f"); {opt(lambda v: f'{v:.1f}', a3.get('series_per_vm'))} series and "
                f"{opt(fmt_bytes, a3.get('bytes_per_vm'))} per VM; RSS per VM "
                f"{opt(lambda v: f'{v:.1f} KiB', a3.get('rss_store_per_vm_kib'))} for the store"
                + (f", {a3['rss_store_and_encoded_per_vm_kib']:.1f} KiB with the encoded series"
                   if a3.get("rss_store_and_encoded_per_vm_kib") is not None else "")
                + (f"; a poll cycle's parse + publish {fmt_t(a3['poll_cycle_parse_publish_encode_cpu_p50_s'])} CPU "
                   f"with the encode, {opt(fmt_t, a3.get('poll_cycle_parse_publish_cpu_p50_s'))} without"
                   if a3.get("poll_cycle_parse_publish_encode_cpu_p50_s") is not None else "")
                + (f". With full guest-agent data: {opt(fmt_t, q3.get('scrape_p50_s'))}, "
                   f"{opt(fmt_bytes, q3.get('prometheus_bytes'))}." if q3 else ".")
            )
            bigkey = max(runs, key=lambda key: key[1])
            big = healthy.get(bigkey)
            vb = big["systems"].get("vmbridge") if big else None
            if vb and vb.get("bytes_median"):
                bytes_real = vb["bytes_median"] / bigkey[1]
                out.append(
                    f"- Real vs synthetic: at {lbl(bigkey)} real VMs vmbridge's body is {fmt_bytes(vb['bytes_median'])} "
                    f"({fmt_bytes(bytes_real)} per VM; the lab VMs have 1 vCPU, 1 disk, no guest agent) and the "
                    f"client-side scrape p50 {fmt_lat(vb['p50_s'], timeout)} includes HTTP, the Python client "
                    "and a loaded 2-core machine; the synthetic numbers are the scrape path alone (concatenating "
                    "pre-encoded runs, no HTTP)."
                )
    return out


LOCK_RE = re.compile(r"cannot acquire state change lock \(held by monitor=([A-Za-z]+)\)")


def log_path(logdir, key, stem, ext=".log"):
    """The log of one size: STEM-MODE-N.EXT, or STEM-N.EXT of a run from before modes (boot)."""
    mode, n = key
    for name in (f"{stem}-{mode}-{n}{ext}",) + ((f"{stem}-{n}{ext}",) if mode == "boot" else ()):
        if os.path.exists(os.path.join(logdir, name)):
            return os.path.join(logdir, name)
    return None


def log_evidence(logdir, runs, lbl):
    """Per size: libvirt job-lock timeouts in the exporter's and collectd's logs (with the call
    that held the lock) and vmbridge's warnings, as plain statements."""
    out = []
    if not logdir or not os.path.isdir(logdir):
        return out
    for key in runs:
        parts = []
        for system in ("exporter", "collectd"):
            path = log_path(logdir, key, system)
            if path is None:
                continue
            held = {}
            for ln in open(path, errors="replace"):
                m = LOCK_RE.search(ln)
                if m:
                    held[m.group(1)] = held.get(m.group(1), 0) + 1
            if held:
                parts.append(
                    f"{LABEL[system]} logged "
                    + ", ".join(f"{v}× `cannot acquire state change lock (held by monitor={k})`" for k, v in held.items())
                )
        path = log_path(logdir, key, "vmbridge", ".warn.log")
        if path:
            kinds = {}
            for ln in open(path, errors="replace"):
                m = re.search(r"(WARN|ERROR) \S+: (.*?)(?: uri=| error=|$)", ln)
                e = re.search(r"error=(.*)$", ln)
                kind = (m.group(2) if m else ln.strip()[:60]) + (
                    f": {re.sub(r'[0-9.]+s$', 'N s', e.group(1).strip())}" if e else "")
                kinds[kind] = kinds.get(kind, 0) + 1
            if kinds:
                parts.append("vmbridge warned " + "; ".join(f"{v}× `{k}`" for k, v in kinds.items()))
            else:
                parts.append("vmbridge logged no warning")
        if parts:
            out.append(f"N={lbl(key)}: " + "; ".join(parts) + ".")
    return out


def problems(rows, ready, runs, lbl, labs, facts, a):
    out = []
    for d in ready:
        for s, v in (d.get("ready_s") or {}).items():
            if isinstance(v, str):
                out.append(f"N={lbl((d['mode'], d['n']))}: {LABEL[s]} {v}; it was measured anyway.")
    for r in rows:
        key = (r["mode"], r["n"])
        for s in r.get("dead_at_start") or []:
            out.append(f"N={lbl(key)}, {phase_name(r)}: {LABEL[s]} was not running at the start of the phase.")
        for s in r.get("died") or []:
            out.append(f"N={lbl(key)}, {phase_name(r)}: {LABEL[s]} exited during the phase.")
    for key in runs:
        n = key[1]
        for r in rows:
            if (r["mode"], r["n"]) != key:
                continue
            for s, rec in r.get("recovery_s", {}).items():
                if rec is None:
                    out.append(
                        f"N={lbl(key)}, {phase_name(r)}: {LABEL[s]} did not report every lab VM within "
                        f"{a.recover_timeout:g} s after the SIGCONT; the next phase started anyway."
                    )
            v = r["systems"].get("vmbridge")
            if v and v["ok"] < r["k"]:
                out.append(f"N={lbl(key)}, {phase_name(r)}: vmbridge answered only {v['ok']}/{r['k']} scrapes.")
    for r in rows:
        if r.get("foreign_domains_stopped"):
            hit = [s for s, x in r["systems"].items() if x["timeouts"]]
            out.append(
                f"N={lbl((r['mode'], r['n']))}, {phase_name(r)}: another tenant's VM was SIGSTOPped during the phase "
                f"({', '.join(r['foreign_domains_stopped'])}, not ours)"
                + (f"; scrapes that timed out ({', '.join(LABEL[s] for s in hit)}) may be due to it" if hit else "")
                + "."
            )
            cmp_path = os.path.join(BENCHES, "results", "compare", "results.jsonl")
            if r["phase"] == "healthy" and "exporter" in hit and os.path.exists(cmp_path):
                for x in open(cmp_path):
                    c = json.loads(x) if x.strip() else None
                    if (c and c["n"] == r["n"] and r["mode"] == "boot" and c["phase"] == "healthy"
                            and "exporter" in c["systems"]):
                        e = c["systems"]["exporter"]
                        out[-1] = out[-1][:-1] + (
                            f"; the undisturbed `compare.sh` run below measured the exporter at {r['n']} VMs at p50 "
                            f"{fmt_lat(e['p50_s'], r['timeout_s'])}, p99 {fmt_lat(e['p99_s'], r['timeout_s'])}."
                        )
                        break
        elif r["phase"] == "healthy":
            for s, x in r["systems"].items():
                if x["timeouts"]:
                    out.append(
                        f"N={lbl((r['mode'], r['n']))}, healthy: {LABEL[s]} timed out in {x['timeouts']} of {r['k']} scrapes with no "
                        "SIGSTOPped VM seen on the machine."
                    )
    for key in runs:
        n = key[1]
        d = labs.get(key)
        if d and d["qemu_processes"] < n:
            out.append(f"N={lbl(key)}: only {d['qemu_processes']} lab QEMU processes were found.")
    out.append(
        f"p99 with {rows[0]['k']} scrapes per phase is the slowest scrape, not a stable tail estimate; "
        f"the phases were kept short (the whole run took {a.runtime})."
    )
    foreign = max((r.get("foreign_domains_max") or 0) for r in rows) if rows else 0
    out.append(
        ("The machine was shared with other test suites (" if foreign else "The machine was loaded by the lab itself (")
        + "load average "
        + (f"{load_range(rows)[0]:.1f}–{load_range(rows)[1]:.1f} on {facts.get('nproc', '?')} cores"
           if load_range(rows)[0] is not None else "not recorded")
        + (f", up to {foreign} other domains on the same `libvirtd`); latencies of all three systems include "
           "that noise, and the exporter's and libvirtd's numbers also include the other tenants' libvirt load."
           if foreign else
           ": each idle TCG guest costs about 1 % of a core); latencies of all three systems include it.")
    )
    out.append(
        "The three systems do not export the same metric set (the family-group table shows what each "
        "exports per VM; vmbridge also exports per-VM health series), so series and bytes compare cost, "
        "not coverage."
    )
    return out
