"""Request bodies as LitServe's API process reads them, done in the inference worker.

LitServe types its route's body parameter from decode_request's `request` annotation:

- none, or starlette's/FastAPI's `Request`: a body whose Content-Type is exactly
  `application/x-www-form-urlencoded`, or starts with `multipart/form-data`, is read as a form
  (starlette's `FormData`: fields are `str`, files `UploadFile`, read with `.file.read()`); any
  other body as JSON, whatever its Content-Type says. So `curl -d '{...}'` (a form to curl) is a
  form here too, and a form with `; charset=...` is read as JSON, as in LitServe. decode_request
  never gets a Request object: LitServe passes the parsed value.
- a pydantic model: FastAPI's rules: JSON only under a JSON Content-Type (or none), validation
  errors as FastAPI's 422 `{"detail": [...]}`.

Forms are parsed by starlette's own parsers (the same code as LitServe's, files kept in memory),
which need `python-multipart`. Without it, an urlencoded form is still read (the standard
library's parser), and a multipart body gets a 415 that names the missing package (LitServe
answers 500 in both cases).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Coroutine
from typing import Any
from urllib.parse import parse_qsl

from ferryman.workers.codecs import MALFORMED, RequestError, json_decode

FORM = b"application/x-www-form-urlencoded"
MULTIPART = b"multipart/form-data"
INTERNAL = "Internal server error"  # LitServe's answer to a body it cannot read

_multipart: bool | None = None


def has_multipart() -> bool:
    global _multipart
    if _multipart is None:
        _multipart = bool(
            importlib.util.find_spec("python_multipart") or importlib.util.find_spec("multipart")
        )
        if _multipart:
            # As LitServe does: uploaded files stay in memory, never roll over to disk (where
            # reading them back would need a thread).
            from starlette.formparsers import MultiPartParser

            MultiPartParser.spool_max_size = sys.maxsize
            MultiPartParser.max_file_size = sys.maxsize  # type: ignore[attr-defined]
    return _multipart


def unreadable(message: str) -> RequestError:
    """What LitServe answers when its API process cannot read a body: 500, no traceback."""
    return RequestError(500, "invalid_request", message, detail=INTERNAL)


def json_value(body: bytes) -> Any:
    """Python's json.loads, as starlette's `request.json()`: msgspec first (fast), and Python's
    own parser for what msgspec refuses and Python accepts (NaN, other encodings)."""
    try:
        return json_decode(body)
    except MALFORMED:
        return json.loads(body)


def litserve_body(body: bytes, content_type: bytes) -> Any:
    """The value a Request-annotated (or unannotated) decode_request receives."""
    if content_type == FORM or content_type.startswith(MULTIPART):
        return form(body, content_type)
    try:
        return json_value(body)
    except (ValueError, RecursionError) as e:
        raise unreadable(f"the request body is not valid JSON: {e}") from None


def form(body: bytes, content_type: bytes) -> Any:
    from starlette.datastructures import FormData

    if not has_multipart():
        if content_type.startswith(MULTIPART):
            raise RequestError(
                415,
                "unsupported_media_type",
                "multipart/form-data bodies need the python-multipart package where the "
                "workers run (pip install python-multipart)",
            )
        pairs: list[tuple[str, Any]] = parse_qsl(body.decode("latin-1"), keep_blank_values=True)
        return FormData(pairs)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))],
        "query_string": b"",
    }
    request = starlette_request(scope, body)
    try:
        return _run(request.form())
    except Exception as e:  # starlette's MultiPartException, python-multipart's errors
        raise unreadable(f"the request body is not a valid form: {e}") from None


def starlette_request(scope: dict[str, Any], body: bytes) -> Any:
    """A starlette Request over a body the worker already holds whole."""
    from starlette.requests import Request

    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def _run(awaitable: Any) -> Any:
    """Run starlette's form parsing to its end, here: with files in memory it never waits."""

    async def wrap() -> Any:
        return await awaitable

    coro: Coroutine[Any, Any, Any] = wrap()
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("form parsing tried to wait")


def fastapi_body(body: bytes, content_type: bytes) -> Any:
    """What FastAPI validates against a pydantic body parameter: the JSON value under a JSON
    Content-Type (or none), else the raw bytes; None for no body."""
    if not body:
        return None
    ctype = content_type.split(b";", 1)[0].strip().lower()
    if ctype:
        main, _, sub = ctype.partition(b"/")
        if main != b"application" or not (sub == b"json" or sub.endswith(b"+json")):
            return body
    try:
        return json_value(body)
    except json.JSONDecodeError as e:
        detail = [
            {
                "type": "json_invalid",
                "loc": ["body", e.pos],
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": e.msg},
            }
        ]
        raise RequestError(
            422, "invalid_json", f"JSON decode error: {e.msg}", detail=detail
        ) from None
    except (ValueError, RecursionError):  # not JSON's syntax: its encoding, its depth
        raise RequestError(400, "invalid_request", "There was an error parsing the body") from None


def missing_body() -> RequestError:
    detail = [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}]
    return RequestError(422, "invalid_request", "the request has no body", detail=detail)
