"""Measurement primitives shared by compare.py and scale.py: the HTTP scrape client, /proc
readers (CPU ticks, RSS, meminfo, load average, QEMU processes), threads that sample beside
a phase (libvirtd's worker pool, other tenants' QEMU domains, a once-a-second scrape
watcher), and lab and shell helpers.

Imports the standard library, expo (to parse a scrape) and fmt (messages) only. Its error
messages keep the prefix `compare.py:`, the script these helpers lived in before the split.
"""

import gzip
import http.client
import os
import re
import subprocess
import threading
import time

from .expo import parse
from .fmt import fail


CLK_TCK = os.sysconf("SC_CLK_TCK")


def die(msg):
    fail("compare.py", msg)


def http_get(url_hostport, path, timeout, headers=None):
    """GET http://HOSTPORT/PATH with optional request headers (a dict).
    Returns (latency_s, status, body, response_headers).

    status is an int HTTP status, "timeout" or "error: ...". A scrape that takes
    `timeout` seconds or longer counts as timed out and its latency is `timeout`. body is
    the body as received (still compressed if the server compressed it: the bytes on the
    wire, without HTTP framing); response_headers maps lower-cased header names to values
    ({} without an answer). `decoded` gives the uncompressed body.
    """
    host, port = url_hostport.rsplit(":", 1)
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    body = b""
    hdrs = {}
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
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
    return dt, status, body, hdrs


def decoded(body, hdrs):
    """The body of an http_get answer, gunzipped if its Content-Encoding is gzip."""
    if hdrs.get("content-encoding", "").strip().lower() == "gzip" and body:
        return gzip.decompress(body)
    return body


def lab_names(prefix, n):
    return [f"{prefix}{i:02d}" for i in range(1, n + 1)]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return int(fields[11]) + int(fields[12])


def threads(pid):
    """The process's thread count (`Threads:` of /proc/PID/status), None if not found."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


def started_s_ago(pid):
    """Seconds since the process started (/proc/PID/stat starttime against /proc/uptime)."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    start_ticks = int(s[s.rindex(")") + 2 :].split()[19])  # field 22, starttime
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    return up - start_ticks / CLK_TCK


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None


def check_alive(pid, what):
    if not os.path.exists(f"/proc/{pid}"):
        die(f"{what} (pid {pid}) is not running")


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


def sh(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def meminfo():
    kv = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            kv[k] = int(v.split()[0])
    return kv


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


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
                total += rss_mb(int(pid)) or 0.0
                count += 1
            except OSError:
                pass
    return total, count


def scrape_state(system, addr, prefix, timeout=10.0):
    dt, st, body, _ = http_get(addr, "/metrics", timeout)
    if st != 200:
        return None
    return parse(system, body.decode("utf-8", "replace"), prefix)


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
