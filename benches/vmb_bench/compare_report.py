"""compare.sh's report: `compare.py render` writes the Markdown (machine, method, results
table, findings computed from the numbers, details, raw latencies) from the facts and the
phase results.

Imports fmt only.
"""

import json
import os

from .fmt import fail, fmt_lat, fmt_num, fmt_s, say


def log(msg):
    say("compare.py", msg)


def die(msg):
    fail("compare.py", msg)


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
