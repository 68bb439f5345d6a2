#!/usr/bin/env python3
"""batch_ab.py - A/B of vmbridge's libvirt polling: every VM alone (libvirt.batch_window = 0s)
against batched bulk stats (the default window), on the same real lab domains, in turns.

Usage (as root, from the repository): benches/batch_ab.py [--vms N] [--stopped K] [--rounds R]
    [--secs S] [--windows 0s,250ms] [--binary target/release/vmbridge]

The lab (integration/lab.sh) is brought up with N domains named ab-01.. (VMB_LAB_MODE, default
halted: running domains whose vCPU halts at once), K of them SIGSTOPped (hung VMs). Each round
runs vmbridge once per window for S seconds after every healthy VM reported, and measures:
- vmbridge's CPU seconds per minute (utime + stime from /proc), and libvirtd's over the same span;
- libvirt calls per VM per poll cycle (vmbridge_endpoint_calls_total over the span);
- RSS and threads at the end;
- the healthy VMs' libvirt data age at each scrape (now - last success), p50 and p99 and max.
An arm named `collectd` runs collectd's virt plugin (same interval, write_prometheus scraped each
second) instead, for the ratio against a peer measured in the same run.
Prints one Markdown row per run and a summary of medians per window. The lab domains ab-* are
destroyed at the end (other domains are left alone).
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(ROOT, "integration", "lab.sh")
TICK = os.sysconf("SC_CLK_TCK")
SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def samples(text, name):
    """(labels dict, value) of every sample of `name`."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        m = SAMPLE.match(line)
        if m:
            labels = dict(kv.split("=", 1) for kv in re.findall(r'(\w+="(?:[^"\\]|\\.)*")', m.group(2)))
            out.append(({k: v.strip('"') for k, v in labels.items()}, float(m.group(3))))
    return out


def wait_ready(port, ready, limit=300):
    """Scrapes `port` once a second until `ready(text)` (True), or `limit` seconds (False)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        time.sleep(1)
        try:
            text = scrape(port)
        except OSError:
            continue
        if ready(text):
            return True
    return False


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def libvirtd_pid():
    out = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def run_collectd(args, names, port):
    """collectd's virt plugin at the same interval, alone, measured over the same span."""
    work = tempfile.mkdtemp(prefix="ab-collectd-")
    conf = os.path.join(work, "collectd.conf")
    subprocess.run(["python3", os.path.join(ROOT, "benches", "scale.py"), "collectd-conf", "--workdir", work,
                    "--port", str(port), "--interval", args.interval.rstrip("s"), "--out", conf], check=True)
    proc = subprocess.Popen(["/usr/sbin/collectd", "-f", "-C", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        # Until it reports every domain (at most 5 minutes), then the same settling time.
        if not wait_ready(port, lambda text: all(f'"{n}"' in text for n in names)):
            return None
        time.sleep(args.settle)
        ld = libvirtd_pid()
        t0, c0 = time.time(), cpu_seconds(proc.pid)
        l0 = cpu_seconds(ld) if ld else 0.0
        while time.time() - t0 < args.secs:
            time.sleep(1)
            scrape(port)
        span = time.time() - t0
        return {
            "window": "collectd",
            "cpu": (cpu_seconds(proc.pid) - c0) / span * 60,
            "libvirtd": ((cpu_seconds(ld) if ld else 0.0) - l0) / span * 60,
            "calls": float("nan"),
            "rss": status(proc.pid, "VmRSS") / 1024,
            "threads": status(proc.pid, "Threads"),
            "age50": float("nan"),
            "age99": float("nan"),
            "agemax": float("nan"),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(args, window, names, stopped, port):
    if window == "collectd":
        return run_collectd(args, names, port)
    healthy = [n for n in names if n not in stopped]
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as cfg:
        cfg.write(f'[libvirt]\nbatch_window = "{window}"\n[poll]\ninterval = "{args.interval}"\n')
    env = dict(os.environ, VMBRIDGE_LOG="warn")
    proc = subprocess.Popen(
        [args.binary, "--config", cfg.name, "--listen", f"127.0.0.1:{port}", "--debug-listen", f"127.0.0.1:{port + 1}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        # Until every healthy VM reported libvirt data (at most 5 minutes).
        def all_up(text):
            up = {l["name"] for l, v in samples(text, "vmbridge_source_up") if l.get("source") == "libvirt" and v == 1}
            return all(n.split("_", 1)[-1] in up or n in up for n in healthy)

        if not wait_ready(port, all_up):
            return None
        time.sleep(args.settle)
        ld = libvirtd_pid()
        t0, c0 = time.time(), cpu_seconds(proc.pid)
        l0 = cpu_seconds(ld) if ld else 0.0
        calls0 = sum(v for _, v in samples(scrape(port), "vmbridge_endpoint_calls_total"))
        ages = []
        while time.time() - t0 < args.secs:
            time.sleep(1)
            now = time.time()
            for labels, v in samples(scrape(port), "vmbridge_source_last_success_timestamp_seconds"):
                if labels.get("source") == "libvirt" and labels["name"] not in {s.split("_", 1)[-1] for s in stopped}:
                    ages.append(now - v)
        t1, c1 = time.time(), cpu_seconds(proc.pid)
        l1 = cpu_seconds(ld) if ld else 0.0
        calls1 = sum(v for _, v in samples(scrape(port), "vmbridge_endpoint_calls_total"))
        span = t1 - t0
        cycles = span / float(args.interval.rstrip("s"))
        return {
            "window": window,
            "cpu": (c1 - c0) / span * 60,
            "libvirtd": (l1 - l0) / span * 60,
            "calls": (calls1 - calls0) / (len(names) * cycles),
            "rss": status(proc.pid, "VmRSS") / 1024,
            "threads": status(proc.pid, "Threads"),
            "age50": pct(ages, 0.5),
            "age99": pct(ages, 0.99),
            "agemax": max(ages) if ages else float("nan"),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(cfg.name)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vms", type=int, default=100)
    p.add_argument("--stopped", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--secs", type=int, default=60)
    p.add_argument("--settle", type=int, default=10)
    p.add_argument("--interval", default="5s")
    p.add_argument("--windows", default="0s,250ms",
                   help="vmbridge's libvirt.batch_window per arm; 'collectd' is an arm running collectd's virt plugin")
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "vmbridge"))
    p.add_argument("--keep", action="store_true", help="leave the ab-* domains running")
    args = p.parse_args()
    env = dict(os.environ)
    env.setdefault("VMB_LAB_MODE", "halted")
    out = subprocess.run(["bash", LAB, "up", str(args.vms), "ab-"], capture_output=True, text=True, env=env, check=True)
    names = [l for l in out.stdout.splitlines()[1:] if l.strip()]
    stopped = names[len(names) // 2: len(names) // 2 + args.stopped]
    try:
        for n in stopped:
            subprocess.run(["bash", LAB, "stop-vm", n], check=True, capture_output=True)
        print(f"{len(names)} domains ({env['VMB_LAB_MODE']}), {len(stopped)} stopped, poll {args.interval}, "
              f"{args.secs} s per run, {os.cpu_count()} CPUs", flush=True)
        print("| round | window | CPU s/min | libvirtd CPU s/min | calls per VM per cycle | RSS MB | threads "
              "| healthy data age p50 / p99 / max (s) |")
        print("|---:|---|---:|---:|---:|---:|---:|---|")
        rows = []
        for r in range(args.rounds):
            for i, w in enumerate(args.windows.split(",")):
                row = run(args, w, names, stopped, 19300 + 10 * i)
                if row is None:
                    print(f"| {r + 1} | {w} | not ready within 300 s |")
                    continue
                rows.append(row)
                print(f"| {r + 1} | {w} | {row['cpu']:.2f} | {row['libvirtd']:.2f} | {row['calls']:.2f} | "
                      f"{row['rss']:.1f} | {row['threads']} | {row['age50']:.1f} / {row['age99']:.1f} / "
                      f"{row['agemax']:.1f} |", flush=True)
        print("\nMedians:")
        for w in args.windows.split(","):
            rs = [r for r in rows if r["window"] == w]
            if rs:
                med = {k: statistics.median(r[k] for r in rs) for k in ("cpu", "libvirtd", "calls", "rss", "age99")}
                print(f"- window {w}: CPU {med['cpu']:.2f} s/min, libvirtd {med['libvirtd']:.2f} s/min, "
                      f"{med['calls']:.2f} calls per VM per cycle, RSS {med['rss']:.1f} MB, data age p99 {med['age99']:.1f} s")
    finally:
        for n in stopped:
            subprocess.run(["bash", LAB, "cont-vm", n], capture_output=True)
        if not args.keep:
            subprocess.run(["bash", LAB, "down", "ab-"], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
