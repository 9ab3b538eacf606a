"""Serve a `litserve.LitAPI` subclass unchanged, the way LitServe would, in the inference worker.

Only touches litserve when the user's module imported it. What LitServe's server would do around
the user's methods is done here: set `device`, call `pre_setup` (LitAPI's default unbatch needs
it), honour the instance's stream / batching settings when the server's options are at their
defaults, pass `context` to methods that ask for it, validate a pydantic-annotated decode_request
argument, render streamed items with `format_encoded_response`, answer a starlette/FastAPI
`Response` as is, and shape errors as FastAPI does (`{"detail": ...}`). async methods and
`enable_async=True` are served as LitServe serves them: many requests in flight at once. What
ferryman cannot do is refused at startup with an error that names the method or setting.
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
from ferryman.workers.calls import overrides
from ferryman.workers.codecs import JSON, Codec, RequestError, json_encode
from ferryman.workers.loader import AppError
from ferryman.workers.openai_spec import OpenAICodec

log = logging.getLogger("ferryman.worker")

# An instance's own settings, and the option defaults they win over.
INSTANCE_SETTINGS = {"stream": False, "max_batch_size": 1, "batch_timeout": 0.0}


def _litserve() -> Any:
    return sys.modules.get("litserve")


def lit_api_class() -> type:
    return _litserve().LitAPI


def is_litapi(api: Any) -> bool:
    ls = _litserve()
    return ls is not None and isinstance(api, ls.LitAPI)


def prepare(api: Any, options: ModelOptions, device: str) -> ModelOptions:
    """Check what ferryman supports, settle the options, and do LitServe's pre-setup.

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
    if changes:
        options = msgspec.structs.replace(options, **changes)
    api_path = getattr(api, "_api_path", None)
    if api_path and api_path not in ("/predict", options.api_path) and not api.spec:
        log.warning(
            f"{name} was built with api_path={api_path!r} but the server routes "
            f"{options.api_path!r}: pass --api-path {api_path}",
        )
    api.stream = options.stream
    api.max_batch_size = options.max_batch_size
    api.batch_timeout = options.batch_timeout
    api.request_timeout = options.timeout if options.timeout is not None else -1
    api.device = device  # LitServe sets it after setup; before as well lets setup read it
    api.set_logger_queue(_LogQueue(name))
    api.pre_setup()
    return options


def check(api: Any, options: ModelOptions) -> None:
    """Refuse, naming it, what a LitServe server would honour and ferryman would not."""
    ls = _litserve()
    name = type(api).__name__
    loop = getattr(api, "_loop", "auto")
    if loop not in ("auto", None):
        raise AppError(
            f"{name}: loop={type(loop).__name__} is not supported by ferryman (its own worker "
            "loop batches and streams); leave loop at 'auto'"
        )
    if getattr(api, "mcp", None):
        raise AppError(f"{name}: mcp= (Model Context Protocol) is not supported by ferryman")
    if callable(getattr(api, "authorize", None)):
        raise AppError(
            f"{name}.authorize is not supported by ferryman: authenticate in front of it "
            "(a proxy or an ingress); the request would otherwise be served unchecked"
        )
    spec = getattr(api, "spec", None)
    if spec is not None:
        if type(spec).__name__ != "OpenAISpec":
            raise AppError(
                f"{name}: spec={type(spec).__name__} is not supported by ferryman; "
                "only OpenAISpec (--spec openai)"
            )
        if options.spec != "openai":
            raise AppError(
                f"{name} was built with spec=OpenAISpec(): start ferryman with --spec openai"
            )
    if _request_annotation(api) is _starlette_request():
        raise AppError(
            f"{name}.decode_request takes a starlette/FastAPI Request; ferryman passes the "
            "parsed JSON body (form data and file uploads are not supported)"
        )
    if ls is not None and overrides(api, "health", ls.LitAPI):
        log.warning(
            f"{name}.health is not called by ferryman: GET /health and /ready report on the "
            "processes and workers"
        )


def codecs(api: Any, stream: bool, spec: str | None) -> dict[str, Codec]:
    out: dict[str, Codec] = {"predict": LitCodec(api, stream)}
    if spec == "openai":
        out["chat"] = LitOpenAICodec(api)
    return out


def _user_method(api: Any, name: str) -> Any:
    """The user's own method, or None where LitAPI's default would consult its LitServe spec
    (ferryman's codecs do that part)."""
    return getattr(api, name) if overrides(api, name, lit_api_class()) else None


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
    """The api_path route of a LitAPI, rendered as LitServe renders it."""

    shape = errors.LITSERVE
    batch_encodes_streams = True

    def __init__(self, api: Any, stream: bool) -> None:
        super().__init__(api, stream)
        self.set_user_methods(
            _user_method(api, "decode_request"), _user_method(api, "encode_response")
        )
        self.request_model = _pydantic_model(_request_annotation(api))
        self.format = api.format_encoded_response

    def parse(self, body: bytes) -> Any:
        request = super().parse(body)
        if self.request_model is not None:
            request = _validate(self.request_model, request)
        return request

    def answer(self, encoded: Any) -> tuple[int, str, bytes, list[tuple[str, str]] | None]:
        body = getattr(encoded, "body", None)
        if isinstance(body, bytes) and hasattr(encoded, "status_code"):
            # A starlette/FastAPI Response: its status, content type, body and headers.
            ctype = getattr(encoded, "media_type", None) or encoded.headers.get(
                "content-type", "application/octet-stream"
            )
            headers = [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in getattr(encoded, "raw_headers", ())
                if k.lower() not in (b"content-type", b"content-length")
            ]
            return int(encoded.status_code), str(ctype), body, headers or None
        return 200, JSON, json_encode(encoded), None

    def renderer(self, request: Any) -> LitRenderer:
        return LitRenderer(self.format)


class LitOpenAICodec(OpenAICodec):
    """The OpenAI route of a LitAPI: decode_request gets LitServe's ChatCompletionRequest."""

    batch_encodes_streams = True

    def __init__(self, api: Any) -> None:
        super().__init__(api)
        from litserve.specs.openai import ChatCompletionRequest

        self.request_model = ChatCompletionRequest
        self.set_user_methods(
            _user_method(api, "decode_request"), _user_method(api, "encode_response")
        )

    def populate(self, ctx: Any, request: Any) -> None:
        pass  # done in decode, from the validated request, defaults included (as LitServe)

    def decode(self, request: Any, ctx: Any) -> Any:
        req = _validate(self.request_model, request, status=400)
        if ctx is not None:
            fields = req.model_dump()
            fields.pop("messages", None)
            ctx.update(fields)
        return super().decode(req, ctx)


def _request_annotation(api: Any) -> Any:
    fn = getattr(api, "decode_request", None)
    try:
        try:
            sig = inspect.signature(fn, eval_str=True)  # type: ignore[arg-type]
        except NameError:  # an annotation that does not resolve: FastAPI would fail on it too
            sig = inspect.signature(fn)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if not params or params[0].annotation is inspect.Parameter.empty:
        return None
    return params[0].annotation


def _starlette_request() -> Any:
    mod = sys.modules.get("starlette.requests")
    return getattr(mod, "Request", object())


def _pydantic_model(annotation: Any) -> Any:
    return (
        annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_validate")
        else None
    )


def _validate(model: Any, request: Any, status: int = 422) -> Any:
    try:
        return model.model_validate(request)
    except Exception as e:  # pydantic.ValidationError, without importing pydantic here
        as_json = getattr(e, "json", None)
        try:
            # FastAPI's 422 detail: the list of errors, located in the body.
            found = json.loads(as_json(include_url=False)) if callable(as_json) else None
        except Exception:
            found = None
        if not isinstance(found, list):
            raise RequestError(status, "invalid_request", f"{model.__name__}: {e}") from None
        detail = [{**err, "loc": ["body", *err.get("loc", ())]} for err in found]
        summary = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ())) or 'body'}: {err.get('msg')}"
            for err in found
        )
        raise RequestError(
            status, "invalid_request", f"{model.__name__}: {summary}", detail=detail
        ) from None


class _LogQueue:
    """LitAPI.log(key, value) lands in the worker's log instead of LitServe's logger process."""

    def __init__(self, api_name: str) -> None:
        self.api_name = api_name

    def put(self, item: Any) -> None:
        key, value = item
        log.info(f"{self.api_name}.log {key}={value!r}", extra=kv(key=key))
