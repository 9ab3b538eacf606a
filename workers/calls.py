"""How the inference worker calls the user's methods: which take a context, which are async, and
how their generators are closed.

Everything here is decided once, when the engine is built, so that a request pays a flag test
for a feature it does not use.
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Generator
from typing import Any

log = logging.getLogger("ferryman.worker")


def takes_context(fn: Any) -> bool:
    """LitServe's convention: a method receives the request context when it has a parameter
    named `context`."""
    if fn is None:
        return False
    try:
        return "context" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def is_async(fn: Any) -> bool:
    """An `async def` function or an async generator function (a bound method counts)."""
    if fn is None:
        return False
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def overrides(api: Any, name: str, *bases: type) -> bool:
    """True when the API's class defines `name` itself rather than inheriting a base's default."""
    fn = getattr(type(api), name, None)
    if fn is None:
        return callable(getattr(api, name, None))  # set on the instance
    return all(getattr(b, name, None) is not fn for b in bases)


def is_async_iter(obj: Any) -> bool:
    return hasattr(obj, "__anext__")


@types.coroutine
def step() -> Generator[None, None, None]:
    """Hand control back to the worker's loop between two parts of a stream.

    A bare yield: an asyncio task is resumed on the next turn of the loop (what asyncio.sleep(0)
    does), and the worker's own driver of synchronous jobs resumes it after reading its sockets.
    """
    yield


async def close(it: Any) -> None:
    """Close a generator now (GeneratorExit at its yield), not at garbage collection."""
    if it is None:
        return
    try:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
            return
        sclose = getattr(it, "close", None)
        if callable(sclose):
            sclose()
    except Exception as e:  # a generator that ignores GeneratorExit must not kill the worker
        log.warning(f"closing a generator raised {type(e).__name__}: {e}")
