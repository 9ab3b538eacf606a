"""The transport floor under ferryman's hop, on this machine: `python -m benchmarks.zmq_floor`.

One request at a time between two Python processes over ipc://, with ferryman's socket pattern
and none of its code: the API side's ROUTER sends a two-frame message to the worker's DEALER, the
worker answers on its PUSH to the API side's PULL. Blocking sockets, no event loop, no HTTP: what
is left of ferryman's one-connection latency above this (plus bare uvicorn's own) is ferryman's.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import zmq


def _worker(requests: str, replies: str, n: int) -> None:
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"w0")
    dealer.connect(requests)
    push = ctx.socket(zmq.PUSH)
    push.connect(replies)
    dealer.send(b"ready")
    for _ in range(n):
        header, body = dealer.recv_multipart()
        push.send_multipart((header, body))
    dealer.close(0)
    push.close(0)
    ctx.term()


def measure(n: int) -> list[float]:
    """Round trips in seconds, after a warm-up of n // 10."""
    warm = n // 10
    with tempfile.TemporaryDirectory() as d:
        requests, replies = f"ipc://{Path(d) / 'req'}", f"ipc://{Path(d) / 'rep'}"
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.bind(requests)
        pull = ctx.socket(zmq.PULL)
        pull.bind(replies)
        proc = mp.get_context("spawn").Process(target=_worker, args=(requests, replies, n + warm))
        proc.start()
        try:
            ident, _ = router.recv_multipart()
            out = []
            for i in range(n + warm):
                t = time.perf_counter()
                router.send_multipart((ident, b"\x93\x01\xa7predict\x00", b'{"input": 21}'))
                pull.recv_multipart()
                if i >= warm:
                    out.append(time.perf_counter() - t)
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
            router.close(0)
            pull.close(0)
            ctx.term()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000, help="round trips [20000]")
    args = ap.parse_args()
    rt = sorted(measure(args.n))
    p50 = statistics.median(rt) * 1e3
    p99 = rt[int(len(rt) * 0.99)] * 1e3
    print(f"ZeroMQ ipc round trip, ROUTER->DEALER, PUSH->PULL, {len(rt)} one at a time:")
    print(f"p50 {p50:.3f} ms, p99 {p99:.3f} ms, mean {statistics.fmean(rt) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
