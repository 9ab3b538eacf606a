"""The inference worker's pure logic, in process: the engine with a fake sink, the batching
decision, the fan-out of a batch's stream. Fast: no process, no socket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Any

import pytest

import ferryman
from ferryman import errors
from ferryman.options import ModelOptions
from ferryman.workers.batching import capacity_and_window, wait_for_more
from ferryman.workers.codecs import describe
from ferryman.workers.engine import Engine, Task
from ferryman.workers.fanout import FanOut


class Link:
    name = "a0.1"


class Sink:
    """Records what the engine ships, and holds it to the one-final-message rule."""

    def __init__(self) -> None:
        self.msgs: list[tuple[int, str, Any, bytes, bool]] = []

    def reply(self, t: Task, status: int, content_type: str, body: bytes, more: bool = False,
              headers: Any = None) -> None:  # fmt: skip
        assert not t.finished, "a message after the final one"
        self.msgs.append((t.id, "reply", status, body, more))
        t.finished = not more

    def chunk(self, t: Task, body: bytes, more: bool) -> None:
        assert not t.finished, "a message after the final one"
        self.msgs.append((t.id, "chunk", None, body, more))
        t.finished = not more

    def answer(self, id: int) -> tuple[int, bytes]:
        """(status, the whole body) of request id."""
        status = next(m[2] for m in self.msgs if m[0] == id and m[1] == "reply")
        return status, b"".join(m[3] for m in self.msgs if m[0] == id)


def task(id: int, body: Any, route: str = "predict", deadline: float = 0.0) -> Task:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Task(Link(), id, route, deadline, None, raw, time.monotonic())


def drive(coro: Coroutine[Any, Any, None], on_step: Any = None) -> int:
    """What the worker's loop does with a job of synchronous code: step it by hand."""
    steps = 0
    while True:
        try:
            assert coro.send(None) is None
        except StopIteration:
            return steps
        steps += 1
        if on_step is not None:
            on_step(steps)


def make(api: Any, **options: Any) -> tuple[Engine, Sink]:
    sink = Sink()
    return Engine(api, ModelOptions(**options), sink), sink


# -- batching -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pending", "in_transit", "waited", "expected"),
    [
        (1, 0, 0.0, 0.0),  # idle and nothing on its way: start at once
        (3, 0, 0.0, 0.0),
        (16, 5, 0.0, 0.0),  # full
        (20, 5, 0.0, 0.0),
        (1, 3, 0.0, 0.05),  # more on its way: wait, at most the batch timeout
        (4, 3, 0.02, 0.03),
        (4, 3, 0.05, 0.0),  # waited long enough
        (4, 3, 0.0495, 0.0),  # less than a timer's resolution left: not worth a timer
        (4, -2, 0.0, 0.0),  # the board behind what arrived (a row cleared): nothing to wait for
    ],
)
def test_wait_for_more(pending: int, in_transit: int, waited: float, expected: float) -> None:
    assert wait_for_more(pending, 16, in_transit, waited, 0.05) == pytest.approx(expected)


def test_capacity_and_window() -> None:
    assert capacity_and_window(1, False, 64) == (1, 16)
    assert capacity_and_window(16, False, 64) == (16, 32)
    assert capacity_and_window(1, False, 64, limit=1) == (1, 1)  # strictly next-free-worker
    assert capacity_and_window(8, True, 64, limit=10) == (10, 10)
    assert capacity_and_window(1, True, 64) == (64, 68)
    assert capacity_and_window(128, True, 64) == (128, 256)


# -- plain requests -------------------------------------------------------------------------------


class Doubler(ferryman.API):
    def decode_request(self, request):
        if request.get("fail"):
            raise ferryman.HTTPException(418, {"why": "teapot"})
        return request["x"]

    def predict(self, x):
        if x == "boom":
            raise RuntimeError("password=hunter2")
        return x * 2

    def encode_response(self, output):
        return {"y": output}


def test_sync_plain_requests_run_at_once() -> None:
    engine, sink = make(Doubler())
    assert not engine.concurrent and engine.context is False
    assert engine.runs_now("predict")
    ts = [task(1, {"x": 21}), task(2, b"{bad"), task(3, {"fail": 1}), task(4, {"x": "boom"})]
    for t in ts:
        engine.run([t])
    assert sink.answer(1) == (200, b'{"y":42}')
    status, body = sink.answer(2)
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_json"
    status, body = sink.answer(3)
    assert status == 418 and json.loads(body)["error"]["message"] == '{"why":"teapot"}'
    status, body = sink.answer(4)
    assert status == 500 and b"hunter2" not in body
    assert json.loads(body) == {
        "error": {
            "type": "internal_error",
            "message": errors.internal_error_message("a0.1-4"),
            "request_id": "a0.1-4",
        }
    }
    assert ts[0].ctx is None  # no method takes a context: none is built


def test_describe_keeps_http_exceptions_and_hides_the_rest() -> None:
    class Teapot(Exception):
        status_code = 418
        detail = "short and stout"

    class NoDetail(Exception):
        status_code = 404

    assert describe(Teapot(), "r")[:3] == (418, "http_exception", "short and stout")
    assert describe(NoDetail("x"), "r").status == 500  # no detail: not HTTPException-like
    assert describe(ferryman.HTTPException(404), "r").message == "Not Found"
    f = describe(ValueError("secret"), "r-1")
    assert (f.status, f.kind) == (500, "internal_error") and "secret" not in f.message


class Batched(ferryman.API):
    def predict(self, xs):
        return [{"x": x, "n": len(xs)} for x in xs]


def test_a_bad_request_fails_alone_in_its_batch() -> None:
    engine, sink = make(Batched(), max_batch_size=4)
    engine.run([task(1, {"a": 1}), task(2, b"[[["), task(3, {"a": 3})])
    assert sink.answer(1) == (200, b'{"x":{"a":1},"n":2}')
    assert sink.answer(2)[0] == 400
    assert sink.answer(3) == (200, b'{"x":{"a":3},"n":2}')


# -- streams --------------------------------------------------------------------------------------


class Counter(ferryman.API):
    def __init__(self) -> None:
        self.closed_at: int | None = None

    def predict(self, x):
        i = 0
        try:
            while i < x["n"]:
                yield i
                i += 1
        except GeneratorExit:
            self.closed_at = i
            raise

    def encode_response(self, outputs):
        for i in outputs:
            yield {"i": i}


def test_a_stream_ships_one_part_per_step() -> None:
    engine, sink = make(Counter(), stream=True)
    t = task(1, {"n": 3})
    steps = drive(engine.job([t]))
    assert steps == 3  # control went back to the loop between parts
    assert [m[1:] for m in sink.msgs] == [
        ("reply", 200, b'{"i":0}\n', True),
        ("chunk", None, b'{"i":1}\n', True),
        ("chunk", None, b'{"i":2}\n', True),
        ("chunk", None, b"", False),
    ]


def test_a_cancelled_stream_closes_predict_at_its_yield() -> None:
    api = Counter()
    engine, sink = make(api, stream=True)
    t = task(1, {"n": 1000})

    def cancel_after(step: int) -> None:
        if step == 2:
            t.cancelled = True  # what the loop does when a Cancel arrives

    drive(engine.job([t]), cancel_after)
    assert api.closed_at == 1  # GeneratorExit at the yield of its last item, not at gc time
    assert sink.msgs[-1][1:] == ("chunk", None, b"", False)
    assert len(sink.msgs) == 3


class FailsMidway(ferryman.API):
    def predict(self, x):
        yield 1
        raise RuntimeError("token=abc")


def test_a_stream_failing_after_its_first_item_ends_with_an_error_line() -> None:
    engine, sink = make(FailsMidway(), stream=True)
    drive(engine.job([task(1, {})]))
    status, body = sink.answer(1)
    lines = [json.loads(x) for x in body.splitlines()]
    assert status == 200 and lines[0] == 1
    assert lines[1]["error"]["type"] == "internal_error" and b"abc" not in body


class BatchedStream(ferryman.API):
    def predict(self, xs):
        for i in range(max(x["n"] for x in xs)):
            yield [{"tag": x["tag"], "i": i} if i < x["n"] else None for x in xs]

    def encode_response(self, outputs):
        n = 0
        for item in outputs:
            if item is not None:
                n += 1
                yield item
        yield {"done": n}


def test_batched_streams_each_see_their_own_items() -> None:
    engine, sink = make(BatchedStream(), stream=True, max_batch_size=4)
    ts = [task(1, {"tag": "a", "n": 2}), task(2, {"tag": "b", "n": 4})]
    drive(engine.job(ts))
    for t, (tag, n) in zip(ts, (("a", 2), ("b", 4)), strict=True):
        lines = [json.loads(x) for x in sink.answer(t.id)[1].splitlines()]
        assert lines == [*({"tag": tag, "i": i} for i in range(n)), {"done": n}]


def test_fan_out_ends_every_stream_with_the_sources_error() -> None:
    def source():
        yield [1, 2]
        raise ValueError("source broke")

    fan = FanOut(source(), 2)
    first, second = fan.stream(0), fan.stream(1)
    assert next(first) == 1
    with pytest.raises(ValueError):
        next(first)
    assert next(second) == 2  # buffered before the error
    with pytest.raises(ValueError):
        next(second)


# -- async code -----------------------------------------------------------------------------------


class AsyncModel(ferryman.API):
    def __init__(self) -> None:
        self.active = self.peak = 0

    async def predict(self, x):
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.01)
        self.active -= 1
        return {"x": x}


def test_async_jobs_overlap() -> None:
    api = AsyncModel()
    engine, sink = make(api)
    assert engine.concurrent and not engine.runs_now("predict")

    async def main() -> None:
        await asyncio.gather(*(engine.job([task(i, i)]) for i in range(8)))

    asyncio.run(main())
    assert api.peak == 8
    assert [sink.answer(i) for i in range(8)] == [(200, b'{"x":%d}' % i) for i in range(8)]


class AsyncStream(ferryman.API):
    async def predict(self, x):
        for i in range(x["n"]):
            await asyncio.sleep(0)
            yield {"i": i}


def test_async_stream_and_its_cancellation() -> None:
    engine, sink = make(AsyncStream(), stream=True)

    async def main() -> None:
        await engine.job([task(1, {"n": 3})])
        job = asyncio.ensure_future(engine.job([task(2, {"n": 10**9})]))
        while not any(m[0] == 2 for m in sink.msgs):
            await asyncio.sleep(0)
        job.cancel()  # what the loop does once every client of a job went away
        await job

    asyncio.run(main())
    assert sink.answer(1) == (200, b'{"i":0}\n{"i":1}\n{"i":2}\n')
    assert sink.msgs[-1][0] == 2 and sink.msgs[-1][4] is False  # ended with a final part


def test_expired_and_dropped_requests_are_answered() -> None:
    engine, sink = make(Doubler())
    engine.expire(task(1, {}))
    engine.drop(task(2, {}))
    assert sink.answer(1)[0] == 504 and sink.answer(2)[0] == 499
