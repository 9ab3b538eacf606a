"""The metrics children record, one table of them, and the recorder that ships them.

Used by API processes and workers (recording) and by the supervisor (which renders the totals).

A child counts in plain Python (a dict update per observation: prometheus-client's multiprocess
values cost several microseconds each, a sizeable share of a request) and sends what it counted
to the supervisor over its control link every FLUSH_INTERVAL and at exit. The supervisor adds
each delta to its totals, which therefore never go backwards when a child is replaced, and no
file is left behind by a dead child. A child killed by SIGKILL loses at most its last
FLUSH_INTERVAL of counts.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from ferryman import protocol as p

FLUSH_INTERVAL = 0.1

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Def:
    name: str  # without the _total suffix of a counter
    kind: str  # "counter" or "histogram"
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


REQUESTS = Def(
    "ferryman_requests",
    "counter",
    "HTTP requests answered, by model, route and status",
    ("model", "route", "status"),
)
REQUEST_DURATION = Def(
    "ferryman_request_duration_seconds",
    "histogram",
    "Time from a request's arrival to its last byte, in the API process",
    ("model", "route"),
    LATENCY_BUCKETS,
)
QUEUE_DURATION = Def(
    "ferryman_queue_duration_seconds",
    "histogram",
    "Time a request waited in its worker before predict started",
    ("model",),
    LATENCY_BUCKETS,
)
PREDICT_DURATION = Def(
    "ferryman_predict_duration_seconds",
    "histogram",
    "Time spent in predict, per request (a batch's time counts for each of its requests)",
    ("model",),
    LATENCY_BUCKETS,
)
BATCH_SIZE = Def(
    "ferryman_batch_size",
    "histogram",
    "Requests per batch a worker ran",
    ("model",),
    BATCH_BUCKETS,
)
CHILD_METRICS = {
    d.name: d for d in (REQUESTS, REQUEST_DURATION, QUEUE_DURATION, PREDICT_DURATION, BATCH_SIZE)
}


class Histogram:
    """Bucket counts (not cumulative; the last one is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class Recorder:
    """A child's counts since its last flush."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[str, ...]], float] = {}
        self.histograms: dict[tuple[str, tuple[str, ...]], Histogram] = {}

    def inc(self, d: Def, labels: tuple[str, ...], amount: float = 1.0) -> None:
        key = (d.name, labels)
        self.counters[key] = self.counters.get(key, 0.0) + amount

    def observe(self, d: Def, labels: tuple[str, ...], value: float) -> None:
        key = (d.name, labels)
        h = self.histograms.get(key)
        if h is None:
            h = self.histograms[key] = Histogram(d.buckets)
        h.observe(value)

    def merge(self, d: Def, labels: tuple[str, ...], h: Histogram) -> None:
        """Add a histogram counted elsewhere (a hot path keeping its own) to what is sent next."""
        if not any(h.counts):
            return
        key = (d.name, labels)
        mine = self.histograms.get(key)
        if mine is None:
            mine = self.histograms[key] = Histogram(d.buckets)
        mine.counts = [a + b for a, b in zip(mine.counts, h.counts, strict=True)]
        mine.total += h.total

    def take(self) -> bytes | None:
        """The Metrics message for what was counted since the last take, or None if nothing."""
        if not self.counters and not self.histograms:
            return None
        msg = p.Metrics(
            [(name, list(labels), n) for (name, labels), n in self.counters.items()],
            [
                (name, list(labels), h.counts, h.total)
                for (name, labels), h in self.histograms.items()
            ],
        )
        self.counters = {}
        self.histograms = {}
        return p.encode(msg)
