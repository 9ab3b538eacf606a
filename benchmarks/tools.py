"""The suite's own environment: LitServe in benchmarks/.venv-litserve (never in ferryman's), and
matplotlib there too for the chart."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.peers.launch import litserve_python

LITSERVE = "litserve==0.2.19"  # the version issue 7's reference figures were taken with
PIP_TIMEOUT = 900


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


def ensure_litserve(requirement: str = LITSERVE, log: Callable[[str], None] = print) -> Path:
    """The venv's Python, with `requirement` installed (created on first use)."""
    python = litserve_python()
    version = requirement.partition("==")[2]
    check = "import litserve" + (
        f"; assert litserve.__version__ == {version!r}, litserve.__version__" if version else ""
    )
    if _ok(python, check):
        return python
    venv = python.parent.parent
    if not python.exists():
        log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    log(f"installing {requirement} into {venv}")
    _pip(python, requirement)
    if not _ok(python, check):
        raise RuntimeError(f"{requirement} did not install into {venv}")
    return python


def ensure_matplotlib(log: Callable[[str], None] = print) -> Path | None:
    """The Python that can draw the chart, or None (the chart is then skipped, not the run)."""
    python = litserve_python()
    if _ok(python, "import matplotlib"):
        return python
    log("installing matplotlib into the benchmark environment")
    try:
        _pip(python, "matplotlib")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        log(f"matplotlib could not be installed ({e}); no chart")
        return None
    return python if _ok(python, "import matplotlib") else None
