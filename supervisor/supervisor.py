"""The supervisor: keeps the API processes and every model's workers as the desired state says.

gunicorn's arbiter is the model: signal handlers, admin calls and children's messages only change
what should run (pools.py) or record what happened; one reconcile step (reconcile.py), run after
every event and on every tick, starts, drains or kills children to close the gap. One asyncio
loop does everything; it imports no user code and no torch, and nothing a child does can take it
down: every handler is guarded. The supervisor is built in layers (see state.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import zmq

from ferryman import protocol as p
from ferryman._version import __version__
from ferryman.board import Board
from ferryman.logs import kv
from ferryman.options import (
    OptionError,
)
from ferryman.supervisor import listen, rundir
from ferryman.supervisor.children import RSS_CHECK
from ferryman.supervisor.operations import Operations, Outcome
from ferryman.supervisor.reconcile import Drain, Start, plan
from ferryman.supervisor.registry import Role
from ferryman.supervisor.state import (
    API_POOL,
    EXIT_APP,
    EXIT_BIND,
    EXIT_CONFIG,
    EXIT_OK,
    Stopping,
    log,
)
from ferryman.zmqio import Reader

TICK = 0.1

__all__ = [
    "API_POOL",
    "EXIT_APP",
    "EXIT_BIND",
    "EXIT_CONFIG",
    "EXIT_OK",
    "Outcome",
    "Stopping",
    "Supervisor",
]


class Supervisor(Operations):
    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._done = self.loop.create_future()
        if not self.config.models:
            log.error("no model to serve: give an APP, or [[models]] in the --config file")
            return EXIT_CONFIG
        try:
            for spec in self.config.models:
                self.models[spec.name] = await self._new_pool(spec)
                self.sources[spec.name] = "config"
        except OptionError as e:
            log.error(str(e))
            return EXIT_CONFIG
        self.run_dir = rundir.create()
        try:
            return await self._run()
        finally:
            self._cleanup()

    async def _run(self) -> int:
        o = self.server
        self.board = Board(os.path.join(self.run_dir, "board"), create=True)
        try:
            self.listeners = listen.Listeners.open(o.host, o.port)
        except OSError as e:
            log.error(f"cannot listen on {o.host}:{o.port}: {e.strerror}")
            return EXIT_BIND
        self.listen_address = self.listeners.address
        if o.pid_file:
            try:
                with open(o.pid_file, "w") as f:
                    f.write(f"{os.getpid()}\n")
            except OSError as e:
                log.error(f"--pid-file {o.pid_file}: {e.strerror}")
                return EXIT_CONFIG
        self.ctx = zmq.Context()
        self.control_address = f"ipc://{self.run_dir}/control"
        self.control = p.make_socket(self.ctx, zmq.ROUTER, bind=self.control_address)
        self.control_reader = Reader(self.loop, self.control, self._on_control)
        self._install_signals()
        if o.admin_port:
            from ferryman.control.admin import start_admin

            try:
                self.admin = await start_admin(self)
            except OSError as e:
                log.error(
                    f"cannot listen on the admin port {o.admin_host}:{o.admin_port}: {e.strerror}"
                )
                return EXIT_BIND
            except OptionError as e:
                log.error(str(e))
                return EXIT_CONFIG
        log.info(
            "starting",
            extra=kv(
                version=__version__,
                listen=self.listen_address,
                models=",".join(self.models),
                api_servers=o.api_servers,
            ),
        )
        for pool in self.models.values():
            self._log_model(pool, "serving")
        for _ in range(o.api_servers):
            self.api_pool.add_slot(self.next_gen())
        self.reconcile()
        ticker = asyncio.ensure_future(self._tick())
        try:
            assert self._done is not None
            return await self._done
        finally:
            ticker.cancel()
            if self.admin is not None:
                await self.admin.stop()

    def _cleanup(self) -> None:
        for child in self.registry:
            self._signal(child, signal.SIGKILL)
        if getattr(self, "control", None) is not None:
            self.control_reader.close()
            self.control.close(0)
            self.ctx.term()
        if self.listeners is not None:
            self.listeners.close()
        if self.server.pid_file:
            rundir.remove_files(self.server.pid_file)
        for pool in self.models.values():
            if pool.model is not None and pool.model.instance_file:
                rundir.remove_files(pool.model.instance_file)
        if self.board is not None:
            self.board.close()
        if self.run_dir:
            rundir.remove(self.run_dir)
        self.notifier.close()

    def _install_signals(self) -> None:
        add = self.loop.add_signal_handler
        add(signal.SIGCHLD, self._guarded(self._reap))
        add(signal.SIGTERM, self._guarded(self._on_stop_signal), signal.SIGTERM)
        add(signal.SIGINT, self._guarded(self._on_stop_signal), signal.SIGINT)
        add(signal.SIGHUP, self._guarded(self._on_sighup))
        add(signal.SIGTTIN, self._guarded(self._on_ttin_ttou), +1)
        add(signal.SIGTTOU, self._guarded(self._on_ttin_ttou), -1)

    def _on_stop_signal(self, sig: int) -> None:
        if self.stopping:
            if sig == signal.SIGINT:
                log.warning("second SIGINT: stopping at once")
                self._finish(1, force=True)
            return
        log.info(f"{signal.Signals(sig).name}: graceful stop")
        self.background(self.shutdown(EXIT_OK), "stop")

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reload")
        self.background(self.reload(), "reload")

    def _on_ttin_ttou(self, delta: int) -> None:
        name = "SIGTTIN" if delta > 0 else "SIGTTOU"
        if len(self.models) != 1:
            log.warning(f"{name}: {len(self.models)} models; scale one with the admin API")
            return
        pool = next(iter(self.models.values()))
        assert pool.model is not None
        n = len(pool.slots) + delta
        if n < 1:
            log.warning(f"{name}: not scaling workers below one")
            return
        if n > pool.model.options.max_workers:
            log.warning(f"{name}: not scaling above max_workers ({pool.model.options.max_workers})")
            return
        log.info(f"{name}: scaling workers to {n}", extra=kv(model=pool.name))
        self.scale(pool.name, n)

    def reconcile(self) -> None:
        self._poked = False
        if self.stopping:
            return
        now = time.monotonic()
        for pool in self.pools():
            for action in plan(pool, self.registry.of(pool.name), now):
                if isinstance(action, Start):
                    self._start(pool, action.slot)
                elif isinstance(action, Drain):
                    self.terminate(action.child, action.why)
        for name in [n for n, pool in self.models.items() if pool.removing]:
            if not self.registry.of(name):
                del self.models[name]
                self.sources.pop(name, None)
                log.info(f"model {name}: removed", extra=kv(model=name))
        if self.listeners is not None:
            # The socket of an API slot scaled away goes once its last process has exited.
            used = {c.slot for c in self.registry.role(Role.API)}
            for index in list(self.listeners.by_slot):
                if index not in self.api_pool.slots and index not in used:
                    self.listeners.release(index)
        self._settle_operations()
        self._check_ready()
        self._changed.set()

    async def _tick(self) -> None:
        next_wd = 0.0
        last_status = ""
        while True:
            try:
                now = time.monotonic()
                for child in self.registry:
                    self._check_child(child, now)
                if now >= self._next_rss_check:
                    self._next_rss_check = now + RSS_CHECK
                    self._check_memory()
                wd = self.notifier.watchdog_interval
                if wd is not None and now >= next_wd:
                    self.notifier.watchdog()
                    next_wd = now + wd
                if self.notifier.enabled and self.ready_announced:
                    line = self.status_line()
                    if line != last_status:
                        self.notifier.status(line)
                        last_status = line
                self.reconcile()
            except Exception as e:  # the tick is what notices hangs: it must go on
                log.error(f"tick failed: {e!r}", exc_info=e)
            await asyncio.sleep(TICK)
