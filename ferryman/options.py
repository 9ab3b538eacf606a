"""Server and model options: one table drives `Server(**kw)`, `ferryman serve` flags and the file.

Used by every process that reads configuration (the CLI, the supervisor, `Server`).

Every option is parsed by the same function whichever way it arrives, so a bad value gets the same
one-line message naming the option whether it came from Python, a flag or the config file.

Options have a scope. Server-wide ones (ports, API processes, logs, the admin port) exist once.
Model ones (devices, batching, timeouts, restart policy, ...) belong to each model; at the top
level of the file and as flags they are the defaults of every model, and a `[[models]]` table may
set its own. Precedence, lowest first: built-in default, the file's top level, what the app's own
code says (a LitServe API built with settings, `LitServer(...)`), the model's table, a flag.

The parsers are in values.py; assembling a configuration from the file, flags and apps is in
config.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from ferryman import values as v

SERVER, MODEL = "server", "model"


class OptionError(ValueError):
    """A bad option value or config file; the message names the option."""


@dataclass(frozen=True)
class Opt:
    name: str
    scope: str  # SERVER or MODEL
    parse: Callable[[Any], Any]
    help: str
    metavar: str | None = None
    is_flag: bool = False  # a boolean switch: `--stream`
    reloadable: bool = True  # SIGHUP re-reads it; False: needs a full restart

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTS: tuple[Opt, ...] = (
    # -- a model: what and where
    Opt(
        "accelerator",
        MODEL,
        v.choice("auto", "cpu", "cuda"),
        "auto, cpu or cuda; auto picks cuda when a GPU is visible (nvidia-smi -L or "
        "CUDA_VISIBLE_DEVICES) [default: auto]",
        "KIND",
    ),
    Opt(
        "devices",
        MODEL,
        v.devices,
        "auto, a count of devices, or a list of device indices such as 0,2 [default: auto: "
        "every visible GPU, or 1 for cpu]",
        "DEVICES",
    ),
    Opt(
        "workers_per_device",
        MODEL,
        v.pos_int,
        "inference worker processes per device [default: 1]",
        "N",
    ),
    Opt(
        "api_path",
        MODEL,
        v.path,
        "route of the model [default: /predict with one model, /NAME/predict with several]",
        "PATH",
    ),
    Opt(
        "spec",
        MODEL,
        v.spec,
        "an API spec: openai serves /v1/chat/completions, openai-embedding /v1/embeddings "
        "[default: none]",
        "SPEC",
    ),
    # -- a model: requests
    Opt(
        "timeout",
        MODEL,
        v.timeout,
        "seconds a request may wait for its answer (for a stream: for each item) before a 504; "
        "none for no limit [default: 30]",
        "SECONDS",
    ),
    Opt(
        "max_payload_size",
        MODEL,
        v.bytes_size,
        "largest request body (bytes, or 10M, 1G), else 413 [default: 100M]",
        "BYTES",
    ),
    Opt(
        "max_batch_size",
        MODEL,
        v.pos_int,
        "requests a worker batches into one predict [default: 1]",
        "N",
    ),
    Opt(
        "batch_timeout",
        MODEL,
        v.nonneg_float,
        "longest a worker waits for more requests it knows are on their way before it runs a "
        "batch that is not full [default: 0]",
        "SECONDS",
    ),
    Opt(
        "stream",
        MODEL,
        v.boolean,
        "predict and encode_response are generators; items are streamed",
        is_flag=True,
    ),
    # -- a model: supervision of its workers
    Opt(
        "heartbeat_timeout",
        MODEL,
        v.pos_float,
        "seconds of silence after which a worker is deemed hung and replaced; keep it above "
        "your longest predict [default: 60]",
        "SECONDS",
    ),
    Opt(
        "startup_timeout",
        MODEL,
        v.pos_float,
        "seconds a new worker may take to become ready (setup included) [default: 600]",
        "SECONDS",
    ),
    Opt(
        "max_restarts",
        MODEL,
        v.pos_int,
        "start failures (deaths before ready) within --restart-window after which a slot is "
        "marked failed [default: 5]",
        "K",
    ),
    Opt(
        "restart_window",
        MODEL,
        v.pos_float,
        "seconds over which start failures are counted [default: 60]",
        "SECONDS",
    ),
    Opt(
        "backoff_max",
        MODEL,
        v.pos_float,
        "longest wait between starts of a worker that keeps failing to start [default: 30]",
        "SECONDS",
    ),
    Opt(
        "failed_retry",
        MODEL,
        v.pos_float,
        "seconds after which a failed slot is tried again [default: 300]",
        "SECONDS",
    ),
    Opt(
        "min_ready_workers",
        MODEL,
        v.pos_int,
        "ready workers the model needs before the server reports ready [default: 1]",
        "N",
    ),
    Opt("max_workers", MODEL, v.max_workers, "upper bound for scaling workers [default: 64]", "N"),
    Opt(
        "max_ongoing_requests",
        MODEL,
        v.optional_pos_int,
        "most requests a worker holds at once, running and waiting at it, counted over every API "
        "process; more wait in the API processes [default: 16, or 2 x max_batch_size if more; "
        "64 for an async API]",
        "N",
    ),
    Opt(
        "max_requests",
        MODEL,
        v.nonneg_int,
        "replace a worker after it served this many requests (its replacement first, then it "
        "drains); 0: never [default: 0]",
        "N",
    ),
    Opt(
        "max_requests_jitter",
        MODEL,
        v.nonneg_int,
        "add 0..N to max_requests per worker, so that workers are not all replaced at once "
        "[default: 0]",
        "N",
    ),
    Opt(
        "worker_max_rss",
        MODEL,
        v.bytes_size,
        "replace a worker once its resident memory passes this (bytes, or 2G, 512M) "
        "[default: none]",
        "BYTES",
    ),
    # -- the server
    Opt(
        "api_servers",
        SERVER,
        v.api_servers,
        "uvicorn API processes sharing the port [default: one per core, at most 4]",
        "N",
    ),
    Opt(
        "host",
        SERVER,
        v.host,
        "address the API port binds [default: 127.0.0.1]",
        "HOST",
        reloadable=False,
    ),
    Opt("port", SERVER, v.port, "API port [default: 8000]", "PORT", reloadable=False),
    Opt(
        "max_queue",
        SERVER,
        v.pos_int,
        "requests of a model an API process holds before answering 503 with Retry-After "
        "[default: 1024]",
        "N",
    ),
    Opt(
        "body_timeout",
        SERVER,
        v.pos_float,
        "seconds a client may take to send its request body, else 408 [default: 60]",
        "SECONDS",
    ),
    Opt(
        "api_key",
        SERVER,
        v.optional_str,
        "require this key in the X-API-Key header (or Authorization: Bearer) on the API port "
        "[default: $FERRYMAN_API_KEY, or LitServe's $LIT_SERVER_API_KEY]",
        "KEY",
        reloadable=False,
    ),
    Opt(
        "graceful_timeout",
        SERVER,
        v.nonneg_float,
        "seconds a stopping process may take to finish its requests before SIGKILL [default: 30]",
        "SECONDS",
    ),
    Opt(
        "pid_file",
        SERVER,
        v.optional_path,
        "write the supervisor's pid to this file",
        "PATH",
        reloadable=False,
    ),
    Opt(
        "admin_host",
        SERVER,
        v.host,
        "address of the admin port [default: 127.0.0.1]",
        "HOST",
        reloadable=False,
    ),
    Opt(
        "admin_port",
        SERVER,
        v.port,
        "admin port: status, scaling, models, /metrics; 0 disables it [default: 8001]",
        "PORT",
        reloadable=False,
    ),
    Opt(
        "admin_token",
        SERVER,
        v.optional_str,
        "bearer token for the admin port; required when it binds a non-loopback address "
        "[default: $FERRYMAN_ADMIN_TOKEN]",
        "TOKEN",
        reloadable=False,
    ),
    Opt(
        "log_level",
        SERVER,
        v.choice("debug", "info", "warning", "error"),
        "[default: info]",
        "LEVEL",
    ),
    Opt(
        "log_format",
        SERVER,
        v.choice("logfmt", "json"),
        "log line format on stderr [default: logfmt]",
        "FORMAT",
    ),
)


OPTS_BY_NAME = {o.name: o for o in OPTS}
SERVER_OPTS = frozenset(o.name for o in OPTS if o.scope == SERVER)
MODEL_OPTS = frozenset(o.name for o in OPTS if o.scope == MODEL)


class ModelOptions(msgspec.Struct, kw_only=True):
    """One model's options (the defaults of every model, at the top level)."""

    accelerator: str = "auto"
    devices: v.Devices = "auto"
    workers_per_device: int = 1
    api_path: str | None = None  # None: /predict with one model, else /NAME/predict
    spec: str | None = None
    timeout: float | None = 30.0
    max_payload_size: int | None = 100 * 1024 * 1024
    max_batch_size: int = 1
    batch_timeout: float = 0.0
    stream: bool = False
    heartbeat_timeout: float = 60.0
    startup_timeout: float = 600.0
    max_restarts: int = 5
    restart_window: float = 60.0
    backoff_max: float = 30.0
    failed_retry: float = 300.0
    min_ready_workers: int = 1
    max_workers: int = 64
    max_ongoing_requests: int | None = None  # None: a default that depends on the API
    max_requests: int = 0
    max_requests_jitter: int = 0
    worker_max_rss: int | None = None


class LitRoute(msgspec.Struct, kw_only=True):
    """A LitAPI of a `LitServer(...)`, as LitServe routes it."""

    model: str  # the model's name
    path: str  # LitServe's route: the api_path, or the spec's (/v1/chat/completions, ...)
    route: str = "predict"  # what the worker is asked: "predict", "chat" or "embeddings"
    stream: bool = False  # as /info reports it; a streaming API turns gzip off
    # The LitAPI has its own `authorize` (checked by its worker): LIT_SERVER_API_KEY is not.
    authorize: bool = False


class LitServerOptions(msgspec.Struct, kw_only=True):
    """What a LitServe file's `LitServer(...)` and `.run(...)` said about the server itself
    (frontend/litserve_routes.py answers it; ferryman/litserve.py fills it in)."""

    routes: list[LitRoute] = []
    healthcheck_path: str = "/health"
    info_path: str = "/info"
    model_metadata: Any = None
    # /info's "server" values as LitServer was given them (workers_per_device, timeout, ...).
    info: dict[str, Any] = {}
    track_requests: bool = False
    shutdown_path: str | None = None  # the shutdown API's route; None: not enabled
    shutdown_key: str | None = None
    # FastAPI's /openapi.json for these routes, built where the LitAPIs are (None: disabled),
    # and the pages that show it (path -> HTML: /docs, /redoc).
    openapi: str | None = None
    pages: dict[str, str] = {}
    # Starlette middlewares by "module:Class" with their keyword arguments (ferryman.litserve
    # accepts only starlette's own, which the API process may import).
    middlewares: list[tuple[str, dict[str, Any]]] = []
    gzip: bool = False  # LitServe gzips every answer of 1000 bytes or more when nothing streams


class ServerOptions(msgspec.Struct, kw_only=True):
    api_servers: int = msgspec.field(default_factory=v.default_api_servers)
    host: str = "127.0.0.1"
    port: int = 8000
    max_queue: int = 1024
    body_timeout: float = 60.0
    api_key: str | None = None
    graceful_timeout: float = 30.0
    pid_file: str | None = None
    admin_host: str = "127.0.0.1"
    admin_port: int = 8001
    admin_token: str | None = None
    log_level: str = "info"
    log_format: str = "logfmt"
    # Set only for a LitServe file's `LitServer(...)` (ferryman.litserve), never by a flag: the
    # API processes then answer LitServe's own routes as LitServe does.
    litserve: LitServerOptions | None = None


class ModelSpec(msgspec.Struct, kw_only=True):
    """A model: its name, the app that serves it, and its options."""

    name: str
    app: str  # path/to/file.py:Name or package.module:Name
    options: ModelOptions
    # A pickled instance (Server(instance), a LitServe file): workers load it instead of `app`.
    instance_file: str | None = None
    # Settings that came with the app's code (LitServer(...) arguments): re-applied on reload.
    code_options: dict[str, Any] = {}
    # The script that built the pickled instance (`python app.py`, `ferryman serve app.py`):
    # workers import it as `__main__` before unpickling, since what it defines (a callback, a
    # logger) pickles as `__main__.Name` even when the API's class lives in a library.
    main_file: str | None = None

    @property
    def api_path(self) -> str:
        assert self.options.api_path is not None, "resolved by Config"
        return self.options.api_path


class Config(msgspec.Struct, kw_only=True):
    server: ServerOptions
    models: list[ModelSpec]


def parse_value(name: str, value: Any, origin: str = "") -> Any:
    opt = OPTS_BY_NAME.get(name)
    if opt is None:
        raise OptionError(f"{origin}unknown option {name!r}")
    try:
        return opt.parse(value)
    except ValueError as e:
        raise OptionError(f"{origin}{opt.flag}: {e}") from None


def parse_mapping(
    values: Mapping[str, Any], origin: str = "", scope: str | None = None
) -> dict[str, Any]:
    """Parse option values; with `scope`, refuse options of the other scope, naming them."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        opt = OPTS_BY_NAME.get(name)
        if opt is not None and scope is not None and opt.scope != scope:
            where = "at the top level of the file" if opt.scope == SERVER else "per model"
            raise OptionError(f"{origin}{name!r} is a {opt.scope} option: set it {where}")
        out[name] = parse_value(name, value, origin)
    return out


def split_scopes(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    server = {k: v for k, v in values.items() if k in SERVER_OPTS}
    model = {k: v for k, v in values.items() if k in MODEL_OPTS}
    return server, model
