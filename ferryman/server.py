"""`ferryman.Server(api, **options).run()`: the Python way to start what `ferryman serve` starts.

Runs in the user's process, which `run()` then replaces (exec) with a fresh supervisor: the
supervisor must hold no user code, so the instances built here reach the workers pickled.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import tempfile
from collections.abc import Iterable
from typing import Any

from ferryman.options import MODEL_OPTS, OptionError, default_name, parse_mapping

# Set by `ferryman serve FILE.py` before it runs the file: the flags given on its command line,
# which beat what the file says (so that `--port` wins over a hard-coded `run(port=8000)`).
CLI_ARGS_ENV = "FERRYMAN_CLI_ARGS"


class Server:
    """Serve `api`: an instance or a class of ferryman.API (or of litserve.LitAPI), or a list of
    them (one model each).

    Options are those of `ferryman serve --help`, with underscores: workers_per_device=2,
    accelerator="cuda", devices=[0, 1], max_batch_size=8, ...; a bad one raises ValueError here.
    Model options given here apply to every model; a LitServe API's own settings
    (`MyAPI(max_batch_size=8, api_path="/v2")`) apply to its model.
    """

    def __init__(self, api: Any, **options: Any) -> None:
        self.apis = list(api) if _is_list(api) else [api]
        if not self.apis:
            raise ValueError("Server() needs at least one API")
        self.options = parse_mapping(options)

    @property
    def api(self) -> Any:
        return self.apis[0]

    def launch(self, **options: Any) -> dict[str, Any]:
        """What the supervisor is started with: options, and each model (name, app, the
        instance's file, its own settings)."""
        opts = {**self.options, **parse_mapping(options)}
        models = []
        for api in self.apis:
            code = _code_options(api)
            models.append(
                {
                    "name": getattr(api, "ferryman_name", None),
                    "app": _app_spec(api),
                    "instance_file": None if isinstance(api, type) else _pickle_instance(api),
                    "code_options": code,
                }
            )
        return {"options": _jsonable(opts), "models": models}

    def run(self, **options: Any) -> None:
        """Become the supervisor (this process is replaced by exec; it never returns)."""
        run_launch(self.launch(**options))


def run_launch(launch: dict[str, Any]) -> None:
    """Exec `ferryman serve --launch-file F` with what `launch` says, plus the flags of the
    command line that ran this file, if any."""
    fd, path = tempfile.mkstemp(prefix="ferryman-launch-", suffix=".json")  # mode 0600
    with os.fdopen(fd, "w") as f:
        json.dump(launch, f)
    argv = [sys.executable, "-m", "ferryman", "serve", "--launch-file", path]
    argv += json.loads(os.environ.pop(CLI_ARGS_ENV, "[]"))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _is_list(api: Any) -> bool:
    return isinstance(api, Iterable) and not isinstance(api, str | bytes | dict | type)


def _app_spec(api: Any) -> str:
    """Where workers find the API's class: its file for a script or a top-level module (which
    may have been imported through a sys.path the workers know nothing of), its dotted name for
    a module of a package (whose relative imports need the package)."""
    cls = api if isinstance(api, type) else type(api)
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if path is None:
        raise ValueError(f"cannot find the file that defines {cls.__qualname__}")
    if "." in cls.__module__ and cls.__module__ not in ("__main__", "__ferryman_app__"):
        return f"{cls.__module__}:{cls.__qualname__}"
    return f"{os.path.abspath(path)}:{cls.__qualname__}"


def _pickle_instance(api: Any) -> str:
    try:
        data = pickle.dumps(api)
    except Exception as e:
        raise ValueError(
            f"cannot send this {type(api).__name__} instance to the worker processes "
            f"({e}); pass the class instead, or create unpicklable state in setup()"
        ) from None
    fd, path = tempfile.mkstemp(prefix="ferryman-api-", suffix=".pickle")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _code_options(api: Any) -> dict[str, Any]:
    """The settings a LitServe API instance was built with (LitAPI(max_batch_size=8, ...)), as
    model options."""
    ls = sys.modules.get("litserve")  # never imported here: only looked at if the user did
    found: dict[str, Any] = {}
    if ls is not None and isinstance(api, ls.LitAPI):
        if api.stream:
            found["stream"] = True
        if api.max_batch_size > 1:
            found["max_batch_size"] = api.max_batch_size
        if api.batch_timeout:
            found["batch_timeout"] = api.batch_timeout
        if api.spec is not None:
            found["spec"] = api.spec
        path = getattr(api, "_api_path", None) or getattr(api, "api_path", None)
        if path and path != "/predict" and api.spec is None:
            found["api_path"] = path
    extra = getattr(api, "ferryman_options", None)
    if isinstance(extra, dict):
        found.update(extra)
    parsed = parse_mapping(found)
    bad = [k for k in parsed if k not in MODEL_OPTS]
    if bad:
        raise OptionError(f"{type(api).__name__}: {bad[0]} is a server option, not a model's")
    return _jsonable(parsed)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None or k in ("timeout",)}


__all__ = ["Server", "default_name"]
