"""LitServe's names with ferryman's `LitServer`, in the user's process: `import ferryman.litserve`.

It runs where the user's file runs: `python server.py` after that one-line switch (`import
ferryman.litserve as ls`), or `ferryman serve server.py`, which puts this `LitServer` in place of
LitServe's (in `litserve` and `litserve.server`) before it runs the file. Every other name is
LitServe's own (`LitAPI`, `Callback`, `Logger`, `OpenAISpec`, `OpenAIEmbeddingSpec`, `Request`,
`Response`, `test_examples`, ...), so LitServe must be installed.

`LitServer(...)` takes LitServe 0.2.19's arguments and checks them as LitServe does, with
LitServe's own messages (its LitAPI validation, `pre_setup`, runs here on a copy of each API);
what ferryman cannot serve it refuses by name (LitServerError). `.run(...)` takes LitServe's
arguments too, writes LitServe's `client.py`, and then replaces this process (exec) with
ferryman's supervisor, handing it every LitAPI (pickled, with the server's callbacks and loggers
attached for the workers) and what the API processes need to answer LitServe's own routes
(ferryman.options.LitServerOptions). Flags of the `ferryman serve` command that ran the file beat
what the file says. Everything the file imported (torch, a model) dies with the exec: only the
workers load it again.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import secrets
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

try:
    import litserve as _ls
    from litserve import (
        Callback,
        LitAPI,
        Logger,
        OpenAIEmbeddingSpec,
        OpenAISpec,
        Request,
        Response,
        test_examples,
    )
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"ferryman.litserve needs LitServe, which is not installed ({e}): pip install litserve"
    ) from e

from ferryman.config import default_name
from ferryman.options import MODEL_OPTS, OPTS_BY_NAME, SERVER_OPTS, OptionError, parse_mapping
from ferryman.server import (
    CLI_ARGS_ENV,
    _app_spec,
    _jsonable,
    _pickle_instance,
    main_file,
    run_launch,
)

__all__ = [
    "Callback",
    "LitAPI",
    "LitServer",
    "LitServerError",
    "Logger",
    "OpenAIEmbeddingSpec",
    "OpenAISpec",
    "Request",
    "Response",
    "test_examples",
]

# Set on each pickled LitAPI for its workers (workers/hooks.py and workers/loggers.py read them):
# LitServe keeps callbacks and loggers on the server, which ferryman's workers never see.
CALLBACKS_ATTR = "_ferryman_callbacks"
LOGGERS_ATTR = "_ferryman_loggers"

# The starlette middlewares an API process may run: starlette's own code, given by name and
# JSON arguments (a middleware of the user's would put user code in the API process).
ALLOWED_MIDDLEWARES = {
    "starlette.middleware.cors:CORSMiddleware",
    "starlette.middleware.gzip:GZipMiddleware",
    "starlette.middleware.httpsredirect:HTTPSRedirectMiddleware",
    "starlette.middleware.trustedhost:TrustedHostMiddleware",
}
# The documents travel to each API process in its environment (the child spec), whose entries
# Linux caps at 128 KiB each.
_MAX_DOCUMENTS = 64 * 1024
_TLS_KWARGS = ("ssl_keyfile", "ssl_certfile", "ssl_keyfile_password", "ssl_version")
_LOG_LEVELS = {
    "trace": "debug",
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
    "critical": "error",
}


class LitServerError(OptionError):
    """A LitServer argument that LitServe refuses (LitServe's message), or a feature ferryman
    does not serve (named). `ferryman serve FILE.py` prints it as one line, exit status 2."""


def __getattr__(name: str) -> Any:
    """Any other name of LitServe's package (`ls.specs`, `ls.callbacks`, `ls.__version__`)."""
    try:
        return getattr(_ls, name)
    except AttributeError:
        raise AttributeError(f"module 'ferryman.litserve' has no attribute {name!r}") from None


def _refuse(what: str, why: str) -> LitServerError:
    return LitServerError(f"LitServer: {what} is not supported by ferryman: {why}")


class LitServer:
    """LitServe's LitServer, served by ferryman's supervisor (see the module's docstring)."""

    def __init__(
        self,
        lit_api: Any,
        accelerator: Any = "auto",
        devices: Any = "auto",
        workers_per_device: Any = 1,
        timeout: Any = 30,
        healthcheck_path: str = "/health",
        info_path: str = "/info",
        shutdown_path: str = "/shutdown",
        enable_shutdown_api: bool = False,
        model_metadata: Any = None,
        spec: Any = None,
        max_payload_size: Any = None,
        track_requests: bool = False,
        callbacks: Any = None,
        middlewares: Any = None,
        loggers: Any = None,
        fast_queue: bool = False,
        disable_openapi_url: bool = False,
        max_batch_size: int | None = None,
        batch_timeout: float = 0.0,
        stream: bool = False,
        api_path: str | None = None,
        loop: Any = None,
        restart_workers: bool = False,
    ) -> None:
        from litserve.loops import LitLoop
        from litserve.server import _LitAPIConnector, _migration_warning
        from litserve.specs.base import LitSpec

        # LitServe's order: the deprecated arguments go onto the LitAPI, with its warnings.
        if max_batch_size is not None:
            warnings.warn(
                "'max_batch_size' and 'batch_timeout' are being deprecated in `LitServer` "
                "and will be removed in version v0.3.0.\n\n"
                "Please update your code to pass these arguments to `LitAPI` instead.\n\n"
                "Old usage:\n"
                "    server = LitServer(api, max_batch_size=N, batch_timeout=T, ...)\n\n"
                "New usage:\n"
                "    api = LitAPI(max_batch_size=N, batch_timeout=T, ...)\n"
                "    server = LitServer(api, ...)",
                DeprecationWarning,
                stacklevel=2,
            )
            lit_api.max_batch_size = max_batch_size
            lit_api.batch_timeout = batch_timeout
        if middlewares is None:
            middlewares = []
        if not isinstance(middlewares, list):
            raise LitServerError(
                "middlewares must be a list of tuples where each tuple contains a middleware "
                "and its arguments. For example:\nserver = ls.LitServer(ls.test_examples."
                'SimpleLitAPI(), middlewares=[(RequestIdMiddleware, {"length": 5})])'
            )
        if api_path is not None:
            _migration_warning("api_path")
            lit_api.api_path = api_path
        if stream is True:
            _migration_warning("stream")
            lit_api.stream = stream
        if isinstance(loop, LitLoop):
            _migration_warning("loop")
            lit_api.loop = loop
        if isinstance(spec, LitSpec):
            _migration_warning("spec")
            lit_api.spec = spec
            lit_api.stream = spec.stream
        try:
            self.lit_apis: list[Any] = list(_LitAPIConnector(lit_api))
        except ValueError as e:  # empty, not LitAPIs, two on one path: LitServe's words
            raise LitServerError(str(e)) from None
        for api in self.lit_apis:
            _refuse_api(api)
        # LitServe's own checks of each LitAPI and its spec and loop (pre_setup), on a copy: the
        # instance the workers get must be as the user built it (each worker runs pre_setup).
        self._checked = [_checked_copy(api) for api in self.lit_apis]
        if api_path and not api_path.startswith("/"):
            raise LitServerError(
                "api_path must start with '/'. Please provide a valid api path like '/predict', "
                "'/classify', or '/v1/predict'"
            )
        if not healthcheck_path.startswith("/"):
            raise LitServerError(
                "healthcheck_path must start with '/'. Please provide a valid api path like "
                "'/health', '/healthcheck', or '/v1/health'"
            )
        if not info_path.startswith("/"):
            raise LitServerError(
                "info_path must start with '/'. Please provide a valid api path like '/info', "
                "'/details', or '/v1/info'"
            )
        if enable_shutdown_api and not shutdown_path.startswith("/"):
            raise LitServerError(
                "shutdown_path must start with '/'. Please provide a valid api path like "
                "'/shutdown'"
            )
        # LitServe reads it when litserve.server is imported: from this process's environment.
        self.shutdown_key: str | None = None
        if enable_shutdown_api:
            self.shutdown_key = os.environ.get("LIT_SHUTDOWN_API_KEY") or None
            if not self.shutdown_key:
                self.shutdown_key = secrets.token_urlsafe(32)
                print(
                    "LitServe's Shutdown API is enabled, but the `LIT_SHUTDOWN_API_KEY` "
                    f"environment variable is missing. Generated shutdown API key: "
                    f"{self.shutdown_key}",
                    file=sys.stderr,
                )
        try:
            json.dumps(model_metadata)
        except (TypeError, ValueError):
            raise LitServerError("model_metadata must be JSON serializable.") from None
        for api in self.lit_apis:
            if api.batch_timeout > timeout and timeout not in (False, -1):
                raise LitServerError("batch_timeout must be less than request_timeout")
        self.middlewares = _middlewares(middlewares)
        self.callbacks = _callbacks(callbacks)
        self.loggers = _loggers(loggers)
        self.accelerator, self.devices = _accelerator(accelerator, devices)
        self.workers_per_device = workers_per_device
        self._wpd = _workers_per_device(workers_per_device, [a.api_path for a in self._checked])
        self.timeout = timeout
        self.healthcheck_path = healthcheck_path
        self.info_path = info_path
        self.shutdown_path = shutdown_path if enable_shutdown_api else None
        self.model_metadata = model_metadata
        self.max_payload_size = max_payload_size
        self.track_requests = bool(track_requests)
        self.disable_openapi_url = bool(disable_openapi_url)
        # fast_queue (ZeroMQ answers) and restart_workers: ferryman's transport is ZeroMQ, and
        # it always replaces a worker that died.
        self.fast_queue = fast_queue
        self.restart_workers = restart_workers
        self.lit_api = lit_api

    @property
    def app(self) -> Any:
        """LitServe's FastAPI app, which files use to add routes or middlewares: there is none
        here (the API processes never import user code), and saying so beats an AttributeError."""
        raise _refuse(
            "LitServer.app (routes or middlewares added to LitServe's FastAPI app)",
            "ferryman's API processes never run user code; serve such routes beside it",
        )

    # -- run -------------------------------------------------------------------------------------

    def run(
        self,
        host: str = "0.0.0.0",
        port: Any = 8000,
        num_api_servers: int | None = None,
        log_level: str = "info",
        generate_client_file: bool = True,
        api_server_worker_type: str | None = "process",
        pretty_logs: bool = False,
        **kwargs: Any,
    ) -> None:
        """Become ferryman's supervisor (exec; it never returns): the `LitServer.run` arguments
        as LitServe takes them, the flags of `ferryman serve` beating them."""
        flags = _cli_flags()
        if generate_client_file:
            from litserve.python_client import client_template

            dest = os.path.join(os.getcwd(), "client.py")
            if not os.path.exists(dest):
                try:
                    with open(dest, "w") as f:
                        f.write(client_template.format(PORT=flags.get("port", port)))
                except OSError as e:
                    print(f"ferryman: could not write {dest}: {e}", file=sys.stderr)
        port_msg = f"port must be a value from 1024 to 65535 but got {port}"
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise LitServerError(port_msg) from None
        if not 1024 <= port <= 65535:
            raise LitServerError(port_msg)
        if host not in ("0.0.0.0", "127.0.0.1", "::"):
            raise LitServerError(f"host must be '0.0.0.0', '127.0.0.1', or '::' but got {host}")
        # ferryman's own options (admin_port=0, graceful_timeout=...) are welcome here too.
        ours = parse_mapping({k: kwargs.pop(k) for k in list(kwargs) if k in OPTS_BY_NAME})
        tls = sorted(k for k in kwargs if k.startswith("ssl_") or k in _TLS_KWARGS)
        if tls:
            raise _refuse(
                f".run({tls[0]}=...)",
                "ferryman serves plain HTTP; terminate TLS in front of it (a proxy or an "
                "ingress) rather than serving plain HTTP where TLS was asked for",
            )
        if os.environ.get("LIGHTNING_CERT_PEM") and os.environ.get("LIGHTNING_KEY_FILE"):
            raise _refuse(
                "TLS from LIGHTNING_CERT_PEM / LIGHTNING_KEY_FILE",
                "ferryman serves plain HTTP; terminate TLS in front of it, or unset them",
            )
        if kwargs:
            name = sorted(kwargs)[0]
            raise _refuse(
                f".run({name}=...)",
                "it is not a LitServe argument but a uvicorn setting LitServe passes through; "
                "ferryman runs uvicorn with its own (ferryman serve --help lists the options "
                "run() also takes)",
            )
        if api_server_worker_type not in (None, "process", "thread"):
            raise LitServerError(
                "Invalid value for api_server_worker_type. Must be 'process' or 'thread'"
            )
        if num_api_servers is not None and num_api_servers < 1:
            raise LitServerError("num_api_servers must be greater than 0")
        level = _LOG_LEVELS.get(str(log_level).lower())
        if level is None:
            raise LitServerError(
                f"LitServer.run(log_level={log_level!r}): expected one of {', '.join(_LOG_LEVELS)}"
            )
        options: dict[str, Any] = {"host": host, "port": port, "log_level": level}
        if num_api_servers is not None:
            options["api_servers"] = num_api_servers
        options.update({k: v for k, v in ours.items() if k in SERVER_OPTS})
        model = {k: v for k, v in ours.items() if k in MODEL_OPTS}
        run_launch(self.launch(options, model))

    def launch(
        self, options: Mapping[str, Any] | None = None, model: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """What the supervisor is started with (ferryman/server.py's launch file): `options`
        for the server, `model` options for every LitAPI's model."""
        names = _names(self.lit_apis)
        models = []
        routes = []
        for api, checked, name in zip(self.lit_apis, self._checked, names, strict=True):
            setattr(api, CALLBACKS_ATTR, list(self.callbacks))
            setattr(api, LOGGERS_ATTR, list(self.loggers))
            try:
                instance_file = _pickle_instance(api)
            except ValueError as e:
                raise LitServerError(str(e)) from None
            kind = _route_kind(api)
            models.append(
                {
                    "name": name,
                    "app": _app_spec(api),
                    "instance_file": instance_file,
                    "code_options": {
                        **self._model_options(api, checked, kind),
                        **_jsonable(dict(model or {})),
                    },
                    "main_file": main_file(),
                }
            )
            routes.append(
                {
                    "model": name,
                    "path": checked.api_path,
                    "route": kind,
                    "stream": bool(checked.stream),
                    "authorize": callable(getattr(api, "authorize", None)),
                }
            )
        openapi, pages = self._openapi()
        settings = {
            "routes": routes,
            "healthcheck_path": self.healthcheck_path,
            "info_path": self.info_path,
            "model_metadata": self.model_metadata,
            "info": {
                "workers_per_device": self.workers_per_device,
                "timeout": self.timeout,
                "max_payload_size": self.max_payload_size,
            },
            "track_requests": self.track_requests,
            "shutdown_path": self.shutdown_path,
            "shutdown_key": self.shutdown_key,
            "openapi": openapi,
            "pages": pages,
            "middlewares": self.middlewares,
            "gzip": not any(c.stream for c in self._checked),
        }
        return {
            "options": _jsonable(parse_mapping(options or {})),
            "models": models,
            "litserve": settings,
        }

    def _model_options(self, api: Any, checked: Any, kind: str) -> dict[str, Any]:
        """One LitAPI's model options: its own settings and the server's, as LitServe applies
        them to it."""
        found: dict[str, Any] = {
            "accelerator": self.accelerator,
            "workers_per_device": self._wpd[checked.api_path],
            "timeout": self.timeout,
            "max_batch_size": api.max_batch_size,
            "batch_timeout": api.batch_timeout,
        }
        if self.devices is not None:
            found["devices"] = self.devices
        if self.max_payload_size is not None:
            found["max_payload_size"] = self.max_payload_size
        if api.stream:
            found["stream"] = True
        if api.spec is not None:
            found["spec"] = api.spec
        if kind == "predict":
            found["api_path"] = api.api_path
        try:
            return _jsonable(parse_mapping(found))
        except OptionError as e:
            raise LitServerError(f"{type(api).__name__}: {e}") from None

    def _openapi(self) -> tuple[str | None, dict[str, str]]:
        """FastAPI's /openapi.json and its pages, as LitServe's app would serve them: built here,
        where the LitAPIs and their annotations are (the API processes import no user code)."""
        if self.disable_openapi_url:
            return None, {}
        why = ""
        try:
            document, pages = _fastapi_documents(self)
            size = len(document) + sum(len(p) for p in pages.values())
            if size <= _MAX_DOCUMENTS:
                return document, pages
            why = f"it is {size} bytes, more than the {_MAX_DOCUMENTS} the API processes take"
        except Exception as e:  # an annotation FastAPI cannot describe
            why = f"FastAPI could not describe these routes ({e!r})"
        print(f"ferryman: /openapi.json: {why}; serving a bare document", file=sys.stderr)
        bare = {"openapi": "3.1.0", "info": {"title": "FastAPI", "version": "0.1.0"}}
        return json.dumps(bare, separators=(",", ":")), {}


# -- checks ---------------------------------------------------------------------------------------


def _refuse_api(api: Any) -> None:
    """What a LitAPI asks for that ferryman's workers cannot do, refused by name before
    anything starts (the workers refuse the same, later, for `ferryman serve FILE.py:Name`)."""
    from litserve.specs.base import LitSpec

    name = type(api).__name__
    if getattr(api, "mcp", None):
        raise _refuse(f"{name}(mcp=...) (Model Context Protocol)", "serve MCP in front of it")
    loop = getattr(api, "_loop", "auto")
    if loop not in ("auto", None):
        raise _refuse(
            f"{name}(loop={type(loop).__name__}(...)) (a custom loop, continuous batching)",
            "its worker loop is ferryman's own; leave loop at 'auto'",
        )
    spec = api.spec
    if isinstance(spec, LitSpec) and not isinstance(spec, OpenAISpec | OpenAIEmbeddingSpec):
        raise _refuse(
            f"{name}(spec={type(spec).__name__}())",
            "a spec's routes run in LitServe's API process, which in ferryman never runs "
            "user code; OpenAISpec and OpenAIEmbeddingSpec are served",
        )


def _checked_copy(api: Any) -> Any:
    """A copy of `api` that went through LitServe's pre_setup (and its loop's): LitServe's own
    errors for what it would refuse (a spec with a non-generator predict, stream without
    generators, ...)."""
    try:
        data = pickle.dumps(api)
    except Exception as e:
        raise LitServerError(
            f"cannot send this {type(api).__name__} instance to the worker processes ({e}); "
            "create unpicklable state in setup()"
        ) from None
    copy = pickle.loads(data)
    try:
        copy.pre_setup()
        copy.loop.pre_setup(copy)
    except ValueError as e:
        raise LitServerError(_message(e)) from None
    return copy


def _message(e: BaseException) -> str:
    # LitServe builds some messages as a tuple of parts (the embedding spec's): say them.
    if len(e.args) > 1 and all(isinstance(a, str) for a in e.args):
        return "".join(e.args)
    return str(e)


def _middlewares(entries: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for entry in entries:
        if isinstance(entry, tuple):
            cls, kwargs = entry
        elif callable(entry):
            cls, kwargs = entry, {}
        else:
            continue  # LitServe skips these too
        name = f"{getattr(cls, '__module__', '?')}:{getattr(cls, '__qualname__', cls)}"
        if name not in ALLOWED_MIDDLEWARES:
            raise _refuse(
                f"middlewares=[{getattr(cls, '__name__', cls)}]",
                "a middleware runs in the API processes, which in ferryman never import user "
                "code; starlette's CORSMiddleware, GZipMiddleware, HTTPSRedirectMiddleware and "
                "TrustedHostMiddleware are accepted",
            )
        try:
            if json.loads(json.dumps(kwargs)) != kwargs:
                raise TypeError("not plain JSON")
        except (TypeError, ValueError):
            raise _refuse(
                f"middlewares=[({cls.__name__}, {kwargs!r})]",
                "its arguments must be plain JSON values (strings, numbers, lists) to reach "
                "the API processes",
            ) from None
        out.append((name, dict(kwargs)))
    return out


def _callbacks(callbacks: Any) -> list[Any]:
    if not callbacks:
        return []
    found = callbacks if isinstance(callbacks, list) else [callbacks]
    for cb in found:
        if not isinstance(cb, Callback):
            raise LitServerError(f"Invalid callback type: {cb}")
    return list(found)


def _loggers(loggers: Any) -> list[Any]:
    """LitServe's checks; an unpicklable logger goes as its class, re-created in the worker
    with no arguments (LitServe's _LoggerProxy); a mounted app is refused."""
    from litserve.loggers import _LoggerProxy

    if loggers is None:
        return []
    if isinstance(loggers, Logger):
        loggers = [loggers]
    elif not isinstance(loggers, list):
        raise LitServerError("loggers must be a list or an instance of litserve.Logger")
    out: list[Any] = []
    for logger in loggers:
        if not isinstance(logger, Logger):
            raise LitServerError("Logger must be an instance of litserve.Logger")
        mount = getattr(logger, "_config", {}).get("mount")
        if mount:
            raise _refuse(
                f"{type(logger).__name__}.mount({mount.get('path')!r}, app)",
                "a mounted ASGI app would run user code in the API processes",
            )
        try:
            pickle.dumps(logger)
            out.append(logger)
        except (pickle.PicklingError, TypeError, AttributeError):
            print(
                f"Logger {type(logger).__name__} is not pickleable and might not work properly.",
                file=sys.stderr,
            )
            out.append(_LoggerProxy(type(logger)))
    return out


def _accelerator(accelerator: Any, devices: Any) -> tuple[str, Any]:
    """(ferryman's accelerator, its devices or None) from LitServe's."""
    acc = accelerator.lower() if isinstance(accelerator, str) else accelerator
    if acc not in ("auto", "cpu", "mps", "cuda", "gpu", None):
        raise LitServerError(
            "accelerator must be one of 'auto', 'cpu', 'mps', 'cuda', or 'gpu'. "
            f"Found: {accelerator}"
        )
    if acc == "mps":
        raise _refuse("accelerator='mps'", "it serves on CPUs and CUDA GPUs")
    acc = "auto" if acc is None else "cuda" if acc == "gpu" else acc
    if acc == "cpu":
        return "cpu", None  # LitServe ignores devices on the CPU: one device
    if devices == "auto":
        return acc, None
    if isinstance(devices, list) and any(isinstance(d, list | tuple) for d in devices):
        raise _refuse(
            f"devices={devices!r} (several devices per worker)",
            "each worker gets one device; give a count or a flat list of device indices",
        )
    if isinstance(devices, bool) or not isinstance(devices, int | list):
        raise LitServerError(
            "devices must be an integer or a list of integers when using 'cuda' or 'mps', "
            f"instead got {devices}"
        )
    return acc, devices


def _workers_per_device(wpd: Any, paths: list[str]) -> dict[str, int]:
    """LitServe's per-route count: an int, a list (one per LitAPI), or {api_path: n}."""
    if isinstance(wpd, int) and not isinstance(wpd, bool):
        if wpd < 1:
            raise LitServerError("workers_per_device must be >= 1")
        return dict.fromkeys(paths, wpd)
    if isinstance(wpd, list | tuple):
        if len(wpd) != len(paths):
            raise LitServerError(
                "workers_per_device list length must match number of APIs \n"
                f"({len(paths)}), got {len(wpd)}"
            )
        out = {}
        for path, n in zip(paths, wpd, strict=True):
            if not isinstance(n, int) or n < 1:
                raise LitServerError("workers_per_device values must be integers >= 1")
            out[path] = n
        return out
    if isinstance(wpd, Mapping):
        unknown = sorted(set(wpd) - set(paths))
        if unknown:
            raise LitServerError(
                f"workers_per_device contains unknown api_path values: {unknown} (unknown api_path)"
            )
        out = {}
        for path in paths:
            n = wpd.get(path, 1)
            if not isinstance(n, int) or n < 1:
                raise LitServerError("workers_per_device values must be integers >= 1")
            out[path] = n
        return out
    raise LitServerError(
        "workers_per_device must be an int, a list/tuple of ints, or a mapping of api_path -> int"
    )


def _route_kind(api: Any) -> str:
    spec = api.spec
    if isinstance(spec, OpenAISpec):
        return "chat"
    if isinstance(spec, OpenAIEmbeddingSpec):
        return "embeddings"
    return "predict"


def _names(apis: Iterable[Any]) -> list[str]:
    """Each LitAPI's model name: its class, lower-cased, -2, -3 ... when a class repeats."""
    out: list[str] = []
    for api in apis:
        base = default_name(f"x:{type(api).__qualname__}")
        name, n = base, 1
        while name in out:
            n += 1
            name = f"{base}-{n}"
        out.append(name)
    return out


def _cli_flags() -> dict[str, Any]:
    """The flags of the `ferryman serve FILE.py` that runs this file (they beat the file)."""
    raw = os.environ.get(CLI_ARGS_ENV)
    if not raw:
        return {}
    from ferryman.cli import build_parser

    try:
        args, _ = build_parser().parse_known_args(["serve", *json.loads(raw)])
    except (SystemExit, ValueError):
        return {}
    return {k: v for k, v in vars(args).items() if k not in ("command", "apps")}


def _fastapi_documents(server: LitServer) -> tuple[str, dict[str, str]]:
    """Register LitServe's routes on an empty FastAPI app the way LitServer does (same
    endpoint names, annotations, dependencies and order), and take its OpenAPI document and
    documentation pages."""
    from fastapi import Depends, FastAPI
    from fastapi.openapi.docs import (
        get_redoc_html,
        get_swagger_ui_html,
        get_swagger_ui_oauth2_redirect_html,
    )
    from litserve import server as lss

    app = FastAPI()
    key_set = bool(os.environ.get("LIT_SERVER_API_KEY"))

    def auth(api: Any) -> Any:  # LitServer.setup_auth
        if callable(getattr(api, "authorize", None)):
            return api.authorize
        return lss.api_key_auth if key_set else lss.no_auth

    # One LitAPI: its own authorize guards /, health and info too; several: the key only.
    internal = [Depends(auth(server.lit_apis[0] if len(server.lit_apis) == 1 else None))]

    async def index(request: Request) -> Response:  # pragma: no cover - never called
        raise NotImplementedError

    async def health(request: Request) -> Response:  # pragma: no cover
        raise NotImplementedError

    async def info(request: Request) -> Response:  # pragma: no cover
        raise NotImplementedError

    app.get("/", dependencies=internal)(index)
    app.get(server.healthcheck_path, dependencies=internal)(health)
    app.get(server.info_path, dependencies=internal)(info)
    if server.shutdown_path:
        # No return annotations: FastAPI reads them (LitServe's have none).
        def shutdown_api_key_auth(shutdown_api_key: str = Depends(lss.oauth2_scheme)):
            pass  # pragma: no cover

        async def shutdown_endpoint():
            pass  # pragma: no cover

        app.post(server.shutdown_path, dependencies=[Depends(shutdown_api_key_auth)])(
            shutdown_endpoint
        )
    for api in server._checked:
        sig = inspect.signature(api.decode_request)
        request_type = sig.parameters["request"].annotation
        if request_type is sig.empty:
            request_type = Request
        response_type = inspect.signature(api.encode_response).return_annotation
        if response_type is inspect.Signature.empty:
            response_type = Response
        deps = [Depends(auth(api))]

        async def endpoint_handler(request: Any) -> Any:
            raise NotImplementedError  # pragma: no cover

        # LitServe annotates it with decode_request's argument and encode_response's return
        # types: FastAPI reads the body and the schema from them.
        endpoint_handler.__annotations__ = {"request": request_type, "return": response_type}
        if not api.spec:
            app.add_api_route(api.api_path, endpoint_handler, methods=["POST"], dependencies=deps)
        else:
            for path, endpoint, methods in api.spec.endpoints:
                app.add_api_route(path, endpoint=endpoint, methods=methods, dependencies=deps)
    document = json.dumps(
        app.openapi(), ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    )
    pages: dict[str, str] = {}
    try:
        if app.docs_url and app.openapi_url:
            pages[app.docs_url] = bytes(
                get_swagger_ui_html(
                    openapi_url=app.openapi_url,
                    title=f"{app.title} - Swagger UI",
                    oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
                    init_oauth=app.swagger_ui_init_oauth,
                    swagger_ui_parameters=app.swagger_ui_parameters,
                ).body
            ).decode()
            if app.swagger_ui_oauth2_redirect_url:
                pages[app.swagger_ui_oauth2_redirect_url] = bytes(
                    get_swagger_ui_oauth2_redirect_html().body
                ).decode()
        if app.redoc_url and app.openapi_url:
            pages[app.redoc_url] = bytes(
                get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - ReDoc").body
            ).decode()
    except Exception as e:  # another FastAPI's signatures: the document alone
        print(f"ferryman: /docs and /redoc are not served ({e!r})", file=sys.stderr)
    return document, pages


def take_over() -> None:
    """Put this LitServer in place of LitServe's, where a file finds it (`ferryman serve
    FILE.py`, ferryman/server.py's import hook)."""
    vars(_ls)["LitServer"] = LitServer
    vars(sys.modules["litserve.server"])["LitServer"] = LitServer


if CLI_ARGS_ENV in os.environ:  # imported by the file `ferryman serve FILE.py` is running
    take_over()
