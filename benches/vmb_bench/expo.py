"""Parsing of the systems' /metrics bodies (Prometheus text exposition): lab VMs with
data, vmbridge's per-VM health, sources and build info, the exporter's and collectd's
series, and series per VM by vmbridge's family groups (its catalogue, the KubeVirt subset,
name rules for the peers).

Leaf module: imports the standard library only.
"""

import os
import re


VMB_NAME_RE = re.compile(r'[{,]name="([^"]*)"')
EXP_NAME_RE = re.compile(r'[{,]domain="([^"]*)"')


SYSTEMS = ("vmbridge", "exporter", "collectd")
CD_NAME_RE = re.compile(r'[{,]virt="([^"]*)"')
VM_LABEL_RE = {
    "vmbridge": re.compile(r'[{,]name="([^"]*)"'),
    "exporter": re.compile(r'[{,]domain="([^"]*)"'),
    "collectd": CD_NAME_RE,
}


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


ENDPOINT_CALLS_RE = re.compile(r"^vmbridge_endpoint_calls_total(?:\{[^}]*\})? (\S+)", re.M)


def endpoint_calls(text):
    """Sum of vmbridge_endpoint_calls_total over all its label sets (libvirt round trips the
    pollers made), None if the body has none."""
    vals = [float(v) for v in ENDPOINT_CALLS_RE.findall(text)]
    return sum(vals) if vals else None


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
        p = parse_vmbridge(text, prefix)
    elif system == "exporter":
        p = parse_exporter(text, prefix)
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
