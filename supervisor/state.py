"""The supervisor's state (supervisor process): what should run, what runs, and a few helpers.

The supervisor is one object built in layers, each a module with one job: this state; readiness
(readiness.py); what children say over the control link (messages.py); children's lives: spawn,
health checks, exits and the restart policy (children.py); operations: scale, restart, reload,
models added and removed, stop (operations.py); and the loop that runs it all (supervisor.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from ferryman.board import CELLS, ROWS, Allocator, Board
from ferryman.config import model_defaults
from ferryman.logs import kv
from ferryman.options import Config, OptionError, ServerOptions
from ferryman.supervisor import listen
from ferryman.supervisor.metric_store import MetricStore
from ferryman.supervisor.policy import RestartPolicy
from ferryman.supervisor.pools import CPU, Pool
from ferryman.supervisor.registry import Child, Registry, Role
from ferryman.supervisor.sdnotify import Notifier
from ferryman.zmqio import Reader

log = logging.getLogger("ferryman.supervisor")

API_POOL = "api"
RESTART_REASONS = ("crash", "exit", "hang", "startup_timeout")
# 1: a port cannot be bound; 2: a bad option (as for a bad flag); 3: the app cannot start.
EXIT_OK, EXIT_BIND, EXIT_CONFIG, EXIT_APP = 0, 1, 2, 3


class Stopping(Exception):
    """The server is stopping: no operation is taken (the admin API answers 409)."""


class State:
    # Set up by Supervisor.run, before any event can arrive.
    loop: asyncio.AbstractEventLoop
    ctx: zmq.Context[zmq.Socket[bytes]]
    control: zmq.Socket[bytes]
    control_reader: Reader
    control_address: str

    def __init__(
        self,
        config: Config,
        config_file: str | None = None,
        flags: dict[str, Any] | None = None,
        apps: list[str] | None = None,
        launch: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.server: ServerOptions = config.server
        self.config_file = config_file
        self.flags = dict(flags or {})
        self.apps = list(apps or [])
        self.launch = launch
        self.defaults = model_defaults(config_file, self.flags)
        self.registry = Registry()
        self.api_pool = Pool(Role.API, API_POOL, RestartPolicy(), [CPU])
        self.models: dict[str, Pool] = {}
        self.sources: dict[str, str] = {}  # model name -> "config" or "runtime"
        self._gens = itertools.count(1)
        self._spawns = itertools.count(1)
        self.rows = Allocator(ROWS)
        self.cells = Allocator(CELLS)
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.stopping: bool = False
        self.exit_code = EXIT_OK
        self.ready_announced: bool = False
        self.reloads: int = 0
        self.reloads_pending: int = 0
        self.operations: dict[str, set[str]] = {}  # what is under way -> the pools it waits for
        self.restarts: dict[tuple[str, str, str], int] = {}
        self.retired_cpu: dict[tuple[str, str, str], float] = {}
        self._reported: set[str] = set()
        self._changed = asyncio.Event()
        self._poked = False
        self._done: asyncio.Future[int] | None = None
        self._next_rss_check: float = 0.0
        self.listeners: listen.Listeners | None = None
        self.listen_address = ""
        self.run_dir = ""
        self.admin: Any = None
        self.board: Board | None = None
        self.notifier = Notifier()
        self.metrics = MetricStore()

    def next_gen(self) -> int:
        return next(self._gens)

    def pools(self) -> list[Pool]:
        return [self.api_pool, *self.models.values()]

    def pool_of(self, child: Child) -> Pool | None:
        return self.api_pool if child.role == Role.API else self.models.get(child.pool)

    def poke(self) -> None:
        """Something changed: reconcile soon (once, however many events arrive meanwhile)."""
        self._changed.set()
        if not self._poked:
            self._poked = True
            self.loop.call_soon(self._guarded(self.reconcile))

    def _guarded(self, fn: Callable[..., Any]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as e:  # never let a handler take the supervisor down
                log.error(f"{getattr(fn, '__name__', fn)} failed: {e!r}", exc_info=e)

        return call

    def background(self, coro: Any, what: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)

        def done(t: asyncio.Task[Any]) -> None:
            if t.cancelled():
                return
            exc = t.exception()
            if isinstance(exc, Stopping | OptionError):
                log.warning(f"{what} not done: {exc}")
            elif exc is not None:
                log.error(f"{what} failed: {exc!r}", exc_info=exc)

        task.add_done_callback(done)
        return task

    def _write_block(self, text: str) -> None:
        """Multi-line text (a traceback) kept readable on stderr, right after its log line."""
        if self.server.log_format == "json":
            log.error("details", extra=kv(text=text))
            return
        try:
            sys.stderr.write("    " + text.replace("\n", "\n    ") + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    async def shutdown(self, code: int = EXIT_OK) -> None:
        raise NotImplementedError  # operations.py

    def reconcile(self) -> None:
        raise NotImplementedError  # supervisor.py


def model_of(child: Child) -> str:
    """The model label of a child: its model's name, or "" for an API process."""
    return child.pool if child.role == Role.WORKER else ""


def model_label(pool: Pool) -> str:
    return pool.name if pool.role == Role.WORKER else ""


def pool_label(pool: Pool) -> str:
    return f"model {pool.name}" if pool.role == Role.WORKER else "API processes"
