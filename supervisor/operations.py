"""Operations (supervisor): scale, restart, reload, add and remove models, stop.

Each only changes the desired state (pools.py) and pokes the reconcile step; `wait` follows a
change until it is carried out, has failed, or a timeout passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import msgspec

from ferryman import protocol as p
from ferryman.config import build_config, model_defaults, resolve_paths
from ferryman.logs import kv
from ferryman.options import OPTS, SERVER, Config, ModelOptions, ModelSpec, OptionError
from ferryman.supervisor import devices as devmod
from ferryman.supervisor.children import Children
from ferryman.supervisor.policy import RestartPolicy
from ferryman.supervisor.pools import CPU, Pool, Slot
from ferryman.supervisor.reconcile import converged
from ferryman.supervisor.registry import Role, Stop
from ferryman.supervisor.state import (
    API_POOL,
    EXIT_OK,
    Stopping,
    log,
    pool_label,
)


class Outcome(msgspec.Struct):
    """How an operation ended: done, failed (with why), or still under way after its timeout."""

    state: str  # "done", "failed", "timeout"
    errors: list[str] = []


class Operations(Children):
    async def _new_pool(self, spec: ModelSpec, count: int | None = None) -> Pool:
        """A model's pool of worker slots, its devices resolved (nvidia-smi, off the loop)."""
        o = spec.options
        accelerator, devs = await asyncio.to_thread(devmod.resolve, o.accelerator, o.devices)
        configured = len(devs) * o.workers_per_device
        if configured > o.max_workers:
            raise OptionError(
                f"--workers-per-device {o.workers_per_device} on {len(devs)} device(s) is "
                f"{configured} workers for model {spec.name!r}, above --max-workers {o.max_workers}"
            )
        pool = Pool(
            Role.WORKER,
            spec.name,
            policy_for(o),
            devs,
            model=spec,
            accelerator=accelerator,
            configured=configured,
        )
        pool.relayout(devs, configured if count is None else count, self.next_gen)
        return pool

    def _log_model(self, pool: Pool, what: str) -> None:
        assert pool.model is not None
        log.info(
            f"model {pool.name}: {what}",
            extra=kv(
                model=pool.name,
                app=pool.model.app,
                path=pool.model.api_path,
                accelerator=pool.accelerator,
                devices=",".join(d.name for d in pool.devices),
                workers=len(pool.slots),
            ),
        )

    def _begin(self, label: str, pools: list[str]) -> None:
        if self.stopping:
            raise Stopping("the server is stopping")
        self.operations.setdefault(label, set()).update(pools)
        for name in pools:
            pool = self.api_pool if name == API_POOL else self.models.get(name)
            if pool is not None:
                pool.roll_error = None

    def _settle_operations(self) -> None:
        for label, names in list(self.operations.items()):
            if all(self._pool_settled(n) for n in names):
                del self.operations[label]
                if label == "reload":
                    self.reloads += self.reloads_pending
                    self.reloads_pending = 0
                    log.info("reload done")
                    if not self.stopping:
                        self.notifier.ready(self.status_line())

    def _pool_settled(self, name: str) -> bool:
        pool = self.api_pool if name == API_POOL else self.models.get(name)
        if pool is None:
            return True
        return converged(pool, self.registry.of(name)) or self._pool_failures(pool) != []

    def _pool_failures(self, pool: Pool) -> list[str]:
        errors = []
        for e in (pool.error, pool.roll_error):
            if e is not None:
                errors.append(f"{pool_label(pool)}: {e}")
        for s in pool.ordered():
            if s.failed:
                errors.append(f"{pool_label(pool)} {pool.role} {s.index} failed: {s.last_error}")
        return errors

    def operation(self) -> str | None:
        return ", ".join(sorted(self.operations)) or None

    async def wait(self, pools: list[str], timeout: float | None) -> Outcome:
        """Until the pools are converged or failed (or `timeout` seconds, if given)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            failures: list[str] = []
            settled = True
            for name in pools:
                pool = self.api_pool if name == API_POOL else self.models.get(name)
                if pool is None:
                    continue
                errs = self._pool_failures(pool)
                if errs:
                    failures += errs
                elif not converged(pool, self.registry.of(name)):
                    settled = False
            if failures:
                return Outcome("failed", failures)
            if settled:
                return Outcome("done")
            end = await self._next_change(deadline)
            if end is not None:
                return end

    async def _next_change(self, deadline: float | None) -> Outcome | None:
        """Wait for the state to change (half a second at most); an Outcome when the wait is over
        (the server stops, the deadline passed)."""
        if self.stopping:
            return Outcome("failed", ["the server is stopping"])
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return Outcome("timeout")
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), 0.5 if left is None else min(left, 0.5))
        return None

    async def wait_model_ready(self, name: str, timeout: float | None) -> Outcome:
        """Until the model has its ready workers, or cannot start (or `timeout` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pool = self.models.get(name)
            if pool is None or pool.removing:
                return Outcome("failed", [f"model {name!r} was removed"])
            if self.model_ready(pool):
                return Outcome("done")
            if pool.error is not None:
                return Outcome("failed", [f"model {name}: {pool.error}"])
            end = await self._next_change(deadline)
            if end is not None:
                return end

    def model_pool(self, name: str) -> Pool:
        pool = self.models.get(name)
        if pool is None or pool.removing:
            raise KeyError(name)
        return pool

    def scale(self, model: str, count: int) -> None:
        pool = self.model_pool(model)
        self._begin(f"scale {model}", [model])

        def started(slot: Slot) -> float | None:
            kids = [c for c in self.registry.of(model) if c.slot == slot.index and c.alive]
            return max((c.started for c in kids), default=None)

        added, removed = pool.scale_to(count, self.next_gen, started)
        if added or removed:
            log.info(
                f"model {model}: workers scaled to {count}",
                extra=kv(model=model, added=len(added), removed=len(removed)),
            )
        self.poke()

    def restart(self, pool_name: str, index: int) -> None:
        pool = self.api_pool if pool_name == API_POOL else self.model_pool(pool_name)
        if index not in pool.slots:
            raise KeyError(index)
        self._begin(f"restart {pool_name} {index}", [pool_name])
        pool.error = None
        pool.bump(index, self.next_gen())
        self.poke()

    async def reload(self, model: str | None = None) -> list[str]:
        """Rolling reload: re-read the configuration, then replace every process (of `model`
        only, if given), each new one ready before the old one drains. Returns the pools it
        touches; `wait` on them for the outcome. Raises OptionError for a bad file."""
        if self.stopping:
            raise Stopping("the server is stopping")
        if model is not None:
            pool = self.model_pool(model)
            self._begin(f"reload {model}", [model])
            pool.error = None
            pool.relayout(pool.devices, len(pool.slots), self.next_gen)
            self.poke()
            return [model]
        self.notifier.reloading()
        self.reloads_pending += 1
        try:
            config = build_config(self.config_file, self.flags, self.apps, self.launch)
            if not config.models:
                raise OptionError("the configuration names no model")
            new_pools = await self._apply_config(config)
        except OptionError as e:
            log.error(f"reload aborted: {e}")
            self.reloads_pending -= 1
            if not self.stopping:
                self.notifier.ready(self.status_line())
            raise
        names = [API_POOL, *new_pools]
        self._begin("reload", names)
        log.info(
            "reload: the configuration re-read; replacing every process, one at a time per pool"
        )
        self.poke()
        return names

    async def _apply_config(self, config: Config) -> list[str]:
        """Make the desired state what `config` says; returns the model pools to wait for."""
        keep = {}
        for opt in OPTS:
            if opt.scope == SERVER and not opt.reloadable:
                old, new = getattr(self.server, opt.name), getattr(config.server, opt.name)
                if new != old:
                    log.warning(
                        f"{opt.name} changed; it takes a full restart", extra=kv(option=opt.name)
                    )
                    keep[opt.name] = old
        server = msgspec.structs.replace(config.server, **keep)
        runtime = [
            pool.model for name, pool in self.models.items()
            if self.sources.get(name) == "runtime" and not pool.removing and pool.model is not None
        ]  # fmt: skip
        wanted = {m.name for m in config.models}
        resolve_paths([*config.models, *(m for m in runtime if m.name not in wanted)])
        # Every new pool is built before anything changes, so that a bad device spec aborts the
        # reload cleanly.
        fresh = {spec.name: await self._new_pool(spec) for spec in config.models}
        self.server = server
        self.config = config
        self.defaults = model_defaults(self.config_file, self.flags)
        for name, pool in fresh.items():
            old = self.models.get(name)
            if old is None or old.removing:
                self.models[name] = pool
                self._log_model(pool, "added")
            else:
                assert pool.model is not None
                # The file's count wins only when the file changed it: a reload must not undo
                # what an operator scaled to through the admin API.
                count = pool.configured if pool.configured != old.configured else len(old.slots)
                old.model = pool.model
                old.policy = pool.policy
                old.accelerator = pool.accelerator
                old.configured = pool.configured
                old.error = None
                old.relayout(
                    pool.devices, min(count, pool.model.options.max_workers), self.next_gen
                )
            self.sources[name] = "config"
        for name, pool in list(self.models.items()):
            if self.sources.get(name) == "config" and name not in wanted and not pool.removing:
                self._remove(pool)
        self.api_pool.relayout([CPU], server.api_servers, self.next_gen)
        self._broadcast_routes()
        return list(fresh)

    async def add_model(self, spec: ModelSpec) -> None:
        if self.stopping:
            raise Stopping("the server is stopping")
        if spec.name in self.models:
            raise KeyError(spec.name)
        if spec.options.api_path is None:
            spec.options.api_path = f"/{spec.name}/predict"
        live = [m.model for m in self.models.values() if m.model is not None and not m.removing]
        resolve_paths([*live, spec])
        pool = await self._new_pool(spec)
        if spec.name in self.models:  # added meanwhile, while devices were resolved
            raise KeyError(spec.name)
        self.models[spec.name] = pool
        self.sources[spec.name] = "runtime"
        self._begin(f"add {spec.name}", [spec.name])
        self._log_model(pool, "added")
        self._broadcast_routes()
        self.poke()

    def remove_model(self, name: str) -> None:
        pool = self.model_pool(name)
        self._remove(pool)
        self._broadcast_routes()
        self.poke()

    def _remove(self, pool: Pool) -> None:
        pool.removing = True
        pool.slots.clear()
        log.info(f"model {pool.name}: removing; its workers drain", extra=kv(model=pool.name))

    async def shutdown(self, code: int = EXIT_OK) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.exit_code = code
        self.notifier.stopping()
        grace = self.server.graceful_timeout
        # API processes first: they stop accepting and finish their requests, which still need
        # the workers. Then the workers, which by then hold nothing.
        for c in self.registry.role(Role.API):
            self.terminate(c, Stop.SHUTDOWN)
        await self._wait_gone(Role.API, grace + 5)
        empty = p.encode(p.Endpoints([]))
        for c in self.registry.role(Role.WORKER):
            self._send(c, empty)
            self.terminate(c, Stop.SHUTDOWN)
        await self._wait_gone(None, grace + 5)
        log.info("stopped", extra=kv(exit_code=code))
        self._finish(code)

    async def _wait_gone(self, role: Role | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = self.registry.role(role) if role is not None else list(self.registry)
            if not left:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.2)

    def _finish(self, code: int, force: bool = False) -> None:
        if force:
            for child in self.registry:
                self._signal(child, signal.SIGKILL)
        if self._done is not None and not self._done.done():
            self._done.set_result(code)


def policy_for(o: ModelOptions) -> RestartPolicy:
    return RestartPolicy(o.max_restarts, o.restart_window, 0.1, o.backoff_max)
