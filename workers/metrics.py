"""Metrics recorded in the children, through prometheus-client's multiprocess mode.

The supervisor sets PROMETHEUS_MULTIPROC_DIR (a fresh directory per run) in every child's
environment and aggregates the files on its admin port. Counters of a child that died stay in its
file, so totals never go backwards when a child is replaced; the supervisor calls
`mark_process_dead` for each exit so that live gauges drop the dead.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ApiMetrics:
    """Recorded by an API process: what clients saw, end to end."""

    def __init__(self) -> None:
        self.requests = Counter(
            "ferryman_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
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
        self._counters: dict[tuple[str, int], Counter] = {}
        self._durations: dict[str, Histogram] = {}

    def done(self, route: str, status: int, seconds: float) -> None:
        c = self._counters.get((route, status))
        if c is None:
            c = self._counters[(route, status)] = self.requests.labels(route, str(status))
        c.inc()
        h = self._durations.get(route)
        if h is None:
            h = self._durations[route] = self.duration.labels(route)
        h.observe(seconds)


class WorkerMetrics:
    """Recorded by an inference worker: where the time went, and how full batches were."""

    def __init__(self) -> None:
        self.queue = Histogram(
            "ferryman_queue_duration_seconds",
            "Time a request waited in its worker before predict started",
            buckets=LATENCY_BUCKETS,
        )
        self.predict = Histogram(
            "ferryman_predict_duration_seconds",
            "Time spent in predict (per batch)",
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "ferryman_batch_size", "Requests per predict call", buckets=BATCH_BUCKETS
        )

    def batch(self, n: int) -> None:
        self.batch_size.observe(n)

    def observe(self, queue_s: float, predict_s: float) -> None:
        self.queue.observe(queue_s)
        self.predict.observe(predict_s)
