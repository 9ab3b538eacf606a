"""Soak: an hour of load with periodic reloads; memory, fds and files must stay flat.

Runs only with `--soak` (never in CI): `python -m pytest tests/test_soak.py --soak`, and
`--soak-duration SECONDS` for another length than the hour. 8 clients send checked requests back
to back; every sixth of the run a reload (a model reload, a worker restart, a SIGHUP, in turn)
replaces processes. Every minute (every tenth of a shorter run) it samples the resident memory of
every process, the supervisor's open fds and the files in the run directory.

What must hold:
- no request fails (reloads and restarts drain first: README), none is wrong, none hangs;
- the supervisor's memory and fds, and the run directory's files, show no growth trend: the
  least-squares line through the samples after the first two (start-up, first reload) may rise
  by noise only over the run (memory: 5 % + 4 MiB; fds: 4, ZeroMQ's own; files: none);
- no process grows over its own life by more than 10 % + 8 MiB (the API process leak the
  benchmarks once found, 1.5 KB per request, is ~45 MiB a minute at 500 requests/s).

The samples go to a JSON file under the test's tmp dir; a summary goes to the pytest output.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Served, app
from reliability import Admin, Load, fd_count, rss_bytes, run_dir_of

pytestmark = pytest.mark.soak

CLIENTS = 8
MIB = 1 << 20


def slope_rise(points: list[tuple[float, float]]) -> float:
    """How much the least-squares line through (t, y) rises from the first t to the last."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    slope = sum((t - mt) * (y - my) for t, y in points) / var
    return slope * (points[-1][0] - points[0][0])


def test_soak_memory_fds_and_files_stay_flat(
    serve: Callable[..., Served],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    reliability_report: Callable[[str], None],
) -> None:
    duration: float = request.config.getoption("--soak-duration")
    seed: int = request.config.getoption("--chaos-seed")
    interval = min(60.0, duration / 10)
    reload_every = duration / 6
    s = serve(app("chaos:Chaos"), "--timeout", "10", api_servers=2, workers=2)
    admin = Admin(s.admin)
    run_dir = run_dir_of(s.pid)
    assert run_dir is not None
    load = Load(s.port, {"chaos": "/predict"}, CLIENTS, seed, hang_limit=60).start()
    samples: list[dict[str, Any]] = []
    reloads: list[str] = []
    actions = [
        ("model reload", lambda: admin.call("POST", "/v1/models/chaos/reload", timeout=120)),
        ("worker restart", lambda: admin.call("POST", "/v1/models/chaos/workers/0/restart")),
        ("SIGHUP", lambda: os.kill(s.pid, signal.SIGHUP)),
    ]
    t0 = time.monotonic()
    next_sample, next_reload = t0, t0 + reload_every
    try:
        while (now := time.monotonic()) < t0 + duration:
            if now >= next_reload:
                what, act = actions[len(reloads) % len(actions)]
                act()
                reloads.append(f"{now - t0:.0f} s {what}")
                next_reload += reload_every
            if now >= next_sample:
                samples.append(sample(s.pid, admin, run_dir, load, now - t0))
                next_sample += interval
            time.sleep(min(1.0, max(0.0, min(next_sample, next_reload) - time.monotonic())))
        samples.append(sample(s.pid, admin, run_dir, load, time.monotonic() - t0))
    finally:
        load.stop()

    problems: list[str] = []
    stats = load.stats
    if stats.failures:
        causes = stats.by_cause()
        problems.append(f"{len(stats.failures)} requests failed: {causes}")
        problems += [f"  {f.cause}: {f.detail[:200]}" for f in stats.failures[:10]]
    steady = samples[2:]  # after start-up and the first reload's new processes
    sup_rss = [(x["t"], x["supervisor_rss"]) for x in steady]
    rise = {
        "supervisor_rss_mib": slope_rise(sup_rss) / MIB,
        "supervisor_fds": slope_rise([(x["t"], x["supervisor_fds"]) for x in steady]),
        "run_dir_files": slope_rise([(x["t"], x["run_dir_files"]) for x in steady]),
    }
    base_rss = steady[0]["supervisor_rss"] if steady else 0
    if rise["supervisor_rss_mib"] * MIB > 0.05 * base_rss + 4 * MIB:
        problems.append(f"the supervisor's memory grows: {rise['supervisor_rss_mib']:.1f} MiB")
    if rise["supervisor_fds"] > 4:
        problems.append(f"the supervisor's fds grow: +{rise['supervisor_fds']:.1f}")
    if rise["run_dir_files"] > 0.5:
        problems.append(f"the run directory's files grow: +{rise['run_dir_files']:.1f}")
    for x in samples:
        if x["run_dir_files"] > 3 + 2 * x["api_processes"]:
            problems.append(f"at {x['t']:.0f} s: {x['run_dir_files']} files in the run directory")
    lives: dict[int, list[tuple[float, int]]] = {}
    for x in samples:
        for p in x["processes"]:
            lives.setdefault(p["pid"], []).append((x["t"], p["rss"]))
    growth = {}
    for pid, life in lives.items():
        if len(life) >= 4:
            settled = life[1:]  # its first sample may catch it still starting
            grew = slope_rise([(t, float(r)) for t, r in settled])
            growth[pid] = grew / MIB
            if grew > 0.1 * settled[0][1] + 8 * MIB:
                problems.append(f"pid {pid} grew by {grew / MIB:.1f} MiB over its life")

    result = {
        "seed": seed,
        "duration_s": duration,
        "interval_s": interval,
        "sent": stats.sent,
        "right": stats.right,
        "failed_by_cause": stats.by_cause(),
        "reloads": reloads,
        "rise_over_the_run": {k: round(v, 2) for k, v in rise.items()},
        "process_growth_mib": {str(k): round(v, 2) for k, v in growth.items()},
        "samples": samples,
        "problems": problems,
    }
    out = tmp_path / "soak.json"
    out.write_text(json.dumps(result, indent=2))
    first, last = samples[0], samples[-1]
    reliability_report(
        f"soak {duration:g} s, {len(samples)} samples, {len(reloads)} reloads: sent "
        f"{stats.sent}, right {stats.right}, failed {len(stats.failures)}; supervisor RSS "
        f"{first['supervisor_rss'] / MIB:.1f} -> {last['supervisor_rss'] / MIB:.1f} MiB (trend "
        f"{rise['supervisor_rss_mib']:+.2f}), fds {first['supervisor_fds']} -> "
        f"{last['supervisor_fds']}, run dir files {first['run_dir_files']} -> "
        f"{last['run_dir_files']}, largest growth of a process over its life "
        f"{max(growth.values(), default=0):.1f} MiB; samples: {out}"
    )
    assert not problems, "\n".join(problems)


def sample(pid: int, admin: Admin, run_dir: str, load: Load, t: float) -> dict[str, Any]:
    st = admin.status()
    processes = []
    for row in st["api_servers"] + st["workers"]:
        for p in [row, *row.get("others", [])]:
            rss = rss_bytes(p["pid"]) if p["pid"] else None
            if rss is not None:
                role, slot = row["role"], row["id"]
                processes.append({"role": role, "id": slot, "pid": p["pid"], "rss": rss})
    sent, right, failed = load.snapshot()
    return {
        "t": round(t, 1),
        "supervisor_rss": rss_bytes(pid) or 0,
        "supervisor_fds": fd_count(pid),
        "run_dir_files": len(os.listdir(run_dir)),
        "api_processes": sum(1 for p in processes if p["role"] == "api"),
        "processes": processes,
        "tree_rss": (rss_bytes(pid) or 0) + sum(p["rss"] for p in processes),
        "sent": sent,
        "right": right,
        "failed": failed,
    }
