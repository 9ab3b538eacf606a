"""Closed-loop load that records every request's outcome: the worker-kill scenario's client.

wrk cannot say which requests failed or hung (its timeout counter ticks per stuck connection and
check, and a stuck connection is never retried), so this client keeps N keep-alive connections
busy, gives each request `hung_s` to answer, and counts 200s, other statuses, connection errors
and hung requests (closing the connection and opening a new one after each failure).

python -m benchmarks.loadclient --port 8000 --connections 32 --duration 10 --hung 3
prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

from benchmarks.httpclient import BODY, parse_head, post_request


class Stats:
    def __init__(self) -> None:
        self.ok = 0
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.hung = 0
        self.failures: list[tuple[float, str]] = []  # (wall time, what), first 2000

    def fail(self, what: str) -> None:
        if len(self.failures) < 2000:
            self.failures.append((time.time(), what))


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


async def _connection(port: int, stop_at: float, hung_s: float, stats: Stats) -> None:
    request = post_request("/predict", BODY)
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while time.monotonic() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), timeout=hung_s
                )
            assert reader is not None and writer is not None
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
            else:
                stats.statuses[status] += 1
                stats.fail(f"status {status}")
            continue
        if writer is not None:
            writer.close()
        writer = reader = None
    if writer is not None:
        writer.close()


async def run(port: int, connections: int, duration: float, hung_s: float) -> dict[str, Any]:
    stats = Stats()
    t0 = time.time()
    stop_at = time.monotonic() + duration
    await asyncio.gather(*(_connection(port, stop_at, hung_s, stats) for _ in range(connections)))
    failed = sum(stats.statuses.values()) + sum(stats.errors.values()) + stats.hung
    return {
        "started": t0,
        "duration_s": time.time() - t0,
        "ok": stats.ok,
        "failed": failed,
        "statuses": {str(k): v for k, v in stats.statuses.items()},
        "errors": dict(stats.errors),
        "hung": stats.hung,
        "failures": stats.failures,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--hung", type=float, default=3.0, help="seconds after which a request hangs")
    args = ap.parse_args()
    coro = run(args.port, args.connections, args.duration, args.hung)
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
