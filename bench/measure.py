"""Measuring a run: percentiles, per-second latency, memory and CPU of the server's processes,
and the event loop and file limits the load generator runs with."""


import array
import asyncio
import base64
import math
import os
import resource

try:
    import uvloop
except ImportError:  # optional: plain asyncio works, just slower
    uvloop = None


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def new_loop():
    loop = uvloop.new_event_loop() if uvloop else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def basic_auth(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def percentiles(values, points=(50, 90, 99)):
    """Nearest-rank percentiles of a list of floats, plus max and mean."""
    if not values:
        return {f"p{p}": None for p in points} | {"max": None, "mean": None}
    ordered = sorted(values)
    n = len(ordered)
    out = {f"p{p}": round(ordered[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))], 3) for p in points}
    out["max"] = round(ordered[-1], 3)
    out["mean"] = round(sum(ordered) / n, 3)
    return out


def pss_kib(pids):
    """Sum of Pss (KiB) over the given pids, from /proc/<pid>/smaps_rollup."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


def pss_by_command(pids):
    """{command name: Pss KiB} summed over the given pids."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as fh:
                name = fh.read().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        kib = pss_kib([pid])
        out[name] = out.get(name, 0) + kib
    return out


def cpu_by_command(pids):
    """{command name: CPU seconds (user+system)} summed over the given pids."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                raw = fh.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def machine_cpu_secs():
    """CPU seconds every core of the machine spent busy so far (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def process_tree(roots):
    """The given pids and all their descendants (via /proc/<pid>/task/*/children)."""
    seen, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return seen


def merge_latencies(parts):
    """The reader processes' latency arrays (and send seconds, if kept), concatenated."""
    lat, secs = array.array("f"), array.array("H")
    for part in parts:
        chunk = array.array("f")
        chunk.frombytes(part.pop("lat"))
        lat.extend(chunk)
        raw = part.pop("secs")
        if raw is not None:
            secs.frombytes(raw)
    return lat, secs


def by_second(lat, secs):
    """Delivery latency per second of sending: [{"s", "n", "p50", "p99", "max"}]."""
    buckets = {}
    for ms, sec in zip(lat, secs):
        buckets.setdefault(sec, []).append(ms)
    out = []
    for sec in sorted(buckets):
        p = percentiles(buckets[sec])
        out.append({"s": sec, "n": len(buckets[sec]), "p50": p["p50"], "p99": p["p99"], "max": p["max"]})
    return out
