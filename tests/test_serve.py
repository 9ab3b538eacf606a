"""Serve a model end to end: real `ferryman serve` processes, real HTTP, real signals."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import FAKE_GPU_ENV, FAKE_GPUS, alive, app, free_port, run_serve, wait_for


def test_doubler_example_answers(serve):
    s = serve("examples/doubler.py:Doubler")
    r = s.post(json={"input": 21})
    assert r.status_code == 200
    assert r.json() == {"output": 42}
    assert r.headers["content-type"] == "application/json"


def test_concurrent_answers_match_their_requests_and_spread_over_workers(serve):
    s = serve(app("echo:Echo"), api_servers=2, workers=2)
    worker_pids = set(s.pids())
    assert len(worker_pids) == 2

    def one(i: int) -> tuple[int, dict]:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            r = c.post("/predict", json={"input": i})
            return r.status_code, r.json()

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(400)))
    assert all(code == 200 for code, _ in results)
    assert [body["input"] for _, body in results] == list(range(400))
    assert {body["pid"] for _, body in results} == worker_pids


def test_error_statuses_are_json_and_nothing_dies(serve):
    s = serve(app("echo:Echo"), "--max-payload-size", "1000", "--timeout", "1")
    pids_before = set(s.pids()) | set(s.pids("api_servers"))

    def err(r: httpx.Response, status: int, kind: str) -> None:
        assert r.status_code == status, r.text
        body = r.json()
        assert body["error"]["type"] == kind, body
        assert body["error"]["message"]

    err(s.post(content=b"{not json"), 400, "invalid_json")
    err(s.post(content=b""), 400, "invalid_request")
    err(s.post(content=b'{"input": "' + b"x" * 2000 + b'"}'), 413, "payload_too_large")
    err(s.post(json={"fail": 418}), 418, "http_exception")
    err(s.post(json={"fail": 422}), 422, "http_exception")
    err(s.post(json={"boom": 1}), 500, "internal_error")
    err(s.post(json={"predict_error": 1}), 500, "internal_error")
    err(s.post(json={"input": "unencodable"}), 500, "internal_error")
    err(s.post(json={"sleep": 3}), 504, "timeout")
    err(s.get("/predict"), 405, "method_not_allowed")
    err(s.get("/nope"), 404, "not_found")
    # Still the same processes, still serving.
    assert s.post(json={"input": 7}).json()["input"] == 7
    assert set(s.pids()) | set(s.pids("api_servers")) == pids_before
    assert "predict failed on purpose" in s.log()  # the traceback is logged


def test_no_worker_ready_is_503_with_retry_after(serve):
    s = serve(app("slow_setup:SlowSetup"), wait=False, workers=1, api_servers=1)
    r = wait_for(lambda: _try_post(s), timeout=20)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "no_worker"
    assert s.get("/ready").status_code == 503
    assert s.get("/health").status_code == 200


def _try_post(s):
    try:
        return s.post(json={"input": 1}, timeout=5)
    except httpx.TransportError:
        return None


def test_health_ready_info(serve):
    s = serve(app("echo:Echo"), "--api-path", "/v2/run", workers=2)
    assert s.get("/health").json()["status"] == "ok"
    assert s.get("/ready").json() == {
        "status": "ready",
        "workers_ready": 2,
        "models": {"echo": 2},
    }
    info = s.get("/info").json()
    assert info["model"] == "echo"  # the class name, lower-cased
    assert info["devices"] == ["cpu"]
    assert len(info["workers"]) == 2
    assert info["options"]["api_path"] == "/v2/run"
    assert info["models"][0]["api_path"] == "/v2/run"
    assert "admin_token" not in info["options"]
    assert s.post("/v2/run", json={"input": 1}).json()["input"] == 1
    assert s.post("/predict", json={"input": 1}).status_code == 404


def test_workers_are_pinned_to_their_device(serve):
    """Two fake GPUs, two workers each: each worker sees exactly its one GPU as cuda:0."""
    s = serve(
        app("echo:Echo"),
        *FAKE_GPUS,
        workers=2,
        env=FAKE_GPU_ENV,
    )
    st = s.status()
    assert sorted(w["device"] for w in st["workers"]) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    seen = {}
    for _ in range(200):
        body = s.post(json={"input": 0}).json()
        seen[body["worker"]] = (body["cuda_visible_devices"], body["device"])
        if len(seen) == 4:
            break
    by_slot = {w["id"]: w["device"] for w in st["workers"]}
    assert len(seen) == 4
    for worker, (visible, device) in seen.items():
        assert device == "cuda:0"
        assert by_slot[worker] == f"cuda:{visible}"


def test_sigterm_stops_everything_and_removes_the_run_dir(serve):
    s = serve(app("echo:Echo"))
    children = s.child_pids()
    assert len(children) == 4
    tmp_dirs = _run_dirs(children)
    assert tmp_dirs
    assert s.stop(signal.SIGTERM) == 0
    wait_for(lambda: not any(alive(p) for p in children), timeout=15)
    assert not any(Path(d).exists() for d in tmp_dirs)


def test_sigint_stops_everything(serve):
    s = serve(app("echo:Echo"))
    children = s.child_pids()
    assert s.stop(signal.SIGINT) == 0
    wait_for(lambda: not any(alive(p) for p in children), timeout=15)


def test_sigkill_of_supervisor_takes_every_child_down(serve):
    s = serve(app("echo:Echo"))
    children = s.child_pids()
    assert len(children) == 4
    os.kill(s.pid, signal.SIGKILL)
    s.proc.wait(5)
    # Within ~1 s by design (PDEATHSIG, then a 0.5 s parent check); the deadline is generous.
    wait_for(lambda: not any(alive(p) for p in children), timeout=15)


def test_import_error_exits_non_zero_and_says_why_once(serve):
    s = serve(app("broken_import:Broken"), wait=False, workers=2)
    assert s.proc.wait(30) == 3
    log = s.log()
    assert "ModuleNotFoundError" in log
    assert "broken_import.py" in log
    assert log.count("Traceback (most recent call last)") == 1


def test_setup_error_exits_non_zero(serve):
    s = serve(app("setup_fails:SetupFails"), wait=False, workers=1)
    assert s.proc.wait(30) == 3
    assert "cannot load weights on worker 0" in s.log()


def test_python_app_py_runs_the_server(tmp_path):
    port, admin = free_port(), free_port()
    script = tmp_path / "myapp.py"
    script.write_text(
        "import ferryman\n"
        "class Triple(ferryman.API):\n"
        "    def __init__(self, k):\n"
        "        self.k = k\n"
        "    def predict(self, x):\n"
        "        return {'output': x['input'] * self.k}\n"
        "if __name__ == '__main__':\n"
        f"    ferryman.Server(Triple(3), workers_per_device=1, api_servers=1,"
        f" admin_port={admin}).run(port={port})\n"
    )
    log = tmp_path / "myapp.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=tmp_path,
            stderr=out,
            start_new_session=True,
        )
    try:

        def answer():
            # Until a worker is ready the API process answers 503: wait for a 200.
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"input": 5})
            except httpx.HTTPError:
                return None
            return r.json() if r.status_code == 200 else None

        assert wait_for(answer, timeout=30) == {"output": 15}, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_config_file_and_flags(serve, tmp_path):
    cfg = tmp_path / "ferryman.toml"
    cfg.write_text('api_path = "/from-file"\ntimeout = 5\nmax_batch_size = 1\n')
    s = serve(app("echo:Echo"), "--config", str(cfg), "--timeout", "7", workers=1)
    opts = s.get("/info").json()["options"]
    assert opts["api_path"] == "/from-file"
    assert opts["timeout"] == 7.0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--workers-per-device", "zero"], "--workers-per-device"),
        (["--devices", "x,y"], "--devices"),
        (["--port", "99999"], "--port"),
        (["--accelerator", "tpu"], "--accelerator"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_flag_is_one_line_and_exit_2(args, needle):
    r = run_serve(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("ferryman")


def test_bad_config_key_names_it(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("workers_per_devic = 2\n")
    r = run_serve("--config", str(cfg))
    assert r.returncode == 2
    assert "workers_per_devic" in r.stderr


def test_port_in_use_is_a_clear_error(serve):
    s = serve(app("echo:Echo"), workers=1, api_servers=1)
    r = run_serve("--port", str(s.port), "--admin-port", str(free_port()))
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{s.port}" in r.stderr


def test_version_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "ferryman", "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    assert out.startswith("ferryman ")
    helptext = subprocess.run(
        [sys.executable, "-m", "ferryman", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    for flag in (
        "--accelerator",
        "--devices",
        "--workers-per-device",
        "--api-servers",
        "--timeout",
        "--api-path",
        "--host",
        "--port",
        "--admin-port",
        "--log-level",
        "--config",
    ):
        assert flag in helptext


def _run_dirs(pids: list[int]) -> list[str]:
    """The supervisor's private run directory, as its children were told it."""
    found = set()
    for pid in pids:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for var in f.read().split(b"\0"):
                if var.startswith(b"FERRYMAN_CHILD="):
                    found.add(json.loads(var.split(b"=", 1)[1])["run_dir"])
    return sorted(found)
