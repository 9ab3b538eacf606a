"""Error bodies, in each shape a client may expect. Used by API processes and workers alike.

- ferryman's own: {"error": {"type", "message"}} (and "request_id" where there is one)
- OpenAI's, on the /v1/chat/completions and /v1/embeddings routes:
  {"error": {"message", "type", "param", "code"}}, so the openai client raises its matching error
- LitServe's, for a LitAPI: {"detail": ...}, as FastAPI answers, so clients written for LitServe
  keep working
"""

from __future__ import annotations

from typing import Any

import msgspec

FERRYMAN, OPENAI, LITSERVE = "ferryman", "openai", "litserve"

_encode = msgspec.json.encode

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def ferryman_error(kind: str, message: str, **extra: Any) -> bytes:
    return _encode({"error": {"type": kind, "message": message, **extra}})


def openai_error(status: int, code: str, message: str, param: str | None = None) -> bytes:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    kind = _OPENAI_TYPES.get(status) or (
        "invalid_request_error" if status < 500 else "server_error"
    )
    return _encode({"error": {"message": message, "type": kind, "param": param, "code": code}})


def litserve_error(detail: Any) -> bytes:
    return _encode({"detail": detail})


def body(
    shape: str,
    status: int,
    kind: str,
    message: str,
    param: str | None = None,
    detail: Any = None,
    **extra: Any,
) -> bytes:
    """An error body in `shape`. `detail` is what a LitServe client sees (default: message)."""
    if shape == OPENAI:
        return openai_error(status, kind, message, param)
    if shape == LITSERVE:
        return litserve_error(message if detail is None else detail)
    return ferryman_error(kind, message, **extra)


def internal_error_message(request_id: str) -> str:
    """What a client is told of a 500: never the exception's text, which may hold secrets."""
    return f"internal server error (request id {request_id}); the details are in the server log"
