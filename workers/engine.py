"""The user-code pipeline of a worker: parse, decode, (batch), predict, (unbatch), encode.

Transport-free: the worker loop hands in `Task`s and a `Sink` that ships answers. Every task gets
exactly one final answer through the sink, whatever happens in user code, so that no request hangs
and in-flight accounting in the API processes stays exact.

Optional features (a `context` argument, callbacks) are resolved once, when the engine is built,
so that a deployment that does not use them pays nothing per request.
"""

from __future__ import annotations

import inspect
import logging
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import msgspec
from ferryman.workers.api import default_batch
from ferryman.workers.hooks import Callbacks

from ferryman.logs import kv

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


def error_body(kind: str, message: str) -> bytes:
    return json_encode({"error": {"type": kind, "message": message}})


def takes_context(fn: Any) -> bool:
    """LitServe's convention: a method receives the request context when it has a parameter
    named `context`."""
    if fn is None:
        return False
    try:
        return "context" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def overrides(api: Any, name: str, *bases: type) -> bool:
    """True when the API's class defines `name` itself rather than inheriting a base's default."""
    fn = getattr(type(api), name, None)
    if fn is None:
        return callable(getattr(api, name, None))  # set on the instance
    return all(getattr(b, name, None) is not fn for b in bases)


class Task:
    """One request as the worker sees it."""

    __slots__ = (
        "body",
        "buf",
        "ctx",
        "deadline",
        "headers",
        "id",
        "link",
        "request",
        "route",
        "started",
        "t_recv",
        "x",
    )

    def __init__(
        self,
        link: Any,
        id: int,
        route: str,
        deadline: float,
        headers: list[tuple[bytes, bytes]] | None,
        body: bytes,
        t_recv: float,
    ) -> None:
        self.link = link
        self.id = id
        self.route = route
        self.deadline = deadline
        self.headers = headers
        self.body = body
        self.t_recv = t_recv
        self.request: Any = None
        self.x: Any = None
        self.ctx: Context | None = None
        self.started = False  # a streamed answer's first part has gone out
        self.buf: list[bytes] | None = None  # an iterated predict whose answer is sent whole


class Context(dict[str, Any]):
    """The per-request context handed to user methods that take a `context` argument.

    As in LitServe it is a dict, one per request (a list of them for batch-level methods), that
    user code may read and write between decode_request, predict and encode_response; a spec puts
    the request's fields there (OpenAI: everything but `messages`). Attributes say where the
    request came from.
    """

    __slots__ = ("_headers", "_id", "deadline")

    def __init__(self, request_id: str, deadline: float, headers: Any) -> None:
        super().__init__()
        self._id = request_id
        self._headers = headers
        self.deadline = deadline  # time.monotonic() after which the client has had its 504

    @property
    def headers(self) -> dict[str, str]:
        """The HTTP request's headers, names in lower case."""
        h = self._headers
        if not isinstance(h, dict):
            h = self._headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in (h or ())}
        return h

    @property
    def request_id(self) -> str:
        """The client's X-Request-ID when it sent one, else an id unique within this server."""
        return self.headers.get("x-request-id") or self._id

    def time_left(self) -> float:
        """Seconds until the request's deadline (negative once it passed)."""
        return self.deadline - time.monotonic()

    def __repr__(self) -> str:
        return f"Context({dict.__repr__(self)}, request_id={self.request_id!r})"


class Sink(Protocol):
    def start(
        self,
        task: Task,
        status: int,
        content_type: str,
        body: bytes,
        more: bool = False,
        queue_s: float = 0.0,
        predict_s: float = 0.0,
        batch_size: int = 1,
    ) -> None: ...

    def chunk(self, task: Task, body: bytes, more: bool) -> None: ...

    def cancelled(self, task: Task, poll: bool = False) -> bool:
        """True once the API process gave up on the task (client gone, deadline passed).

        With poll, first read what arrived since (a stream checks between its items)."""
        ...


class RequestError(Exception):
    def __init__(self, status: int, kind: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.param = status, kind, message, param


class Codec:
    """How a route's bodies are parsed and its answers rendered. Specs (OpenAI) subclass this.

    `iterates`: predict's output is iterated (a generator), each item encoded as it comes;
    `is_stream(request)`: those items also reach the client as they come (else the codec yields
    one body at the end, and may yield b"" meanwhile so that a cancelled request is noticed).
    `batch_encodes_streams`: with batching, encode_response sees the whole batch's stream, one
    list per step (LitServe's way) instead of each request's own items.
    """

    content_type = JSON
    stream_content_type = NDJSON
    batch_encodes_streams = False
    # The plain answer may carry its own status and content type (codec.answer instead of encode).
    custom_answers = False

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

    def parse(self, task: Task) -> Any:
        if not task.body:
            raise RequestError(400, "invalid_request", "the request body is empty; send JSON")
        try:
            return json_decode(task.body)
        except msgspec.DecodeError as e:
            raise RequestError(
                400, "invalid_json", f"the request body is not valid JSON: {e}"
            ) from None

    def is_stream(self, request: Any) -> bool:
        return self.stream

    def populate(self, ctx: Context, request: Any) -> None:
        """Put what the spec knows about the request into its context."""

    def decode(self, request: Any, t: Task) -> Any:
        if self.decode_ctx:
            return self.user_decode(request, context=t.ctx)
        return self.user_decode(request)

    def encode_output(self, output: Any, ctx: Any) -> Any:
        """encode_response on one request's output (or stream), or a batch's stream."""
        if self.encode_ctx:
            return self.user_encode(output, context=ctx)
        return self.user_encode(output)

    def encode(self, output: Any, t: Task) -> bytes:
        if self.encode_ctx:
            return json_encode(self.user_encode(output, context=t.ctx))
        return json_encode(self.user_encode(output))

    def answer(self, output: Any, t: Task) -> tuple[int, str, bytes]:
        """(status, content type, body) of a plain answer; only with custom_answers."""
        return 200, self.content_type, self.encode(output, t)

    def encode_stream(self, outputs: Any, t: Task) -> Iterator[bytes]:
        """One request's stream: encode_response over predict's items, each rendered."""
        return self.render_stream(self.encode_output(outputs, t.ctx), t)

    def render_stream(self, items: Iterable[Any], t: Task) -> Iterator[bytes]:
        """Items already through encode_response, each rendered as one line of JSON."""
        for item in items:
            yield json_encode(item) + b"\n"

    def error(self, e: Exception) -> tuple[int, bytes]:
        status, kind, message = describe(e)
        return status, error_body(kind, message)

    def stream_error(self, e: Exception) -> bytes:
        """The last part of a stream that failed after its headers went out."""
        return self.error(e)[1] + b"\n"


def _identity(x: Any) -> Any:
    return x


def build_codecs(api: Any, options: dict[str, Any]) -> dict[str, Codec]:
    """Route name -> codec: "predict" (the api_path) and, with spec=openai, "chat"."""
    from ferryman.workers import litserve_compat

    if litserve_compat.is_litapi(api):
        return litserve_compat.codecs(api, options)
    codecs = {"predict": Codec(api, bool(options.get("stream")))}
    if options.get("spec") == "openai":
        from ferryman.workers.openai_spec import OpenAICodec

        codecs["chat"] = OpenAICodec(api)
    return codecs


class Engine:
    def __init__(self, api: Any, options: dict[str, Any], sink: Sink) -> None:
        self.api = api
        self.sink = sink
        self.max_batch_size = int(options.get("max_batch_size", 1))
        self.batching = self.max_batch_size > 1
        self.codecs = build_codecs(api, options)
        self.predict: Callable[..., Any] = api.predict
        self.batch: Callable[..., Any] = getattr(api, "batch", None) or default_batch
        self.unbatch: Callable[..., Any] = getattr(api, "unbatch", None) or list
        self.predict_ctx = takes_context(self.predict)
        self.batch_ctx = takes_context(self.batch)
        self.unbatch_ctx = takes_context(self.unbatch)
        # Build a Context per request only when some user method takes one.
        self.context = (
            self.predict_ctx
            or (self.batching and (self.batch_ctx or self.unbatch_ctx))
            or any(c.wants_context for c in self.codecs.values())
        )
        cbs = Callbacks.of(api)
        self.before_predict = cbs.before_predict
        self.after_predict = cbs.after_predict

    # -- entry point -----------------------------------------------------------------------------

    def run(self, tasks: list[Task]) -> None:
        """Answer every task in `tasks` (one route, at most max_batch_size of them)."""
        codec = self.codecs.get(tasks[0].route)
        if codec is None:
            for t in tasks:
                self._fail(None, t, RequestError(404, "not_found", f"no route {t.route!r}"))
            return
        ready: list[Task] = []
        now = time.monotonic()
        for t in tasks:
            if now > t.deadline or self.sink.cancelled(t):
                # The API process has answered already; close the books on it.
                self.sink.start(t, 504, JSON, error_body("timeout", "expired before it ran"))
                continue
            try:
                t.request = codec.parse(t)
                if self.context:
                    t.ctx = Context(f"{t.link.name}-{t.id}", t.deadline, t.headers)
                    codec.populate(t.ctx, t.request)
                t.x = codec.decode(t.request, t)
            except Exception as e:
                self._fail(codec, t, e, "decode_request")
                continue
            ready.append(t)
        if not ready:
            return
        if codec.iterates:
            for t in ready:
                if not codec.is_stream(t.request):
                    t.buf = []
            if self.batching:
                self._stream_batched(codec, ready)
            else:
                for t in ready:
                    self._stream_one(codec, t)
        elif self.batching:
            self._run_batched(codec, ready)
        else:
            for t in ready:
                self._run_one(codec, t)

    # -- user calls ------------------------------------------------------------------------------

    def _predict(self, x: Any, ctx: Any) -> Any:
        if self.before_predict:
            self.before_predict(self.api)
        if self.predict_ctx:
            return self.predict(x, context=ctx)
        return self.predict(x)

    def _batch(self, xs: list[Any], ctxs: Any) -> Any:
        return self.batch(xs, context=ctxs) if self.batch_ctx else self.batch(xs)

    def _unbatch(self, y: Any, ctxs: Any) -> Any:
        return self.unbatch(y, context=ctxs) if self.unbatch_ctx else self.unbatch(y)

    # -- plain requests ----------------------------------------------------------------------------

    def _run_one(self, codec: Codec, t: Task) -> None:
        # The hot path of an unbatched request: calls inlined, features off cost a flag test.
        t0 = time.monotonic()
        try:
            if self.before_predict:
                self.before_predict(self.api)
            out = self.predict(t.x, context=t.ctx) if self.predict_ctx else self.predict(t.x)
        except Exception as e:
            self._fail(codec, t, e, "predict")
            return
        if self.after_predict:
            self.after_predict(self.api)
        self._answer(codec, t, out, t0 - t.t_recv, time.monotonic() - t0, 1)

    def _run_batched(self, codec: Codec, tasks: list[Task]) -> None:
        t0 = time.monotonic()
        ctxs = [t.ctx for t in tasks] if self.context else None
        try:
            outs = self._unbatch(self._predict(self._batch([t.x for t in tasks], ctxs), ctxs), ctxs)
            if len(outs) != len(tasks):
                raise RuntimeError(
                    f"unbatch returned {len(outs)} outputs for a batch of {len(tasks)}"
                )
        except Exception as e:
            self._log_exc(e, "predict")
            for t in tasks:
                self._fail(codec, t, e, "predict", logged=True)
            return
        if self.after_predict:
            self.after_predict(self.api)
        t1 = time.monotonic()
        n = len(tasks)
        for t, out in zip(tasks, outs, strict=True):
            self._answer(codec, t, out, t0 - t.t_recv, t1 - t0, n)

    def _answer(
        self, codec: Codec, t: Task, out: Any, queue_s: float, predict_s: float, n: int
    ) -> None:
        try:
            if codec.custom_answers:
                status, content_type, body = codec.answer(out, t)
            else:
                status, content_type, body = 200, codec.content_type, codec.encode(out, t)
        except Exception as e:
            self._fail(codec, t, e, "encode_response")
            return
        self.sink.start(t, status, content_type, body, False, queue_s, predict_s, n)

    # -- iterated predicts: streams, and OpenAI answers sent whole ---------------------------------

    def _stream_one(self, codec: Codec, t: Task) -> None:
        t0 = time.monotonic()
        out = None
        try:
            out = self._predict(t.x, t.ctx)
            bodies = codec.encode_stream(out, t)
        except Exception as e:
            _close(out)
            self._fail(codec, t, e, "predict")
            return
        try:
            self._pump(codec, [t], [bodies], None, t0)
        finally:
            _close(bodies)
            _close(
                out
            )  # a cut stream's predict ends here (GeneratorExit), not at garbage collection

    def _stream_batched(self, codec: Codec, tasks: list[Task]) -> None:
        """predict yields batched items; each request's encode_response gets its own items."""
        t0 = time.monotonic()
        ctxs = [t.ctx for t in tasks] if self.context else None
        steps = None
        try:
            steps = self._predict(self._batch([t.x for t in tasks], ctxs), ctxs)
            if codec.batch_encodes_streams:
                source = iter(codec.encode_output(self._unbatch(steps, ctxs), ctxs))
            else:
                source = (self._unbatch(step, ctxs) for step in steps)
        except Exception as e:
            _close(steps)
            self._log_exc(e, "predict")
            for t in tasks:
                self._fail(codec, t, e, "predict", logged=True)
            return
        fan = FanOut(source, len(tasks))
        per_request = codec.render_stream if codec.batch_encodes_streams else codec.encode_stream
        bodies = [per_request(fan.stream(i), t) for i, t in enumerate(tasks)]
        try:
            self._pump(codec, tasks, bodies, fan, t0)
        finally:
            for b in bodies:
                _close(b)
            _close(source)
            _close(steps)

    def _pump(
        self,
        codec: Codec,
        tasks: list[Task],
        bodies: list[Iterator[bytes]],
        fan: FanOut | None,
        t0: float,
    ) -> None:
        """Take one part from each request's stream in turn and ship it, until all are done.

        Between parts, a request whose client went away is dropped: its generators are closed
        (GeneratorExit inside predict, for an unbatched stream), and once a batch has no request
        left, the batch's predict is closed too.
        """
        n = len(tasks)
        live = list(range(n))
        sink = self.sink
        while live:
            for i in tuple(live):
                t = tasks[i]
                try:
                    body = next(bodies[i])
                except StopIteration:
                    live.remove(i)
                    self._finish(codec, t, t0, n)
                    continue
                except Exception as e:
                    live.remove(i)
                    logged = False
                    if fan is not None:
                        fan.drop(i)
                        if e is fan.error:  # the batch's predict failed: log it once
                            logged, fan.logged = fan.logged, True
                    self._stream_failed(codec, t, e, logged)
                    continue
                if body:
                    if t.buf is not None:
                        t.buf.append(body)
                    elif t.started:
                        sink.chunk(t, body, True)
                    else:
                        t.started = True
                        sink.start(
                            t,
                            200,
                            codec.stream_content_type,
                            body,
                            True,
                            t0 - t.t_recv,
                            time.monotonic() - t0,
                            n,
                        )
                if sink.cancelled(t, poll=True):
                    live.remove(i)
                    _close(bodies[i])
                    if fan is not None:
                        fan.drop(i)
                    if t.started:
                        sink.chunk(t, b"", False)
                    else:  # nobody listens: this only closes the books
                        sink.start(t, 499, JSON, error_body("client_closed", "cancelled"))
        if self.after_predict:
            self.after_predict(self.api)

    def _finish(self, codec: Codec, t: Task, t0: float, n: int) -> None:
        if t.started:
            self.sink.chunk(t, b"", False)
            return
        whole = t.buf is not None
        self.sink.start(
            t,
            200,
            codec.content_type if whole else codec.stream_content_type,
            b"".join(t.buf) if t.buf else b"",  # an empty stream is still a 200
            False,
            t0 - t.t_recv,
            time.monotonic() - t0,
            n,
        )

    def _stream_failed(self, codec: Codec, t: Task, e: Exception, logged: bool) -> None:
        if not t.started:
            self._fail(codec, t, e, "predict", logged=logged)
            return
        if not logged:
            self._log_exc(e, "predict")
        self.sink.chunk(t, codec.stream_error(e), False)

    # -- errors ------------------------------------------------------------------------------------

    def _fail(
        self, codec: Codec | None, t: Task, e: Exception, stage: str = "", logged: bool = False
    ) -> None:
        if codec is None:
            status, kind, message = describe(e)
            body = error_body(kind, message)
        else:
            status, body = codec.error(e)
        if status >= 500 and not logged:
            self._log_exc(e, stage)
        self.sink.start(t, status, JSON, body)

    def _log_exc(self, e: Exception, stage: str) -> None:
        log.error(
            f"{stage} raised {type(e).__name__}: {e}",
            extra=kv(stage=stage, traceback="".join(traceback.format_exception(e)).rstrip()),
        )


class FanOut:
    """Splits a batch's stream into one stream per request.

    `source` yields, per step, a list with one item per request. A request's stream advances the
    source only when it has nothing buffered, so predict runs once for the batch while each
    request's encode_response consumes its own items, in order, at its own pace. An error in the
    source ends every request's stream (after what was buffered for it) with that error.
    """

    __slots__ = ("done", "error", "live", "logged", "n", "queues", "source")

    def __init__(self, source: Iterator[Any], n: int) -> None:
        self.source = source
        self.n = n
        self.queues: list[deque[Any]] = [deque() for _ in range(n)]
        self.live = [True] * n
        self.done = False
        self.error: Exception | None = None
        self.logged = False

    def stream(self, i: int) -> Iterator[Any]:
        q = self.queues[i]
        while True:
            if q:
                yield q.popleft()
            elif self.done:
                if self.error is not None:
                    raise self.error
                return
            else:
                self._step()

    def _step(self) -> None:
        try:
            parts = next(self.source)
            if len(parts) != self.n:
                raise RuntimeError(
                    f"unbatch returned {len(parts)} items for a batch of {self.n} streams"
                )
        except StopIteration:
            self.done = True
            return
        except Exception as e:
            self.done = True
            self.error = e
            return
        for i, part in enumerate(parts):
            if self.live[i]:
                self.queues[i].append(part)

    def drop(self, i: int) -> None:
        self.live[i] = False
        self.queues[i].clear()


def describe(e: Exception) -> tuple[int, str, str]:
    """(status, error type, message) of an exception raised while answering a request."""
    if isinstance(e, RequestError):
        return e.status, e.kind, e.message
    status = getattr(e, "status_code", None)
    if isinstance(status, int) and 400 <= status <= 599:
        detail = getattr(e, "detail", None)
        return status, "http_exception", str(detail if detail is not None else e)
    return 500, "internal_error", f"{type(e).__name__}: {e}"


def _close(gen: Any) -> None:
    close = getattr(gen, "close", None)
    if callable(close):
        try:
            close()
        except Exception as e:  # a generator that ignores GeneratorExit must not kill the worker
            log.warning(f"closing a generator raised {type(e).__name__}: {e}")
