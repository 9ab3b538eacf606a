"""The per-request context a user's method receives: `ferryman.Context`. Built in the worker.

A method with a parameter named `context` (LitServe's convention) gets one per request (a list of
them for batch-level methods); a worker whose methods take none builds none, and the API processes
do not even send it the request's headers.
"""

from __future__ import annotations

import math
import time
from typing import Any
from urllib.parse import parse_qsl


class Context(dict[str, Any]):
    """The request's context: a dict user code may read and write between decode_request,
    predict and encode_response (a spec puts the request's fields there: on the OpenAI route,
    everything but `messages`), and attributes that say where the request came from.
    """

    __slots__ = ("_headers", "_id", "_query", "deadline")

    def __init__(
        self,
        request_id: str,
        deadline: float,
        headers: list[tuple[bytes, bytes]] | dict[str, str] | None = None,
        query: bytes | dict[str, str] = b"",
    ) -> None:
        super().__init__()
        self._id = request_id
        self._headers: Any = headers
        self._query: Any = query
        # time.monotonic() after which the client has had its 504; 0.0: no limit.
        self.deadline = deadline

    @property
    def headers(self) -> dict[str, str]:
        """The HTTP request's headers, names in lower case."""
        h = self._headers
        if not isinstance(h, dict):
            # Decoded on first use only: most requests never look at their headers.
            h = self._headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in (h or ())}
        return h

    @property
    def query(self) -> dict[str, str]:
        """The request's query parameters (the last value of a repeated one)."""
        q = self._query
        if not isinstance(q, dict):
            q = self._query = dict(parse_qsl(q.decode("latin-1"), keep_blank_values=True))
        return q

    @property
    def request_id(self) -> str:
        """The client's X-Request-ID when it sent one, else an id unique within this server."""
        return self.headers.get("x-request-id") or self._id

    def time_left(self) -> float:
        """Seconds until the request's deadline (negative once it passed; inf without one)."""
        if not self.deadline:
            return math.inf
        return self.deadline - time.monotonic()

    def __repr__(self) -> str:
        return f"Context({dict.__repr__(self)}, request_id={self.request_id!r})"
