"""How the inference worker parses a route's request bodies and renders its answers and errors.

A codec per route: "predict" (the model's api_path), "chat" (spec=openai) and "embeddings"
(spec=openai_embedding). Specs (OpenAI) and LitServe's conventions subclass the plain JSON codec.
A codec calls the user's decode_request / encode_response; the engine calls everything else and
awaits what is async.
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
PLAIN = "text/plain; charset=utf-8"
# What starlette answers when an exception escapes everything (LitServe's API process does so for
# an answer it cannot serialise): a bare text 500.
PLAIN_500 = b"Internal Server Error"
# Statuses whose answer has no body (RFC 9110), as starlette's Response sends them.
NO_BODY = frozenset((204, 205, 304))

Answer = tuple[int, str, bytes, "list[tuple[str, str]] | None"]


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
    headers: list[tuple[str, str]] | None = None  # an HTTPException's own, where kept
    plain: bool = False  # starlette's bare text 500, where LitServe answers one


class Choices(tuple[Any, ...]):
    """One step of n runs of one request (OpenAI's `n`): an item of each."""


class BatchSizeMismatch(RuntimeError):
    """unbatch returned a number of outputs other than the batch's size."""


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
    if isinstance(status, int) and 400 <= status <= 599:
        found = describe_http(e, keep_headers=False)
        if found is not None:
            return found
    return internal(request_id)


def internal(request_id: str) -> Failure:
    return Failure(500, "internal_error", errors.internal_error_message(request_id), LITSERVE_500)


def describe_http(e: BaseException, keep_headers: bool = True) -> Failure | None:
    """An HTTPException-like exception (an int status_code and a detail) as its Failure, with its
    headers where kept; None for anything else."""
    status = getattr(e, "status_code", None)
    if not isinstance(status, int) or isinstance(status, bool) or not hasattr(e, "detail"):
        return None
    detail = e.detail
    if detail is None:
        try:
            detail = http.HTTPStatus(status).phrase
        except ValueError:
            detail = str(status)
    message = detail if isinstance(detail, str) else json_encode(detail).decode()
    headers = getattr(e, "headers", None) if keep_headers else None
    listed = [(str(k), str(v)) for k, v in headers.items()] if isinstance(headers, dict) else None
    return Failure(status, "http_exception", message, detail, headers=listed or None)


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
    may_copy = False  # copies() may say more than 1
    fails_by_request = False  # how a request fails depends on what it asked (a stream or not)

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

    def parse(self, body: bytes, content_type: bytes = b"") -> Any:
        """The request the user's code sees, from the body (and, for some codecs, its
        Content-Type)."""
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

    def copies(self, request: Any) -> int:
        """How many times the request runs, its items answered together (OpenAI's `n`)."""
        return 1

    def copy(self, request: Any) -> Any:
        """The request one of those runs sees."""
        return request

    # -- answers -----------------------------------------------------------------------------

    def encode(self, output: Any, ctx: Any) -> Any:
        """encode_response on one output, a request's stream or a batch's stream (or its
        awaitable)."""
        if self.encode_ctx:
            return self.user_encode(output, context=ctx)
        return self.user_encode(output)

    def answer(self, encoded: Any, request: Any) -> Answer:
        """(status, content type, body, extra headers) of a plain answer."""
        return 200, JSON, json_encode(encoded), None

    def items(self, encoded: Any) -> Any:
        """What encode_response made of a stream, as something to iterate."""
        return encoded

    def renderer(self, request: Any) -> Renderer:
        return NdjsonRenderer()

    # -- errors ------------------------------------------------------------------------------

    def describe(self, e: BaseException, request_id: str) -> Failure:
        """What the client is told of an exception raised while answering."""
        return describe(e, request_id)

    def fails_as_stream(self, request: Any, stage: str) -> bool:
        """A failure at `stage` (see error_reply) is told inside a 200 stream, as a server whose
        streamed answer had begun would (LitServe's): stream_error's bytes, then the end."""
        return False

    def error_reply(self, f: Failure, request_id: str, request: Any, stage: str) -> Answer:
        """The answer to a request that failed before its first part went out. `stage`:
        "parse", "decode_request", "predict", "encode_response", "queue" (expired),
        "cancel" (nobody listens), "authorize"."""
        if f.plain:
            return f.status, PLAIN, PLAIN_500, f.headers
        return f.status, JSON, self.error_body(f, request_id), f.headers

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


def build_codecs(
    api: Any, stream: bool, spec: str | None, max_batch_size: int = 1
) -> dict[str, Codec]:
    """Route name -> codec: "predict" (the api_path), with spec=openai "chat", with
    spec=openai_embedding "embeddings"."""
    from ferryman.workers import litserve_compat

    if litserve_compat.is_litapi(api):
        return litserve_compat.codecs(api, stream, spec, max_batch_size)
    codecs = {"predict": Codec(api, stream)}
    if spec == "openai":
        from ferryman.workers.openai_spec import OpenAICodec

        codecs["chat"] = OpenAICodec(api)
    elif spec == "openai_embedding":
        from ferryman.workers.embeddings import EmbeddingCodec

        codecs["embeddings"] = EmbeddingCodec(api, max_batch_size)
    return codecs
