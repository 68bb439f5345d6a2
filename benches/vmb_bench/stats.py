"""Statistics over measured values, with the definitions every published number uses:
the nearest-rank percentile (the ceil(p/100 * n)-th smallest value; with 30 or 60 scrapes
p99 is the slowest one), per-VM ratios, the marks of a SIGSTOP timeline, load ranges.
Medians are the stdlib's `statistics.median`, called where they are computed.

Leaf module: imports the standard library only.
"""

import math


def pct_nearest_rank(values, p):
    s = sorted(values)
    k = max(1, math.ceil(p / 100.0 * len(s)))
    return s[k - 1]


def per_vm(counts, n):
    return {g: c / n for g, c in counts.items()} if n else None


def timeline_marks(timeline, healthy_n):
    """From a sorted timeline [(seconds after the SIGSTOP, lab VMs with data or None)]: the
    first time with fewer than `healthy_n` VMs, the first time with none, and the first time
    after that with some again (each None if it did not happen)."""
    first_below = next((t for t, n in timeline if n is not None and n < healthy_n), None)
    first_zero = next((t for t, n in timeline if n == 0), None)
    back = None
    if first_zero is not None:
        back = next((t for t, n in timeline if t > first_zero and n is not None and n > 0), None)
    return first_below, first_zero, back


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


def load_range(rows):
    """Lowest and highest 1-min load average at the start and end of the phases."""
    xs = [r.get(key) for r in rows for key in ("loadavg_start", "loadavg_end")]
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else (None, None)


def near(ns, target):
    """The N closest to target (the smaller one on a tie)."""
    return min(ns, key=lambda n: (abs(n - target), n))
