"""What an API process counts (runs in the API process): every request, by model, route and status.

Counted into the child's Recorder (ferryman/metrics.py), which ships it to the supervisor.
"""

from __future__ import annotations

from ferryman.metrics import REQUEST_DURATION, REQUESTS, Recorder


class ApiMetrics:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._status: dict[int, str] = {}

    def done(self, model: str, route: str, status: int, seconds: float) -> None:
        code = self._status.get(status)
        if code is None:
            code = self._status[status] = str(status)
        self.recorder.inc(REQUESTS, (model, route, code))
        self.recorder.observe(REQUEST_DURATION, (model, route), seconds)
