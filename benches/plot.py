#!/usr/bin/env python3
"""Plot scrape latency vs VM count (healthy phase) for vmbridge, prometheus-libvirt-exporter
and collectd from benches/scale.sh's results, plus vmbridge's synthetic scrape path (the
/metrics render alone, no HTTP, and a plain copy of the same body as its floor, if recorded).

Usage: plot.py --results results.jsonl [--synthetic scrape_path.json] --out docs/scrape-latency.png

Each system: median (marker and line) with the p99 as the upper end of an error bar (the
lower end is the fastest scrape), log-scale y. Needs matplotlib (`pip install matplotlib`
or Debian's python3-matplotlib).
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FixedFormatter, NullLocator  # noqa: E402

STYLE = {
    "vmbridge": ("vmbridge (real lab, over HTTP)", "tab:blue", "o"),
    "collectd": ("collectd virt + write_prometheus", "tab:green", "s"),
    "exporter": ("prometheus-libvirt-exporter", "tab:red", "^"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True)
    ap.add_argument("--synthetic")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="Scrape latency vs VM count (healthy, one libvirtd, 2 cores)")
    a = ap.parse_args()

    rows = [json.loads(x) for x in open(a.results) if x.strip()]
    healthy = sorted((r for r in rows if r["phase"] == "healthy"), key=lambda r: r["n"])
    timeout = rows[0]["timeout_s"] if rows else 10.0
    fig, ax = plt.subplots(figsize=(8.5, 6.2), dpi=120)
    xs_all = set()
    real_ns = sorted({r["n"] for r in healthy})
    disturbed = []
    synth_ns = []
    for system, (label, color, marker) in STYLE.items():
        pts = [(r["n"], r["systems"][system]) for r in healthy if system in r["systems"]]
        if not pts:
            continue
        xs = [n for n, _ in pts]
        p50 = [s["p50_s"] * 1e3 for _, s in pts]
        p99 = [s["p99_s"] * 1e3 for _, s in pts]
        lo = [s["min_s"] * 1e3 for _, s in pts]
        xs_all.update(xs)
        ax.errorbar(
            xs, p50,
            yerr=[[m - l for m, l in zip(p50, lo)], [h - m for m, h in zip(p50, p99)]],
            label=f"{label}: p50, bar = min…p99, dotted = p99", color=color, marker=marker, capsize=4, linewidth=1.8,
        )
        ax.plot(xs, p99, color=color, linestyle=":", linewidth=1)
        for r in healthy:
            x = r["systems"].get(system)
            if x and x["timeouts"] and r.get("foreign_domains_stopped"):
                disturbed.append((r["n"], x["p50_s"] * 1e3, color))
        for x, y in zip(xs, p50):
            txt = "timed out" if y >= timeout * 1e3 else (f"{y / 1e3:.2f} s" if y >= 1000 else f"{y:.3g} ms")
            ax.annotate(txt, (x, y), textcoords="offset points", xytext=(6, -12), fontsize=7, color=color)
    if a.synthetic:
        with open(a.synthetic) as f:
            synth = json.loads(f.read().strip().splitlines()[-1])
        for profile, ls in (("libvirt", "--"), ("libvirt+qga", "-.")):
            pts = sorted((x for x in synth.get("results") or []
                          if x.get("profile") == profile and x.get("scrape_p50_s") is not None), key=lambda x: x["n"])
            if not pts:
                continue
            xs = [x["n"] for x in pts]
            xs_all.update(xs)
            synth_ns = sorted(set(synth_ns) | set(xs))
            ax.plot(
                xs, [x["scrape_p50_s"] * 1e3 for x in pts], color="tab:blue", linestyle=ls, marker=".",
                alpha=0.6, label=f"vmbridge /metrics render alone, synthetic ({profile}): p50, no HTTP",
            )
            # The floor for the same body: a plain copy (newer scrape_path.json only).
            mc = [x for x in pts if x.get("memcpy_p50_s") is not None]
            if profile == "libvirt" and mc:
                ax.plot(
                    [x["n"] for x in mc], [x["memcpy_p50_s"] * 1e3 for x in mc], color="grey", linestyle=ls,
                    marker=".", alpha=0.6, label=f"memcpy of the same body, synthetic ({profile}): p50",
                )
    for x, y, color in disturbed:
        ax.annotate("†", (x, y), textcoords="offset points", xytext=(-12, 2), fontsize=12, color=color)
    if disturbed:
        fig.text(0.01, 0.005, "† another tenant's VM on the same libvirtd was SIGSTOPped during this phase; "
                 "the exporter collects every domain, so some of its scrapes timed out", fontsize=7)
    ax.axhline(timeout * 1e3, color="grey", linewidth=0.8, linestyle="--")
    ax.text(min(xs_all) if xs_all else 1, timeout * 1e3 * 1.1, f"per-scrape timeout {timeout:g} s", fontsize=7,
            color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted(xs_all)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FixedFormatter([f"{t:,}" for t in ticks]))
    ax.xaxis.set_minor_locator(NullLocator())
    xl = "VMs (real lab: " + ", ".join(str(n) for n in real_ns)
    if synth_ns:
        xl += "; synthetic: " + ", ".join(f"{n:,}" for n in synth_ns)
    ax.set_xlabel(xl + ")")
    ax.set_ylabel("scrape latency, ms (log)")
    ax.set_title(a.title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(a.out)
    print(f"plot.py: wrote {a.out}")


if __name__ == "__main__":
    main()
