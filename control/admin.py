"""The admin HTTP API, served by the supervisor (starlette on uvicorn, in the supervisor's loop).

JSON in and out; errors are {"error": {"type", "message"}}. Bound to loopback by default; binding
it elsewhere requires a bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import uvicorn
from ferryman.control.metrics import MetricsEndpoint
from ferryman.control.openapi import OPENAPI
from ferryman.control.status import slot_status, snapshot
from ferryman.supervisor import listen
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ferryman.options import OptionError

if TYPE_CHECKING:
    from ferryman.supervisor.core import Supervisor


OPEN_PATHS = frozenset({"/health", "/ready"})


def error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **extra}}, status)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(sup: Supervisor) -> Starlette:
    from ferryman.supervisor.core import Busy
    from ferryman.supervisor.table import API, WORKER

    metrics = MetricsEndpoint(sup)
    token = sup.opts.admin_token

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "stopping": sup.stopping})

    async def ready(request: Request) -> Response:
        if sup.is_ready():
            return JSONResponse({"status": "ready", "workers_ready": sup.ready_workers()})
        return JSONResponse(
            {
                "status": "not_ready",
                "workers_ready": sup.ready_workers(),
                "reason": "stopping" if sup.stopping else "not enough ready processes",
            },
            503,
        )

    async def status(request: Request) -> Response:
        return JSONResponse(snapshot(sup))

    async def list_workers(request: Request) -> Response:
        return JSONResponse([slot_status(sup, s) for s in sup.worker_slots])

    def _worker_slot(request: Request) -> Any:
        raw = request.path_params["id"]
        try:
            index = int(raw)
        except ValueError:
            return None
        return next((s for s in sup.worker_slots if s.index == index), None)

    async def get_worker(request: Request) -> Response:
        slot = _worker_slot(request)
        if slot is None:
            return error(404, "not_found", f"no worker {request.path_params['id']}")
        return JSONResponse(slot_status(sup, slot))

    async def scale(request: Request) -> Response:
        try:
            body = await request.json()
        except Exception:
            return error(422, "invalid_body", 'send JSON: {"count": N} or {"per_device": K}')
        if not isinstance(body, dict) or len(body.keys() & {"count", "per_device"}) != 1:
            return error(422, "invalid_body", 'send {"count": N} or {"per_device": K}')
        key = "count" if "count" in body else "per_device"
        n = body[key]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            return error(422, "invalid_body", f"{key} must be an integer >= 1, got {n!r}")
        count = n if key == "count" else n * len(sup.devices)
        if count > sup.opts.max_workers:
            return error(
                422,
                "invalid_body",
                f"{count} workers is above max_workers ({sup.opts.max_workers})",
            )
        if sup.stopping:
            return error(409, "conflict", "the server is stopping")
        if sup.op_lock.locked():
            return error(409, "conflict", f"{sup.op_name} is in progress")
        wait = request.query_params.get("wait", "false").lower() in ("1", "true", "yes")
        if not wait:
            sup._background(sup.scale(count), "scale")
            return JSONResponse({"target": count, "state": "scaling"}, 202)
        try:
            timeout = float(request.query_params.get("timeout", sup.opts.startup_timeout))
        except ValueError:
            return error(422, "invalid_query", "timeout must be a number of seconds")
        task = sup._background(sup.scale(count), "scale")
        try:
            result = await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            return error(
                504, "timeout", f"{count} workers not reached within {timeout:g} s", target=count
            )
        except Busy as e:
            return error(409, "conflict", str(e))
        return JSONResponse({"target": count, "state": "done", **result})

    async def _restart(role: str, index: int) -> Response:
        slots = sup.worker_slots if role == WORKER else sup.api_slots
        if not any(s.index == index for s in slots):
            return error(
                404, "not_found", f"no {'worker' if role == WORKER else 'API server'} {index}"
            )
        if sup.stopping:
            return error(409, "conflict", "the server is stopping")
        if sup.op_lock.locked():
            return error(409, "conflict", f"{sup.op_name} is in progress")
        sup._background(sup.restart(role, index), "restart")
        return JSONResponse({"restarting": {"role": role, "id": index}}, 202)

    async def restart_worker(request: Request) -> Response:
        slot = _worker_slot(request)
        if slot is None:
            return error(404, "not_found", f"no worker {request.path_params['id']}")
        return await _restart(WORKER, slot.index)

    async def restart_api(request: Request) -> Response:
        try:
            index = int(request.path_params["id"])
        except ValueError:
            return error(404, "not_found", f"no API server {request.path_params['id']}")
        return await _restart(API, index)

    async def reload(request: Request) -> Response:
        if sup.stopping:
            return error(409, "conflict", "the server is stopping")
        try:
            result = await sup.reload()
        except Busy as e:
            return error(409, "conflict", str(e))
        except OptionError as e:
            return error(422, "invalid_config", str(e))
        return JSONResponse(result)

    async def prometheus(request: Request) -> Response:
        body = await asyncio.to_thread(metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    routes = [
        Route("/health", health),
        Route("/ready", ready),
        Route("/v1/status", status),
        Route("/v1/workers", list_workers, methods=["GET"]),
        Route("/v1/workers", scale, methods=["PUT"]),
        Route("/v1/workers/{id}", get_worker),
        Route("/v1/workers/{id}/restart", restart_worker, methods=["POST"]),
        Route("/v1/api-servers/{id}/restart", restart_api, methods=["POST"]),
        Route("/v1/reload", reload, methods=["POST"]),
        Route("/metrics", prometheus),
        Route("/openapi.json", openapi),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(404, "not_found", f"no route {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error(405, "method_not_allowed", f"{request.method} is not allowed here")

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    if token:
        return _with_token(app, token)  # type: ignore[return-value]
    return app


def _with_token(app: Starlette, token: str) -> Callable[..., Awaitable[None]]:
    expected = f"Bearer {token}".encode()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # Liveness and readiness say nothing secret, and probes cannot send a token.
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(got, expected):
                resp = error(401, "unauthorized", "send Authorization: Bearer <admin token>")
                resp.headers["www-authenticate"] = "Bearer"
                await resp(scope, receive, send)
                return
        await app(scope, receive, send)

    return guarded


class AdminServer:
    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None]) -> None:
        self.server = server
        self.task = task

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self.task, 5)


async def start_admin(sup: Supervisor) -> AdminServer:
    o = sup.opts
    if not is_loopback(o.admin_host) and not o.admin_token:
        raise OptionError(
            f"--admin-host {o.admin_host} is not a loopback address: set --admin-token "
            "(or FERRYMAN_ADMIN_TOKEN) so that the admin API is not open to the network"
        )
    sock = listen.bind(o.admin_host, o.admin_port, backlog=128)
    sock.set_inheritable(False)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the supervisor owns the signals

    config = uvicorn.Config(
        build_app(sup),
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    return AdminServer(server, task)
