"""The API process's ASGI app: parse HTTP, hand the body to a worker, send back its answer.

Plain ASGI rather than a framework's Request/Response objects: this is the hot path, and all it
does is move bytes. The request body is not parsed here: it crosses to the worker as bytes and is
decoded once, there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from ferryman.workers.dispatch import Dispatcher, Expired, Unavailable

from ferryman import protocol as p
from ferryman._version import __version__

log = logging.getLogger("ferryman.api")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_encode = msgspec.json.encode
_CT = b"content-type"
_CL = b"content-length"
_JSON = b"application/json"
# While draining, every answer says `connection: close`, so that keep-alive clients move to
# another API process after their current request instead of racing our close of the connection.
_DRAIN_HEADERS: list[tuple[bytes, bytes]] = []


def error(status: int, kind: str, message: str) -> tuple[int, bytes]:
    return status, _encode({"error": {"type": kind, "message": message}})


ErrorFn = Callable[[int, str, str], tuple[int, bytes]]


def _openai_error(status: int, kind: str, message: str) -> tuple[int, bytes]:
    from ferryman.workers.openai_spec import openai_error

    return status, openai_error(status, kind, message)


class HttpApp:
    def __init__(self, dispatcher: Dispatcher, spec: p.ChildSpec, metrics: Any = None) -> None:
        self.dispatcher = dispatcher
        self.spec = spec
        self.options = spec.options
        self.metrics = metrics
        self.max_body = int(self.options["max_payload_size"])  # type: ignore[call-overload]
        self.in_flight = 0
        self.served = 0
        self.draining = False
        api_path = str(self.options["api_path"])
        # path -> (method, model route or None for a local handler, local handler)
        self.model_routes: dict[str, str] = {api_path: "predict"}
        self.local: dict[str, Callable[[], tuple[int, bytes]]] = {
            "/health": self._health,
            "/ready": self._ready,
            "/info": self._info,
        }
        # A spec's route answers its own errors in the spec's shape.
        self.errors: dict[str, ErrorFn] = {}
        if self.options.get("spec") == "openai":
            self.model_routes["/v1/chat/completions"] = "chat"
            self.local["/v1/models"] = self._models
            self.errors["chat"] = _openai_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # uvicorn runs us with lifespan="off"; websockets are not served
        path: str = scope["path"]
        route = self.model_routes.get(path)
        if route is not None:
            if scope["method"] != "POST":
                await _respond(send, *error(405, "method_not_allowed", f"{path} takes POST"))
                return
            await self._model(route, scope, receive, send)
            return
        handler = self.local.get(path)
        if handler is None:
            await _respond(send, *error(404, "not_found", f"no route {path}"))
        elif scope["method"] not in ("GET", "HEAD"):
            await _respond(send, *error(405, "method_not_allowed", f"{path} takes GET"))
        else:
            await _respond(send, *handler())

    # -- the model -------------------------------------------------------------------------------

    async def _model(self, route: str, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        self.in_flight += 1
        status = 500
        try:
            status = await self._answer(route, scope, receive, send)
        finally:
            self.in_flight -= 1
            self.served += 1
            if self.metrics is not None:
                self.metrics.done(route, status, time.perf_counter() - t0)

    async def _answer(self, route: str, scope: Scope, receive: Receive, send: Send) -> int:
        err = self.errors.get(route, error)
        body = await self._read_body(scope, receive, err)
        if isinstance(body, tuple):
            return await _respond(send, *body)
        d = self.dispatcher
        try:
            # The headers go by reference; the dispatcher sends them only to a worker that
            # asked for a per-request context.
            job = d.submit(route, body, scope["headers"])
        except Unavailable as e:
            return await _respond(send, *err(503, e.kind, e.message), retry_after=True)
        try:
            reply, first = await job.fut
        except Unavailable as e:
            return await _respond(send, *err(503, e.kind, e.message), retry_after=True)
        except Expired as e:
            return await _respond(send, *err(504, "timeout", str(e)))
        except asyncio.CancelledError:
            d.give_up(job)
            raise
        if not reply.more:
            d.finish(job)
            return await _respond(send, reply.status, first, reply.content_type.encode())
        return await self._stream(job, reply, first, receive, send)

    async def _stream(
        self, job: Any, reply: p.Reply, first: bytes, receive: Receive, send: Send
    ) -> int:
        d = self.dispatcher
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    (_CT, reply.content_type.encode()),
                    (b"cache-control", b"no-cache"),
                    *_DRAIN_HEADERS,
                ],
            }
        )
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        watcher.add_done_callback(lambda _: d.give_up(job))
        try:
            await send({"type": "http.response.body", "body": first, "more_body": True})
            more = True
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
        finally:
            if not watcher.done():
                watcher.cancel()
            if more:
                d.give_up(job)
            else:
                d.finish(job)
        return reply.status

    async def _read_body(
        self, scope: Scope, receive: Receive, err: ErrorFn = error
    ) -> bytes | tuple[int, bytes]:
        for name, value in scope["headers"]:
            if name == _CL:
                try:
                    if int(value) > self.max_body:
                        return self._too_large(err)
                except ValueError:
                    return err(400, "invalid_request", "bad Content-Length")
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return err(499, "client_closed", "the client closed the connection")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body:
                    return self._too_large(err)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, err: ErrorFn = error) -> tuple[int, bytes]:
        return err(
            413,
            "payload_too_large",
            f"the request body is larger than max_payload_size ({self.max_body} bytes)",
        )

    def start_drain(self) -> None:
        self.draining = True
        if not _DRAIN_HEADERS:
            _DRAIN_HEADERS.append((b"connection", b"close"))

    # -- local routes ----------------------------------------------------------------------------

    def _health(self) -> tuple[int, bytes]:
        return 200, _encode({"status": "ok", "pid": os.getpid()})

    def _ready(self) -> tuple[int, bytes]:
        n = self.dispatcher.ready_count
        if n and not self.draining:
            return 200, _encode({"status": "ready", "workers_ready": n})
        why = "draining" if self.draining else "no inference worker is ready"
        return 503, _encode({"status": "not_ready", "workers_ready": n, "reason": why})

    def _info(self) -> tuple[int, bytes]:
        opts = {k: v for k, v in self.options.items() if k not in ("admin_token", "instance_file")}
        app = str(self.options.get("app") or "")
        return 200, _encode(
            {
                "model": app.rpartition(":")[2],
                "app": app,
                "version": __version__,
                "api_server": {"slot": self.spec.slot, "pid": os.getpid()},
                "devices": self.spec.devices,
                "workers": self.dispatcher.describe_workers(),
                "options": opts,
            }
        )

    def _models(self) -> tuple[int, bytes]:
        model = str(self.options.get("app") or "model").rpartition(":")[2]
        return 200, _encode(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "created": 0, "owned_by": "ferryman"}],
            }
        )


def _stream_error(content_type: str, status: int, kind: str, message: str) -> bytes:
    """The last part of a stream that failed after its headers went out, in the stream's format."""
    if content_type == "text/event-stream":
        return b"data: " + _openai_error(status, kind, message)[1] + b"\n\n"
    return error(status, kind, message)[1] + b"\n"


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes = _JSON, retry_after: bool = False
) -> int:
    headers = [(_CT, content_type), (_CL, str(len(body)).encode())]
    if _DRAIN_HEADERS:
        headers += _DRAIN_HEADERS
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
