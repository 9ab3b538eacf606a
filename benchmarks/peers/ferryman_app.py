"""The benchmark models as ferryman APIs.

ferryman serve benchmarks/peers/ferryman_app.py:Trivial --api-servers 2 --workers-per-device 2
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ferryman
from benchmarks import models


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


class Batched(Trivial):
    """Run with --max-batch-size 8 --batch-timeout 0.005."""

    def batch(self, inputs: list[int]) -> list[int]:
        return inputs

    def predict(self, xs: list[int]) -> list[int]:  # type: ignore[override]
        self.rec.predicted(len(xs))
        return models.batched(xs)

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
