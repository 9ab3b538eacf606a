"""ferryman: serve a model over HTTP under a real process supervisor.

    import ferryman

    class Doubler(ferryman.API):
        def setup(self, device): self.k = 2
        def decode_request(self, request): return request["input"]
        def predict(self, x): return x * self.k
        def encode_response(self, output): return {"output": output}

    ferryman.Server(Doubler(), workers_per_device=2).run(port=8000)

Everything a user imports is re-exported here, and only here. The re-exports load on first use:
every ferryman process imports this package (its protocol lives here), and the supervisor and the
API processes need neither the worker engine nor `Server`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ferryman._version import __version__

if TYPE_CHECKING:
    from ferryman.api import API, Callback, HTTPException, OpenAISpec
    from ferryman.context import Context
    from ferryman.server import Server

_EXPORTS = {
    "API": "ferryman.api",
    "Callback": "ferryman.api",
    "HTTPException": "ferryman.api",
    "OpenAISpec": "ferryman.api",
    "Context": "ferryman.context",
    "Server": "ferryman.server",
}

__all__ = ["API", "Callback", "Context", "HTTPException", "OpenAISpec", "Server", "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ferryman' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
