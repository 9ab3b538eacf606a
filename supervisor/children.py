"""Children's lives (supervisor): spawn, watch, stop, reap, and what an exit means.

A child that exits unexpectedly is replaced in its slot, on its device; the restart policy
(policy.py) says when. Watched on every tick: a child not ready within startup_timeout, silent for
heartbeat_timeout (ready or draining alike), or still there graceful_timeout after SIGTERM, is
killed; a worker past max_requests or worker_max_rss is replaced, its successor ready first.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time

import msgspec

from ferryman import protocol as p
from ferryman.logs import kv
from ferryman.options import (
    ModelOptions,
)
from ferryman.supervisor import rundir, spawn
from ferryman.supervisor.messages import Messages
from ferryman.supervisor.pools import Pool, Slot
from ferryman.supervisor.reconcile import current
from ferryman.supervisor.registry import Child, ChildState, Role, Stop
from ferryman.supervisor.state import EXIT_APP, log, model_label, model_of, pool_label

RSS_CHECK = 1.0  # seconds between checks of workers' memory against worker_max_rss
KILL_MARGIN = 2.0
API_HEARTBEAT_TIMEOUT = 10.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Children(Messages):
    def _start(self, pool: Pool, slot: Slot) -> Child | None:
        assert self.board is not None
        now = time.monotonic()
        role = pool.role
        try:
            index = self.rows.take() if role == Role.API else self.cells.take()
        except RuntimeError as e:  # the load board is full: models' workers together, say
            log.error(f"cannot start {role} {slot.index}: {e}", extra=kv(model=model_label(pool)))
            slot.not_before = now + 5.0
            return None
        if role == Role.API:
            self.board.clear_row(index)
            name = f"a{slot.index}.{next(self._spawns)}"
        else:
            self.board.clear_cell(index)
            name = f"{pool.name}.w{slot.index}.{next(self._spawns)}"
        server = msgspec.structs.replace(self.server, admin_token=None)
        spec = p.ChildSpec(
            role=str(role),
            slot=slot.index,
            name=name,
            supervisor_pid=os.getpid(),
            control=self.control_address,
            run_dir=self.run_dir,
            board=self.board.path,
            server=server,
        )
        fds: tuple[int, ...] = ()
        if role == Role.API:
            assert self.listeners is not None
            endpoint = p.ApiEndpoint(
                name, f"ipc://{self.run_dir}/{name}.req", f"ipc://{self.run_dir}/{name}.rep", index
            )
            try:
                listen_fd = self.listeners.for_slot(slot.index).fileno()
            except OSError as e:
                log.error(f"cannot listen for API process {slot.index}: {e.strerror}")
                self.rows.release(index)
                slot.not_before = now + 5.0
                return None
            spec.api = p.ApiSpec(
                listen_fd=listen_fd,
                endpoint=endpoint,
                routes=self.routes(),
                expect_workers=min(self.ready_workers(), 8),
            )
            fds = (spec.api.listen_fd,)
        else:
            assert pool.model is not None
            spec.server = msgspec.structs.replace(server, api_key=None)
            spec.worker = p.WorkerSpec(
                model=pool.model,
                device=slot.device.local,
                physical_device=slot.device.name,
                cell=index,
                apis=self._endpoints(),
            )
        try:
            popen = spawn.start(spec, spawn.child_env(spec, slot.device), fds)
        except OSError as e:
            log.error(f"cannot start {role} {slot.index}: {e}", extra=kv(model=model_label(pool)))
            (self.rows if role == Role.API else self.cells).release(index)
            slot.not_before = now + (pool.model.options.backoff_max if pool.model else 5.0)
            return None
        child = Child(role, pool.name, slot.index, slot.generation, name, popen, slot.device, index)
        if pool.model is not None and pool.model.options.max_requests:
            o = pool.model.options
            child.recycle_after = o.max_requests + random.randint(0, o.max_requests_jitter)
        spawn.StderrRelay(self.loop, popen, child.tail)
        self.registry.add(child)
        log.info(
            f"started {role} {slot.index}",
            extra=kv(
                model=model_label(pool), child_pid=popen.pid, device=slot.device.name, name=name
            ),
        )
        return child

    def _signal(self, child: Child, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)

    def terminate(self, child: Child, why: Stop) -> None:
        """SIGTERM: drain and exit; SIGKILL of its process group after graceful_timeout."""
        if child.state in (ChildState.DRAINING, ChildState.KILLED):
            if why == Stop.SHUTDOWN:
                child.stop = why
            return
        child.stop = why
        was_ready = child.state == ChildState.READY
        child.state = ChildState.DRAINING
        if was_ready and child.role == Role.WORKER and not self.stopping:
            self._broadcast_routes()  # API processes it never reached stop waiting for it
        # The child spends graceful_timeout finishing its requests (and answers those it could not
        # finish): a moment more to say so and exit before SIGKILL.
        child.kill_at = time.monotonic() + self.server.graceful_timeout + KILL_MARGIN
        self._signal(child, signal.SIGTERM)
        log.info(
            f"stopping {child.role} {child.slot} ({why})",
            extra=kv(model=model_of(child), child_pid=child.pid),
        )

    def kill(self, child: Child, why: Stop, message: str) -> None:
        log.error(message, extra=kv(model=model_of(child), child_pid=child.pid, reason=str(why)))
        child.killed = why
        child.state = ChildState.KILLED
        self._signal(child, signal.SIGKILL)

    def _reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.registry.remove(pid)
            if child is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            child.popen.returncode = code
            try:
                self._on_exit(child, code, usage.ru_utime + usage.ru_stime)
            except Exception as e:
                log.error(f"handling the exit of pid {pid} failed: {e!r}", exc_info=e)

    def _on_exit(self, child: Child, code: int, cpu: float) -> None:
        assert self.board is not None
        now = time.monotonic()
        key = (str(child.role), model_of(child), str(child.slot))
        self.retired_cpu[key] = self.retired_cpu.get(key, 0.0) + cpu
        how = describe_exit(code)
        if child.role == Role.WORKER:
            self.cells.release(child.board_index)
            self.board.clear_cell(child.board_index)
            gone = p.encode(p.WorkerGone(child.name, how))
            for c in self.registry.role(Role.API):
                self._send(c, gone)
        else:
            self.rows.release(child.board_index)
            self.board.clear_row(child.board_index)
            if child.endpoint is not None:
                rundir.remove_files(
                    child.endpoint.requests.removeprefix("ipc://"),
                    child.endpoint.replies.removeprefix("ipc://"),
                )
            self._broadcast_endpoints()
        self.poke()
        pool = self.pool_of(child)
        if child.stop is not None or self.stopping or pool is None:
            if child.killed is not None:
                log.warning(
                    f"{child.role} {child.slot} killed while it drained ({child.killed})",
                    extra=kv(model=model_of(child), child_pid=child.pid),
                )
            log.info(
                f"{child.role} {child.slot} stopped",
                extra=kv(model=model_of(child), child_pid=child.pid, exit=how),
            )
            return
        slot = pool.slots.get(child.slot)
        reason = {Stop.HANG: "hang", Stop.STARTUP_TIMEOUT: "startup_timeout"}.get(
            child.killed or Stop.SHUTDOWN, "exit" if code == 0 else "crash"
        )
        rkey = (str(child.role), model_of(child), reason)
        self.restarts[rkey] = self.restarts.get(rkey, 0) + 1
        error = _why(child, how)
        ready_for = now - child.ready_at if child.ready_at is not None else None
        log.warning(
            f"{child.role} {child.slot} exited unexpectedly",
            extra=kv(
                model=model_of(child),
                child_pid=child.pid,
                exit=how,
                error=error,
                ready_for=None if ready_for is None else round(ready_for, 1),
            ),
        )
        if slot is None:
            return
        slot.restarts += 1
        slot.last_exit = how
        slot.last_error = error
        if not current(slot, child):
            return  # an older child, already being replaced: its replacement carries on
        if (
            child.state != ChildState.READY
            and child.ready_at is None
            and self._abort_roll(pool, slot, child, error)
        ):
            return
        delay = pool.policy.after_exit(slot.history, now, ready_for, served=child.served > 0)
        retry = pool.model.options.failed_retry if pool.model else 60.0
        if delay is None:
            slot.failed = True
            slot.not_before = now + retry
            log.error(
                f"{child.role} {child.slot} failed: {len(slot.history.failures)} failures to start "
                f"within {pool.policy.window:g} s; retrying in {retry:g} s",
                extra=kv(model=model_of(child), error=error),
            )
            self._write_block(
                f"last output of {child.role} {child.slot}:\n" + ("\n".join(child.tail) or "(none)")
            )
        elif delay > 0:
            slot.not_before = now + delay
            log.info(
                f"restarting {child.role} {child.slot} in {delay:.2f} s",
                extra=kv(model=model_of(child)),
            )
        if pool.role == Role.WORKER:
            self._check_model_can_start(pool, error)

    def _abort_roll(self, pool: Pool, slot: Slot, child: Child, error: str) -> bool:
        """A replacement died before it was ready while the slot's older child serves: keep the
        old children of the whole pool (a new version that cannot start would fail everywhere)."""
        older = [
            c for c in self.registry.of(pool.name)
            if c.slot == slot.index and c.state == ChildState.READY and not current(slot, c)
        ]  # fmt: skip
        if not older:
            return False
        reverted = 0
        for s in pool.slots.values():
            serving = [
                c for c in self.registry.of(pool.name)
                if c.slot == s.index and c.state == ChildState.READY and not current(s, c)
            ]  # fmt: skip
            if serving:
                s.generation = serving[0].generation
                s.device = serving[0].device
                reverted += 1
        for c in self.registry.of(pool.name):
            slot_c = pool.slots.get(c.slot)
            if (
                c.alive
                and slot_c is not None
                and not current(slot_c, c)
                and c.state != ChildState.READY
            ):
                self.terminate(c, Stop.FAILED_START)
        pool.roll_error = f"a new {pool.role} could not start ({error}); the old ones are kept"
        log.error(
            f"{pool_label(pool)}: a new {pool.role} failed before it was ready ({error}); "
            f"keeping the {reverted} old one(s)",
            extra=kv(model=model_label(pool)),
        )
        return True

    def _check_model_can_start(self, pool: Pool, error: str) -> None:
        """Every slot of the model failed its first starts and none was ever ready: the app cannot
        import, or setup always raises. Mark it failed instead of spinning; at start, when no
        model can start, stop with exit status 3."""
        slots = list(pool.slots.values())
        if not slots or any(s.ever_ready or not s.history.failures for s in slots):
            return
        if any(c.alive for c in self.registry.of(pool.name)):
            return
        retry = pool.model.options.failed_retry if pool.model else 60.0
        now = time.monotonic()
        for s in slots:
            s.failed = True
            s.not_before = now + retry
        pool.error = error
        if not self.ready_announced and all(
            m.error is not None and not any(s.ever_ready for s in m.slots.values())
            for m in self.models.values()
        ):
            log.error("no model could start; stopping", extra=kv(error=error))
            self.background(self.shutdown(EXIT_APP), "stop")
            return
        log.error(
            f"model {pool.name} cannot start; the other models serve. Retrying in {retry:g} s",
            extra=kv(model=pool.name, error=error),
        )

    def _timeouts(self, child: Child) -> ModelOptions:
        pool = self.pool_of(child)
        if pool is not None and pool.model is not None:
            return pool.model.options
        # An API process runs no user code: a loop silent for API_HEARTBEAT_TIMEOUT is hung. It
        # is short because new connections the kernel hands to its socket wait until it is
        # replaced (each API slot has a socket of its own).
        return msgspec.structs.replace(
            self.defaults,
            heartbeat_timeout=min(self.defaults.heartbeat_timeout, API_HEARTBEAT_TIMEOUT),
        )

    def _check_child(self, child: Child, now: float) -> None:
        o = self._timeouts(child)
        if child.state == ChildState.STARTING:
            if now - child.started > o.startup_timeout:
                self.kill(
                    child,
                    Stop.STARTUP_TIMEOUT,
                    f"{child.role} {child.slot} not ready after {o.startup_timeout:g} s "
                    "(startup_timeout): killing it",
                )
        elif child.state in (ChildState.READY, ChildState.DRAINING):
            if now - child.last_seen > o.heartbeat_timeout:
                self.kill(
                    child,
                    Stop.HANG,
                    f"{child.role} {child.slot} silent for {now - child.last_seen:.1f} s "
                    f"(heartbeat_timeout {o.heartbeat_timeout:g} s): hung, killing it",
                )
            elif child.state == ChildState.DRAINING and child.kill_at and now > child.kill_at:
                self.kill(
                    child,
                    Stop.DRAIN_TIMEOUT,
                    f"{child.role} {child.slot} did not stop within graceful_timeout: SIGKILL",
                )
            elif (
                child.recycle_after
                and child.state == ChildState.READY
                and child.served >= child.recycle_after
            ):
                self._recycle(child, f"served {child.served} requests (max_requests)")

    def _check_memory(self) -> None:
        for child in self.registry.role(Role.WORKER):
            pool = self.pool_of(child)
            if child.state != ChildState.READY or pool is None or pool.model is None:
                continue
            limit = pool.model.options.worker_max_rss
            if not limit:
                continue
            rss = _rss(child.pid)
            if rss is not None and rss > limit:
                self._recycle(child, f"resident memory {rss >> 20} MiB > worker_max_rss")

    def _recycle(self, child: Child, why: str) -> None:
        """Replace a worker that served its share: its replacement first, then it drains."""
        pool = self.pool_of(child)
        slot = pool.slots.get(child.slot) if pool is not None else None
        if pool is None or slot is None or not current(slot, child):
            return
        child.recycle_after = 0
        log.info(
            f"recycling worker {child.slot}: {why}",
            extra=kv(model=pool.name, child_pid=child.pid),
        )
        pool.bump(slot.index, self.next_gen())
        self.poke()


def _why(child: Child, how: str) -> str:
    if child.fatal is not None:
        return str(child.fatal.error)
    if child.killed == Stop.HANG:
        return f"no heartbeat within heartbeat_timeout ({how})"
    if child.killed == Stop.STARTUP_TIMEOUT:
        return f"not ready within startup_timeout ({how})"
    if child.killed == Stop.DRAIN_TIMEOUT:
        return f"did not stop within graceful_timeout ({how})"
    return how


def describe_exit(status: int) -> str:
    """A waitpid status as words: 'exit code 3', 'killed by SIGKILL'."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit code {status}"


def _rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None
