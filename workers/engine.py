"""The user-code pipeline of a worker: parse, decode, (batch), predict, (unbatch), encode.

Transport-free: the worker loop hands in `Task`s and a `Sink` that ships answers. Every task gets
exactly one final answer through the sink, whatever happens in user code, so that no request hangs
and in-flight accounting in the API processes stays exact.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import msgspec

from ferryman.logs import kv

log = logging.getLogger("ferryman.worker")

JSON = "application/json"
NDJSON = "application/x-ndjson"


def _enc_hook(obj: Any) -> Any:
    # numpy arrays and scalars, torch tensors: what models return most often.
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


json_encode = msgspec.json.Encoder(enc_hook=_enc_hook).encode
json_decode = msgspec.json.decode


def error_body(kind: str, message: str) -> bytes:
    return json_encode({"error": {"type": kind, "message": message}})


class Task:
    """One request as the worker sees it."""

    __slots__ = ("body", "deadline", "headers", "id", "link", "request", "route", "t_recv", "x")

    def __init__(
        self,
        link: Any,
        id: int,
        route: str,
        deadline: float,
        headers: list[tuple[str, str]] | None,
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
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


class Codec:
    """How a route's bodies are parsed and its answers rendered. Specs (OpenAI) subclass this."""

    content_type = JSON
    stream_content_type = NDJSON

    def __init__(self, api: Any, stream: bool) -> None:
        self.api = api
        self.stream = stream
        self.decode_request: Callable[[Any], Any] = getattr(api, "decode_request", _identity)
        self.encode_response: Callable[[Any], Any] = getattr(api, "encode_response", _identity)

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

    def decode(self, request: Any) -> Any:
        return self.decode_request(request)

    def encode(self, output: Any) -> bytes:
        return json_encode(self.encode_response(output))

    def encode_stream(self, outputs: Iterator[Any]) -> Iterator[bytes]:
        """Items of one request's stream, each rendered as one line of JSON."""
        for item in self.encode_response(outputs):
            yield json_encode(item) + b"\n"

    def stream_end(self) -> bytes:
        return b""


def _identity(x: Any) -> Any:
    return x


class Engine:
    def __init__(self, api: Any, options: dict[str, Any], sink: Sink) -> None:
        self.api = api
        self.sink = sink
        self.max_batch_size = int(options.get("max_batch_size", 1))
        self.batching = self.max_batch_size > 1
        self.codecs: dict[str, Codec] = {"predict": Codec(api, bool(options.get("stream")))}
        self.predict: Callable[[Any], Any] = api.predict
        self.batch: Callable[[list[Any]], Any] = getattr(api, "batch", list)
        self.unbatch: Callable[[Any], list[Any]] = getattr(api, "unbatch", list)

    # -- entry point -----------------------------------------------------------------------------

    def run(self, tasks: list[Task]) -> None:
        """Answer every task in `tasks` (one route, at most max_batch_size of them)."""
        codec = self.codecs.get(tasks[0].route)
        if codec is None:
            for t in tasks:
                self._fail(t, RequestError(404, "not_found", f"no route {t.route!r}"))
            return
        plain: list[Task] = []
        streams: list[Task] = []
        now = time.monotonic()
        for t in tasks:
            if now > t.deadline or self.sink.cancelled(t):
                # The API process has answered already; close the books on it.
                self.sink.start(t, 504, JSON, error_body("timeout", "expired before it ran"))
                continue
            try:
                t.request = codec.parse(t)
                t.x = codec.decode(t.request)
            except Exception as e:
                self._fail(t, e, "decode_request")
                continue
            (streams if codec.is_stream(t.request) else plain).append(t)
        if plain:
            if self.batching:
                self._run_batched(codec, plain)
            else:
                for t in plain:
                    self._run_one(codec, t)
        if streams:
            if self.batching:
                self._stream_batched(codec, streams)
            else:
                for t in streams:
                    self._stream_one(codec, t)

    # -- plain requests ----------------------------------------------------------------------------

    def _run_one(self, codec: Codec, t: Task) -> None:
        t0 = time.monotonic()
        try:
            out = self.predict(t.x)
        except Exception as e:
            self._fail(t, e, "predict")
            return
        t1 = time.monotonic()
        try:
            body = codec.encode(out)
        except Exception as e:
            self._fail(t, e, "encode_response")
            return
        self.sink.start(t, 200, codec.content_type, body, False, t0 - t.t_recv, t1 - t0, 1)

    def _run_batched(self, codec: Codec, tasks: list[Task]) -> None:
        t0 = time.monotonic()
        try:
            outs = self.unbatch(self.predict(self.batch([t.x for t in tasks])))
            if len(outs) != len(tasks):
                raise RuntimeError(
                    f"unbatch returned {len(outs)} outputs for a batch of {len(tasks)}"
                )
        except Exception as e:
            for t in tasks:
                self._fail(t, e, "predict")
            return
        t1 = time.monotonic()
        n = len(tasks)
        for t, out in zip(tasks, outs, strict=True):
            try:
                body = codec.encode(out)
            except Exception as e:
                self._fail(t, e, "encode_response")
                continue
            self.sink.start(t, 200, codec.content_type, body, False, t0 - t.t_recv, t1 - t0, n)

    # -- streams -----------------------------------------------------------------------------------

    def _stream_one(self, codec: Codec, t: Task) -> None:
        t0 = time.monotonic()
        started = False
        try:
            items = codec.encode_stream(iter(self.predict(t.x)))
            for body in items:
                if not started:
                    self.sink.start(
                        t,
                        200,
                        codec.stream_content_type,
                        body,
                        True,
                        t0 - t.t_recv,
                        time.monotonic() - t0,
                        1,
                    )
                    started = True
                else:
                    self.sink.chunk(t, body, True)
                if self.sink.cancelled(t, poll=True):
                    _close(items)
                    break
        except Exception as e:
            if not started:
                self._fail(t, e, "predict")
                return
            self._log_exc(e, "predict")
            self.sink.chunk(t, self._stream_error(codec, e), False)
            return
        self._finish_stream(codec, t, started, t0)

    def _stream_batched(self, codec: Codec, tasks: list[Task]) -> None:
        """predict yields batched items; each is unbatched and goes to its own request's stream."""
        t0 = time.monotonic()
        live = {t.id: t for t in tasks}
        started: set[int] = set()
        gen = iter(self.predict(self.batch([t.x for t in tasks])))
        try:
            for batched in gen:
                parts = self.unbatch(batched)
                for t, part in zip(tasks, parts, strict=False):
                    if t.id not in live:
                        continue
                    body = b"".join(codec.encode_stream(iter([part])))
                    if t.id in started:
                        self.sink.chunk(t, body, True)
                    else:
                        self.sink.start(
                            t,
                            200,
                            codec.stream_content_type,
                            body,
                            True,
                            t0 - t.t_recv,
                            time.monotonic() - t0,
                            len(tasks),
                        )
                        started.add(t.id)
                    if self.sink.cancelled(t, poll=True):
                        self.sink.chunk(t, b"", False)
                        del live[t.id]
                if not live:
                    _close(gen)
                    return
        except Exception as e:
            self._log_exc(e, "predict")
            for t in live.values():
                if t.id in started:
                    self.sink.chunk(t, self._stream_error(codec, e), False)
                else:
                    self._fail(t, e, "predict", logged=True)
            return
        for t in live.values():
            self._finish_stream(codec, t, t.id in started, t0)

    def _finish_stream(self, codec: Codec, t: Task, started: bool, t0: float) -> None:
        tail = codec.stream_end()
        if started:
            self.sink.chunk(t, tail, False)
        else:  # an empty stream is still a 200
            self.sink.start(
                t,
                200,
                codec.stream_content_type,
                tail,
                False,
                t0 - t.t_recv,
                time.monotonic() - t0,
                1,
            )

    def _stream_error(self, codec: Codec, e: Exception) -> bytes:
        _, kind, message = describe(e)
        return error_body(kind, message) + b"\n"

    # -- errors ------------------------------------------------------------------------------------

    def _fail(self, t: Task, e: Exception, stage: str = "", logged: bool = False) -> None:
        status, kind, message = describe(e)
        if status >= 500 and not logged:
            self._log_exc(e, stage)
        self.sink.start(t, status, JSON, error_body(kind, message))

    def _log_exc(self, e: Exception, stage: str) -> None:
        log.error(
            f"{stage} raised {type(e).__name__}: {e}",
            extra=kv(stage=stage, traceback="".join(traceback.format_exception(e)).rstrip()),
        )


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
        close()
