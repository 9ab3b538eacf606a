"""Callbacks in the inference worker: user hooks around its life and each request, as LitServe's.

Where they come from: the API's `callbacks` attribute (ferryman's way), and, for a LitServe file,
the `callbacks=` of its `LitServer(...)`, which the launcher attaches to the pickled LitAPI as
`LITSERVER_CALLBACKS` (LitServe keeps them on the server, which ferryman's workers never see).

How they are called: a `litserve.Callback` as LitServe calls it, with keyword arguments
(`lit_api=` for the worker's hooks, `litserver=None` and `active_requests=` for the server's);
anything else (a `ferryman.Callback`) with the API as its one positional argument.

Where: every hook runs in each inference worker. LitServe runs `on_server_start` in its main
process and `on_request` / `on_response` / `on_server_end` in its API processes, which in ferryman
never import user code; here `on_server_start` runs after setup, `on_request` when the worker
takes the request (after `authorize`), `on_response` when its answer is sent, `on_server_end`
after the worker's last request.

Each event resolves, once, to one function that calls every listener, or to None when nobody
listens, so that an unused hook costs a None test.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from ferryman.logs import kv

log = logging.getLogger("ferryman.worker")

# The attribute of a pickled LitAPI that holds its LitServer's callbacks= (set by the launcher).
LITSERVER_CALLBACKS = "_ferryman_callbacks"

Hook = Callable[..., None]

# event attribute -> (method name, keyword the API is given under, LitServe-style)
_EVENTS = {
    "before_setup": ("on_before_setup", "lit_api"),
    "after_setup": ("on_after_setup", "lit_api"),
    "server_start": ("on_server_start", "litserver"),
    "server_end": ("on_server_end", "litserver"),
    "request": ("on_request", "litserver"),
    "before_decode": ("on_before_decode_request", "lit_api"),
    "after_decode": ("on_after_decode_request", "lit_api"),
    "before_predict": ("on_before_predict", "lit_api"),
    "after_predict": ("on_after_predict", "lit_api"),
    "before_encode": ("on_before_encode_response", "lit_api"),
    "after_encode": ("on_after_encode_response", "lit_api"),
    "response": ("on_response", "litserver"),
}


class Callbacks:
    __slots__ = tuple(_EVENTS)

    before_setup: Hook | None
    after_setup: Hook | None
    server_start: Hook | None
    server_end: Hook | None
    request: Hook | None
    before_decode: Hook | None
    after_decode: Hook | None
    before_predict: Hook | None
    after_predict: Hook | None
    before_encode: Hook | None
    after_encode: Hook | None
    response: Hook | None

    def __init__(self, callbacks: list[Any]) -> None:
        for attr, (name, keyword) in _EVENTS.items():
            setattr(self, attr, _event(callbacks, name, keyword))

    @classmethod
    def of(cls, api: Any) -> Callbacks:
        return cls(listed(api))


def listed(api: Any) -> list[Any]:
    """The API's callbacks: its own `callbacks` attribute, then its LitServer's."""
    out: list[Any] = []
    for found in (getattr(api, "callbacks", None), getattr(api, LITSERVER_CALLBACKS, None)):
        if not found:
            continue
        out.extend(found if isinstance(found, list | tuple) else [found])
    return out


def _litserve_style(cb: Any) -> bool:
    ls = sys.modules.get("litserve")
    base = getattr(ls, "Callback", None) if ls is not None else None
    return isinstance(base, type) and isinstance(cb, base)


def _event(callbacks: list[Any], name: str, keyword: str) -> Hook | None:
    listeners = [
        (getattr(cb, name), _litserve_style(cb))
        for cb in callbacks
        if callable(getattr(cb, name, None)) and not _is_base_noop(cb, name)
    ]
    if not listeners:
        return None

    def fire(api: Any, **extra: Any) -> None:
        for fn, lit in listeners:
            try:
                if not lit:
                    fn(api)
                elif keyword == "lit_api":
                    fn(lit_api=api)
                else:  # no LitServer object lives in a worker
                    fn(litserver=None, **extra)
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
