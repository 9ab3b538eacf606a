"""Supervision: respawn, backoff, hang detection, rolling reload, graceful stop, systemd."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import socket
import subprocess
import sys
import threading

import httpx
from conftest import ROOT, alive, app, free_port, wait_for


class SteadyClient:
    """Sends requests back to back from a few threads until stopped; counts every outcome. Each
    request has a unique input, and an answer counts as right only if it echoes that input (and
    says `model`, when given)."""

    def __init__(
        self, url: str, threads: int = 4, path: str = "/predict", model: str | None = None
    ) -> None:
        self.url = url
        self.path = path
        self.model = model
        self.stop_ev = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        n = 0
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self.stop_ev.is_set():
                n += 1
                try:
                    r = c.post(self.path, json={"input": f"{i}-{n}"})
                    body = r.json()
                    good = r.status_code == 200 and body["input"] == f"{i}-{n}"
                    good = good and (self.model is None or body["model"] == self.model)
                    why = f"{r.status_code} {r.text[:200]}"
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    good, why = False, repr(e)
                with self.lock:
                    if good:
                        self.ok += 1
                    else:
                        self.failures.append(why)

    def __enter__(self) -> SteadyClient:
        for t in self.threads:
            t.start()
        wait_for(lambda: self.ok > 20, timeout=20)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_ev.set()
        for t in self.threads:
            t.join(30)


def test_killed_worker_is_replaced_and_only_its_request_fails(serve):
    s = serve(app("echo:Echo"), api_servers=1, workers=2)
    s.wait_workers(2)
    before = s.pids()
    # One slow request on each worker (least-loaded routing spreads them).
    with cf.ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(s.post, json={"sleep": 3, "input": i}) for i in range(2)]
        wait_for(lambda: _in_flight(s, "api_servers") >= 2)
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        results = [f.result() for f in futs]
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 503], [r.text for r in results]
    dead = next(r for r in results if r.status_code == 503).json()["error"]
    assert dead["type"] == "worker_died"
    assert str(victim) in dead["message"]
    ok = next(r for r in results if r.status_code == 200).json()
    assert ok["pid"] == before[1]
    # Replaced in its slot and serving again.
    wait_for(
        lambda: (
            len(s.pids()) == 2
            and victim not in s.pids()
            and all(w["state"] == "ready" for w in s.status()["workers"])
        )
    )
    st = s.status()["workers"]
    assert st[0]["restarts"] == 1 and "SIGKILL" in st[0]["last_exit"]
    assert {s.post(json={"input": i}).json()["pid"] for i in range(20)} == set(s.pids())


def test_a_crash_in_predict_is_503_and_the_worker_comes_back(serve):
    s = serve(app("echo:Echo"), api_servers=1, workers=1)
    pid = s.pids()[0]
    r = s.post(json={"crash": 1})
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "worker_died"
    assert "exit code 13" in r.json()["error"]["message"]
    wait_for(lambda: s.post(json={"input": 1}).status_code == 200)
    assert s.pids()[0] != pid


def test_killed_api_process_is_replaced(serve):
    s = serve(app("echo:Echo"), api_servers=2, workers=1)
    apis = s.pids("api_servers")
    os.kill(apis[0], signal.SIGKILL)
    wait_for(
        lambda: (
            (p := s.pids("api_servers"))
            and len(p) == 2
            and apis[0] not in p
            and all(a["state"] == "ready" for a in s.status()["api_servers"])
        )
    )
    for i in range(20):
        assert s.post(json={"input": i}).json()["input"] == i
    assert s.status()["api_servers"][0]["restarts"] == 1


def test_setup_failure_backs_off_then_fails_the_slot_while_others_serve(serve):
    s = serve(
        app("setup_fails:SetupFails"),
        "--max-restarts",
        "3",
        "--restart-window",
        "60",
        "--failed-retry",
        "600",
        workers=2,
        api_servers=1,
        env={"FAIL_SLOTS": "1"},
    )
    wait_for(lambda: s.status()["workers"][1]["state"] == "failed", timeout=30)
    w1 = s.status()["workers"][1]
    assert w1["restarts"] == 3
    assert "cannot load weights on worker 1" in w1["last_error"]
    assert w1["next_start_in_s"] > 0
    assert s.status()["workers"][0]["state"] == "ready"
    assert s.post(json={}).json()["worker"] == 0
    metrics = s.admin_call("GET", "/metrics").text
    assert 'ferryman_workers{model="setupfails",state="failed"} 1.0' in metrics
    assert 'ferryman_worker_up{device="cpu",model="setupfails",worker="1"} 0.0' in metrics
    # Three failures to start, each a restart counted: the crash series of the slot's model.
    assert (
        'ferryman_process_restarts_total{model="setupfails",reason="crash",role="worker"} 3.0'
        in metrics
    )


def test_hung_predict_is_killed_after_heartbeat_timeout_and_answered(serve):
    s = serve(app("echo:Echo"), "--heartbeat-timeout", "2", api_servers=1, workers=1)
    pid = s.pids()[0]
    r = s.post(json={"sleep": 1000})
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "worker_died"
    wait_for(lambda: s.post(json={"input": 1}).status_code == 200, timeout=20)
    assert s.pids()[0] != pid
    assert 'reason="hang"' in s.admin_call("GET", "/metrics").text


def test_sighup_under_steady_load_fails_nothing_and_replaces_every_pid(serve):
    s = serve(app("echo:Echo"), api_servers=2, workers=2)
    old = set(s.pids()) | set(s.pids("api_servers"))
    with SteadyClient(s.url) as client:
        os.kill(s.pid, signal.SIGHUP)
        wait_for(lambda: _all_replaced(s, old), timeout=60)
        ok_at_swap = client.ok
        wait_for(lambda: client.ok > ok_at_swap + 20)
    assert client.failures == []
    assert client.ok > 40
    assert "reload done" in s.log()


def _all_replaced(s, old: set[int]) -> bool:
    st = s.status()
    rows = st["api_servers"] + st["workers"]
    pids = {r["pid"] for r in rows}
    return (
        st["supervisor"]["operation"] is None
        and not (pids & old)
        and len(pids) == 4
        and all(r["state"] == "ready" and not r.get("retiring") for r in rows)
    )


def test_sighup_applies_a_changed_worker_count(tmp_path):
    cfg = tmp_path / "ferryman.toml"
    cfg.write_text("workers_per_device = 1\napi_servers = 1\n")
    # Started by hand: the fixture's own flags would win over the file.
    port, admin = free_port(), free_port()
    log = tmp_path / "reload.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ferryman",
                "serve",
                app("echo:Echo"),
                "--config",
                str(cfg),
                "--port",
                str(port),
                "--admin-port",
                str(admin),
                "--accelerator",
                "cpu",
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        st = lambda: httpx.get(f"http://127.0.0.1:{admin}/v1/status", timeout=5).json()  # noqa: E731
        wait_for(lambda: _try(lambda: st()["supervisor"]["ready"]))
        assert len(st()["workers"]) == 1
        cfg.write_text("workers_per_device = 3\napi_servers = 1\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: (
                len(st()["workers"]) == 3 and all(w["state"] == "ready" for w in st()["workers"])
            ),
            timeout=60,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def _in_flight(s, role: str) -> int:
    return sum(row["requests_in_flight"] for row in s.status()[role])


def _try(fn):
    try:
        return fn()
    except (httpx.HTTPError, KeyError):
        return None


def test_sigterm_lets_requests_in_flight_finish(serve):
    s = serve(app("echo:Echo"), api_servers=2, workers=2)
    children = s.child_pids()
    with cf.ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(s.post, json={"sleep": 2, "input": i}) for i in range(4)]
        wait_for(lambda: _in_flight(s, "api_servers") >= 4)
        os.kill(s.pid, signal.SIGTERM)
        results = [f.result() for f in futs]
    assert [r.status_code for r in results] == [200] * 4
    assert sorted(r.json()["input"] for r in results) == [0, 1, 2, 3]
    assert s.proc.wait(30) == 0
    wait_for(lambda: not any(alive(p) for p in children), timeout=15)


def test_stop_escalates_to_sigkill_after_graceful_timeout(serve):
    """A request still running at graceful_timeout gets a 503, not a silent close, and a worker
    stuck in predict (sleep 1000) is killed: the stop completes."""
    s = serve(app("echo:Echo"), "--graceful-timeout", "1", api_servers=1, workers=1)
    children = s.child_pids()
    with cf.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(lambda: s.post(json={"sleep": 1000}))
        wait_for(lambda: _in_flight(s, "api_servers") >= 1)
        os.kill(s.pid, signal.SIGTERM)
        assert s.proc.wait(30) == 0
        r = fut.result()
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "stopping"
    wait_for(lambda: not any(alive(p) for p in children), timeout=15)


def test_sigttin_sigttou_scale_workers_never_below_one(serve):
    s = serve(app("echo:Echo"), api_servers=1, workers=1)
    os.kill(s.pid, signal.SIGTTIN)
    wait_for(lambda: [w["state"] for w in s.status()["workers"]] == ["ready", "ready"])
    os.kill(s.pid, signal.SIGTTOU)
    wait_for(lambda: len(s.status()["workers"]) == 1)
    # One more SIGTTOU is refused: the SIGTTIN after it makes two (it would make one had the
    # last worker gone). Signals are handled in the order they arrive.
    os.kill(s.pid, signal.SIGTTOU)
    wait_for(lambda: s.status()["supervisor"]["operation"] is None)
    os.kill(s.pid, signal.SIGTTIN)
    wait_for(lambda: [w["state"] for w in s.status()["workers"]] == ["ready", "ready"])
    assert s.post(json={"input": 3}).json()["input"] == 3


def test_pid_file_written_and_removed(serve, tmp_path):
    pid_file = tmp_path / "ferryman.pid"
    s = serve(app("echo:Echo"), "--pid-file", str(pid_file), api_servers=1, workers=1)
    assert pid_file.read_text().strip() == str(s.pid)
    assert s.stop() == 0
    assert not pid_file.exists()


def test_sd_notify_messages_in_order(serve, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    messages: list[str] = []

    def recv_until(pred) -> None:
        while True:
            msg = sock.recv(4096).decode()
            messages.append(msg)
            if pred(msg):
                return

    try:
        s = serve(
            app("echo:Echo"),
            api_servers=1,
            workers=1,
            wait=False,
            env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"},
        )
        recv_until(lambda m: m.startswith("READY=1"))
        recv_until(lambda m: m == "WATCHDOG=1")
        s.wait_ready()
        os.kill(s.pid, signal.SIGHUP)
        recv_until(lambda m: m.startswith("RELOADING=1"))
        recv_until(lambda m: m.startswith("READY=1"))
        os.kill(s.pid, signal.SIGTERM)
        recv_until(lambda m: m == "STOPPING=1")
        assert s.proc.wait(30) == 0
    finally:
        sock.close()
    states = [m.split("\n")[0] for m in messages if not m.startswith(("WATCHDOG", "STATUS"))]
    assert states == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    reloading = next(m for m in messages if m.startswith("RELOADING=1"))
    assert reloading.split("\n")[1].startswith("MONOTONIC_USEC=")
    ready = next(m for m in messages if m.startswith("READY=1"))
    assert "STATUS=1/1 workers ready" in ready


def test_socket_activation_uses_the_passed_socket(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    admin = free_port()
    unused = free_port()  # what --port says: must be ignored in favour of the passed socket
    cmd = (
        f"exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec {sys.executable} -m ferryman "
        f"serve {app('echo:Echo')} --port {unused} --admin-port {admin} --api-servers 1 "
        "--workers-per-device 1 --accelerator cpu"
    )
    proc = subprocess.Popen(
        ["bash", "-c", cmd],
        stdin=listener.fileno(),
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def answer():
            r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"input": 5}, timeout=5)
            return r.json()["input"] if r.status_code == 200 else None

        assert wait_for(lambda: _try(answer), timeout=30) == 5
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", unused)) != 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    listener.close()


def test_ten_sighups_leak_no_fds_or_threads(serve):
    s = serve(app("echo:Echo"), api_servers=1, workers=1)

    def counts() -> tuple[int, int]:
        return (len(os.listdir(f"/proc/{s.pid}/fd")), len(os.listdir(f"/proc/{s.pid}/task")))

    def reload_once() -> None:
        r = s.admin_call("POST", "/v1/reload", timeout=60)
        assert r.status_code == 200, r.text

    reload_once()  # the first reload may create lazily made things (thread pools)
    fds, threads = counts()
    for i in range(10):
        os.kill(s.pid, signal.SIGHUP)
        want = 2 + i
        wait_for(lambda: s.status()["supervisor"]["reloads"] >= want, timeout=60)  # noqa: B023
    wait_for(lambda: s.status()["supervisor"]["operation"] is None)
    # An exited child's stderr pipe closes when its EOF is read, a moment after the reap:
    # poll until the counts settle; a leak never comes back down.
    wait_for(lambda: counts()[0] <= fds and counts()[1] <= threads, timeout=10)
    assert s.post(json={"input": 1}).status_code == 200
