#!/usr/bin/env python3
"""Plot scrape latency p99 vs VM count (healthy phase) for vmbridge (plain and gzip),
prometheus-libvirt-exporter and collectd from benches/scale.sh's results, plus vmbridge's
synthetic scrape path (the /metrics render alone, no HTTP, and a plain copy of the same body
as its floor, if recorded).

Usage: plot.py --results results.jsonl [--synthetic scrape_path.json] --out docs/scrape-latency.png

One colour per system (vmbridge's gzip scrapes dashed), one marker per lab mode (boot,
halted, paused; results without a mode are boot), one line per system and mode through its
sizes; log-log. Needs matplotlib (`pip install matplotlib` or Debian's python3-matplotlib).
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FixedFormatter, NullLocator  # noqa: E402

# (system, variant): label, colour, line style
STYLE = {
    ("vmbridge", "plain"): ("vmbridge", "tab:blue", "-"),
    ("vmbridge", "gzip"): ("vmbridge, Accept-Encoding: gzip", "tab:cyan", "--"),
    ("collectd", "plain"): ("collectd virt + write_prometheus", "tab:green", "-"),
    ("exporter", "plain"): ("prometheus-libvirt-exporter", "tab:red", "-"),
}
MARKER = {"boot": "o", "halted": "s", "paused": "^"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True)
    ap.add_argument("--synthetic")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="Scrape latency p99 vs VM count (healthy, one libvirtd, 2 cores)")
    a = ap.parse_args()

    rows = [json.loads(x) for x in open(a.results) if x.strip()]
    healthy = [r for r in rows if r["phase"] == "healthy"]
    for r in healthy:
        r["mode"] = r.get("mode") or "boot"
    modes = list(dict.fromkeys(r["mode"] for r in healthy))
    timeout = healthy[0]["timeout_s"] if healthy else 10.0
    fig, ax = plt.subplots(figsize=(8.5, 6.2), dpi=120)
    xs_all = set()
    real_ns = sorted({r["n"] for r in healthy})
    disturbed = []
    synth_ns = []
    for (system, variant), (label, color, ls) in STYLE.items():
        for mode in modes:
            pts = []
            for r in sorted((r for r in healthy if r["mode"] == mode), key=lambda r: r["n"]):
                x = r["systems"].get(system)
                if x is not None and variant == "gzip":
                    x = x.get("gzip")
                if x is not None:
                    pts.append((r["n"], x["p99_s"] * 1e3))
                    if variant == "plain" and x["timeouts"] and r.get("foreign_domains_stopped"):
                        disturbed.append((r["n"], x["p99_s"] * 1e3, color))
            if not pts:
                continue
            xs, ys = [n for n, _ in pts], [y for _, y in pts]
            xs_all.update(xs)
            ax.plot(xs, ys, color=color, linestyle=ls, marker=MARKER.get(mode, "x"), linewidth=1.6,
                    label=f"{label} ({mode})")
            for x, y in pts:
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
                xs, [x.get("scrape_p99_s", x["scrape_p50_s"]) * 1e3 for x in pts], color="tab:blue", linestyle=ls,
                marker=".", alpha=0.6, label=f"vmbridge /metrics render alone, synthetic ({profile}): p99, no HTTP",
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
    xl_modes = "" if modes == ["boot"] else " (marker: lab mode " + ", ".join(
        f"{m} {MARKER.get(m, 'x')}" for m in modes) + ")"
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
    ax.set_xlabel(xl + ")" + xl_modes)
    ax.set_ylabel("scrape latency p99, ms (log)")
    ax.set_title(a.title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(a.out)
    print(f"plot.py: wrote {a.out}")


if __name__ == "__main__":
    main()
