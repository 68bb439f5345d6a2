#!/usr/bin/env python3
"""Measurement and report helper for benches/scale.sh (python3 stdlib; the plot needs matplotlib).

Three systems on the same real lab, side by side:
  vmbridge   (background polling, scrape served from memory)
  exporter   prometheus-libvirt-exporter (Debian; all libvirt work inside the scrape)
  collectd   collectd's virt plugin + write_prometheus (background reads, cache served)

Subcommands (called by scale.sh; see `scale.py SUBCOMMAND --help`):
  collectd-conf   write a minimal collectd.conf (virt + write_prometheus on a loopback port)
  wait-ready      wait until the given systems report every lab VM
  phase           one measured phase; appends one JSON line to --out (healthy, with --catalogue:
                  also each system's series per VM by family group, from its last scrape)
  facts           machine facts as JSON
  render          write the scale section of docs/benchmarks.md (between markers)
  splice-compare  re-render benches/compare.sh's section from saved results into its block

Every system is given as --sys NAME=HOST:PORT:PID (repeatable); --scrape lists the systems
scraped in the phase (the others keep running and only their CPU and RSS are read).
Helpers (HTTP client, vmbridge/exporter parsers, /proc readers, libvirtd pool sampler,
percentiles, formatting) come from compare.py, so both benchmarks measure the same way.
"""

import argparse
import json
import os
import re
import statistics
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in benches/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as C  # noqa: E402

SYSTEMS = ("vmbridge", "exporter", "collectd")
LABEL = {"vmbridge": "vmbridge", "exporter": "prometheus-libvirt-exporter", "collectd": "collectd virt"}
CD_NAME_RE = re.compile(r'[{,]virt="([^"]*)"')
VM_LABEL_RE = {
    "vmbridge": re.compile(r'[{,]name="([^"]*)"'),
    "exporter": re.compile(r'[{,]domain="([^"]*)"'),
    "collectd": CD_NAME_RE,
}
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
CBEGIN, CEND = "<!-- compare:begin -->", "<!-- compare:end -->"
TITLE = "# Benchmarks: vmbridge vs prometheus-libvirt-exporter and collectd"


def log(msg):
    print(f"scale.py: {msg}", file=sys.stderr, flush=True)


def die(msg):
    print(f"scale.py: ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def lab_names(prefix, n):
    return C.lab_names(prefix, n)


# --------------------------------------------------------------- parsing ----


def series_lines(text):
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def parse(system, text, prefix):
    """Common view of one /metrics body: lab VMs with data, series counts, extras."""
    lines = series_lines(text)
    rx = VM_LABEL_RE[system]
    lab_series = 0
    for ln in lines:
        m = rx.search(ln)
        if m and m.group(1).startswith(prefix):
            lab_series += 1
    if system == "vmbridge":
        p = C.parse_vmbridge(text, prefix)
    elif system == "exporter":
        p = C.parse_exporter(text, prefix)
    else:
        vms = set()
        samples = 0
        for ln in lines:
            if ln.startswith("collectd_virt_"):
                m = CD_NAME_RE.search(ln)
                if m and m.group(1).startswith(prefix):
                    vms.add(m.group(1))
                    samples += 1
        p = {"samples": samples, "vms": vms}
    p["series_total"] = len(lines)
    p["series_lab"] = lab_series
    return p


# ------------------------------------------------- series by family group ----

# vmbridge's catalogue groups (src/catalogue.rs, `Group::ALL` order), then what fits none.
GROUPS = ("core", "hypervisor", "guest", "qmp", "process", "bridge")
GROUP_COLS = GROUPS + ("other",)
# The peers have no groups: their families are put into vmbridge's by name (documented in the
# report). A counter whose name says CPU, vCPU, interface or block → core; otherwise memory,
# balloon, state, info/meta, maximum, a vCPU count or a block size → hypervisor; else other.
PEER_CORE_RE = re.compile(r"cpu|interface|if_|block|disk")
PEER_HYP_RE = re.compile(r"memory|balloon|state|info|meta|maximum|virtual_cpus|vcpus|capacity|allocation|physical")
CD_TYPE_RE = re.compile(r'[{,]type="([^"]*)"')


def load_catalogue(path):
    """{exposed family name: group} from `vmbridge --list-metrics` (one family per line: name,
    type, group, profiles, {labels}, help) or from docs/METRICS.md (one table per group)."""
    out = {}
    if not path or not os.path.exists(path):
        return out
    heading = None
    for ln in open(path, errors="replace"):
        ln = ln.rstrip("\n")
        m = re.match(r"^## .*\(`([a-z]+)`\)\s*$", ln)
        if m:
            heading = m.group(1) if m.group(1) in GROUPS else None
            continue
        m = re.match(r"^\| `([a-zA-Z_:][a-zA-Z0-9_:]*)` \|", ln)
        if m:
            if heading:
                out[m.group(1)] = heading
            continue
        parts = ln.split()
        if len(parts) >= 3 and re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$", parts[0]):
            g = next((x for x in parts[1:4] if x in GROUPS), None)
            if g:
                out[parts[0]] = g
    return out


def load_kubevirt(path):
    """Exposed names of the families KubeVirt's virt-handler exports (first column of
    integration/fixtures/kubevirt-virt-handler-metrics.tsv; # starts a comment)."""
    out = set()
    if not path or not os.path.exists(path):
        return out
    for ln in open(path, errors="replace"):
        if ln.strip() and not ln.startswith("#"):
            out.add(ln.split("\t", 1)[0].split()[0])
    return out


def family(line):
    """The metric name of one sample line."""
    return re.split(r"[{ ]", line, 1)[0]


def peer_group(key):
    """vmbridge group of a prometheus-libvirt-exporter or collectd family, by the name rule."""
    counter = key.split(" ", 1)[0].endswith("_total")
    if counter and PEER_CORE_RE.search(key):
        return "core"
    if PEER_HYP_RE.search(key):
        return "hypervisor"
    return "other"


def series_groups(system, text, want, catalogue, kubevirt):
    """Sample lines naming a lab VM (exactly one of `want`), by family group: for vmbridge by
    its catalogue (and the KubeVirt subset: families virt-handler exports too), for the peers
    by peer_group(). Returns {"counts", "vms", "families", ["kubevirt_counts"]}."""
    rx = VM_LABEL_RE[system]
    counts, fams, kv, vms = {}, {}, {}, set()
    for ln in series_lines(text):
        m = rx.search(ln)
        if not m or m.group(1) not in want:
            continue
        name = family(ln)
        if system == "vmbridge":
            g = catalogue.get(name, "other")
            if kubevirt is not None and name in kubevirt:
                kv[g] = kv.get(g, 0) + 1
        elif system == "exporter":
            if not name.startswith("libvirt_domain_"):
                continue
            g = peer_group(name[len("libvirt_domain_"):])
        else:
            if not name.startswith("collectd_virt_"):
                continue
            t = CD_TYPE_RE.search(ln)
            g = peer_group(name[len("collectd_virt_"):] + (f" {t.group(1)}" if t else ""))
        vms.add(m.group(1))
        counts[g] = counts.get(g, 0) + 1
        fams.setdefault(g, set()).add(name)
    out = {"counts": counts, "vms": len(vms), "families": {g: sorted(v) for g, v in fams.items()}}
    if system == "vmbridge" and kubevirt is not None:
        out["kubevirt_counts"] = kv
    return out


def per_vm(counts, n):
    return {g: c / n for g, c in counts.items()} if n else None


# -------------------------------------------------------------- systems ----


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


def scrape_state(system, addr, prefix, timeout=10.0):
    dt, st, body = C.http_get(addr, "/metrics", timeout)
    if st != 200:
        return None
    return parse(system, body.decode("utf-8", "replace"), prefix)


def all_reported(system, addr, prefix, want):
    p = scrape_state(system, addr, prefix)
    if p is None:
        return False, "no answer"
    if system == "vmbridge":
        up = {v for v, x in p["up"].items() if x == 1.0}
        return want <= p["vms"] and want <= up, f"{len(want & p['vms'])} with data, {len(want & up)} up"
    return want <= p["vms"], f"{len(want & p['vms'])} with data"


def cmd_wait_ready(a):
    systems = parse_sys(a.sys)
    want = set(lab_names(a.prefix, a.n))
    deadline = time.monotonic() + a.timeout
    pending = set(systems)
    last = {}
    t0 = time.monotonic()
    while pending and time.monotonic() < deadline:
        for s in sorted(pending):
            if not alive(systems[s]["pid"]):
                die(f"{s} (pid {systems[s]['pid']}) is not running")
            if s == "vmbridge":
                _, st, _ = C.http_get(systems[s]["addr"], "/readyz", 5.0)
                if st != 200:
                    last[s] = f"/readyz {st}"
                    continue
            ok, what = all_reported(s, systems[s]["addr"], a.prefix, want)
            last[s] = what
            if ok:
                log(f"{s}: all {a.n} lab VMs after {time.monotonic() - t0:.0f} s")
                pending.discard(s)
        if pending:
            time.sleep(1.0)
    if pending:
        die(f"not ready after {a.timeout:.0f} s: " + "; ".join(f"{s}: {last.get(s)}" for s in sorted(pending)))


# ---------------------------------------------------------------- phase ----


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


class Watcher(threading.Thread):
    """Scrapes one system every second (from the SIGSTOP until told to stop) and records
    (seconds since SIGSTOP, lab VMs with data): the drop and return times come from it."""

    def __init__(self, system, addr, prefix, want, t_stop):
        super().__init__(daemon=True)
        self.system, self.addr, self.prefix, self.want, self.t_stop = system, addr, prefix, want, t_stop
        self.stop = threading.Event()
        self.timeline = []

    def run(self):
        while not self.stop.is_set():
            t = time.monotonic() - self.t_stop
            p = scrape_state(self.system, self.addr, self.prefix, timeout=5.0)
            n = len(p["vms"] & self.want) if p is not None else None
            self.timeline.append((round(t, 2), n))
            self.stop.wait(1.0)


GUEST_RE = re.compile(r"guest=([^,\s]+)")


def qemu_domains():
    """{domain name: process state letter} of every QEMU process on the machine."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            if "qemu-system" not in cmd:
                continue
            m = GUEST_RE.search(cmd)
            if not m:
                continue
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
            out[m.group(1)] = st[st.rindex(")") + 2]
        except (OSError, ValueError):
            continue
    return out


class ForeignSampler(threading.Thread):
    """Every 2 s: QEMU domains of other tenants on this machine (not PREFIX*), and which of
    them are stopped (state T): a stopped foreign VM hangs the exporter in a 'healthy' phase."""

    def __init__(self, prefix):
        super().__init__(daemon=True)
        self.prefix = prefix
        self.stop = threading.Event()
        self.max_count = 0
        self.stopped = set()

    def run(self):
        while not self.stop.is_set():
            doms = {n: st for n, st in qemu_domains().items() if not n.startswith(self.prefix)}
            self.max_count = max(self.max_count, len(doms))
            self.stopped |= {n for n, st in doms.items() if st in ("T", "t")}
            self.stop.wait(2.0)


def wait_flagged(vmb, prefix, victim, t_stop, stop_wait):
    t_flag = t_open = None
    while True:
        el = time.monotonic() - t_stop
        if t_flag is None or t_open is None:
            _, st, body = C.http_get(vmb, "/metrics", 5.0)
            if st == 200:
                text = body.decode("utf-8", "replace")
                p = C.parse_vmbridge(text, prefix)
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
    for s, info in systems.items():
        if not alive(info["pid"]):
            die(f"{s} (pid {info['pid']}) is not running")
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
        C.run_lab(a.lab, "stop-vm", victim)
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
    results = {s: [None] * a.k for s in scraped}

    def one(system, i):
        t_send = time.monotonic()
        dt, status, body = C.http_get(systems[system]["addr"], "/metrics", a.timeout)
        results[system][i] = (dt, status, body, t_send)

    probe = {}

    def long_probe():
        t_send = time.monotonic()
        dt, status, body = C.http_get(systems["exporter"]["addr"], "/metrics", a.probe_timeout)
        t_done = time.monotonic()
        vms = None
        if status == 200:
            vms = len(parse("exporter", body.decode("utf-8", "replace"), a.prefix)["vms"] & want)
        probe.update(latency_s=dt, status=str(status), t_send=t_send, t_done=t_done, vms=vms)

    sampler = C.PoolSampler()
    sampler.start()
    foreign = ForeignSampler(a.prefix)
    foreign.start()
    ticks0 = {}
    for name, pid in pids.items():
        try:
            ticks0[name] = C.cpu_ticks(pid)
        except OSError:
            pass
    log(f"phase {a.phase} N={a.n}: {a.k} scrapes of {', '.join(scraped)}, 1 every {a.interval:g} s each")
    t0 = time.monotonic()
    probe_th = None
    if victim and "exporter" in scraped and a.probe_timeout > 0:
        probe_th = threading.Thread(target=long_probe, daemon=True)
        probe_th.start()
    threads = []
    for i in range(a.k):
        for j, system in enumerate(scraped):
            due = t0 + i * a.interval + j * a.interval / len(scraped)
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
                cpu[name] = (C.cpu_ticks(pid) - ticks0[name]) / C.CLK_TCK / wall * 60.0
            except OSError:
                cpu[name] = None
    rss = {}
    for name in systems:
        try:
            rss[name] = C.rss_mb(pids[name])
        except OSError:
            rss[name] = None
    sampler.stop.set()
    foreign.stop.set()
    load1 = loadavg()
    for s, info in systems.items():
        if not alive(info["pid"]):
            die(f"{s} (pid {info['pid']}) died during the phase")

    recovery = {}
    t_cont = None
    if victim:
        log(f"SIGCONT {victim}")
        t_cont = time.monotonic()
        C.run_lab(a.lab, "cont-vm", victim)
        # only the systems that were scraped or poll on their own are waited for; an idle
        # exporter is checked too (one scrape), so the next phase starts from a clean state
        recovery = wait_recovered(systems, a.prefix, want, a.recover_timeout)
    if probe_th is not None:
        probe_th.join(max(0.0, a.probe_timeout - (time.monotonic() - t0)) + 5)

    summary = {
        "n": a.n,
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
        "systems": {},
    }
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
        for r in results[system]:
            if r is None:
                r = (a.timeout, "timeout", b"", None)
            dt, status, body, t_send = r
            lat.append(dt)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status != 200:
                vms_per.append(0)
                if t_stop is not None and t_send is not None:
                    timeline.append((round(t_send - t_stop, 2), 0))
                continue
            text = body.decode("utf-8", "replace")
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
        first_below = next((t for t, n in timeline if n is not None and n < len(healthy_want)), None)
        first_zero = next((t for t, n in timeline if n == 0), None)
        back_while_stopped = None
        if first_zero is not None:
            back_while_stopped = next(
                (t for t, n in timeline if t > first_zero and n is not None and n > 0), None)
        summary["systems"][system] = {
            "ok": statuses.get("200", 0),
            "timeouts": statuses.get("timeout", 0),
            "statuses": statuses,
            "p50_s": statistics.median(lat),
            "p99_s": C.pct_nearest_rank(lat, 99),
            "min_s": min(lat),
            "max_s": max(lat),
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
        if catalogue is not None and last_text is not None:
            # The last answered scrape of the phase, kept (--expo-dir) and classified.
            if a.expo_dir:
                os.makedirs(a.expo_dir, exist_ok=True)
                with open(os.path.join(a.expo_dir, f"{system}-{a.n}.txt"), "w") as f:
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
            f"  {system}: p50 {C.fmt_lat(s['p50_s'], a.timeout)}, p99 {C.fmt_lat(s['p99_s'], a.timeout)}, "
            f"ok {s['ok']}/{a.k}, VMs {s['vms_min']}-{s['vms_max']}/{a.n}, series {s['series_lab_median']}, "
            f"CPU {C.fmt_num(cpu.get(system))} s/min, RSS {C.fmt_num(rss.get(system), 1)} MB"
            + (f", below all at +{first_below:.0f} s, 0 at +{first_zero:.0f} s after SIGSTOP"
               if victim and first_below is not None and first_zero is not None else "")
        )
    if probe:
        log(f"  exporter long probe: {probe['status']} after {probe['latency_s']:.1f} s")
    with open(a.out, "a") as f:
        f.write(json.dumps(summary) + "\n")


# ---------------------------------------------------------------- facts ----


def qemu_rss_mb(prefix):
    """Sum and count of VmRSS of the QEMU processes of lab domains PREFIX*."""
    total, count = 0.0, 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if "qemu-system" in cmd and f"guest={prefix}" in cmd:
            try:
                total += C.rss_mb(int(pid)) or 0.0
                count += 1
            except OSError:
                pass
    return total, count


def meminfo():
    kv = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            kv[k] = int(v.split()[0])
    return kv


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
        "nproc": C.sh(["nproc"]),
        "cpu_model": cpu_model,
        "mem_total_gib": round(mem["MemTotal"] / 1024 / 1024, 1),
        "mem_available_gib": round(mem["MemAvailable"] / 1024 / 1024, 1),
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "kernel": C.sh(["uname", "-r"]),
        "os": C.sh(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "libvirtd": C.sh(["libvirtd", "--version"]),
        "qemu": C.sh(["qemu-system-x86_64", "--version"]).splitlines()[0],
        "exporter": C.sh(["dpkg-query", "-W", "-f", "${Package} ${Version}", "prometheus-libvirt-exporter"]),
        "collectd": C.sh(["dpkg-query", "-W", "-f", "${Package} ${Version}", "collectd-core"]),
        "vmbridge_version": C.sh([a.vmbridge, "--version"]),
        "python": sys.version.split()[0],
    }
    print(json.dumps(facts))


def cmd_lab_facts(a):
    """One JSON line about the lab at size N: memory and the lab QEMUs' RSS."""
    mem = meminfo()
    total, count = qemu_rss_mb(a.prefix)
    print(json.dumps({
        "n": a.n,
        "qemu_processes": count,
        "qemu_rss_mb_total": round(total, 1),
        "qemu_rss_mb_per_vm": round(total / count, 1) if count else None,
        "mem_available_gib": round(mem["MemAvailable"] / 1024 / 1024, 1),
        "lab_up_s": a.lab_up_s,
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }))


# ---------------------------------------------------------------- render ----


def back_while_stopped(x):
    """Seconds after the SIGSTOP at which a system that had dropped to no VM returned some
    VMs again, while the VM was still stopped (from the timeline); None if it did not."""
    if "back_while_stopped_s" in x:
        return x["back_while_stopped_s"]
    tl = x.get("timeline") or []
    z = x.get("first_zero_after_stop_s")
    if z is None:
        return None
    return next((t for t, n in tl if t > z and n is not None and n > 0), None)


def back_count(x):
    t = back_while_stopped(x)
    if t is None:
        return None
    return max((n for tt, n in x.get("timeline") or [] if tt >= t and n is not None), default=None)


def fmt_t(s):
    if s is None:
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms" if s < 0.01 else f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def fmt_bytes(b):
    if b is None:
        return "n/a"
    if b >= 1e6:
        return f"{b / 1e6:.2f} MB"
    if b >= 1e3:
        return f"{b / 1e3:.1f} kB"
    return f"{b:.0f} B"


def opt(fn, v):
    """fn(v), or "—" for a value the results do not have (older results, failed scrapes)."""
    return "—" if v is None else fn(v)


def dig(x, *keys):
    for key in keys:
        if not isinstance(x, dict) or x.get(key) is None:
            return None
        x = x[key]
    return x


def and_list(items):
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def synth_sizes(synth):
    return sorted({x["n"] for x in (synth or {}).get("results") or [] if "n" in x})


def near(ns, target):
    """The N closest to target (the smaller one on a tie)."""
    return min(ns, key=lambda n: (abs(n - target), n))


def phase_name(r):
    v = r.get("victim")
    return {
        "healthy": "healthy",
        "stopped-alone": f"control A: {v} stopped, only vmbridge running and scraped (+ idle exporter)",
        "stopped-bg": f"control B: {v} stopped, vmbridge + collectd scraped, exporter idle",
        "stopped": f"{v} stopped, all three scraped",
    }[r["phase"]]


def splice(path, begin, end, block_lines):
    """Replace the marked block in `path` (or append it), keep everything else, and make
    sure the file starts with the common title."""
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    block = begin + "\n" + "\n".join(block_lines).rstrip() + "\n" + end
    if begin in old and end in old:
        pre, rest = old.split(begin, 1)
        _, post = rest.split(end, 1)
        new = pre + block + post
    else:
        new = old.rstrip() + "\n\n" + block + "\n" if old.strip() else block + "\n"
    if not new.startswith(TITLE):
        new = TITLE + "\n\n" + new.lstrip()
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, path)


def cmd_splice_compare(a):
    """Re-render compare.sh's report from its saved results and put it, headings one level
    down, into the compare block (the numbers are that run's, unchanged)."""
    import subprocess
    import tempfile

    if a.rendered:
        with open(a.rendered) as f:
            lines = f.read().splitlines()
    else:
        if not (a.facts and a.results):
            die("splice-compare needs --rendered, or --facts and --results")
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "compare.md")
            subprocess.run(
                [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "compare.py"), "render",
                 "--facts", a.facts, "--results", a.results, "--out", out, "--command", a.command,
                 "--runtime", a.runtime, "--poll-interval", a.poll_interval],
                check=True,
            )
            with open(out) as f:
                lines = f.read().splitlines()
    demoted = []
    for ln in lines:
        if ln.startswith("#"):
            ln = "#" + ln
        if ln.startswith("## Benchmark: vmbridge vs prometheus-libvirt-exporter"):
            ln = "## 20 and 60 VMs: vmbridge vs prometheus-libvirt-exporter (`benches/compare.sh`)"
        demoted.append(ln)
    splice(a.out, CBEGIN, CEND, demoted)
    log(f"compare block written to {a.out}")


def render_scale(a):
    with open(a.facts) as f:
        facts = json.load(f)
    rows = [json.loads(x) for x in open(a.results) if x.strip()]
    labs = {}
    if a.lab_facts and os.path.exists(a.lab_facts):
        for x in open(a.lab_facts):
            if x.strip():
                d = json.loads(x)
                labs[d["n"]] = d
    synth = None
    if a.synthetic and os.path.exists(a.synthetic):
        with open(a.synthetic) as f:
            synth = json.loads(f.read().strip().splitlines()[-1])
    if not rows:
        die("no results")
    timeout = rows[0]["timeout_s"]
    ns = sorted({r["n"] for r in rows})
    k = rows[0]["k"]

    def row(n, phase):
        return next((r for r in rows if r["n"] == n and r["phase"] == phase), None)

    L = []
    sns = synth_sizes(synth)
    L.append(
        f"## Scale: {and_list(ns)} real VMs, three systems side by side"
        + (f", plus {sns[-1]:,} synthetic" if sns else "") + " (`benches/scale.sh`)"
    )
    L.append("")
    L.append(
        f"Generated by `benches/scale.sh`; do not edit by hand. One run on {facts['date_utc']}, total wall "
        f"time {a.runtime} (lab creation and the synthetic benchmark included, teardown not)."
    )
    L.append("")
    L.append("Regenerate (as root, on a machine where `integration/lab.sh` works; it creates and destroys only "
             "its own `scale-*` domains):")
    L.append("")
    L.append("```sh")
    L.append(a.command)
    L.append("cargo bench --bench scrape_path     # the synthetic table alone (scale.sh runs it too)")
    L.append("```")
    L.append("")
    L.append("![scrape latency vs VM count](scrape-latency.png)")
    L.append("")
    maxn = max(ns)
    lf = labs.get(maxn, {})
    L.append("### How many VMs")
    L.append("")
    L.append(
        f"- Real lab: {', '.join(str(n) for n in ns)} VMs (`scale-01` … `scale-{maxn:02d}`), all running under the "
        f"machine's one `libvirtd`. At {maxn} VMs the lab's QEMU processes held "
        f"{C.fmt_num(lf.get('qemu_rss_mb_total'), 0)} MB RSS in total "
        f"({C.fmt_num(lf.get('qemu_rss_mb_per_vm'), 1)} MB per VM) and {lf.get('mem_available_gib', 'n/a')} GiB "
        "stayed available: memory was not the limit. "
        + ("`integration/lab.sh up` stops at 99 domains, so VMs 100 and above are added one by one with "
           "`lab.sh add` (same domain XML)." if maxn > 99 else "")
    )
    if sns:
        L.append(
            f"- Synthetic: {and_list(f'{n:,}' for n in sns)} VMs in vmbridge's snapshot store, no libvirt (the "
            "scrape path alone"
            + (f"; the real lab cannot hold {sns[-1]:,} VMs on this machine" if sns[-1] > maxn else "") + ")."
        )
    L.append("")
    L.append("### Machine")
    L.append("")
    L.append(f"- CPU: {facts['nproc']} cores ({facts['cpu_model']}); memory {facts['mem_total_gib']} GiB "
             f"({facts['mem_available_gib']} GiB available at the start)")
    L.append(f"- OS: {facts['os']}; kernel {facts['kernel']}")
    L.append(f"- {facts['libvirtd']}; {facts['qemu']}")
    L.append(f"- {facts['exporter']}; {facts['collectd']} (virt + write_prometheus plugins)")
    L.append(f"- {facts['vmbridge_version']}, release build")
    lo, hi = load_range(rows)
    foreign = max((r.get("foreign_domains_max") or 0) for r in rows) if rows else 0
    L.append(
        f"- Load: load average {' '.join(facts['loadavg'])} at the start"
        + (f", {lo:.1f}–{hi:.1f} (1 min) over the measured phases" if lo is not None else "")
        + (f" (other test suites ran on the same {facts['nproc']} cores and up to {foreign} other domains on "
           "the same `libvirtd`" if foreign else
           f" (the lab's own QEMUs, the three systems and the client on {facts['nproc']} cores; no other "
           "domain on the `libvirtd`")
        + "; each phase's load average at its start and end is in the details table). Absolute latencies "
        "are therefore pessimistic for all three systems alike."
    )
    L.append("")

    # ---- real lab, healthy
    L.append("### Real lab, healthy")
    L.append("")
    L.append(
        "| N | system | scrape p50 | scrape p99 | series (lab VMs) | series per VM | exposition bytes "
        "| VMs with data | CPU s/min | CPU per cycle | RSS MB | RSS per VM (marginal) |"
    )
    L.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    healthy = {n: row(n, "healthy") for n in ns}
    base_n = ns[0]
    for n in ns:
        r = healthy[n]
        if not r:
            continue
        for s in SYSTEMS:
            x = r["systems"].get(s)
            if not x:
                continue
            cpu = r["cpu_s_per_min"].get(s)
            if s == "exporter":
                cycles = x["ok"] / r["wall_s"] * 60 if x["ok"] else None  # one collection per scrape
            else:
                cycles = 60.0 / a.poll_seconds
            per_cycle = (cpu / cycles) if (cpu is not None and cycles) else None
            rss = r["rss_mb"].get(s)
            marg = "—"
            b = healthy.get(base_n)
            if n != base_n and b and b["rss_mb"].get(s) is not None and rss is not None:
                marg = f"{(rss - b['rss_mb'][s]) * 1024 / (n - base_n):.0f} KiB"
            L.append(
                f"| {n} | {LABEL[s]} | {C.fmt_lat(x['p50_s'], timeout)} | {C.fmt_lat(x['p99_s'], timeout)} "
                f"| {C.fmt_num(x['series_lab_median'], 0)} "
                f"| {C.fmt_num(x['series_lab_median'] / n if x['series_lab_median'] else None, 1)} "
                f"| {fmt_bytes(x['bytes_median'])} | {x['vms_min']}"
                + (f"–{x['vms_max']}" if x["vms_max"] != x["vms_min"] else "")
                + f" / {n} | {C.fmt_num(cpu)} | {fmt_t(per_cycle)} | {C.fmt_num(rss, 1)} | {marg} |"
            )
    L.append("")
    L.append(
        f"- {k} scrapes per system per phase, one per {rows[0]['interval_s']:g} s per system, the three "
        "interleaved; p99 is nearest-rank, i.e. the slowest of the "
        f"{k}. *Series* counts sample lines naming a lab VM (vmbridge: `name=`, exporter: `domain=`, "
        "collectd: `virt=`), median over the phase; *exposition bytes* is the whole body (other tenants' "
        "domains included, if any). *CPU per cycle*: CPU s/min divided by collection cycles per minute — "
        f"vmbridge and collectd collect every {a.poll_seconds:g} s in the background "
        f"({60 / a.poll_seconds:g} cycles/min), the exporter collects once per scrape; vmbridge's and "
        f"collectd's figure also includes serving {a.poll_seconds / rows[0]['interval_s']:g} scrapes per cycle "
        f"(one every {rows[0]['interval_s']:g} s). *RSS per VM (marginal)*: (RSS at N − RSS at "
        f"{base_n}) / (N − {base_n})."
    )
    L.append("")
    L.extend(group_table(rows, ns, healthy, synth))

    # ---- one VM stopped
    L.append("### Real lab, one VM stopped (SIGSTOP of its QEMU)")
    L.append("")
    L.append(
        "| N | phase | system | scrapes OK | scrape p50 | scrape p99 | VMs with data (min–max) "
        "| data gone after SIGSTOP: fewer than all / none | back after SIGCONT | CPU s/min | RSS MB |"
    )
    L.append("|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for n in ns:
        for ph in ("stopped-alone", "stopped-bg", "stopped"):
            r = row(n, ph)
            if not r:
                continue
            for s in SYSTEMS:
                x = r["systems"].get(s)
                if not x:
                    continue
                ok = f"{x['ok']}/{k}" + (f" ({x['timeouts']} timed out)" if x["timeouts"] else "")
                gone = (
                    "never" if x["first_below_all_after_stop_s"] is None
                    else f"+{x['first_below_all_after_stop_s']:.0f} s / "
                    + ("never" if x["first_zero_after_stop_s"] is None else f"+{x['first_zero_after_stop_s']:.0f} s")
                )
                bw = back_while_stopped(x)
                if bw is not None:
                    gone += f"; back at +{bw:.0f} s, still stopped ({back_count(x)} of {n} VMs)"
                rec = r["recovery_s"].get(s)
                L.append(
                    f"| {n} | {phase_name(r)} | {LABEL[s]} | {ok} | {C.fmt_lat(x['p50_s'], timeout)} "
                    f"| {C.fmt_lat(x['p99_s'], timeout)} | {x['vms_min']}–{x['vms_max']} / {n} | {gone} "
                    f"| {C.fmt_s(rec) if rec is not None else 'not within ' + str(int(a.recover_timeout)) + ' s'} "
                    f"| {C.fmt_num(r['cpu_s_per_min'].get(s))} | {C.fmt_num(r['rss_mb'].get(s), 1)} |"
                )
    L.append("")
    L.append(
        "- *data gone after SIGSTOP*: seconds from the SIGSTOP to the first scrape in which the system "
        "returned fewer than all healthy lab VMs / no lab VM at all (a failed or timed-out scrape counts as "
        "none). vmbridge and collectd are also scraped once a second between the SIGSTOP and the first "
        "measured scrape (scraping starts once vmbridge flags the VM and at least "
        f"{a.stop_wait:g} s have passed), so their times are exact to ~1 s; the exporter is not pre-scraped "
        "(each of its scrapes would itself hang on libvirtd), so its time is the first measured scrape. "
        "*back after SIGCONT*: until the system reports every lab VM again (vmbridge: with "
        "`vmbridge_source_up{source=\"libvirt\"} 1`)."
    )
    L.append(
        "- *control A* is the earlier benchmark's control: only vmbridge does libvirt work (collectd is "
        "not running, the exporter is idle — it touches libvirt only when scraped). *control B* adds "
        "collectd, which polls libvirt on its own whether scraped or not; the exporter stays idle. The "
        "last phase runs all three, so it includes what the exporter's hung scrapes do to the shared "
        "`libvirtd`."
    )
    L.append("")

    # ---- synthetic
    if synth:
        res = sorted(synth.get("results") or [], key=lambda r: (r.get("profile", ""), r.get("n", 0)))
        L.append(f"### Synthetic scrape path: {and_list(f'{n:,}' for n in synth_sizes(synth))} VMs "
                 "(`cargo bench --bench scrape_path`)")
        L.append("")
        L.append(
            "| VMs | profile | scrape p50 | scrape p99 | gather / concat p50 | memcpy p50 | scrape ÷ memcpy "
            "| cold encode p50 | series per VM | bytes per VM | RSS per VM: store / + encoded "
            "| poll cycle CPU: with encode / without |"
        )
        L.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for x in res:
            L.append(
                f"| {x['n']:,} | {x.get('profile', '—')} | {opt(fmt_t, x.get('scrape_p50_s'))} "
                f"| {opt(fmt_t, x.get('scrape_p99_s'))} "
                f"| {opt(fmt_t, x.get('scrape_gather_p50_s'))} / {opt(fmt_t, x.get('scrape_concat_p50_s'))} "
                f"| {opt(fmt_t, x.get('memcpy_p50_s'))} "
                f"| {opt(lambda v: f'{v:.1f}×', x.get('scrape_over_memcpy_p50'))} "
                f"| {opt(fmt_t, x.get('cold_encode_p50_s'))} | {opt(lambda v: f'{v:.1f}', x.get('series_per_vm'))} "
                f"| {opt(fmt_bytes, x.get('bytes_per_vm'))} "
                f"| {opt(lambda v: f'{v:.1f} KiB', x.get('rss_store_per_vm_kib'))} / "
                f"{opt(lambda v: f'{v:.1f} KiB', x.get('rss_store_and_encoded_per_vm_kib'))} "
                f"| {opt(fmt_t, x.get('poll_cycle_parse_publish_encode_cpu_p50_s'))} / "
                f"{opt(fmt_t, x.get('poll_cycle_parse_publish_cpu_p50_s'))} |"
            )
        L.append("")
        L.append(
            f"- {synth.get('iterations', '—')} measured scrapes per row after 10 warm-ups, in one process, "
            "single-threaded, no HTTP (classic Prometheus text format; p99 is nearest-rank). Each VM's series "
            "are encoded once, when its sample is published; a *scrape* (`VmCollector::render`, what "
            "`/metrics` does) writes the family headers and, family by family, concatenates every VM's "
            "pre-encoded run of that family. *gather / concat*: its two parts as the collector times them "
            "(finding every VM's current runs, re-encoding only a VM whose data changed without a publish; "
            "writing the headers and copying the runs into the body), medians of 100 scrapes. *memcpy*: a "
            "plain copy of the same body into a new buffer, the floor for any server that returns these "
            "bytes; *scrape ÷ memcpy* is the ratio of the two p50s. *cold encode*: encoding every VM from "
            "scratch with a fresh collector — what every scrape did before the series were pre-encoded, and "
            "what one poll cycle's publishes now cost in total, spread over the cycle."
        )
        L.append(
            "- Per VM: 2 vCPUs, 1 NIC, 2 disks, every balloon and memory stat (the bulk-stats fields "
            "libvirt 9 returns for such a VM), values different per VM. Profile `libvirt`: a libvirt sample "
            "plus a guest-agent source without data (what the lab looks like); `libvirt+qga`: plus a full "
            "guest-agent sample (2 filesystems, 2 interfaces, 2 CPUs and disks, OS info, users, load)."
        )
        L.append(
            "- *RSS per VM*: growth of the process's `VmRSS` divided by N, each size in a fresh child process "
            "(allocator state cannot hide growth): *store* after building and holding the snapshot store, "
            "*+ encoded* after the first scrape has also encoded and kept every VM's runs (what a running "
            "vmbridge holds); at 10 VMs it is within page granularity. *Poll cycle CPU*: parsing every VM's "
            "libvirt reply (`LibvirtSample::new`) and publishing it to the store, with a live collector (each "
            "publish re-encodes that VM's runs) and without one, i.e. vmbridge's own share of a poll cycle "
            "without the libvirt round trips (those are libvirtd's CPU and I/O waits)."
        )
        L.append("")
        if any(isinstance(x.get("gzip"), dict) for x in res):
            L.append("Compression of the same body (`Accept-Encoding: gzip`), each scrape compressing anew:")
            L.append("")
            L.append("| VMs | profile | plain | gzip level 1 | gzip level 3 | gzip level 6 "
                     "| gzip, body unchanged (reused) p50 |")
            L.append("|---:|---|---:|---:|---:|---:|---:|")
            for x in res:
                cells = []
                for lv in (1, 3, 6):
                    z = dig(x, "gzip", f"level_{lv}")
                    cells.append("—" if not z else (
                        f"{opt(fmt_bytes, z.get('bytes'))}, {opt(lambda v: f'{v:.1f}×', z.get('ratio'))}, "
                        f"{opt(fmt_t, z.get('compress_p50_s'))}"))
                L.append(
                    f"| {x['n']:,} | {x.get('profile', '—')} | {opt(fmt_bytes, x.get('prometheus_bytes'))} "
                    f"| {' | '.join(cells)} | {opt(fmt_t, x.get('gzip_reused_p50_s'))} |"
                )
            L.append("")
            L.append(
                "- Each gzip cell: compressed bytes, ratio (plain ÷ compressed), compression time p50. The "
                "compression comes on top of the scrape; a gzip scrape while nothing changed since the last "
                "one reuses the compressed body (last column)."
            )
            L.append("")

    # ---- findings
    L.append("### What this run shows")
    L.append("")
    L.extend(findings(rows, ns, k, timeout, synth, healthy, facts, a))
    L.append("")

    ev = log_evidence(a.logs, ns)
    if ev:
        L.append(
            "Log evidence (from `benches/results/scale/logs`, whole run per N; `held by` names the libvirt call "
            "that was stuck in the stopped VM's QEMU monitor while this one waited 30 s for it):"
        )
        L.append("")
        for e in ev:
            L.append(f"- {e}")
        L.append("")
    # ---- method
    L.append("### Method")
    L.append("")
    L.append(
        "- Lab: `integration/lab.sh up N scale-` (TCG, q35, 32 MiB, 1 vCPU, virtio disk and NIC, balloon "
        "with 5 s stats, no guest OS; `up` creates at most 99, so `scale-100` and above are added one by one "
        "with `lab.sh add`); the lab grows from one N to the next."
    )
    L.append(
        f"- Per N all three start fresh on free loopback ports: `vmbridge --listen 127.0.0.1:P "
        f"--libvirt-uri qemu:///system --poll-interval {a.poll_seconds:g}s`, "
        "`prometheus-libvirt-exporter --web.listen-address=127.0.0.1:P --libvirt.uri=qemu:///system`, "
        "and `collectd -f -C collectd.conf` as root with this configuration (written by "
        "`scale.py collectd-conf`):"
    )
    L.append("")
    L.append("  ```")
    for ln in collectd_conf_text("WORKDIR", "PORT", a.poll_seconds).splitlines():
        L.append("  " + ln)
    L.append("  ```")
    L.append("")
    L.append(
        "  (`Interval` equals vmbridge's poll interval; the virt plugin's default metric set, no "
        "`ExtraStats`; collectd's cache drops a value not updated for `Timeout` (default 2) intervals.)"
    )
    L.append(
        "- Order per N: healthy (all three scraped) → collectd stopped → control A → collectd restarted "
        "and ready → control B → all three with the VM stopped. Each stopped phase SIGSTOPs the same "
        "middle VM, starts scraping once vmbridge shows it `source_up 0` and at least "
        f"{a.stop_wait:g} s have passed, then SIGCONTs it and waits until every running system reports "
        "every lab VM again."
    )
    L.append(
        f"- Per-scrape timeout {timeout:g} s: a timed-out scrape counts as {timeout:g} s and as zero VMs. "
        f"In the all-three phase one extra exporter scrape is sent with a {a.probe_timeout:g} s timeout to "
        "see how long a single scrape really hangs."
    )
    L.append(
        "- CPU: utime+stime of the process over the phase, scaled to a minute; RSS: `VmRSS` at the end of "
        "the phase. Scrape latency is connect to last body byte on the client (Python `http.client`, one "
        "new connection per scrape)."
    )
    L.append("")

    # ---- problems
    L.append("### What went wrong or could not be measured")
    L.append("")
    for p in problems(rows, ns, labs, facts, a):
        L.append(f"- {p}")
    L.append("")

    # ---- details
    L.append("### Details of the same run")
    L.append("")
    L.append(
        "| N | phase | load avg start → end | libvirtd CPU s/min | libvirtd workers: max queue / min free "
        "| vmbridge: `source_up 0` / breaker open after SIGSTOP | vmbridge: healthy VMs with `source_up 1` (worst) "
        "| vmbridge: healthy VMs missing data (worst scrape) | exporter single long scrape "
        "| other tenants' QEMU domains (max; SIGSTOPped ones) |"
    )
    L.append("|---:|---|---|---:|---|---|---|---|---|---|")
    for r in rows:
        pool = r["libvirtd_pool"]
        pc = (f"{pool['max_queue_depth']} / {pool['min_free_workers']} of {pool['max_workers']}"
              if pool["samples"] else "n/a")
        v = r["systems"].get("vmbridge", {})
        hv = r["n"] - (1 if r["victim"] else 0)
        flag = (f"{C.fmt_s(r['time_to_flag_s'])} / {C.fmt_s(r['time_to_breaker_open_s'])}"
                if r["victim"] else "—")
        up = f"{v.get('healthy_up_min')} of {hv}"
        if v.get("healthy_up_first_drop_s") is not None:
            up += f" (first below all at +{v['healthy_up_first_drop_s']:.0f} s of scraping)"
        pr = r.get("exporter_probe")
        prc = "—"
        if pr:
            if pr["status"] == "200":
                prc = (f"200 after {pr['latency_s']:.1f} s"
                       + (f", {pr['vms']} of {r['n']} VMs" if pr.get("vms") is not None else "")
                       + (" (only after SIGCONT)" if pr["answered_after_sigcont"] else " (before SIGCONT)"))
            else:
                prc = f"{pr['status']} after {pr['latency_s']:.0f} s"
        la = f"{C.fmt_num(r['loadavg_start'], 1)} → {C.fmt_num(r['loadavg_end'], 1)}"
        L.append(
            f"| {r['n']} | {phase_name(r)} | {la} | {C.fmt_num(r['libvirtd_cpu_s_per_min'])} | {pc} | {flag} "
            f"| {up} | {v.get('healthy_missing_max')} of {hv} | {prc} "
            f"| {r.get('foreign_domains_max', 'n/a')}"
            + (f"; stopped: {', '.join(r['foreign_domains_stopped'])}" if r.get("foreign_domains_stopped") else "")
            + " |"
        )
    L.append("")
    if labs:
        L.append("| N | lab QEMU processes | their RSS total | per VM | MemAvailable "
                 "| lab growth (`lab.sh up` + `add`) |")
        L.append("|---:|---:|---:|---:|---:|---:|")
        for n in sorted(labs):
            d = labs[n]
            L.append(
                f"| {n} | {d['qemu_processes']} | {C.fmt_num(d['qemu_rss_mb_total'], 0)} MB "
                f"| {C.fmt_num(d['qemu_rss_mb_per_vm'], 1)} MB | {d['mem_available_gib']} GiB | {d['lab_up_s']} s |"
            )
        L.append("")
    L.append("<details><summary>Raw scrape latencies (seconds, in send order) and collectd timelines</summary>")
    L.append("")
    for r in rows:
        for s, x in r["systems"].items():
            L.append(f"- N={r['n']}, {phase_name(r)}, {LABEL[s]}: " + " ".join(f"{v:.4f}" for v in x["latencies_s"]))
            if s == "collectd" and x.get("timeline"):
                L.append(
                    f"  - lab VMs with data, (s after SIGSTOP: VMs): "
                    + " ".join(f"{t:.0f}:{'-' if c is None else c}" for t, c in x["timeline"])
                )
    L.append("")
    L.append("</details>")
    splice(a.out, BEGIN, END, L)
    log(f"scale block written to {a.out}")


def collectd_conf_text(workdir, port, interval):
    return f"""Hostname "scale-bench"
FQDNLookup false
Interval {interval:g}
BaseDir "{workdir}"
PIDFile "{workdir}/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin logfile
<Plugin logfile>
  LogLevel info
  File STDOUT
  Timestamp true
</Plugin>
LoadPlugin virt
<Plugin virt>
  Connection "qemu:///system"
  RefreshInterval {interval:g}
  HostnameFormat "hostname"
  PluginInstanceFormat "name"
</Plugin>
LoadPlugin write_prometheus
<Plugin write_prometheus>
  Host "127.0.0.1"
  Port "{port}"
</Plugin>
"""


def cmd_collectd_conf(a):
    os.makedirs(a.workdir, exist_ok=True)
    with open(a.out, "w") as f:
        f.write(collectd_conf_text(a.workdir, a.port, a.interval))


def fmt_pv(v):
    """Series per VM: whole numbers plain, others with one decimal."""
    return f"{v:.0f}" if abs(v - round(v)) < 0.05 else f"{v:.1f}"


def group_table(rows, ns, healthy, synth):
    """Series per VM by family group, per N and system (healthy phase), with the rules."""
    out = ["### Series per VM by family group (real lab, healthy)", ""]
    out.append("| N | system | " + " | ".join(GROUP_COLS) + " | total |")
    out.append("|---:|---|" + "---:|" * (len(GROUP_COLS) + 1))
    have = False
    for n in ns:
        r = healthy.get(n)
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
            out.append(f"| {n} | {label} | {' | '.join(cells)} | {opt(fmt_pv, total)} |")
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
        """(N, {group: families}) of the largest N whose healthy phase classified system s."""
        return next(((n, dig(healthy.get(n), "systems", s, "series_group_families")) for n in reversed(ns)
                     if dig(healthy.get(n), "systems", s, "series_group_families")), (None, None))

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


def load_range(rows):
    """Lowest and highest 1-min load average at the start and end of the phases."""
    xs = [r.get(key) for r in rows for key in ("loadavg_start", "loadavg_end")]
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else (None, None)


def goals(rows, ns, healthy, facts, a):
    """The issue's goals at 100 VMs (or the N closest to it), healthy phase: vmbridge's CPU at most
    collectd's (same poll interval), vmbridge's RSS at most 20 MB + 50 KiB per VM; and the load."""
    out = []
    n = near(ns, 100)
    r = healthy.get(n)
    at = f"{n} VMs" + ("" if n == 100 else " (the size closest to 100)")
    if r:
        cpu, rss = r.get("cpu_s_per_min") or {}, r.get("rss_mb") or {}
        v, c = cpu.get("vmbridge"), cpu.get("collectd")
        if v is not None and c is not None:
            out.append(
                f"- Goal, CPU at {at}, healthy: vmbridge ≤ collectd, both polling every {a.poll_seconds:g} s and "
                f"scraped once per {r['interval_s']:g} s — **{'met' if v <= c else 'missed'}**: vmbridge "
                f"{v:.2f} CPU s/min, collectd {c:.2f} CPU s/min"
                + (f" (vmbridge {v / c:.2f}× collectd's)" if c > 0 else "") + "."
            )
        else:
            out.append(f"- Goal, CPU at {at}: not measured (vmbridge's or collectd's CPU missing).")
        m = rss.get("vmbridge")
        goal = 20 + 50 * n / 1024
        if m is not None:
            out.append(
                f"- Goal, memory at {at}, healthy: vmbridge RSS ≤ 20 MB + 50 KiB × {n} = {goal:.1f} MB — "
                f"**{'met' if m <= goal else 'missed'}**: {m:.1f} MB "
                f"({'under' if m <= goal else 'over'} by {abs(goal - m):.1f} MB; MB = MiB here, from `VmRSS`)."
            )
    lo, hi = load_range(rows)
    if lo is not None:
        per = ", ".join(
            f"N={r['n']} {C.fmt_num(r.get('loadavg_start'), 1)} → {C.fmt_num(r.get('loadavg_end'), 1)}"
            for r in rows if r["phase"] == "healthy")
        out.append(
            f"- Machine load during the run: 1-min load average {lo:.1f} to {hi:.1f} on "
            f"{facts.get('nproc', '?')} cores over all phases (start and end of each; healthy phases: {per}; "
            "every phase in the details table)."
        )
    return out


def findings(rows, ns, k, timeout, synth, healthy, facts, a):
    out = goals(rows, ns, healthy, facts, a)

    def hx(n, s):
        r = healthy.get(n)
        return r["systems"].get(s) if r else None

    def spv(x, n):
        return opt(lambda v: f"{v / n:.0f}", x.get("series_lab_median"))

    for n in ns:
        v, e, c = hx(n, "vmbridge"), hx(n, "exporter"), hx(n, "collectd")
        if not (v and e and c):
            continue
        out.append(
            f"- N={n}, healthy: scrape p50 vmbridge {C.fmt_lat(v['p50_s'], timeout)}, collectd "
            f"{C.fmt_lat(c['p50_s'], timeout)}, exporter {C.fmt_lat(e['p50_s'], timeout)} "
            f"(p99 {C.fmt_lat(v['p99_s'], timeout)} / {C.fmt_lat(c['p99_s'], timeout)} / "
            f"{C.fmt_lat(e['p99_s'], timeout)}); series per VM {spv(v, n)} / {spv(c, n)} / {spv(e, n)}; "
            f"exporter scrapes OK {e['ok']}/{k}."
        )
    for n in ns:
        r = next((x for x in rows if x["n"] == n and x["phase"] == "stopped"), None)
        rb = next((x for x in rows if x["n"] == n and x["phase"] == "stopped-bg"), None)
        ra = next((x for x in rows if x["n"] == n and x["phase"] == "stopped-alone"), None)
        if not r:
            continue
        v, e, c = (r["systems"].get(s) for s in SYSTEMS)
        parts = [f"- N={n}, one VM stopped:"]
        if v:
            parts.append(
                f"vmbridge answered {v['ok']}/{k} scrapes with {v['vms_min']}–{v['vms_max']} of {n} VMs "
                f"(p99 {C.fmt_lat(v['p99_s'], timeout)});"
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
                f"- N={n}, shared libvirtd: healthy VMs with vmbridge `source_up 1` (worst scrape): "
                f"{va['healthy_up_min']} of {n - 1} in control A, "
                + (f"{rb['systems']['vmbridge']['healthy_up_min']} of {n - 1} in control B, " if rb else "")
                + f"{v['healthy_up_min']} of {n - 1} with all three; libvirtd workers min free "
                f"{pool['min_free_workers']} of {pool['max_workers']}, max queue {pool['max_queue_depth']} "
                f"(control A: {ra['libvirtd_pool']['min_free_workers']} free, queue {ra['libvirtd_pool']['max_queue_depth']})."
            )
    big, small = healthy.get(max(ns)), healthy.get(min(ns))
    if big and small and max(ns) > min(ns):
        d = max(ns) - min(ns)
        parts = []
        for s_ in SYSTEMS:
            r1, r0 = big["rss_mb"].get(s_), small["rss_mb"].get(s_)
            c = big["cpu_s_per_min"].get(s_)
            if r1 is None or r0 is None or c is None:
                continue
            parts.append(f"{LABEL[s_]} {r1:.1f} MB ({(r1 - r0) * 1024 / d:+.0f} KiB per added VM), {c:.2f} CPU s/min")
        out.append(f"- Memory and CPU at {max(ns)} VMs (healthy): " + "; ".join(parts) + ".")
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
            big = healthy.get(max(ns))
            vb = big["systems"].get("vmbridge") if big else None
            if vb and vb.get("bytes_median"):
                bytes_real = vb["bytes_median"] / max(ns)
                out.append(
                    f"- Real vs synthetic: at {max(ns)} real VMs vmbridge's body is {fmt_bytes(vb['bytes_median'])} "
                    f"({fmt_bytes(bytes_real)} per VM; the lab VMs have 1 vCPU, 1 disk, no guest agent) and the "
                    f"client-side scrape p50 {C.fmt_lat(vb['p50_s'], timeout)} includes HTTP, the Python client "
                    "and a loaded 2-core machine; the synthetic numbers are the scrape path alone (concatenating "
                    "pre-encoded runs, no HTTP)."
                )
    return out


LOCK_RE = re.compile(r"cannot acquire state change lock \(held by monitor=([A-Za-z]+)\)")


def log_evidence(logdir, ns):
    """Per N: libvirt job-lock timeouts in the exporter's and collectd's logs (with the call
    that held the lock) and vmbridge's warnings, as plain statements."""
    out = []
    if not logdir or not os.path.isdir(logdir):
        return out
    for n in ns:
        parts = []
        for system, fname in (("exporter", f"exporter-{n}.log"), ("collectd", f"collectd-{n}.log")):
            path = os.path.join(logdir, fname)
            if not os.path.exists(path):
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
        path = os.path.join(logdir, f"vmbridge-{n}.warn.log")
        if os.path.exists(path):
            kinds = {}
            for ln in open(path, errors="replace"):
                m = re.search(r"(WARN|ERROR) \S+: (.*?)(?: uri=| error=|$)", ln)
                e = re.search(r"error=(.*)$", ln)
                key = (m.group(2) if m else ln.strip()[:60]) + (
                    f": {re.sub(r'[0-9.]+s$', 'N s', e.group(1).strip())}" if e else "")
                kinds[key] = kinds.get(key, 0) + 1
            if kinds:
                parts.append("vmbridge warned " + "; ".join(f"{v}× `{k}`" for k, v in kinds.items()))
            else:
                parts.append("vmbridge logged no warning")
        if parts:
            out.append(f"N={n}: " + "; ".join(parts) + ".")
    return out


def problems(rows, ns, labs, facts, a):
    out = []
    for n in ns:
        for r in rows:
            if r["n"] != n:
                continue
            for s, rec in r.get("recovery_s", {}).items():
                if rec is None:
                    out.append(
                        f"N={n}, {phase_name(r)}: {LABEL[s]} did not report every lab VM within "
                        f"{a.recover_timeout:g} s after the SIGCONT; the next phase started anyway."
                    )
            v = r["systems"].get("vmbridge")
            if v and v["ok"] < r["k"]:
                out.append(f"N={n}, {phase_name(r)}: vmbridge answered only {v['ok']}/{r['k']} scrapes.")
    for r in rows:
        if r.get("foreign_domains_stopped"):
            hit = [s for s, x in r["systems"].items() if x["timeouts"]]
            out.append(
                f"N={r['n']}, {phase_name(r)}: another tenant's VM was SIGSTOPped during the phase "
                f"({', '.join(r['foreign_domains_stopped'])}, not ours)"
                + (f"; scrapes that timed out ({', '.join(LABEL[s] for s in hit)}) may be due to it" if hit else "")
                + "."
            )
            cmp_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "compare", "results.jsonl")
            if r["phase"] == "healthy" and "exporter" in hit and os.path.exists(cmp_path):
                for x in open(cmp_path):
                    c = json.loads(x) if x.strip() else None
                    if c and c["n"] == r["n"] and c["phase"] == "healthy" and "exporter" in c["systems"]:
                        e = c["systems"]["exporter"]
                        out[-1] = out[-1][:-1] + (
                            f"; the undisturbed `compare.sh` run below measured the exporter at {r['n']} VMs at p50 "
                            f"{C.fmt_lat(e['p50_s'], r['timeout_s'])}, p99 {C.fmt_lat(e['p99_s'], r['timeout_s'])}."
                        )
                        break
        elif r["phase"] == "healthy":
            for s, x in r["systems"].items():
                if x["timeouts"]:
                    out.append(
                        f"N={r['n']}, healthy: {LABEL[s]} timed out in {x['timeouts']} of {r['k']} scrapes with no "
                        "SIGSTOPped VM seen on the machine."
                    )
    for n in ns:
        d = labs.get(n)
        if d and d["qemu_processes"] < n:
            out.append(f"N={n}: only {d['qemu_processes']} lab QEMU processes were found.")
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


# ------------------------------------------------------------------ main ----


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
    p.add_argument("--expo-dir", help="healthy phase: keep each system's last exposition here (SYSTEM-N.txt)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("facts")
    p.add_argument("--vmbridge", required=True)

    p = sub.add_parser("lab-facts")
    p.add_argument("--prefix", default="scale-")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--lab-up-s", type=int, default=None)

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
        cmd_wait_ready(a)
    elif a.cmd == "phase":
        if a.phase != "healthy" and not a.victim:
            die("--victim is required for stopped phases")
        if "vmbridge" not in a.scrape.split(","):
            die("vmbridge must be scraped in every phase (it detects the stopped VM)")
        cmd_phase(a)
    elif a.cmd == "facts":
        cmd_facts(a)
    elif a.cmd == "lab-facts":
        cmd_lab_facts(a)
    elif a.cmd == "render":
        render_scale(a)
    elif a.cmd == "splice-compare":
        cmd_splice_compare(a)


if __name__ == "__main__":
    main()
