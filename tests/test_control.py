"""The control plane: admin REST API, `ferryman ctl`, Prometheus metrics for every process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
from conftest import (
    FAKE_GPU_ENV,
    FAKE_GPUS,
    alive,
    app,
    children_of,
    free_port,
    run_serve,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from test_supervision import SteadyClient


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def real_workers(s) -> set[int]:
    """Worker pids as the kernel sees them: the supervisor's children that are not API ones."""
    apis = set(s.pids("api_servers"))
    return {p for p in children_of(s.pid) if p not in apis and alive(p)}


def test_scale_up_and_down_under_load_fails_nothing(serve):
    s = serve(app("echo:Echo"), api_servers=2, workers=2)
    with SteadyClient(s.url) as client:
        r = s.admin_call("PUT", "/v1/workers?wait=true", json={"count": 4})
        assert r.status_code == 200, r.text
        assert r.json()["target"] == 4 and len(r.json()["started"]) == 2
        st = s.status()["workers"]
        assert [w["state"] for w in st] == ["ready"] * 4
        assert {w["pid"] for w in st} == real_workers(s)
        r = s.admin_call("PUT", "/v1/workers?wait=true", json={"count": 1})
        assert r.status_code == 200, r.text
        assert len(r.json()["stopped"]) == 3
        n = client.ok
        wait_for(lambda: client.ok > n + 20)
    assert client.failures == []
    st = s.status()["workers"]
    assert len(st) == 1 and st[0]["state"] == "ready"
    wait_for(lambda: {st[0]["pid"]} == real_workers(s))


def test_scale_spreads_over_devices_and_per_device(serve):
    s = serve(
        app("echo:Echo"),
        *FAKE_GPUS,
        workers=1,
        env=FAKE_GPU_ENV,
    )
    r = s.admin_call("PUT", "/v1/workers?wait=true", json={"per_device": 2})
    assert r.status_code == 200 and r.json()["target"] == 4
    devices = sorted(w["device"] for w in s.status()["workers"])
    assert devices == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    r = s.admin_call("PUT", "/v1/workers?wait=true", json={"count": 2})
    assert sorted(w["device"] for w in s.status()["workers"]) == ["cuda:0", "cuda:1"]


def test_restart_a_worker_under_load_fails_nothing(serve):
    s = serve(app("echo:Echo"), api_servers=2, workers=2)
    old = s.pids()
    with SteadyClient(s.url) as client:
        r = s.admin_call("POST", "/v1/workers/1/restart")
        assert r.status_code == 202
        wait_for(
            lambda: (
                s.pids()[1] != old[1]
                and s.status()["supervisor"]["operation"] is None
                and not s.status()["workers"][1].get("retiring")
            )
        )
        n = client.ok
        wait_for(lambda: client.ok > n + 20)
    assert client.failures == []
    assert s.pids()[0] == old[0]
    r = s.admin_call("POST", "/v1/api-servers/0/restart")
    assert r.status_code == 202


def test_reload_route_says_which_pids_changed_and_keeps_the_scaled_count(serve):
    s = serve(app("echo:Echo"), api_servers=1, workers=1)
    assert s.admin_call("PUT", "/v1/workers?wait=true", json={"count": 2}).status_code == 200
    before = set(s.pids()) | set(s.pids("api_servers"))
    r = s.admin_call("POST", "/v1/reload")
    assert r.status_code == 200
    body = r.json()
    assert set(body["stopped"]) == before
    assert len(body["started"]) == 3
    assert set(body["started"]) == set(s.pids()) | set(s.pids("api_servers"))
    assert len(s.pids()) == 2  # the config file did not change the count: the scale stands


def test_admin_errors(serve):
    s = serve(app("echo:Echo"), "--max-workers", "3", api_servers=1, workers=1)

    def err(r: httpx.Response, status: int) -> None:
        assert r.status_code == status, r.text
        assert r.json()["error"]["message"]

    err(s.admin_call("GET", "/v1/workers/7"), 404)
    err(s.admin_call("GET", "/v1/workers/x"), 404)
    err(s.admin_call("POST", "/v1/workers/7/restart"), 404)
    err(s.admin_call("POST", "/v1/api-servers/5/restart"), 404)
    err(s.admin_call("GET", "/v1/nothing"), 404)
    err(s.admin_call("DELETE", "/v1/workers"), 405)
    for body in (
        {"count": -1},
        {"count": 0},
        {"count": 2.5},
        {"count": "2"},
        {"count": 4},
        {"per_device": 0},
        {"count": 1, "per_device": 1},
        {},
        [1],
    ):
        err(s.admin_call("PUT", "/v1/workers", json=body), 422)
    err(s.admin_call("PUT", "/v1/workers", content=b"{nope"), 422)
    assert s.admin_call("GET", "/v1/workers/0").json()["state"] == "ready"
    assert s.admin_call("GET", "/openapi.json").json()["openapi"].startswith("3.")


def test_operations_merge_and_wait_says_how_they_ended(serve):
    s = serve(
        app("slow_setup:SlowSetup"), api_servers=1, workers=1, wait=False, env={"SETUP_SLEEP": "3"}
    )
    s.wait_ready()
    r = s.admin_call("PUT", "/v1/workers?wait=true&timeout=0.5", json={"count": 2})
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "timeout"
    # An operation during another one is merged, never refused: the latest count wins.
    r = s.admin_call("PUT", "/v1/workers", json={"count": 3})
    assert r.status_code == 202
    r = s.admin_call("POST", "/v1/workers/0/restart")
    assert r.status_code == 202
    wait_for(lambda: [w["state"] for w in s.status()["workers"]] == ["ready"] * 3, timeout=60)
    for query in (
        "timeout=0",
        "timeout=-1",
        "timeout=nan",
        "timeout=inf",
        "timeout=x",
        "wait=maybe",
    ):
        r = s.admin_call("PUT", f"/v1/workers?wait=true&{query}", json={"count": 1})
        assert r.status_code == 422, (query, r.text)
    for ident in ("\u0663", "+1", " 1", "1.0"):  # an Arabic-Indic three is not worker 3
        assert s.admin_call("GET", f"/v1/workers/{ident}").status_code == 404
    r = s.admin_call("PUT", "/v1/workers?wait=true", json={"count": 1})
    assert r.status_code == 200 and r.json()["state"] == "done"


def test_wait_says_failed_when_a_slot_fails(serve):
    s = serve(
        app("setup_fails:SetupFails"),
        "--max-restarts",
        "2",
        workers=1,
        api_servers=1,
        env={"FAIL_SLOTS": "1"},
    )
    r = s.admin_call("PUT", "/v1/workers?wait=true&timeout=60", json={"count": 2})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "failed"
    assert "cannot load weights on worker 1" in r.json()["error"]["message"]
    assert s.post(json={}).json()["worker"] == 0


def test_non_loopback_admin_requires_a_token():
    r = run_serve(
        "--admin-host",
        "0.0.0.0",
        "--port",
        str(free_port()),
        "--admin-port",
        str(free_port()),
        env={"FERRYMAN_ADMIN_TOKEN": ""},
    )
    assert r.returncode == 2
    assert "--admin-token" in r.stderr


def test_token_is_checked(serve):
    s = serve(
        app("echo:Echo"),
        "--admin-host",
        "0.0.0.0",
        "--admin-token",
        "s3cret",
        api_servers=1,
        workers=1,
        wait=False,
    )
    wait_for(lambda: _ok(lambda: s.admin_call("GET", "/ready").status_code == 200))
    assert s.admin_call("GET", "/health").status_code == 200  # probes need no token
    r = s.admin_call("GET", "/v1/status")
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
    bad = s.admin_call("GET", "/v1/status", headers={"authorization": "Bearer s3creT"})
    assert bad.status_code == 401
    good = s.admin_call("GET", "/v1/status", headers={"authorization": "Bearer s3cret"})
    assert good.status_code == 200
    assert s.admin_call("GET", "/metrics").status_code == 401


def _ok(fn):
    try:
        return fn()
    except httpx.HTTPError:
        return False


def test_metrics_count_every_request_and_never_go_back(serve):
    s = serve(app("echo:Echo"), api_servers=2, workers=2)
    for i in range(30):
        assert s.post(json={"input": i}).status_code == 200
    for _ in range(5):
        assert s.post(content=b"{bad").status_code == 400
    # Children add their counts to the shared files a few times a second: poll for them.
    wait_for(lambda: _scrape_when(s, "ferryman_requests_total", 35, route="predict"))
    # Only requests that reach predict form batches: the 5 bodies that are not JSON do not.
    text = wait_for(lambda: _scrape_when(s, "ferryman_batch_size_count", 30))
    assert (
        metric(text, "ferryman_requests_total", model="echo", route="predict", status="200") == 30
    )
    assert metric(text, "ferryman_requests_total", route="predict", status="400") == 5
    assert metric(text, "ferryman_request_duration_seconds_count", route="predict") == 35
    assert metric(text, "ferryman_predict_duration_seconds_count") == 30
    assert metric(text, "ferryman_batch_size_count") == 30
    assert metric(text, "ferryman_workers", state="ready") == 2
    assert metric(text, "ferryman_workers_desired") == 2
    assert metric(text, "ferryman_process_up", role="api") == 2
    assert metric(text, "ferryman_process_resident_memory_bytes", role="supervisor") > 0
    assert metric(text, "ferryman_process_cpu_seconds_total", role="worker") > 0
    for name in (
        "ferryman_queue_duration_seconds_count",
        "ferryman_requests_in_flight",
        "ferryman_reloads_total",
        "ferryman_worker_up",
    ):
        assert any(
            f.name == name or any(x.name == name for x in f.samples)
            for f in text_string_to_metric_families(text)
        ), name
    # Kill a worker and an API process: their counts stay in the totals.
    os.kill(s.pids()[0], signal.SIGKILL)
    os.kill(s.pids("api_servers")[0], signal.SIGKILL)
    wait_for(
        lambda: all(
            r["state"] == "ready" and r["restarts"] == 1
            for r in s.status()["workers"][:1] + s.status()["api_servers"][:1]
        )
    )
    text = s.admin_call("GET", "/metrics").text
    assert metric(text, "ferryman_requests_total", route="predict", status="200") == 30
    assert metric(text, "ferryman_predict_duration_seconds_count") == 30
    assert metric(text, "ferryman_process_restarts_total", role="worker", reason="crash") == 1
    assert metric(text, "ferryman_process_restarts_total", role="api", reason="crash") == 1
    s.post(json={"input": 1})
    wait_for(lambda: _scrape_when(s, "ferryman_requests_total", 36, route="predict"))


def _scrape_when(s, name: str, value: float, **labels: str) -> str | None:
    text = s.admin_call("GET", "/metrics").text
    return text if metric(text, name, **labels) == value else None


def ctl(s, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferryman", "ctl", "--admin", s.admin, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_ctl_against_a_real_server(serve):
    s = serve(app("echo:Echo"), api_servers=1, workers=1)
    out = ctl(s, "status")
    assert out.returncode == 0
    assert "worker" in out.stdout and "ready" in out.stdout and str(s.pids()[0]) in out.stdout
    js = ctl(s, "--json", "status")
    assert js.returncode == 0 and '"workers"' in js.stdout
    assert ctl(s, "scale", "2").returncode == 0
    assert len(s.status()["workers"]) == 2
    old = s.pids()[1]
    assert ctl(s, "restart", "1").returncode == 0
    wait_for(lambda: s.pids()[1] != old)
    rel = ctl(s, "reload")
    assert rel.returncode == 0 and "reloaded: 3 started" in rel.stdout
    met = ctl(s, "metrics")
    assert met.returncode == 0 and "ferryman_workers" in met.stdout
    bad = ctl(s, "restart", "9")
    assert bad.returncode == 1
    assert bad.stderr.startswith("ferryman ctl:") and "404" in bad.stderr


@pytest.mark.parametrize("action", [["status"], ["reload"]])
def test_ctl_says_when_unreachable(action):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferryman",
            "ctl",
            "--admin",
            f"http://127.0.0.1:{free_port()}",
            *action,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert r.stderr.startswith("ferryman ctl: cannot reach the admin port")
    assert len(r.stderr.strip().splitlines()) == 1
