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

import argparse
import http.client
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

VMB_NAME_RE = re.compile(r'[{,]name="([^"]*)"')
EXP_NAME_RE = re.compile(r'[{,]domain="([^"]*)"')


def log(msg):
    print(f"compare.py: {msg}", file=sys.stderr, flush=True)


def die(msg):
    print(f"compare.py: ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


# ------------------------------------------------------------------ http ----


def http_get(url_hostport, path, timeout):
    """GET http://HOSTPORT/PATH. Returns (latency_s, status, body).

    status is an int HTTP status, "timeout" or "error: ...". A scrape that takes
    `timeout` seconds or longer counts as timed out and its latency is `timeout`.
    """
    host, port = url_hostport.rsplit(":", 1)
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    body = b""
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        status = resp.status
        dt = time.perf_counter() - t0
    except (TimeoutError, OSError, http.client.HTTPException) as e:
        dt = time.perf_counter() - t0
        if isinstance(e, TimeoutError) or "timed out" in str(e):
            status = "timeout"
        else:
            status = f"error: {type(e).__name__}: {e}"
    finally:
        conn.close()
    if dt >= timeout:
        dt, status = timeout, "timeout"
    return dt, status, body


# --------------------------------------------------------------- parsing ----


def parse_vmbridge(text, prefix):
    """Lab VMs (names starting with prefix) in a vmbridge /metrics body."""
    samples = 0
    vms = set()
    up = {}  # vm -> value of vmbridge_source_up{source="libvirt"}
    sources = set()  # every `source` label of vmbridge_source_up
    endpoint_domains = None
    revision = None
    for line in text.splitlines():
        if line.startswith("kubevirt_vmi_"):
            m = VMB_NAME_RE.search(line)
            if m and m.group(1).startswith(prefix):
                samples += 1
                vms.add(m.group(1))
        elif line.startswith("vmbridge_source_up{"):
            ms = re.search(r'[{,]source="([^"]*)"', line)
            if ms:
                sources.add(ms.group(1))
            m = VMB_NAME_RE.search(line)
            if ms and ms.group(1) == "libvirt" and m and m.group(1).startswith(prefix):
                up[m.group(1)] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("vmbridge_endpoint_domains{"):
            endpoint_domains = float(line.rsplit(" ", 1)[1])
        elif line.startswith("vmbridge_build_info{"):
            m = re.search(r'[{,]revision="([^"]*)"', line)
            revision = m.group(1) if m else None
    return {
        "samples": samples,
        "vms": vms,
        "up": up,
        "sources": sources,
        "endpoint_domains": endpoint_domains,
        "revision": revision,
    }


def parse_exporter(text, prefix):
    """Lab VMs in a prometheus-libvirt-exporter /metrics body (label `domain`)."""
    samples = 0
    vms = set()
    libvirt_up = None
    domains_number = None
    for line in text.splitlines():
        if not line.startswith("libvirt_"):
            continue
        if line.startswith("libvirt_up "):
            libvirt_up = float(line.split()[1])
            continue
        if line.startswith("libvirt_domains_number "):
            domains_number = float(line.split()[1])
            continue
        m = EXP_NAME_RE.search(line)
        if m and m.group(1).startswith(prefix):
            samples += 1
            vms.add(m.group(1))
    return {
        "samples": samples,
        "vms": vms,
        "libvirt_up": libvirt_up,
        "domains_number": domains_number,
    }


def lab_names(prefix, n):
    return [f"{prefix}{i:02d}" for i in range(1, n + 1)]


# ----------------------------------------------------------------- /proc ----


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return int(fields[11]) + int(fields[12])


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None


def check_alive(pid, what):
    if not os.path.exists(f"/proc/{pid}"):
        die(f"{what} (pid {pid}) is not running")


# ------------------------------------------------------------ wait-ready ----


def state_vmbridge(vmb, prefix, n, timeout=5.0):
    dt, status, body = http_get(vmb, "/metrics", timeout)
    if status != 200:
        return None
    return parse_vmbridge(body.decode("utf-8", "replace"), prefix)


def cmd_wait_ready(a):
    want = set(lab_names(a.prefix, a.n))
    deadline = time.monotonic() + a.timeout
    ready = vmb_ok = exp_ok = False
    last = ""
    while time.monotonic() < deadline:
        check_alive(a.vmb_pid, "vmbridge")
        check_alive(a.exp_pid, "prometheus-libvirt-exporter")
        if not ready:
            _, st, _ = http_get(a.vmb, "/readyz", 5.0)
            ready = st == 200
            last = f"vmbridge /readyz: {st}"
        if ready and not vmb_ok:
            p = state_vmbridge(a.vmb, a.prefix, a.n)
            if p is not None:
                up = {v for v, x in p["up"].items() if x == 1.0}
                vmb_ok = want <= p["vms"] and want <= up
                last = f"vmbridge: {len(want & p['vms'])}/{a.n} lab VMs with data, {len(want & up)} up"
        if not exp_ok:
            _, st, body = http_get(a.exp, "/metrics", 10.0)
            if st == 200:
                p = parse_exporter(body.decode("utf-8", "replace"), a.prefix)
                exp_ok = want <= p["vms"]
                if not exp_ok:
                    last = f"exporter: {len(want & p['vms'])}/{a.n} lab VMs"
            else:
                last = f"exporter /metrics: {st}"
        if ready and vmb_ok and exp_ok:
            log(f"both exporters report all {a.n} lab VMs")
            return
        time.sleep(1.0)
    die(f"exporters not ready after {a.timeout:.0f} s (last: {last})")


# ----------------------------------------------------------------- phase ----


class PoolSampler(threading.Thread):
    """Samples libvirtd's worker pool (virt-admin) every 2 s, if virt-admin exists."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.max_queue = None
        self.min_free = None
        self.max_workers = None
        self.samples = 0

    def run(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(
                    ["virt-admin", "-c", "libvirtd:///system", "srv-threadpool-info", "libvirtd"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                kv = {}
                for line in out.splitlines():
                    if ":" in line:
                        k, v = line.split(":", 1)
                        kv[k.strip()] = int(v.strip())
                if "jobQueueDepth" in kv:
                    self.samples += 1
                    q, fr = kv["jobQueueDepth"], kv.get("freeWorkers", 0)
                    self.max_queue = q if self.max_queue is None else max(self.max_queue, q)
                    self.min_free = fr if self.min_free is None else min(self.min_free, fr)
                    self.max_workers = kv.get("maxWorkers")
            except (OSError, subprocess.SubprocessError, ValueError):
                pass
            self.stop.wait(2.0)


def run_lab(lab, *args):
    r = subprocess.run([lab, *args], capture_output=True, text=True)
    if r.returncode != 0:
        die(f"{lab} {' '.join(args)} failed: {r.stderr.strip()}")


def wait_flagged(a, victim, t_stop):
    """Wait until vmbridge reports the victim's libvirt source down (and its breaker open),
    at least a.stop_wait seconds after the SIGSTOP, at most 60 s."""
    t_flag = t_open = None
    while True:
        el = time.monotonic() - t_stop
        if t_flag is None or t_open is None:
            _, st, body = http_get(a.vmb, "/metrics", 5.0)
            if st == 200:
                text = body.decode("utf-8", "replace")
                p = parse_vmbridge(text, a.prefix)
                if t_flag is None and p["up"].get(victim) == 0.0:
                    t_flag = time.monotonic() - t_stop
                    log(f"vmbridge flagged {victim} (source_up 0) after {t_flag:.1f} s")
                if t_open is None and re.search(
                    r'vmbridge_breaker_state\{[^}]*name="%s"[^}]*source="libvirt"[^}]*state="open"\} 1'
                    % re.escape(victim),
                    text,
                ):
                    t_open = time.monotonic() - t_stop
                    log(f"vmbridge opened {victim}'s breaker after {t_open:.1f} s")
        if el >= a.stop_wait and t_flag is not None:
            break
        if el >= 60:
            log(f"WARNING: vmbridge did not flag {victim} within 60 s")
            break
        time.sleep(1.0)
    return t_flag, t_open


def wait_recovered(a, want, victim):
    """After SIGCONT: wait until vmbridge has every lab VM up again and the exporter
    returns every lab VM; at most a.recover_timeout seconds. Returns the seconds until
    vmbridge had the victim up, had every lab VM up, and the exporter returned all."""
    t0 = time.monotonic()
    t_victim = t_vmb = t_exp = None
    while time.monotonic() - t0 < a.recover_timeout:
        if t_vmb is None:
            p = state_vmbridge(a.vmb, a.prefix, a.n)
            ups = {v for v, x in p["up"].items() if x == 1.0} if p is not None else set()
            if t_victim is None and victim in ups:
                t_victim = time.monotonic() - t0
            if want <= ups:
                t_vmb = time.monotonic() - t0
        if t_exp is None:
            _, st, body = http_get(a.exp, "/metrics", 10.0)
            if st == 200 and want <= parse_exporter(body.decode("utf-8", "replace"), a.prefix)["vms"]:
                t_exp = time.monotonic() - t0
        if t_vmb is not None and t_exp is not None:
            break
        time.sleep(1.0)
    log(
        "recovery after SIGCONT: vmbridge "
        + (f"{t_victim:.1f} s for {victim}, " if t_victim is not None else f"{victim} NOT recovered, ")
        + (f"{t_vmb:.1f} s for all" if t_vmb is not None else "NOT all recovered")
        + ", exporter "
        + (f"{t_exp:.1f} s" if t_exp is not None else "NOT recovered")
    )
    return t_victim, t_vmb, t_exp


def pct_nearest_rank(values, p):
    s = sorted(values)
    k = max(1, math.ceil(p / 100.0 * len(s)))
    return s[k - 1]


def cmd_phase(a):
    want = set(lab_names(a.prefix, a.n))
    victim = a.victim if a.phase != "healthy" else None
    # "stopped-alone" is the control: VM stopped, only vmbridge scraped, exporter idle
    systems = ("vmbridge",) if a.phase == "stopped-alone" else ("vmbridge", "exporter")
    check_alive(a.vmb_pid, "vmbridge")
    check_alive(a.exp_pid, "prometheus-libvirt-exporter")

    t_flag = t_open = t_stop = None
    if victim:
        log(f"SIGSTOP {victim}")
        t_stop = time.monotonic()
        run_lab(a.lab, "stop-vm", victim)
        t_flag, t_open = wait_flagged(a, victim, t_stop)

    pids = {"vmbridge": a.vmb_pid, "exporter": a.exp_pid, "libvirtd": a.libvirtd_pid}
    targets = {"vmbridge": a.vmb, "exporter": a.exp}
    results = {s: [None] * a.k for s in systems}

    def one(system, i):
        t_send = time.monotonic()
        dt, status, body = http_get(targets[system], "/metrics", a.timeout)
        results[system][i] = (dt, status, body, t_send)

    sampler = PoolSampler()
    sampler.start()
    ticks0 = {}
    for name, pid in pids.items():
        if pid:
            try:
                ticks0[name] = cpu_ticks(pid)
            except OSError:
                pass
    log(f"phase {a.phase} N={a.n}: {a.k} scrapes of {' and '.join(systems)}, 1 every {a.interval:g} s each")
    t0 = time.monotonic()
    threads = []
    for i in range(a.k):
        for j, system in enumerate(systems):
            due = t0 + i * a.interval + j * a.interval / 2.0
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            th = threading.Thread(target=one, args=(system, i), daemon=True)
            th.start()
            threads.append(th)
    for th in threads:
        th.join(a.timeout + 30)
    wall = time.monotonic() - t0
    cpu = {}
    for name, pid in pids.items():
        if name in ticks0:
            try:
                cpu[name] = (cpu_ticks(pid) - ticks0[name]) / CLK_TCK / wall * 60.0
            except OSError:
                cpu[name] = None
    rss = {}
    for name in ("vmbridge", "exporter"):
        try:
            rss[name] = rss_mb(pids[name])
        except OSError:
            rss[name] = None
    sampler.stop.set()
    check_alive(a.vmb_pid, "vmbridge")
    check_alive(a.exp_pid, "prometheus-libvirt-exporter")

    t_rec_victim = t_rec_vmb = t_rec_exp = None
    if victim:
        log(f"SIGCONT {victim}")
        run_lab(a.lab, "cont-vm", victim)
        t_rec_victim, t_rec_vmb, t_rec_exp = wait_recovered(a, want, victim)

    # ---- summarise (bodies are parsed only now, so parsing never delays a scrape)
    healthy_want = want - ({victim} if victim else set())
    summary = {
        "n": a.n,
        "phase": a.phase,
        "victim": victim,
        "k": a.k,
        "interval_s": a.interval,
        "timeout_s": a.timeout,
        "wall_s": wall,
        "time_to_flag_s": t_flag,
        "time_to_breaker_open_s": t_open,
        "recovery_vmbridge_victim_s": t_rec_victim,
        "recovery_vmbridge_s": t_rec_vmb,
        "recovery_exporter_s": t_rec_exp,
        "libvirtd_cpu_s_per_min": cpu.get("libvirtd"),
        "libvirtd_pool": {
            "samples": sampler.samples,
            "max_queue_depth": sampler.max_queue,
            "min_free_workers": sampler.min_free,
            "max_workers": sampler.max_workers,
        },
        "systems": {},
    }
    for system in systems:
        lat, vms_per, samples_per, statuses = [], [], [], {}
        extra = {}
        up_min = None
        first_drop = None
        healthy_missing_max = 0
        healthy_missing_scrapes = 0
        victim_data_scrapes = 0
        other_domains = set()
        sources = set()
        libvirt_up_vals = set()
        for r in results[system]:
            if r is None:  # thread did not finish (cannot happen with join timeout > timeout)
                r = (a.timeout, "timeout", b"", None)
            dt, status, body, t_send = r
            lat.append(dt)
            key = str(status)
            statuses[key] = statuses.get(key, 0) + 1
            if status != 200:
                vms_per.append(0)
                samples_per.append(0)
                continue
            text = body.decode("utf-8", "replace")
            if system == "vmbridge":
                p = parse_vmbridge(text, a.prefix)
                ups = {v for v, x in p["up"].items() if x == 1.0} & healthy_want
                up_min = len(ups) if up_min is None else min(up_min, len(ups))
                if first_drop is None and len(ups) < len(healthy_want) and t_send is not None:
                    first_drop = t_send - t0
                if p["endpoint_domains"] is not None:
                    other_domains.add(int(p["endpoint_domains"]))
                sources |= p["sources"]
                if p["revision"]:
                    extra["revision"] = p["revision"]
                if victim and t_open is None and t_send is not None and re.search(
                    r'vmbridge_breaker_state\{[^}]*name="%s"[^}]*source="libvirt"[^}]*state="open"\} 1'
                    % re.escape(victim),
                    text,
                ):
                    t_open = t_send - t_stop  # upper bound: first scrape that showed it open
                    summary["time_to_breaker_open_s"] = t_open
            else:
                p = parse_exporter(text, a.prefix)
                if p["libvirt_up"] is not None:
                    libvirt_up_vals.add(p["libvirt_up"])
                if p["domains_number"] is not None:
                    other_domains.add(int(p["domains_number"]))
            got = p["vms"] & want
            vms_per.append(len(got))
            samples_per.append(p["samples"])
            missing = len(healthy_want - got)
            healthy_missing_max = max(healthy_missing_max, missing)
            healthy_missing_scrapes += 1 if missing else 0
            if victim and victim in got:
                victim_data_scrapes += 1
        ok = statuses.get("200", 0)
        summary["systems"][system] = {
            "ok": ok,
            "timeouts": statuses.get("timeout", 0),
            "statuses": statuses,
            "p50_s": statistics.median(lat),
            "p99_s": pct_nearest_rank(lat, 99),
            "max_s": max(lat),
            "min_s": min(lat),
            "vms_min": min(vms_per),
            "vms_max": max(vms_per),
            "samples_median": statistics.median(samples_per),
            "healthy_missing_max": healthy_missing_max,
            "healthy_missing_scrapes": healthy_missing_scrapes,
            "victim_data_scrapes": victim_data_scrapes,
            "healthy_up_min": up_min,
            "healthy_up_first_drop_s": first_drop,
            "libvirt_up_values": sorted(libvirt_up_vals),
            "domains_seen": sorted(other_domains),
            "sources": sorted(sources),
            "cpu_s_per_min": cpu.get(system),
            "rss_mb": rss.get(system),
            "latencies_s": lat,
            **extra,
        }
        s = summary["systems"][system]
        log(
            f"  {system}: p50 {fmt_lat(s['p50_s'], a.timeout)}, p99 {fmt_lat(s['p99_s'], a.timeout)}, "
            f"ok {ok}/{a.k}, VMs {s['vms_min']}-{s['vms_max']}/{a.n}, "
            f"CPU {fmt_num(s['cpu_s_per_min'])} s/min, RSS {fmt_num(s['rss_mb'], 1)} MB"
        )
    with open(a.out, "a") as f:
        f.write(json.dumps(summary) + "\n")


# ----------------------------------------------------------------- facts ----


def sh(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cmd_facts(a):
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    facts = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": sh(["nproc"]),
        "cpu_model": cpu_model,
        "mem_total_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": sh(["uname", "-r"]),
        "os": sh(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "libvirtd": sh(["libvirtd", "--version"]),
        "qemu": sh(["qemu-system-x86_64", "--version"]).splitlines()[0],
        "exporter": sh(["dpkg-query", "-W", "-f", "${Package} ${Version}", "prometheus-libvirt-exporter"]),
        "vmbridge_version": sh([a.vmbridge, "--version"]),
        "python": sys.version.split()[0],
    }
    print(json.dumps(facts))


# ---------------------------------------------------------------- render ----


def fmt_lat(s, timeout):
    if s is None:
        return "n/a"
    if s >= timeout:
        return f"≥{timeout:g} s (timed out)"
    if s < 0.01:
        return f"{s * 1000:.2f} ms"
    if s < 1:
        return f"{s * 1000:.1f} ms"
    return f"{s:.2f} s"


def fmt_num(x, nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}"


def fmt_s(x):
    return "n/a" if x is None else f"{x:.0f} s"


def phase_label(r):
    if r["phase"] == "healthy":
        return "healthy"
    if r["phase"] == "stopped-alone":
        return f"control: one VM stopped ({r['victim']}), exporter not scraped"
    return f"one VM stopped ({r['victim']})"


def findings(rows, timeout, k):
    """Plain statements computed from the results (so they cannot drift from the table)."""
    out = ["What this run shows (computed from the numbers above and below):", ""]
    main = [r for r in rows if r["phase"] in ("healthy", "stopped")]
    bad = [
        f"N={r['n']} {phase_label(r)}: {r['systems']['vmbridge']['vms_min']}"
        for r in main
        if r["systems"]["vmbridge"]["vms_min"] < r["n"]
    ]
    if bad:
        out.append("- vmbridge returned fewer than all lab VMs in some scrape: " + "; ".join(bad) + ".")
    else:
        out.append(
            "- vmbridge returned data for every lab VM in every one of its scrapes, including while a VM "
            "was stopped (the stopped VM's last values stay exported, flagged by `vmbridge_source_up 0`)."
        )
    for r in main:
        e, v = r["systems"]["exporter"], r["systems"]["vmbridge"]
        if r["phase"] == "healthy":
            out.append(
                f"- N={r['n']}, healthy: exporter p50 {fmt_lat(e['p50_s'], timeout)} vs vmbridge "
                f"{fmt_lat(v['p50_s'], timeout)} ({e['p50_s'] / v['p50_s']:.0f}×); CPU "
                f"{fmt_num(e['cpu_s_per_min'])} vs {fmt_num(v['cpu_s_per_min'])} s/min; exporter "
                f"{e['ok']}/{k} scrapes OK."
            )
        else:
            out.append(
                f"- N={r['n']}, one VM stopped: the exporter answered {e['ok']}/{k} scrapes "
                f"({e['timeouts']} timed out at {timeout:g} s), so Prometheus would see no VM at all "
                f"from it; vmbridge answered {v['ok']}/{k} with p99 {fmt_lat(v['p99_s'], timeout)}."
            )
    for n in sorted({r["n"] for r in rows}):
        ctl = next((r for r in rows if r["n"] == n and r["phase"] == "stopped-alone"), None)
        both = next((r for r in rows if r["n"] == n and r["phase"] == "stopped"), None)
        if not ctl or not both:
            continue
        hv = n - 1
        vb, vc = both["systems"]["vmbridge"], ctl["systems"]["vmbridge"]
        pool = both["libvirtd_pool"]
        sat = (
            f"libvirtd's worker pool was exhausted (min free workers {pool['min_free_workers']} of "
            f"{pool['max_workers']}, max queue depth {pool['max_queue_depth']}); "
            if pool["samples"] and pool["min_free_workers"] == 0
            else ""
        )
        out.append(
            f"- N={n}, shared libvirtd: with the exporter's scrapes hanging, {sat}vmbridge's healthy VMs "
            f"with `source_up 1` fell to {vb['healthy_up_min']} of {hv}"
            + (f" (from +{vb['healthy_up_first_drop_s']:.0f} s)" if vb.get("healthy_up_first_drop_s") is not None else "")
            + f", against {vc['healthy_up_min']} of {hv} in the control without exporter scrapes; "
            f"after SIGCONT vmbridge had every VM up again after {fmt_s(both['recovery_vmbridge_s'])} "
            f"(control: {fmt_s(ctl['recovery_vmbridge_s'])}). Healthy VMs missing data in any vmbridge "
            f"scrape: {vb['healthy_missing_max']} (control: {vc['healthy_missing_max']})."
        )
    return out


def cmd_render(a):
    with open(a.facts) as f:
        facts = json.load(f)
    rows = []
    with open(a.results) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    if not rows:
        die(f"no results in {a.results}")
    timeout = rows[0]["timeout_s"]
    k = rows[0]["k"]
    interval = rows[0]["interval_s"]
    rev = next((r["systems"]["vmbridge"].get("revision") for r in rows if r["systems"]["vmbridge"].get("revision")), "unknown")

    def vms_cell(s, n):
        v = f"{s['vms_min']}" if s["vms_min"] == s["vms_max"] else f"{s['vms_min']}–{s['vms_max']}"
        return f"{v} / {n}"

    def ok_cell(s):
        t = f"{s['ok']}/{k}"
        if s["timeouts"]:
            t += f" ({s['timeouts']} timed out)"
        other = {kk: vv for kk, vv in s["statuses"].items() if kk not in ("200", "timeout")}
        if other:
            t += " (" + ", ".join(f"{vv}× {kk}" for kk, vv in other.items()) + ")"
        return t

    def ratio_cell(r):
        v, e = r["systems"]["vmbridge"], r["systems"]["exporter"]
        if v["p50_s"] >= timeout:
            return "n/a (vmbridge timed out)"
        ratio = e["p50_s"] / v["p50_s"]
        if e["p50_s"] >= timeout:
            return f"≥ {ratio:,.0f}×"
        return f"{ratio:,.1f}×" if ratio < 100 else f"{ratio:,.0f}×"

    srcs = sorted({x for r in rows for x in r["systems"]["vmbridge"].get("sources", [])})
    sources_txt = ", ".join(f"`{x}`" for x in srcs) if srcs else "unknown"
    if [x for x in srcs if x != "libvirt"]:
        sources_txt += (
            " — the lab has no guest OS, so sources other than `libvirt` (e.g. the guest agent) fail on "
            "every VM and their breakers stay open; the exporter reads libvirt only, and the columns "
            "below use vmbridge's `libvirt` source"
        )

    L = []
    L.append("# Benchmark: vmbridge vs prometheus-libvirt-exporter")
    L.append("")
    L.append(
        "Generated by `benches/compare.sh`; do not edit by hand. All numbers below come from one "
        f"run of that script on {facts['date_utc']} (total wall time {a.runtime})."
    )
    L.append("")
    L.append(
        "Regenerate (as root, on a machine where `integration/lab.sh` works; it creates and destroys "
        "its own `bench-*` domains and leaves other domains alone):"
    )
    L.append("")
    L.append("```sh")
    L.append(a.command)
    L.append("```")
    L.append("")
    L.append("## Machine")
    L.append("")
    L.append(f"- CPU: {facts['nproc']} cores ({facts['cpu_model']}); memory {facts['mem_total_gib']} GiB")
    L.append(f"- OS: {facts['os']}; kernel {facts['kernel']}")
    L.append(f"- {facts['libvirtd']}; {facts['qemu']}")
    L.append(f"- {facts['exporter']} (`/usr/bin/prometheus-libvirt-exporter`)")
    L.append(
        f"- {facts['vmbridge_version']}, release build, git revision `{rev}` "
        "(from `vmbridge_build_info`; it names HEAD at build time, uncommitted changes are not reflected)"
    )
    L.append(f"- load generator and parser: Python {facts['python']} (stdlib `http.client`)")
    L.append("")
    L.append("## Method")
    L.append("")
    L.append(
        "- Lab: `integration/lab.sh up N bench-` creates N real QEMU domains (TCG, q35, 32 MiB, "
        "1 vCPU, virtio disk and NIC, balloon with 5 s stats) under the machine's real `libvirtd` "
        "(`qemu:///system`). The lab grows from the first N to the next with the same prefix; "
        "no guest OS runs."
    )
    L.append(
        f"- For each N, both exporters are started fresh, side by side, on free loopback ports: "
        f"`vmbridge --listen 127.0.0.1:PORT --libvirt-uri qemu:///system --poll-interval {a.poll_interval}` "
        f"(no config file, so its default sources: {sources_txt}) and "
        "`prometheus-libvirt-exporter --web.listen-address=127.0.0.1:PORT --libvirt.uri=qemu:///system`. "
        "Measurement starts once vmbridge's `/readyz` is 200 and both return every lab VM."
    )
    L.append(
        f"- Each phase scrapes `/metrics` of each exporter {k} times, one scrape per {interval:g} s per "
        f"exporter, interleaved (vmbridge at t, the exporter at t+{interval / 2:g} s), each scrape on "
        "its own new HTTP/1.1 connection and thread, so a hung scrape never delays the schedule "
        f"(several scrapes of a hung exporter can be in flight at once). Per-scrape timeout "
        f"{timeout:g} s: a timed-out scrape counts as {timeout:g} s in the percentiles and is shown as "
        f"\"≥{timeout:g} s (timed out)\". Latency is connect to last body byte, measured on the client."
    )
    L.append(
        f"- p50 is the median; p99 is nearest-rank, which with {k} scrapes is the slowest scrape."
    )
    L.append(
        "- *VMs with data*: distinct lab VMs (`bench-*`) with at least one sample, per scrape, as "
        "min–max over the phase; a failed or timed-out scrape counts as 0. vmbridge: lines "
        "`kubevirt_vmi_*{…,name=\"bench-NN\",…}`; exporter: lines `libvirt_*{domain=\"bench-NN\",…}`. "
        "Domains of other prefixes on the same libvirtd (other tests) are not counted."
    )
    L.append(
        "- *CPU s/min*: utime+stime delta of the process (`/proc/PID/stat`) over the phase's wall time "
        "(first scrape sent to last scrape finished or timed out), scaled to 60 s. *RSS*: `VmRSS` "
        "from `/proc/PID/status` at the end of the phase."
    )
    L.append(
        "- Phase *one VM stopped*: `lab.sh stop-vm` SIGSTOPs the QEMU process of the middle lab VM; "
        f"scraping starts once vmbridge reports that VM's `vmbridge_source_up{{source=\"libvirt\"}} 0` and at "
        f"least {a.stop_wait:g} s have passed. After the phase the VM gets SIGCONT and the script waits until "
        "both exporters report every lab VM again before the next step. Order per N: healthy, control "
        "(VM stopped, only vmbridge scraped; in the details table), one VM stopped (both scraped)."
    )
    L.append(
        f"- **Operating point, not a normalisation**: the exporter does all its libvirt work inside each "
        f"scrape (a new libvirt connection, then per-domain calls), so its CPU grows with the scrape rate; "
        f"vmbridge polls every VM in the background every {a.poll_interval} and serves scrapes from memory, "
        f"so its CPU is mostly the polling and hardly depends on the scrape rate. The CPU columns are what "
        f"each process used at one scrape every {interval:g} s per exporter against vmbridge's "
        f"{a.poll_interval} poll interval — a scrape rate far above the usual 15–60 s, which favours "
        "vmbridge; they are not normalised per scrape or per poll. The libvirt work itself is done by "
        "`libvirtd`, shared by both exporters and any other client, and is shown separately below."
    )
    L.append("")
    L.append("## Results")
    L.append("")
    L.append(
        "| N | phase | vmbridge p50 | vmbridge p99 | exporter p50 | exporter p99 | p50 ratio exporter/vmbridge "
        "| VMs with data: vmbridge | VMs with data: exporter | CPU s/min: vmbridge | CPU s/min: exporter "
        "| RSS MB: vmbridge | RSS MB: exporter |"
    )
    L.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["phase"] not in ("healthy", "stopped"):
            continue
        v, e = r["systems"]["vmbridge"], r["systems"]["exporter"]
        L.append(
            f"| {r['n']} | {phase_label(r)} | {fmt_lat(v['p50_s'], timeout)} | {fmt_lat(v['p99_s'], timeout)} "
            f"| {fmt_lat(e['p50_s'], timeout)} | {fmt_lat(e['p99_s'], timeout)} | {ratio_cell(r)} "
            f"| {vms_cell(v, r['n'])} | {vms_cell(e, r['n'])} "
            f"| {fmt_num(v['cpu_s_per_min'])} | {fmt_num(e['cpu_s_per_min'])} "
            f"| {fmt_num(v['rss_mb'], 1)} | {fmt_num(e['rss_mb'], 1)} |"
        )
    L.append("")
    L.extend(findings(rows, timeout, k))
    L.append("")
    L.append("### Details of the same run")
    L.append("")
    L.append(
        "| N | phase | scrapes OK: vmbridge | scrapes OK: exporter | vmbridge p50 / p99 | vmbridge CPU s/min "
        "| vmbridge: healthy VMs missing data (worst scrape; scrapes affected) "
        "| vmbridge: healthy VMs with `source_up 1` (worst scrape; first scrape below all) "
        "| stopped VM: `source_up 0` / breaker open after SIGSTOP "
        "| after SIGCONT, vmbridge: stopped VM up / all VMs up; exporter: all VMs "
        "| libvirtd CPU s/min | libvirtd workers: max queue depth / min free | domains on libvirtd |"
    )
    L.append("|---:|---|---|---|---|---:|---|---|---|---|---:|---|---|")
    for r in rows:
        v = r["systems"]["vmbridge"]
        e = r["systems"].get("exporter")
        healthy_n = r["n"] - (1 if r["victim"] else 0)
        pool = r["libvirtd_pool"]
        pool_cell = (
            f"{pool['max_queue_depth']} / {pool['min_free_workers']} of {pool['max_workers']}"
            if pool["samples"]
            else "n/a"
        )
        if r["victim"]:
            flag = f"{fmt_s(r['time_to_flag_s'])} / {fmt_s(r['time_to_breaker_open_s'])}"
            rec = (
                f"{fmt_s(r.get('recovery_vmbridge_victim_s'))} / {fmt_s(r['recovery_vmbridge_s'])}; "
                f"{fmt_s(r['recovery_exporter_s'])}"
            )
        else:
            flag = rec = "—"
        doms = sorted(set(v["domains_seen"]) | set(e["domains_seen"] if e else []))
        dom_cell = "–".join(str(x) for x in (doms[0], doms[-1])) if doms else "n/a"
        if doms and doms[0] == doms[-1]:
            dom_cell = str(doms[0])
        up_cell = f"{v['healthy_up_min'] if v['healthy_up_min'] is not None else 'n/a'} of {healthy_n}"
        if v.get("healthy_up_first_drop_s") is not None:
            up_cell += f"; at +{v['healthy_up_first_drop_s']:.0f} s"
        L.append(
            f"| {r['n']} | {phase_label(r)} | {ok_cell(v)} | {ok_cell(e) if e else 'not scraped'} "
            f"| {fmt_lat(v['p50_s'], timeout)} / {fmt_lat(v['p99_s'], timeout)} | {fmt_num(v['cpu_s_per_min'])} "
            f"| {v['healthy_missing_max']} of {healthy_n}; {v['healthy_missing_scrapes']} scrapes "
            f"| {up_cell} "
            f"| {flag} | {rec} | {fmt_num(r['libvirtd_cpu_s_per_min'])} | {pool_cell} | {dom_cell} |"
        )
    L.append("")
    L.append(
        "- *healthy VMs*: the lab VMs other than the stopped one. *Missing data* means no "
        "`kubevirt_vmi_*` sample for that VM in a successful vmbridge scrape. vmbridge keeps a VM's last "
        "good values for the breaker staleness window (default 120 s, longer than a phase), so a healthy VM "
        "whose polls fail still has data; `source_up 1` shows whether its last poll succeeded. "
        "*first scrape below all*: seconds from the start of the phase's scraping to the first vmbridge "
        "scrape in which some healthy VM had `source_up 0`."
    )
    L.append(
        "- *control* row: the same SIGSTOP of the same VM, but only vmbridge is scraped, the exporter "
        "process is idle (it does libvirt work only when scraped). It separates what the stopped VM does "
        "to vmbridge from what the exporter's hung scrapes do to the shared libvirtd."
    )
    L.append(
        "- *libvirtd workers*: `virt-admin srv-threadpool-info libvirtd` sampled every 2 s during the phase "
        "(libvirtd's default pool has 20 workers; calls beyond that queue). *Domains on libvirtd*: "
        "`vmbridge_endpoint_domains` / `libvirt_domains_number`, including domains of other tests that "
        "shared the libvirtd during the run."
    )
    L.append("")
    L.append("## Raw scrape latencies (seconds, in send order)")
    L.append("")
    L.append("<details><summary>per phase and system</summary>")
    L.append("")
    for r in rows:
        for system in r["systems"]:
            lat = " ".join(f"{x:.4f}" for x in r["systems"][system]["latencies_s"])
            L.append(f"- N={r['n']}, {phase_label(r)}, {system}: {lat}")
    L.append("")
    L.append("</details>")
    L.append("")
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(L))
    os.replace(tmp, a.out)
    log(f"wrote {a.out}")


# ------------------------------------------------------------------ main ----


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
        cmd_wait_ready(a)
    elif a.cmd == "phase":
        if a.phase != "healthy" and not a.victim:
            die(f"--victim is required for phase '{a.phase}'")
        cmd_phase(a)
    elif a.cmd == "facts":
        cmd_facts(a)
    elif a.cmd == "render":
        cmd_render(a)


if __name__ == "__main__":
    main()
