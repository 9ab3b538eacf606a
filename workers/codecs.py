"""How the inference worker parses a route's request bodies and renders its answers and errors.

A codec per route: "predict" (the model's api_path) and, with spec=openai, "chat". Specs (OpenAI)
and LitServe's conventions subclass the plain JSON codec. A codec calls the user's
decode_request / encode_response; the engine calls everything else and awaits what is async.
"""

from __future__ import annotations

import http
import logging
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import msgspec

from ferryman import errors
from ferryman.context import Context
from ferryman.workers.calls import takes_context

log = logging.getLogger("ferryman.worker")

JSON = "application/json"
NDJSON = "application/x-ndjson"


def _enc_hook(obj: Any) -> Any:
    # numpy arrays and scalars, torch tensors: what models return most often.
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    # pydantic models: what LitServe users return from encode_response.
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


json_encode = msgspec.json.Encoder(enc_hook=_enc_hook).encode
json_decode = msgspec.json.decode
# What a malformed body raises in msgspec: not only DecodeError (nesting too deep, bad UTF-8).
MALFORMED = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)


class RequestError(Exception):
    """The request itself is wrong (or expired): an answer with this status, nothing logged."""

    def __init__(
        self, status: int, kind: str, message: str, param: str | None = None, detail: Any = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.param = status, kind, message, param
        self.detail = message if detail is None else detail


class Failure(NamedTuple):
    """What a client is told of an exception: status, error type, message, LitServe's detail."""

    status: int
    kind: str
    message: str
    detail: Any
    param: str | None = None


LITSERVE_500 = "Internal server error"  # litserve/server.py's own wording


def describe(e: BaseException, request_id: str) -> Failure:
    """The answer to an exception raised while answering a request.

    An HTTPException-like exception (an int status_code 400-599 and a detail: ferryman's,
    FastAPI's, starlette's) keeps its status and detail; anything else is a 500 whose text stays
    in the log: an exception's message may hold paths, data or secrets.
    """
    if isinstance(e, RequestError):
        return Failure(e.status, e.kind, e.message, e.detail, e.param)
    status = getattr(e, "status_code", None)
    if (
        isinstance(status, int)
        and not isinstance(status, bool)
        and 400 <= status <= 599
        and hasattr(e, "detail")
    ):
        detail = e.detail
        if detail is None:
            try:
                detail = http.HTTPStatus(status).phrase
            except ValueError:
                detail = str(status)
        message = detail if isinstance(detail, str) else json_encode(detail).decode()
        return Failure(status, "http_exception", message, detail)
    return Failure(500, "internal_error", errors.internal_error_message(request_id), LITSERVE_500)


class Renderer(Protocol):
    """Turns one request's stream of encoded items into the bytes its client gets."""

    whole: bool  # the answer goes out in one piece at the end, not item by item

    def item(self, item: Any) -> bytes: ...

    def end(self) -> bytes: ...


class NdjsonRenderer:
    __slots__ = ()
    whole = False

    def item(self, item: Any) -> bytes:
        return json_encode(item) + b"\n"

    def end(self) -> bytes:
        return b""


def _identity(x: Any) -> Any:
    return x


class Codec:
    """The plain JSON route: the body goes to decode_request, encode_response's value comes back
    as JSON; a stream is NDJSON, one line per item encode_response yields.

    `iterates`: predict's output is iterated (a generator), each item encoded as it comes;
    `is_stream(request)`: those items also reach the client as they come (else the renderer
    gives one body at the end). `batch_encodes_streams`: with batching, encode_response sees the
    whole batch's stream, one list per step (LitServe's way) instead of each request's own items.
    """

    content_type = JSON
    stream_content_type = NDJSON
    shape = errors.FERRYMAN
    batch_encodes_streams = False

    def __init__(self, api: Any, stream: bool) -> None:
        self.api = api
        self.stream = stream
        self.iterates = stream
        self.set_user_methods(
            getattr(api, "decode_request", None), getattr(api, "encode_response", None)
        )

    def set_user_methods(self, decode: Any, encode: Any) -> None:
        self.user_decode: Callable[..., Any] = decode or _identity
        self.user_encode: Callable[..., Any] = encode or _identity
        self.decode_ctx = takes_context(decode)
        self.encode_ctx = takes_context(encode)

    @property
    def wants_context(self) -> bool:
        return self.decode_ctx or self.encode_ctx

    @property
    def user_methods(self) -> tuple[Callable[..., Any], ...]:
        return self.user_decode, self.user_encode

    # -- requests ----------------------------------------------------------------------------

    def parse(self, body: bytes) -> Any:
        if not body:
            raise RequestError(400, "invalid_request", "the request body is empty; send JSON")
        try:
            return json_decode(body)
        except MALFORMED as e:
            raise RequestError(
                400, "invalid_json", f"the request body is not valid JSON: {_reason(e)}"
            ) from None

    def populate(self, ctx: Context, request: Any) -> None:
        """Put what the spec knows about the request into its context."""

    def decode(self, request: Any, ctx: Context | None) -> Any:
        """decode_request's value, or its awaitable."""
        if self.decode_ctx:
            return self.user_decode(request, context=ctx)
        return self.user_decode(request)

    def is_stream(self, request: Any) -> bool:
        return self.stream

    # -- answers -----------------------------------------------------------------------------

    def encode(self, output: Any, ctx: Any) -> Any:
        """encode_response on one output, a request's stream or a batch's stream (or its
        awaitable)."""
        if self.encode_ctx:
            return self.user_encode(output, context=ctx)
        return self.user_encode(output)

    def answer(self, encoded: Any) -> tuple[int, str, bytes, list[tuple[str, str]] | None]:
        """(status, content type, body, extra headers) of a plain answer."""
        return 200, JSON, json_encode(encoded), None

    def items(self, encoded: Any) -> Any:
        """What encode_response made of a stream, as something to iterate."""
        return encoded

    def renderer(self, request: Any) -> Renderer:
        return NdjsonRenderer()

    # -- errors ------------------------------------------------------------------------------

    def error_body(self, f: Failure, request_id: str) -> bytes:
        extra = {"request_id": request_id} if f.status >= 500 else {}
        return errors.body(self.shape, f.status, f.kind, f.message, f.param, f.detail, **extra)

    def stream_error(self, f: Failure, request_id: str) -> bytes:
        """The last part of a stream that failed after its first part went out."""
        return self.error_body(f, request_id) + b"\n"


def _reason(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deep"
    if isinstance(e, UnicodeDecodeError):
        return "invalid UTF-8"
    return str(e)


def build_codecs(api: Any, stream: bool, spec: str | None) -> dict[str, Codec]:
    """Route name -> codec: "predict" (the api_path) and, with spec=openai, "chat"."""
    from ferryman.workers import litserve_compat

    if litserve_compat.is_litapi(api):
        return litserve_compat.codecs(api, stream, spec)
    codecs = {"predict": Codec(api, stream)}
    if spec == "openai":
        from ferryman.workers.openai_spec import OpenAICodec

        codecs["chat"] = OpenAICodec(api)
    return codecs
