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


def import_main(path: str) -> Any:
    """The script that pickled the instance, as `__main__` (its `if __name__ == "__main__":`
    block does not run: it is imported as `__mp_main__`, as multiprocessing's spawn does), so
    that what it defined unpickles."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location("__mp_main__", path)
    if spec is None or spec.loader is None:
        raise AppError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["__mp_main__"] = module
    sys.modules["__main__"] = module
    spec.loader.exec_module(module)
    return module


def _same_file(target: str, path: str) -> bool:
    return os.path.abspath(target) == os.path.abspath(path)


def import_module(target: str, main_file: str | None = None) -> Any:
    """Import a file path or a dotted module; the user's file becomes `__main__` for pickle
    (unless another script is, `main_file`)."""
    is_file = target.endswith(".py") or os.sep in target
    if main_file and not (is_file and _same_file(target, main_file)):
        main = import_main(main_file)
        module = import_module(target)
        sys.modules["__main__"] = main
        return module
    if is_file:
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


def load_api(app: str, instance_file: str | None = None, main_file: str | None = None) -> Any:
    target, name = split_spec(app)
    module = import_module(target, main_file if instance_file else None)
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
