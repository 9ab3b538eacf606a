"""Readiness (supervisor): when the server, or one model, is ready, and telling systemd so."""

from __future__ import annotations

from ferryman.logs import kv
from ferryman.supervisor.pools import Pool
from ferryman.supervisor.registry import ChildState, Role
from ferryman.supervisor.state import State, log


class Readiness(State):
    def ready_workers(self, model: str | None = None) -> int:
        """Workers ready and known to every serving API process (so that a request to any API
        process can reach them)."""
        apis = [c.routes_to for c in self.registry.role(Role.API) if c.state == ChildState.READY]
        return sum(
            1
            for c in self.registry.role(Role.WORKER)
            if c.state == ChildState.READY
            and (model is None or c.pool == model)
            and all(c.name in known for known in apis)
        )

    def model_ready(self, pool: Pool) -> bool:
        if pool.model is None or not pool.slots:
            return False
        need = min(pool.model.options.min_ready_workers, len(pool.slots))
        return self.ready_workers(pool.name) >= need

    def apis_ready(self) -> bool:
        ready = {c.slot for c in self.registry.role(Role.API) if c.state == ChildState.READY}
        return all(i in ready for i in self.api_pool.slots)

    def is_ready(self, model: str | None = None) -> bool:
        if self.stopping or not self.apis_ready():
            return False
        if model is not None:
            pool = self.models.get(model)
            return pool is not None and not pool.removing and self.model_ready(pool)
        pools = [m for m in self.models.values() if not m.removing]
        return bool(pools) and all(self.model_ready(m) for m in pools)

    def _check_ready(self) -> None:
        if self.ready_announced or self.stopping or not self.apis_ready():
            return
        pools = [m for m in self.models.values() if not m.removing]
        # systemd hears READY=1 once every model serves or has failed to start (its error is in
        # status and logs), as long as one serves: a broken model must not keep the rest down.
        if not pools or not any(self.model_ready(m) for m in pools):
            return
        if not all(self.model_ready(m) or m.error is not None for m in pools):
            return
        self.ready_announced = True
        log.info(
            "ready",
            extra=kv(
                url=f"http://{self.listen_address}",
                models=",".join(m.name for m in pools if self.model_ready(m)),
                workers_ready=self.ready_workers(),
            ),
        )
        self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        wanted = sum(len(m.slots) for m in self.models.values())
        apis = len(self.api_pool.slots)
        line = f"{self.ready_workers()}/{wanted} workers ready, {apis} API processes"
        failed = [m.name for m in self.models.values() if m.error is not None]
        if failed:
            line += f"; failed: {','.join(failed)}"
        return line
