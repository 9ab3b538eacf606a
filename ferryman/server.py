"""`ferryman.Server(api, **options).run()`: the Python way to start what `ferryman serve` starts.

Runs in the user's process, which `run()` then replaces (exec) with a fresh supervisor: the
supervisor must hold no user code, so the instances built here reach the workers pickled. Also
`ferryman serve FILE.py` (run_file): that command's process runs the user's file, which ends in
such an exec.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import pickle
import sys
import tempfile
import types
from collections.abc import Iterable
from typing import Any

from ferryman.config import default_name
from ferryman.options import MODEL_OPTS, OptionError, parse_mapping

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
                    "main_file": main_file(),
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


class NoServer(Exception):
    """The file ran to its end without starting a server."""


def run_file(path: str, cli_args: list[str]) -> None:
    """`ferryman serve FILE.py`: run the file as `python FILE.py` would, as the real `__main__`
    (so that what it defines pickles as `__main__.Name`, as the workers load it), with
    LitServe's `LitServer` replaced by ferryman's (ferryman/litserve.py) the moment `litserve`
    is imported. Its `LitServer(...).run()` or `ferryman.Server(...).run()` replaces this
    process with the supervisor; `cli_args` (the command line's flags) go along and beat what
    the file says. Raises NoServer if the file ends without starting one."""
    path = os.path.abspath(path)
    with open(path, "rb") as f:
        # dont_inherit: this module's `from __future__ import annotations` must not turn the
        # file's annotations into strings (FastAPI and pydantic read them).
        code = compile(f.read(), path, "exec", dont_inherit=True)
    os.environ[CLI_ARGS_ENV] = json.dumps(cli_args)
    hook = _LitServeHook()
    sys.meta_path.insert(0, hook)
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    sys.argv = [path]
    sys.path.insert(0, os.path.dirname(path))
    try:
        exec(code, module.__dict__)
    finally:
        if hook in sys.meta_path:
            sys.meta_path.remove(hook)
        os.environ.pop(CLI_ARGS_ENV, None)
    raise NoServer(
        f"{path} ran to its end without starting a server: ferryman serve FILE.py runs "
        "the file's LitServer(...).run() or ferryman.Server(...).run() (under "
        "if __name__ == '__main__'); or name the API class: ferryman serve FILE.py:MyAPI"
    )


class _LitServeHook(importlib.abc.MetaPathFinder):
    """Puts ferryman's LitServer in place of LitServe's in `litserve` and `litserve.server`,
    right after the package is imported (whichever module of the file imports it)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "litserve":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self.inner  # the package's own from now on
        self.inner.exec_module(module)
        importing = sys.modules.get("ferryman.litserve")
        if importing is not None and not hasattr(importing, "take_over"):
            return  # the file imports ferryman.litserve, which imports litserve: it takes over
        from ferryman import litserve as stand_in

        stand_in.take_over()


def main_file() -> str | None:
    """The script running as `__main__` (`python app.py`, `ferryman serve app.py`): workers
    import it as `__main__` before they unpickle an instance, whose callbacks or loggers may be
    defined there even when its own class comes from a library."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py") or not os.path.isfile(path):
        return None
    return os.path.abspath(path)


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
