"""compare.sh's measurement subcommands: wait-ready, phase (one measured phase of vmbridge
and prometheus-libvirt-exporter side by side, appended as one JSON line) and facts.

Imports measure, expo, stats and fmt.
"""

import json
import re
import statistics
import sys
import threading
import time

from .expo import parse_exporter, parse_vmbridge
from .fmt import fail, fmt_lat, fmt_num, say
from .measure import CLK_TCK, PoolSampler, check_alive, cpu_ticks, http_get, lab_names, rss_mb, run_lab, sh
from .stats import pct_nearest_rank


def log(msg):
    say("compare.py", msg)


def die(msg):
    fail("compare.py", msg)


def state_vmbridge(vmb, prefix, n, timeout=5.0):
    dt, status, body, _ = http_get(vmb, "/metrics", timeout)
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
            _, st, _, _ = http_get(a.vmb, "/readyz", 5.0)
            ready = st == 200
            last = f"vmbridge /readyz: {st}"
        if ready and not vmb_ok:
            p = state_vmbridge(a.vmb, a.prefix, a.n)
            if p is not None:
                up = {v for v, x in p["up"].items() if x == 1.0}
                vmb_ok = want <= p["vms"] and want <= up
                last = f"vmbridge: {len(want & p['vms'])}/{a.n} lab VMs with data, {len(want & up)} up"
        if not exp_ok:
            _, st, body, _ = http_get(a.exp, "/metrics", 10.0)
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


def wait_flagged(a, victim, t_stop):
    """Wait until vmbridge reports the victim's libvirt source down (and its breaker open),
    at least a.stop_wait seconds after the SIGSTOP, at most 60 s."""
    t_flag = t_open = None
    while True:
        el = time.monotonic() - t_stop
        if t_flag is None or t_open is None:
            _, st, body, _ = http_get(a.vmb, "/metrics", 5.0)
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
            _, st, body, _ = http_get(a.exp, "/metrics", 10.0)
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
        dt, status, body, _ = http_get(targets[system], "/metrics", a.timeout)
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
