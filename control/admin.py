"""The admin HTTP API, served by the supervisor (starlette on uvicorn, in the supervisor's loop).

JSON in and out; errors are {"error": {"type", "message"}}. Bound to loopback by default; binding
it elsewhere requires a bearer token. Every operation only changes the desired state and lets the
reconcile step carry it out; one that arrives while another is under way merges with it (the
latest word wins), so nothing is refused for being busy. `?wait=true` answers once the change is
carried out (200), has failed (503, with why), or after `?timeout=` seconds (504; the change goes
on).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ferryman.config import RESERVED_PATHS, check_app_file, model_from_request
from ferryman.control.metrics import MetricsEndpoint
from ferryman.control.openapi import OPENAPI
from ferryman.control.status import model_status, slot_status, snapshot
from ferryman.httpguard import guarded_protocol
from ferryman.options import OptionError
from ferryman.supervisor import listen

if TYPE_CHECKING:
    from ferryman.supervisor.operations import Operations as Supervisor
    from ferryman.supervisor.operations import Outcome
    from ferryman.supervisor.pools import Pool


OPEN_PATHS = frozenset({"/health", "/ready"})
ADMIN_HEAD_TIMEOUT = 10.0  # seconds a client of the admin port may take to send its headers


class HttpError(Exception):
    def __init__(self, status: int, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.extra = status, kind, message, extra


def error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **extra}}, status)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_id(raw: str, what: str) -> int:
    # ASCII digits only: int() would take "٣" (Arabic-Indic three) and "+3" as well.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise HttpError(404, "not_found", f"no {what} {raw}")
    return int(raw)


def parse_wait(request: Request, default: bool = False) -> tuple[bool, float | None]:
    q = request.query_params
    raw = q.get("wait")
    if raw is None:
        wait = default
    elif raw.lower() in ("1", "true", "yes"):
        wait = True
    elif raw.lower() in ("0", "false", "no"):
        wait = False
    else:
        raise HttpError(422, "invalid_query", f"wait must be true or false, got {raw!r}")
    timeout = None
    if "timeout" in q:
        try:
            timeout = float(q["timeout"])
        except ValueError:
            timeout = math.nan
        if not math.isfinite(timeout) or timeout <= 0:
            raise HttpError(
                422,
                "invalid_query",
                f"timeout must be a number of seconds > 0, got {q['timeout']!r}",
            )
    return wait, timeout


async def json_body(request: Request) -> Any:
    try:
        return await request.json()
    except Exception:
        raise HttpError(422, "invalid_body", "send a JSON object") from None


def build_app(sup: Supervisor) -> Starlette:
    from ferryman.supervisor.supervisor import API_POOL, Stopping

    metrics = MetricsEndpoint(sup)
    token = sup.server.admin_token

    def pool_pids(names: list[str]) -> set[int]:
        return {c.pid for n in names for c in sup.registry.of(n)}

    async def carried_out(
        names: list[str], timeout: float | None, body: dict[str, Any], before: set[int]
    ) -> Response:
        outcome: Outcome = await sup.wait(names, timeout)
        after = pool_pids(names)
        result = {
            **body,
            "state": outcome.state,
            "started": sorted(after - before),
            "stopped": sorted(before - after),
            "kept": sorted(before & after),
        }
        if outcome.state == "done":
            return JSONResponse(result)
        if outcome.state == "timeout":
            return error(
                504, "timeout", f"not carried out within {timeout:g} s; it goes on", **result
            )
        return error(503, "failed", "; ".join(outcome.errors), **result)

    def the_model(name: str) -> Pool:
        pool = sup.models.get(name)
        if pool is None or pool.removing:
            raise HttpError(404, "not_found", f"no model {name!r}")
        return pool

    def only_model() -> Pool:
        live = [p for p in sup.models.values() if not p.removing]
        if len(live) != 1:
            names = ", ".join(p.name for p in live) or "none"
            raise HttpError(
                409,
                "several_models",
                f"this server has {len(live)} models ({names}): use /v1/models/NAME/workers",
            )
        return live[0]

    def not_stopping() -> None:
        if sup.stopping:
            raise HttpError(409, "conflict", "the server is stopping")

    # -- probes ---------------------------------------------------------------------------------

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "stopping": sup.stopping})

    async def ready(request: Request) -> Response:
        model = request.query_params.get("model")
        if model is not None and model not in sup.models:
            raise HttpError(404, "not_found", f"no model {model!r}")
        ok = sup.is_ready(model)
        body = {
            "status": "ready" if ok else "not_ready",
            "workers_ready": sup.ready_workers(model),
            "models": {
                name: sup.model_ready(pool)
                for name, pool in sup.models.items()
                if (model is None or name == model) and not pool.removing
            },
        }
        if not ok:
            body["reason"] = "stopping" if sup.stopping else "not every model has a ready worker"
        return JSONResponse(body, 200 if ok else 503)

    async def status(request: Request) -> Response:
        return JSONResponse(snapshot(sup))

    # -- workers of the one model (kept from single-model servers) -------------------------------

    async def list_workers(request: Request) -> Response:
        return JSONResponse(snapshot(sup)["workers"])

    async def get_worker(request: Request) -> Response:
        pool = only_model()
        index = parse_id(request.path_params["id"], "worker")
        if index not in pool.slots:
            raise HttpError(404, "not_found", f"no worker {index}")
        return JSONResponse(slot_status(sup, pool, pool.slots[index]))

    async def scale_only(request: Request) -> Response:
        return await _scale(request, only_model())

    async def restart_only_worker(request: Request) -> Response:
        pool = only_model()
        return await _restart(request, pool.name, parse_id(request.path_params["id"], "worker"))

    # -- models ---------------------------------------------------------------------------------

    async def list_models(request: Request) -> Response:
        return JSONResponse(
            {"models": [model_status(sup, p) for p in sup.models.values() if not p.removing]}
        )

    async def get_model(request: Request) -> Response:
        return JSONResponse(model_status(sup, the_model(request.path_params["name"])))

    async def add_model(request: Request) -> Response:
        not_stopping()
        wait, timeout = parse_wait(request)
        body = await json_body(request)
        if not isinstance(body, dict):
            raise HttpError(422, "invalid_body", 'send {"name": ..., "app": ..., options...}')
        try:
            spec = model_from_request(body, sup.defaults)
            check_app_file(spec.app)
        except OptionError as e:
            raise HttpError(422, "invalid_body", str(e)) from None
        if spec.name in sup.models:
            raise HttpError(409, "conflict", f"a model named {spec.name!r} exists")
        path = spec.options.api_path or f"/{spec.name}/predict"
        spec.options.api_path = path
        if path in RESERVED_PATHS:
            raise HttpError(422, "invalid_body", f"{path} is one of the server's own routes")
        used = {p.model.api_path: p.name for p in sup.models.values() if p.model and not p.removing}
        if path in used:
            raise HttpError(409, "conflict", f"model {used[path]!r} is on {path}")
        try:
            await sup.add_model(spec)
        except KeyError:
            raise HttpError(409, "conflict", f"a model named {spec.name!r} exists") from None
        except OptionError as e:
            raise HttpError(422, "invalid_body", str(e)) from None
        pool = sup.models[spec.name]
        if not wait:
            return JSONResponse(model_status(sup, pool), 202)
        outcome = await sup.wait_model_ready(spec.name, timeout)
        if outcome.state == "done":
            return JSONResponse(model_status(sup, pool), 201)
        if outcome.state == "timeout":
            return error(504, "timeout", f"model {spec.name!r} not ready within {timeout:g} s")
        return error(503, "model_failed", "; ".join(outcome.errors), model=spec.name)

    async def delete_model(request: Request) -> Response:
        not_stopping()
        pool = the_model(request.path_params["name"])
        wait, timeout = parse_wait(request)
        before = pool_pids([pool.name])
        sup.remove_model(pool.name)
        if not wait:
            return JSONResponse({"removing": pool.name, "stopping": sorted(before)}, 202)
        outcome = await sup.wait([pool.name], timeout)
        if outcome.state == "timeout":
            return error(
                504, "timeout", f"model {pool.name!r} still has workers after {timeout:g} s"
            )
        return JSONResponse({"removed": pool.name, "stopped": sorted(before)})

    async def scale_model(request: Request) -> Response:
        return await _scale(request, the_model(request.path_params["name"]))

    async def reload_model(request: Request) -> Response:
        not_stopping()
        pool = the_model(request.path_params["name"])
        wait, timeout = parse_wait(request, default=True)
        before = pool_pids([pool.name])
        names = await sup.reload(pool.name)
        if not wait:
            return JSONResponse({"model": pool.name, "state": "reloading"}, 202)
        return await carried_out(names, timeout, {"model": pool.name}, before)

    async def get_model_worker(request: Request) -> Response:
        pool = the_model(request.path_params["name"])
        index = parse_id(request.path_params["id"], "worker")
        if index not in pool.slots:
            raise HttpError(404, "not_found", f"no worker {index} in model {pool.name!r}")
        return JSONResponse(slot_status(sup, pool, pool.slots[index]))

    async def restart_model_worker(request: Request) -> Response:
        pool = the_model(request.path_params["name"])
        return await _restart(request, pool.name, parse_id(request.path_params["id"], "worker"))

    # -- operations -----------------------------------------------------------------------------

    async def _scale(request: Request, pool: Pool) -> Response:
        not_stopping()
        wait, timeout = parse_wait(request)
        body = await json_body(request)
        if not isinstance(body, dict) or len(body.keys() & {"count", "per_device"}) != 1:
            raise HttpError(422, "invalid_body", 'send {"count": N} or {"per_device": K}')
        if set(body) - {"count", "per_device"}:
            raise HttpError(
                422,
                "invalid_body",
                f"unknown field(s): {sorted(set(body) - {'count', 'per_device'})}",
            )
        key = "count" if "count" in body else "per_device"
        n = body[key]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise HttpError(422, "invalid_body", f"{key} must be an integer >= 1, got {n!r}")
        count = n if key == "count" else n * max(1, len(pool.devices))
        assert pool.model is not None
        limit = pool.model.options.max_workers
        if count > limit:
            raise HttpError(422, "invalid_body", f"{count} workers is above max_workers ({limit})")
        before = pool_pids([pool.name])
        sup.scale(pool.name, count)
        if not wait:
            return JSONResponse({"model": pool.name, "target": count, "state": "scaling"}, 202)
        return await carried_out(
            [pool.name], timeout, {"model": pool.name, "target": count}, before
        )

    async def _restart(request: Request, pool_name: str, index: int) -> Response:
        not_stopping()
        wait, timeout = parse_wait(request)
        pool = sup.api_pool if pool_name == API_POOL else the_model(pool_name)
        if index not in pool.slots:
            what = "API server" if pool_name == API_POOL else "worker"
            raise HttpError(404, "not_found", f"no {what} {index}")
        before = pool_pids([pool_name])
        sup.restart(pool_name, index)
        body = {
            "restarting": {
                "role": str(pool.role),
                "model": pool.name if pool.model else None,
                "id": index,
            }
        }
        if not wait:
            return JSONResponse(body, 202)
        return await carried_out([pool_name], timeout, body, before)

    async def restart_api(request: Request) -> Response:
        return await _restart(request, API_POOL, parse_id(request.path_params["id"], "API server"))

    async def reload(request: Request) -> Response:
        not_stopping()
        wait, timeout = parse_wait(request, default=True)
        before = pool_pids([API_POOL, *sup.models])
        try:
            names = await sup.reload()
        except OptionError as e:
            raise HttpError(422, "invalid_config", str(e)) from None
        if not wait:
            return JSONResponse({"state": "reloading"}, 202)
        return await carried_out(names, timeout, {}, before)

    async def prometheus(request: Request) -> Response:
        # Rendered on the loop: the state it reads is the loop's, and it takes milliseconds.
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/v1/status", status, methods=["GET"]),
        Route("/v1/workers", list_workers, methods=["GET"]),
        Route("/v1/workers", scale_only, methods=["PUT"]),
        Route("/v1/workers/{id}", get_worker, methods=["GET"]),
        Route("/v1/workers/{id}/restart", restart_only_worker, methods=["POST"]),
        Route("/v1/api-servers/{id}/restart", restart_api, methods=["POST"]),
        Route("/v1/reload", reload, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models", add_model, methods=["POST"]),
        Route("/v1/models/{name}", get_model, methods=["GET"]),
        Route("/v1/models/{name}", delete_model, methods=["DELETE"]),
        Route("/v1/models/{name}/workers", scale_model, methods=["PUT"]),
        Route("/v1/models/{name}/reload", reload_model, methods=["POST"]),
        Route("/v1/models/{name}/workers/{id}", get_model_worker, methods=["GET"]),
        Route("/v1/models/{name}/workers/{id}/restart", restart_model_worker, methods=["POST"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(404, "not_found", f"no route {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error(405, "method_not_allowed", f"{request.method} is not allowed here")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HttpError)
        return error(exc.status, exc.kind, exc.message, **exc.extra)

    async def stopping(request: Request, exc: Exception) -> Response:
        return error(409, "conflict", str(exc))

    async def internal(request: Request, exc: Exception) -> Response:
        import logging

        logging.getLogger("ferryman.supervisor").error(
            f"admin {request.method} {request.url.path} failed: {exc!r}", exc_info=exc
        )
        return error(500, "internal_error", "the admin request failed; the details are in the log")

    app = Starlette(
        routes=routes,
        exception_handlers={
            404: not_found,
            405: not_allowed,
            HttpError: http_error,
            Stopping: stopping,
            Exception: internal,
        },
    )
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
    o = sup.server
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
        # A client that sends nothing, or headers without end, must not hold the supervisor's
        # fds or memory (the admin port may face the network, token or not).
        http=guarded_protocol(ADMIN_HEAD_TIMEOUT),
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
