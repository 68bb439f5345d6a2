"""scale.sh's measurement subcommands: wait-ready, phase (one measured phase of vmbridge,
prometheus-libvirt-exporter and collectd on one lab, appended as one JSON line), facts and
lab-facts.

Imports measure, expo, stats and fmt.
"""

import json
import os
import re
import statistics
import sys
import threading
import time

from .expo import (
    GROUP_COLS,
    SYSTEMS,
    endpoint_calls,
    load_catalogue,
    load_kubevirt,
    parse,
    parse_vmbridge,
    series_groups,
)
from .fmt import fail, fmt_lat, fmt_num, say
from .measure import (
    CLK_TCK,
    ForeignSampler,
    PoolSampler,
    Watcher,
    cpu_ticks,
    decoded,
    http_get,
    lab_names,
    loadavg,
    meminfo,
    qemu_rss_mb,
    rss_mb,
    run_lab,
    scrape_state,
    sh,
    started_s_ago,
    threads as thread_count,
)
from .stats import pct_nearest_rank, per_vm, timeline_marks


def log(msg):
    say("scale.py", msg)


def die(msg):
    fail("scale.py", msg)


def latency_stats(statuses, lat):
    """Answer counts and latency summary of one system's scrapes in a phase."""
    return {
        "ok": statuses.get("200", 0),
        "timeouts": statuses.get("timeout", 0),
        "statuses": statuses,
        "p50_s": statistics.median(lat),
        "p99_s": pct_nearest_rank(lat, 99),
        "min_s": min(lat),
        "max_s": max(lat),
    }


def parse_sys(specs):
    out = {}
    for s in specs:
        name, rest = s.split("=", 1)
        host, port, pid = rest.rsplit(":", 2)
        if name not in SYSTEMS:
            die(f"unknown system {name}")
        out[name] = {"addr": f"{host}:{port}", "pid": int(pid)}
    return out


def alive(pid):
    return os.path.exists(f"/proc/{pid}")


def all_reported(system, addr, prefix, want):
    p = scrape_state(system, addr, prefix)
    if p is None:
        return False, "no answer"
    if system == "vmbridge":
        up = {v for v, x in p["up"].items() if x == 1.0}
        return want <= p["vms"] and want <= up, f"{len(want & p['vms'])} with data, {len(want & up)} up"
    return want <= p["vms"], f"{len(want & p['vms'])} with data"


def not_run(a, systems):
    """{system: why} for the systems of SYSTEMS not started at this size (--not-run WHY)."""
    if not getattr(a, "not_run", None):
        return {}
    return {s: a.not_run for s in SYSTEMS if s not in systems}


def cmd_wait_ready(a):
    """Wait until each system reports every lab VM. With --out, append one JSON line: per
    system the seconds from its start until it did, or what it did instead (a system not
    ready within --timeout is recorded, not fatal: the run goes on and the phases measure it)."""
    systems = parse_sys(a.sys)
    want = set(lab_names(a.prefix, a.n))
    deadline = time.monotonic() + a.timeout
    pending = set(systems)
    last = {}
    ready = {}
    t0 = time.monotonic()
    while pending and time.monotonic() < deadline:
        for s in sorted(pending):
            pid = systems[s]["pid"]
            if not alive(pid):
                ready[s] = f"exited (pid {pid}) before reporting every lab VM" + (f"; last seen: {last[s]}" if last.get(s) else "")
                log(f"WARNING: {s}: {ready[s]}")
                pending.discard(s)
                continue
            if s == "vmbridge":
                _, st, _, _ = http_get(systems[s]["addr"], "/readyz", 5.0)
                if st != 200:
                    last[s] = f"/readyz {st}"
                    continue
            ok, what = all_reported(s, systems[s]["addr"], a.prefix, want)
            last[s] = what
            if ok:
                try:
                    ready[s] = round(started_s_ago(pid), 1)
                except (OSError, ValueError, IndexError):
                    ready[s] = round(time.monotonic() - t0, 1)
                log(f"{s}: all {a.n} lab VMs after {time.monotonic() - t0:.0f} s of waiting, "
                    f"{ready[s]:.0f} s after its start")
                pending.discard(s)
        if pending:
            time.sleep(1.0)
    for s in sorted(pending):
        ready[s] = f"not ready after {a.timeout:.0f} s: {last.get(s) or 'no answer'}"
        log(f"WARNING: {s}: {ready[s]}; the run goes on")
    if a.out:
        nr = not_run(a, systems)
        rec = {"phase": "ready", "n": a.n, "mode": a.mode, "timeout_s": a.timeout,
               "ready_s": {s: ready.get(s) for s in SYSTEMS if s in systems or s in nr}}
        for s in nr:
            rec["ready_s"][s] = None
        if nr:
            rec["not_run"] = nr
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")


def wait_flagged(vmb, prefix, victim, t_stop, stop_wait):
    t_flag = t_open = None
    while True:
        el = time.monotonic() - t_stop
        if t_flag is None or t_open is None:
            _, st, body, _ = http_get(vmb, "/metrics", 5.0)
            if st == 200:
                text = body.decode("utf-8", "replace")
                p = parse_vmbridge(text, prefix)
                if t_flag is None and p["up"].get(victim) == 0.0:
                    t_flag = time.monotonic() - t_stop
                    log(f"vmbridge flagged {victim} (source_up 0) after {t_flag:.1f} s")
                if t_open is None and re.search(
                    r'vmbridge_breaker_state\{[^}]*name="%s"[^}]*source="libvirt"[^}]*state="open"\} 1'
                    % re.escape(victim),
                    text,
                ):
                    t_open = time.monotonic() - t_stop
        if el >= stop_wait and t_flag is not None:
            break
        if el >= 60:
            log(f"WARNING: vmbridge did not flag {victim} within 60 s")
            break
        time.sleep(1.0)
    return t_flag, t_open


def wait_recovered(systems, prefix, want, recover_timeout):
    """After SIGCONT: seconds until each running system reports every lab VM again
    (vmbridge: with `source_up 1`)."""
    t0 = time.monotonic()
    done = {}
    while time.monotonic() - t0 < recover_timeout and len(done) < len(systems):
        for s, info in systems.items():
            if s in done:
                continue
            ok, _ = all_reported(s, info["addr"], prefix, want)
            if ok:
                done[s] = time.monotonic() - t0
        time.sleep(1.0)
    log("recovery after SIGCONT: " + ", ".join(
        f"{s} {done[s]:.1f} s" if s in done else f"{s} NOT recovered" for s in systems))
    return {s: done.get(s) for s in systems}


def cmd_phase(a):
    systems = parse_sys(a.sys)
    scraped = [s for s in SYSTEMS if s in a.scrape.split(",")]
    for s in scraped:
        if s not in systems:
            die(f"--scrape {s} but no --sys {s}")
    dead_at_start = sorted(s for s, info in systems.items() if not alive(info["pid"]))
    for s in dead_at_start:
        log(f"WARNING: {s} (pid {systems[s]['pid']}) is not running; its scrapes are recorded as they fail")
    want = set(lab_names(a.prefix, a.n))
    victim = a.victim
    healthy_want = want - ({victim} if victim else set())
    catalogue = kubevirt = None
    if a.phase == "healthy" and a.catalogue:
        catalogue = load_catalogue(a.catalogue)
        if not catalogue:
            die(f"no family with a group in {a.catalogue} (expected `vmbridge --list-metrics` output)")
        if a.kubevirt:
            kubevirt = load_kubevirt(a.kubevirt)
            if not kubevirt:
                die(f"no family in {a.kubevirt}")
    load0 = loadavg()

    t_stop = t_flag = t_open = None
    watchers = {}
    if victim:
        log(f"SIGSTOP {victim}")
        t_stop = time.monotonic()
        run_lab(a.lab, "stop-vm", victim)
        for s in scraped:
            if s != "exporter":  # an exporter scrape would itself hang and load libvirtd
                watchers[s] = Watcher(s, systems[s]["addr"], a.prefix, want, t_stop)
                watchers[s].start()
        t_flag, t_open = wait_flagged(systems["vmbridge"]["addr"], a.prefix, victim, t_stop, a.stop_wait)
        for w in watchers.values():
            w.stop.set()

    pids = {s: systems[s]["pid"] for s in systems}
    if a.libvirtd_pid:
        pids["libvirtd"] = a.libvirtd_pid
    # The healthy phase scrapes each system K times plain and K times with the header
    # Prometheus always sends; the stopped phases plain only.
    variants = {"plain": None}
    if a.phase == "healthy":
        variants["gzip"] = {"Accept-Encoding": "gzip"}
    results = {(s, v): [None] * a.k for v in variants for s in scraped}

    def one(system, variant, i):
        t_send = time.monotonic()
        dt, status, body, hdrs = http_get(systems[system]["addr"], "/metrics", a.timeout, variants[variant])
        results[(system, variant)][i] = (dt, status, body, t_send, hdrs)

    probe = {}

    def long_probe():
        t_send = time.monotonic()
        dt, status, body, _ = http_get(systems["exporter"]["addr"], "/metrics", a.probe_timeout)
        t_done = time.monotonic()
        vms = None
        if status == 200:
            vms = len(parse("exporter", body.decode("utf-8", "replace"), a.prefix)["vms"] & want)
        probe.update(latency_s=dt, status=str(status), t_send=t_send, t_done=t_done, vms=vms)

    sampler = PoolSampler()
    sampler.start()
    foreign = ForeignSampler(a.prefix)
    foreign.start()
    ticks0 = {}
    for name, pid in pids.items():
        try:
            ticks0[name] = cpu_ticks(pid)
        except OSError:
            pass
    log(f"phase {a.phase} N={a.n} ({a.mode}): {a.k} scrapes of {', '.join(scraped)} "
        f"({' and '.join(variants)}), 1 every {a.interval:g} s each")
    t0 = time.monotonic()
    probe_th = None
    if victim and "exporter" in scraped and a.probe_timeout > 0:
        probe_th = threading.Thread(target=long_probe, daemon=True)
        probe_th.start()
    slots = [(system, v) for v in variants for system in scraped]
    workers = []
    for i in range(a.k):
        for j, (system, variant) in enumerate(slots):
            due = t0 + i * a.interval + j * a.interval / len(slots)
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            th = threading.Thread(target=one, args=(system, variant, i), daemon=True)
            th.start()
            workers.append(th)
    for th in workers:
        th.join(a.timeout + 30)
    wall = time.monotonic() - t0
    cpu = {}
    for name, pid in pids.items():
        if name in ticks0:
            try:
                cpu[name] = (cpu_ticks(pid) - ticks0[name]) / CLK_TCK / wall * 60.0
            except OSError:
                cpu[name] = None
    rss, nthreads = {}, {}
    for name in systems:
        try:
            rss[name] = rss_mb(pids[name])
            nthreads[name] = thread_count(pids[name])
        except OSError:
            rss[name] = nthreads[name] = None
    sampler.stop.set()
    foreign.stop.set()
    load1 = loadavg()
    died = sorted(s for s, info in systems.items() if s not in dead_at_start and not alive(info["pid"]))
    for s in died:
        log(f"WARNING: {s} (pid {systems[s]['pid']}) died during the phase")

    recovery = {}
    t_cont = None
    if victim:
        log(f"SIGCONT {victim}")
        t_cont = time.monotonic()
        run_lab(a.lab, "cont-vm", victim)
        # only the systems that were scraped or poll on their own are waited for; an idle
        # exporter is checked too (one scrape), so the next phase starts from a clean state
        recovery = wait_recovered(systems, a.prefix, want, a.recover_timeout)
    if probe_th is not None:
        probe_th.join(max(0.0, a.probe_timeout - (time.monotonic() - t0)) + 5)

    summary = {
        "n": a.n,
        "mode": a.mode,
        "phase": a.phase,
        "victim": victim,
        "scraped": scraped,
        "running": sorted(systems),
        "k": a.k,
        "interval_s": a.interval,
        "timeout_s": a.timeout,
        "wall_s": wall,
        "loadavg_start": load0,
        "loadavg_end": load1,
        "scrape_start_after_stop_s": (t0 - t_stop) if t_stop else None,
        "time_to_flag_s": t_flag,
        "time_to_breaker_open_s": t_open,
        "recovery_s": recovery,
        "libvirtd_cpu_s_per_min": cpu.get("libvirtd"),
        "libvirtd_pool": {
            "samples": sampler.samples,
            "max_queue_depth": sampler.max_queue,
            "min_free_workers": sampler.min_free,
            "max_workers": sampler.max_workers,
        },
        "series_groups_from": ({"catalogue_families": len(catalogue),
                                "kubevirt_families": len(kubevirt) if kubevirt is not None else None}
                               if catalogue is not None else None),
        "foreign_domains_max": foreign.max_count,
        "foreign_domains_stopped": sorted(foreign.stopped),
        "cpu_s_per_min": {s: cpu.get(s) for s in systems},
        "rss_mb": {s: rss.get(s) for s in systems},
        "threads": {s: nthreads.get(s) for s in systems},
        "poll_s": a.poll,
        "libvirt_calls": libvirt_calls(results, a),
        "systems": {},
    }
    if dead_at_start or died:
        summary["dead_at_start"], summary["died"] = dead_at_start, died
    if not_run(a, systems):
        summary["not_run"] = not_run(a, systems)
    if probe:
        summary["exporter_probe"] = {
            "timeout_s": a.probe_timeout,
            "latency_s": probe["latency_s"],
            "status": probe["status"],
            "answered_after_sigcont": t_cont is not None and probe["status"] == "200" and probe["t_done"] > t_cont,
            "sent_after_stop_s": probe["t_send"] - t_stop,
            "answered_after_stop_s": probe["t_done"] - t_stop,
            "vms": probe.get("vms"),
        }
    for system in scraped:
        lat, vms_per, lab_series, tot_series, nbytes, statuses = [], [], [], [], [], {}
        timeline = list(watchers[system].timeline) if system in watchers else []
        up_min = None
        first_drop = None
        healthy_missing_max = 0
        last_text = None
        for r in results[(system, "plain")]:
            if r is None:
                r = (a.timeout, "timeout", b"", None, {})
            dt, status, body, t_send, hdrs = r
            lat.append(dt)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status != 200:
                vms_per.append(0)
                if t_stop is not None and t_send is not None:
                    timeline.append((round(t_send - t_stop, 2), 0))
                continue
            text = decoded(body, hdrs).decode("utf-8", "replace")
            last_text = text
            p = parse(system, text, a.prefix)
            got = p["vms"] & want
            vms_per.append(len(got))
            lab_series.append(p["series_lab"])
            tot_series.append(p["series_total"])
            nbytes.append(len(body))
            healthy_missing_max = max(healthy_missing_max, len(healthy_want - got))
            if t_stop is not None and t_send is not None:
                timeline.append((round(t_send - t_stop, 2), len(got)))
            if system == "vmbridge" and victim and t_open is None and re.search(
                r'vmbridge_breaker_state\{[^}]*name="%s"[^}]*source="libvirt"[^}]*state="open"\} 1' % re.escape(victim),
                text,
            ):
                t_open = t_send - t_stop  # upper bound: first measured scrape that showed it open
                summary["time_to_breaker_open_s"] = t_open
            if system == "vmbridge":
                ups = {v for v, x in p["up"].items() if x == 1.0} & healthy_want
                up_min = len(ups) if up_min is None else min(up_min, len(ups))
                if first_drop is None and len(ups) < len(healthy_want) and t_send is not None:
                    first_drop = t_send - t0
        timeline.sort()
        first_below, first_zero, back_while_stopped = timeline_marks(timeline, len(healthy_want))
        summary["systems"][system] = {
            **latency_stats(statuses, lat),
            "vms_min": min(vms_per),
            "vms_max": max(vms_per),
            "series_lab_median": statistics.median(lab_series) if lab_series else None,
            "series_total_median": statistics.median(tot_series) if tot_series else None,
            "bytes_median": statistics.median(nbytes) if nbytes else None,
            "healthy_missing_max": healthy_missing_max,
            "healthy_up_min": up_min,
            "healthy_up_first_drop_s": first_drop,
            "timeline": timeline if victim else [],
            "first_below_all_after_stop_s": first_below,
            "first_zero_after_stop_s": first_zero,
            "back_while_stopped_s": back_while_stopped,
            "latencies_s": lat,
        }
        s = summary["systems"][system]
        if "gzip" in variants:
            s["gzip"] = gzip_summary(system, results[(system, "gzip")], a, want)
        if catalogue is not None and last_text is not None:
            # The last answered scrape of the phase, kept (--expo-dir) and classified.
            if a.expo_dir:
                os.makedirs(a.expo_dir, exist_ok=True)
                with open(os.path.join(a.expo_dir, f"{system}-{a.mode}-{a.n}.txt"), "w") as f:
                    f.write(last_text)
            sg = series_groups(system, last_text, want, catalogue, kubevirt)
            s["series_by_group"] = sg["counts"]
            s["series_by_group_vms"] = sg["vms"]
            s["series_per_vm_by_group"] = per_vm(sg["counts"], sg["vms"])
            s["series_group_families"] = sg["families"]
            if "kubevirt_counts" in sg:
                s["kubevirt_series_by_group"] = sg["kubevirt_counts"]
                s["kubevirt_series_per_vm_by_group"] = per_vm(sg["kubevirt_counts"], sg["vms"])
            for label, d in ((system, s["series_per_vm_by_group"]),
                             ("virt-handler's families", s.get("kubevirt_series_per_vm_by_group"))):
                if d is not None:
                    log(f"  {label}: series per VM by group ({sg['vms']} VMs): "
                        + ", ".join(f"{g} {d[g]:.1f}" for g in GROUP_COLS if g in d)
                        + f"; total {sum(d.values()):.1f}")
        log(
            f"  {system}: p50 {fmt_lat(s['p50_s'], a.timeout)}, p99 {fmt_lat(s['p99_s'], a.timeout)}, "
            f"ok {s['ok']}/{a.k}, VMs {s['vms_min']}-{s['vms_max']}/{a.n}, series {s['series_lab_median']}, "
            f"CPU {fmt_num(cpu.get(system))} s/min, RSS {fmt_num(rss.get(system), 1)} MB, "
            f"{nthreads.get(system)} threads"
            + (f"; gzip p50 {fmt_lat(s['gzip']['p50_s'], a.timeout)}, p99 {fmt_lat(s['gzip']['p99_s'], a.timeout)}, "
               f"{s['gzip']['bytes_median']} bytes (plain {s['bytes_median']}), "
               f"{'compressed' if s['gzip']['compressed'] else 'NOT compressed'}" if "gzip" in s else "")
            + (f", below all at +{first_below:.0f} s, 0 at +{first_zero:.0f} s after SIGSTOP"
               if victim and first_below is not None and first_zero is not None else "")
        )
    lc = summary["libvirt_calls"]
    if lc and lc.get("per_vm_per_cycle") is not None:
        log(f"  vmbridge: {lc['per_vm_per_cycle']:.2f} libvirt calls per VM per {a.poll:g} s cycle "
            f"({lc['calls']:.0f} calls in {lc['elapsed_s']:.0f} s, {lc['domains'] or a.n:.0f} domains polled)")
    elif lc:
        log(f"  vmbridge: libvirt calls per VM per cycle not computed: {lc.get('why')} ({lc.get('cycles') or 0:.1f})")
    if probe:
        log(f"  exporter long probe: {probe['status']} after {probe['latency_s']:.1f} s")
    with open(a.out, "a") as f:
        f.write(json.dumps(summary) + "\n")


def gzip_summary(system, rs, a, want):
    """The gzip scrapes of one system: latencies, bytes on the wire, whether it compressed."""
    lat, nbytes, plain_bytes, vms, statuses, compressed = [], [], [], [], {}, 0
    for r in rs:
        dt, status, body, _, hdrs = r if r is not None else (a.timeout, "timeout", b"", None, {})
        lat.append(dt)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status != 200:
            continue
        nbytes.append(len(body))
        if hdrs.get("content-encoding", "").strip().lower() == "gzip":
            compressed += 1
        try:
            raw = decoded(body, hdrs)
        except (OSError, EOFError, ValueError):  # a corrupt gzip body counts as answered, no VMs
            raw = b""
        plain_bytes.append(len(raw))
        vms.append(len(parse(system, raw.decode("utf-8", "replace"), a.prefix)["vms"] & want))
    ok = statuses.get("200", 0)
    return {
        **latency_stats(statuses, lat),
        "bytes_median": statistics.median(nbytes) if nbytes else None,
        "decoded_bytes_median": statistics.median(plain_bytes) if plain_bytes else None,
        "compressed_answers": compressed,
        "compressed": bool(ok) and compressed == ok,
        "vms_min": min(vms) if vms else 0,
        "vms_max": max(vms) if vms else 0,
        "latencies_s": lat,
    }


MIN_CYCLES = 2  # poll cycles a phase's scrapes must span for vmbridge's calls per VM per cycle


def libvirt_calls(results, a):
    """vmbridge's libvirt round trips per VM per poll cycle over the phase: the sum of
    vmbridge_endpoint_calls_total at its first and last answered scrape (either variant), per
    domain vmbridge polls (vmbridge_endpoint_domains, median over the scrapes: the lab's and any
    other tenant's on the same libvirtd; the lab size if the gauge is missing)."""
    pts = []
    for (system, _), rs in results.items():
        if system != "vmbridge":
            continue
        for r in rs:
            if r is None or r[1] != 200 or r[3] is None:
                continue
            try:
                text = decoded(r[2], r[4]).decode("utf-8", "replace")
            except (OSError, EOFError, ValueError):
                continue
            c = endpoint_calls(text)
            if c is not None:
                pts.append((r[3], c, parse_vmbridge(text, a.prefix)["endpoint_domains"]))
    if len(pts) < 2:
        return {"calls": None, "elapsed_s": None, "per_vm_per_cycle": None, "scrapes": len(pts),
                "why": "fewer than two answered scrapes with the counter"}
    pts.sort()
    (t0, c0, _), (t1, c1, _) = pts[0], pts[-1]
    seen = [d for _, _, d in pts if d is not None]
    domains = statistics.median(seen) if seen else None
    per = domains or a.n
    cycles = (t1 - t0) / a.poll if a.poll else 0
    # The counter grows in bursts, once per poll cycle: over fewer than MIN_CYCLES cycles the
    # quotient is mostly the phase's alignment with the cycles, so it is not given.
    short = cycles < MIN_CYCLES
    return {
        "calls": c1 - c0,
        "elapsed_s": t1 - t0,
        "cycles": cycles,
        "domains": domains,
        "per_vm_per_cycle": None if short or not per else (c1 - c0) / per / cycles,
        "scrapes": len(pts),
        **({"why": f"the phase's scrapes spanned fewer than {MIN_CYCLES} of vmbridge's poll cycles"}
           if short else {}),
    }


def cmd_facts(a):
    mem = meminfo()
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
        "mem_total_gib": round(mem["MemTotal"] / 1024 / 1024, 1),
        "mem_available_gib": round(mem["MemAvailable"] / 1024 / 1024, 1),
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "kernel": sh(["uname", "-r"]),
        "os": sh(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "libvirtd": sh(["libvirtd", "--version"]),
        "qemu": sh(["qemu-system-x86_64", "--version"]).splitlines()[0],
        "exporter": sh(["dpkg-query", "-W", "-f", "${Package} ${Version}", "prometheus-libvirt-exporter"]),
        "collectd": sh(["dpkg-query", "-W", "-f", "${Package} ${Version}", "collectd-core"]),
        "vmbridge_version": sh([a.vmbridge, "--version"]),
        "python": sys.version.split()[0],
    }
    print(json.dumps(facts))


def cmd_lab_facts(a):
    """One JSON line about the lab at size N: memory and the lab QEMUs' RSS."""
    mem = meminfo()
    total, count = qemu_rss_mb(a.prefix)
    print(json.dumps({
        "n": a.n,
        "mode": a.mode,
        "qemu_processes": count,
        "qemu_rss_mb_total": round(total, 1),
        "qemu_rss_mb_per_vm": round(total / count, 1) if count else None,
        "mem_available_gib": round(mem["MemAvailable"] / 1024 / 1024, 1),
        "lab_up_s": a.lab_up_s,
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }))
