"""What `GET /v1/status` and `GET /v1/models` say (runs in the supervisor, for the admin app)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import msgspec

from ferryman._version import __version__
from ferryman.supervisor.reconcile import current, slot_state

if TYPE_CHECKING:
    from ferryman.supervisor.operations import Operations as Supervisor
    from ferryman.supervisor.pools import Pool, Slot
    from ferryman.supervisor.registry import Child


def _child(c: Child, now: float) -> dict[str, Any]:
    return {
        "pid": c.pid,
        "state": str(c.state),
        "generation": c.generation,
        "started_at": round(c.started_wall, 3),
        "uptime_s": round(now - c.started, 3),
        "requests_in_flight": c.in_flight,
        "served": c.served,
    }


def slot_status(sup: Supervisor, pool: Pool, s: Slot) -> dict[str, Any]:
    now = time.monotonic()
    kids = [c for c in sup.registry.of(pool.name) if c.slot == s.index]
    state = slot_state(s, kids, now)
    serving = next((c for c in kids if c.alive and current(s, c)), None)
    if serving is None or serving.state != "ready":
        serving = next((c for c in kids if c.state == "ready"), serving)
    out: dict[str, Any] = {
        "role": str(pool.role),
        "model": pool.name if pool.model is not None else None,
        "id": s.index,
        "device": s.device.name,
        "state": str(state),
        "pid": None,
        "restarts": s.restarts,
        "last_exit": s.last_exit,
        "last_error": s.last_error,
        "started_at": None,
        "uptime_s": None,
        "requests_in_flight": 0,
        "served": 0,
    }
    if serving is not None:
        out.update(_child(serving, now))
        out["state"] = str(state)
    if s.not_before > now and serving is None:
        out["next_start_in_s"] = round(s.not_before - now, 3)
    others = [c for c in kids if c is not serving]
    if others:
        out["others"] = [_child(c, now) for c in others]  # replacements starting, old ones draining
    return out


def model_status(sup: Supervisor, pool: Pool) -> dict[str, Any]:
    assert pool.model is not None
    m = pool.model
    options = msgspec.structs.asdict(m.options)
    return {
        "name": pool.name,
        "app": m.app,
        "api_path": m.api_path,
        "spec": m.options.spec,
        "accelerator": pool.accelerator,
        "devices": [d.name for d in pool.devices],
        "state": model_state(sup, pool),
        "error": pool.error,
        "ready": sup.model_ready(pool),
        "workers_desired": len(pool.slots),
        "workers_ready": sup.ready_workers(pool.name),
        "options": options,
        "workers": [slot_status(sup, pool, s) for s in pool.ordered()],
    }


def model_state(sup: Supervisor, pool: Pool) -> str:
    if pool.removing:
        return "removing"
    if pool.error is not None and not sup.model_ready(pool):
        return "failed"
    return "ready" if sup.model_ready(pool) else "starting"


def snapshot(sup: Supervisor) -> dict[str, Any]:
    o = sup.server
    models = [model_status(sup, pool) for pool in sup.models.values()]
    return {
        "supervisor": {
            "pid": os.getpid(),
            "version": __version__,
            "uptime_s": round(time.monotonic() - sup.started, 3),
            "started_at": round(sup.started_wall, 3),
            "listen": sup.listen_address,
            "admin": f"{o.admin_host}:{o.admin_port}",
            "config_file": sup.config_file,
            "ready": sup.is_ready(),
            "stopping": sup.stopping,
            "operation": sup.operation(),
            "reloads": sup.reloads,
        },
        "api_servers": [slot_status(sup, sup.api_pool, s) for s in sup.api_pool.ordered()],
        "models": models,
        "workers": [w for m in models for w in m["workers"]],
    }
