"""Starting and stopping the three peers, and reading what they say about themselves."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks import httpclient, models, procs, proctree

ROOT = Path(__file__).resolve().parents[2]
PEERS = ("litserve", "bare", "ferryman")  # the A B C of every interleaved round
LABELS = {"litserve": "LitServe", "bare": "bare uvicorn", "ferryman": "ferryman"}

FERRYMAN_CLASSES = {"trivial": "Trivial", "batched": "Batched", "streamed": "Streamed"}


@dataclass
class Counts:
    api_servers: int = 2
    workers: int = 2
    max_batch_size: int = 8
    batch_timeout: float = 0.005


@dataclass
class Running:
    peer: str
    model: str
    proc: subprocess.Popen[Any]
    port: int
    admin_port: int | None
    stats_dir: Path
    log: IO[Any]
    started: float  # monotonic, just before the process was created
    ready: float = 0.0  # monotonic, when the first request answered 200
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def startup_s(self) -> float:
        return self.ready - self.started

    def tree(self) -> list[int]:
        return proctree.tree(self.proc.pid)

    def memory(self) -> proctree.Memory:
        return proctree.memory(self.proc.pid)

    def worker_pids(self) -> list[tuple[float, int]]:
        """(setup time, pid) of each live model process in this peer's tree, oldest first."""
        family = set(self.tree())
        out = []
        for pid, t in read_markers(self.stats_dir, "setup").items():
            if pid in family:
                out.append((t, pid))
        return sorted(out)

    def batch_totals(self) -> tuple[float, float]:
        """(predict calls, requests in them) so far; deltas give the mean batch size.

        ferryman exports it (ferryman_batch_size histogram on the admin port); the others are
        counted by the model itself (models.Recorder)."""
        if self.peer == "ferryman" and self.admin_port:
            text = httpclient.get_json_text(self.admin_port, "/metrics")
            count = metric_sum(text, "ferryman_batch_size_count")
            total = metric_sum(text, "ferryman_batch_size_sum")
            return count, total
        return recorded_totals(self.stats_dir)

    def stop(self, grace: float = 3.0) -> None:
        try:
            procs.stop(self.proc, grace=grace)
        finally:
            self.log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_markers(stats_dir: Path, kind: str) -> dict[int, float]:
    """{pid: wall time} of the setup-<pid> / first-<pid> files a Recorder wrote."""
    out: dict[int, float] = {}
    for path in stats_dir.glob(f"{kind}-*"):
        if path.suffix == ".tmp":
            continue
        try:
            out[int(path.name.split("-", 1)[1])] = float(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def recorded_totals(stats_dir: Path) -> tuple[float, float]:
    import json

    calls = items = 0.0
    for path in stats_dir.glob("stats-*"):
        if path.suffix == ".tmp":
            continue
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        calls += d["calls"]
        items += d["items"]
    return calls, items


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of `name` (all label sets) in Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        if rest[:1] not in ("{", " "):
            continue  # a longer name with the same prefix
        # The value is the first field after the labels (a timestamp may follow it).
        with contextlib.suppress(ValueError, IndexError):
            total += float(rest.rpartition("}")[2].split()[0])
    return total


def litserve_python() -> Path:
    return ROOT / "benchmarks" / ".venv-litserve" / "bin" / "python"


def command(
    peer: str, model: str, port: int, admin_port: int | None, c: Counts, opts: dict[str, Any]
) -> list[str]:
    if peer == "ferryman":
        cmd = [
            sys.executable,
            "-m",
            "ferryman",
            "serve",
            f"benchmarks/peers/ferryman_app.py:{FERRYMAN_CLASSES[model]}",
            "--accelerator",
            "cpu",
            "--api-servers",
            str(c.api_servers),
            "--workers-per-device",
            str(c.workers),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--admin-port",
            str(admin_port),
            "--log-level",
            "warning",
        ]
        if model == "batched":
            cmd += ["--max-batch-size", str(c.max_batch_size)]
            cmd += ["--batch-timeout", str(c.batch_timeout)]
        if model == "streamed":
            cmd.append("--stream")
        return cmd
    if peer == "litserve":
        cmd = [
            str(litserve_python()),
            "-m",
            "benchmarks.peers.litserve_app",
            "--model",
            model,
            "--port",
            str(port),
            "--workers",
            str(c.workers),
            "--api-servers",
            str(c.api_servers),
            "--max-batch-size",
            str(c.max_batch_size),
            "--batch-timeout",
            str(c.batch_timeout),
        ]
        if opts.get("restart_workers"):
            cmd.append("--restart-workers")
        if opts.get("litserve_fast_queue"):
            cmd.append("--fast-queue")
        return cmd
    if peer == "bare":
        # One uvicorn process per API process of the others: the model runs inline in each.
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.peers.bare_app:app",
            "--workers",
            str(c.api_servers),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    raise ValueError(f"unknown peer {peer!r}")


def start(
    peer: str,
    model: str,
    run_dir: Path,
    counts: Counts,
    startup_timeout: float,
    opts: dict[str, Any] | None = None,
) -> Running:
    """Start a peer and return once a POST answered 200 (or raise, the peer stopped)."""
    opts = opts or {}
    run_dir.mkdir(parents=True, exist_ok=True)
    stats_dir = run_dir / "stats"
    if stats_dir.exists():
        shutil.rmtree(stats_dir)  # markers of an earlier run would pass for this one's
    stats_dir.mkdir()
    port = free_port()
    admin_port = free_port() if peer == "ferryman" else None
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PROMETHEUS_", "FERRYMAN_", "VIRTUAL_ENV", "PYTHONHOME"))
    }
    env["PYTHONPATH"] = str(ROOT)
    env[models.STATS_ENV] = str(stats_dir)
    env[models.MODEL_ENV] = model
    env[models.COUNT_ENV] = "1" if model == "batched" else "0"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    log = open(run_dir / f"{peer}.log", "w")  # noqa: SIM115 (closed by Running.stop)
    cmd = command(peer, model, port, admin_port, counts, opts)
    log.write(" ".join(cmd) + "\n")
    log.flush()
    started = time.monotonic()
    proc = procs.spawn(cmd, env=env, cwd=ROOT, log=log)
    r = Running(peer, model, proc, port, admin_port, stats_dir, log, started)
    try:
        r.ready = _wait_ready(r, started + startup_timeout)
    except BaseException:
        r.stop(grace=1.0)
        raise
    return r


def _wait_ready(r: Running, deadline: float) -> float:
    while True:
        if r.proc.poll() is not None:
            raise RuntimeError(
                f"{r.peer} exited with {r.proc.returncode} before serving; see {r.log.name}:\n"
                + _tail(Path(r.log.name))
            )
        try:
            return httpclient.wait_ok(r.port, min(deadline, time.monotonic() + 0.5))
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{r.peer} did not answer within the startup timeout; see {r.log.name}:\n"
                    + _tail(Path(r.log.name))
                ) from None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
