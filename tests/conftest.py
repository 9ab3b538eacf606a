"""Fixtures that start real `ferryman serve` processes on free loopback ports.

Every process a test starts is killed at teardown, whatever the test did: the supervisor by
SIGKILL (its children die with it: PDEATHSIG), and then any child still found in /proc by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ports import free_port

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"


def alive(pid: int) -> bool:
    """True while pid is a live process (zombies count as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll until pred() is truthy; fails the test with the last value if it never is."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last value: {last!r})")


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, admin_port: int, log: Path):
        self.proc = proc
        self.port = port
        self.admin_port = admin_port
        self.url = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.log_path = log
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.known_pids: set[int] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, path: str = "/predict", json: Any = None, **kw: Any) -> httpx.Response:
        return self.http.post(path, json=json, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def admin_call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.admin + path, timeout=kw.pop("timeout", 60), **kw)

    def status(self) -> dict[str, Any]:
        st = self.admin_call("GET", "/v1/status").json()
        for row in st["api_servers"] + st["workers"]:
            if row["pid"]:
                self.known_pids.add(row["pid"])
        return st

    def pids(self, role: str = "workers") -> list[int]:
        return [r["pid"] for r in self.status()[role] if r["pid"]]

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"ferryman exited with {self.proc.returncode}:\n{self.log()}")
            # /ready needs min_ready_workers of each model; tests count on every worker being
            # reachable from every API process.
            try:
                if self.admin_call("GET", "/ready", timeout=2).status_code != 200:
                    return False
                r = self.admin_call("GET", "/v1/models", timeout=2)
            except httpx.HTTPError:
                return False
            if r.status_code != 200:  # an admin token this helper does not send: /ready it is
                return True
            # Slots that failed to start (a test's purpose, often) count as settled.
            return all(
                m["workers_ready"] + sum(w["state"] == "failed" for w in m["workers"])
                >= m["workers_desired"]
                for m in r.json()["models"]
            )

        wait_for(ready, timeout)
        self.status()

    def wait_workers(self, n: int, timeout: float = 30.0) -> None:
        """Until n workers are ready and reachable from every API process (/ready only needs
        min_ready_workers of each model)."""

        def ready() -> bool:
            models = self.admin_call("GET", "/v1/models").json()["models"]
            return sum(m["workers_ready"] for m in models) >= n

        wait_for(ready, timeout)

    def child_pids(self) -> list[int]:
        return children_of(self.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        return self.proc.wait(timeout)

    def kill_all(self) -> None:
        self.http.close()
        pids = set(self.known_pids) | set(self.child_pids())
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(10)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(
        app: str | list[str] | None,
        *args: str,
        wait: bool = True,
        env: dict[str, str] | None = None,
        api_servers: int = 2,
        workers: int | None = 2,
        accelerator: str | None = "cpu",
        cwd: Path | None = None,
        timeout: float = 30.0,
    ) -> Served:
        """`ferryman serve APP... ARGS` on free ports. workers and accelerator become flags,
        which beat a config file's per-model values: pass None to leave them to the file."""
        port, admin_port = free_port(), free_port()
        log = tmp_path / f"ferryman-{port}.log"
        apps = [] if app is None else [app] if isinstance(app, str) else list(app)
        cmd = [
            sys.executable,
            "-m",
            "ferryman",
            "serve",
            *apps,
            "--port",
            str(port),
            "--admin-port",
            str(admin_port),
            "--api-servers",
            str(api_servers),
        ]
        if workers is not None:
            cmd += ["--workers-per-device", str(workers)]
        if accelerator is not None:
            cmd += ["--accelerator", accelerator]
        cmd += args
        full_env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                cmd,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=str(cwd or ROOT),
                start_new_session=True,
            )
        s = Served(proc, port, admin_port, log)
        started.append(s)
        if wait:
            s.wait_ready(timeout)
        return s

    yield start
    for s in started:
        s.kill_all()


# Two GPUs that exist only in the environment: workers get pinned to them as to real ones.
FAKE_GPUS = ("--accelerator", "cuda", "--devices", "0,1")
FAKE_GPU_ENV = {"CUDA_VISIBLE_DEVICES": "0,1"}


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`ferryman serve examples/doubler.py:Doubler ARGS` run to its exit (for start-up errors)."""
    return subprocess.run(
        [sys.executable, "-m", "ferryman", "serve", "examples/doubler.py:Doubler", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=30, env={**os.environ, **(env or {})},
    )  # fmt: skip


def app(name: str) -> str:
    """`tests/apps/NAME.py:NAME` spelled for `ferryman serve`."""
    module, _, cls = name.partition(":")
    return f"{APPS / module}.py:{cls}"


# -- the reliability suites' options (tests/test_chaos.py, test_soak.py) -------------------------

CHAOS_SEED = 20261127
CHAOS_DURATION = 20.0  # seconds of faults in each chaos test (CI size)
REPORTS = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ferryman reliability suites")
    group.addoption(
        "--chaos-seed",
        type=int,
        default=CHAOS_SEED,
        help=f"seed of the chaos tests' fault injector [default: {CHAOS_SEED}]",
    )
    group.addoption(
        "--chaos-duration",
        type=float,
        default=CHAOS_DURATION,
        metavar="SECONDS",
        help=f"seconds of faults in each chaos test [default: {CHAOS_DURATION:g}]",
    )
    group.addoption("--soak", action="store_true", help="run the soak test (an hour by default)")
    group.addoption(
        "--soak-duration",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="seconds of load in the soak test [default: 3600]",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="the soak test runs only with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The reliability reports (seed, counts, recovery times), also under -q."""
    reports = config.stash.get(REPORTS, [])
    if reports:
        terminalreporter.section("reliability reports")
        for text in reports:
            terminalreporter.write_line(text)


@pytest.fixture
def reliability_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Add a report to the end of the pytest output (and print it, for -s)."""

    def add(text: str) -> None:
        print(text)
        request.config.stash.setdefault(REPORTS, []).append(text)

    return add
