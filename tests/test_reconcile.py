"""The supervisor as a reconciler, through real processes: what it is told only changes what
should run; one step makes what runs match, whatever the children do meanwhile."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys

import httpx
from conftest import FAKE_GPU_ENV, ROOT, alive, app, children_of, free_port, wait_for


def test_a_worker_that_hangs_while_it_drains_is_killed_at_heartbeat_timeout(serve):
    # A timeout and a grace far longer than the test's client timeout: only the heartbeat check
    # can answer the stopped worker's requests in time.
    s = serve(
        app("echo:Echo"),
        "--heartbeat-timeout",
        "3",
        "--timeout",
        "300",
        "--graceful-timeout",
        "300",
        workers=2,
        api_servers=1,
    )
    victim = s.status()["workers"][0]["pid"]

    def post(i: int) -> httpx.Response:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            return c.post("/predict", json={"input": i, "sleep": 1.5})

    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post, i) for i in range(4)]
        # All four are with the workers once the API process counts them (its heartbeat).
        wait_for(lambda: s.status()["api_servers"][0]["requests_in_flight"] == 4)
        os.kill(victim, signal.SIGSTOP)
        assert s.admin_call("POST", "/v1/workers/0/restart").status_code == 202
        answers = [f.result() for f in futures]
    codes = sorted(r.status_code for r in answers)
    assert 503 in codes, [r.text for r in answers]  # the stopped worker held some
    for r in answers:
        if r.status_code == 503:
            assert r.json()["error"]["type"] == "worker_died"
        else:
            assert r.status_code == 200 and r.json()["pid"] != victim
    wait_for(lambda: not alive(victim))
    wait_for(lambda: [w["state"] for w in s.status()["workers"]] == ["ready", "ready"])
    assert victim not in s.pids()


def test_a_reload_that_changes_devices_moves_the_workers(serve, tmp_path):
    cfg = tmp_path / "ferryman.toml"
    model = f'app = "{ROOT / "tests/apps/echo.py"}:Echo"\naccelerator = "cuda"\n'
    cfg.write_text(model + "devices = [0]\n")
    s = serve(None, "--config", str(cfg), workers=None, accelerator=None, env=FAKE_GPU_ENV)
    assert [w["device"] for w in s.status()["workers"]] == ["cuda:0"]
    cfg.write_text(model + "devices = [0, 1]\n")
    r = s.admin_call("POST", "/v1/reload", timeout=120)
    assert r.status_code == 200, r.text
    assert sorted(w["device"] for w in s.status()["workers"]) == ["cuda:0", "cuda:1"]
    seen = {s.post(json={"input": i}).json()["cuda_visible_devices"] for i in range(20)}
    assert seen == {"0", "1"}


def test_no_ready_after_stopping_when_a_stop_cuts_a_reload(serve, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    try:
        s = serve(
            app("slow_setup:SlowSetup"),
            wait=False,
            workers=1,
            api_servers=1,
            env={"NOTIFY_SOCKET": path, "SETUP_SLEEP": "1"},
        )
        messages = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(sock.recv(4096).decode())
        os.kill(s.pid, signal.SIGHUP)  # the new worker needs a second to be ready...
        while not any(m.startswith("RELOADING=1") for m in messages):
            messages.append(sock.recv(4096).decode())
        os.kill(s.pid, signal.SIGTERM)  # ...and the stop comes first
        assert s.proc.wait(60) == 0
        sock.settimeout(0.5)
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    finally:
        sock.close()
    states = [m.split("\n")[0] for m in messages if not m.startswith(("WATCHDOG", "STATUS"))]
    assert states[-1] == "STOPPING=1", states


def test_a_child_too_slow_to_start_is_killed_and_says_why(serve):
    # A second model that starts keeps the server up once the slow one has failed (with no
    # model able to start, ferryman exits 3).
    s = serve(
        [app("slow_setup:SlowSetup"), "echo=" + app("echo:Echo")],
        "--startup-timeout",
        "1",
        "--max-restarts",
        "2",
        wait=False,
        workers=1,
        api_servers=1,
        env={"SETUP_SLEEP": "30"},
    )

    def failed():
        try:
            w = next(w for w in s.status()["workers"] if w["model"] == "slowsetup")
        except (httpx.HTTPError, KeyError, StopIteration):
            return None
        return w if w["state"] == "failed" else None

    w = wait_for(failed, timeout=60)
    assert "startup_timeout" in w["last_error"]
    text = s.admin_call("GET", "/metrics").text
    assert 'reason="startup_timeout"' in text


def test_the_admin_token_stays_in_the_supervisor(tmp_path):
    port, admin = free_port(), free_port()
    script = tmp_path / "tokened.py"
    script.write_text(
        "import ferryman\n"
        "class Echo(ferryman.API):\n"
        "    def predict(self, x):\n"
        "        return x\n"
        "if __name__ == '__main__':\n"
        f"    ferryman.Server(Echo(), api_servers=1, workers_per_device=1, admin_port={admin},"
        f" admin_token='s3cret-token', accelerator='cpu').run(port={port})\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, start_new_session=True,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def status():
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{admin}/v1/status",
                    headers={"authorization": "Bearer s3cret-token"},
                    timeout=5,
                )
            except httpx.HTTPError:
                return None
            st = r.json() if r.status_code == 200 else None
            return st if st and st["supervisor"]["ready"] else None

        st = wait_for(status, timeout=30)
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert b"s3cret-token" not in f.read()
        kids = [row["pid"] for row in st["api_servers"] + st["workers"]]
        assert kids
        for pid in kids:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
            assert b"s3cret-token" not in environ
            spec = next(v for v in environ.split(b"\0") if v.startswith(b"FERRYMAN_CHILD="))
            assert json.loads(spec.split(b"=", 1)[1])["server"]["admin_token"] is None
    finally:
        kids = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for pid in kids:
            wait_for(lambda pid=pid: not alive(pid))
