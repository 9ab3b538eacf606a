"""`ferryman.Server(api, **options).run()`: the Python way to start what `ferryman serve` starts."""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
from typing import Any

from ferryman.options import OPTS_BY_NAME, parse_mapping


class Server:
    """Serve `api` (an instance or a class of ferryman.API, or of litserve.LitAPI).

    Options are those of `ferryman serve --help`, with underscores: workers_per_device=2,
    accelerator="cuda", devices=[0, 1], max_batch_size=8, ...; a bad one raises ValueError here.
    """

    def __init__(self, api: Any, **options: Any) -> None:
        self.api = api
        self.options = {**_litapi_options(api), **parse_mapping(options)}

    def run(self, **options: Any) -> None:
        """Become the supervisor (this process is replaced by exec; it never returns).

        The supervisor must hold no user code, so it is started afresh; workers import the API's
        module from its file and receive this very instance, pickled.
        """
        opts = {**self.options, **parse_mapping(options)}
        argv = [sys.executable, "-m", "ferryman", "serve", self._app_spec()]
        for name, value in opts.items():
            argv += _flag(name, value)
        if not isinstance(self.api, type):
            argv += ["--instance-file", self._pickle_instance()]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)

    def _app_spec(self) -> str:
        cls = self.api if isinstance(self.api, type) else type(self.api)
        module = sys.modules.get(cls.__module__)
        path = getattr(module, "__file__", None)
        if cls.__module__ == "__main__" or path is None:
            if path is None:
                raise ValueError(f"cannot find the file that defines {cls.__qualname__}")
            return f"{os.path.abspath(path)}:{cls.__qualname__}"
        return f"{cls.__module__}:{cls.__qualname__}"

    def _pickle_instance(self) -> str:
        try:
            data = pickle.dumps(self.api)
        except Exception as e:
            raise ValueError(
                f"cannot send this {type(self.api).__name__} instance to the worker processes "
                f"({e}); pass the class instead, or create unpicklable state in setup()"
            ) from None
        fd, path = tempfile.mkstemp(prefix="ferryman-api-", suffix=".pickle")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path


def _litapi_options(api: Any) -> dict[str, Any]:
    """The settings a LitServe API instance was built with (LitAPI(max_batch_size=8, ...)), as
    options, so that the API processes know them too; explicit keywords still win."""
    ls = sys.modules.get("litserve")  # never imported here: only looked at if the user did
    if ls is None or not isinstance(api, ls.LitAPI):
        return {}
    found: dict[str, Any] = {}
    if api.stream:
        found["stream"] = True
    if api.max_batch_size > 1:
        found["max_batch_size"] = api.max_batch_size
    if api.batch_timeout:
        found["batch_timeout"] = api.batch_timeout
    spec = api.spec
    if spec is not None:
        found["spec"] = spec
    elif api.api_path != "/predict":
        found["api_path"] = api.api_path
    return parse_mapping(found)


def _flag(name: str, value: Any) -> list[str]:
    if name == "app" or value is None:
        return []
    flag = "--" + name.replace("_", "-")
    if OPTS_BY_NAME[name].is_flag:
        return [flag] if value else []
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return [flag, str(value)]
