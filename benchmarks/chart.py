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
    ("c", "(c) streaming\n8 conn"),
)
PEERS = (
    ("litserve", "LitServe", "#9e9e9e"),
    ("bare", "bare uvicorn", "#6fa8dc"),
    ("ferryman", "ferryman", "#e69138"),
)


def draw(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    medians = results["medians"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(PEERS)
    for ax, field, title in (
        (axes[0], "rps", "requests/s (higher is better; streaming: streams/s)"),
        (axes[1], "p99_ms", "p99 latency, ms (lower is better)"),
    ):
        for i, (peer, label, color) in enumerate(PEERS):
            xs, ys = [], []
            for j, (key, _) in enumerate(SCENARIOS):
                v = medians.get(key, {}).get(peer, {}).get(field)
                if isinstance(v, int | float) and v > 0:
                    xs.append(j + (i - (len(PEERS) - 1) / 2) * width)
                    ys.append(v)
            bars = ax.bar(xs, ys, width, label=label, color=color)
            ax.bar_label(bars, labels=[_short(y) for y in ys], fontsize=7, padding=1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(SCENARIOS)), [name for _, name in SCENARIOS], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    mach = results.get("machine", {})
    rounds = results.get("config", {}).get("rounds")
    fig.suptitle(
        f"ferryman vs LitServe vs bare uvicorn: {mach.get('cpus')} cores "
        f"({mach.get('cpu_model', '')}), 2 API processes + 2 workers, "
        + (f"medians of {rounds} interleaved rounds" if rounds != 1 else "one round"),
        fontsize=10,
    )
    fig.tight_layout()
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
