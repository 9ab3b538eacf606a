"""python -m benchmarks [--quick | --gpu]: ferryman against LitServe, BentoML, Ray Serve,
TorchServe and bare uvicorn, side by side.

See the "Benchmarks" section of README.md. Every process started is killed on the way out, on
error, Ctrl-C, SIGTERM or the overall --time-limit. `--gpu` hands over to benchmarks.gpu (its own
flags: python -m benchmarks --gpu --help).
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
    "g": "batchcase",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="ferryman against the other servers on this machine, interleaved.",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="every scenario briefly, one round, LitServe, bare and ferryman only (what CI "
        "runs; about 3 min)",
    )
    ap.add_argument("--rounds", type=int, help="interleaved rounds per scenario [3; quick 1]")
    ap.add_argument("--duration", type=float, help="seconds per measured wrk run [10; quick 2]")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up load per peer [3; quick 1]")
    ap.add_argument(
        "--peers",
        help=f"comma-separated subset of {','.join(launch.PEERS)} "
        f"[all; quick: {','.join(launch.QUICK_PEERS)}]",
    )
    ap.add_argument(
        "--scenarios",
        default=",".join(GROUPS),
        help=f"comma-separated subset of {','.join(GROUPS)} (or the letters a-g)",
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
        "--gpu",
        action="store_true",
        help="run the GPU benchmark instead (benchmarks/gpu.py; its flags: --gpu --help)",
    )
    ap.add_argument(
        "--time-limit",
        type=float,
        help="stop everything after this many seconds [quick 600, full 7200]",
    )
    return ap.parse_args(argv)


def _groups(spec: str) -> tuple[str, ...]:
    wanted = set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name = LETTERS.get(item, item)
        if name not in GROUPS:
            raise SystemExit(f"unknown scenario {item!r}: use {', '.join(GROUPS)} or a-g")
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


def _peers(spec: str | None, quick: bool) -> tuple[str, ...]:
    if spec is None:
        return launch.QUICK_PEERS if quick else launch.PEERS
    wanted = {p.strip() for p in spec.split(",") if p.strip()}
    unknown = wanted - set(launch.PEERS)
    if unknown or not wanted:
        raise SystemExit(f"--peers: choose among {', '.join(launch.PEERS)}")
    return tuple(p for p in launch.PEERS if p in wanted)


def _install(
    peers: tuple[str, ...], litserve: str, log: Callable[[str], None]
) -> tuple[tuple[str, ...], list[str]]:
    """Each peer's environment. A peer that cannot be installed is left out of the run, which
    reports it as an error; the others still run. Returns (the peers that can run, errors)."""
    ok, errors = [], []
    for peer in peers:
        try:
            if peer in launch.VENV_PEERS:
                tools.ensure_peer(peer, log, litserve if peer == "litserve" else None)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            errors.append(f"cannot install {launch.LABELS[peer]}: {e}")
            log(f"{errors[-1]} (left out of this run)")
        else:
            ok.append(peer)
    return tuple(ok), errors


def main(argv: list[str] | None = None) -> int:
    raw_argv = sys.argv[1:] if argv is None else argv
    if "--gpu" in raw_argv:
        from benchmarks import gpu

        return gpu.main([a for a in raw_argv if a != "--gpu"])
    args = parse_args(argv)
    cfg = Config.make(args.quick)
    if args.rounds:
        cfg.rounds = args.rounds
    if args.duration:
        cfg.measure_s = args.duration
    if args.warmup is not None:
        cfg.warmup_s = args.warmup
    cfg.peers = _peers(args.peers, args.quick)
    cfg.groups = _groups(args.scenarios)
    cfg.litserve_fast_queue = args.litserve_fast_queue
    out = args.out or (HERE / "results" / "raw" / "quick" if args.quick else HERE / "results")
    raw = out / "logs" if args.quick else HERE / "results" / "raw" / "full"
    if raw.exists():
        shutil.rmtree(raw)

    def log(msg: str) -> None:
        print(msg, flush=True)

    procs.install_handlers()
    watchdog = _watchdog(args.time_limit or (600 if args.quick else 7200))
    started = time.monotonic()
    suite = Suite(cfg, raw, log)
    try:
        cfg.peers, install_errors = _install(cfg.peers, args.litserve, log)
        suite.errors += install_errors
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
    vers = report.versions(cfg.peers, suite.wrk or "wrk")
    kind = (
        f"quick run (1 round, {cfg.measure_s:.0f} s per measurement)"
        if args.quick
        else (
            f"full run ({cfg.rounds} interleaved rounds, {cfg.measure_s:.0f} s per measurement, "
            "medians)"
        )
    )
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    layouts = {p: launch.layout(p, cfg.counts) for p in cfg.peers}
    md = report.markdown(
        medians,
        rows,
        mach,
        vers,
        f"Results: {kind}, {stamp}, {elapsed:.0f} s.",
        suite.errors,
        layouts,
    )
    data = {
        "when": stamp,
        "elapsed_s": elapsed,
        "machine": mach,
        "versions": vers,
        "layouts": layouts,
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
