"""Starting and stopping the peers, and reading what they say about themselves.

Each peer is one small command builder below; the model code is the same for all
(benchmarks.models, wrapped by benchmarks/peers/<peer>_app.py or torchserve_handler.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks import httpclient, models, procs, proctree
from benchmarks.peers import torchserve

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / "benchmarks"
# The order of every interleaved round.
PEERS = ("litserve", "bentoml", "rayserve", "torchserve", "bare", "ferryman")
QUICK_PEERS = ("litserve", "bare", "ferryman")  # what CI's --quick runs
LABELS = {
    "litserve": "LitServe",
    "bentoml": "BentoML",
    "rayserve": "Ray Serve",
    "torchserve": "TorchServe",
    "bare": "bare uvicorn",
    "ferryman": "ferryman",
}
# The peers that run their model in a separate environment (benchmarks/.venv-<peer>).
VENV_PEERS = ("litserve", "bentoml", "rayserve", "torchserve")
# The peers that batch; bare runs every request through its own predict call.
BATCHING_PEERS = ("litserve", "bentoml", "rayserve", "torchserve", "ferryman")

FERRYMAN_CLASSES = {"trivial": "Trivial", "batched": "Batched", "streamed": "Streamed"}


@dataclass
class Counts:
    api_servers: int = 2
    workers: int = 2
    max_batch_size: int = 8  # scenario (b)
    batch_timeout: float = 0.005
    case_max_batch_size: int = 16  # the batching case (g)
    case_batch_timeout: float = 0.05


@dataclass(frozen=True)
class Batching:
    max_size: int  # 1: off
    timeout_s: float

    @property
    def on(self) -> bool:
        return self.max_size > 1


OFF = Batching(1, 0.0)


def batching_for(model: str, c: Counts, opts: dict[str, Any]) -> Batching:
    """The batching a peer is started with: (b)'s for `batched`, (g)'s for `batchcase` unless
    opts["batching"] is False, none otherwise."""
    if model == "batched":
        return Batching(c.max_batch_size, c.batch_timeout)
    if model == "batchcase" and opts.get("batching", True):
        return Batching(c.case_max_batch_size, c.case_batch_timeout)
    return OFF


def layout(peer: str, c: Counts) -> str:
    """The processes each peer runs, in words: where a peer cannot match the others' 2 front-end
    processes + 2 model replicas, this says so (the report and README print it)."""
    front, workers = c.api_servers, c.workers
    return {
        "ferryman": f"{front} API processes + {workers} workers",
        "litserve": f"{front} API processes + {workers} workers",
        "bentoml": f"{front} Front service workers + {workers} Model service workers",
        "rayserve": f"1 HTTP proxy (Ray runs one per node) + {workers} replicas",
        "torchserve": f"1 JVM front-end ({front} Netty threads) + {workers} backend workers",
        "bare": f"{front} uvicorn processes, model inline (no separate workers)",
    }[peer]


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
    path: str = "/predict"
    batching: Batching = OFF
    cleanup: list[Path] = field(default_factory=list)  # directories removed after stop

    @property
    def startup_s(self) -> float:
        return self.ready - self.started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

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
        if self.peer == "ferryman" and self.admin_port and self.batching.on:
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
            for path in self.cleanup:
                shutil.rmtree(path, ignore_errors=True)


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


def venv_python(peer: str) -> Path:
    return VENVS / f".venv-{peer}" / "bin" / "python"


def litserve_python() -> Path:
    return venv_python("litserve")


@dataclass
class Launch:
    """What one peer needs to start: its command, and what differs from the common case."""

    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    path: str = "/predict"
    cleanup: list[Path] = field(default_factory=list)


@dataclass
class Request:
    """One start of one peer: everything a command builder may look at."""

    model: str
    port: int
    admin_port: int  # ferryman's admin port; TorchServe's management port
    run_dir: Path
    counts: Counts
    batching: Batching
    opts: dict[str, Any]


def ferryman_command(q: Request) -> Launch:
    c = q.counts
    if q.model in models.BATCH_MODELS:
        cls = "Batched" if q.batching.on else "Single"
    else:
        cls = FERRYMAN_CLASSES[q.model]
    cmd = [
        sys.executable,
        "-m",
        "ferryman",
        "serve",
        f"benchmarks/peers/ferryman_app.py:{cls}",
        "--accelerator",
        "cpu",
        "--api-servers",
        str(c.api_servers),
        "--workers-per-device",
        str(c.workers),
        "--host",
        "127.0.0.1",
        "--port",
        str(q.port),
        "--admin-port",
        str(q.admin_port),
        "--log-level",
        "warning",
    ]
    if q.batching.on:
        cmd += ["--max-batch-size", str(q.batching.max_size)]
        cmd += ["--batch-timeout", str(q.batching.timeout_s)]
    if q.model == "streamed":
        cmd.append("--stream")
    return Launch(cmd)


def litserve_command(q: Request) -> Launch:
    c = q.counts
    cmd = [
        str(venv_python("litserve")),
        "-m",
        "benchmarks.peers.litserve_app",
        "--model",
        q.model,
        "--port",
        str(q.port),
        "--workers",
        str(c.workers),
        "--api-servers",
        str(c.api_servers),
        "--max-batch-size",
        str(q.batching.max_size),
        "--batch-timeout",
        str(q.batching.timeout_s),
    ]
    if q.opts.get("restart_workers"):
        cmd.append("--restart-workers")
    if q.opts.get("litserve_fast_queue"):
        cmd.append("--fast-queue")
    return Launch(cmd)


def bare_command(q: Request) -> Launch:
    # One uvicorn process per API process of the others: the model runs inline in each.
    return Launch(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.peers.bare_app:app",
            "--workers",
            str(q.counts.api_servers),
            "--host",
            "127.0.0.1",
            "--port",
            str(q.port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    )


def bentoml_command(q: Request) -> Launch:
    # The service definitions read their counts and batching from the environment: BentoML
    # takes them as decorator arguments, evaluated when `bentoml serve` imports the module.
    home = q.run_dir / "bentoml-home"
    # Its services talk over Unix sockets in temp directories that a killed worker leaves
    # behind: a short one of its own (see rayserve_command), removed after the run.
    tmp = Path(tempfile.mkdtemp(prefix="bench-bentoml-"))
    return Launch(
        [
            str(venv_python("bentoml").parent / "bentoml"),
            "serve",
            "benchmarks.peers.bentoml_app:Front",
            "--host",
            "127.0.0.1",
            "--port",
            str(q.port),
            "--working-dir",
            str(ROOT),
        ],
        env={
            "BENTOML_HOME": str(home),  # not ~/bentoml
            "BENTOML_DO_NOT_TRACK": "True",
            "TMPDIR": str(tmp),
            "BENCH_API_SERVERS": str(q.counts.api_servers),
            "BENCH_WORKERS": str(q.counts.workers),
        },
        cleanup=[tmp],
    )


def rayserve_command(q: Request) -> Launch:
    # Ray puts Unix sockets under its temp directory and their paths must stay under 108
    # bytes, too short for the run directory: a short one under /tmp, removed after the run.
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    return Launch(
        [
            str(venv_python("rayserve")),
            "-m",
            "benchmarks.peers.rayserve_app",
            "--model",
            q.model,
            "--port",
            str(q.port),
            "--workers",
            str(q.counts.workers),
            "--max-batch-size",
            str(q.batching.max_size),
            "--batch-timeout",
            str(q.batching.timeout_s),
            "--temp-dir",
            str(tmp),
        ],
        env={
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",  # else Ray writes a token to ~/.ray on every start
            # Ray starts its workers (the proxy and the replicas too) at nice 15, below wrk and
            # everything else on the machine; the other peers' processes run at nice 0, and so
            # do Ray's here.
            "RAY_worker_niceness": "0",
        },
        cleanup=[tmp],
    )


def torchserve_command(q: Request) -> Launch:
    c = q.counts
    tmp = Path(tempfile.mkdtemp(prefix="bench-ts-"))  # see rayserve_command
    ports = torchserve.Ports(q.port, q.admin_port, free_port(), free_port(), free_port())
    files = torchserve.write(
        q.run_dir,
        ports,
        workers=c.workers,
        netty_threads=c.api_servers,
        # The streamed model sends intermediate responses, which TorchServe allows for batches
        # of one only.
        batch_size=q.batching.max_size,
        max_batch_delay_ms=round(q.batching.timeout_s * 1000),
        tmp=tmp,
    )
    return Launch(
        torchserve.command(venv_python("torchserve").parent / "torchserve", files),
        env=torchserve.env(files),
        cwd=q.run_dir,  # anything it writes to its working directory stays with the run
        path=torchserve.PREDICT_PATH,
        cleanup=[tmp],
    )


COMMANDS: dict[str, Callable[[Request], Launch]] = {
    "ferryman": ferryman_command,
    "litserve": litserve_command,
    "bare": bare_command,
    "bentoml": bentoml_command,
    "rayserve": rayserve_command,
    "torchserve": torchserve_command,
}


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
    batching = batching_for(model, counts, opts) if peer in BATCHING_PEERS else OFF
    q = Request(model, free_port(), free_port(), run_dir, counts, batching, opts)
    launch = COMMANDS[peer](q)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PROMETHEUS_", "FERRYMAN_", "VIRTUAL_ENV", "PYTHONHOME", "RAY_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    env[models.STATS_ENV] = str(stats_dir)
    env[models.MODEL_ENV] = model
    env[models.COUNT_ENV] = "1" if model in models.BATCH_MODELS else "0"
    env[models.MAX_BATCH_ENV] = str(batching.max_size)
    env[models.BATCH_TIMEOUT_ENV] = str(batching.timeout_s)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(launch.env)
    log = open(run_dir / f"{peer}.log", "w")  # noqa: SIM115 (closed by Running.stop)
    log.write(" ".join(launch.cmd) + "\n")
    log.flush()
    started = time.monotonic()
    try:
        proc = procs.spawn(launch.cmd, env=env, cwd=launch.cwd, log=log)
    except BaseException:
        log.close()
        for path in launch.cleanup:
            shutil.rmtree(path, ignore_errors=True)
        raise
    admin = q.admin_port if peer == "ferryman" else None
    r = Running(peer, model, proc, q.port, admin, stats_dir, log, started)
    r.path, r.batching, r.cleanup = launch.path, batching, launch.cleanup
    try:
        r.ready = wait_ready(r, started + startup_timeout)
    except BaseException:
        r.stop(grace=1.0)
        raise
    return r


def wait_ready(r: Running, deadline: float) -> float:
    while True:
        if r.proc.poll() is not None:
            raise RuntimeError(
                f"{r.peer} exited with {r.proc.returncode} before serving; see {r.log.name}:\n"
                + _tail(Path(r.log.name))
            )
        try:
            return httpclient.wait_ok(r.port, min(deadline, time.monotonic() + 0.5), r.path)
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
