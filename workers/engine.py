"""The inference worker's user-code pipeline: parse, decode, (batch), predict, (unbatch), encode.

Transport-free: the worker's loop hands in `Task`s and a `Sink` that ships answers, and owns all
I/O. A job (`Engine.job(tasks)`) is a coroutine that answers every one of its tasks, exactly once
each, whatever happens in user code, so that no request hangs and in-flight accounting in the
API processes stays exact:

- with synchronous user code it never awaits anything but `calls.step()`, between two parts of a
  stream: the loop drives it by hand, one part per step, reading its sockets in between, so a
  Cancel that arrives mid-stream is seen by the loop and reaches the job as `task.cancelled`;
- with async user code it is an asyncio task among many, awaiting the user's coroutines.

Optional features (a `context` argument, callbacks, async methods) are resolved once, when the
engine is built, so that a deployment that does not use them pays a flag test per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from inspect import isawaitable
from typing import Any, Protocol

from ferryman.api import default_batch
from ferryman.context import Context
from ferryman.logs import kv
from ferryman.options import ModelOptions
from ferryman.workers import calls
from ferryman.workers.calls import close, is_async_iter, step, takes_context
from ferryman.workers.codecs import (
    BatchSizeMismatch,
    Choices,
    Codec,
    Failure,
    Renderer,
    RequestError,
    build_codecs,
)
from ferryman.workers.fanout import FanOut
from ferryman.workers.hooks import Callbacks

__all__ = ["Context", "Engine", "Sink", "Stats", "Task"]

log = logging.getLogger("ferryman.worker")

_DONE = object()

EXPIRED = Failure(
    504, "timeout", "the request's deadline passed before it ran", "Request timed out"
)
CLOSED = Failure(499, "client_closed", "the request was cancelled", "Client closed request")


class Task:
    """One request as the worker sees it."""

    __slots__ = (
        "body",
        "cancelled",
        "content_type",
        "copies",
        "ctx",
        "deadline",
        "finished",
        "headers",
        "id",
        "job",
        "link",
        "query",
        "renderer",
        "request",
        "route",
        "started",
        "status",
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
        query: bytes = b"",
        content_type: bytes = b"",
    ) -> None:
        self.link = link  # where the answer goes: anything with a `name`
        self.id = id
        self.route = route
        self.deadline = deadline  # time.monotonic(); 0.0: none
        self.headers = headers
        self.query = query
        self.content_type = content_type  # known to LitServe-convention workers only
        self.copies = 1  # runs of the request whose items are answered together (OpenAI's n)
        self.body = body
        self.t_recv = t_recv
        self.request: Any = None
        self.x: Any = None
        self.ctx: Context | None = None
        self.renderer: Renderer | None = None
        self.job: Any = None  # the loop's record of the job running it; None while queued
        self.started = False  # a streamed answer's first part has gone out
        self.status = 0  # the status its answer went out with (set by the sink)
        self.finished = False  # its final message has gone out (set by the sink)
        self.cancelled = False  # the API process gave up on it (set by the loop)

    @property
    def request_id(self) -> str:
        if self.ctx is not None:
            return self.ctx.request_id
        return f"{self.link.name}-{self.id}"


class Sink(Protocol):
    """Where answers go (the worker's loop). A message with more=False is the task's final one;
    the sink sets `task.finished` and ignores anything sent for a finished task."""

    def reply(
        self,
        task: Task,
        status: int,
        content_type: str,
        body: bytes,
        more: bool = False,
        headers: list[tuple[str, str]] | None = None,
    ) -> None: ...

    def chunk(self, task: Task, body: bytes, more: bool) -> None: ...


class Stats(Protocol):
    def batch(self, n: int) -> None: ...

    def request(self, queue_s: float, predict_s: float) -> None: ...


def _uses_async(api: Any, fns: list[Any]) -> bool:
    return bool(getattr(api, "enable_async", False)) or any(calls.is_async(f) for f in fns)


class Engine:
    def __init__(
        self, api: Any, options: ModelOptions, sink: Sink, stats: Stats | None = None
    ) -> None:
        self.api = api
        self.sink = sink
        self.stats = stats
        self.max_batch_size = options.max_batch_size
        self.batching = self.max_batch_size > 1
        self.codecs = build_codecs(api, options.stream, options.spec, options.max_batch_size)
        # Errors outside any route (an unknown one) take the shape of the API's first route.
        self.default_codec = self.codecs.get("predict") or next(iter(self.codecs.values()))
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
        user_fns = [self.predict, *(f for c in self.codecs.values() for f in c.user_methods)]
        if self.batching:
            user_fns += [self.batch, self.unbatch]
        # Async user code: many jobs in flight at once, each an asyncio task. Otherwise one job
        # at a time, driven by the loop, and never an await on the way.
        self.concurrent = _uses_async(api, user_fns)
        # LitAPI's default unbatch of a stream iterates it synchronously; ours takes either kind.
        self.lit_default_unbatch = _lit_default(api, "unbatch")
        # Routes whose batches `run` answers at once: synchronous code that does not iterate.
        self.now_routes = frozenset(
            r for r, c in self.codecs.items() if not self.concurrent and not c.iterates
        )
        cbs = Callbacks.of(api)
        self.before_decode = cbs.before_decode
        self.after_decode = cbs.after_decode
        self.before_predict = cbs.before_predict
        self.after_predict = cbs.after_predict
        self.before_encode = cbs.before_encode
        self.after_encode = cbs.after_encode
        self.decode_hooks = self.before_decode is not None or self.after_decode is not None
        self.encode_hooks = self.before_encode is not None or self.after_encode is not None

    # -- what the loop calls ---------------------------------------------------------------------

    def job(self, tasks: list[Task]) -> Coroutine[Any, Any, None]:
        """A coroutine that answers every task in `tasks` (one route, at most max_batch_size of
        them): for async code, and for streams (see `run` for the rest)."""
        return self._job(tasks)

    def expire(self, t: Task) -> None:
        """Its deadline passed before it ran: 504 (the API process may have answered already;
        for a LitAPI it has not: the timeout counts only the wait before predict starts)."""
        codec = self._codec(t)
        if codec.fails_by_request and t.request is None:
            try:  # whether it asked for a stream decides how it fails
                t.request = codec.parse(t.body, t.content_type)
            except Exception:
                pass
        self._answer_failure(codec, t, EXPIRED, "queue")

    def drop(self, t: Task) -> None:
        """Cancelled before it ran: close the books on it (nobody listens)."""
        self._answer_failure(self._codec(t), t, CLOSED, "cancel")

    def describe(self, t: Task, e: BaseException) -> Failure:
        """What t's client would be told of `e`, in its route's shape."""
        return self._codec(t).describe(e, t.request_id)

    def refuse(self, t: Task, f: Failure) -> None:
        """Refused before it was queued (authorize said no)."""
        self._answer_failure(self._codec(t), t, f, "authorize")

    def crash(self, t: Task, e: BaseException) -> None:
        """The job running it failed outside user code: an internal error, so that it is not
        left hanging."""
        codec = self._codec(t)
        f = codec.describe(e, t.request_id)
        if t.started:
            self.sink.chunk(t, codec.stream_error(f, t.request_id), False)
        else:
            self._answer_failure(codec, t, f, "predict")

    # -- synchronous code on a plain route: answered at once, no coroutine -----------------------

    def runs_now(self, route: str) -> bool:
        """`run` answers this route's batches (else `job`)."""
        return route in self.now_routes

    def run(self, tasks: list[Task]) -> None:
        """Answer every task in `tasks` now. The hot path of synchronous code, kept free of
        coroutines: a job's coroutines and their driver cost a trivial request about a microsecond
        more (a few percent of what the worker spends on it)."""
        codec = self.codecs[tasks[0].route]
        if self.batching:
            ready = self._decode_now(codec, tasks)
            if ready:
                self._run_batched_now(codec, ready)
            return
        decode_hooks = self.decode_hooks
        for t in tasks:
            if not (self._decode_now(codec, [t]) if decode_hooks else self._decoded(codec, t)):
                continue
            stats = self.stats
            if stats is not None:
                stats.batch(1)
            t0 = time.monotonic()
            try:
                if self.before_predict:
                    self.before_predict(self.api)
                out = self.predict(t.x, context=t.ctx) if self.predict_ctx else self.predict(t.x)
            except Exception as e:
                self._fail(codec, t, e, "predict")
                continue
            if self.after_predict:
                self.after_predict(self.api)
            if stats is not None:
                stats.request(t0 - t.t_recv, time.monotonic() - t0)
            self._answer_now(codec, t, out)

    def _decode_now(self, codec: Codec, tasks: list[Task]) -> list[Task]:
        """Every task decoded (one set of decode hooks for the batch, as LitServe); those that
        failed are answered."""
        if self.before_decode:
            self.before_decode(self.api)
        ready = [t for t in tasks if self._decoded(codec, t)]
        if self.after_decode:
            self.after_decode(self.api)
        return ready

    def _parsed(self, codec: Codec, t: Task) -> bool:
        try:
            t.request = request = codec.parse(t.body, t.content_type)
            copies = codec.copies(request) if codec.may_copy else 1
            if copies > 1:
                if self.batching:
                    raise RequestError(
                        400, "invalid_request", "n > 1 is not served with batching", "n"
                    )
                t.copies = copies
                t.request = request = codec.copy(request)
            if self.context:
                t.ctx = Context(f"{t.link.name}-{t.id}", t.deadline, t.headers, t.query)
                codec.populate(t.ctx, request)
        except Exception as e:
            self._fail(codec, t, e, "parse")
            return False
        return True

    def _decoded(self, codec: Codec, t: Task) -> bool:
        """Parsed and decoded (the hot path of synchronous code: _parsed inlined when no
        request runs more than once)."""
        if codec.may_copy:
            if not self._parsed(codec, t):
                return False
        else:
            try:
                t.request = codec.parse(t.body, t.content_type)
                if self.context:
                    t.ctx = Context(f"{t.link.name}-{t.id}", t.deadline, t.headers, t.query)
                    codec.populate(t.ctx, t.request)
            except Exception as e:
                self._fail(codec, t, e, "parse")
                return False
        try:
            t.x = codec.decode(t.request, t.ctx)
        except Exception as e:
            self._fail(codec, t, e, "decode_request")
            return False
        return True

    def _run_batched_now(self, codec: Codec, tasks: list[Task]) -> None:
        n = len(tasks)
        ctxs = [t.ctx for t in tasks] if self.context else None
        if self.stats is not None:
            self.stats.batch(n)
        t0 = time.monotonic()
        try:
            xs = [t.x for t in tasks]
            x = self.batch(xs, context=ctxs) if self.batch_ctx else self.batch(xs)
            if self.before_predict:
                self.before_predict(self.api)
            y = self.predict(x, context=ctxs) if self.predict_ctx else self.predict(x)
            outs = self.unbatch(y, context=ctxs) if self.unbatch_ctx else self.unbatch(y)
            _check_size(outs, n)
        except Exception as e:
            self._fail_all(codec, tasks, e, "predict")
            return
        if self.after_predict:
            self.after_predict(self.api)
        t1 = time.monotonic()
        if self.before_encode:
            self.before_encode(self.api)
        for t, out in zip(tasks, outs, strict=True):
            if self.stats is not None:
                self.stats.request(t0 - t.t_recv, t1 - t0)
            self._answer_now(codec, t, out, False)
        if self.after_encode:
            self.after_encode(self.api)

    def _answer_now(self, codec: Codec, t: Task, out: Any, hooks: bool = True) -> None:
        try:
            if hooks and self.encode_hooks:
                if self.before_encode:
                    self.before_encode(self.api)
                encoded = codec.encode(out, t.ctx)
                if self.after_encode:
                    self.after_encode(self.api)
            else:
                encoded = codec.encode(out, t.ctx)
            status, content_type, body, headers = codec.answer(encoded, t.request)
        except Exception as e:
            self._fail(codec, t, e, "encode_response")
            return
        self.sink.reply(t, status, content_type, body, False, headers)

    # -- jobs: async code, and streams -------------------------------------------------------------

    async def _job(self, tasks: list[Task]) -> None:
        try:
            codec = self.codecs.get(tasks[0].route)
            if codec is None:
                for t in tasks:
                    self._fail(
                        self.default_codec,
                        t,
                        RequestError(404, "not_found", f"no route {t.route}", detail="Not Found"),
                        "parse",
                    )
                return
            ready = await self._decode(codec, tasks)
            if not ready:
                return
            if codec.iterates:
                for t in ready:
                    t.renderer = codec.renderer(t.request)
                if self.batching:
                    await self._stream_batched(codec, ready)
                else:
                    for t in ready:
                        await self._stream_one(codec, t)
            elif self.batching:
                await self._run_batched(codec, ready)
            else:
                for t in ready:
                    await self._run_one(codec, t)
        except asyncio.CancelledError:
            # Every client of the job went away (the loop cancels only then): end the books.
            for t in tasks:
                self.cut(t)

    async def _decode(self, codec: Codec, tasks: list[Task]) -> list[Task]:
        if not self.concurrent:
            return self._decode_now(codec, tasks)
        if self.before_decode:
            self.before_decode(self.api)
        ready: list[Task] = []
        for t in tasks:
            if not self._parsed(codec, t):
                continue
            try:
                x = codec.decode(t.request, t.ctx)
                if isawaitable(x):
                    x = await x
            except Exception as e:
                self._fail(codec, t, e, "decode_request")
                continue
            t.x = x
            ready.append(t)
        if self.after_decode:
            self.after_decode(self.api)
        return ready

    async def _run_one(self, codec: Codec, t: Task) -> None:
        stats = self.stats
        if stats is not None:
            stats.batch(1)
        t0 = time.monotonic()
        try:
            if self.before_predict:
                self.before_predict(self.api)
            out = self.predict(t.x, context=t.ctx) if self.predict_ctx else self.predict(t.x)
            if self.concurrent and isawaitable(out):
                out = await out
        except Exception as e:
            self._fail(codec, t, e, "predict")
            return
        if self.after_predict:
            self.after_predict(self.api)
        if stats is not None:
            stats.request(t0 - t.t_recv, time.monotonic() - t0)
        await self._answer(codec, t, out)

    async def _run_batched(self, codec: Codec, tasks: list[Task]) -> None:
        n = len(tasks)
        ctxs = [t.ctx for t in tasks] if self.context else None
        if self.stats is not None:
            self.stats.batch(n)
        t0 = time.monotonic()
        try:
            x = await self._call(self.batch, self.batch_ctx, [t.x for t in tasks], ctxs)
            if self.before_predict:
                self.before_predict(self.api)
            y = await self._call(self.predict, self.predict_ctx, x, ctxs)
            outs = await self._call(self.unbatch, self.unbatch_ctx, y, ctxs)
            _check_size(outs, n)
        except Exception as e:
            self._fail_all(codec, tasks, e, "predict")
            return
        if self.after_predict:
            self.after_predict(self.api)
        t1 = time.monotonic()
        if self.before_encode:
            self.before_encode(self.api)
        for t, out in zip(tasks, outs, strict=True):
            if self.stats is not None:
                self.stats.request(t0 - t.t_recv, t1 - t0)
            await self._answer(codec, t, out, False)
        if self.after_encode:
            self.after_encode(self.api)

    async def _answer(self, codec: Codec, t: Task, out: Any, hooks: bool = True) -> None:
        try:
            if hooks and self.before_encode:
                self.before_encode(self.api)
            encoded = codec.encode(out, t.ctx)
            if self.concurrent and isawaitable(encoded):
                encoded = await encoded
            if hooks and self.after_encode:
                self.after_encode(self.api)
            status, content_type, body, headers = codec.answer(encoded, t.request)
        except Exception as e:
            self._fail(codec, t, e, "encode_response")
            return
        self.sink.reply(t, status, content_type, body, False, headers)

    async def _call(self, fn: Callable[..., Any], ctx_arg: bool, x: Any, ctxs: Any) -> Any:
        out = fn(x, context=ctxs) if ctx_arg else fn(x)
        if self.concurrent and isawaitable(out):
            out = await out
        return out

    # -- iterated predicts: streams, and OpenAI answers sent whole ---------------------------------

    async def _stream_one(self, codec: Codec, t: Task) -> None:
        if self.stats is not None:
            self.stats.batch(1)
        t0 = time.monotonic()
        outs: list[Any] = []
        streams: list[Any] = []
        try:
            if self.before_predict:
                self.before_predict(self.api)
            for k in range(t.copies):
                x, ctx = (t.x, t.ctx) if k == 0 else await self._copy(codec, t)
                out = self.predict(x, context=ctx) if self.predict_ctx else self.predict(x)
                if self.concurrent and isawaitable(out):
                    out = await out
                outs.append(out)
                if k == 0 and self.before_encode:
                    self.before_encode(self.api)
                streams.append(await self._encoded_stream(codec, out, ctx))
        except Exception as e:
            for s in (*streams, *outs):
                await close(s)
            self._fail(codec, t, e, "predict")
            return
        stream = streams[0] if t.copies == 1 else _zip_choices(streams)
        try:
            await self._pump(codec, [t], [stream], None, t0)
        finally:
            # A cut stream's encode_response, then predict, end here (GeneratorExit at their
            # yield), not at garbage collection.
            for s in (stream, *streams, *outs):
                await close(s)

    async def _copy(self, codec: Codec, t: Task) -> tuple[Any, Context | None]:
        """Another run of t's request (LitServe answers n choices by running it n times): its
        own context, decode_request again."""
        ctx = None
        if self.context:
            ctx = Context(f"{t.link.name}-{t.id}", t.deadline, t.headers, t.query)
            codec.populate(ctx, t.request)
        x = codec.decode(t.request, ctx)
        if self.concurrent and isawaitable(x):
            x = await x
        return x, ctx

    async def _stream_batched(self, codec: Codec, tasks: list[Task]) -> None:
        """predict yields batched items; each request's encode_response gets its own items
        (or, LitServe's way, encode_response gets the batch's stream, one list per step)."""
        n = len(tasks)
        ctxs = [t.ctx for t in tasks] if self.context else None
        if self.stats is not None:
            self.stats.batch(n)
        t0 = time.monotonic()
        steps = source = None
        try:
            x = await self._call(self.batch, self.batch_ctx, [t.x for t in tasks], ctxs)
            if self.before_predict:
                self.before_predict(self.api)
            steps = await self._call(self.predict, self.predict_ctx, x, ctxs)
            if self.before_encode:
                self.before_encode(self.api)
            if codec.batch_encodes_streams:
                source = await self._encoded_stream(codec, self._unbatch_whole(steps, ctxs), ctxs)
            else:
                source = self._unbatch_steps(steps, ctxs)
        except Exception as e:
            await close(steps)
            self._fail_all(codec, tasks, e, "predict")
            return
        fan = FanOut(source, n)
        aio = is_async_iter(source)
        parts: list[Any] = [fan.astream(i) if aio else fan.stream(i) for i in range(n)]
        streams: list[Any] = []
        for i, t in enumerate(tasks):
            if codec.batch_encodes_streams:
                streams.append(parts[i])
                continue
            try:
                streams.append(await self._encoded_stream(codec, parts[i], t.ctx))
            except Exception as e:
                streams.append(_raising(e))
        try:
            await self._pump(codec, tasks, streams, fan, t0)
        finally:
            for s in streams:
                await close(s)
            for s in parts:
                await close(s)
            await close(source)
            await close(steps)

    async def _encoded_stream(self, codec: Codec, outputs: Any, ctx: Any) -> Any:
        """encode_response over a stream, as an iterator (or async iterator) of its items."""
        encoded = codec.encode(outputs, ctx)
        if self.concurrent and isawaitable(encoded):
            encoded = await encoded
        items = codec.items(encoded)
        if hasattr(items, "__aiter__"):
            return items.__aiter__()
        return iter(items)

    def _unbatch_steps(self, steps: Any, ctxs: Any) -> Any:
        """The batch's stream, unbatch applied to each step: one list per step."""
        unbatch, ctx_arg = self.unbatch, self.unbatch_ctx
        if self.concurrent:
            return self._aunbatch_steps(steps, unbatch, ctx_arg, ctxs)
        return (unbatch(s, context=ctxs) if ctx_arg else unbatch(s) for s in steps)

    async def _aunbatch_steps(
        self, steps: Any, unbatch: Callable[..., Any], ctx_arg: bool, ctxs: Any
    ) -> Any:
        if hasattr(steps, "__aiter__"):
            async for s in steps:
                yield await self._call(unbatch, ctx_arg, s, ctxs)
        else:
            for s in steps:
                yield await self._call(unbatch, ctx_arg, s, ctxs)

    def _unbatch_whole(self, steps: Any, ctxs: Any) -> Any:
        """LitServe's way: unbatch takes the batch's whole stream and yields one list per step."""
        if self.lit_default_unbatch and hasattr(steps, "__aiter__"):
            return self._aunbatch_steps(steps, list, False, None)
        return self.unbatch(steps, context=ctxs) if self.unbatch_ctx else self.unbatch(steps)

    async def _pump(
        self,
        codec: Codec,
        tasks: list[Task],
        streams: list[Any],
        fan: FanOut | None,
        t0: float,
    ) -> None:
        """Take one part from each request's stream in turn and ship it, until all are done;
        hand control to the loop after each round.

        A request whose client went away (the loop set `cancelled`) is dropped at its next turn:
        its generators are closed, and once a batch has no request left, the batch's predict is
        closed too.
        """
        sink = self.sink
        live = list(range(len(tasks)))
        aio = [is_async_iter(s) for s in streams]
        while live:
            for i in tuple(live):
                t = tasks[i]
                if t.cancelled:
                    live.remove(i)
                    await self._leave(t, streams[i], fan, i)
                    continue
                try:
                    item = await anext(streams[i], _DONE) if aio[i] else next(streams[i], _DONE)
                    if item is _DONE:
                        live.remove(i)
                        self._finish(codec, t, t0)
                        continue
                    body = t.renderer.item(item)  # type: ignore[union-attr]
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
                    if t.started:
                        sink.chunk(t, body, True)
                    else:
                        t.started = True
                        sink.reply(t, 200, codec.stream_content_type, body, True)
                        if self.stats is not None:
                            self.stats.request(t0 - t.t_recv, time.monotonic() - t0)
            if live:
                await step()
        if self.after_predict:
            self.after_predict(self.api)
        if self.after_encode:
            self.after_encode(self.api)

    async def _leave(self, t: Task, stream: Any, fan: FanOut | None, i: int) -> None:
        if fan is not None:
            fan.drop(i)
        await close(stream)
        self.cut(t)

    def _finish(self, codec: Codec, t: Task, t0: float) -> None:
        renderer = t.renderer
        assert renderer is not None
        try:
            tail = renderer.end()
        except Exception as e:
            self._stream_failed(codec, t, e, False)
            return
        if t.started:
            self.sink.chunk(t, tail, False)
            return
        if renderer.whole:
            self.sink.reply(t, 200, codec.content_type, tail)
        else:  # a stream without items is still a stream (chunked, its content type)
            t.started = True
            self.sink.reply(t, 200, codec.stream_content_type, tail, True)
            self.sink.chunk(t, b"", False)
        if self.stats is not None:
            self.stats.request(t0 - t.t_recv, time.monotonic() - t0)

    def _stream_failed(self, codec: Codec, t: Task, e: Exception, logged: bool) -> None:
        if not t.started:
            self._fail(codec, t, e, "predict", logged=logged)
            return
        rid = t.request_id
        f = codec.describe(e, rid)
        if f.status >= 500 and not logged:
            _log_exc(e, "predict", rid)
        self.sink.chunk(t, codec.stream_error(f, rid), False)

    def cut(self, t: Task) -> None:
        """End a request whose client went away, whatever state it is in."""
        if t.finished:
            return
        if t.started:
            self.sink.chunk(t, b"", False)
        else:
            self.drop(t)

    # -- errors ------------------------------------------------------------------------------------

    def _codec(self, t: Task) -> Codec:
        return self.codecs.get(t.route) or self.default_codec

    def _fail(
        self, codec: Codec, t: Task, e: Exception, stage: str = "", logged: bool = False
    ) -> None:
        rid = t.request_id
        f = codec.describe(e, rid)
        if f.status >= 500 and not logged and not isinstance(e, RequestError):
            _log_exc(e, stage, rid)
        self._answer_failure(codec, t, f, stage)

    def _fail_all(self, codec: Codec, tasks: list[Task], e: Exception, stage: str) -> None:
        _log_exc(e, stage, ",".join(t.request_id for t in tasks))
        for t in tasks:
            self._fail(codec, t, e, stage, logged=True)

    def _answer_failure(self, codec: Codec, t: Task, f: Failure, stage: str) -> None:
        if codec.fails_as_stream(t.request, stage):
            t.started = True
            body = codec.stream_error(f, t.request_id)
            self.sink.reply(t, 200, codec.stream_content_type, body, True)
            self.sink.chunk(t, b"", False)
            return
        status, content_type, body, headers = codec.error_reply(f, t.request_id, t.request, stage)
        self.sink.reply(t, status, content_type, body, False, headers)


def _log_exc(e: BaseException, stage: str, request_id: str) -> None:
    log.error(
        f"{stage} raised {type(e).__name__}: {e}",
        extra=kv(
            stage=stage,
            request_id=request_id,
            traceback="".join(traceback.format_exception(e)).rstrip(),
        ),
    )


def _zip_choices(streams: list[Any]) -> Any:
    """n streams as one whose items are Choices (an item of each), until the shortest ends."""
    if any(is_async_iter(s) for s in streams):
        return _azip_choices(streams)
    return _szip_choices(streams)


def _szip_choices(streams: list[Any]) -> Iterator[Choices]:
    while True:
        step = []
        for s in streams:
            item = next(s, _DONE)
            if item is _DONE:
                return
            step.append(item)
        yield Choices(step)


async def _azip_choices(streams: list[Any]) -> AsyncIterator[Choices]:
    while True:
        step = []
        for s in streams:
            item = await anext(s, _DONE) if is_async_iter(s) else next(s, _DONE)
            if item is _DONE:
                return
            step.append(item)
        yield Choices(step)


def _check_size(outs: Any, n: int) -> None:
    if len(outs) != n:
        raise BatchSizeMismatch(f"unbatch returned {len(outs)} outputs for a batch of {n}")


def _raising(e: Exception) -> Iterator[Any]:
    raise e
    yield  # a generator: the error surfaces when the stream is first read


def _lit_default(api: Any, name: str) -> bool:
    from ferryman.workers import litserve_compat

    return litserve_compat.is_litapi(api) and not calls.overrides(
        api, name, litserve_compat.lit_api_class()
    )
