"""The benchmark models as LitServe APIs; run by the suite with its own virtual environment.

.venv-litserve/bin/python benchmarks/peers/litserve_app.py --model trivial --port 8000
(with the repository root on PYTHONPATH so that `benchmarks.models` imports)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

import litserve as ls

from benchmarks import models


class Trivial(ls.LitAPI):
    # decode_request's parameter and encode_response's return stay unannotated: LitServe hands
    # those annotations to FastAPI as the request model and response_model, which would change
    # what is parsed and validated on every request (and a postponed string annotation such as
    # "Any" turns the body into a required query parameter).

    def setup(self, device: str) -> None:
        self.rec = models.Recorder()
        self.rec.setup()

    def decode_request(self, request):
        return int(request["input"])

    def predict(self, x: int) -> int:
        self.rec.predicted()
        return models.trivial(x)

    def encode_response(self, output):
        return {"output": output}


class Single(Trivial):
    """A batch model (models.BATCH_MODELS) with batching off: one request per predict call."""

    def setup(self, device: str) -> None:
        super().setup(device)
        self.model = models.BATCH_MODELS[os.environ.get(models.MODEL_ENV, "batched")]

    def predict(self, x: int) -> int:
        self.rec.predicted()
        return self.model([x])[0]


class Batched(Single):
    def batch(self, inputs: list[int]) -> list[int]:
        return inputs

    def predict(self, xs: list[int]) -> list[int]:  # type: ignore[override]
        self.rec.predicted(len(xs))
        return self.model(xs)

    def unbatch(self, output: list[int]) -> list[int]:
        return output


class Streamed(Trivial):
    def predict(self, x: int) -> Iterator[int]:  # type: ignore[override]
        self.rec.predicted()
        yield from models.stream(x)

    def encode_response(self, outputs):
        for out in outputs:
            yield {"output": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--model", choices=["trivial", *models.BATCH_MODELS, "streamed"], default="trivial"
    )
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--api-servers", type=int, default=2)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--batch-timeout", type=float, default=0.005)
    ap.add_argument("--restart-workers", action="store_true")
    ap.add_argument("--fast-queue", action="store_true")
    args = ap.parse_args()

    if args.model in models.BATCH_MODELS and args.max_batch_size > 1:
        api: ls.LitAPI = Batched(
            max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout
        )
    elif args.model in models.BATCH_MODELS:
        api = Single()
    elif args.model == "streamed":
        api = Streamed(stream=True)
    else:
        api = Trivial()
    server = ls.LitServer(
        api,
        accelerator="cpu",
        workers_per_device=args.workers,
        restart_workers=args.restart_workers,
        fast_queue=args.fast_queue,
    )
    # generate_client_file would drop a client.py into the working directory.
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=args.api_servers,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
