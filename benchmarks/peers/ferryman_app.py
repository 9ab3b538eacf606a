"""The benchmark models as ferryman APIs.

ferryman serve benchmarks/peers/ferryman_app.py:Trivial --api-servers 2 --workers-per-device 2

The batch models (benchmarks.models.BATCH_MODELS) are chosen by $BENCH_MODEL: `Batched` with
--max-batch-size N, `Single` (one request per predict call) without.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import ferryman
from benchmarks import models


def _batch_model() -> Callable[[list[int]], list[int]]:
    return models.BATCH_MODELS[os.environ.get(models.MODEL_ENV, "batched")]


class Trivial(ferryman.API):
    def setup(self, device: str) -> None:
        self.rec = models.Recorder()
        self.rec.setup()

    def decode_request(self, request: Any) -> int:
        return int(request["input"])

    def predict(self, x: int) -> int:
        self.rec.predicted()
        return models.trivial(x)

    def encode_response(self, output: int) -> dict[str, int]:
        return {"output": output}


class Single(Trivial):
    """A batch model with batching off: one request per predict call."""

    def setup(self, device: str) -> None:
        super().setup(device)
        self.model = _batch_model()

    def predict(self, x: int) -> int:
        self.rec.predicted()
        return self.model([x])[0]


class Batched(Single):
    """Run with --max-batch-size N --batch-timeout S."""

    def batch(self, inputs: list[int]) -> list[int]:
        return inputs

    def predict(self, xs: list[int]) -> list[int]:  # type: ignore[override]
        self.rec.predicted(len(xs))
        return self.model(xs)

    def unbatch(self, output: list[int]) -> list[int]:
        return output


class Streamed(Trivial):
    """Run with --stream: one NDJSON line per item."""

    def predict(self, x: int) -> Iterator[int]:  # type: ignore[override]
        self.rec.predicted()
        yield from models.stream(x)

    def encode_response(self, outputs: Iterator[int]) -> Iterator[dict[str, int]]:  # type: ignore[override]
        for out in outputs:
            yield {"output": out}
