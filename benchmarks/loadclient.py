"""Closed-loop load that records every request's outcome: the worker-kill scenario's client, and
the GPU script's load generator (wrk is not on that machine).

wrk cannot say which requests failed or hung (its timeout counter ticks per stuck connection and
check, and a stuck connection is never retried), so this client keeps N keep-alive connections
busy, gives each request `hung_s` to answer, and counts 200s, other statuses, connection errors
and hung requests (closing the connection and opening a new one after each failure).

python -m benchmarks.loadclient --port 8000 --connections 32 --duration 10 --hung 3
prints one JSON object on stdout, with requests/s and the p50/p99 latency of the 200s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections import Counter
from typing import Any

from benchmarks.httpclient import BODY, parse_head, post_request


class Stats:
    def __init__(self, stop_at: float = 0.0) -> None:
        self.stop_at = stop_at  # monotonic; moved to now by SIGTERM (see run)
        self.ok = 0
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.hung = 0
        self.latencies: list[float] = []  # seconds, of the 200s
        self.failures: list[tuple[float, str]] = []  # (wall time, what), first 2000
        self.last_failure: float | None = None  # wall time: the list above may be full by then

    def fail(self, what: str) -> None:
        self.last_failure = time.time()
        if len(self.failures) < 2000:
            self.failures.append((self.last_failure, what))


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status, headers = parse_head(head[:-4])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            await reader.readexactly(size + 2)
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status


async def _connection(port: int, hung_s: float, stats: Stats, path: str = "/predict") -> None:
    request = post_request(path, BODY)
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while time.monotonic() < stats.stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), timeout=hung_s
                )
            assert reader is not None and writer is not None
            t0 = time.perf_counter()
            writer.write(request)
            status = await asyncio.wait_for(_read_response(reader), timeout=hung_s)
        except TimeoutError:
            stats.hung += 1
            stats.fail("hung")
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            kind = type(e).__name__
            stats.errors[kind] += 1
            stats.fail(kind)
            await asyncio.sleep(0.05)  # a refused connect must not spin
        else:
            if status == 200:
                stats.ok += 1
                stats.latencies.append(time.perf_counter() - t0)
            else:
                stats.statuses[status] += 1
                stats.fail(f"status {status}")
            continue
        if writer is not None:
            writer.close()
        writer = reader = None
    if writer is not None:
        writer.close()


def percentile_ms(latencies: list[float], p: float) -> float | None:
    if not latencies:
        return None
    s = sorted(latencies)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))] * 1e3


async def run(
    port: int,
    connections: int,
    duration: float,
    hung_s: float,
    path: str = "/predict",
    raw: bool = False,
    stop_on_sigterm: bool = False,
) -> dict[str, Any]:
    """N connections for `duration` seconds. With stop_on_sigterm, SIGTERM ends the run early
    and still reports it (the GPU script stops the client once a killed worker is back)."""
    stats = Stats(time.monotonic() + duration)
    t0 = time.time()
    if stop_on_sigterm:

        def stop() -> None:
            stats.stop_at = 0.0

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    await asyncio.gather(*(_connection(port, hung_s, stats, path) for _ in range(connections)))
    failed = sum(stats.statuses.values()) + sum(stats.errors.values()) + stats.hung
    elapsed = time.time() - t0
    return {
        "started": t0,
        "duration_s": elapsed,
        "rps": stats.ok / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile_ms(stats.latencies, 50),
        "p99_ms": percentile_ms(stats.latencies, 99),
        "ok": stats.ok,
        "failed": failed,
        "statuses": {str(k): v for k, v in stats.statuses.items()},
        "errors": dict(stats.errors),
        "hung": stats.hung,
        "failures": stats.failures,
        "last_failure": stats.last_failure,
        # Every 200's latency in ms, for merging the results of several client processes.
        **({"latencies_ms": [round(x * 1e3, 4) for x in stats.latencies]} if raw else {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--hung", type=float, default=3.0, help="seconds after which a request hangs")
    ap.add_argument("--path", default="/predict")
    ap.add_argument("--raw", action="store_true", help="also print every latency")
    ap.add_argument(
        "--stop-on-sigterm", action="store_true", help="SIGTERM ends the run, which still reports"
    )
    args = ap.parse_args()
    coro = run(
        args.port,
        args.connections,
        args.duration,
        args.hung,
        args.path,
        args.raw,
        args.stop_on_sigterm,
    )
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
