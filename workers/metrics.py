"""Metrics recorded in the children, through prometheus-client's multiprocess mode.

The supervisor sets PROMETHEUS_MULTIPROC_DIR (a fresh directory per run) in every child's
environment and aggregates the files on its admin port. Counters of a child that died stay in its
file, so totals never go backwards when a child is replaced; the supervisor calls
`mark_process_dead` for each exit so that live gauges drop the dead.

On the request path each multiprocess value update costs several microseconds (a lock, a pid
check, an mmap write): a dozen per request was a sizeable share of an API process's time per
request. So requests are counted in plain Python and the totals are added to the mmap'd values
by `flush()`, four times a second and at exit; a scrape lags by at most that.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
FLUSH_INTERVAL = 0.25


class LocalHistogram:
    """Observations kept in bucket counts here, added to a prometheus Histogram on flush."""

    __slots__ = ("bounds", "counts", "target", "total")

    def __init__(self, target: Any) -> None:
        self.target = target
        # prometheus-client's own bounds (with +Inf) and its per-bucket, non-cumulative values:
        # flushing adds to exactly what observe() would have touched.
        self.bounds: list[float] = list(target._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        if not any(self.counts):
            return
        self.target._sum.inc(self.total)
        buckets = self.target._buckets
        for i, n in enumerate(self.counts):
            if n:
                buckets[i].inc(n)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0


class ApiMetrics:
    """Recorded by an API process: what clients saw, end to end."""

    def __init__(self) -> None:
        self.requests = Counter(
            "ferryman_requests", "HTTP requests answered, by route and status", ["route", "status"]
        )
        self.duration = Histogram(
            "ferryman_request_duration_seconds",
            "Time from a request's arrival to its last byte, in the API process",
            ["route"],
            buckets=LATENCY_BUCKETS,
        )
        self.in_flight = Gauge(
            "ferryman_requests_in_flight",
            "Requests being answered right now",
            multiprocess_mode="livesum",
        )
        self._counts: dict[tuple[str, int], int] = {}
        self._durations: dict[str, LocalHistogram] = {}

    def done(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        h = self._durations.get(route)
        if h is None:
            h = self._durations[route] = LocalHistogram(self.duration.labels(route))
        h.observe(seconds)

    def flush(self, in_flight: int) -> None:
        counts, self._counts = self._counts, {}
        for (route, status), n in counts.items():
            self.requests.labels(route, str(status)).inc(n)
        for h in self._durations.values():
            h.flush()
        self.in_flight.set(in_flight)


class WorkerMetrics:
    """Recorded by an inference worker: where the time went, and how full batches were."""

    def __init__(self) -> None:
        self.queue = LocalHistogram(Histogram(
            "ferryman_queue_duration_seconds",
            "Time a request waited in its worker before predict started",
            buckets=LATENCY_BUCKETS,
        ))  # fmt: skip
        self.predict = LocalHistogram(Histogram(
            "ferryman_predict_duration_seconds",
            "Time spent in predict, per request (a batch's time counts for each of its requests)",
            buckets=LATENCY_BUCKETS,
        ))  # fmt: skip
        self.batch_size = LocalHistogram(Histogram(
            "ferryman_batch_size", "Requests per batch a worker ran", buckets=BATCH_BUCKETS
        ))  # fmt: skip

    def batch(self, n: int) -> None:
        self.batch_size.observe(n)

    def observe(self, queue_s: float, predict_s: float) -> None:
        self.queue.observe(queue_s)
        self.predict.observe(predict_s)

    def flush(self) -> None:
        self.queue.flush()
        self.predict.flush()
        self.batch_size.flush()
