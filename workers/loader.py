"""Find the user's API, in the inference worker: `path/to/app.py:Name`, `package.module:Name`, or a
pickled instance. Neither the supervisor nor the API processes ever import user code.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pickle
import sys
from typing import Any

from ferryman.options import ModelOptions

REQUIRED = ("predict",)
OPTIONAL = ("setup", "decode_request", "encode_response", "batch", "unbatch")


class AppError(Exception):
    """The app spec is wrong (not an import error in the user's code: that propagates as is)."""


def split_spec(spec: str) -> tuple[str, str]:
    module, sep, name = spec.rpartition(":")
    if not sep or not module or not name:
        raise AppError(f"app {spec!r} must look like app.py:MyAPI or package.module:MyAPI")
    return module, name


def import_module(target: str) -> Any:
    """Import a file path or a dotted module; the user's file becomes `__main__` for pickle."""
    if target.endswith(".py") or os.sep in target:
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise AppError(f"app file {target!r} does not exist")
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location("__ferryman_app__", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        # An instance pickled by `python app.py` refers to `__main__.Name`; as multiprocessing's
        # spawn does, make the user's file `__main__` here so that such pickles resolve.
        sys.modules["__ferryman_app__"] = module
        sys.modules.setdefault(name, module)
        spec.loader.exec_module(module)
        sys.modules["__main__"] = module
        return module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(target)


def load_api(app: str, instance_file: str | None = None) -> Any:
    target, name = split_spec(app)
    module = import_module(target)
    if instance_file:
        with open(instance_file, "rb") as f:
            api = pickle.load(f)
    else:
        try:
            obj = getattr(module, name)
        except AttributeError:
            raise AppError(f"{target} has no attribute {name!r}") from None
        api = obj() if isinstance(obj, type) else obj
    check_api(api)
    return api


def check_api(api: Any) -> None:
    for method in REQUIRED:
        if not callable(getattr(api, method, None)):
            raise AppError(f"{type(api).__name__} has no {method}() method")


def prepare(api: Any, options: ModelOptions, device: str) -> ModelOptions:
    """Adapt a LitServe API, and refuse settings that cannot work, before setup runs.

    Returns the options to run with (a LitAPI instance may bring its own stream / batching)."""
    from ferryman.workers import litserve_compat

    if litserve_compat.is_litapi(api):
        options = litserve_compat.prepare(api, options, device)
    predict = getattr(api, "predict", None)
    generator = inspect.isgeneratorfunction(predict) or inspect.isasyncgenfunction(predict)
    if generator and not options.stream and options.spec is None:
        raise AppError(
            f"{type(api).__name__}.predict is a generator: start the server with --stream "
            "(stream=True) to stream its items"
        )
    return options
