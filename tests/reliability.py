"""What the reliability suites share: a checked load, a seeded fault injector, /proc probes.

Used by tests/test_chaos.py, tests/test_soak.py and tests/test_fuzz.py.
Nothing here asserts: it measures and records, and the tests say what must hold.

- `Load`: N asyncio HTTP/1.1 clients on keep-alive connections (raw sockets: every way a request
  can end is seen as it is, a reset included), each request with a unique input whose answer is
  checked. Each connection first asks `GET /health` which API process it reached, so that a
  reset can be told apart: from an API process the chaos killed, or not.
- `Chaos`: faults drawn from a seeded RNG (signals to workers, API processes and the
  supervisor; admin calls), each followed by a wait until the server converged again (its
  recovery time), or, now and then, by the next fault at once (overlapping faults).
- `/proc`: the supervisor's children, every process carrying its FERRYMAN_CHILD spec, fd counts,
  resident memory, the run directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from conftest import ROOT, Served, free_port, wait_for

CHILD_ENV = b"FERRYMAN_CHILD="
FAIL_PAUSE = 0.02  # seconds a client waits after a failed request before its next one


# -- /proc ---------------------------------------------------------------------------------------


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[1])


def child_spec(pid: int) -> dict[str, Any] | None:
    """The FERRYMAN_CHILD spec in a process's environment (None: not a ferryman child, or
    gone)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(CHILD_ENV):
            try:
                spec = json.loads(item[len(CHILD_ENV) :])
            except ValueError:
                return None
            return spec if isinstance(spec, dict) else None
    return None


def ferryman_processes(supervisor_pid: int) -> dict[int, dict[str, Any]]:
    """Every live process that is a child of the supervisor or carries a FERRYMAN_CHILD spec
    naming it (a child orphaned by a bad stop would no longer be its child): pid -> spec ({} for
    a child without one)."""
    out: dict[int, dict[str, Any]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        ppid = ppid_of(pid)
        if ppid is None:
            continue  # gone, or a zombie
        spec = child_spec(pid)
        if ppid == supervisor_pid or (spec and spec.get("supervisor_pid") == supervisor_pid):
            out[pid] = spec or {}
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


def run_dir_of(supervisor_pid: int) -> str | None:
    """The supervisor's run directory: the one in the temporary directory whose pid file names
    it (the supervisor makes it there unless $RUNTIME_DIRECTORY says otherwise)."""
    base = tempfile.gettempdir()
    for entry in os.listdir(base):
        if not entry.startswith("ferryman-"):
            continue
        path = os.path.join(base, entry)
        try:
            with open(os.path.join(path, "pid")) as f:
                if int(f.read().strip()) == supervisor_pid:
                    return path
        except (OSError, ValueError):
            continue
    return None


def expected_run_files(processes: dict[int, dict[str, Any]]) -> set[str]:
    """What a run directory holds: the control socket, the load board, the pid file, and the two
    sockets of each live API process."""
    names = {"control", "board", "pid"}
    for spec in processes.values():
        if spec.get("role") == "api":
            names |= {f"{spec['name']}.req", f"{spec['name']}.rep"}
    return names


# -- a server started outside the `serve` fixture (module-scoped fixtures) -------------------------


def launch(
    tmp: Path,
    apps: list[str],
    *args: str,
    api_servers: int = 1,
    workers: int | None = 1,
    env: dict[str, str] | None = None,
) -> Served:
    """`ferryman serve APPS ARGS` on free ports, as the `serve` fixture starts it; the caller
    kills it (Served.kill_all) and waits for it to be ready."""
    port, admin_port = free_port(), free_port()
    log = tmp / f"ferryman-{port}.log"
    cmd = [sys.executable, "-m", "ferryman", "serve", *apps, "--port", str(port)]
    cmd += ["--admin-port", str(admin_port), "--api-servers", str(api_servers)]
    cmd += ["--accelerator", "cpu"]
    if workers is not None:
        cmd += ["--workers-per-device", str(workers)]
    cmd += args
    full_env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=full_env, cwd=str(ROOT),
            start_new_session=True,
        )  # fmt: skip
    return Served(proc, port, admin_port, log)


def wait_ready(s: Served, timeout: float = 60.0) -> None:
    """Until the admin port says ready (it needs no token for that)."""

    def ready() -> bool:
        if s.proc.poll() is not None:
            raise AssertionError(f"ferryman exited with {s.proc.returncode}:\n{s.log()}")
        try:
            return httpx.get(s.admin + "/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout)


# -- the admin API -------------------------------------------------------------------------------


class Admin:
    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.errors: list[str] = []  # admin calls that failed or answered 5xx

    def call(self, method: str, path: str, timeout: float = 10.0, **kw: Any) -> httpx.Response:
        try:
            r = httpx.request(method, self.url + path, timeout=timeout, headers=self.headers, **kw)
        except httpx.HTTPError as e:
            self.errors.append(f"{method} {path}: {e!r}")
            raise
        if r.status_code >= 500:
            self.errors.append(f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r

    def status(self) -> dict[str, Any]:
        r = self.call("GET", "/v1/status")
        r.raise_for_status()
        st: dict[str, Any] = r.json()
        return st


def status_pids(st: dict[str, Any]) -> set[int]:
    """Every pid status shows: serving ones and the others of each slot (starting, draining)."""
    pids = set()
    for row in st["api_servers"] + st["workers"]:
        if row["pid"]:
            pids.add(row["pid"])
        pids.update(o["pid"] for o in row.get("others", []))
    return pids


# -- the load --------------------------------------------------------------------------------------


class Reset(Exception):
    """The connection ended without an answer."""


@dataclass
class Failure:
    t_sent: float
    t_done: float
    model: str
    cause: str  # "503 worker_died", "504 timeout", "reset", "hung", "wrong", ...
    api_pid: int | None  # the API process the connection reached (None: not known yet)
    conn_opened: float
    detail: str = ""


@dataclass
class LoadStats:
    sent: int = 0
    right: int = 0
    failures: list[Failure] = field(default_factory=list)
    latency_max: float = 0.0

    def by_cause(self) -> dict[str, int]:
        return dict(Counter(f.cause for f in self.failures).most_common())


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.opened = time.monotonic()
        self.api_pid: int | None = None

    async def request(
        self, method: str, path: str, body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: ferryman\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        try:
            self.writer.write(head.encode() + body)
            await self.writer.drain()
            raw = await self.reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            raise Reset(repr(e)) from None
        return status, headers, data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Load:
    """`clients` clients, each sending requests back to back on a keep-alive connection to one of
    `routes` (model name -> path), each with a unique id whose answer is checked."""

    def __init__(
        self,
        port: int,
        routes: dict[str, str],
        clients: int,
        seed: int,
        hang_limit: float,
        sleep_share: float = 0.05,
        pause: float = 0.0,
    ) -> None:
        self.port = port
        self.routes = routes
        self.clients = clients
        self.seed = seed
        self.hang_limit = hang_limit
        self.sleep_share = sleep_share
        self.pause = pause  # seconds between a client's requests (0: back to back)
        self.stats = LoadStats()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.hang_limit + 10)

    def snapshot(self) -> tuple[int, int, int]:
        with self.lock:
            return self.stats.sent, self.stats.right, len(self.stats.failures)

    def wait_sent(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.snapshot()[0] < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"the load sent fewer than {n} requests in {timeout} s")
            time.sleep(0.05)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.clients)))

    async def _connect(self) -> Conn:
        """A connection, and which API process it reached (a draining one says `connection:
        close`: then another connection)."""
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            conn = Conn(reader, writer)
            status, headers, data = await conn.request("GET", "/health")
            if status == 200:
                conn.api_pid = json.loads(data)["pid"]
            if headers.get("connection", "").lower() != "close":
                return conn
            conn.close()

    async def _client(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        models = sorted(self.routes)
        conn: Conn | None = None
        n = 0
        while not self._stop.is_set():
            n += 1
            model = models[n % len(models)]
            rid = f"{self.seed}-{i}-{n}"
            req: dict[str, Any] = {"id": rid, "n": n}
            if rng.random() < self.sleep_share:
                req["sleep"] = round(rng.uniform(0.05, 0.2), 3)
            body = json.dumps(req).encode()
            t0 = time.monotonic()
            opened = t0
            api_pid = None
            try:
                if conn is None:
                    conn = await asyncio.wait_for(self._connect(), self.hang_limit)
                opened, api_pid = conn.opened, conn.api_pid
                status, headers, data = await asyncio.wait_for(
                    conn.request("POST", self.routes[model], body), self.hang_limit
                )
            except TimeoutError:
                self._record(t0, model, "hung", api_pid, opened, "no answer within the hang limit")
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(FAIL_PAUSE)
                continue
            except Reset as e:
                self._record(t0, model, "reset", api_pid, opened, str(e))
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(FAIL_PAUSE)
                continue
            except ConnectionRefusedError as e:
                self._record(t0, model, "refused", api_pid, opened, repr(e))
                conn = None
                await asyncio.sleep(FAIL_PAUSE)
                continue
            except (OSError, ValueError, KeyError) as e:
                self._record(t0, model, "client_error", api_pid, opened, repr(e))
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(FAIL_PAUSE)
                continue
            cause, detail = judge(status, data, rid, n, model)
            self._record(t0, model, cause, api_pid, opened, detail)
            if headers.get("connection", "").lower() == "close":
                conn.close()
                conn = None
            if cause != "ok":
                await asyncio.sleep(FAIL_PAUSE)  # as a client told Retry-After would, briefly
            elif self.pause:
                await asyncio.sleep(self.pause)
        if conn is not None:
            conn.close()

    def _record(
        self, t0: float, model: str, cause: str, api_pid: int | None, opened: float, detail: str
    ) -> None:
        t1 = time.monotonic()
        with self.lock:
            s = self.stats
            s.sent += 1
            s.latency_max = max(s.latency_max, t1 - t0)
            if cause == "ok":
                s.right += 1
            else:
                s.failures.append(Failure(t0, t1, model, cause, api_pid, opened, detail))


def judge(status: int, data: bytes, rid: str, n: int, model: str) -> tuple[str, str]:
    """("ok", "") for the right answer; else a cause: "wrong" for a 200 that is not this
    request's answer, "<status> <type>" for a JSON error, "bad_error" for any other answer."""
    try:
        body = json.loads(data)
    except ValueError:
        return ("wrong" if status == 200 else "bad_error"), f"{status} {data[:200]!r}"
    if status == 200:
        good = (
            isinstance(body, dict)
            and body.get("id") == rid
            and body.get("n2") == 2 * n
            and body.get("model") == model
        )
        return ("ok", "") if good else ("wrong", f"sent {rid} to {model}, got {body}")
    err = body.get("error") if isinstance(body, dict) else None
    if (
        isinstance(err, dict)
        and isinstance(err.get("type"), str)
        and isinstance(err.get("message"), str)
    ):
        return f"{status} {err['type']}", err["message"]
    return "bad_error", f"{status} {data[:200]!r}"


# -- the chaos -------------------------------------------------------------------------------------

FAULTS: dict[str, float] = {
    "worker_kill": 3.0,  # SIGKILL a ready worker
    "worker_stop_cont": 1.0,  # SIGSTOP, SIGCONT well within heartbeat_timeout
    "worker_stop_hang": 1.0,  # SIGSTOP and leave it: the supervisor must kill it (hang)
    "api_kill": 1.5,
    "api_stop_cont": 0.5,
    "api_stop_hang": 0.5,
    "sighup": 1.0,  # rolling reload of everything
    "scale": 2.0,  # PUT /v1/models/NAME/workers
    "worker_restart": 1.0,  # POST /v1/models/NAME/workers/ID/restart
    "model_reload": 1.0,  # POST /v1/models/NAME/reload
}


@dataclass
class Fault:
    kind: str
    t: float  # time.monotonic() when injected
    target: str
    overlapped: bool = False  # the next fault followed at once: no recovery time of its own
    recovery_s: float | None = None  # until the server converged again (None: see overlapped)
    answer: int | None = None  # the admin API's status code, for admin faults


class Chaos:
    """Faults from a seeded RNG against a running server, until `duration` seconds passed."""

    def __init__(
        self,
        admin: Admin,
        supervisor_pid: int,
        targets: dict[str, int],
        api_servers: int,
        seed: int,
        heartbeat_timeout: float,
        name: str = "",
        max_scale: int = 4,
        overlap: float = 0.3,
        recovery_cap: float = 45.0,
    ) -> None:
        self.admin = admin
        self.sup = supervisor_pid
        self.configured = dict(targets)
        self.targets = dict(targets)  # model -> the worker count asked for last
        self.api_servers = api_servers
        self.rng = random.Random(f"{seed}:{name}")  # one stream per test, from one seed
        self.heartbeat_timeout = heartbeat_timeout
        self.max_scale = max_scale
        self.overlap = overlap
        self.recovery_cap = recovery_cap
        self.faults: list[Fault] = []
        self.gone: set[int] = set()  # pids we SIGKILLed or left stopped: must be replaced
        self.hit: dict[int, tuple[str, float]] = {}  # every pid we signalled -> (role, when)
        self.stopped: dict[int, float | None] = {}  # pid -> when to SIGCONT (None: never)
        self.seen_failed: list[str] = []  # slots seen `failed`: a kill of a healthy worker
        self.seen_backoff: list[str] = []

    # -- what runs ---------------------------------------------------------------------------

    def live(self, st: dict[str, Any], role: str) -> list[dict[str, Any]]:
        """Ready slots whose process we have not already hit."""
        rows = st["api_servers"] if role == "api" else st["workers"]
        return [r for r in rows if r["state"] == "ready" and r["pid"] and r["pid"] not in self.hit]

    def converged(self, st: dict[str, Any]) -> bool:
        """Back to the target: every slot of every pool ready with one process of its current
        generation, nothing starting or draining, no operation under way, ready, and what runs
        is exactly what status shows (nothing we stopped or killed among it)."""
        self._watch(st)
        sup = st["supervisor"]
        if sup["operation"] is not None or not sup["ready"]:
            return False
        if len(st["api_servers"]) != self.api_servers:
            return False
        models = {m["name"]: m for m in st["models"]}
        if set(models) != set(self.targets):
            return False
        rows = list(st["api_servers"])
        for name, want in self.targets.items():
            if len(models[name]["workers"]) != want:
                return False
            rows += models[name]["workers"]
        if any(r["state"] != "ready" or not r["pid"] or r.get("others") for r in rows):
            return False
        pids = {r["pid"] for r in rows}
        if pids & (self.gone | set(self.stopped)):
            return False
        return set(ferryman_processes(self.sup)) == pids

    def _watch(self, st: dict[str, Any]) -> None:
        for r in st["workers"] + st["api_servers"]:
            where = f"{r['role']} {r.get('model') or ''} {r['id']}: {r.get('last_exit')}"
            if r["state"] == "failed" and where not in self.seen_failed:
                self.seen_failed.append(where)
            if r["state"] == "backoff" and where not in self.seen_backoff:
                self.seen_backoff.append(where)

    def wait_converged(self, cap: float) -> float | None:
        """Seconds until converged (None: not within `cap`); SIGCONTs due are sent meanwhile."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < cap:
            self._send_conts()
            if not any(due is not None for due in self.stopped.values()):
                try:
                    if self.converged(self.admin.status()):
                        return time.monotonic() - t0
                except httpx.HTTPError:
                    pass  # recorded in admin.errors
            time.sleep(0.1)
        return None

    def _send_conts(self, all_now: bool = False) -> None:
        now = time.monotonic()
        for pid, due in list(self.stopped.items()):
            if due is not None and (all_now or now >= due):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                del self.stopped[pid]

    # -- faults ------------------------------------------------------------------------------

    def run(self, duration: float, on_fault: Callable[[Fault], None] = lambda f: None) -> None:
        end = time.monotonic() + duration
        kinds = list(FAULTS)
        weights = [FAULTS[k] for k in kinds]
        while time.monotonic() < end:
            kind = self.rng.choices(kinds, weights)[0]
            fault = self.inject(kind)
            if fault is None:
                continue
            self.faults.append(fault)
            on_fault(fault)
            if self.rng.random() < self.overlap:
                fault.overlapped = True
                self._pause(self.rng.uniform(0.1, 0.6))
                continue
            fault.recovery_s = self.wait_converged(self.recovery_cap)
            self._pause(self.rng.uniform(0.2, 1.0))

    def _pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._send_conts()
            time.sleep(0.05)

    def inject(self, kind: str) -> Fault | None:
        st = self.admin.status()
        now = time.monotonic()
        if kind.startswith(("worker_kill", "worker_stop", "api_")):
            role = "api" if kind.startswith("api") else "worker"
            rows = self.live(st, role)
            if not rows:
                return None
            row = self.rng.choice(rows)
            pid = row["pid"]
            what = f"{role} {row.get('model') or ''} {row['id']} pid {pid}".replace("  ", " ")
            self.hit[pid] = (role, now)
            if kind.endswith("_kill"):
                self.gone.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            else:
                if kind.endswith("_hang"):
                    self.gone.add(pid)
                    self.stopped[pid] = None
                else:
                    self.stopped[pid] = now + self.rng.uniform(0.2, 0.4 * self.heartbeat_timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            return Fault(kind, now, what)
        if kind == "sighup":
            os.kill(self.sup, signal.SIGHUP)
            return Fault(kind, now, "supervisor")
        model = self.rng.choice(sorted(self.targets))
        if kind == "scale":
            choices = [n for n in range(1, self.max_scale + 1) if n != self.targets[model]]
            count = self.rng.choice(choices)
            r = self.admin.call("PUT", f"/v1/models/{model}/workers", json={"count": count})
            if r.status_code == 202:
                self.targets[model] = count
            return Fault(kind, now, f"{model} -> {count}", answer=r.status_code)
        if kind == "worker_restart":
            ids = [w["id"] for w in st["workers"] if w["model"] == model]
            wid = self.rng.choice(ids)
            r = self.admin.call("POST", f"/v1/models/{model}/workers/{wid}/restart")
            return Fault(kind, now, f"{model} worker {wid}", answer=r.status_code)
        if kind == "model_reload":
            r = self.admin.call("POST", f"/v1/models/{model}/reload?wait=false")
            return Fault(kind, now, model, answer=r.status_code)
        raise ValueError(kind)

    def finish(self, cap: float = 90.0) -> float | None:
        """The faults stopped: continue what we stopped, scale back to the configured counts,
        and wait until the server converged (seconds, or None)."""
        self._send_conts(all_now=True)
        for model, want in self.configured.items():
            if self.targets[model] != want:
                r = self.admin.call("PUT", f"/v1/models/{model}/workers", json={"count": want})
                if r.status_code == 202:
                    self.targets[model] = want
        return self.wait_converged(cap)

    # -- what happened ---------------------------------------------------------------------------

    def _dead_by_us(self, pid: int, role: str) -> bool:
        """We killed it, or stopped it and it is gone (the supervisor killed it as hung)."""
        if self.hit.get(pid, ("", 0.0))[0] != role:
            return False
        return pid in self.gone or ppid_of(pid) is None

    def explains_worker_died(self, message: str) -> bool:
        """A `worker_died` 503 names the worker's pid: one we killed, or stopped and it was
        killed as hung."""
        m = re.search(r"\(pid (\d+)\)", message)
        return m is not None and self._dead_by_us(int(m.group(1)), "worker")

    def explains_reset(self, f: Failure) -> bool:
        """A reset comes from an API process we killed (or stopped, and the supervisor killed):
        the one the connection reached, or, when the connection ended before it could tell,
        one hit while the connection was open."""
        if f.api_pid is not None:
            return self._dead_by_us(f.api_pid, "api")
        return any(
            role == "api" and f.conn_opened - 1.0 <= t <= f.t_done and self._dead_by_us(pid, role)
            for pid, (role, t) in self.hit.items()
        )

    def recovery_by_kind(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for kind in FAULTS:
            mine = [f for f in self.faults if f.kind == kind]
            if not mine:
                continue
            times = [f.recovery_s for f in mine if f.recovery_s is not None]
            out[kind] = {
                "injected": len(mine),
                "overlapped": sum(f.overlapped for f in mine),
                "not_recovered": sum(1 for f in mine if not f.overlapped and f.recovery_s is None),
                "recovery_s": summary(times),
            }
        return out


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }
