"""Several models in one server: a worker pool each, routed by path (and by name on the OpenAI
routes), scaled, added, removed and reloaded at runtime, isolated from each other's failures."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import APPS, FAKE_GPU_ENV, ROOT, alive, children_of, wait_for
from prometheus_client.parser import text_string_to_metric_families
from test_supervision import SteadyClient

MODELS = APPS / "models.py"

TWO_MODELS = f"""
api_servers = 2
[[models]]
name = "embed"
app = "{MODELS}:Embedder"
accelerator = "cuda"
devices = [0, 1]
workers_per_device = 1
[[models]]
name = "rerank"
app = "{MODELS}:Reranker"
accelerator = "cpu"
workers_per_device = 2
api_path = "/rerank"
"""


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ferryman.toml"
    path.write_text(text)
    return str(path)


def two_models(serve, tmp_path, *args: str, **kw):
    return serve(
        None,
        "--config",
        config(tmp_path, TWO_MODELS),
        *args,
        workers=None,
        accelerator=None,
        env=FAKE_GPU_ENV,
        **kw,
    )


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_two_models_from_one_config_answer_on_their_own_devices(serve, tmp_path):
    s = two_models(serve, tmp_path)
    models = {m["name"]: m for m in s.status()["models"]}
    assert models["embed"]["devices"] == ["cuda:0", "cuda:1"]
    assert models["rerank"]["api_path"] == "/rerank"
    assert models["embed"]["api_path"] == "/embed/predict"

    def one(i: int) -> tuple[str, int, dict]:
        path, model = ("/embed/predict", "embed") if i % 2 else ("/rerank", "rerank")
        with httpx.Client(base_url=s.url, timeout=30) as c:
            r = c.post(path, json={"input": i})
            return model, r.status_code, r.json()

    with cf.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(300)))
    assert all(code == 200 for _, code, _ in results)
    for i, (model, _, body) in enumerate(results):
        assert (body["model"], body["input"], body["served_as"]) == (model, i, model)
        if model == "embed":  # pinned: each embed worker sees its one fake GPU as cuda:0
            assert body["device"] == "cuda:0" and body["cuda_visible_devices"] in ("0", "1")
        else:
            assert body["device"] == "cpu" and body["cuda_visible_devices"] in (None, "0,1")
    assert {b["pid"] for m, _, b in results if m == "rerank"} == {
        w["pid"] for w in models["rerank"]["workers"]
    }
    assert s.post("/predict", json={"input": 1}).status_code == 404  # several models: no /predict
    info = s.get("/info").json()
    assert {m["name"] for m in info["models"]} == {"embed", "rerank"}


def test_scaling_one_model_under_load_fails_nothing_on_either(serve, tmp_path):
    s = two_models(serve, tmp_path)
    with (
        SteadyClient(s.url, 3, "/rerank", "rerank") as rerank,
        SteadyClient(s.url, 3, "/embed/predict", "embed") as embed,
    ):
        r = s.admin_call("PUT", "/v1/models/embed/workers?wait=true", json={"count": 4})
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "done" and len(r.json()["started"]) == 2
        r = s.admin_call("PUT", "/v1/models/embed/workers?wait=true", json={"count": 1})
        assert r.status_code == 200, r.text
        n = rerank.ok
        wait_for(lambda: rerank.ok > n + 20)
    assert rerank.failures == [] and embed.failures == []
    models = {m["name"]: m for m in s.status()["models"]}
    assert len(models["embed"]["workers"]) == 1
    assert len(models["rerank"]["workers"]) == 2
    # The only-model routes refuse to guess which model is meant.
    r = s.admin_call("PUT", "/v1/workers", json={"count": 2})
    assert r.status_code == 409 and "embed" in r.json()["error"]["message"]


def test_killing_a_worker_of_one_model_fails_only_its_requests(serve, tmp_path):
    s = two_models(serve, tmp_path)
    with SteadyClient(s.url, 3, "/rerank", "rerank") as rerank:
        with httpx.Client(base_url=s.url, timeout=30) as c, cf.ThreadPoolExecutor(2) as pool:
            slow = pool.submit(c.post, "/embed/predict", json={"input": "slow", "sleep": 5})
            victim = wait_for(
                lambda: next(
                    (
                        w
                        for w in s.status()["workers"]
                        if w["model"] == "embed" and w["requests_in_flight"]
                    ),
                    None,
                )
            )
            os.kill(victim["pid"], signal.SIGKILL)
            r = slow.result(30)
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "worker_died"
        n = rerank.ok
        wait_for(lambda: rerank.ok > n + 10)
    assert rerank.failures == []
    wait_for(
        lambda: (
            [w["state"] for w in s.status()["workers"] if w["model"] == "embed"] == ["ready"] * 2
        )
    )
    assert s.post("/embed/predict", json={"input": 3}).json()["input"] == 3


def test_a_model_whose_setup_raises_is_failed_while_the_other_serves(serve, tmp_path):
    cfg = config(
        tmp_path,
        f"""
[[models]]
name = "good"
app = "{MODELS}:Embedder"
[[models]]
name = "bad"
app = "{MODELS}:Broken"
""",
    )
    s = serve(None, "--config", cfg, workers=1, wait=False)

    def states():
        try:
            st = s.admin_call("GET", "/v1/models").json()
        except httpx.HTTPError:
            return None  # the admin port is not up yet
        return {m["name"]: m["state"] for m in st["models"]}

    wait_for(lambda: states() == {"good": "ready", "bad": "failed"}, timeout=60)
    assert s.post("/good/predict", json={"input": 1}).json()["input"] == 1
    r = s.post("/bad/predict", json={"input": 1})
    assert r.status_code == 503 and r.json()["error"]["type"] == "no_worker"
    bad = s.admin_call("GET", "/v1/models/bad").json()
    assert "the weights of Broken are missing" in bad["error"]
    assert s.admin_call("GET", "/ready?model=good").status_code == 200
    assert s.admin_call("GET", "/ready?model=bad").status_code == 503
    assert s.admin_call("GET", "/ready").status_code == 503  # not every model is ready
    assert s.get("/ready?model=good").status_code == 200
    assert s.proc.poll() is None  # one broken model does not stop the server


def test_only_broken_models_exit_3(tmp_path):
    cfg = config(tmp_path, f'[[models]]\nname = "bad"\napp = "{MODELS}:Broken"\n')
    r = subprocess.run(
        [sys.executable, "-m", "ferryman", "serve", "--config", cfg, "--admin-port", "0",
         "--port", "0", "--accelerator", "cpu"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 3
    assert "the weights of Broken are missing" in r.stderr


def test_a_model_registered_at_runtime_serves_and_leaves_without_a_trace(serve, tmp_path):
    s = serve(f"embed={MODELS}:Embedder", workers=1)
    r = s.admin_call(
        "POST",
        "/v1/models?wait=true",
        json={"name": "rerank", "app": f"{MODELS}:Reranker", "workers_per_device": 2},
    )
    assert r.status_code == 201, r.text
    assert r.json()["api_path"] == "/rerank/predict" and r.json()["workers_ready"] >= 1
    assert s.post("/rerank/predict", json={"input": 7}).json()["model"] == "rerank"
    assert s.post("/predict", json={"input": 7}).json()["model"] == "embed"  # kept its path
    # Name or path in use, bad options: refused.
    again = {"name": "rerank", "app": f"{MODELS}:Reranker"}
    assert s.admin_call("POST", "/v1/models", json=again).status_code == 409
    clash = {"name": "other", "app": f"{MODELS}:Reranker", "api_path": "/rerank/predict"}
    assert s.admin_call("POST", "/v1/models", json=clash).status_code == 409
    for body in (
        {"name": "x", "app": f"{MODELS}:Reranker", "max_batch_size": 0},
        {"name": "x", "app": f"{MODELS}:Nope"},
        {"name": "x"},
        {"name": "x", "app": f"{MODELS}:Reranker", "port": 1},
        [],
    ):
        r = s.admin_call("POST", "/v1/models", json=body)
        assert r.status_code == 422, (body, r.text)
    pids = [w["pid"] for w in s.status()["workers"] if w["model"] == "rerank"]
    r = s.admin_call("DELETE", "/v1/models/rerank?wait=true")
    assert r.status_code == 200, r.text
    assert s.post("/rerank/predict", json={"input": 7}).status_code == 404
    assert not any(alive(pid) for pid in pids)
    assert [m["name"] for m in s.admin_call("GET", "/v1/models").json()["models"]] == ["embed"]
    assert s.admin_call("GET", "/v1/models/rerank").status_code == 404


def test_a_runtime_model_that_cannot_start_says_why(serve):
    s = serve(f"embed={MODELS}:Embedder", workers=1)
    r = s.admin_call(
        "POST", "/v1/models?wait=true", json={"name": "bad", "app": f"{MODELS}:Broken"}
    )
    assert r.status_code == 503, r.text
    assert "the weights of Broken are missing" in r.json()["error"]["message"]
    assert s.post("/predict", json={"input": 1}).status_code == 200


def test_sighup_adds_and_removes_models_from_the_file(serve, tmp_path):
    cfg = config(tmp_path, f'[[models]]\nname = "embed"\napp = "{MODELS}:Embedder"\n'
                           f'api_path = "/e"\n')  # fmt: skip
    s = serve(None, "--config", cfg, workers=1, api_servers=1)
    assert s.post("/e", json={"input": 1}).json()["model"] == "embed"
    embed_pids = set(s.pids())
    Path(cfg).write_text(
        f'[[models]]\nname = "rerank"\napp = "{MODELS}:Reranker"\napi_path = "/r"\n'
    )
    os.kill(s.pid, signal.SIGHUP)
    wait_for(lambda: [m["name"] for m in s.status()["models"]] == ["rerank"], timeout=60)
    wait_for(lambda: s.status()["supervisor"]["operation"] is None, timeout=60)
    assert s.post("/r", json={"input": 2}).json()["model"] == "rerank"
    assert s.post("/e", json={"input": 2}).status_code == 404
    wait_for(lambda: not any(alive(pid) for pid in embed_pids))


def test_the_openai_route_picks_the_model_by_name(serve, tmp_path):
    from openai import NotFoundError, OpenAI

    s = serve([f"chatty={MODELS}:Chatty", f"talky={MODELS}:Talky"], "--spec", "openai", workers=1)
    client = OpenAI(base_url=f"{s.url}/v1", api_key="unused")
    messages = [{"role": "user", "content": "hello"}]
    for name, cls in (("chatty", "Chatty"), ("talky", "Talky")):
        out = client.chat.completions.create(model=name, messages=messages)  # type: ignore[arg-type]
        assert out.choices[0].message.content == f"{cls} heard: hello"
    with pytest.raises(NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=messages)  # type: ignore[arg-type]
    assert "chatty" in str(e.value)
    listed = {m.id for m in client.models.list()}
    assert listed == {"chatty", "talky"}


def test_metrics_carry_the_model(serve, tmp_path):
    s = two_models(serve, tmp_path)
    for i in range(6):
        assert s.post("/rerank", json={"input": i}).status_code == 200
    for i in range(4):
        assert s.post("/embed/predict", json={"input": i}).status_code == 200
    assert s.post("/nowhere", json={}).status_code == 404

    def scraped():
        # API processes and workers send their counts a few times a second: wait for both.
        text = s.admin_call("GET", "/metrics").text
        done = (
            metric(text, "ferryman_requests_total", model="rerank", status="200") == 6
            and metric(text, "ferryman_requests_total", model="embed") == 4
            and metric(text, "ferryman_predict_duration_seconds_count") == 10
        )
        return text if done else None

    text = wait_for(scraped)
    assert metric(text, "ferryman_request_duration_seconds_count", model="embed") == 4
    assert metric(text, "ferryman_predict_duration_seconds_count", model="rerank") == 6
    assert metric(text, "ferryman_batch_size_count", model="rerank") == 6
    assert metric(text, "ferryman_workers", model="embed", state="ready") == 2
    assert metric(text, "ferryman_workers", model="rerank", state="ready") == 2
    assert metric(text, "ferryman_model_ready", model="embed") == 1
    assert metric(text, "ferryman_requests_total", status="404") == 1
    # Every restart series is there from the start, at zero, for `increase()` to see the first.
    assert (
        metric(
            text, "ferryman_process_restarts_total", role="worker", model="embed", reason="crash"
        )
        == 0
    )
    assert any(
        s.name == "ferryman_process_restarts_total" and s.labels["model"] == "rerank"
        for f in text_string_to_metric_families(text)
        for s in f.samples
    )


def test_cli_names_models_and_ctl_manages_them(serve):
    s = serve([f"embed={MODELS}:Embedder", f"{MODELS}:Reranker"], workers=1)
    assert s.post("/embed/predict", json={"input": 1}).json()["model"] == "embed"
    assert s.post("/reranker/predict", json={"input": 1}).json()["model"] == "rerank"

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ferryman", "ctl", "--admin", s.admin, *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    out = ctl("models")
    assert out.returncode == 0 and "embed" in out.stdout and "/reranker/predict" in out.stdout
    assert ctl("scale", "embed", "2").returncode == 0
    assert len([w for w in s.status()["workers"] if w["model"] == "embed"]) == 2
    out = ctl("load", f"extra={MODELS}:Embedder", "--set", "api_path=/x")
    assert out.returncode == 0, out.stderr
    assert s.post("/x", json={"input": 5}).json()["input"] == 5
    assert ctl("unload", "extra").returncode == 0
    assert s.post("/x", json={"input": 5}).status_code == 404
    status = ctl("status").stdout
    assert "model embed" in status and "model reranker" in status
    bad = ctl("scale", "nope", "2")
    assert bad.returncode == 1 and "nope" in bad.stderr


def test_server_takes_a_list_of_apis(tmp_path):
    port_file = tmp_path / "ports"
    script = tmp_path / "two.py"
    from conftest import free_port

    port, admin = free_port(), free_port()
    port_file.write_text(f"{port} {admin}")
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(APPS)!r})\n"
        "import ferryman\n"
        "from models import Embedder, Reranker\n"
        "if __name__ == '__main__':\n"
        f"    ferryman.Server([Embedder(), Reranker()], api_servers=1, admin_port={admin},"
        f" accelerator='cpu').run(port={port})\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, start_new_session=True,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:

        def answer(path: str):
            try:
                r = httpx.post(f"http://127.0.0.1:{port}{path}", json={"input": 1}, timeout=5)
            except httpx.HTTPError:
                return None
            return r.json()["model"] if r.status_code == 200 else None

        assert wait_for(lambda: answer("/embedder/predict"), timeout=30) == "embed"
        assert wait_for(lambda: answer("/reranker/predict"), timeout=30) == "rerank"
    finally:
        kids = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for pid in kids:
            assert not alive(pid)
