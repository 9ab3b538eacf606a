"""Test APIs for streaming: counters that say how far predict got, and when it was closed."""

import os
import time

import ferryman


def _mark(path, value):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(value))
    os.replace(tmp, path)  # readers never see a half-written number


class Counter(ferryman.API):
    """Streams {"i": 0}, {"i": 1}, ... up to n; records progress in `progress` (a file path)."""

    def decode_request(self, request):
        return request

    def predict(self, x):
        progress = x.get("progress")
        try:
            for i in range(int(x["n"])):
                if progress:
                    _mark(progress, i)
                if x.get("delay"):
                    time.sleep(float(x["delay"]))
                if x.get("fail_at") == i:
                    raise RuntimeError("stream failed on purpose")
                yield i
        finally:
            if progress:
                _mark(progress + ".closed", 1)

    def encode_response(self, outputs):
        for i in outputs:
            yield {"i": i}


class BatchedCounter(ferryman.API):
    """Batched streams: predict yields one list per step; each request gets its own items, and
    its encode_response (called once per request) ends its stream with a summary."""

    def decode_request(self, request):
        return request

    def predict(self, xs):
        progress = next((x["progress"] for x in xs if x.get("progress")), None)
        try:
            for i in range(max(int(x["n"]) for x in xs)):
                if progress:
                    _mark(progress, i)
                if any(x.get("delay") for x in xs):
                    time.sleep(max(float(x.get("delay", 0)) for x in xs))
                yield [
                    {"tag": x["tag"], "i": i, "batch_size": len(xs)} if i < int(x["n"]) else None
                    for x in xs
                ]
        finally:
            if progress:
                _mark(progress + ".closed", 1)

    def encode_response(self, outputs):
        seen = 0
        for item in outputs:
            if item is not None:
                seen += 1
                yield item
        yield {"done": seen}
