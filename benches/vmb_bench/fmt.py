"""Text formatting shared by the benchmarks and their reports: latencies, durations,
numbers, byte sizes, series per VM, lists, and the stderr messages (`say`, `fail`) that
each script prefixes with its own name.

Leaf module: imports the standard library only.
"""

import sys


def say(prog, msg):
    print(f"{prog}: {msg}", file=sys.stderr, flush=True)


def fail(prog, msg):
    print(f"{prog}: ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


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


def fmt_pv(v):
    """Series per VM: whole numbers plain, others with one decimal."""
    return f"{v:.0f}" if abs(v - round(v)) < 0.05 else f"{v:.1f}"


def and_list(items):
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
