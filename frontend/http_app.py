"""The API process's ASGI app: parse HTTP, route to a model, send back its worker's answer.

Runs in the API process. Plain ASGI rather than a framework's Request/Response objects: this is
the hot path, and all it does is move bytes. The request body is not parsed here (except the
`model` field on the OpenAI routes when several models share them): it crosses to the worker as
bytes and is decoded once, there.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from ferryman import errors
from ferryman import protocol as p
from ferryman._version import __version__
from ferryman.frontend.dispatch import Dispatcher, Expired, Unavailable
from ferryman.frontend.metrics import ApiMetrics

log = logging.getLogger("ferryman.api")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_encode = msgspec.json.encode
_CT = b"content-type"
_CL = b"content-length"
_JSON = b"application/json"
SPEC_ROUTES = {
    "openai": ("/v1/chat/completions", "chat"),
    "openai_embedding": ("/v1/embeddings", "embeddings"),
}
_SPEC_OF_ROUTE = {route: spec for spec, (_, route) in SPEC_ROUTES.items()}


class _ModelField(msgspec.Struct):
    model: str | None = None


_model_field = msgspec.json.Decoder(_ModelField).decode
# LitServe's own words for what this process answers before a worker does (a LitAPI's client may
# compare them); the other kinds keep ferryman's message as their detail.
_LIT_DETAILS = {"payload_too_large": "Payload too large", "timeout": "Request timed out"}


class Answer(Exception):
    """An error answered before the request reaches a worker."""

    def __init__(self, status: int, kind: str, message: str, retry_after: bool = False) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.retry_after = status, kind, message, retry_after


class ModelRoute:
    """A model as this API process routes to it: its path and the shape of its errors."""

    __slots__ = ("max_body", "name", "path", "route", "spec")

    def __init__(self, r: p.ModelRoute) -> None:
        self.name = r.name
        self.path = r.api_path
        self.spec = r.spec
        self.max_body = r.max_payload_size
        self.route = r


class HttpApp:
    def __init__(
        self,
        dispatcher: Dispatcher,
        spec: p.ChildSpec,
        metrics: ApiMetrics,
    ) -> None:
        assert spec.api is not None
        self.dispatcher = dispatcher
        self.spec = spec
        self.server = spec.server
        self.metrics = metrics
        self.in_flight = 0
        self.served = 0
        self.draining = False
        self.drain_headers: list[tuple[bytes, bytes]] = []
        self.api_key = (spec.server.api_key or "").encode()
        # A LitServer's server (frontend/litserve_routes.py sets it): every error in LitServe's
        # {"detail": ...} shape, whichever model and route.
        self.litserver = False
        self.local: dict[str, Callable[[Scope], tuple[int, bytes]]] = {
            "/health": self._health,
            "/ready": self._ready,
            "/info": self._info,
            "/v1/models": self._models,
        }
        self.routes: dict[str, tuple[ModelRoute, str]] = {}
        self.spec_models: dict[str, list[ModelRoute]] = {}
        self.models: dict[str, ModelRoute] = {}
        self.set_routes(spec.api.routes)

    def set_routes(self, routes: list[p.ModelRoute]) -> None:
        """The models to route to (at start, and whenever the supervisor says they changed)."""
        models = {r.name: ModelRoute(r) for r in routes}
        table: dict[str, tuple[ModelRoute, str]] = {}
        by_spec: dict[str, list[ModelRoute]] = {}
        for m in models.values():
            table[m.path] = (m, "predict")
            if m.spec in SPEC_ROUTES:
                _, route = SPEC_ROUTES[m.spec]
                by_spec.setdefault(route, []).append(m)
        self.models, self.routes, self.spec_models = models, table, by_spec
        self.dispatcher.set_models(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await _refuse_websocket(send)
            return  # uvicorn runs us with lifespan="off"
        path: str = scope["path"]
        found = self.routes.get(path)
        if found is None and path in ("/v1/chat/completions", "/v1/embeddings"):
            await self._spec_route(path, scope, receive, send)
            return
        if found is not None:
            model, route = found
            if scope["method"] != "POST":
                await self._local_error(
                    model.name, route, send, 405, "method_not_allowed", f"{path} takes POST", model
                )
                return
            await self._model(model, route, scope, receive, send)
            return
        handler = self.local.get(path)
        if handler is None or (path == "/v1/models" and not self.spec_models):
            await self._local_error("", "none", send, 404, "not_found", f"no route {path}")
        elif scope["method"] not in ("GET", "HEAD"):
            await self._local_error(
                "",
                path.strip("/").replace("/", "_"),
                send,
                405,
                "method_not_allowed",
                f"{path} takes GET",
            )
        else:
            t0 = time.perf_counter()
            status = await _respond(send, *handler(scope), headers=self.drain_headers)
            self.metrics.done(
                "", path.strip("/").replace("/", "_"), status, time.perf_counter() - t0
            )

    async def _local_error(
        self,
        model: str,
        route: str,
        send: Send,
        status: int,
        kind: str,
        message: str,
        m: ModelRoute | None = None,
    ) -> None:
        shape = self._shape(m, route) if m is not None else errors.FERRYMAN
        await _respond(
            send, status, errors.body(shape, status, kind, message), headers=self.drain_headers
        )
        self.metrics.done(model, route, status, 0.0)

    def _shape(self, m: ModelRoute, route: str) -> str:
        if self.litserver:
            return errors.LITSERVE
        if route in _SPEC_OF_ROUTE:
            return errors.OPENAI
        if self.dispatcher.litserve(m.name):
            return errors.LITSERVE
        return errors.FERRYMAN

    # -- the model -------------------------------------------------------------------------------

    async def _spec_route(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        """/v1/chat/completions or /v1/embeddings: the model of the request's `model` field,
        or the only one with that spec."""
        route = "chat" if path.endswith("completions") else "embeddings"
        candidates = self.spec_models.get(route)
        if not candidates:
            await self._local_error("", "none", send, 404, "not_found", f"no route {path}")
            return
        if scope["method"] != "POST":
            await self._local_error(
                "", route, send, 405, "method_not_allowed", f"{path} takes POST", candidates[0]
            )
            return
        if len(candidates) == 1:
            await self._model(candidates[0], route, scope, receive, send)
            return
        t0 = time.perf_counter()
        self.in_flight += 1
        status = 500
        name = ""
        try:
            body = await self._read_body(scope, receive, None)
            try:
                name = _model_field(body).model or ""
            except msgspec.DecodeError:
                raise Answer(
                    400, "invalid_json", "the request body is not a JSON object with a model field"
                ) from None
            m = next((c for c in candidates if c.name == name), None)
            if m is None:
                names = ", ".join(c.name for c in candidates)
                raise Answer(
                    404,
                    "model_not_found",
                    f"the model {name!r} does not exist; this server has: {names}",
                )
            status = await self._answer(m, route, scope, receive, send, body)
        except Answer as e:
            status = await _respond(
                send,
                e.status,
                errors.body(errors.OPENAI, e.status, e.kind, e.message),
                retry_after=e.retry_after,
                headers=self.drain_headers,
            )
        finally:
            self.in_flight -= 1
            self.served += 1
            self.metrics.done(name, route, status, time.perf_counter() - t0)

    async def _model(
        self, m: ModelRoute, route: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        t0 = time.perf_counter()
        self.in_flight += 1
        status = 500
        try:
            body = await self._read_body(scope, receive, m.max_body)
            status = await self._answer(m, route, scope, receive, send, body)
        except Answer as e:
            shape = self._shape(m, route)
            detail = _LIT_DETAILS.get(e.kind) if shape == errors.LITSERVE else None
            status = await _respond(
                send,
                e.status,
                errors.body(shape, e.status, e.kind, e.message, detail=detail),
                retry_after=e.retry_after,
                headers=self.drain_headers,
            )
        finally:
            self.in_flight -= 1
            self.served += 1
            self.metrics.done(m.name, route, status, time.perf_counter() - t0)

    def _authorized(self, scope: Scope) -> bool:
        key = self.api_key
        for name, value in scope["headers"]:
            if name == b"x-api-key" and hmac.compare_digest(value, key):
                return True
            if (
                name == b"authorization"
                and value[:7].lower() == b"bearer "
                and hmac.compare_digest(value[7:], key)
            ):
                return True
        return False

    async def _answer(
        self, m: ModelRoute, route: str, scope: Scope, receive: Receive, send: Send, body: bytes
    ) -> int:
        if self.api_key and not self._authorized(scope):
            raise Answer(
                401,
                "unauthorized",
                "a valid X-API-Key (or Authorization: Bearer) header is required",
            )
        d = self.dispatcher
        try:
            # The headers go by reference; the dispatcher sends them only to a worker that
            # asked for the request.
            job = d.submit(m.name, route, body, scope["headers"], scope["query_string"])
        except Unavailable as e:
            raise Answer(503, e.kind, e.message, retry_after=True) from None
        try:
            reply, first = await job.fut
        except Unavailable as e:
            raise Answer(503, e.kind, e.message, retry_after=True) from None
        except Expired as e:
            raise Answer(504, "timeout", str(e)) from None
        except asyncio.CancelledError:
            d.give_up(job)
            if self.draining:
                # The stop's graceful_timeout ran out with this request unanswered: say so
                # rather than close the connection without a word.
                raise Answer(
                    503,
                    "stopping",
                    "the server stopped before this request was answered",
                    retry_after=True,
                ) from None
            raise
        if not reply.more:
            d.finish(job)
            return await _respond(
                send,
                reply.status,
                first,
                reply.content_type.encode(),
                headers=_extra(reply, self.drain_headers),
            )
        return await self._stream(job, reply, first, receive, send)

    async def _stream(
        self, job: Any, reply: p.Reply, first: bytes, receive: Receive, send: Send
    ) -> int:
        d = self.dispatcher
        # uvicorn's send() does not fail once the client has gone: watch receive() for the
        # disconnect, so that the worker is told (Cancel) and closes predict's generator.
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        watcher.add_done_callback(lambda _: d.give_up(job))
        head = [(_CT, reply.content_type.encode())] if reply.content_type else []
        if not self.litserver:  # LitServe sends no cache-control
            head.append((b"cache-control", b"no-cache"))
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [*head, *_extra(reply, self.drain_headers)],
            }
        )
        more = True
        try:
            await send({"type": "http.response.body", "body": first, "more_body": True})
            while more:
                try:
                    body, more = await d.next_chunk(job)
                except (Unavailable, Expired) as e:
                    # Headers are out: the best we can do is say so in the stream, then end it.
                    kind = e.kind if isinstance(e, Unavailable) else "timeout"
                    status = 503 if isinstance(e, Unavailable) else 504
                    body, more = _stream_error(reply.content_type, status, kind, str(e)), False
                if job.closed and more:
                    break  # client gone
                await send({"type": "http.response.body", "body": body, "more_body": more})
        except OSError:
            pass  # the client went away mid-stream
        finally:
            if not watcher.done():
                watcher.cancel()
            if more:
                d.give_up(job)
            else:
                d.finish(job)
        return reply.status

    async def _read_body(self, scope: Scope, receive: Receive, limit: int | None) -> bytes:
        for name, value in scope["headers"]:
            if name == _CL:
                try:
                    size = int(value)
                except ValueError:
                    raise Answer(400, "invalid_request", "bad Content-Length") from None
                if limit is not None and size > limit:
                    raise self._too_large(limit)
                break
        # A body that stalls is answered 408 by the protocol (ferryman/httpguard.py), which then
        # closes the connection: receive() here says http.disconnect.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Answer(499, "client_closed", "the client closed the connection")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if limit is not None and size > limit:
                    raise self._too_large(limit)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, limit: int) -> Answer:
        return Answer(
            413,
            "payload_too_large",
            f"the request body is larger than max_payload_size ({limit} bytes)",
        )

    def start_drain(self) -> None:
        """While draining, every answer says `connection: close`, so that keep-alive clients move
        to another API process after their current request instead of racing our close."""
        self.draining = True
        self.drain_headers = [(b"connection", b"close")]

    # -- local routes ----------------------------------------------------------------------------

    def _health(self, scope: Scope) -> tuple[int, bytes]:
        return 200, _encode({"status": "ok", "pid": os.getpid()})

    def _ready(self, scope: Scope) -> tuple[int, bytes]:
        wanted = _query_value(scope, b"model")
        names = [wanted] if wanted else list(self.models)
        if wanted and wanted not in self.models:
            return 404, errors.ferryman_error("not_found", f"no model {wanted!r}")
        counts = {n: self.dispatcher.ready_count(n) for n in names}
        ok = bool(names) and all(counts.values()) and not self.draining
        body: dict[str, Any] = {
            "status": "ready" if ok else "not_ready",
            "workers_ready": sum(counts.values()),
            "models": counts,
        }
        if not ok:
            body["reason"] = "draining" if self.draining else "a model has no ready worker"
        return (200 if ok else 503), _encode(body)

    def _info(self, scope: Scope) -> tuple[int, bytes]:
        models = [
            {
                "name": m.name,
                "app": m.route.app,
                "api_path": m.path,
                "spec": m.spec,
                "devices": m.route.devices,
                "workers_ready": self.dispatcher.ready_count(m.name),
                "options": m.route.options,
            }
            for m in self.models.values()
        ]
        out: dict[str, Any] = {
            "version": __version__,
            "api_server": {"slot": self.spec.slot, "pid": os.getpid()},
            "models": models,
            "workers": self.dispatcher.describe_workers(),
        }
        if len(models) == 1:  # one model: its details at the top, as before there were several
            one = models[0]
            out.update(
                model=one["name"], app=one["app"], devices=one["devices"], options=one["options"]
            )
        return 200, _encode(out)

    def _models(self, scope: Scope) -> tuple[int, bytes]:
        names = [m.name for ms in self.spec_models.values() for m in ms]
        return 200, _encode(
            {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": 0, "owned_by": "ferryman"}
                    for n in dict.fromkeys(names)
                ],
            }
        )


def _query_value(scope: Scope, key: bytes) -> str | None:
    for part in scope.get("query_string", b"").split(b"&"):
        k, _, v = part.partition(b"=")
        if k == key:
            from urllib.parse import unquote

            return unquote(v.decode("latin-1"))
    return None


def _extra(reply: p.Reply, drain: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    if not reply.headers:
        return drain
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers] + drain


def _stream_error(content_type: str, status: int, kind: str, message: str) -> bytes:
    """The last part of a stream that failed after its headers went out, in the stream's format."""
    if content_type == "text/event-stream":
        return b"data: " + errors.openai_error(status, kind, message) + b"\n\n"
    return errors.ferryman_error(kind, message) + b"\n"


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = _JSON,
    retry_after: bool = False,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> int:
    out = [(_CT, content_type), (_CL, str(len(body)).encode())]
    if not content_type or status in (204, 304):
        # An answer without a content type (a LitAPI's empty one) has no such header, and a
        # 204/304 no length either (as Starlette writes them).
        out = [h for h in out if h[1] and not (h[0] == _CL and status in (204, 304))]
    if headers:
        out += headers
    if retry_after:
        out.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})
    return status


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _refuse_websocket(send: Send) -> None:
    """This server speaks HTTP only: a WebSocket handshake gets a JSON 400 (the ASGI denial
    response), not a bare close."""
    body = errors.ferryman_error(
        "websocket_not_supported", "this server does not accept WebSocket connections"
    )
    try:
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 400,
                "headers": [(_CT, _JSON), (_CL, str(len(body)).encode())],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    except Exception:
        await send({"type": "websocket.close", "code": 1003})
