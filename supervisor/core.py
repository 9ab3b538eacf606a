"""The supervisor: keeps API processes and workers alive, and acts on signals and admin requests.

One asyncio loop does everything. Signal handlers only schedule work on it; children are reaped
with waitpid on SIGCHLD; children report over a ZeroMQ ROUTER (hello, ready, heartbeats, fatal
errors). It imports no user code and no torch, and nothing a child does can take it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import zmq
from ferryman.supervisor import devices as devmod
from ferryman.supervisor import listen, spawn
from ferryman.supervisor.sdnotify import Notifier
from ferryman.supervisor.table import API, WORKER, Child, RestartPolicy, Slot, describe_exit

from ferryman import protocol as p
from ferryman._version import __version__
from ferryman.logs import kv
from ferryman.options import OPTS_BY_NAME, OptionError, Options, build
from ferryman.zmqio import Reader

log = logging.getLogger("ferryman.supervisor")

TICK = 0.1
# 1: the port cannot be bound; 2: a bad option (as for a bad flag); 3: the app cannot start.
EXIT_OK, EXIT_BIND, EXIT_CONFIG, EXIT_APP = 0, 1, 2, 3


class Busy(Exception):
    """Another reload or scale is running (the admin API answers 409)."""


class Supervisor:
    def __init__(
        self, opts: Options, config_file: str | None = None, flags: dict[str, Any] | None = None
    ) -> None:
        self.opts = opts
        self.config_file = config_file
        self.flags = dict(flags or {})
        self.policy = self._policy()
        self.api_slots: list[Slot] = []
        self.worker_slots: list[Slot] = []
        self.children: dict[int, Child] = {}  # pid -> child, every live child
        self.by_name: dict[str, Child] = {}
        self.home: dict[Child, Slot] = {}
        self._gen = itertools.count(1)
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.stopping = False
        self.exit_code = EXIT_OK
        self.ready_announced = False
        self.reloads = 0
        self.restarts: dict[tuple[str, str], int] = {}
        self.op_lock = asyncio.Lock()
        self.op_name: str | None = None
        self._changed_ev = asyncio.Event()
        self._reported: set[str] = set()
        self._done: asyncio.Future[int] | None = None
        self.accelerator = "cpu"
        self.devices: list[devmod.Device] = []
        self.listen_sock: Any = None
        self.listen_address = ""
        self.run_dir = ""
        self.metrics_dir = ""
        self.admin: Any = None
        self.configured_workers = 0
        self.notifier = Notifier()

    def _policy(self) -> RestartPolicy:
        o = self.opts
        return RestartPolicy(o.max_restarts, o.restart_window, 0.1, o.backoff_max)

    # -- life ------------------------------------------------------------------------------------

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._done = self.loop.create_future()
        try:
            self.accelerator, self.devices = devmod.resolve(
                self.opts.accelerator, self.opts.devices
            )
        except OptionError as e:
            log.error(str(e))
            return EXIT_CONFIG
        self.run_dir = tempfile.mkdtemp(prefix="ferryman-")  # mode 0700
        try:
            return await self._run()
        finally:
            self._cleanup()

    async def _run(self) -> int:
        o = self.opts
        self.metrics_dir = os.path.join(self.run_dir, "metrics")
        os.mkdir(self.metrics_dir)
        self.listen_sock = listen.from_systemd()
        if self.listen_sock is None:
            try:
                self.listen_sock = listen.bind(o.host, o.port)
            except OSError as e:
                log.error(f"cannot listen on {o.host}:{o.port}: {e.strerror}")
                return EXIT_BIND
        else:
            log.info("using the socket systemd passed (socket activation)")
        self.listen_address = listen.describe(self.listen_sock)
        if o.pid_file:
            with open(o.pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.control = self.ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.setsockopt(zmq.SNDHWM, 0)
        self.control_address = f"ipc://{self.run_dir}/control"
        self.control.bind(self.control_address)
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
                app=o.app,
                listen=self.listen_address,
                accelerator=self.accelerator,
                devices=",".join(d.name for d in self.devices),
                workers=len(self.devices) * o.workers_per_device,
                api_servers=o.api_servers,
            ),
        )
        self.configured_workers = len(self.devices) * o.workers_per_device
        for i, dev in enumerate(self._layout(o.workers_per_device)):
            self.worker_slots.append(Slot(WORKER, i, dev))
        for i in range(o.api_servers):
            self.api_slots.append(Slot(API, i, devmod.Device("cpu", None, "cpu")))
        for slot in self.worker_slots + self.api_slots:
            self._start(slot)
        ticker = asyncio.ensure_future(self._tick())
        try:
            assert self._done is not None
            return await self._done
        finally:
            ticker.cancel()
            if self.admin is not None:
                await self.admin.stop()

    def _layout(self, per_device: int) -> list[devmod.Device]:
        return [d for d in self.devices for _ in range(per_device)]

    def _cleanup(self) -> None:
        for child in list(self.children.values()):
            self._signal(child, signal.SIGKILL)
        if getattr(self, "control", None) is not None:
            self.control_reader.close()
            self.control.close(0)
            self.ctx.term()
        if self.listen_sock is not None:
            self.listen_sock.close()
        if self.opts.pid_file:
            with contextlib.suppress(OSError):
                os.unlink(self.opts.pid_file)
        if self.opts.instance_file:
            with contextlib.suppress(OSError):
                os.unlink(self.opts.instance_file)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.notifier.close()

    def _install_signals(self) -> None:
        add = self.loop.add_signal_handler
        add(signal.SIGCHLD, self._reap)
        add(signal.SIGTERM, self._on_stop_signal, signal.SIGTERM)
        add(signal.SIGINT, self._on_stop_signal, signal.SIGINT)
        # A SIGHUP during another operation waits its turn: systemd expects RELOADING=1 and
        # READY=1 for every reload it asked for.
        add(signal.SIGHUP, lambda: self._background(self.reload(queue=True), "reload"))
        add(signal.SIGTTIN, lambda: self._background(self._scale_by(+1), "scale"))
        add(signal.SIGTTOU, lambda: self._background(self._scale_by(-1), "scale"))

    def _background(self, coro: Any, what: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)

        def done(t: asyncio.Task[Any]) -> None:
            if t.cancelled():
                return
            exc = t.exception()
            if isinstance(exc, Busy):
                log.warning(f"{what} ignored: {exc}")
            elif exc is not None:
                log.error(f"{what} failed: {exc!r}", exc_info=exc)

        task.add_done_callback(done)
        return task

    def _on_stop_signal(self, sig: int) -> None:
        if self.stopping:
            if sig == signal.SIGINT:
                log.warning("second SIGINT: stopping at once")
                self._finish(1, force=True)
            return
        log.info(f"{signal.Signals(sig).name}: graceful stop")
        self._background(self.shutdown(EXIT_OK), "stop")

    # -- children --------------------------------------------------------------------------------

    def _start(self, slot: Slot, attach: bool = True) -> Child | None:
        """Spawn a child for `slot`. attach=False: a replacement that takes over once ready."""
        slot.start_timer = None
        if self.stopping or slot.retired:
            return None
        gen = next(self._gen)
        name = f"{'a' if slot.role == API else 'w'}{slot.index}.{gen}"
        o = self.opts
        spec = p.ChildSpec(
            role=slot.role,
            slot=slot.index,
            name=name,
            supervisor_pid=os.getpid(),
            control=self.control_address,
            run_dir=self.run_dir,
            options=o.to_dict(),
            device=slot.device.local,
            physical_device=slot.device.name,
            devices=[d.name for d in self.devices],
        )
        fds: tuple[int, ...] = ()
        if slot.role == API:
            spec.listen_fd = self.listen_sock.fileno()
            spec.endpoint = p.ApiEndpoint(
                name, f"ipc://{self.run_dir}/{name}.req", f"ipc://{self.run_dir}/{name}.rep"
            )
            spec.expect_workers = min(self.ready_workers(), 8)
            fds = (spec.listen_fd,)
        else:
            spec.apis = self._endpoints()
        try:
            popen = spawn.start(spec, spawn.child_env(spec, slot.device, self.metrics_dir), fds)
        except OSError as e:
            log.error(f"cannot start {slot.role} {slot.index}: {e}")
            self._schedule(slot, self.opts.backoff_max, "backoff")
            return None
        child = Child(slot.role, slot.index, name, popen)
        spawn.StderrRelay(self.loop, popen, child.tail)
        self.children[popen.pid] = child
        self.by_name[name] = child
        self.home[child] = slot
        if attach:
            slot.child = child
            slot.state = "starting"
        log.info(
            f"started {slot.role} {slot.index}",
            extra=kv(child_pid=popen.pid, device=slot.device.name, name=name),
        )
        self._changed()
        return child

    def _schedule(self, slot: Slot, delay: float, state: str) -> None:
        slot.state = state
        slot.next_start = time.monotonic() + delay
        if slot.start_timer is not None:
            slot.start_timer.cancel()
        slot.start_timer = self.loop.call_later(delay, self._start, slot)

    def _signal(self, child: Child, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)

    def terminate(self, child: Child, reason: str, timeout: float | None = None) -> None:
        """SIGTERM (drain and exit), then SIGKILL of its process group after graceful_timeout."""
        if child.stop_reason is None or reason == "shutdown":
            child.stop_reason = reason
        if child.state != "stopping":
            child.state = "draining"
        self._signal(child, signal.SIGTERM)
        if child.kill_timer is None:
            grace = self.opts.graceful_timeout if timeout is None else timeout
            child.kill_timer = self.loop.call_later(grace, self._kill_late, child)

    def _kill_late(self, child: Child) -> None:
        if child.pid in self.children:
            log.warning(
                f"{child.role} {child.slot} did not stop in time: SIGKILL",
                extra=kv(child_pid=child.pid),
            )
            self._signal(child, signal.SIGKILL)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            child = self.children.pop(pid, None)
            if child is not None:
                child.popen.returncode = code
                self._on_exit(child, code)

    def _on_exit(self, child: Child, code: int) -> None:
        self.by_name.pop(child.name, None)
        slot = self.home.pop(child, None)
        if child.kill_timer is not None:
            child.kill_timer.cancel()
        child.state = "stopped"
        self._mark_dead(child.pid)
        how = describe_exit(code)
        if child.role == WORKER:
            gone = p.encode(p.WorkerGone(child.name, how))
            for c in self._live(API):
                self._send(c, gone)
        else:
            self._broadcast_endpoints()
        self._changed()
        if slot is None:
            return
        if child in slot.retiring:
            slot.retiring.remove(child)
            log.info(
                f"{child.role} {child.slot} stopped",
                extra=kv(child_pid=child.pid, reason=child.stop_reason, exit=how),
            )
            return
        if slot.child is not child:  # a replacement that never took over
            log.warning(
                f"replacement {child.role} {child.slot} exited before it was ready",
                extra=kv(child_pid=child.pid, exit=how),
            )
            return
        slot.child = None
        slot.last_exit = how
        # Replacements (reload, restart) and scale-downs retired the child from its slot before
        # stopping it, above; here remain a shutdown and the unexpected exits.
        reason = child.stop_reason
        if reason == "shutdown":
            slot.state = "stopped"
            log.info(f"{child.role} {child.slot} stopped", extra=kv(child_pid=child.pid, exit=how))
            return
        if self.stopping:
            slot.state = "stopped"
            return
        self._count_restart(child.role, reason or ("crash" if code != 0 else "exit"))
        self._crashed(slot, child, how)

    def _crashed(self, slot: Slot, child: Child, how: str) -> None:
        now = time.monotonic()
        was_ready_for = now - child.ready_at if child.ready_at is not None else None
        if child.fatal is not None:
            slot.last_error = child.fatal.error
        elif child.stop_reason == "hang":
            slot.last_error = "no heartbeat within heartbeat_timeout"
        else:
            slot.last_error = how
        slot.restarts += 1
        log.warning(
            f"{child.role} {child.slot} exited unexpectedly",
            extra=kv(
                child_pid=child.pid,
                exit=how,
                error=slot.last_error,
                ready_for=None if was_ready_for is None else round(was_ready_for, 1),
            ),
        )
        if child.role == WORKER and self._nothing_can_start():
            log.error("no inference worker could start; stopping", extra=kv(error=slot.last_error))
            self._background(self.shutdown(EXIT_APP), "stop")
            return
        delay = self.policy.after_crash(slot, now, was_ready_for)
        if delay is None:
            slot.state = "failed"
            tail = "\n".join(child.tail) if child.tail else "(no output)"
            log.error(
                f"{slot.role} {slot.index} failed: {len(slot.crashes)} crashes within "
                f"{self.opts.restart_window:g} s; retrying in {self.opts.failed_retry:g} s",
                extra=kv(error=slot.last_error),
            )
            self._write_block(f"last output of {slot.role} {slot.index}:\n{tail}")
            self._schedule(slot, self.opts.failed_retry, "failed")
        elif delay > 0:
            log.info(f"restarting {slot.role} {slot.index} in {delay:.2f} s")
            self._schedule(slot, delay, "backoff")
        else:
            self._start(slot)

    def _nothing_can_start(self) -> bool:
        """Every worker slot failed its first start and none was ever ready: an app that cannot
        import, or a setup that always raises. Spinning would only hide it."""
        slots = [s for s in self.worker_slots if not s.retired]
        return (
            bool(slots)
            and all(not s.ever_ready and s.child is None for s in slots)
            and not self.ready_announced
        )

    def _count_restart(self, role: str, reason: str) -> None:
        key = (role, reason)
        self.restarts[key] = self.restarts.get(key, 0) + 1

    def _mark_dead(self, pid: int) -> None:
        try:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)
        except Exception:  # never let metrics bookkeeping hurt supervision
            pass

    # -- control plane ---------------------------------------------------------------------------

    def _on_control(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            return
        child = self.by_name.get(frames[0].decode(errors="replace"))
        if child is None:
            return
        try:
            msg = p.to_supervisor(frames[1])
        except Exception:
            log.warning("dropped a malformed control message", extra=kv(child_pid=child.pid))
            return
        child.last_seen = time.monotonic()
        if isinstance(msg, p.Heartbeat):
            child.in_flight = msg.in_flight
            child.served = msg.served
        elif isinstance(msg, p.Ready):
            self._on_ready(child)
        elif isinstance(msg, p.Hello):
            if msg.endpoint is not None:
                child.endpoint = msg.endpoint
                self._broadcast_endpoints()
            elif child.role == WORKER:
                # Our ROUTER drops what it sends before a child's connection is up, so a worker
                # may have missed broadcasts while it started: its Hello gets the current list.
                self._send(child, p.encode(p.Endpoints(self._endpoints())))
        elif isinstance(msg, p.Fatal):
            child.fatal = msg
            self._report_fatal(child, msg)

    def _on_ready(self, child: Child) -> None:
        if child.state == "starting":
            child.state = "ready"
        child.ready_at = time.monotonic()
        slot = self.home.get(child)
        if slot is not None and slot.child is child:
            slot.ever_ready = True
            slot.state = "ready"
        log.info(
            f"{child.role} {child.slot} ready",
            extra=kv(child_pid=child.pid, startup_s=round(child.ready_at - child.started, 3)),
        )
        self._changed()
        self._check_ready()

    def _report_fatal(self, child: Child, msg: p.Fatal) -> None:
        what = {"import": "could not load the app", "setup": "setup() raised"}.get(
            msg.stage, f"failed ({msg.stage})"
        )
        if msg.traceback in self._reported:
            log.error(
                f"{child.role} {child.slot} {what}: {msg.error} (traceback above)",
                extra=kv(child_pid=child.pid),
            )
            return
        self._reported.add(msg.traceback)
        log.error(
            f"{child.role} {child.slot} {what}: {msg.error}",
            extra=kv(child_pid=child.pid, app=self.opts.app),
        )
        self._write_block(msg.traceback)

    def _write_block(self, text: str) -> None:
        """Multi-line text (a traceback) kept readable on stderr, right after its log line."""
        if self.opts.log_format == "json":
            log.error("details", extra=kv(text=text))
            return
        try:
            sys.stderr.write("    " + text.replace("\n", "\n    ") + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def _send(self, child: Child, raw: bytes) -> None:
        try:
            self.control.send_multipart((child.name.encode(), raw), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self.control_reader.kick()

    def _live(self, role: str) -> list[Child]:
        return [c for c in self.children.values() if c.role == role]

    def _endpoints(self) -> list[p.ApiEndpoint]:
        return [c.endpoint for c in self._live(API) if c.endpoint is not None]

    def _broadcast_endpoints(self) -> None:
        raw = p.encode(p.Endpoints(self._endpoints()))
        for c in self._live(WORKER):
            self._send(c, raw)

    # -- readiness -------------------------------------------------------------------------------

    def ready_workers(self) -> int:
        return sum(1 for c in self._live(WORKER) if c.state == "ready")

    def is_ready(self) -> bool:
        if self.stopping:
            return False
        apis = all(s.child is not None and s.child.state == "ready" for s in self.api_slots)
        need = min(self.opts.min_ready_workers, max(1, len(self.worker_slots)))
        return apis and self.ready_workers() >= need

    def _check_ready(self) -> None:
        if self.ready_announced or not self.is_ready():
            return
        self.ready_announced = True
        scheme_host = self.listen_address
        log.info(
            "ready",
            extra=kv(
                url=f"http://{scheme_host}{self.opts.api_path}", workers_ready=self.ready_workers()
            ),
        )
        self.notifier.ready(self._status_line())

    def _status_line(self) -> str:
        return (
            f"{self.ready_workers()}/{len(self.worker_slots)} workers ready, "
            f"{len(self.api_slots)} API processes"
        )

    def _changed(self) -> None:
        self._changed_ev.set()

    async def wait_until(self, pred: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed_ev.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed_ev.wait(), min(left, 0.5))
        return True

    def _settled(self, child: Child) -> Callable[[], bool]:
        """A predicate: the child is ready, or it is gone."""
        return lambda: child.state == "ready" or child.pid not in self.children

    # -- periodic checks -------------------------------------------------------------------------

    async def _tick(self) -> None:
        next_wd = 0.0
        last_status = ""
        while True:
            now = time.monotonic()
            for child in list(self.children.values()):
                self._check_child(child, now)
            wd = self.notifier.watchdog_interval
            if wd is not None and now >= next_wd:
                self.notifier.watchdog()
                next_wd = now + wd
            if self.notifier.enabled and self.ready_announced:
                line = self._status_line()
                if line != last_status:
                    self.notifier.status(line)
                    last_status = line
            await asyncio.sleep(TICK)

    def _check_child(self, child: Child, now: float) -> None:
        o = self.opts
        if child.state == "starting":
            if now - child.started > o.startup_timeout:
                log.error(
                    f"{child.role} {child.slot} not ready after {o.startup_timeout:g} s: "
                    "killing it",
                    extra=kv(child_pid=child.pid),
                )
                child.state = "stopping"
                self._signal(child, signal.SIGKILL)
        elif (
            child.state in ("ready", "draining")
            and child.stop_reason is None
            and now - child.last_seen > o.heartbeat_timeout
        ):
            log.error(
                f"{child.role} {child.slot} silent for {now - child.last_seen:.1f} s "
                f"(heartbeat_timeout {o.heartbeat_timeout:g} s): hung, killing it",
                extra=kv(child_pid=child.pid),
            )
            child.stop_reason = "hang"
            child.state = "stopping"
            self._signal(child, signal.SIGKILL)

    # -- operations: stop, reload, scale, restart ------------------------------------------------

    async def shutdown(self, code: int = EXIT_OK) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.exit_code = code
        self.notifier.stopping()
        for slot in self.api_slots + self.worker_slots:
            if slot.start_timer is not None:
                slot.start_timer.cancel()
                slot.start_timer = None
        grace = self.opts.graceful_timeout
        # API processes first: they stop accepting and finish their requests, which still need
        # the workers. Then the workers, which by then hold nothing.
        for c in self._live(API):
            self.terminate(c, "shutdown")
        await self.wait_until(lambda: not self._live(API), grace + 5)
        empty = p.encode(p.Endpoints([]))
        for c in self._live(WORKER):
            self._send(c, empty)
            self.terminate(c, "shutdown")
        await self.wait_until(lambda: not self.children, grace + 5)
        log.info("stopped", extra=kv(exit_code=code))
        self._finish(code)

    def _finish(self, code: int, force: bool = False) -> None:
        if force:
            for child in list(self.children.values()):
                self._signal(child, signal.SIGKILL)
        if self._done is not None and not self._done.done():
            self._done.set_result(code)

    def _reread_options(self) -> Options:
        new = build(self.config_file, self.flags)
        for name, opt in OPTS_BY_NAME.items():
            if not opt.reloadable and getattr(new, name) != getattr(self.opts, name):
                log.warning(
                    f"{name} changed in the config file; it takes a full restart",
                    extra=kv(option=name),
                )
                setattr(new, name, getattr(self.opts, name))
        new.app = self.opts.app
        new.instance_file = self.opts.instance_file
        return new

    async def reload(self, queue: bool = False) -> dict[str, list[int]]:
        """Rolling reload: each child replaced by a new one that is ready before the old drains.

        queue: wait for a running operation to end instead of refusing (Busy)."""
        if self.stopping:
            raise Busy("the server is stopping")
        async with self._op("reload", queue):
            self.notifier.reloading()
            log.info("reload: re-reading the config and replacing every process, one at a time")
            result: dict[str, list[int]] = {"stopped": [], "started": [], "kept": []}
            try:
                try:
                    self.opts = self._reread_options()
                    self.policy = self._policy()
                except OptionError as e:
                    log.error(f"reload aborted: {e}")
                    raise
                # The file's count wins only when the file changed it: a reload must not undo
                # what an operator scaled to through the admin API.
                configured = len(self.devices) * self.opts.workers_per_device
                target = len(self.worker_slots)
                if configured != self.configured_workers:
                    target = configured
                    self.configured_workers = configured
                target = min(target, self.opts.max_workers)
                ok = True
                for slot in list(self.worker_slots):
                    if not await self._replace(slot, "reload", result):
                        ok = False
                        break
                if ok:
                    await self._scale_to(target, result)
                    for slot in list(self.api_slots):
                        if not await self._replace(slot, "reload", result):
                            ok = False
                            break
                    if ok:
                        await self._scale_api(self.opts.api_servers, result)
                result["kept"] = [
                    c.pid for c in self.children.values() if c.pid not in result["started"]
                ]
                self.reloads += 1
                log.info(
                    "reload done" if ok else "reload stopped early; old processes kept",
                    extra=kv(started=len(result["started"]), stopped=len(result["stopped"])),
                )
                return result
            finally:
                self.notifier.ready(self._status_line())

    async def _replace(self, slot: Slot, reason: str, result: dict[str, list[int]]) -> bool:
        old = slot.child
        if old is None:  # in backoff or failed: just start it now
            if slot.start_timer is not None:
                slot.start_timer.cancel()
            new = self._start(slot)
            if new is None:
                return False
            result["started"].append(new.pid)
            return await self.wait_until(self._settled(new), self.opts.startup_timeout)
        new = self._start(slot, attach=False)
        if new is None:
            return False
        ok = await self.wait_until(self._settled(new), self.opts.startup_timeout)
        if not ok or new.pid not in self.children:
            why = new.fatal.error if new.fatal else "it never became ready"
            log.error(f"{reason}: new {slot.role} {slot.index} failed ({why}); keeping the old one")
            if new.pid in self.children:
                new.stop_reason = "failed"
                self._signal(new, signal.SIGKILL)
            return False
        result["started"].append(new.pid)
        slot.child = new
        slot.ever_ready = True
        slot.state = "ready"
        if slot.child is new and old.pid in self.children:
            slot.retiring.append(old)
            self.terminate(old, reason)
            result["stopped"].append(old.pid)
            await self.wait_until(
                lambda: old.pid not in self.children, self.opts.graceful_timeout + 5
            )
        return True

    async def restart(self, role: str, index: int) -> dict[str, list[int]]:
        slots = self.worker_slots if role == WORKER else self.api_slots
        slot = next((s for s in slots if s.index == index), None)
        if slot is None:
            raise KeyError(index)
        async with self._op(f"restart {role} {index}"):
            result: dict[str, list[int]] = {"stopped": [], "started": [], "kept": []}
            await self._replace(slot, "restart", result)
            return result

    async def scale(self, count: int, wait: bool = True) -> dict[str, list[int]]:
        async with self._op("scale"):
            result: dict[str, list[int]] = {"stopped": [], "started": [], "kept": []}
            await self._scale_to(count, result, wait)
            return result

    async def _scale_by(self, delta: int) -> None:
        n = len(self.worker_slots) + delta
        if n < 1:
            log.warning("SIGTTOU: not scaling workers below one (never below one)")
            return
        if n > self.opts.max_workers:
            log.warning(f"not scaling above max_workers ({self.opts.max_workers})")
            return
        log.info(f"{'SIGTTIN' if delta > 0 else 'SIGTTOU'}: scaling workers to {n}")
        await self.scale(n, wait=False)

    @contextlib.asynccontextmanager
    async def _op(self, name: str, queue: bool = False) -> Any:
        if self.op_lock.locked() and not queue:
            raise Busy(f"{self.op_name} is in progress")
        async with self.op_lock:
            if self.stopping:
                raise Busy("the server is stopping")
            self.op_name = name
            try:
                yield
            finally:
                self.op_name = None

    async def _scale_to(self, count: int, result: dict[str, list[int]], wait: bool = True) -> None:
        count = max(1, count)
        added: list[Child] = []
        while len(self.worker_slots) < count:
            used = {s.index for s in self.worker_slots}
            index = next(i for i in itertools.count() if i not in used)
            counts = dict.fromkeys(self.devices, 0)
            for s in self.worker_slots:
                counts[s.device] = counts.get(s.device, 0) + 1
            device = min(self.devices, key=lambda d: counts.get(d, 0))
            slot = Slot(WORKER, index, device)
            self.worker_slots.append(slot)
            self.worker_slots.sort(key=lambda s: s.index)
            child = self._start(slot)
            if child is not None:
                added.append(child)
                result["started"].append(child.pid)
        removed: list[Child] = []
        while len(self.worker_slots) > count:
            by_dev: dict[devmod.Device, list[Slot]] = {}
            for s in self.worker_slots:
                by_dev.setdefault(s.device, []).append(s)
            crowded = max(by_dev.values(), key=len)
            # Not-running slots go first, then the last started.
            victim = max(
                crowded, key=lambda s: (s.child is None, s.child.started if s.child else 0.0)
            )
            victim.retired = True
            self.worker_slots.remove(victim)
            if victim.start_timer is not None:
                victim.start_timer.cancel()
            if victim.child is not None:
                c = victim.child
                victim.child = None
                victim.retiring.append(c)
                self.terminate(c, "scale")
                removed.append(c)
                result["stopped"].append(c.pid)
        if added or removed:
            log.info(
                f"workers scaled to {count}", extra=kv(started=len(added), stopping=len(removed))
            )
        self._changed()
        if wait:
            await self.wait_until(
                lambda: (
                    all(c.state == "ready" or c.pid not in self.children for c in added)
                    and all(c.pid not in self.children for c in removed)
                ),
                self.opts.startup_timeout,
            )

    async def _scale_api(self, count: int, result: dict[str, list[int]]) -> None:
        while len(self.api_slots) < count:
            slot = Slot(API, len(self.api_slots), devmod.Device("cpu", None, "cpu"))
            self.api_slots.append(slot)
            child = self._start(slot)
            if child is not None:
                result["started"].append(child.pid)
                await self.wait_until(self._settled(child), self.opts.startup_timeout)
        while len(self.api_slots) > count:
            slot = self.api_slots.pop()
            slot.retired = True
            if slot.child is not None:
                c = slot.child
                slot.child = None
                slot.retiring.append(c)
                self.terminate(c, "scale")
                result["stopped"].append(c.pid)
