"""APIs for the worker-process tests (tests/test_worker_process.py): each reports what it saw."""

import asyncio
import os
import time

import ferryman


def _mark(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")


class Echo(ferryman.API):
    """Echoes the request; fails on request, in the ways a user's code fails."""

    def setup(self, device):
        self.device = device

    def decode_request(self, request):
        if "fail" in request:
            raise ferryman.HTTPException(int(request["fail"]), "asked to fail")
        if "boom" in request:
            raise ValueError("secret-token-123 leaked into an exception")
        return request

    def predict(self, x):
        if x.get("sleep"):
            time.sleep(float(x["sleep"]))
        if x.get("predict_error"):
            raise RuntimeError("predict failed with secret-token-456")
        return {
            "input": x.get("input"),
            "device": self.device,
            "litserve_worker_id": os.environ.get("LITSERVE_WORKER_ID"),
        }


class Batched(ferryman.API):
    """Each answer says the size of the batch predict saw it in. A request with "mark" writes
    that file when its batch's predict starts; "sleep" makes the batch's predict sleep."""

    def predict(self, xs):
        for x in xs:
            if x.get("mark"):
                _mark(x["mark"], "started")
        time.sleep(max(float(x.get("sleep", 0)) for x in xs))
        return [{"input": x.get("input"), "batch_size": len(xs)} for x in xs]


class AsyncSleeper(ferryman.API):
    """async predict: awaits, and reports how many predicts overlapped."""

    def setup(self, device):
        self.active = 0
        self.peak = 0

    async def decode_request(self, request):
        await asyncio.sleep(0)
        return request

    async def predict(self, x):
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(float(x.get("sleep", 0.3)))
        finally:
            self.active -= 1
        if x.get("fail"):
            raise ferryman.HTTPException(409, "async conflict")
        return {"input": x.get("input"), "peak": self.peak}


class Counter(ferryman.API):
    """Streams {"i": 0}, {"i": 1}, ... up to n, each after `delay`; writes to `marks` how its
    generator ended."""

    def predict(self, x):
        marks = x.get("marks")
        try:
            for i in range(int(x["n"])):
                if x.get("delay"):
                    time.sleep(float(x["delay"]))
                if x.get("fail_at") == i:
                    raise RuntimeError("stream failed with secret-token-789")
                yield i
        except GeneratorExit:
            if marks:
                _mark(marks, "GeneratorExit")
            raise
        if marks:
            _mark(marks, "finished")

    def encode_response(self, outputs):
        for i in outputs:
            yield {"i": i}


class AsyncCounter(ferryman.API):
    """An async generator stream."""

    async def predict(self, x):
        marks = x.get("marks")
        try:
            for i in range(int(x["n"])):
                await asyncio.sleep(float(x.get("delay", 0)))
                yield {"i": i}
        except (GeneratorExit, asyncio.CancelledError) as e:
            if marks:
                _mark(marks, type(e).__name__)
            raise


class BatchedCounter(ferryman.API):
    """Batched streams: one list per step; each request's encode_response sees its own items."""

    def predict(self, xs):
        for i in range(max(int(x["n"]) for x in xs)):
            yield [{"tag": x["tag"], "i": i} if i < int(x["n"]) else None for x in xs]

    def encode_response(self, outputs):
        seen = 0
        for item in outputs:
            if item is not None:
                seen += 1
                yield item
        yield {"done": seen}


class WithContext(ferryman.API):
    def predict(self, x, context):
        return {
            "request_id": context.request_id,
            "custom": context.headers.get("x-custom"),
            "query": context.query,
            "has_deadline": context.time_left() > 0,
        }


class GeneratorWithoutStream(ferryman.API):
    def predict(self, x):
        yield x


class SetupFails(ferryman.API):
    def setup(self, device):
        raise RuntimeError("cannot load weights")

    def predict(self, x):
        return x
