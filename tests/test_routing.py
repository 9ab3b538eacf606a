"""Routing balanced across API processes: a request goes to the least-loaded worker counted over
every API process (the load board), not only over the one that took the request."""

from __future__ import annotations

import collections
import concurrent.futures as cf

import httpx
from conftest import app, wait_for


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
