"""python -m benchmarks --gpu [--wheels DIR] [--dry-run]: ferryman and LitServe on one GPU.

Never in CI. A real torch model with synthetic weights (benchmarks/gpu_model.py: 8 fp16 linear
layers of 2048 x 2048, nothing downloaded), served by ferryman and by LitServe on the same GPU,
each with 2 API processes, 1 then 2 workers on that one device, batching on (max batch 16, batch
timeout 50 ms) and off. For each: requests/s and p50/p99 at 1 and 64 connections, the mean batch,
the GPU memory of each worker (torch.cuda.max_memory_allocated as the worker reports it, and
nvidia-smi's per-process figure), and, batching on, the time until a worker killed with SIGKILL
is replaced and serves again. Two worker processes on one GPU without MPS time-slice it: the
1-vs-2 table says what that costs.

The GPU machine has PyTorch, aiohttp, prometheus-client and uvloop, and no registry: everything
else is installed from wheels in DIR (made here by `python -m benchmarks.gpu_wheels DIR`) into
benchmarks/.venv-gpu, a venv with --system-site-packages so that the machine's own torch is used.
wrk is not there either: load comes from benchmarks/loadclient.py (asyncio), two processes for
64 connections.

--dry-run runs every step of this on a machine without a GPU: the model small (64 wide) and in
fp32 on the CPU, short measurements, torch installed into the venv if the system has none, and,
without --wheels, the wheels made first by benchmarks.gpu_wheels for this Python.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from benchmarks import procs
from benchmarks.gpu_model import Shape
from benchmarks.peers import launch
from benchmarks.tools import LITSERVE

ROOT = launch.ROOT
VENV = ROOT / "benchmarks" / ".venv-gpu"
PEERS = ("litserve", "ferryman")  # the order of every interleaved round
REQUIRED = "import torch, ferryman, litserve, uvicorn, starlette, zmq, msgspec, httptools, fastapi"
Log = Callable[[str], None]


@dataclass
class GpuConfig:
    dry_run: bool
    shape: Shape
    accelerator: str
    rounds: int = 1
    warmup_s: float = 3.0
    measure_s: float = 10.0
    connections: tuple[int, int] = (1, 64)
    clients: int = 2  # load-client processes for the many-connection runs
    workers: tuple[int, ...] = (1, 2)
    peers: tuple[str, ...] = PEERS
    api_servers: int = 2
    max_batch_size: int = 16
    batch_timeout: float = 0.05
    kill_window_s: float = 60.0
    hung_s: float = 10.0
    startup_timeout_s: float = 600.0
    stop_grace_s: float = 10.0

    @classmethod
    def make(cls, dry_run: bool) -> GpuConfig:
        if dry_run:
            return cls(
                dry_run=True,
                shape=Shape(dim=64, layers=8, dtype="float32"),
                accelerator="cpu",
                warmup_s=0.5,
                measure_s=1.0,
                clients=1,
                kill_window_s=20.0,
                hung_s=5.0,
                startup_timeout_s=120.0,
                stop_grace_s=3.0,
            )
        return cls(dry_run=False, shape=Shape(), accelerator="cuda")


# -- the environment ----------------------------------------------------------------------------


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def _ok(python: Path, code: str) -> bool:
    if not python.exists():
        return False
    try:
        r = subprocess.run([str(python), "-c", code], capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _run(cmd: list[str], log: Log, timeout: float = 1800) -> None:
    log("  " + " ".join(cmd))
    subprocess.run(cmd, check=True, timeout=timeout, stdin=subprocess.DEVNULL)


def make_venv(venv: Path, log: Log) -> list[str]:
    """Create the venv (--system-site-packages: the machine's torch); return the pip command for
    it. Without ensurepip (Debian's python3 without python3-venv) the venv gets no pip, and this
    Python's pip installs into it (pip --python)."""
    python = venv_python(venv)
    if not python.exists():
        log(f"creating {venv} (--system-site-packages)")
        try:
            _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], log, 300)
        except subprocess.CalledProcessError:
            shutil.rmtree(venv, ignore_errors=True)
            cmd = [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip"]
            _run([*cmd, str(venv)], log, 300)
    if _ok(python, "import pip"):
        return [str(python), "-m", "pip"]
    return [sys.executable, "-m", "pip", "--python", str(python)]


def install_commands(pip: list[str], wheels: Path) -> list[list[str]]:
    """Everything from `wheels` and nothing from a registry; then ferryman's wheel over any
    ferryman already there (same version number, newer code)."""
    base = [*pip, "install", "-q", "--disable-pip-version-check", "--no-index"]
    links = ["--find-links", str(wheels)]
    return [
        [*base, *links, "ferryman", LITSERVE],
        [*base, *links, "--force-reinstall", "--no-deps", "ferryman"],
    ]


def ensure_env(wheels: Path | None, dry_run: bool, log: Log, venv: Path = VENV) -> Path:
    python = venv_python(venv)
    if wheels is None and dry_run:
        from benchmarks import gpu_wheels

        wheels = venv.parent / ".venv-gpu-wheels"
        log(f"--dry-run without --wheels: making them in {wheels}")
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        gpu_wheels.build(wheels, [version])
    if wheels is None:
        if _ok(python, REQUIRED):
            return python
        raise RuntimeError(
            f"{venv} lacks ferryman or LitServe: pass --wheels DIR, a directory made by "
            "`python -m benchmarks.gpu_wheels DIR` on a machine with the package registry"
        )
    pip = make_venv(venv, log)
    log(f"installing ferryman and {LITSERVE} from {wheels}")
    for cmd in install_commands(pip, wheels):
        _run(cmd, log)
    if dry_run and not _ok(python, "import torch"):
        # Only here: the GPU machine's torch comes from its system site-packages. This one is
        # the CPU wheel on this machine's disk.
        log("no torch on this machine: installing the CPU one into the dry run's venv")
        _run([*pip, "install", "-q", "torch==2.13.0"], log)
    if not _ok(python, REQUIRED):
        raise RuntimeError(f"{venv} still cannot `{REQUIRED}`")
    return python


def pythonpath(venv: Path = VENV) -> Path:
    """A directory holding only the `benchmarks` package: the repository root on PYTHONPATH would
    shadow the installed ferryman wheel with the source tree."""
    d = venv / "pythonpath"
    d.mkdir(parents=True, exist_ok=True)
    link = d / "benchmarks"
    if not link.is_symlink():
        if link.exists():
            shutil.rmtree(link)
        link.symlink_to(ROOT / "benchmarks", target_is_directory=True)
    return d


# -- the peers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    peer: str
    workers: int
    batching: bool

    @property
    def key(self) -> str:
        return f"{self.peer}/w{self.workers}/{'on' if self.batching else 'off'}"


def command(case: Case, cfg: GpuConfig, python: Path, port: int, admin_port: int) -> list[str]:
    batch = ["--max-batch-size", str(cfg.max_batch_size)] if case.batching else []
    batch += ["--batch-timeout", str(cfg.batch_timeout)] if case.batching else []
    if case.peer == "ferryman":
        cls = "BatchedMLP" if case.batching else "MLP"
        devices = ["--devices", "1"] if cfg.accelerator == "cuda" else []
        return [
            str(python),
            "-m",
            "ferryman",
            "serve",
            f"benchmarks.peers.gpu_ferryman:{cls}",
            "--accelerator",
            cfg.accelerator,
            *devices,
            "--workers-per-device",
            str(case.workers),
            "--api-servers",
            str(cfg.api_servers),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--admin-port",
            str(admin_port),
            "--log-level",
            "warning",
            *batch,
        ]
    if case.peer == "litserve":
        # restart_workers always: the kill test needs it, and then every case has it alike.
        return [
            str(python),
            "-m",
            "benchmarks.peers.gpu_litserve",
            "--port",
            str(port),
            "--accelerator",
            cfg.accelerator,
            "--workers",
            str(case.workers),
            "--api-servers",
            str(cfg.api_servers),
            "--restart-workers",
            *batch,
        ]
    raise ValueError(f"unknown peer {case.peer!r}")


def peer_env(cfg: GpuConfig, stats_dir: Path, path_dir: Path) -> dict[str, str]:
    from benchmarks import models

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PROMETHEUS_", "FERRYMAN_", "VIRTUAL_ENV", "PYTHONHOME"))
    }
    env["PYTHONPATH"] = str(path_dir)
    env[models.STATS_ENV] = str(stats_dir)
    env[models.COUNT_ENV] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(cfg.shape.env())
    return env


def start(
    case: Case, cfg: GpuConfig, python: Path, path_dir: Path, run_dir: Path
) -> launch.Running:
    run_dir.mkdir(parents=True, exist_ok=True)
    stats = run_dir / "stats"
    shutil.rmtree(stats, ignore_errors=True)
    stats.mkdir()
    port, admin = launch.free_port(), launch.free_port()
    cmd = command(case, cfg, python, port, admin)
    log = open(run_dir / f"{case.peer}.log", "w")  # noqa: SIM115 (closed by Running.stop)
    log.write(" ".join(cmd) + "\n")
    log.flush()
    started = time.monotonic()
    # Its working directory is the run's, not the repository: `python -m` puts the working
    # directory first on sys.path, where the source tree's ferryman would shadow the wheel.
    proc = procs.spawn(cmd, env=peer_env(cfg, stats, path_dir), cwd=run_dir, log=log)
    r = launch.Running(case.peer, "gpu", proc, port, admin, stats, log, started)
    r.batching = (
        launch.Batching(cfg.max_batch_size, cfg.batch_timeout) if case.batching else launch.OFF
    )
    try:
        r.ready = launch.wait_ready(r, started + cfg.startup_timeout_s)
    except BaseException:
        r.stop(grace=1.0)
        raise
    return r


# -- measuring ----------------------------------------------------------------------------------


def merge_loads(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several load-client processes that ran side by side."""
    lat = sorted(x for p in parts for x in p.get("latencies_ms", []))
    ok = sum(int(p.get("ok", 0)) for p in parts)
    duration = max((float(p.get("duration_s", 0.0)) for p in parts), default=0.0)

    def pct(q: float) -> float | None:
        return lat[min(len(lat) - 1, max(0, round(q / 100 * (len(lat) - 1))))] if lat else None

    return {
        "rps": ok / duration if duration > 0 else 0.0,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "ok": ok,
        "failed": sum(int(p.get("failed", 0)) for p in parts),
        "hung": sum(int(p.get("hung", 0)) for p in parts),
    }


def load(
    python: Path,
    path_dir: Path,
    r: launch.Running,
    connections: int,
    seconds: float,
    clients: int,
    hung_s: float,
) -> dict[str, Any]:
    """Closed-loop load from `clients` processes (uvloop where installed); merged result."""
    clients = max(1, min(clients, connections))
    share = [connections // clients + (i < connections % clients) for i in range(clients)]
    env = {**os.environ, "PYTHONPATH": str(path_dir)}
    running: list[tuple[subprocess.Popen[Any], IO[Any]]] = []
    parts: list[dict[str, Any]] = []
    try:
        for n in share:
            out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed below)
            cmd = [str(python), "-m", "benchmarks.loadclient", "--port", str(r.port)]
            cmd += ["--connections", str(n), "--duration", str(seconds)]
            cmd += ["--hung", str(hung_s), "--path", r.path, "--raw"]
            p = procs.spawn(cmd, env=env, cwd=path_dir, log=subprocess.DEVNULL, stdout=out)
            running.append((p, out))
        for client, output in running:
            try:
                client.wait(timeout=seconds + hung_s + 30)
            except subprocess.TimeoutExpired:
                raise RuntimeError("a load client did not finish") from None
            output.seek(0)
            parts.append(json.loads(output.read() or "{}"))
    finally:
        for client, output in running:
            if client.poll() is None:
                procs.stop(client, grace=0.5)
            output.close()
    return merge_loads(parts)


def mean_batch(r: launch.Running, before: tuple[float, float]) -> float | None:
    calls, items = r.batch_totals()
    calls -= before[0]
    return (items - before[1]) / calls if calls > 0 else None


def parse_compute_apps(text: str) -> dict[int, float]:
    """{pid: MiB} from `nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,
    nounits`."""
    out: dict[int, float] = {}
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 2 and fields[0].isdigit():
            try:
                out[int(fields[0])] = float(fields[1])
            except ValueError:
                continue
    return out


def nvidia_smi(*query: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        p = subprocess.run(
            ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def gpu_memory(r: launch.Running) -> dict[str, Any]:
    """Per worker: what torch says it allocated at most, and what nvidia-smi says the process
    holds (its CUDA context included). In a container nvidia-smi may show host pids that match
    none of ours: then only its total is reported."""
    family = set(r.tree())
    reported: list[float] = []
    for path in r.stats_dir.glob("gpumem-*"):
        if path.suffix == ".tmp" or int(path.name.split("-", 1)[1]) not in family:
            continue
        try:
            value = json.loads(path.read_text()).get("max_allocated_mb")
        except (OSError, ValueError):
            continue
        if isinstance(value, int | float):
            reported.append(value)
    text = nvidia_smi("--query-compute-apps=pid,used_memory")
    apps = parse_compute_apps(text) if text is not None else {}
    ours = [mb for pid, mb in apps.items() if pid in family]
    return {
        "torch_max_allocated_mb": sorted(reported),
        "nvidia_smi_mb": sorted(ours),
        "nvidia_smi_total_mb": sum(apps.values()) if text is not None else None,
        "nvidia_smi": "unavailable" if text is None else ("per pid" if ours else "total only"),
    }


def kill_test(
    r: launch.Running, case: Case, cfg: GpuConfig, python: Path, path_dir: Path, log: Log
) -> dict[str, Any]:
    """SIGKILL one worker under light load (4 connections): when its replacement has finished
    setup, when it answers its first request, and what the clients saw meanwhile. The load stops
    a second after that first answer, not at the end of the window: device time is scarce."""
    deadline = time.monotonic() + cfg.startup_timeout_s
    while len(r.worker_pids()) < case.workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(r.worker_pids())} of {case.workers} workers came up")
        time.sleep(0.1)
    before = {pid for _, pid in r.worker_pids()}
    hung = min(cfg.hung_s, 5.0)
    cmd = [str(python), "-m", "benchmarks.loadclient", "--port", str(r.port), "--path", r.path]
    cmd += ["--connections", "4", "--duration", str(cfg.kill_window_s + 2), "--hung", str(hung)]
    cmd.append("--stop-on-sigterm")
    env = {**os.environ, "PYTHONPATH": str(path_dir)}
    with tempfile.TemporaryFile(mode="w+") as output:
        client = procs.spawn(cmd, env=env, cwd=path_dir, log=subprocess.DEVNULL, stdout=output)
        try:
            time.sleep(2.0)
            victim = r.worker_pids()[0][1]
            t_kill = time.time()
            os.kill(victim, signal.SIGKILL)
            log(f"    SIGKILLed worker pid {victim}")
            respawn, again = wait_replacement(r, before, t_kill, cfg.kill_window_s)
            if again is not None:
                time.sleep(1.0)  # a second of service after it, for the failure count
            client.send_signal(signal.SIGTERM)
            try:
                client.wait(timeout=hung + 30)
            except subprocess.TimeoutExpired:
                raise RuntimeError("the load client did not stop") from None
        finally:
            if client.poll() is None:
                procs.stop(client, grace=0.5)
        output.seek(0)
        result = json.loads(output.read() or "{}")
    last = result.get("last_failure")
    return {
        "respawn_s": respawn,
        "serves_again_s": again,
        "ok": result.get("ok"),
        "failed": result.get("failed"),
        "hung": result.get("hung"),
        "statuses": result.get("statuses", {}),
        "last_failure_after_kill_s": last - t_kill if last is not None else None,
        "window_s": cfg.kill_window_s,
    }


def wait_replacement(
    r: launch.Running, before: set[int], t_kill: float, window_s: float
) -> tuple[float | None, float | None]:
    """(seconds until a new worker finished setup, until it answered its first request)."""
    respawn = again = None
    stop_at = time.monotonic() + window_s
    while time.monotonic() < stop_at:
        new = {
            p: t
            for p, t in launch.read_markers(r.stats_dir, "setup").items()
            if p not in before and t >= t_kill
        }
        if new:
            respawn = min(new.values()) - t_kill
            served = [t for p, t in launch.read_markers(r.stats_dir, "first").items() if p in new]
            if served:
                return respawn, min(served) - t_kill
        time.sleep(0.05)
    return respawn, again


def run_case(
    case: Case, cfg: GpuConfig, python: Path, path_dir: Path, run_dir: Path, log: Log
) -> dict[str, Any]:
    r = start(case, cfg, python, path_dir, run_dir)
    out: dict[str, Any] = {"startup_s": r.startup_s}
    try:
        few, many = cfg.connections
        load(python, path_dir, r, many, cfg.warmup_s, cfg.clients, cfg.hung_s)
        out[f"c{few}"] = load(python, path_dir, r, few, cfg.measure_s, 1, cfg.hung_s)
        before = r.batch_totals()
        out[f"c{many}"] = load(python, path_dir, r, many, cfg.measure_s, cfg.clients, cfg.hung_s)
        time.sleep(0.25)  # the model's counters are flushed every 0.1 s
        out["mean_batch"] = mean_batch(r, before)
        out["memory"] = gpu_memory(r)
        if r.proc.poll() is not None:
            raise RuntimeError(f"{case.peer} exited with {r.proc.returncode} during the run")
        if case.batching:
            out["kill"] = kill_test(r, case, cfg, python, path_dir, log)
    finally:
        r.stop(cfg.stop_grace_s)
    return out


# -- the report ---------------------------------------------------------------------------------


def median_case(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of the numbers that matter; memory and kill from the middle run."""
    if not runs:
        return {}
    out = dict(runs[len(runs) // 2])
    for conn in [k for k in runs[0] if k.startswith("c") and k[1:].isdigit()]:
        out[conn] = {
            f: _median([run.get(conn, {}).get(f) for run in runs])
            for f in ("rps", "p50_ms", "p99_ms", "failed")
        }
    out["mean_batch"] = _median([run.get("mean_batch") for run in runs])
    out["startup_s"] = _median([run.get("startup_s") for run in runs])
    return out


def _median(values: list[Any]) -> float | None:
    nums = [v for v in values if isinstance(v, int | float)]
    return statistics.median(nums) if nums else None


def _f(v: Any, digits: int = 2) -> str:
    from benchmarks.report import fmt

    return fmt(v, digits)


def _ratio(a: Any, b: Any) -> str:
    from benchmarks.report import fmt_ratio, ratio

    return fmt_ratio(ratio(a, b))


def _mem(m: dict[str, Any]) -> tuple[str, str]:
    torch_mb = " / ".join(_f(x, 0) for x in m.get("torch_max_allocated_mb", [])) or "-"
    smi = m.get("nvidia_smi")
    if smi == "per pid":
        smi_mb = " / ".join(_f(x, 0) for x in m.get("nvidia_smi_mb", []))
    elif smi == "total only":
        smi_mb = f"{_f(m.get('nvidia_smi_total_mb'), 0)} (all processes)"
    else:
        smi_mb = "-"
    return torch_mb, smi_mb


def markdown(results: dict[str, dict[str, Any]], cfg: GpuConfig, header: list[str]) -> str:
    few, many = cfg.connections
    lines = [
        *header,
        "",
        f"| peer | workers on the GPU | batching | {few} conn req/s | p50 ms | p99 ms "
        f"| {many} conn req/s | p50 ms | p99 ms | mean batch | start s "
        "| GPU MB per worker (torch max allocated) | GPU MB per worker (nvidia-smi) |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for case in cases(cfg):
        v = results.get(case.key)
        if not v:
            continue
        a, b = v.get(f"c{few}", {}), v.get(f"c{many}", {})
        torch_mb, smi_mb = _mem(v.get("memory", {}))
        fails = (a.get("failed") or 0) + (b.get("failed") or 0)
        lines.append(
            f"| {launch.LABELS[case.peer]} | {case.workers} | {'on' if case.batching else 'off'} "
            f"| {_f(a.get('rps'))} | {_f(a.get('p50_ms'))} | {_f(a.get('p99_ms'))} "
            f"| {_f(b.get('rps'))} | {_f(b.get('p50_ms'))} | {_f(b.get('p99_ms'))} "
            f"| {_f(v.get('mean_batch'))} | {_f(v.get('startup_s'))} | {torch_mb} | {smi_mb} |"
            + (f" {_f(fails, 0)} failed" if fails else "")
        )
    lines += [
        "",
        f"ferryman ÷ LitServe ({many} conn req/s, {few} conn p50):",
        "",
        f"| workers on the GPU | batching | {many} conn req/s | {few} conn p50 |",
        "|--:|---|--:|--:|",
    ]
    for w in cfg.workers:
        for on in (True, False):
            fm = results.get(Case("ferryman", w, on).key, {})
            ls = results.get(Case("litserve", w, on).key, {})
            lines.append(
                f"| {w} | {'on' if on else 'off'} "
                f"| {_ratio(_get(fm, many, 'rps'), _get(ls, many, 'rps'))} "
                f"| {_ratio(_get(fm, few, 'p50_ms'), _get(ls, few, 'p50_ms'))} |"
            )
    if len(cfg.workers) > 1:
        lo, hi = min(cfg.workers), max(cfg.workers)
        lines += [
            "",
            f"{hi} workers on one GPU ÷ {lo} (without MPS they time-slice it):",
            "",
            f"| peer | batching | {many} conn req/s | {many} conn p99 | {few} conn p50 "
            "| GPU MB, all workers (torch) |",
            "|---|---|--:|--:|--:|--:|",
        ]
        for peer in cfg.peers:
            for on in (True, False):
                a = results.get(Case(peer, lo, on).key, {})
                b = results.get(Case(peer, hi, on).key, {})
                mem_a = sum(a.get("memory", {}).get("torch_max_allocated_mb", []))
                mem_b = sum(b.get("memory", {}).get("torch_max_allocated_mb", []))
                lines.append(
                    f"| {launch.LABELS[peer]} | {'on' if on else 'off'} "
                    f"| {_ratio(_get(b, many, 'rps'), _get(a, many, 'rps'))} "
                    f"| {_ratio(_get(b, many, 'p99_ms'), _get(a, many, 'p99_ms'))} "
                    f"| {_ratio(_get(b, few, 'p50_ms'), _get(a, few, 'p50_ms'))} "
                    f"| {_ratio(mem_b or None, mem_a or None)} |"
                )
    lines += [
        "",
        "One worker SIGKILLed (batching on, 4 connections of light load until a second after "
        "the replacement's first answer; a server without a ready worker may answer 503 at "
        "once, so `failed` counts fast refusals too):",
        "",
        "| peer | workers on the GPU | replacement set up after s | serves again after s "
        "| last failure after kill s | answered 200 | failed | of which hung | statuses |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for case in cases(cfg):
        k = results.get(case.key, {}).get("kill")
        if not k:
            continue
        again = k.get("serves_again_s")
        again_s = _f(again) if again is not None else f"not within {_f(k.get('window_s'), 0)} s"
        lines.append(
            f"| {launch.LABELS[case.peer]} | {case.workers} | {_f(k.get('respawn_s'))} "
            f"| {again_s} | {_f(k.get('last_failure_after_kill_s'))} "
            f"| {_f(k.get('ok'), 0)} | {_f(k.get('failed'), 0)} | {_f(k.get('hung'), 0)} "
            f"| {', '.join(f'{n}x {st}' for st, n in sorted(k.get('statuses', {}).items()))} |"
        )
    return "\n".join(lines) + "\n"


def _get(v: dict[str, Any], conns: int, field: str) -> Any:
    return v.get(f"c{conns}", {}).get(field)


def cases(cfg: GpuConfig) -> list[Case]:
    return [Case(p, w, on) for w in cfg.workers for on in (True, False) for p in cfg.peers]


def describe(python: Path) -> dict[str, Any]:
    code = (
        "import json, platform, torch, ferryman, litserve; print(json.dumps({"
        "'python': platform.python_version(), 'torch': torch.__version__, "
        "'cuda': torch.version.cuda, 'ferryman': ferryman.__version__, "
        "'litserve': litserve.__version__, 'gpu': torch.cuda.get_device_name(0) "
        "if torch.cuda.is_available() else None}))"
    )
    try:
        p = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300)
        info: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        info = {}
    smi = nvidia_smi("--query-gpu=name,memory.total,driver_version")
    if smi:
        info["nvidia_smi"] = smi.strip().splitlines()[0]
    info["cpus"] = os.cpu_count()
    info["machine"] = platform.node()
    return info


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks --gpu",
        description="ferryman and LitServe serving one torch model on one GPU (never in CI).",
    )
    ap.add_argument("--wheels", type=Path, help="install from these wheels (benchmarks.gpu_wheels)")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="every step on the CPU, the model small and fp32, briefly (no GPU needed)",
    )
    ap.add_argument("--rounds", type=int, help="interleaved rounds [1]")
    ap.add_argument("--duration", type=float, help="seconds per measurement [10; dry run 1]")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up load [3; dry run 0.5]")
    ap.add_argument("--workers", help="workers on the GPU to compare, comma-separated [1,2]")
    ap.add_argument("--peers", help=f"subset of {','.join(PEERS)} [both]")
    ap.add_argument("--out", type=Path, help="results-gpu.md/.json go there")
    ap.add_argument("--time-limit", type=float, help="stop everything after this [1800; dry 600]")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = GpuConfig.make(args.dry_run)
    if args.rounds:
        cfg.rounds = args.rounds
    if args.duration:
        cfg.measure_s = args.duration
    if args.warmup is not None:
        cfg.warmup_s = args.warmup
    if args.workers:
        cfg.workers = tuple(sorted({int(w) for w in args.workers.split(",")}))
    if args.peers:
        cfg.peers = tuple(p for p in PEERS if p in args.peers.split(","))
        if not cfg.peers:
            raise SystemExit(f"--peers: choose among {', '.join(PEERS)}")
    results_dir = ROOT / "benchmarks" / "results"
    out = args.out or results_dir / ("raw/gpu-dry-run" if cfg.dry_run else "gpu")
    # Per-run logs go where git ignores them (results/raw/), whatever --out says.
    raw = results_dir / "raw" / ("gpu-dry-run-logs" if cfg.dry_run else "gpu-logs")
    shutil.rmtree(raw, ignore_errors=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    procs.install_handlers()
    from benchmarks.__main__ import _watchdog

    watchdog = _watchdog(args.time_limit or (600 if cfg.dry_run else 1800))
    started = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {}
    errors: list[str] = []
    try:
        wheels = args.wheels.resolve() if args.wheels else None
        python = ensure_env(wheels, cfg.dry_run, log)
        if not cfg.dry_run and not _ok(python, "import torch; assert torch.cuda.is_available()"):
            raise RuntimeError("torch sees no GPU here (use --dry-run on a machine without one)")
        path_dir = pythonpath()
        for rnd in range(1, cfg.rounds + 1):
            for case in cases(cfg):
                log(f"[round {rnd}] {case.key} ...")
                t0 = time.monotonic()
                try:
                    run_dir = raw / f"{case.key.replace('/', '-')}-r{rnd}"
                    runs.setdefault(case.key, []).append(
                        run_case(case, cfg, python, path_dir, run_dir, log)
                    )
                except KeyboardInterrupt:
                    raise
                except Exception as e:
                    errors.append(f"{case.key} / round {rnd}: {type(e).__name__}: {e}")
                    log(f"  FAILED {errors[-1]}")
                else:
                    log(f"  done in {time.monotonic() - t0:.1f}s")
        info = describe(python)
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        return 130
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        log(f"cannot run the GPU benchmark: {e}")
        return 2
    finally:
        procs.cleanup()
        watchdog.cancel()
    elapsed = time.monotonic() - started
    results = {k: median_case(v) for k, v in runs.items()}
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    what = "DRY RUN on the CPU (small fp32 model; numbers mean nothing)" if cfg.dry_run else "GPU"
    s = cfg.shape
    header = [
        f"GPU benchmark, {what}: {stamp}, {elapsed:.0f} s, {cfg.rounds} round(s), "
        f"{cfg.measure_s:g} s per measurement.",
        "",
        f"Model: {s.layers} linear layers {s.dim} x {s.dim}, {s.dtype}, GELU between, random "
        f"weights; {cfg.api_servers} API processes; batching on = max batch "
        f"{cfg.max_batch_size}, batch timeout {cfg.batch_timeout * 1e3:g} ms. "
        + ", ".join(f"{k} {v}" for k, v in info.items() if v is not None)
        + ".",
    ]
    md = markdown(results, cfg, header)
    if errors:
        md += "\nErrors during the run:\n\n" + "\n".join(f"- {e}" for e in errors) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results-gpu.md").write_text(md)
    data = {
        "when": stamp,
        "elapsed_s": elapsed,
        "info": info,
        "config": {k: v for k, v in asdict(cfg).items()},
        "medians": results,
        "runs": runs,
        "errors": errors,
    }
    (out / "results-gpu.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print()
    print(md)
    log(f"wrote {out / 'results-gpu.md'} and {out / 'results-gpu.json'}")
    return 1 if errors else 0
