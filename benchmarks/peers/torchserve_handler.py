"""The benchmark models as a TorchServe custom handler; run in benchmarks/.venv-torchserve.

The suite copies this file into the model directory it generates (benchmarks.peers.torchserve,
MAR-INF/MANIFEST.json names it as the handler) and TorchServe's Python backend worker imports it
from there. TorchServe instantiates the one class defined here and calls `initialize` once per
worker, then `handle` with a batch: a list of up to batch_size requests, each a dict whose "body"
is the POSTed JSON, already parsed (the request's Content-Type is application/json). It answers
with one item per request (a dict is sent as JSON).

The streamed model sends every item but the last as an intermediate response (TorchServe's way
to stream: HTTP chunks), so it is served with batch_size 1.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ts.handler_utils.utils import send_intermediate_predict_response

from benchmarks import models


def _input(request: dict[str, Any]) -> int:
    body: Any = request.get("body", request.get("data"))
    if isinstance(body, bytes | bytearray):
        body = json.loads(body)
    return int(body["input"])


class BenchHandler:
    def initialize(self, context: Any) -> None:
        self.model = os.environ.get(models.MODEL_ENV, "trivial")
        self.rec = models.Recorder()
        self.rec.setup()

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        xs = [_input(r) for r in data]
        if self.model == "streamed":
            self.rec.predicted()
            return [self._stream(xs[0], context)]
        self.rec.predicted(len(xs))
        fn = models.BATCH_MODELS.get(self.model)
        ys = fn(xs) if fn is not None else [models.trivial(x) for x in xs]
        return [{"output": y} for y in ys]

    def _stream(self, x: int, context: Any) -> str:
        # Each item leaves as soon as the next one exists: the last one is the return value.
        last = ""
        for i, out in enumerate(models.stream(x)):
            if i:
                send_intermediate_predict_response(
                    [last], context.request_ids, "Intermediate response", 200, context
                )
            last = json.dumps({"output": out}) + "\n"
        return last
