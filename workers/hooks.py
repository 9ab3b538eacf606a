"""Callbacks in the inference worker: user hooks around its life and each predict, as LitServe's.

An API lists them in a `callbacks` attribute. Each event resolves, once, to one function that
calls every listener, or to None when nobody listens, so that an unused hook costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ferryman.logs import kv

log = logging.getLogger("ferryman.worker")

Hook = Callable[[Any], None]


class Callbacks:
    __slots__ = ("after_predict", "before_predict", "server_end", "server_start")

    def __init__(self, callbacks: list[Any]) -> None:
        self.server_start = _event(callbacks, "on_server_start")
        self.server_end = _event(callbacks, "on_server_end")
        self.before_predict = _event(callbacks, "on_before_predict")
        self.after_predict = _event(callbacks, "on_after_predict")

    @classmethod
    def of(cls, api: Any) -> Callbacks:
        found = getattr(api, "callbacks", None) or []
        if not isinstance(found, list | tuple):
            found = [found]
        return cls(list(found))


def _event(callbacks: list[Any], name: str) -> Hook | None:
    listeners = [
        getattr(cb, name)
        for cb in callbacks
        if callable(getattr(cb, name, None)) and not _is_base_noop(cb, name)
    ]
    if not listeners:
        return None

    def fire(api: Any) -> None:
        for fn in listeners:
            try:
                fn(api)
            except Exception as e:  # a broken hook must not fail the request it watches
                log.warning(
                    f"callback {type(getattr(fn, '__self__', fn)).__name__}.{name} raised "
                    f"{type(e).__name__}: {e}",
                    extra=kv(event=name),
                )

    return fire


def _is_base_noop(cb: Any, name: str) -> bool:
    """The do-nothing default of a Callback base class (ferryman's or LitServe's)."""
    fn = getattr(type(cb), name, None)
    return getattr(fn, "__qualname__", "") == f"Callback.{name}"
