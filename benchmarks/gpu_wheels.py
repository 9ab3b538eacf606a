"""python -m benchmarks.gpu_wheels OUTDIR [--python 3.11,3.12] [--source DIR]

Downloads, here where the package registry is reachable, every wheel that `python -m benchmarks
--gpu --wheels OUTDIR` installs on a GPU machine that has none: that machine has PyTorch,
aiohttp, prometheus-client and uvloop, but not uvicorn, starlette, pyzmq, msgspec, httptools,
LitServe, FastAPI or pydantic, and cannot reach a registry.

1. `pip wheel --no-deps`: a wheel of ferryman from a clean copy of the source tree (the
   repository root, less .git, venvs, build output, benchmarks/ and tests/);
2. for each Python version, `pip download` of that wheel and LitServe for manylinux x86_64 and
   CPython of that version: pip resolves what the two need (ferryman's dependencies, LitServe's,
   FastAPI's, ...) for that machine, not for this one. prometheus-client and uvloop come along,
   used there only if the machine's own are too old.

Nothing of torch or CUDA is downloaded (neither package depends on it); the command refuses a
result that has any.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.tools import LITSERVE

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
)
FORBIDDEN = re.compile(r"^(torch|triton|nvidia_)", re.I)
TIMEOUT_S = 1800


def wheel_command(source: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)]


def download_command(ferryman_wheel: Path, out: Path, python: str) -> list[str]:
    """pip download for CPython `python` ("3.12") on manylinux x86_64, binary wheels only."""
    nodot = python.replace(".", "")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--dest",
        str(out),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python,
        "--abi",
        f"cp{nodot}",
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    return [*cmd, str(ferryman_wheel), LITSERVE]


def forbidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.whl") if FORBIDDEN.match(p.name))


# Left out of the copy the wheel is built from: setuptools builds in the source tree, and a
# build/ left there from an earlier build can carry modules since removed into the next wheel.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "benchmarks", "tests"
)


def build(out: Path, pythons: list[str], source: Path = ROOT) -> list[Path]:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("ferryman-*.whl"):
        old.unlink()  # a stale build would be picked over the fresh one
    with tempfile.TemporaryDirectory(prefix="ferryman-wheel-") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(source, copy, ignore=NOT_SOURCE, symlinks=True)
        subprocess.run(wheel_command(copy, out), check=True, timeout=TIMEOUT_S)
    wheels = sorted(out.glob("ferryman-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one ferryman wheel in {out}, found {wheels}")
    for python in pythons:
        print(f"downloading the wheels for CPython {python} into {out}", flush=True)
        subprocess.run(
            download_command(wheels[0], out, python),
            check=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    bad = forbidden(out)
    if bad:
        raise RuntimeError(f"torch or CUDA wheels were pulled in: {', '.join(bad)}")
    return sorted(out.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_wheels",
        description="Download the wheels `python -m benchmarks --gpu --wheels DIR` needs.",
    )
    ap.add_argument("out", type=Path, help="the directory to fill (created if missing)")
    ap.add_argument(
        "--python",
        default="3.11,3.12",
        help="CPython versions of the GPU machine, comma-separated [3.11,3.12: unknown]",
    )
    ap.add_argument("--source", type=Path, default=ROOT, help="ferryman's source tree [repo]")
    args = ap.parse_args(argv)
    pythons = [p.strip() for p in args.python.split(",") if p.strip()]
    if not pythons or not all(re.fullmatch(r"3\.\d+", p) for p in pythons):
        raise SystemExit(f"--python: versions such as 3.11,3.12, not {args.python!r}")
    wheels = build(args.out, pythons, args.source)
    print(f"{len(wheels)} wheels in {args.out}:")
    for w in wheels:
        print(f"  {w.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
