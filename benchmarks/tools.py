"""The suite's own environments: each peer but ferryman and bare in benchmarks/.venv-<peer> (never
in ferryman's), matplotlib in LitServe's for the chart, and Java for TorchServe.

Every version is pinned: a peer's numbers are only comparable between runs of the same release.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.peers.launch import litserve_python, venv_python

LITSERVE = "litserve==0.2.19"  # the version issue 7's reference figures were taken with
PIP_TIMEOUT = 900
Log = Callable[[str], None]


@dataclass(frozen=True)
class PeerEnv:
    requirements: tuple[str, ...]
    check: str  # Python that exits 0 once the environment is complete
    version: str  # Python that prints the peer's version


ENVS = {
    "litserve": PeerEnv(
        (LITSERVE,),
        "import litserve",
        "import litserve; print(litserve.__version__)",
    ),
    "bentoml": PeerEnv(
        ("bentoml==1.4.40",),
        "import bentoml; assert bentoml.__version__ == '1.4.40', bentoml.__version__",
        "import bentoml; print(bentoml.__version__)",
    ),
    "rayserve": PeerEnv(
        ("ray[serve]==2.60.0",),
        "import ray, ray.serve; assert ray.__version__ == '2.60.0', ray.__version__",
        "import ray; print(ray.__version__)",
    ),
    # torch==2.13.0 is a CPU wheel on this machine's disk (a plain `torch` would download a
    # multi-GB CUDA build); TorchServe's backend imports torch, yaml and numpy but declares
    # only part of that.
    "torchserve": PeerEnv(
        ("torch==2.13.0", "torchserve==0.12.0", "pyyaml", "numpy"),
        "import torch, yaml, numpy, ts; assert ts.__version__ == '0.12.0', ts.__version__",
        "import ts; print(ts.__version__)",
    ),
}


def _ok(python: Path, code: str) -> bool:
    if not python.exists():
        return False
    try:
        r = subprocess.run([str(python), "-c", code], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _pip(python: Path, *args: str) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        check=True,
        timeout=PIP_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def ensure_peer(peer: str, log: Log = print, requirement: str | None = None) -> Path:
    """The peer's venv Python with its pinned requirements (created on first use).

    `requirement` replaces the peer's first requirement (--litserve)."""
    env = ENVS[peer]
    reqs = list(env.requirements)
    check = env.check
    if requirement is not None:
        reqs[0] = requirement
    if peer == "litserve":
        version = reqs[0].partition("==")[2]
        if version:
            check += f"; assert litserve.__version__ == {version!r}, litserve.__version__"
    python = venv_python(peer)
    if peer == "torchserve":
        ensure_java(log)
    if _ok(python, check):
        return python
    venv = python.parent.parent
    if not python.exists():
        log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    log(f"installing {' '.join(reqs)} into {venv}")
    _pip(python, *reqs)
    if not _ok(python, check):
        raise RuntimeError(f"{' '.join(reqs)} did not install into {venv}")
    return python


def ensure_litserve(requirement: str = LITSERVE, log: Log = print) -> Path:
    return ensure_peer("litserve", log, requirement)


def ensure_java(log: Log = print) -> str:
    """TorchServe's front-end is Java (17 or later): Debian's headless JRE when missing."""
    found = shutil.which("java")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("java is not installed: apt-get install openjdk-17-jre-headless")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "openjdk-17-jre-headless"],
    ):
        log(f"installing java: {' '.join(cmd)}")
        subprocess.run(cmd, check=True, timeout=900, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which("java")
    if not found:
        raise RuntimeError("apt-get install openjdk-17-jre-headless did not provide java")
    return found


def peer_version(peer: str) -> str:
    try:
        p = subprocess.run(
            [str(venv_python(peer)), "-c", ENVS[peer].version],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = p.stdout.strip().splitlines()
    return lines[-1] if p.returncode == 0 and lines else "?"


def ensure_matplotlib(log: Log = print) -> Path | None:
    """The Python that can draw the chart, or None (the chart is then skipped, not the run)."""
    python = litserve_python()
    if not python.exists():
        try:
            python = ensure_litserve(log=log)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            log(f"no environment for the chart ({e}); no chart")
            return None
    if _ok(python, "import matplotlib"):
        return python
    log("installing matplotlib into the benchmark environment")
    try:
        _pip(python, "matplotlib")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        log(f"matplotlib could not be installed ({e}); no chart")
        return None
    return python if _ok(python, "import matplotlib") else None
