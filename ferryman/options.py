"""Server and model options: one table drives `Server(**kw)`, `ferryman serve` flags and the file.

Used by every process that reads configuration (the CLI, the supervisor, `Server`).

Every option is parsed by the same function whichever way it arrives, so a bad value gets the same
one-line message naming the option whether it came from Python, a flag or the config file.

Options have a scope. Server-wide ones (ports, API processes, logs, the admin port) exist once.
Model ones (devices, batching, timeouts, restart policy, ...) belong to each model; at the top
level of the file and as flags they are the defaults of every model, and a `[[models]]` table may
set its own. Precedence, lowest first: built-in default, the file's top level, what the app's own
code says (a LitServe API built with settings, `LitServer(...)`), the model's table, a flag.
"""

from __future__ import annotations

import ast
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from ferryman.board import CELLS, ROWS

Devices = str | int | list[int]
SERVER, MODEL = "server", "model"
# The load board has a row per API process and a cell per worker, live or replaced a moment ago
# (a rolling reload starts each replacement before the old one goes): half of each at most.
MAX_API_SERVERS = ROWS // 2
MAX_WORKERS = CELLS // 2


class OptionError(ValueError):
    """A bad option value or config file; the message names the option."""


# -- value parsers: each raises ValueError with what was expected ---------------------------------


def _pos_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a positive integer")
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a positive integer, got {value!r}") from None
    if n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(f"expected a positive integer, got {value!r}")
    return n


def _nonneg_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer >= 0")
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected an integer >= 0, got {value!r}") from None
    if n < 0 or (isinstance(value, float) and value != n):
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return n


def _port(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a port number, got {value!r}")
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a port number, got {value!r}") from None
    if not 0 <= n <= 65535 or (isinstance(value, float) and value != n):
        raise ValueError(f"expected a port number 0-65535, got {value!r}")
    return n


def _api_servers(value: Any) -> int:
    """API processes: each has a row of the load board, and a rolling reload needs a spare."""
    n = _pos_int(value)
    if n > MAX_API_SERVERS:
        raise ValueError(f"expected at most {MAX_API_SERVERS} API processes, got {value!r}")
    return n


def _max_workers(value: Any) -> int:
    """Workers: each has a cell of the load board, and a reload starts replacements first."""
    n = _pos_int(value)
    if n > MAX_WORKERS:
        raise ValueError(f"expected at most {MAX_WORKERS} workers, got {value!r}")
    return n


def _nonneg_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number of seconds, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"expected a finite number of seconds, got {value!r}")
    if x < 0:
        raise ValueError(f"expected a non-negative number, got {value!r}")
    return x


def _pos_float(value: Any) -> float:
    x = _nonneg_float(value)
    if x == 0:
        raise ValueError("expected a number greater than 0")
    return x


_NONE_WORDS = ("none", "off", "false", "no", "never")


def _timeout(value: Any) -> float | None:
    """Seconds, or no timeout at all: none / false / off, or 0 or -1 (LitServe's False and -1)."""
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
        return None
    if value is True:
        raise ValueError("expected a number of seconds, or none")
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a number of seconds, or none, got {value!r}") from None
    if x in (0, -1):
        return None
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"expected a finite number of seconds, or none, got {value!r}")
    return x


def _bytes_size(value: Any) -> int | None:
    """A size in bytes (`512M`, `2GiB` and the like accepted), or none."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
        return None
    if isinstance(value, bool):
        raise ValueError(f"expected a size in bytes, got {value!r}")
    if isinstance(value, int | float):
        return _pos_int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", str(value).lower())
    if not m:
        raise ValueError(f"expected a size such as 2G or 512M, got {value!r}")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2)]
    return _pos_int(int(float(m.group(1)) * scale))


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        s = str(value).lower()
        if s not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return s

    return parse


SPECS = {"openai": "openai", "openai-embedding": "openai_embedding"}


def _spec(value: Any) -> str | None:
    """`openai` (chat completions) or `openai-embedding` (embeddings); a spec object, such as
    ferryman's or LitServe's OpenAISpec(), stands for its name."""
    if value is not None and not isinstance(value, str):
        kind = type(value).__name__
        value = getattr(value, "name", None) or {
            "OpenAISpec": "openai",
            "OpenAIEmbeddingSpec": "openai-embedding",
        }.get(kind, kind)
    if value is None or str(value).lower() in ("", "none"):
        return None
    key = str(value).lower().replace("_", "-")
    if key not in SPECS:
        raise ValueError(f"expected openai or openai-embedding, got {value!r}")
    return SPECS[key]


def _devices(value: Any) -> Devices:
    """`auto`, a count (`2`), or a list of device indices (`0,2` or `[0, 2]`)."""
    err = f"expected auto, a count or a list such as 0,2, got {value!r}"
    if isinstance(value, bool):
        raise ValueError(err)
    if isinstance(value, int):
        if value < 1:
            raise ValueError(err)
        return value
    if isinstance(value, list | tuple):
        items = list(value)
    else:
        s = str(value).strip().lower()
        if s == "auto":
            return "auto"
        if "," not in s and not s.startswith("["):
            try:
                n = int(s)
            except ValueError:
                raise ValueError(err) from None
            if n < 1:
                raise ValueError(err)
            return n
        items = [p for p in s.strip("[]").split(",") if p.strip()]
    try:
        if any(isinstance(i, bool) or (isinstance(i, float) and i != int(i)) for i in items):
            raise ValueError
        indices = [int(i) for i in items]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(err) from None
    if not indices or any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(err)
    return indices


def _optional_pos_int(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "auto", "")):
        return None
    return _pos_int(value)


def _optional_str(value: Any) -> str | None:
    """A string (a key, a token), or none. A number or boolean in the config file is a mistake
    (`admin_token = true` must not make the token "True")."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _optional_path(value: Any) -> str | None:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a path, got {value!r}")
    return value


# Labels as in host names, plus `_`, which container networks allow in service names.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _host(value: Any) -> str:
    """An IP address or a host name (0.0.0.0 or :: for every interface). Whether a name
    resolves is seen when binding (exit status 1); a value that can never be an address is a
    bad option."""
    err = f"expected an IP address or a host name (0.0.0.0 for every interface), got {value!r}"
    if not isinstance(value, str) or not value:
        raise ValueError(err)
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if (
        len(value) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()  # 999.1.1.1 looks like an address and is none
    ):
        raise ValueError(err)
    return value


def _path(value: Any) -> str:
    s = str(value)
    if not s.startswith("/") or any(c.isspace() for c in s) or "?" in s or "#" in s:
        raise ValueError(f"expected a path starting with /, got {value!r}")
    return s


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _default_api_servers() -> int:
    # The CPUs this process may run on (a container's cpuset), not the whole machine's.
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


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
        _choice("auto", "cpu", "cuda"),
        "auto, cpu or cuda; auto picks cuda when a GPU is visible (nvidia-smi -L or "
        "CUDA_VISIBLE_DEVICES) [default: auto]",
        "KIND",
    ),
    Opt(
        "devices",
        MODEL,
        _devices,
        "auto, a count of devices, or a list of device indices such as 0,2 [default: auto: "
        "every visible GPU, or 1 for cpu]",
        "DEVICES",
    ),
    Opt(
        "workers_per_device",
        MODEL,
        _pos_int,
        "inference worker processes per device [default: 1]",
        "N",
    ),
    Opt(
        "api_path",
        MODEL,
        _path,
        "route of the model [default: /predict with one model, /NAME/predict with several]",
        "PATH",
    ),
    Opt(
        "spec",
        MODEL,
        _spec,
        "an API spec: openai serves /v1/chat/completions, openai-embedding /v1/embeddings "
        "[default: none]",
        "SPEC",
    ),
    # -- a model: requests
    Opt(
        "timeout",
        MODEL,
        _timeout,
        "seconds a request may wait for its answer (for a stream: for each item) before a 504; "
        "none for no limit [default: 30]",
        "SECONDS",
    ),
    Opt(
        "max_payload_size",
        MODEL,
        _bytes_size,
        "largest request body (bytes, or 10M, 1G), else 413 [default: 100M]",
        "BYTES",
    ),
    Opt(
        "max_batch_size",
        MODEL,
        _pos_int,
        "requests a worker batches into one predict [default: 1]",
        "N",
    ),
    Opt(
        "batch_timeout",
        MODEL,
        _nonneg_float,
        "longest a worker waits for more requests it knows are on their way before it runs a "
        "batch that is not full [default: 0]",
        "SECONDS",
    ),
    Opt(
        "stream",
        MODEL,
        _bool,
        "predict and encode_response are generators; items are streamed",
        is_flag=True,
    ),
    # -- a model: supervision of its workers
    Opt(
        "heartbeat_timeout",
        MODEL,
        _pos_float,
        "seconds of silence after which a worker is deemed hung and replaced; keep it above "
        "your longest predict [default: 60]",
        "SECONDS",
    ),
    Opt(
        "startup_timeout",
        MODEL,
        _pos_float,
        "seconds a new worker may take to become ready (setup included) [default: 600]",
        "SECONDS",
    ),
    Opt(
        "max_restarts",
        MODEL,
        _pos_int,
        "start failures (deaths before ready) within --restart-window after which a slot is "
        "marked failed [default: 5]",
        "K",
    ),
    Opt(
        "restart_window",
        MODEL,
        _pos_float,
        "seconds over which start failures are counted [default: 60]",
        "SECONDS",
    ),
    Opt(
        "backoff_max",
        MODEL,
        _pos_float,
        "longest wait between starts of a worker that keeps failing to start [default: 30]",
        "SECONDS",
    ),
    Opt(
        "failed_retry",
        MODEL,
        _pos_float,
        "seconds after which a failed slot is tried again [default: 300]",
        "SECONDS",
    ),
    Opt(
        "min_ready_workers",
        MODEL,
        _pos_int,
        "ready workers the model needs before the server reports ready [default: 1]",
        "N",
    ),
    Opt("max_workers", MODEL, _max_workers, "upper bound for scaling workers [default: 64]", "N"),
    Opt(
        "max_ongoing_requests",
        MODEL,
        _optional_pos_int,
        "most requests a worker holds at once, running and waiting at it, counted over every API "
        "process; more wait in the API processes [default: 16, or 2 x max_batch_size if more; "
        "64 for an async API]",
        "N",
    ),
    Opt(
        "max_requests",
        MODEL,
        _nonneg_int,
        "replace a worker after it served this many requests (its replacement first, then it "
        "drains); 0: never [default: 0]",
        "N",
    ),
    Opt(
        "max_requests_jitter",
        MODEL,
        _nonneg_int,
        "add 0..N to max_requests per worker, so that workers are not all replaced at once "
        "[default: 0]",
        "N",
    ),
    Opt(
        "worker_max_rss",
        MODEL,
        _bytes_size,
        "replace a worker once its resident memory passes this (bytes, or 2G, 512M) "
        "[default: none]",
        "BYTES",
    ),
    # -- the server
    Opt(
        "api_servers",
        SERVER,
        _api_servers,
        "uvicorn API processes sharing the port [default: one per core, at most 4]",
        "N",
    ),
    Opt(
        "host",
        SERVER,
        _host,
        "address the API port binds [default: 127.0.0.1]",
        "HOST",
        reloadable=False,
    ),
    Opt("port", SERVER, _port, "API port [default: 8000]", "PORT", reloadable=False),
    Opt(
        "max_queue",
        SERVER,
        _pos_int,
        "requests of a model an API process holds before answering 503 with Retry-After "
        "[default: 1024]",
        "N",
    ),
    Opt(
        "body_timeout",
        SERVER,
        _pos_float,
        "seconds a client may take to send its request body, else 408 [default: 60]",
        "SECONDS",
    ),
    Opt(
        "api_key",
        SERVER,
        _optional_str,
        "require this key in the X-API-Key header (or Authorization: Bearer) on the API port "
        "[default: $FERRYMAN_API_KEY, or LitServe's $LIT_SERVER_API_KEY]",
        "KEY",
        reloadable=False,
    ),
    Opt(
        "graceful_timeout",
        SERVER,
        _nonneg_float,
        "seconds a stopping process may take to finish its requests before SIGKILL [default: 30]",
        "SECONDS",
    ),
    Opt(
        "pid_file",
        SERVER,
        _optional_path,
        "write the supervisor's pid to this file",
        "PATH",
        reloadable=False,
    ),
    Opt(
        "admin_host",
        SERVER,
        _host,
        "address of the admin port [default: 127.0.0.1]",
        "HOST",
        reloadable=False,
    ),
    Opt(
        "admin_port",
        SERVER,
        _port,
        "admin port: status, scaling, models, /metrics; 0 disables it [default: 8001]",
        "PORT",
        reloadable=False,
    ),
    Opt(
        "admin_token",
        SERVER,
        _optional_str,
        "bearer token for the admin port; required when it binds a non-loopback address "
        "[default: $FERRYMAN_ADMIN_TOKEN]",
        "TOKEN",
        reloadable=False,
    ),
    Opt(
        "log_level",
        SERVER,
        _choice("debug", "info", "warning", "error"),
        "[default: info]",
        "LEVEL",
    ),
    Opt(
        "log_format",
        SERVER,
        _choice("logfmt", "json"),
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
    devices: Devices = "auto"
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
    api_servers: int = msgspec.field(default_factory=_default_api_servers)
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


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Routes of the API port that a model's api_path may not take.
RESERVED_PATHS = frozenset(
    {"/", "/health", "/ready", "/info", "/v1/models", "/v1/chat/completions", "/v1/embeddings"}
)


# -- parsing --------------------------------------------------------------------------------------


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


def read_config_file(path: str) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """(top-level options, the [[models]] tables or None). The top level may also be [ferryman].

    A model table holds `name` (optional with one model), `app` and any model option."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except IsADirectoryError:
        raise OptionError(f"--config: {path} is a directory, not a TOML file") from None
    except OSError as e:
        raise OptionError(f"--config: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise OptionError(f"--config: {path} is not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise OptionError(f"--config: {path} is not valid TOML: {e}") from None
    if isinstance(data.get("ferryman"), dict):
        data = data["ferryman"]
    origin = f"{path}: "
    models_raw = data.pop("models", None)
    top: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in ("app", "name"):
            top[name] = str(value)
            continue
        top.update(parse_mapping({name: value}, origin))
    if models_raw is None:
        return top, None
    if not isinstance(models_raw, list) or not all(isinstance(m, dict) for m in models_raw):
        raise OptionError(f"{origin}models must be an array of tables: [[models]]")
    if "app" in top:
        raise OptionError(f"{origin}'app' at the top level and [[models]]: use one or the other")
    models: list[dict[str, Any]] = []
    for i, raw in enumerate(models_raw):
        where = f"{origin}models[{i}]: "
        entry: dict[str, Any] = {}
        for key, value in raw.items():
            name = str(key).replace("-", "_")
            if name in ("app", "name"):
                if not isinstance(value, str) or not value:
                    raise OptionError(f"{where}{name} must be a non-empty string")
                entry[name] = value
            else:
                entry.update(parse_mapping({name: value}, where, scope=MODEL))
        if "app" not in entry:
            raise OptionError(f'{where}no app (e.g. app = "models.py:Embedder")')
        models.append(entry)
    return top, models


def parse_app_arg(arg: str) -> tuple[str | None, str]:
    """`NAME=APP` or `APP` -> (name or None, app)."""
    name, sep, app = arg.partition("=")
    if sep and ":" not in name and "/" not in name:
        return name, app
    return None, arg


def default_name(app: str) -> str:
    """The model name an APP gets when none is given: its class name, lower-cased."""
    return app.rpartition(":")[2].rpartition(".")[2].lower() or "model"


def check_app(app: str) -> None:
    module, sep, name = app.rpartition(":")
    if not sep or not module or not name:
        raise OptionError(
            f"APP {app!r} must look like app.py:MyAPI or package.module:MyAPI (or NAME=APP)"
        )


def check_name(name: str, origin: str = "") -> None:
    if not NAME_RE.match(name):
        raise OptionError(
            f"{origin}model name {name!r}: use letters, digits, '.', '_' and '-' (at most 64), "
            "starting with a letter or digit"
        )


def make_model(
    entry: Mapping[str, Any], defaults: Mapping[str, Any], overrides: Mapping[str, Any]
) -> ModelSpec:
    """A model from its entry (name, app, instance_file, code_options, its own options), the
    defaults every model shares, and the flags that beat both."""
    app = str(entry["app"])
    check_app(app)
    name = str(entry.get("name") or default_name(app))
    check_name(name)
    code = dict(entry.get("code_options") or {})
    own = {k: v for k, v in entry.items() if k in MODEL_OPTS}
    values = {**defaults, **code, **own, **overrides}
    return ModelSpec(
        name=name,
        app=app,
        options=ModelOptions(**values),
        instance_file=entry.get("instance_file"),
        code_options=code,
        main_file=entry.get("main_file"),
    )


def resolve_paths(models: Sequence[ModelSpec], origin: str = "") -> None:
    """Give every model its route, and refuse two models on one path or one name twice."""
    seen_names: dict[str, ModelSpec] = {}
    for m in models:
        if m.name in seen_names:
            raise OptionError(
                f"{origin}two models are named {m.name!r} ({seen_names[m.name].app} and {m.app})"
            )
        seen_names[m.name] = m
    single = len(models) == 1
    seen_paths: dict[str, ModelSpec] = {}
    for m in models:
        if m.options.api_path is None:
            m.options.api_path = "/predict" if single else f"/{m.name}/predict"
        path = m.options.api_path
        if path in RESERVED_PATHS:
            raise OptionError(
                f"{origin}--api-path {path} (model {m.name!r}): {path} is one of the server's own "
                "routes; pick another path"
            )
        other = seen_paths.get(path)
        if other is not None:
            raise OptionError(
                f"{origin}models {other.name!r} and {m.name!r} are both on {path}: give one "
                "another api_path"
            )
        seen_paths[path] = m


def build_config(
    config_file: str | None,
    flags: Mapping[str, Any],
    apps: Sequence[str] = (),
    launch: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults, then the config file, then the app's own settings (`launch`: what `Server(...)`
    or `LitServer(...)` said), then flags (already parsed).

    The models come from `apps` (`NAME=APP` or `APP`) if any, else from `launch`, else from the
    file's [[models]] tables or its top-level `app`."""
    top: dict[str, Any] = {}
    file_models: list[dict[str, Any]] | None = None
    if config_file:
        top, file_models = read_config_file(config_file)
    launch = launch or {}
    server_flags, model_flags = split_scopes(flags)
    top_server, top_model = split_scopes(top)
    launch_server, launch_model = split_scopes(launch.get("options", {}))
    server_values = {**top_server, **launch_server, **server_flags}
    server = ServerOptions(**server_values)
    if launch.get("litserve"):
        try:
            server.litserve = msgspec.convert(launch["litserve"], LitServerOptions)
        except msgspec.ValidationError as e:
            raise OptionError(f"the launch file's LitServer settings: {e}") from None
    if server.admin_token is None:
        server.admin_token = os.environ.get("FERRYMAN_ADMIN_TOKEN") or None
    if server.api_key is None:
        server.api_key = (
            os.environ.get("FERRYMAN_API_KEY") or os.environ.get("LIT_SERVER_API_KEY") or None
        )
    defaults = {**top_model, **launch_model}
    entries: list[dict[str, Any]]
    if apps:
        entries = []
        for arg in apps:
            name, app = parse_app_arg(arg)
            entries.append({"name": name, "app": app})
    elif launch.get("models"):
        entries = [dict(m) for m in launch["models"]]
    elif file_models is not None:
        entries = file_models
    elif top.get("app"):
        entries = [{"name": top.get("name"), "app": top["app"]}]
    else:
        entries = []
    models = [make_model(e, defaults, model_flags) for e in entries]
    models = _unique_names(models, explicit=[e.get("name") for e in entries])
    resolve_paths(models, f"{config_file}: " if config_file and not apps else "")
    return Config(server=server, models=models)


def _unique_names(models: list[ModelSpec], explicit: Sequence[Any]) -> list[ModelSpec]:
    """Models named after their class (no explicit name) get -2, -3 when a class serves twice; an
    explicit name used twice is an error, raised by resolve_paths."""
    taken = {m.name for m, given in zip(models, explicit, strict=True) if given}
    for m, given in zip(models, explicit, strict=True):
        if given:
            continue
        base, n = m.name, 1
        while m.name in taken:
            n += 1
            m.name = f"{base}-{n}"
        taken.add(m.name)
    return models


def model_from_request(
    body: Mapping[str, Any], defaults: ModelOptions, origin: str = ""
) -> ModelSpec:
    """A model registered at runtime (`POST /v1/models`): name, app and any model option."""
    body = dict(body)
    app = body.pop("app", None)
    name = body.pop("name", None)
    if not isinstance(app, str) or not app:
        raise OptionError(f'{origin}app is required (e.g. "models.py:Embedder")')
    if name is not None and not isinstance(name, str):
        raise OptionError(f"{origin}name must be a string")
    own = parse_mapping(body, origin, scope=MODEL)
    base = msgspec.structs.asdict(defaults)
    base["api_path"] = None
    return make_model({"name": name, "app": app, **own}, base, {})


def model_defaults(config_file: str | None, flags: Mapping[str, Any]) -> ModelOptions:
    """The options a model added at runtime starts from: the file's top level, then flags."""
    top: dict[str, Any] = {}
    if config_file:
        top, _ = read_config_file(config_file)
    _, top_model = split_scopes(top)
    _, model_flags = split_scopes(flags)
    return ModelOptions(**{**top_model, **model_flags})


def check_app_file(app: str) -> None:
    """For `file.py:Name`: the file exists and defines Name at its top level (read with ast, not
    imported). Dotted modules are left to the worker: finding one would import its package."""
    target, _, name = app.rpartition(":")
    if not (target.endswith(".py") or os.sep in target):
        return
    if not os.path.isfile(target):
        raise OptionError(f"app file {target!r} does not exist")
    try:
        with open(target, "rb") as f:
            tree = ast.parse(f.read(), filename=target)
    except (OSError, SyntaxError, ValueError):
        return  # the worker reports it with its traceback
    head = name.split(".")[0]
    if head not in _top_level_names(tree):
        raise OptionError(f"app {app!r}: {target} defines no {head!r} at its top level")


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(a.name == "*" for a in node.names):
                names.add("*")
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            # Definitions under if/try (a fallback import, a platform switch) count too.
            body = list(node.body) + list(getattr(node, "orelse", []))
            body += list(getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                body += handler.body
            names |= _top_level_names(ast.Module(body=body, type_ignores=[]))
    if "*" in names:
        return _Everything()
    return names


class _Everything(set[str]):
    """A module with `from x import *`: any name may be there."""

    def __contains__(self, item: object) -> bool:
        return True
