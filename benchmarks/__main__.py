"""python -m benchmarks [--quick]: ferryman against bare uvicorn and LitServe, side by side.

See the "Benchmarks" section of README.md. Every process started is killed on the way out, on
error, Ctrl-C, SIGTERM or the overall --time-limit.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import procs, report, tools
from benchmarks.peers import launch
from benchmarks.suite import GROUPS, Config, Suite

HERE = Path(__file__).resolve().parent
LETTERS = {
    "a": "trivial",
    "d": "trivial",
    "e": "trivial",
    "b": "batched",
    "c": "streamed",
    "f": "kill",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="ferryman against bare uvicorn and LitServe on this machine, interleaved.",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="every scenario briefly, one round (what CI runs; well under 3 min)",
    )
    ap.add_argument("--rounds", type=int, help="interleaved rounds per scenario [3; quick 1]")
    ap.add_argument("--duration", type=float, help="seconds per measured wrk run [10; quick 2]")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up load per peer [3; quick 1]")
    ap.add_argument(
        "--peers",
        default=",".join(launch.PEERS),
        help="comma-separated subset of litserve,bare,ferryman",
    )
    ap.add_argument(
        "--scenarios",
        default=",".join(GROUPS),
        help="comma-separated subset of trivial,batched,streamed,kill (or the issue's letters a-f)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        help="where results.md/.json and chart.png go "
        "[benchmarks/results; quick: benchmarks/results/raw/quick]",
    )
    ap.add_argument("--litserve", default=tools.LITSERVE, help="pip requirement for LitServe")
    ap.add_argument(
        "--litserve-fast-queue",
        action="store_true",
        help="LitServer(fast_queue=True): ZeroMQ queues instead of the default "
        "multiprocessing ones",
    )
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument(
        "--time-limit",
        type=float,
        help="stop everything after this many seconds [quick 600, full 3600]",
    )
    return ap.parse_args(argv)


def _groups(spec: str) -> tuple[str, ...]:
    wanted = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name = LETTERS.get(item, item)
        if name not in GROUPS:
            raise SystemExit(f"unknown scenario {item!r}: use {', '.join(GROUPS)} or a-f")
        wanted.add(name)
    return tuple(g for g in GROUPS if g in wanted)


def _watchdog(seconds: float) -> threading.Timer:
    # SIGTERM to ourselves becomes KeyboardInterrupt in the main thread (procs.install_handlers),
    # so a stuck run still unwinds through every finally and kills what it started.
    def fire() -> None:
        print(f"time limit of {seconds:.0f}s reached; stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
    return t


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = Config.make(args.quick)
    if args.rounds:
        cfg.rounds = args.rounds
    if args.duration:
        cfg.measure_s = args.duration
    if args.warmup is not None:
        cfg.warmup_s = args.warmup
    cfg.peers = tuple(p for p in launch.PEERS if p in args.peers.split(","))
    if not cfg.peers:
        raise SystemExit(f"--peers: choose among {', '.join(launch.PEERS)}")
    cfg.groups = _groups(args.scenarios)
    cfg.litserve_fast_queue = args.litserve_fast_queue
    out = args.out or (HERE / "results" / "raw" / "quick" if args.quick else HERE / "results")
    raw = out / "logs" if args.quick else HERE / "results" / "raw" / "full"
    if raw.exists():
        shutil.rmtree(raw)

    def log(msg: str) -> None:
        print(msg, flush=True)

    procs.install_handlers()
    watchdog = _watchdog(args.time_limit or (600 if args.quick else 3600))
    started = time.monotonic()
    suite = Suite(cfg, raw, log)
    try:
        if "litserve" in cfg.peers:
            try:
                tools.ensure_litserve(args.litserve, log)
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                log(f"cannot install {args.litserve}: {e} (--peers bare,ferryman runs without it)")
                return 2
        suite.run()
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        procs.cleanup()
        return 130
    finally:
        procs.cleanup()
        watchdog.cancel()
    elapsed = time.monotonic() - started

    medians = suite.medians()
    rows = report.targets(medians)
    mach = report.machine()
    vers = report.versions(launch.litserve_python(), suite.wrk or "wrk")
    kind = (
        "quick run (1 round, 2 s per measurement)"
        if args.quick
        else (
            f"full run ({cfg.rounds} interleaved rounds, {cfg.measure_s:.0f} s per measurement, "
            "medians)"
        )
    )
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    md = report.markdown(
        medians, rows, mach, vers, f"Results: {kind}, {stamp}, {elapsed:.0f} s.", suite.errors
    )
    data = {
        "when": stamp,
        "elapsed_s": elapsed,
        "machine": mach,
        "versions": vers,
        "config": {
            k: v for k, v in vars(cfg).items() if isinstance(v, int | float | str | bool | tuple)
        }
        | {"counts": vars(cfg.counts)},
        "medians": medians,
        "runs": suite.results,
        "targets": rows,
        "errors": suite.errors,
    }
    md_path, json_path = report.write(out, md, data)
    print()
    print(md)
    if not args.no_chart:
        _chart(json_path, out / "chart.png", log)
    log(f"wrote {md_path} and {json_path} in {elapsed:.0f} s")
    return 1 if suite.errors else 0


def _chart(json_path: Path, png: Path, log: Callable[[str], None]) -> None:
    python = tools.ensure_matplotlib(log)
    if python is None:
        return
    try:
        subprocess.run(
            [str(python), "-m", "benchmarks.chart", str(json_path), str(png)],
            check=True,
            timeout=120,
            cwd=launch.ROOT,
            env={**os.environ, "PYTHONPATH": str(launch.ROOT)},
        )
        log(f"wrote {png}")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        log(f"chart failed: {e}")


if __name__ == "__main__":
    sys.exit(main())
