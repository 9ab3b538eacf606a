"""The benchmark models as Ray Serve deployments; run by the suite with benchmarks/.venv-ray:

python -m benchmarks.peers.rayserve_app --model trivial --port 8000 --temp-dir /tmp/ray-x

Starts a private local Ray cluster (no dashboard, a small object store: nothing here moves large
objects) and one application on `/predict` with `--workers` replicas. Ray Serve runs one HTTP proxy
per node, so this has ONE front-end process where the other peers have two: Ray cannot run two
proxies on one node. With --max-batch-size > 1 a batch model runs under `@serve.batch`; then each
replica takes up to 2 x max_batch_size requests at once (max_ongoing_requests: Ray's default of 5
would cap every batch at 5), like ferryman's per-worker cap. Access logs are off, as for every
peer. Stops (serve.shutdown, ray.shutdown) on SIGTERM; the suite kills whatever is left.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Iterator
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import StreamingResponse

from benchmarks import models

QUIET = {"enable_access_log": False, "log_level": "WARNING"}


class Trivial:
    def __init__(self, model: str) -> None:
        self.model = model
        self.rec = models.Recorder()
        self.rec.setup()

    async def __call__(self, request: Request) -> dict[str, int]:
        x = int((await request.json())["input"])
        self.rec.predicted()
        # Called inline, on the replica's user-code event loop: one predict at a time per
        # replica, as a device would run them (a sync method would go to a thread pool and
        # overlap the batch model's sleeps).
        return {"output": models.one(self.model, x)}


class Batched(Trivial):
    def __init__(self, model: str, max_batch: int, timeout_s: float) -> None:
        super().__init__(model)
        self.predict.set_max_batch_size(max_batch)
        self.predict.set_batch_wait_timeout_s(timeout_s)

    @serve.batch
    async def predict(self, xs: list[int]) -> list[int]:
        self.rec.predicted(len(xs))
        return models.BATCH_MODELS[self.model](xs)

    async def __call__(self, request: Request) -> dict[str, int]:
        x = int((await request.json())["input"])
        return {"output": await self.predict(x)}


class Streamed(Trivial):
    async def __call__(self, request: Request) -> StreamingResponse:  # type: ignore[override]
        x = int((await request.json())["input"])
        self.rec.predicted()

        def lines() -> Iterator[str]:
            for out in models.stream(x):
                yield json.dumps({"output": out}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")


def application(model: str, workers: int, max_batch: int, timeout_s: float) -> Any:
    """The bound deployment for `model`, with the suite's replica count and batching."""
    opts: dict[str, Any] = {
        "num_replicas": workers,
        # Replicas reserve no CPU: Ray would otherwise refuse more replicas than cores.
        "ray_actor_options": {"num_cpus": 0},
        "logging_config": QUIET,
    }
    if model == "streamed":
        return serve.deployment(Streamed, **opts).bind(model)
    if model in models.BATCH_MODELS and max_batch > 1:
        opts["max_ongoing_requests"] = 2 * max_batch
        return serve.deployment(Batched, **opts).bind(model, max_batch, timeout_s)
    return serve.deployment(Trivial, **opts).bind(model)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="trivial")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-batch-size", type=int, default=1)
    ap.add_argument("--batch-timeout", type=float, default=0.0)
    ap.add_argument("--temp-dir", required=True, help="short path: Ray puts its sockets there")
    args = ap.parse_args()

    import ray

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ray.init(
        address="local",  # a private cluster, never one that $RAY_ADDRESS points at
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        _temp_dir=args.temp_dir,
        log_to_driver=False,
    )
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": args.port},
            logging_config=QUIET,
        )
        app = application(args.model, args.workers, args.max_batch_size, args.batch_timeout)
        serve.run(app, route_prefix="/predict", blocking=False)
        stop.wait()
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
