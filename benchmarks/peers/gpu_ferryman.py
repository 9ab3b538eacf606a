"""The GPU benchmark's model (benchmarks.gpu_model) as ferryman APIs.

ferryman serve benchmarks.peers.gpu_ferryman:MLP --accelerator cuda --workers-per-device 2
ferryman serve benchmarks.peers.gpu_ferryman:BatchedMLP --max-batch-size 16 --batch-timeout 0.05
"""

from __future__ import annotations

from typing import Any

import ferryman
from benchmarks import gpu_model


class MLP(ferryman.API):
    def setup(self, device: str) -> None:
        self.mlp = gpu_model.MLP()
        self.mlp.setup(device)

    def decode_request(self, request: Any) -> float:
        return float(request["input"])

    def predict(self, x: float) -> float:
        return self.mlp.run([x])[0]

    def encode_response(self, output: float) -> dict[str, float]:
        return {"output": output}


class BatchedMLP(MLP):
    def batch(self, inputs: list[float]) -> list[float]:
        return inputs  # the model stacks them into one tensor itself

    def predict(self, xs: list[float]) -> list[float]:  # type: ignore[override]
        return self.mlp.run(xs)

    def unbatch(self, output: list[float]) -> list[float]:
        return output
