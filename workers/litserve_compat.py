"""Serve a `litserve.LitAPI` subclass unchanged, the way LitServe would, in the inference worker.

Only touches litserve when the user's module imported it. What LitServe's server and its API
processes would do around the user's methods is done here: set `device`, call `pre_setup` (which
runs LitServe's own checks of a spec), honour the instance's stream / batching settings when the
server's options are at their defaults, read the body as LitServe does (JSON, forms and file
uploads, a pydantic model validated as FastAPI would: workers/forms.py), pass `context` to the
methods that ask for it, run `authorize` (workers/authorize.py), call the LitAPI's own
`decode_request` / `encode_response` (so a spec's defaults are LitServe's), render answers and
streamed items byte for byte as LitServe's FastAPI app does, and shape errors as it does
(`{"detail": ...}`, a bare text 500 where LitServe's API process fails). The specs' routes are in
workers/litserve_specs.py. async methods and `enable_async=True` are served as LitServe serves
them: many requests in flight at once. What ferryman cannot do is refused at start-up with an
error that names the method or setting.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from typing import Any

import msgspec

from ferryman import errors
from ferryman.logs import kv
from ferryman.options import ModelOptions
from ferryman.workers import forms
from ferryman.workers.calls import overrides
from ferryman.workers.codecs import (
    JSON,
    NO_BODY,
    PLAIN,
    PLAIN_500,
    Answer,
    BatchSizeMismatch,
    Codec,
    Failure,
    RequestError,
    describe_http,
    internal,
    json_encode,
)
from ferryman.workers.loader import AppError
from ferryman.workers.loggers import LoggerThread, WorkerLog, configured

log = logging.getLogger("ferryman.worker")

# An instance's own settings, and the option defaults they win over.
INSTANCE_SETTINGS = {"stream": False, "max_batch_size": 1, "batch_timeout": 0.0}
# Failures LitServe answers with a status even on a streaming route: those of its API process
# (reading the body, authorize), before the stream begins; and nobody listens to a cancelled one.
STATUS_STAGES = frozenset(("parse", "authorize", "cancel"))
SPEC_FLAGS = {"openai": "openai", "openai_embedding": "openai-embedding"}


def _litserve() -> Any:
    return sys.modules.get("litserve")


def lit_api_class() -> type:
    return _litserve().LitAPI


def is_litapi(api: Any) -> bool:
    ls = _litserve()
    return ls is not None and isinstance(api, ls.LitAPI)


def lit_spec(api: Any) -> Any:
    """The LitAPI's spec object, unwrapped from LitServe's async wrapper."""
    spec = getattr(api, "_spec", None)
    inner = getattr(spec, "_spec", None) if spec is not None else None
    return inner if inner is not None and type(spec).__name__.startswith("_Async") else spec


def spec_kind(api: Any) -> str | None:
    """The option value of the LitAPI's spec, one of LitServe's two (or a subclass): "openai",
    "openai_embedding"; None for no spec, or another."""
    spec = lit_spec(api)
    if spec is None:
        return None
    from litserve.specs import OpenAIEmbeddingSpec, OpenAISpec

    if isinstance(spec, OpenAISpec):
        return "openai"
    if isinstance(spec, OpenAIEmbeddingSpec):
        return "openai_embedding"
    return None


def prepare(api: Any, options: ModelOptions, device: str) -> ModelOptions:
    """Check what ferryman supports, settle the options, and do LitServe's pre-setup (which runs
    LitServe's own checks of the spec: a generator predict where the spec needs one, ...).

    Returns the options the worker runs with."""
    check(api, options)
    name = type(api).__name__
    # ferryman instantiates the class with no arguments, so its settings come from the server's
    # options; an instance built with settings (app.py:instance, Server(MyAPI(stream=True)))
    # keeps them where the option was left at its default.
    changes: dict[str, Any] = {}
    for key, default in INSTANCE_SETTINGS.items():
        mine = getattr(api, key, default)
        if getattr(options, key) == default and mine != default:
            changes[key] = mine
            log.info(f"using {name}'s {key}={mine!r}", extra=kv(option=key))
    kind = spec_kind(api)
    if kind is None and options.spec is not None:
        # --spec openai on a LitAPI built without one: as if it were built with the spec.
        from litserve.specs import OpenAIEmbeddingSpec, OpenAISpec

        api._spec = OpenAISpec() if options.spec == "openai" else OpenAIEmbeddingSpec()
        kind = options.spec
    if changes:
        options = msgspec.structs.replace(options, **changes)
    api_path = getattr(api, "_api_path", None)
    if api_path and api_path not in ("/predict", options.api_path) and kind is None:
        log.warning(
            f"{name} was built with api_path={api_path!r} but the server routes "
            f"{options.api_path!r}: pass --api-path {api_path}",
        )
    spec = lit_spec(api)
    # A spec decides whether the LitAPI streams (OpenAISpec does), as in LitAPI.__init__.
    api.stream = bool(spec.stream) if spec is not None else options.stream
    api.max_batch_size = options.max_batch_size
    api.batch_timeout = options.batch_timeout
    api.request_timeout = options.timeout if options.timeout is not None else -1
    api.device = device  # LitServe sets it after setup; before as well lets setup read it
    loggers = configured(api)
    api.set_logger_queue(LoggerThread(loggers) if loggers else WorkerLog(name))
    try:
        api.pre_setup()
    except ValueError as e:  # LitServe's own refusal of the API (a spec's checks)
        raise AppError(f"{name}: {_message(e)}") from None
    if spec is not None and getattr(api, "enable_async", False):
        # As LitServe's async loops do: the spec's defaults iterate async generators.
        api.spec = spec.as_async()
    return options


def _message(e: ValueError) -> str:
    """A ValueError's message; LitServe's spec checks raise one with a tuple of parts."""
    return "".join(str(a) for a in e.args) if len(e.args) > 1 else str(e)


def close(api: Any) -> None:
    """The worker stops: let its loggers process what was logged."""
    queue = getattr(api, "_logger_queue", None)
    if isinstance(queue, LoggerThread | WorkerLog):
        queue.close()


def check(api: Any, options: ModelOptions) -> None:
    """Refuse, naming it, what a LitServe server would honour and ferryman would not."""
    name = type(api).__name__
    loop = getattr(api, "_loop", "auto")
    if loop not in ("auto", None):
        raise AppError(
            f"{name}: loop={type(loop).__name__} is not supported by ferryman (its own worker "
            "loop batches and streams); leave loop at 'auto'"
        )
    if getattr(api, "mcp", None):
        raise AppError(f"{name}: mcp= (Model Context Protocol) is not supported by ferryman")
    spec = lit_spec(api)
    if spec is not None:
        kind = spec_kind(api)
        if kind is None:
            raise AppError(
                f"{name}: spec={type(spec).__name__} is not supported by ferryman; "
                "only OpenAISpec and OpenAIEmbeddingSpec"
            )
        if options.spec != kind:
            # The API processes route the spec's path only to a model they know has it.
            raise AppError(
                f"{name} was built with spec={type(spec).__name__}(): start ferryman with "
                f"--spec {SPEC_FLAGS[kind]}"
            )


def authorizer(api: Any) -> Any:
    """An Authorizer for the LitAPI's `authorize`, or None when it has none."""
    fn = getattr(api, "authorize", None)
    if not callable(fn):
        return None
    from ferryman.workers.authorize import Authorizer

    return Authorizer(fn, type(api).__name__)


def health_check(api: Any) -> Any:
    """The LitAPI's own `health` (sync or async), or None when it keeps LitAPI's default."""
    ls = _litserve()
    if ls is not None and overrides(api, "health", ls.LitAPI):
        return api.health
    return None


def codecs(api: Any, stream: bool, spec: str | None, max_batch_size: int) -> dict[str, Codec]:
    """The LitAPI's routes. With a spec, only the spec's route, as in LitServe: its api_path
    (/predict) is then not served (404); a custom api_path replaces the spec's default path,
    which the API processes route here as the spec's route."""
    kind = spec_kind(api) or spec
    if kind == "openai":
        from ferryman.workers.litserve_specs import LitChatCodec

        return {"chat": LitChatCodec(api)}
    if kind == "openai_embedding":
        from ferryman.workers.litserve_specs import LitEmbeddingCodec

        return {"embeddings": LitEmbeddingCodec(api, max_batch_size)}
    return {"predict": LitCodec(api, stream)}


# -- answers and errors, as LitServe's FastAPI app renders them ---------------------------------


def lit_json(value: Any) -> bytes:
    """A value as FastAPI's JSONResponse renders it: jsonable_encoder, then compact JSON, UTF-8,
    NaN refused. Plain values take json.dumps alone (the same bytes, faster)."""
    try:
        out = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except TypeError:
        from fastapi.encoders import jsonable_encoder

        out = json.dumps(
            jsonable_encoder(value), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
    return out.encode()


def plain_500(api_name: str, what: str, e: BaseException) -> Answer:
    """Where LitServe's API process fails on a worker's answer (an output FastAPI cannot encode,
    a spec's check of it), starlette answers a bare text 500; its reason goes to our log."""
    log.error(f"{api_name}: {what}: {type(e).__name__}: {e}", extra=kv(stage="encode_response"))
    return 500, PLAIN, PLAIN_500, None


def lit_describe(e: BaseException, request_id: str, internal_detail: str) -> Failure:
    """LitServe's worker keeps FastAPI's HTTPException (status and detail, not its headers) and
    turns anything else, starlette's own HTTPException included, into a 500."""
    if isinstance(e, RequestError):
        return Failure(e.status, e.kind, e.message, e.detail, e.param)
    if isinstance(e, _http_exception_types()):
        found = describe_http(e, keep_headers=False)
        if found is not None:
            return found
    if isinstance(e, BatchSizeMismatch):
        return internal(request_id)._replace(detail="Batch size mismatch")
    return internal(request_id)._replace(detail=internal_detail)


def _http_exception_types() -> tuple[type, ...]:
    from ferryman.api import HTTPException

    fastapi_exceptions = sys.modules.get("fastapi.exceptions")
    found = getattr(fastapi_exceptions, "HTTPException", None)
    return (HTTPException, found) if isinstance(found, type) else (HTTPException,)


def detail_reply(f: Failure) -> Answer:
    """FastAPI's answer to an HTTPException: `{"detail": ...}`, no body where the status has
    none; a bare text 500 where LitServe's API process fails."""
    if f.plain:
        return f.status, PLAIN, PLAIN_500, f.headers
    if f.status in NO_BODY or f.status < 200:
        return f.status, "", b"", f.headers
    return f.status, JSON, errors.litserve_error(f.detail), f.headers


class LitRenderer:
    """Streamed items rendered by the LitAPI's format_encoded_response: LitServe's bytes."""

    __slots__ = ("format",)
    whole = False

    def __init__(self, fmt: Any) -> None:
        self.format = fmt

    def item(self, item: Any) -> bytes:
        out = self.format(item)
        if isinstance(out, str):
            return out.encode()
        if isinstance(out, bytes):
            return out
        return json_encode(out) + b"\n"

    def end(self) -> bytes:
        return b""


class LitCodec(Codec):
    """The api_path route of a LitAPI, read and rendered as LitServe does.

    A stream has no Content-Type (LitServe's StreamingResponse sends none), and fails as
    LitServe's does: once the request reached decode_request its status is 200, and an error
    only ends the body, before or after the first item."""

    shape = errors.LITSERVE
    batch_encodes_streams = True
    stream_content_type = ""

    def __init__(self, api: Any, stream: bool) -> None:
        super().__init__(api, stream)
        self.name = type(api).__name__
        # The LitAPI's own methods, as LitServe calls them (a default one is LitAPI's).
        self.set_user_methods(api.decode_request, api.encode_response)
        annotation = _request_annotation(api)
        self.request_model = _pydantic_model(annotation)
        self.response_model = _pydantic_model(_return_annotation(api))
        self.format = api.format_encoded_response

    def parse(self, body: bytes, content_type: bytes = b"") -> Any:
        if self.request_model is None:
            return forms.litserve_body(body, content_type)
        value = forms.fastapi_body(body, content_type)
        if value is None:
            raise forms.missing_body()
        return validate(self.request_model, value)

    def answer(self, encoded: Any, request: Any) -> Answer:
        body = getattr(encoded, "body", None)
        if isinstance(body, bytes) and hasattr(encoded, "status_code"):
            # A starlette/FastAPI Response: its status, body and headers, as they are.
            headers = [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in getattr(encoded, "raw_headers", ())
                if k.lower() not in (b"content-type", b"content-length")
            ]
            ctype = encoded.headers.get("content-type", "")
            return int(encoded.status_code), ctype, body, headers or None
        try:
            if self.response_model is not None:
                encoded = self.response_model.model_validate(encoded)
            return 200, JSON, lit_json(encoded), None
        except Exception as e:
            return plain_500(self.name, "its answer cannot be sent as JSON", e)

    def renderer(self, request: Any) -> LitRenderer:
        return LitRenderer(self.format)

    def describe(self, e: BaseException, request_id: str) -> Failure:
        return lit_describe(e, request_id, forms.INTERNAL)

    def fails_as_stream(self, request: Any, stage: str) -> bool:
        # LitServe's stream had begun once the request reached its worker: the body just ends.
        return self.stream and stage not in STATUS_STAGES

    def error_reply(self, f: Failure, request_id: str, request: Any, stage: str) -> Answer:
        return detail_reply(f)

    def stream_error(self, f: Failure, request_id: str) -> bytes:
        return b""


def validate(model: Any, value: Any) -> Any:
    """`model` validated from the body as FastAPI does: 422 with FastAPI's `{"detail": [...]}`,
    each error located in the body."""
    try:
        # FastAPI validates a body parameter from attributes too (hence its error for a list:
        # "a valid dictionary or object to extract fields from").
        return model.model_validate(value, from_attributes=True)
    except Exception as e:  # pydantic.ValidationError, without importing pydantic here
        found = getattr(e, "errors", None)
        try:
            from fastapi.encoders import jsonable_encoder

            listed = jsonable_encoder(found(include_url=False)) if callable(found) else None
        except Exception:
            listed = None
        if not isinstance(listed, list):
            raise RequestError(422, "invalid_request", f"{model.__name__}: {e}") from None
        detail = [{**err, "loc": ["body", *err.get("loc", ())]} for err in listed]
        summary = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ())) or 'body'}: {err.get('msg')}"
            for err in listed
        )
        raise RequestError(
            422, "invalid_request", f"{model.__name__}: {summary}", detail=detail
        ) from None


def _signature(fn: Any) -> inspect.Signature | None:
    try:
        try:
            return inspect.signature(fn, eval_str=True)
        except NameError:  # an annotation that does not resolve: FastAPI would fail on it too
            return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _request_annotation(api: Any) -> Any:
    sig = _signature(getattr(api, "decode_request", None))
    if sig is None:
        return None
    params = list(sig.parameters.values())
    if not params or params[0].annotation is inspect.Parameter.empty:
        return None
    return params[0].annotation


def _return_annotation(api: Any) -> Any:
    sig = _signature(getattr(api, "encode_response", None))
    if sig is None or sig.return_annotation is inspect.Signature.empty:
        return None
    return sig.return_annotation


def _pydantic_model(annotation: Any) -> Any:
    return (
        annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_validate")
        else None
    )
