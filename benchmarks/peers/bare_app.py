"""The HTTP ceiling: the benchmark model run inline in a starlette app under `uvicorn --workers N`.

BENCH_MODEL=trivial uvicorn benchmarks.peers.bare_app:app --workers 2

No batching, no worker processes: each uvicorn process parses HTTP and runs the model in its event
loop. The batching model therefore runs one request per call here (its fixed cost is paid every
time), which is what a server without batching would do.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from benchmarks import models

MODEL = os.environ.get(models.MODEL_ENV, "trivial")
rec = models.Recorder()
_encode = msgspec.json.encode
_decode = msgspec.json.decode


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Each uvicorn worker process runs the lifespan: that is its "setup".
    rec.setup()
    yield


async def predict(request: Request) -> Response:
    x = int(_decode(await request.body())["input"])
    if MODEL == "streamed":
        rec.predicted()

        async def lines() -> AsyncIterator[bytes]:
            # Iterated inline, not in starlette's thread pool: one thread hop per item would
            # measure the pool, not HTTP.
            for out in models.stream(x):
                yield _encode({"output": out}) + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")
    if MODEL in models.BATCH_MODELS:
        rec.predicted()
        y = models.BATCH_MODELS[MODEL]([x])[0]
    else:
        rec.predicted()
        y = models.trivial(x)
    return Response(_encode({"output": y}), media_type="application/json")


app = Starlette(routes=[Route("/predict", predict, methods=["POST"])], lifespan=lifespan)
