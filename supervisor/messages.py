"""What children say over the control link, and what the supervisor tells them (supervisor).

Children hold a DEALER to the supervisor's ROUTER: they say Hello, Ready, heartbeats, the metrics
they counted and a fatal error; the supervisor sends workers the API processes to connect to,
and API processes the models' routes and the workers that died.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import zmq

from ferryman import protocol as p
from ferryman.logs import kv
from ferryman.supervisor.readiness import Readiness
from ferryman.supervisor.reconcile import current
from ferryman.supervisor.registry import Child, ChildState, Role
from ferryman.supervisor.state import log, model_of


class Messages(Readiness):
    def _on_control(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            return
        child = self.registry.by_name.get(frames[0].decode(errors="replace"))
        if child is None:
            return
        try:
            msg = p.to_supervisor(frames[1])
        except Exception:
            log.warning("dropped a malformed control message", extra=kv(child_pid=child.pid))
            return
        try:
            self._handle(child, msg)
        except Exception as e:
            log.error(f"handling {type(msg).__name__} failed: {e!r}", exc_info=e)

    def _handle(self, child: Child, msg: Any) -> None:
        child.last_seen = time.monotonic()
        if isinstance(msg, p.Metrics):
            self.metrics.add(msg)
        elif isinstance(msg, p.Heartbeat):
            child.in_flight = msg.in_flight
            child.served = msg.served
            if msg.workers is not None and frozenset(msg.workers) != child.routes_to:
                child.routes_to = frozenset(msg.workers)
                self.poke()
        elif isinstance(msg, p.Ready):
            self._on_ready(child)
        elif isinstance(msg, p.Hello):
            if msg.endpoint is not None:
                child.endpoint = msg.endpoint
                self._send(child, p.encode(p.Routes(self.routes())))
                self._broadcast_endpoints()
            elif child.role == Role.WORKER:
                # Our ROUTER drops what it sends before a child's connection is up, so a worker
                # may have missed broadcasts while it started: its Hello gets the current list.
                self._send(child, p.encode(p.Endpoints(self._endpoints())))
        elif isinstance(msg, p.Fatal):
            child.fatal = msg
            self._report_fatal(child, msg)

    def _on_ready(self, child: Child) -> None:
        if child.state == ChildState.STARTING:
            child.state = ChildState.READY
        child.ready_at = time.monotonic()
        pool = self.pool_of(child)
        slot = pool.slots.get(child.slot) if pool is not None else None
        if pool is not None and slot is not None and current(slot, child):
            slot.ever_ready = True
            slot.failed = False
            slot.not_before = 0.0
            pool.error = None
        if child.role == Role.WORKER:
            self._broadcast_routes()  # API processes it has not reached yet hold its requests
        log.info(
            f"{child.role} {child.slot} ready",
            extra=kv(
                model=model_of(child),
                child_pid=child.pid,
                startup_s=round(child.ready_at - child.started, 3),
            ),
        )
        self.poke()

    def _report_fatal(self, child: Child, msg: p.Fatal) -> None:
        what = {"import": "could not load the app", "setup": "setup() raised"}.get(
            msg.stage, f"failed ({msg.stage})"
        )
        model = model_of(child)
        if msg.traceback in self._reported:
            log.error(
                f"{child.role} {child.slot} {what}: {msg.error} (traceback above)",
                extra=kv(model=model, child_pid=child.pid),
            )
            return
        self._reported.add(msg.traceback)
        pool = self.pool_of(child)
        app = pool.model.app if pool is not None and pool.model is not None else None
        log.error(
            f"{child.role} {child.slot} {what}: {msg.error}",
            extra=kv(model=model, child_pid=child.pid, app=app),
        )
        self._write_block(msg.traceback)

    def _send(self, child: Child, raw: bytes) -> None:
        try:
            self.control.send_multipart((child.name.encode(), raw), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # not connected yet (its Hello gets the current state) or gone
        self.control_reader.kick()

    def _endpoints(self) -> list[p.ApiEndpoint]:
        # Draining API processes too: they still wait for answers to what they sent.
        return [c.endpoint for c in self.registry.role(Role.API) if c.endpoint is not None]

    def _broadcast_endpoints(self) -> None:
        raw = p.encode(p.Endpoints(self._endpoints()))
        for c in self.registry.role(Role.WORKER):
            self._send(c, raw)

    def routes(self) -> list[p.ModelRoute]:
        out = []
        ready: dict[str, list[str]] = {}
        for c in self.registry.role(Role.WORKER):
            if c.state == ChildState.READY:
                ready.setdefault(c.pool, []).append(c.name)
        for pool in self.models.values():
            if pool.removing or pool.model is None:
                continue
            o = pool.model.options
            out.append(
                p.ModelRoute(
                    name=pool.name,
                    api_path=pool.model.api_path,
                    spec=o.spec,
                    timeout=o.timeout,
                    max_payload_size=o.max_payload_size,
                    workers=ready.get(pool.name, []),
                    app=pool.model.app,
                    devices=[d.name for d in pool.devices],
                    options=msgspec.structs.asdict(o),
                )
            )
        return out

    def _broadcast_routes(self) -> None:
        raw = p.encode(p.Routes(self.routes()))
        for c in self.registry.role(Role.API):
            self._send(c, raw)
