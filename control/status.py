"""What `GET /v1/status` says: the supervisor, every API process and every worker."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ferryman._version import __version__

if TYPE_CHECKING:
    from ferryman.supervisor.core import Supervisor
    from ferryman.supervisor.table import Child, Slot


def _child(c: Child) -> dict[str, Any]:
    return {
        "pid": c.pid,
        "state": c.state,
        "started_at": round(c.started_wall, 3),
        "uptime_s": round(time.monotonic() - c.started, 3),
        "requests_in_flight": c.in_flight,
        "served": c.served,
    }


def slot_status(sup: Supervisor, s: Slot) -> dict[str, Any]:
    c = s.child
    out: dict[str, Any] = {
        "role": s.role,
        "id": s.index,
        "device": s.device.name,
        "state": s.current_state(),
        "pid": None,
        "restarts": s.restarts,
        "last_exit": s.last_exit,
        "last_error": s.last_error,
        "started_at": None,
        "uptime_s": None,
        "requests_in_flight": 0,
        "served": 0,
    }
    if c is not None:
        out.update(_child(c))
        out["state"] = c.state
    if s.state in ("backoff", "failed") and c is None:
        out["next_start_in_s"] = round(max(0.0, s.next_start - time.monotonic()), 3)
    if s.retiring:
        out["retiring"] = [_child(r) for r in s.retiring]
    return out


def snapshot(sup: Supervisor) -> dict[str, Any]:
    o = sup.opts
    return {
        "supervisor": {
            "pid": os.getpid(),
            "version": __version__,
            "uptime_s": round(time.monotonic() - sup.started, 3),
            "started_at": round(sup.started_wall, 3),
            "listen": sup.listen_address,
            "admin": f"{o.admin_host}:{o.admin_port}",
            "config_file": sup.config_file,
            "app": o.app,
            "accelerator": sup.accelerator,
            "devices": [d.name for d in sup.devices],
            "ready": sup.is_ready(),
            "stopping": sup.stopping,
            "operation": sup.op_name,
            "reloads": sup.reloads,
        },
        "api_servers": [slot_status(sup, s) for s in sup.api_slots],
        "workers": [slot_status(sup, s) for s in sup.worker_slots],
    }
