#!/usr/bin/env python3
"""Measurement and report helper for benches/scale.sh (python3 stdlib; the plot needs matplotlib).

Three systems on the same real lab, side by side:
  vmbridge   (background polling, scrape served from memory)
  exporter   prometheus-libvirt-exporter (Debian; all libvirt work inside the scrape)
  collectd   collectd's virt plugin + write_prometheus (background reads, cache served)

Subcommands (called by scale.sh; see `scale.py SUBCOMMAND --help`):
  collectd-conf   write a minimal collectd.conf (virt + write_prometheus on a loopback port)
  wait-ready      wait until the given systems report every lab VM (with --out: record the
                  seconds from each system's start, or what it did if not within --timeout)
  phase           one measured phase; appends one JSON line to --out (healthy: each system
                  scraped plain and with Accept-Encoding: gzip; with --catalogue also each
                  system's series per VM by family group, from its last scrape)
  facts           machine facts as JSON
  render          write the scale section of docs/benchmarks.md (between markers)
  splice-compare  re-render benches/compare.sh's section from saved results into its block

Every system is given as --sys NAME=HOST:PORT:PID (repeatable); --scrape lists the systems
scraped in the phase (the others keep running and only their CPU and RSS are read).
Helpers (HTTP client, vmbridge/exporter parsers, /proc readers, libvirtd pool sampler,
percentiles, formatting) come from compare.py, so both benchmarks measure the same way.
"""

# The code lives in benches/vmb_bench/ (modules by responsibility, see benches/README.md);
# this file is the command line only and may import any of them.

import argparse
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in benches/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmb_bench import report, scale_measure, scale_report  # noqa: E402
from vmb_bench.fmt import fail  # noqa: E402


def die(msg):
    fail("scale.py", msg)


def cmd_collectd_conf(a):
    os.makedirs(a.workdir, exist_ok=True)
    with open(a.out, "w") as f:
        f.write(report.collectd_conf_text(a.workdir, a.port, a.interval))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("collectd-conf")
    p.add_argument("--workdir", required=True)
    p.add_argument("--port", required=True)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--out", required=True)

    p = sub.add_parser("wait-ready")
    p.add_argument("--sys", action="append", required=True)
    p.add_argument("--prefix", default="scale-")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--timeout", type=float, default=240)
    p.add_argument("--mode", default="boot", choices=["boot", "halted", "paused"],
                   help="how the lab's domains run (VMB_LAB_MODE of integration/lab.sh)")
    p.add_argument("--not-run", help="why the systems of the three not given with --sys were not started "
                   "at this size (recorded with the results)")
    p.add_argument("--out", help="append the seconds until each system was ready (or what it did) as one "
                   "JSON line (phase \"ready\") to this file")

    p = sub.add_parser("phase")
    p.add_argument("--sys", action="append", required=True)
    p.add_argument("--scrape", required=True)
    p.add_argument("--prefix", default="scale-")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--phase", choices=["healthy", "stopped-alone", "stopped-bg", "stopped"], required=True)
    p.add_argument("--victim")
    p.add_argument("--lab", required=True)
    p.add_argument("--libvirtd-pid", type=int, default=0)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--stop-wait", type=float, default=15.0)
    p.add_argument("--recover-timeout", type=float, default=180.0)
    p.add_argument("--probe-timeout", type=float, default=120.0)
    p.add_argument("--catalogue", help="healthy phase: `vmbridge --list-metrics` output (family → group); "
                   "series per VM by family group are recorded for every scraped system")
    p.add_argument("--kubevirt",
                   help="integration/fixtures/kubevirt-virt-handler-metrics.tsv (virt-handler's families)")
    p.add_argument("--expo-dir", help="healthy phase: keep each system's last exposition here (SYSTEM-MODE-N.txt)")
    p.add_argument("--poll", type=float, default=5.0,
                   help="vmbridge's poll interval, seconds (for its libvirt calls per VM per cycle)")
    p.add_argument("--mode", default="boot", choices=["boot", "halted", "paused"],
                   help="how the lab's domains run (VMB_LAB_MODE of integration/lab.sh)")
    p.add_argument("--not-run", help="why the systems of the three not given with --sys were not started "
                   "at this size (recorded with the results)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("facts")
    p.add_argument("--vmbridge", required=True)

    p = sub.add_parser("lab-facts")
    p.add_argument("--prefix", default="scale-")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--lab-up-s", type=int, default=None)
    p.add_argument("--mode", default="boot", choices=["boot", "halted", "paused"],
                   help="how the lab's domains run (VMB_LAB_MODE of integration/lab.sh)")

    p = sub.add_parser("render")
    p.add_argument("--facts", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--lab-facts")
    p.add_argument("--synthetic")
    p.add_argument("--logs", help="directory with exporter-N.log, collectd-N.log, vmbridge-N.warn.log")
    p.add_argument("--out", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--runtime", required=True)
    p.add_argument("--poll-seconds", type=float, default=5.0)
    p.add_argument("--stop-wait", type=float, default=15.0)
    p.add_argument("--recover-timeout", type=float, default=180.0)
    p.add_argument("--probe-timeout", type=float, default=120.0)

    p = sub.add_parser("splice-compare")
    p.add_argument("--rendered", help="compare.py render output to splice as is (compare.sh uses this)")
    p.add_argument("--facts", help="compare.sh facts.json (to re-render from saved results)")
    p.add_argument("--results", help="compare.sh results.jsonl")
    p.add_argument("--out", required=True)
    p.add_argument("--command", default="benches/compare.sh 20 60")
    p.add_argument("--runtime", default="unknown")
    p.add_argument("--poll-interval", default="5s")

    a = ap.parse_args()
    if a.cmd == "collectd-conf":
        cmd_collectd_conf(a)
    elif a.cmd == "wait-ready":
        scale_measure.cmd_wait_ready(a)
    elif a.cmd == "phase":
        if a.phase != "healthy" and not a.victim:
            die("--victim is required for stopped phases")
        if "vmbridge" not in a.scrape.split(","):
            die("vmbridge must be scraped in every phase (it detects the stopped VM)")
        scale_measure.cmd_phase(a)
    elif a.cmd == "facts":
        scale_measure.cmd_facts(a)
    elif a.cmd == "lab-facts":
        scale_measure.cmd_lab_facts(a)
    elif a.cmd == "render":
        scale_report.render_scale(a)
    elif a.cmd == "splice-compare":
        report.cmd_splice_compare(a)


if __name__ == "__main__":
    main()
