"""Routing balanced across API processes: a request goes to the least-loaded worker counted over
every API process (the load board), not only over the one that took the request."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
from pathlib import Path

import httpx
import pytest
import zmq
from conftest import app, wait_for

from ferryman import protocol as p
from ferryman.board import Board
from ferryman.frontend import dispatch
from ferryman.frontend.dispatch import Dispatcher, Unavailable


def _post(url: str, body: dict) -> dict:
    # A new connection per request: the kernel hands it to either API process.
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/predict", json=body)
        assert r.status_code == 200, r.text
        return r.json()


def test_a_request_goes_to_the_idle_worker_whichever_api_process_takes_it(serve, tmp_path):
    s = serve(app("echo:Echo"), api_servers=2, workers=2)
    with cf.ThreadPoolExecutor(2) as pool:
        for i in range(10):
            mark = tmp_path / f"started-{i}"
            first = pool.submit(_post, s.url, {"input": i, "sleep": 0.5, "started": str(mark)})
            wait_for(mark.exists)  # the first is running in its worker: the other one is idle
            second = _post(s.url, {"input": -i})
            assert second["pid"] != first.result()["pid"], f"pair {i} shared a worker"


def test_concurrent_long_requests_spread_evenly(serve):
    s = serve(app("echo:Echo"), api_servers=2, workers=2)
    with cf.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: _post(s.url, {"input": i, "sleep": 1}), range(6)))
    per_worker = collections.Counter(a["pid"] for a in answers)
    assert sorted(per_worker.values()) == [3, 3], per_worker


# -- a worker the supervisor saw ready, on its way to this API process ----------------------------
# At start, or when one API process comes up after another, a worker may reach one API process a
# moment before the other: a request there waits for it rather than getting 503.


async def _with_dispatcher(tmp_path: Path, body) -> None:  # type: ignore[no-untyped-def]
    ctx = zmq.Context()
    board = Board(str(tmp_path / "board"), create=True)
    ep = p.ApiEndpoint("a0.1", f"ipc://{tmp_path}/req", f"ipc://{tmp_path}/rep", 0)
    d = Dispatcher(ctx, ep, board, max_queue=10)
    try:
        await body(ctx, ep, d)
    finally:
        d.close()
        board.close()
        ctx.term()


def _route(workers: list[str]) -> p.ModelRoute:
    return p.ModelRoute(name="m", api_path="/predict", timeout=5, workers=workers)


def test_a_request_waits_for_a_ready_worker_that_has_not_reached_this_api_process(tmp_path):
    async def body(ctx, ep, d):  # type: ignore[no-untyped-def]
        d.set_models([_route(["m.w0.1"])])
        job = d.submit("m", "predict", b"{}")  # no 503: the worker is on its way
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, b"m.w0.1")
        dealer.connect(ep.requests)
        dealer.send(p.encode(p.WorkerReady("m.w0.1", "m", 0, 1, "cpu", 0, 1, 4)))
        try:
            assert await asyncio.to_thread(dealer.poll, 5000)
            work = p.to_worker(dealer.recv_multipart()[0])
            assert isinstance(work, p.Work) and work.id == job.id
        finally:
            dealer.close(0)

    asyncio.run(_with_dispatcher(tmp_path, body))


def test_without_a_ready_worker_anywhere_a_request_is_refused_at_once(tmp_path):
    async def body(ctx, ep, d):  # type: ignore[no-untyped-def]
        d.set_models([_route([])])
        with pytest.raises(Unavailable) as e:
            d.submit("m", "predict", b"{}")
        assert e.value.kind == "no_worker"

    asyncio.run(_with_dispatcher(tmp_path, body))


def test_a_waiting_request_gets_503_when_the_awaited_worker_dies(tmp_path):
    async def body(ctx, ep, d):  # type: ignore[no-untyped-def]
        d.set_models([_route(["m.w0.1"])])
        job = d.submit("m", "predict", b"{}")
        d.worker_gone("m.w0.1", "killed by SIGKILL")
        with pytest.raises(Unavailable) as e:
            await asyncio.wait_for(job.fut, 5)
        assert e.value.kind == "no_worker"
        with pytest.raises(Unavailable):  # and the next one is not held either
            d.submit("m", "predict", b"{}")

    asyncio.run(_with_dispatcher(tmp_path, body))


def test_a_waiting_request_gets_503_when_the_awaited_worker_never_comes(tmp_path, monkeypatch):
    monkeypatch.setattr(dispatch, "JOIN_WAIT", 0.2)

    async def body(ctx, ep, d):  # type: ignore[no-untyped-def]
        d.set_models([_route(["m.w0.1"])])
        job = d.submit("m", "predict", b"{}")
        with pytest.raises(Unavailable) as e:  # not a 504: no worker ever had it
            await asyncio.wait_for(job.fut, 5)
        assert e.value.kind == "no_worker"

    asyncio.run(_with_dispatcher(tmp_path, body))
