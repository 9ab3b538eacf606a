"""The totals of what every child counted (supervisor), kept across children's lives.

Children send what they counted since their last message (ferryman/metrics.py); adding each
delta here means a counter never goes backwards when a child is replaced, and a dead child leaves
nothing behind. control/metrics.py renders these totals on /metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from ferryman import protocol as p
from ferryman.metrics import CHILD_METRICS


class MetricStore:
    """Totals of what every child (alive or dead) counted."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[str, ...]], float] = {}
        self.histograms: dict[tuple[str, tuple[str, ...]], tuple[list[int], list[float]]] = {}

    def add(self, msg: p.Metrics) -> None:
        for name, labels, amount in msg.counters:
            d = CHILD_METRICS.get(name)
            if d is None or d.kind != "counter" or len(labels) != len(d.labels) or amount < 0:
                continue  # a child of another version, or a bad message: never corrupt totals
            key = (name, tuple(labels))
            self.counters[key] = self.counters.get(key, 0.0) + amount
        for name, labels, counts, total in msg.histograms:
            d = CHILD_METRICS.get(name)
            if d is None or d.kind != "histogram" or len(labels) != len(d.labels):
                continue
            if len(counts) != len(d.buckets) + 1 or any(n < 0 for n in counts):
                continue
            key = (name, tuple(labels))
            acc = self.histograms.get(key)
            if acc is None:
                acc = self.histograms[key] = ([0] * len(counts), [0.0])
            for i, n in enumerate(counts):
                acc[0][i] += n
            acc[1][0] += total

    def collect(self) -> Iterator[Metric]:
        for d in CHILD_METRICS.values():
            if d.kind == "counter":
                c = CounterMetricFamily(d.name, d.help, labels=list(d.labels))
                for (name, labels), value in sorted(self.counters.items()):
                    if name == d.name:
                        c.add_metric(list(labels), value)
                yield c
            else:
                h = HistogramMetricFamily(d.name, d.help, labels=list(d.labels))
                bounds = [*(_le(b) for b in d.buckets), "+Inf"]
                for (name, labels), (counts, total) in sorted(self.histograms.items()):
                    if name != d.name:
                        continue
                    cumulative, running = [], 0
                    for le, n in zip(bounds, counts, strict=True):
                        running += n
                        cumulative.append((le, float(running)))
                    h.add_metric(list(labels), cumulative, total[0])
                yield h


def _le(bound: float) -> str:
    return repr(float(bound))
