"""Report plumbing shared by scale.py's and compare.py's reports: the systems' display
names, docs/benchmarks.md's title and generated-block markers and the splicing of a block,
phase names, the (mode, N) keys of a scale run and their labels, the collectd.conf text
(quoted in the report, written by collectd-conf) and splice-compare (compare.py's report,
headings one level down, into its block).

Imports fmt only (splice-compare runs benches/compare.py as a subprocess).
"""

import os
import subprocess
import sys
import tempfile

from .fmt import fail, say


LABEL = {"vmbridge": "vmbridge", "exporter": "prometheus-libvirt-exporter", "collectd": "collectd virt"}
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
CBEGIN, CEND = "<!-- compare:begin -->", "<!-- compare:end -->"
TITLE = "# Benchmarks: vmbridge vs prometheus-libvirt-exporter and collectd"
BENCHES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benches/


def log(msg):
    say("scale.py", msg)


def die(msg):
    fail("scale.py", msg)


def dig(x, *keys):
    for key in keys:
        if not isinstance(x, dict) or x.get(key) is None:
            return None
        x = x[key]
    return x


def synth_sizes(synth):
    return sorted({x["n"] for x in (synth or {}).get("results") or [] if "n" in x})


def run_keys(rows):
    """The (mode, N) of each lab size in the order run (results without a mode: boot)."""
    out = []
    for r in rows:
        key = (r.get("mode") or "boot", r["n"])
        if key not in out:
            out.append(key)
    return out


def run_labeler(keys):
    """label((mode, N)): "N" when every size ran in boot mode (as before modes), else "N mode"."""
    plain = all(m == "boot" for m, _ in keys)
    return lambda key: str(key[1]) if plain else f"{key[1]} {key[0]}"


def phase_name(r):
    v = r.get("victim")
    if r["phase"] == "stopped-alone" and "exporter" not in (r.get("running") or ["exporter"]):
        return f"control A: {v} stopped, vmbridge alone (the peers not run)"
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
    if a.rendered:
        with open(a.rendered) as f:
            lines = f.read().splitlines()
    else:
        if not (a.facts and a.results):
            die("splice-compare needs --rendered, or --facts and --results")
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "compare.md")
            subprocess.run(
                [sys.executable, os.path.join(BENCHES, "compare.py"), "render",
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
