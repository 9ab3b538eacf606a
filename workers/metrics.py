"""What an inference worker measures: queue time, predict time and batch sizes, by model.

Counted here, in plain histograms of this worker's own (an observation is a bisect and two
additions), and handed to the child's `ferryman.metrics.Recorder` by `flush()`, which the loop
calls before each shipment of metrics to the supervisor.
"""

from __future__ import annotations

from ferryman.metrics import BATCH_SIZE, PREDICT_DURATION, QUEUE_DURATION, Def, Histogram, Recorder


class WorkerStats:
    __slots__ = ("batches", "labels", "predicts", "queues", "recorder")

    def __init__(self, recorder: Recorder, model: str) -> None:
        self.recorder = recorder
        self.labels = (model,)
        self.batches = Histogram(BATCH_SIZE.buckets)
        self.queues = Histogram(QUEUE_DURATION.buckets)
        self.predicts = Histogram(PREDICT_DURATION.buckets)

    def batch(self, n: int) -> None:
        """A predict call ran on n requests."""
        self.batches.observe(n)

    def request(self, queue_s: float, predict_s: float) -> None:
        """A request waited queue_s before predict started, which took predict_s (its batch's)."""
        self.queues.observe(queue_s)
        self.predicts.observe(predict_s)

    def flush(self) -> None:
        """Hand what was counted since the last flush to the recorder."""
        self.batches = self._hand(BATCH_SIZE, self.batches)
        self.queues = self._hand(QUEUE_DURATION, self.queues)
        self.predicts = self._hand(PREDICT_DURATION, self.predicts)

    def _hand(self, d: Def, h: Histogram) -> Histogram:
        if not any(h.counts):
            return h
        self.recorder.merge(d, self.labels, h)
        return Histogram(d.buckets)
