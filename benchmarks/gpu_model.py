"""The GPU benchmark's model: a real torch network with synthetic weights, nothing downloaded.

8 linear layers of 2048 x 2048 in fp16 with a GELU between each two, weights from a seeded random
initialisation. Each request's `{"input": n}` becomes one row filled with n / 100; a batch is the
rows stacked. The answer is the mean of the output row, read back to the host (which waits for
the device to finish).

The dimensions come from the environment so that `python -m benchmarks --gpu --dry-run` can run
the same code on a CPU machine, small and in fp32. Served by benchmarks/peers/gpu_ferryman.py and
gpu_litserve.py; each worker also reports torch.cuda.max_memory_allocated through a gpumem-<pid>
file next to the Recorder's markers.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from benchmarks import models

if TYPE_CHECKING:
    import torch

DIM_ENV = "BENCH_GPU_DIM"
LAYERS_ENV = "BENCH_GPU_LAYERS"
DTYPE_ENV = "BENCH_GPU_DTYPE"
MEMORY_EVERY_S = 0.5


@dataclass(frozen=True)
class Shape:
    dim: int = 2048
    layers: int = 8
    dtype: str = "float16"

    @classmethod
    def from_env(cls) -> Shape:
        return cls(
            int(os.environ.get(DIM_ENV, "2048")),
            int(os.environ.get(LAYERS_ENV, "8")),
            os.environ.get(DTYPE_ENV, "float16"),
        )

    def env(self) -> dict[str, str]:
        return {DIM_ENV: str(self.dim), LAYERS_ENV: str(self.layers), DTYPE_ENV: self.dtype}


def build(shape: Shape, device: str) -> torch.nn.Module:
    # torch is imported where it is used: the suite reads Shape without it.
    import torch

    torch.manual_seed(0)  # the same weights in every worker and every run
    dtype = getattr(torch, shape.dtype)
    layers: list[torch.nn.Module] = []
    for i in range(shape.layers):
        # Made on the device in its dtype: no fp32 copy on the host first.
        layers.append(torch.nn.Linear(shape.dim, shape.dim, device=device, dtype=dtype))
        if i < shape.layers - 1:
            layers.append(torch.nn.GELU())
    return torch.nn.Sequential(*layers).eval()


class MLP:
    """What both servers' adapters call: setup once per worker, then run a list of inputs."""

    def setup(self, device: str) -> None:
        import torch

        self.torch = torch
        self.shape = Shape.from_env()
        self.device = device
        self.dtype = getattr(torch, self.shape.dtype)
        self.model = build(self.shape, device)
        self.forward([1.0])  # the first call pays for kernel selection; not a client's request
        self.rec = models.Recorder()
        self.rec.setup()
        self.next_memory = 0.0

    def forward(self, xs: list[float]) -> list[float]:
        torch = self.torch
        x = torch.tensor(xs, dtype=self.dtype, device=self.device).div_(100)
        x = x.unsqueeze(1).expand(len(xs), self.shape.dim).contiguous()
        with torch.inference_mode():
            y = self.model(x)
        out: list[float] = y.float().mean(dim=1).tolist()
        return out

    def run(self, xs: list[float]) -> list[float]:
        out = self.forward(xs)
        self.rec.predicted(len(xs))
        self._memory()
        return out

    def _memory(self) -> None:
        now = time.monotonic()
        if self.rec.dir is None or now < self.next_memory:
            return
        self.next_memory = now + MEMORY_EVERY_S
        report: dict[str, Any] = {"device": self.device}
        if self.device.startswith("cuda"):
            cuda = self.torch.cuda
            report["max_allocated_mb"] = cuda.max_memory_allocated(self.device) / 2**20
            report["max_reserved_mb"] = cuda.max_memory_reserved(self.device) / 2**20
        path = os.path.join(self.rec.dir, f"gpumem-{self.rec.pid}")
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(report, f)
        os.replace(tmp, path)
