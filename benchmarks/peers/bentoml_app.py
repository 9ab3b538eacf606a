"""The benchmark models as BentoML services; run by the suite with benchmarks/.venv-bentoml:

BENCH_MODEL=trivial bentoml serve benchmarks.peers.bentoml_app:Front --port 8000

Two services, the way a BentoML user separates HTTP from the model: `Front` ($BENCH_API_SERVERS
worker processes) parses HTTP and calls `Model` ($BENCH_WORKERS worker processes, one model
replica each) through `bentoml.depends`, BentoML's service-to-service HTTP. With
$BENCH_MAX_BATCH_SIZE > 1, Model.predict is batchable: BentoML's adaptive batching collects up to
that many calls. It has no batch timeout to set: its dispatcher decides how long to wait from the
latencies it measures. Its max_latency_ms is a deadline instead, past which queued requests are
refused with 503; it keeps BentoML's default (60 s), as mapping the others' 50 ms batch timeout
onto it would turn load into 503s. The request body is the same `{"input": 21}` as for every
peer: Front sends Model a batch of one, which Model's dispatcher merges with the others.

Access logs are off, as they are for every peer (each would otherwise log every request).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Generator

import bentoml

from benchmarks import models

MODEL = os.environ.get(models.MODEL_ENV, "trivial")
MAX_BATCH, _ = models.batching_from_env()
BATCHING = MODEL in models.BATCH_MODELS and MAX_BATCH > 1
API_SERVERS = int(os.environ.get("BENCH_API_SERVERS", "2"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
QUIET = {"access": {"enabled": False}}
# Front's client for Model replaces its HTTP session every `max_requests` calls (100 by default)
# and closes the old one with other calls still in flight on it: at 32 connections a third of
# the requests failed with ServerDisconnectedError. Replaced only after a day instead.
NO_RECYCLING = {"max_requests": 2**31 - 1, "max_age": 86400.0}


@bentoml.service(workers=WORKERS, logging=QUIET, runner_connection=NO_RECYCLING)
class Model:
    def __init__(self) -> None:
        self.rec = models.Recorder()
        self.rec.setup()

    if BATCHING:

        @bentoml.api(batchable=True, max_batch_size=MAX_BATCH)
        def predict(self, xs: list[int]) -> list[int]:
            self.rec.predicted(len(xs))
            return models.BATCH_MODELS[MODEL](xs)

    else:

        @bentoml.api
        def predict(self, x: int) -> int:
            self.rec.predicted()
            return models.one(MODEL, x)

    @bentoml.api
    def stream(self, x: int) -> Generator[str, None, None]:
        self.rec.predicted()
        for out in models.stream(x):
            yield json.dumps({"output": out}) + "\n"


@bentoml.service(workers=API_SERVERS, logging=QUIET)
class Front:
    model = bentoml.depends(Model)

    if MODEL == "streamed":

        @bentoml.api(route="/predict")
        async def predict(self, input: int) -> AsyncGenerator[str, None]:
            async for line in self.model.to_async.stream(input):
                yield line

    elif BATCHING:

        @bentoml.api(route="/predict")
        async def predict(self, input: int) -> dict[str, int]:
            out = await self.model.to_async.predict([input])
            return {"output": out[0]}

    else:

        @bentoml.api(route="/predict")
        async def predict(self, input: int) -> dict[str, int]:
            return {"output": await self.model.to_async.predict(input)}
