"""Throughput and p99 per peer and scenario as a PNG, from results.json.

python -m benchmarks.chart benchmarks/results/results.json benchmarks/results/chart.png

Run by the suite with the LitServe virtual environment's Python, where it installs matplotlib, so
that ferryman's own environment never gains a plotting stack.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCENARIOS = (
    ("a1", "(a) trivial\n1 conn"),
    ("a32", "(a) trivial\n32 conn"),
    ("b", "(b) batching\n64 conn"),
    ("g1on", "(g) batch on\n1 conn"),
    ("g1off", "(g) batch off\n1 conn"),
    ("g64on", "(g) batch on\n64 conn"),
    ("g64off", "(g) batch off\n64 conn"),
    ("c", "(c) streaming\n8 conn"),
)
PEERS = (
    ("litserve", "LitServe", "#9e9e9e"),
    ("bentoml", "BentoML", "#8e7cc3"),
    ("rayserve", "Ray Serve", "#6aa84f"),
    ("torchserve", "TorchServe", "#cc4125"),
    ("bare", "bare uvicorn", "#6fa8dc"),
    ("ferryman", "ferryman", "#e69138"),
)


def draw(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    medians = results["medians"]
    # Only what this run measured: a quick run has neither every peer nor every scenario.
    peers = [p for p in PEERS if any(p[0] in by_peer for by_peer in medians.values())]
    scenarios = [s for s in SCENARIOS if s[0] in medians]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(scenarios) + 2), 9))
    width = 0.8 / max(1, len(peers))
    for ax, field, title in (
        (axes[0], "rps", "requests/s (higher is better; streaming: streams/s)"),
        (axes[1], "p99_ms", "p99 latency, ms (lower is better)"),
    ):
        for i, (peer, label, color) in enumerate(peers):
            xs, ys = [], []
            for j, (key, _) in enumerate(scenarios):
                v = medians.get(key, {}).get(peer, {}).get(field)
                if isinstance(v, int | float) and v > 0:
                    xs.append(j + (i - (len(peers) - 1) / 2) * width)
                    ys.append(v)
            bars = ax.bar(xs, ys, width, label=label, color=color)
            ax.bar_label(bars, labels=[_short(y) for y in ys], fontsize=7, padding=1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(scenarios)), [name for _, name in scenarios], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    # Above both plots, not inside one: a legend there would sit on some bar's label.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=len(peers),
        fontsize=8,
        bbox_to_anchor=(0.5, 0.955),
    )
    mach = results.get("machine", {})
    rounds = results.get("config", {}).get("rounds")
    fig.suptitle(
        f"ferryman and its peers: {mach.get('cpus')} cores ({mach.get('cpu_model', '')}), "
        "2 front-end + 2 model processes where the system allows, "
        + (f"medians of {rounds} interleaved rounds" if rounds != 1 else "one round"),
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _short(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    if v >= 10:
        return f"{v:.0f}"
    return f"{v:.2g}"


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    draw(json.loads(src.read_text()), out)


if __name__ == "__main__":
    main()
