"""The API process's LitServe routes and HTTP shapes, for a LitServe file's `LitServer(...)`.

Runs in the API process, in front of HttpApp (http_app.py), only when the server options carry
`litserve` (ferryman/litserve.py fills them in from `LitServer(...)` and `.run(...)`). What it
answers as LitServe 0.2.19 does (a FastAPI app), byte for byte where a client could tell:

- `GET /` (`litserve running`), `GET {healthcheck_path}` (`ok` / 503 `not ready`, no content
  type), `GET {info_path}` (LitServe's `{"model", "server"}`), `POST {shutdown_path}` when the
  shutdown API is enabled (a Bearer key; the server then stops gracefully);
- each LitAPI on its LitServe route: `api_path`, or its spec's (`/v1/chat/completions` with
  `OPTIONS`, `/v1/embeddings` with `GET`), the model behind it reached through HttpApp;
- `LIT_SERVER_API_KEY`: `X-API-Key` on the model routes and, as LitServe does, on `/`, health
  and info (not on the OpenAPI pages), with FastAPI's 401 bodies;
- `/openapi.json`, `/docs`, `/redoc` as FastAPI serves them (the document itself was built by
  FastAPI where the LitAPIs are, before the supervisor started: this process imports no user
  code), none with `disable_openapi_url`;
- FastAPI's 404 / 405 (+ `allow`) bodies and Starlette's trailing-slash 307;
- gzip (Starlette's GZipMiddleware, as LitServe adds it when no LitAPI streams) and the
  starlette middlewares the file listed (only starlette's own classes are accepted there).

`/ready` stays ferryman's (probes), and so does `/v1/models` when a LitAPI has an OpenAI spec.
"""

from __future__ import annotations

import hmac
import importlib
import json
import logging
import os
import signal
import time
from typing import Any

from ferryman import protocol as p
from ferryman.options import LitServerOptions

log = logging.getLogger("ferryman.api")

Scope = dict[str, Any]
Send = Any
Receive = Any

NOT_FOUND = b'{"detail":"Not Found"}'
NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'
NOT_AUTHENTICATED = b'{"detail":"Not authenticated"}'
BAD_API_KEY = (
    b'{"detail":"Invalid API Key. Check that you are passing a correct \'X-API-Key\' in your '
    b'header."}'
)
BAD_SHUTDOWN_KEY = (
    b'{"detail":"Invalid Bearer token for Shutdown API. Check that you are passing a correct '
    b"'Authorization: Bearer <SHUTDOWN_API_KEY>' in your header.\"}"
)
_JSON = b"application/json"
_HTML = b"text/html; charset=utf-8"
# The LitServe routes that LIT_SERVER_API_KEY guards besides the models'.
_GUARDED_LOCAL = ("index", "health", "info")
_FERRYMAN_LOCAL = {"ready": "/ready", "models": "/v1/models"}


class Target:
    """What a path of the API port leads to: a model's route or one of LitServe's own."""

    __slots__ = ("allow", "authorize", "kind", "methods", "model", "route")

    def __init__(
        self,
        kind: str,
        methods: tuple[str, ...],
        model: str = "",
        route: str = "",
        authorize: bool = False,
    ) -> None:
        self.kind = kind  # "model" (its POST; a spec route's OPTIONS/GET), or a local route
        self.methods = methods
        # FastAPI answers a wrong method with the methods of the first route on that path.
        self.allow = methods[0].encode() if kind != "docs" else b"GET, HEAD"
        self.model = model
        self.route = route
        self.authorize = authorize


class LitFront:
    """The ASGI app of an API process serving a LitServer: LitServe's routes, then HttpApp."""

    def __init__(self, app: Any, opts: LitServerOptions) -> None:
        self.app = app
        self.opts = opts
        # LitServe checks the key its own way (X-API-Key only, its bodies, also on /, health
        # and info): HttpApp must not check it again.
        self.key: bytes = app.api_key
        app.api_key = b""
        app.litserver = True
        self.shutdown_key = (opts.shutdown_key or "").encode()
        self.openapi = opts.openapi.encode() if opts.openapi is not None else None
        self.pages = {k: v.encode() for k, v in opts.pages.items()}
        # With one LitAPI that has its own `authorize`, LitServe guards /, health and info
        # with it; that method runs in the worker here, so those routes stay open.
        self.local_guarded = not (len(opts.routes) == 1 and opts.routes[0].authorize)
        self._built_for: object = None
        self._table: dict[str, Target] = {}

    # -- routing ---------------------------------------------------------------------------------

    def table(self) -> dict[str, Target]:
        """Path -> target, rebuilt whenever the supervisor changed the models (set_routes)."""
        models = self.app.models
        if models is self._built_for:
            return self._table
        o = self.opts
        t: dict[str, Target] = {
            "/": Target("index", ("GET",)),
            o.healthcheck_path: Target("health", ("GET",)),
            o.info_path: Target("info", ("GET",)),
        }
        if o.shutdown_path:
            t[o.shutdown_path] = Target("shutdown", ("POST",))
        t.setdefault("/ready", Target("ready", ("GET", "HEAD")))
        if self.openapi is not None:
            t.setdefault("/openapi.json", Target("openapi", ("GET", "HEAD")))
            for path in self.pages:
                t.setdefault(path, Target("docs", ("GET", "HEAD")))
        listed = {r.model: r for r in o.routes}
        for r in o.routes:
            if r.model not in models:
                continue
            methods: tuple[str, ...] = ("POST",)
            if r.route == "chat":
                methods = ("POST", "OPTIONS")
            elif r.route == "embeddings":
                methods = ("POST", "GET")
            t.setdefault(r.path, Target("model", methods, r.model, r.route, r.authorize))
        # Models added at runtime (admin API) are ferryman's: on their api_path.
        for name, m in models.items():
            if name not in listed:
                t.setdefault(m.path, Target("model", ("POST",), name, "predict"))
        if any(r.route == "chat" for r in o.routes):
            t.setdefault("/v1/models", Target("models", ("GET", "HEAD")))
        self._built_for, self._table = models, t
        return t

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        table = self.table()
        target = table.get(path)
        if target is None:
            await self._no_route(scope, send, table)
            return
        if method not in target.methods:
            await self._answer(
                send, 405, NOT_ALLOWED, _JSON, [(b"allow", target.allow)], route=target.kind
            )
            return
        if target.kind == "model":
            if self.key and not target.authorize and not await self._key_ok(scope, send):
                return
            if method == "POST":
                m = self.app.models.get(target.model)
                if m is None:  # removed a moment ago
                    await self._answer(send, 404, NOT_FOUND, _JSON, route="none")
                    return
                await self.app._model(m, target.route, scope, receive, send)
            else:  # LitServe's OPTIONS (chat) / GET (embeddings) on a spec route: 200, empty
                await self._answer(send, 200, b"", None, route=target.route)
            return
        guarded = target.kind in _GUARDED_LOCAL and self.key and self.local_guarded
        if guarded and not await self._key_ok(scope, send):
            return
        await self._local(target.kind, scope, send)

    async def _no_route(self, scope: Scope, send: Send, table: dict[str, Target]) -> None:
        """Starlette's router: a path that matches with its trailing slash toggled is
        redirected (307), anything else is FastAPI's 404."""
        path: str = scope["path"]
        if path != "/":
            other = path.rstrip("/") if path.endswith("/") else path + "/"
            if other in table:
                from starlette.datastructures import URL

                url = str(URL(scope={**scope, "path": other}))
                await self._answer(
                    send, 307, b"", None, [(b"location", url.encode("latin-1"))], route="none"
                )
                return
        await self._answer(send, 404, NOT_FOUND, _JSON, route="none")

    async def _key_ok(self, scope: Scope, send: Send) -> bool:
        """FastAPI's APIKeyHeader("X-API-Key") and LitServe's api_key_auth."""
        given = b""
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                given = value
                break
        if not given:
            await self._answer(
                send, 401, NOT_AUTHENTICATED, _JSON, [(b"www-authenticate", b"APIKey")], "auth"
            )
            return False
        if not hmac.compare_digest(given, self.key):
            await self._answer(send, 401, BAD_API_KEY, _JSON, route="auth")
            return False
        return True

    # -- LitServe's own routes -------------------------------------------------------------------

    async def _local(self, kind: str, scope: Scope, send: Send) -> None:
        if kind == "index":
            await self._answer(send, 200, b"litserve running", None, route=kind)
        elif kind == "health":
            ok = self.healthy()
            await self._answer(
                send, 200 if ok else 503, b"ok" if ok else b"not ready", None, route=kind
            )
        elif kind == "info":
            await self._answer(send, 200, self.info(), _JSON, route=kind)
        elif kind == "shutdown":
            await self._shutdown(scope, send)
        elif kind == "openapi":
            assert self.openapi is not None
            await self._answer(send, 200, self.openapi, _JSON, route=kind)
        elif kind == "docs":
            await self._answer(send, 200, self.pages[scope["path"]], _HTML, route=kind)
        else:  # ferryman's own /ready and /v1/models
            t0 = time.perf_counter()
            status, body = self.app.local[_FERRYMAN_LOCAL[kind]](scope)
            await _send(send, status, body, _JSON, self.app.drain_headers)
            self.app.metrics.done("", kind, status, time.perf_counter() - t0)

    def healthy(self) -> bool:
        """LitServe: every worker set up and every LitAPI's health() true. Here: every LitAPI's
        model has a ready worker this process can reach, and none of them reports its
        health() false (workers tell, WorkerReady/WorkerHealth)."""
        d = self.app.dispatcher
        names = [r.model for r in self.opts.routes if r.model in self.app.models]
        if not names or self.app.draining:
            return False
        return all(d.ready_count(n) > 0 and d.healthy(n) for n in names)

    def info(self) -> bytes:
        """LitServe's /info: the file's metadata, and the server settings as they were given
        (or as a flag changed them)."""
        o = self.opts
        given = o.info
        models = self.app.models
        first = next((models[r.model] for r in o.routes if r.model in models), None)
        opts: dict[str, Any] = first.route.options if first is not None else {}
        devices: Any = ["cpu"]
        if first is not None and any(d != "cpu" for d in first.route.devices):
            devices = [[d] for d in first.route.devices]
        stream = {}
        for r in o.routes:
            m = models.get(r.model)
            stream[r.path] = bool(r.stream or (m is not None and m.route.options.get("stream")))
        server = {
            "devices": devices,
            "workers_per_device": _as_given(
                given.get("workers_per_device", 1), opts.get("workers_per_device")
            ),
            "timeout": _as_given_timeout(given.get("timeout", 30), opts.get("timeout", 30.0)),
            "stream": stream,
            "max_payload_size": _as_given(
                given.get("max_payload_size"), opts.get("max_payload_size")
            ),
            "track_requests": o.track_requests,
        }
        # FastAPI's JSONResponse: compact, UTF-8, insertion order.
        return json.dumps(
            {"model": o.model_metadata, "server": server},
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
        ).encode()

    async def _shutdown(self, scope: Scope, send: Send) -> None:
        """FastAPI's OAuth2PasswordBearer, then LitServe's key check; the stop is the
        supervisor's graceful one (SIGTERM), so the server exits 0 once requests are done."""
        auth = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value.decode("latin-1")
                break
        scheme, _, given = auth.partition(" ")
        if not auth or scheme.lower() != "bearer":
            await self._answer(
                send, 401, NOT_AUTHENTICATED, _JSON, [(b"www-authenticate", b"Bearer")], "auth"
            )
            return
        if not self.shutdown_key or not hmac.compare_digest(given.encode(), self.shutdown_key):
            await self._answer(send, 401, BAD_SHUTDOWN_KEY, _JSON, route="auth")
            return
        await self._answer(
            send, 200, b"Server is initiating graceful shutdown.", None, route="shutdown"
        )
        spec: p.ChildSpec = self.app.spec
        log.warning("the shutdown API was called: stopping the server")
        try:
            os.kill(spec.supervisor_pid, signal.SIGTERM)
        except ProcessLookupError:  # pragma: no cover - the supervisor is gone already
            pass

    async def _answer(
        self,
        send: Send,
        status: int,
        body: bytes,
        content_type: bytes | None,
        headers: list[tuple[bytes, bytes]] | None = None,
        route: str = "none",
    ) -> None:
        await _send(send, status, body, content_type, [*(headers or ()), *self.app.drain_headers])
        self.app.metrics.done("", route, status, 0.0)


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes | None,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """An answer as Starlette writes one: content-length first, the content type only when the
    response has one (LitServe's plain `Response(content=...)` has none)."""
    out = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        out.append((b"content-type", content_type))
    out += headers
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


def _as_given(given: Any, effective: Any) -> Any:
    """/info shows a setting as the file gave it, unless a flag (or ferryman's default, for a
    value LitServe leaves unset) made it something else."""
    if effective is None or given == effective or isinstance(given, list | dict):
        return given  # a list or dict (per LitAPI) is only ever the file's
    return effective


def _as_given_timeout(given: Any, effective: float | None) -> Any:
    off = given is False or given in (0, -1)
    if (effective is None and off) or (effective is not None and not off and given == effective):
        return given
    if effective is None:
        return False
    return int(effective) if float(effective).is_integer() else effective


def wrap(app: Any, opts: LitServerOptions) -> Any:
    """The API process's ASGI app for a LitServer: LitFront, inside the file's starlette
    middlewares (the first listed innermost, as FastAPI's add_middleware stacks them), inside
    LitServe's gzip when nothing streams."""
    asgi: Any = LitFront(app, opts)
    for target, kwargs in opts.middlewares:
        module, _, name = target.partition(":")
        asgi = getattr(importlib.import_module(module), name)(asgi, **kwargs)
    if opts.gzip:
        from starlette.middleware.gzip import GZipMiddleware

        asgi = GZipMiddleware(asgi, minimum_size=1000)
    return asgi
