"""The GPU benchmark's model (benchmarks.gpu_model) as a LitServe API.

python -m benchmarks.peers.gpu_litserve --port 8000 --accelerator cuda --workers 2 \
    [--max-batch-size 16 --batch-timeout 0.05]
"""

from __future__ import annotations

import argparse

import litserve as ls

from benchmarks import gpu_model


class MLP(ls.LitAPI):
    # decode_request / encode_response stay unannotated: LitServe hands those annotations to
    # FastAPI (see benchmarks/peers/litserve_app.py).

    def setup(self, device: str) -> None:
        self.mlp = gpu_model.MLP()
        self.mlp.setup(device)

    def decode_request(self, request):
        return float(request["input"])

    def predict(self, x: float) -> float:
        return self.mlp.run([x])[0]

    def encode_response(self, output):
        return {"output": output}


class BatchedMLP(MLP):
    def batch(self, inputs: list[float]) -> list[float]:
        return inputs

    def predict(self, xs: list[float]) -> list[float]:  # type: ignore[override]
        return self.mlp.run(xs)

    def unbatch(self, output: list[float]) -> list[float]:
        return output


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--accelerator", default="cuda")
    ap.add_argument("--workers", type=int, default=1, help="workers per device")
    ap.add_argument("--api-servers", type=int, default=2)
    ap.add_argument("--max-batch-size", type=int, default=1)
    ap.add_argument("--batch-timeout", type=float, default=0.0)
    ap.add_argument("--restart-workers", action="store_true")
    args = ap.parse_args()
    if args.max_batch_size > 1:
        api: ls.LitAPI = BatchedMLP(
            max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout
        )
    else:
        api = MLP()
    server = ls.LitServer(
        api,
        accelerator=args.accelerator,
        devices=1,
        workers_per_device=args.workers,
        restart_workers=args.restart_workers,
    )
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=args.api_servers,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
