"""Resource limits: a worker is replaced after max_requests, or once its memory passes
worker_max_rss, its replacement ready first, without failing a request."""

from __future__ import annotations

from conftest import app, wait_for
from test_supervision import SteadyClient


def test_max_requests_recycles_workers_without_failing_a_request(serve):
    s = serve(app("echo:Echo"), "--max-requests", "40", workers=2, api_servers=1)
    first = set(s.pids())
    with SteadyClient(s.url) as client:
        # Every worker is replaced once it has served its 40, again and again.
        wait_for(lambda: len({p for p in s.pids()} - first) >= 2, timeout=60)
        n = client.ok
        wait_for(lambda: client.ok > n + 100, timeout=60)
    assert client.failures == []
    assert all(w["served"] < 200 for w in s.status()["workers"])  # none lives on and on
    assert all(w["restarts"] == 0 for w in s.status()["workers"])  # a recycle is not a crash


def test_worker_max_rss_recycles_a_leaking_worker(serve):
    s = serve(app("leaky:Leaky"), "--worker-max-rss", "150M", workers=1, api_servers=1)
    pid = s.pids()[0]
    calls: list[int] = []

    def replaced() -> bool:
        # A request every 0.05 s: the supervisor looks at workers' memory once a second.
        r = s.post(json={"input": len(calls)})
        assert r.status_code == 200, r.text
        calls.append(r.json()["calls"])
        return r.json()["pid"] != pid

    wait_for(replaced, timeout=60)
    # 8 MiB a call against 150 MiB: replaced after a few dozen calls at most (not a hundred),
    # and its successor starts afresh.
    assert max(calls) < 60
    assert calls[-1] < calls[-2]
