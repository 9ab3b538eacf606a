"""Serve a `litserve.LitAPI` subclass unchanged, the way LitServe would.

Runs in inference workers only, and only touches litserve when the user's module imported it.
What LitServe's server would do around the user's methods is done here: set `device`, call
`pre_setup` (LitAPI's default unbatch needs it), honour the instance's stream / batching settings
when the server's options are at their defaults, pass `context` to methods that ask for it,
validate a pydantic-annotated decode_request argument, render streamed items with
`format_encoded_response`, and answer a starlette/FastAPI `Response` as is. What ferryman cannot
do is refused at startup with an error that names the method or setting.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from ferryman.workers.engine import Codec, RequestError, Task, json_encode, overrides
from ferryman.workers.loader import AppError
from ferryman.workers.openai_spec import OpenAICodec

from ferryman.logs import kv

log = logging.getLogger("ferryman.worker")

USER_METHODS = ("decode_request", "predict", "encode_response", "batch", "unbatch")
DEFAULTS = {"stream": False, "max_batch_size": 1, "batch_timeout": 0.0}


def _litserve() -> Any:
    return sys.modules.get("litserve")


def is_litapi(api: Any) -> bool:
    ls = _litserve()
    return ls is not None and isinstance(api, ls.LitAPI)


def prepare(api: Any, options: dict[str, Any], device: str) -> None:
    """Check what ferryman supports, settle the options, and do LitServe's pre-setup."""
    check(api, options)
    name = type(api).__name__
    # ferryman instantiates the class with no arguments, so its settings come from the server's
    # options; an instance built with settings (app.py:instance, Server(MyAPI(stream=True)))
    # keeps them where the option was left at its default.
    for key, default in DEFAULTS.items():
        mine = getattr(api, key, default)
        if options.get(key, default) == default and mine != default:
            options[key] = mine
            log.info(f"using {name}'s {key}={mine!r}", extra=kv(option=key))
    api_path = getattr(api, "_api_path", None)
    if api_path and api_path not in ("/predict", options.get("api_path")) and not api.spec:
        log.warning(
            f"{name} was built with api_path={api_path!r} but the server routes "
            f"{options.get('api_path')!r}: pass --api-path {api_path}",
        )
    api.stream = bool(options.get("stream"))
    api.max_batch_size = int(options.get("max_batch_size", 1))
    api.batch_timeout = float(options.get("batch_timeout", 0.0))
    api.request_timeout = float(options.get("timeout", 30.0))
    api.device = device  # LitServe sets it after setup; before as well lets setup read it
    api.set_logger_queue(_LogQueue(name))
    api.pre_setup()


def check(api: Any, options: dict[str, Any]) -> None:
    """Refuse, naming it, what a LitServe server would honour and ferryman would not."""
    ls = _litserve()
    name = type(api).__name__
    if getattr(api, "enable_async", False):
        raise AppError(
            f"{name}: enable_async=True is not supported by ferryman; define synchronous "
            "decode_request/predict/encode_response (each worker process runs one request "
            "or batch at a time)"
        )
    for method in USER_METHODS:
        fn = getattr(api, method, None)
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise AppError(
                f"{name}.{method} is async; ferryman calls LitAPI methods synchronously: "
                f"define it with plain def (and yield for a stream)"
            )
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
        if options.get("spec") != "openai":
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


def codecs(api: Any, options: dict[str, Any]) -> dict[str, Codec]:
    out: dict[str, Codec] = {"predict": LitCodec(api, bool(options.get("stream")))}
    if options.get("spec") == "openai":
        out["chat"] = LitOpenAICodec(api)
    return out


def _user_method(api: Any, name: str) -> Any:
    """The user's own method, or None where LitAPI's default would consult its LitServe spec
    (ferryman's codecs do that part)."""
    ls = _litserve()
    return getattr(api, name) if overrides(api, name, ls.LitAPI) else None


class LitCodec(Codec):
    """The api_path route of a LitAPI, rendered as LitServe renders it."""

    batch_encodes_streams = True
    custom_answers = True

    def __init__(self, api: Any, stream: bool) -> None:
        super().__init__(api, stream)
        self.set_user_methods(
            _user_method(api, "decode_request"), _user_method(api, "encode_response")
        )
        self.request_model = _pydantic_model(_request_annotation(api))
        self.format = api.format_encoded_response

    def parse(self, task: Task) -> Any:
        request = super().parse(task)
        if self.request_model is not None:
            request = _validate(self.request_model, request)
        return request

    def answer(self, output: Any, t: Task) -> tuple[int, str, bytes]:
        encoded = self.encode_output(output, t.ctx)
        body = getattr(encoded, "body", None)
        if isinstance(body, bytes) and hasattr(encoded, "status_code"):
            # A starlette/FastAPI Response: its status, content type and body (other headers
            # are not carried).
            ctype = getattr(encoded, "media_type", None) or encoded.headers.get(
                "content-type", "application/octet-stream"
            )
            return int(encoded.status_code), str(ctype), body
        return 200, self.content_type, json_encode(encoded)

    def render_stream(self, items: Iterable[Any], t: Task) -> Iterator[bytes]:
        fmt = self.format
        for item in items:
            out = fmt(item)
            if isinstance(out, str):
                yield out.encode()
            elif isinstance(out, bytes):
                yield out
            else:
                yield json_encode(out) + b"\n"


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

    def decode(self, request: Any, t: Task) -> Any:
        req = _validate(self.request_model, request, status=400)
        if t.ctx is not None:
            fields = req.model_dump()
            fields.pop("messages", None)
            t.ctx.update(fields)
        return super().decode(req, t)


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
        errors = getattr(e, "errors", None)
        detail = str(errors(include_url=False)) if callable(errors) else str(e)
        raise RequestError(status, "invalid_request", f"{model.__name__}: {detail}") from None


class _LogQueue:
    """LitAPI.log(key, value) lands in the worker's log instead of LitServe's logger process."""

    def __init__(self, api_name: str) -> None:
        self.api_name = api_name

    def put(self, item: Any) -> None:
        key, value = item
        log.info(f"{self.api_name}.log {key}={value!r}", extra=kv(key=key))
