#!/usr/bin/env python3
"""Measurement and report helper for benches/compare.sh (python3 stdlib only).

Subcommands (all called by compare.sh; see `compare.py SUBCOMMAND --help`):
  free-port           print a free TCP port on 127.0.0.1
  wait-ready          wait until vmbridge is ready and both exporters return all N lab VMs
  phase               run one measured phase (healthy, or one VM SIGSTOPped) and append
                      its summary as one JSON line to --out
  facts               print machine facts as JSON
  render              write docs/benchmarks.md from the facts and the phase results

Both exporters are scraped over plain HTTP/1.1, one new connection per scrape, with no
Accept header tricks and no compression (what `curl URL/metrics` does).
"""

# The code lives in benches/vmb_bench/ (modules by responsibility, see benches/README.md);
# this file is the command line only and may import any of them.

import argparse
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in benches/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmb_bench import compare_measure, compare_report  # noqa: E402
from vmb_bench.fmt import fail  # noqa: E402


def die(msg):
    fail("compare.py", msg)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    sub.add_parser("free-port")

    def common(p):
        p.add_argument("--vmb", required=True, help="vmbridge HOST:PORT")
        p.add_argument("--exp", required=True, help="exporter HOST:PORT")
        p.add_argument("--vmb-pid", type=int, required=True)
        p.add_argument("--exp-pid", type=int, required=True)
        p.add_argument("--prefix", default="bench-")
        p.add_argument("--n", type=int, required=True)

    p = sub.add_parser("wait-ready")
    common(p)
    p.add_argument("--timeout", type=float, default=180)

    p = sub.add_parser("phase")
    common(p)
    p.add_argument("--phase", choices=["healthy", "stopped-alone", "stopped"], required=True)
    p.add_argument("--victim", help="lab VM to SIGSTOP in phase 'stopped'")
    p.add_argument("--lab", required=True, help="path of integration/lab.sh")
    p.add_argument("--libvirtd-pid", type=int, default=0)
    p.add_argument("--k", type=int, default=60)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--stop-wait", type=float, default=15.0)
    p.add_argument("--recover-timeout", type=float, default=180.0)
    p.add_argument("--out", required=True)

    p = sub.add_parser("facts")
    p.add_argument("--vmbridge", required=True)

    p = sub.add_parser("render")
    p.add_argument("--facts", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--runtime", required=True)
    p.add_argument("--poll-interval", required=True)
    p.add_argument("--stop-wait", type=float, default=15.0)

    a = ap.parse_args()
    if a.cmd == "free-port":
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
        s.close()
    elif a.cmd == "wait-ready":
        compare_measure.cmd_wait_ready(a)
    elif a.cmd == "phase":
        if a.phase != "healthy" and not a.victim:
            die(f"--victim is required for phase '{a.phase}'")
        compare_measure.cmd_phase(a)
    elif a.cmd == "facts":
        compare_measure.cmd_facts(a)
    elif a.cmd == "render":
        compare_report.cmd_render(a)


if __name__ == "__main__":
    main()
