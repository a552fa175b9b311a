#!/usr/bin/env python3
"""Plot a benchmark results JSON: p99 latency and deliveries/s per scenario per system.

    .venv/bin/python bench/plot.py bench/results/benchmarks-results.json [out.png]
"""

import json
import math
import sys
from pathlib import Path

COLORS = {"chat": "#2b6cb0", "flask-sse": "#c05621", "nchan": "#2f855a"}


def plot(doc, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = doc["systems"]
    keys = list(doc["scenarios"])
    by = {(r["system"], r["scenario"]): r for r in doc["results"]}
    idle = [k for k in keys if doc["scenarios"][k].get("idle")]
    live = [k for k in keys if k not in idle]
    memory = [k for k in keys if k in idle or doc["scenarios"][k].get("mux")]  # (c), (k); and (j)
    panels = [
        ("p99 latency (ms, log)", lambda r: (r.get("latency_ms") or {}).get("p99"), True, live),
        ("deliveries/s (log)", lambda r: r.get("deliveries_per_s"), True, live),
        ("KiB per stream (PSS)", lambda r: r.get("kib_per_stream"), False, memory),
        ("connect time (s)", lambda r: r.get("connect_secs"), False, keys),
    ]
    panels = [p for p in panels if p[3]]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    width = 0.8 / max(1, len(systems))
    for ax, (label, get, log, pkeys) in zip(axes[:, 0], panels):
        values = []
        for i, name in enumerate(systems):
            xs, ys = [], []
            for j, key in enumerate(pkeys):
                r = by.get((name, key))
                v = get(r) if r and "error" not in r and not r.get("na") else None
                if v:
                    xs.append(j + (i - (len(systems) - 1) / 2) * width)
                    ys.append(v)
            ax.bar(xs, ys, width, label=name, color=COLORS.get(name))
            values.extend(ys)
        ax.set_xticks(range(len(pkeys)))
        ax.set_xticklabels([f"({k}) {doc['scenarios'][k]['title']}" for k in pkeys], fontsize=7, rotation=12)
        ax.set_ylabel(label, fontsize=8)
        if log and values and max(values) / min(values) > 20:
            # Bars on a log axis need a floor well below the smallest, or they mislead.
            ax.set_yscale("log")
            ax.set_ylim(bottom=10 ** math.floor(math.log10(min(values) / 2)))
        else:
            ax.set_ylabel(label.replace(", log", "").replace(" (log)", ""), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    title = "chat benchmarks" + (" (smoke sizes)" if doc.get("smoke") else "") + f" — {doc.get('started', '')}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "benchmarks-results.json")
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_name("benchmarks.png")
    plot(json.loads(src.read_text()), dst)
    print(dst)
