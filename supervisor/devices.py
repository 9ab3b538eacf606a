"""Which devices the workers go on, decided without importing torch or any CUDA library."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from ferryman.options import OptionError
from ferryman.values import Devices


@dataclass(frozen=True)
class Device:
    name: str  # what operators see: "cpu", "cuda:2"
    visible: str | None  # CUDA_VISIBLE_DEVICES for the worker, None for cpu
    local: str  # what setup() is told: "cpu", or "cuda:0" (the worker sees one GPU)


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        # CUDA stops at the first invalid entry; -1 and empty mean "none".
        out: list[str] = []
        for d in ids:
            if d.startswith("-"):
                break
            out.append(d)
        return out
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        res = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if res.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(res.stdout.splitlines()) if line.startswith("GPU ")]


def resolve(accelerator: str, devices: Devices) -> tuple[str, list[Device]]:
    """(accelerator actually used, one Device per device slot)."""
    gpus = visible_gpus() if accelerator in ("auto", "cuda") else []
    if accelerator == "auto":
        accelerator = "cuda" if gpus else "cpu"
    if accelerator == "cpu":
        count = devices if isinstance(devices, int) else 1
        if isinstance(devices, list):
            count = len(devices)
        return "cpu", [Device("cpu", None, "cpu") for _ in range(count)]
    if not gpus:
        raise OptionError("--accelerator cuda: no GPU is visible (nvidia-smi -L lists none)")
    if devices == "auto":
        chosen = gpus
    elif isinstance(devices, int):
        if devices > len(gpus):
            raise OptionError(f"--devices {devices}: only {len(gpus)} GPU(s) are visible")
        chosen = gpus[:devices]
    else:
        assert isinstance(devices, list)
        missing = [i for i in devices if i >= len(gpus)]
        if missing:
            raise OptionError(
                f"--devices: GPU index {missing[0]} does not exist ({len(gpus)} visible)"
            )
        chosen = [gpus[i] for i in devices]
    return "cuda", [Device(f"cuda:{g}", g, "cuda:0") for g in chosen]
