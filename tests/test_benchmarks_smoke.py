"""The benchmark suite's own pieces, in-process: no wrk, no peer, no GPU, no network.

`python -m benchmarks --quick` exercises the suite with LitServe, bare and ferryman (CI runs it);
these keep its parsers, /proc walk, report formatting, the peers' commands and generated
configuration, and the GPU script's plumbing honest in the ordinary test run, in about a second.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `pytest` (unlike `python -m pytest`) does not add the cwd
    sys.path.insert(0, str(ROOT))

from benchmarks import __main__ as cli  # noqa: E402
from benchmarks import (  # noqa: E402
    gpu,
    gpu_wheels,
    httpclient,
    loadclient,
    models,
    proctree,
    report,
    tools,
    wrk,
)
from benchmarks.peers import launch, torchserve  # noqa: E402
from benchmarks.peers.launch import metric_sum  # noqa: E402
from benchmarks.suite import GROUPS, median_dict, percentile, runs_in  # noqa: E402
from benchmarks.zmq_floor import measure as zmq_floor  # noqa: E402

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:40001/predict
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms    1.02ms  41.50ms   91.00%
    Req/Sec    14.01k     1.10k   15.90k    70.00%
  Latency Distribution
     50%    2.10ms
     75%    2.60ms
     90%    3.20ms
     99%    6.64ms
  140123 requests in 10.00s, 19.11MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:  14012.30
Transfer/sec:      1.91MB
"""
BENCH_JSON = (
    'BENCH_JSON {"requests": 140123, "duration_us": 10000500, "bytes": 20038000, '
    '"connect": 0, "read": 2, "write": 0, "status": 3, "timeout": 1, "p50_us": 2100, '
    '"p90_us": 3200, "p99_us": 6640, "mean_us": 2310.5, "max_us": 41500}'
)


def test_wrk_parser_prefers_the_lua_summary() -> None:
    r = wrk.parse(WRK_OUTPUT + BENCH_JSON + "\n")
    assert r.requests == 140123
    assert r.rps == pytest.approx(140123 / 10.0005)
    assert (r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms) == (2.1, 3.2, 6.64, 41.5)
    assert (r.errors, r.non2xx, r.timeouts) == (6, 3, 1)


def test_wrk_parser_falls_back_to_the_text_report() -> None:
    r = wrk.parse(WRK_OUTPUT)
    assert r.requests == 140123
    assert r.rps == pytest.approx(14012.30)
    assert r.p50_ms == pytest.approx(2.10)
    assert r.p99_ms == pytest.approx(6.64)
    assert r.mean_ms == pytest.approx(2.31)
    assert r.max_ms == pytest.approx(41.5)
    assert (r.errors, r.non2xx, r.timeouts) == (6, 3, 1)
    with pytest.raises(ValueError):
        wrk.parse("wrk: connection refused\n")


def test_lua_script_is_a_post_with_a_json_summary(tmp_path: Path) -> None:
    text = wrk.write_script(tmp_path).read_text()
    assert 'wrk.method = "POST"' in text
    assert '{"input": 21}' in text
    assert 'io.write("BENCH_JSON {"' in text


def _fake_proc(root: Path, pid: int, ppid: int, comm: str, rss_kb: int, pss_kb: int) -> None:
    d = root / str(pid)
    d.mkdir()
    (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0\n")
    (d / "status").write_text(f"Name:\t{comm}\nVmHWM:\t{rss_kb + 5} kB\nVmRSS:\t{rss_kb} kB\n")
    (d / "smaps_rollup").write_text(f"Rss:\t{rss_kb} kB\nPss:\t{pss_kb} kB\n")


def test_proc_tree_walk_and_memory_on_a_canned_proc(tmp_path: Path) -> None:
    # 10 -> 11 -> 13, 10 -> 12; 20 is someone else's; comm with ") (" must not confuse ppid.
    _fake_proc(tmp_path, 1, 0, "init", 1000, 1000)
    _fake_proc(tmp_path, 10, 1, "python", 30000, 20000)
    _fake_proc(tmp_path, 11, 10, "odd) (name", 50000, 25000)
    _fake_proc(tmp_path, 12, 10, "uvicorn", 40000, 20000)
    _fake_proc(tmp_path, 13, 11, "worker", 10240, 5120)
    _fake_proc(tmp_path, 20, 1, "other", 99999, 99999)
    (tmp_path / "self").mkdir()
    assert proctree.parse_stat((tmp_path / "11" / "stat").read_text()) == ("odd) (name", "S", 10)
    assert sorted(proctree.tree(10, str(tmp_path))) == [10, 11, 12, 13]
    assert proctree.tree(99, str(tmp_path)) == []
    m = proctree.memory(10, str(tmp_path))
    assert m.processes == 4
    assert m.rss_mb == pytest.approx((30000 + 50000 + 40000 + 10240) / 1024)
    assert m.pss_mb == pytest.approx((20000 + 25000 + 20000 + 5120) / 1024)
    assert m.root_rss_mb == pytest.approx(30000 / 1024)


def test_proc_tree_walk_finds_real_grandchildren() -> None:
    p = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"], stdout=subprocess.DEVNULL)
    try:
        family: list[int] = []
        for _ in range(100):
            family = proctree.tree(p.pid)
            if len(family) == 3:
                break
            threading.Event().wait(0.01)
        assert family[0] == p.pid and len(family) == 3
        assert proctree.memory(p.pid).rss_mb > 0
    finally:
        proctree.kill_all(reversed(proctree.tree(p.pid)))
        p.wait(timeout=5)
    assert proctree.wait_gone(family, timeout=5)


def test_zmq_floor_times_each_round_trip_to_another_process() -> None:
    trips = zmq_floor(50)
    assert len(trips) == 50 and all(t > 0 for t in trips)


def test_metric_sum_adds_every_label_set() -> None:
    text = (
        "# TYPE ferryman_batch_size histogram\n"
        'ferryman_batch_size_bucket{le="8.0"} 9.0\n'
        "ferryman_batch_size_sum 40.0\n"
        "ferryman_batch_size_count 6.0\n"
        'ferryman_batch_size_count{worker="1"} 4.0 1700000000\n'
        # The rewrite labels the histogram with the model: still summed over every label set.
        'ferryman_batch_size_count{model="Batched",worker="2"} 5.0\n'
        'ferryman_batch_size_sum{model="Batched",worker="2"} 8.0\n'
        "ferryman_batch_size_counted 99\n"
    )
    assert metric_sum(text, "ferryman_batch_size_count") == 15.0
    assert metric_sum(text, "ferryman_batch_size_sum") == 48.0


def test_medians_treat_never_as_infinity() -> None:
    runs: list[dict[str, float | None]] = [
        {"rps": 3.0, "again": 0.5},
        {"rps": 1.0, "again": None},
        {"rps": 2.0, "again": None},
    ]
    m = median_dict(runs)
    assert m["rps"] == 2.0 and m["again"] is None and m["rounds"] == 3
    assert median_dict([{"again": 0.5}, {"again": 0.7}, {"again": None}])["again"] == 0.7
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0


def _medians() -> report.Medians:
    def w(rps: float, p50: float, p99: float, **extra: float) -> dict[str, float]:
        return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": 0, **extra}

    return {
        "a1": {
            "litserve": w(900, 1.0, 2.0),
            "bare": w(5000, 0.2, 0.5),
            "ferryman": w(3000, 0.3, 0.9),
        },
        "a32": {
            "litserve": w(2000, 15, 27),
            "bare": w(20000, 1.5, 4),
            "ferryman": w(11000, 2.8, 8),
        },
        "b": {
            "litserve": w(800, 70, 200, mean_batch=5.0),
            "ferryman": w(2900, 20, 50, mean_batch=7.9),
        },
        "c": {
            "litserve": w(14, 400, 900, items_per_s=3584, ttfi_p50_ms=3.5),
            "ferryman": w(90, 80, 180, items_per_s=23040, ttfi_p50_ms=1.5),
        },
        "d": {
            "litserve": {
                "processes": 7, "rss_idle_mb": 280, "rss_load_mb": 300, "pss_idle_mb": 150,
                "pss_load_mb": 160, "root_rss_idle_mb": 49, "root_rss_load_mb": 49,
            },
            "ferryman": {
                "processes": 5, "rss_idle_mb": 180, "rss_load_mb": 182, "pss_idle_mb": 110,
                "pss_load_mb": 112, "root_rss_idle_mb": 38, "root_rss_load_mb": 38.5,
            },
        },
        "e": {"litserve": {"startup_s": 2.5}, "ferryman": {"startup_s": 0.8}},
        "f": {
            "litserve": {"ok": 3500, "failed": 1, "hung": 1, "serves_again_s": 1.7,
                         "window_s": 6},
            "ferryman": {"ok": 13000, "failed": 8, "hung": 0, "failed_before_kill": 0,
                         "last_failure_after_kill_s": 0.03, "respawn_s": 0.9,
                         "serves_again_s": None, "window_s": 6},
        },
    }  # fmt: skip


def test_report_tables_ratios_and_targets() -> None:
    m = _medians()
    table = report.wrk_table(m)
    lines = table.splitlines()
    assert lines[0].startswith("| scenario | peer | req/s | p50 ms | p99 ms")
    row = next(x for x in lines if x.startswith("| (a) trivial, 32 conn | ferryman"))
    assert "| 11,000 |" in row and "| 5.50x |" in row and "| 0.55x |" in row
    assert "| 0.30x |" in row  # p99 8 / 27
    assert "mean batch 7.90" in table
    assert "23,040 items/s" in table
    other = report.other_tables(m)
    assert "not within 6 s" in other and "| LitServe | 7 | 280 |" in other
    verdicts = {t["target"]: t["met"] for t in report.targets(m)}
    assert verdicts["(a) 32 conn: req/s ≥ 5x LitServe"] is True
    assert verdicts["(a) 32 conn: p99 ≤ 1/3 of LitServe's"] is True
    assert verdicts["(a) 1 conn: p50 ≤ 0.4 ms"] is True
    assert verdicts["(c) streaming: items/s ≥ 3x LitServe"] is True
    assert verdicts["(d) supervisor RSS ≤ 60 MB"] is True
    assert verdicts["(f) its slot serves again within 1 s (+ setup, ~0 here)"] is None
    md = report.markdown(m, report.targets(m), report.machine(), {"wrk": "4.1"}, "# t", ["x"])
    assert md.startswith("# t\n") and "- x" in md and "| target |" in md


def test_report_handles_missing_peers() -> None:
    only = {"a32": {"ferryman": {"rps": 100.0, "p50_ms": 1.0, "p99_ms": 2.0}}}
    assert "| - | - | - |" in report.wrk_table(only)
    verdicts = {t["target"]: t["met"] for t in report.targets(only)}
    assert verdicts["(a) 32 conn: req/s ≥ 5x LitServe"] is None


def test_http_client_reads_a_chunked_stream() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf or not buf.endswith(httpclient.BODY):
                buf += conn.recv(4096)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
                b'5\r\n{"a":\r\n4\r\n1}\n{\r\n6\r\n"a":2}\r\n2\r\n\n\n\r\n0\r\n\r\n'
            )

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        conn = httpclient.Connection(port, timeout=5)
        resp = conn.post()
        conn.close()
    finally:
        t.join(timeout=5)
        srv.close()
    assert resp.status == 200
    assert resp.body == b'{"a":1}\n{"a":2}\n\n'
    assert 0 < resp.first_item_s <= resp.total_s


# -- the peers: models, commands, generated configuration ---------------------------------------


def test_batch_models_and_batching_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(models.BATCH_MODELS) == {"batched", "batchcase"}
    assert models.one("trivial", 21) == 42
    assert models.one("batchcase", 21) == 42  # the batch model, called with a batch of one
    monkeypatch.setenv(models.MAX_BATCH_ENV, "16")
    monkeypatch.setenv(models.BATCH_TIMEOUT_ENV, "0.05")
    assert models.batching_from_env() == (16, 0.05)
    monkeypatch.delenv(models.MAX_BATCH_ENV)
    assert models.batching_from_env()[0] == 1

    c = launch.Counts()
    assert launch.batching_for("batched", c, {}) == launch.Batching(8, 0.005)
    assert launch.batching_for("batchcase", c, {}) == launch.Batching(16, 0.05)
    assert launch.batching_for("batchcase", c, {"batching": False}) == launch.OFF
    assert launch.batching_for("trivial", c, {}) == launch.OFF
    assert not launch.OFF.on


def test_every_peer_is_labelled_described_and_startable() -> None:
    c = launch.Counts()
    assert set(launch.PEERS) == set(launch.LABELS) == set(launch.COMMANDS)
    assert set(launch.QUICK_PEERS) == {"litserve", "bare", "ferryman"}
    assert "bare" not in launch.BATCHING_PEERS
    for peer in launch.PEERS:
        assert launch.layout(peer, c)
    # Where a peer cannot run 2 front-end processes, the layout says so.
    assert launch.layout("rayserve", c).startswith("1 HTTP proxy")
    assert launch.layout("torchserve", c).startswith("1 JVM front-end")
    assert launch.layout("ferryman", c) == "2 API processes + 2 workers"
    for peer, env in tools.ENVS.items():
        assert peer in launch.VENV_PEERS
        assert all("==" in r for r in env.requirements if r not in ("pyyaml", "numpy"))
    assert "torch==2.13.0" in tools.ENVS["torchserve"].requirements  # the CPU wheel on disk


def _request(tmp_path: Path, model: str, batching: launch.Batching, **opts: Any) -> launch.Request:
    return launch.Request(model, 4000, 4001, tmp_path, launch.Counts(), batching, opts)


def test_ferryman_and_litserve_commands_follow_the_batching(tmp_path: Path) -> None:
    on = launch.Batching(16, 0.05)
    cmd = launch.ferryman_command(_request(tmp_path, "batchcase", on)).cmd
    assert "benchmarks/peers/ferryman_app.py:Batched" in cmd
    assert cmd[cmd.index("--max-batch-size") + 1] == "16"
    assert cmd[cmd.index("--batch-timeout") + 1] == "0.05"
    assert cmd[cmd.index("--api-servers") + 1] == cmd[cmd.index("--workers-per-device") + 1] == "2"
    off = launch.ferryman_command(_request(tmp_path, "batchcase", launch.OFF)).cmd
    assert "benchmarks/peers/ferryman_app.py:Single" in off and "--max-batch-size" not in off
    stream = launch.ferryman_command(_request(tmp_path, "streamed", launch.OFF)).cmd
    assert "--stream" in stream and "benchmarks/peers/ferryman_app.py:Streamed" in stream

    lit = launch.litserve_command(_request(tmp_path, "batchcase", launch.OFF, restart_workers=1))
    assert lit.cmd[lit.cmd.index("--max-batch-size") + 1] == "1"
    assert "--restart-workers" in lit.cmd and lit.path == "/predict"


def test_bentoml_and_ray_serve_commands(tmp_path: Path) -> None:
    b = launch.bentoml_command(_request(tmp_path, "trivial", launch.OFF))
    try:
        assert b.cmd[1:3] == ["serve", "benchmarks.peers.bentoml_app:Front"]
        assert b.env["BENTOML_HOME"].startswith(str(tmp_path))
        assert b.env["BENCH_API_SERVERS"] == b.env["BENCH_WORKERS"] == "2"
        assert b.cleanup == [Path(b.env["TMPDIR"])] and len(b.env["TMPDIR"]) < 40
    finally:
        for d in b.cleanup:
            d.rmdir()

    r = launch.rayserve_command(_request(tmp_path, "batchcase", launch.Batching(16, 0.05)))
    try:
        tmp = Path(r.cmd[r.cmd.index("--temp-dir") + 1])
        assert tmp.is_dir() and r.cleanup == [tmp]
        # Ray's socket paths live under it and must stay under 108 bytes.
        assert len(str(tmp)) < 40
        assert r.cmd[r.cmd.index("--max-batch-size") + 1] == "16"
        assert r.env["RAY_worker_niceness"] == "0"
    finally:
        for d in r.cleanup:
            d.rmdir()


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_torchserve_files_from_the_suite_settings(tmp_path: Path) -> None:
    q = _request(tmp_path, "batchcase", launch.Batching(16, 0.05))
    launched = launch.torchserve_command(q)
    try:
        assert launched.path == torchserve.PREDICT_PATH == "/predictions/bench"
        assert launched.cwd == tmp_path
        base = tmp_path / "torchserve"
        props = _properties((base / "config.properties").read_text())
        assert props["inference_address"] == "http://127.0.0.1:4000"
        assert props["management_address"] == "http://127.0.0.1:4001"
        assert props["disable_token_authorization"] == "true"
        assert props["load_models"] == "bench" and props["number_of_netty_threads"] == "2"
        assert len({props["grpc_inference_port"], props["grpc_management_port"]}) == 2
        bench = json.loads(props["models"])["bench"]["1.0"]
        assert (bench["batchSize"], bench["maxBatchDelay"]) == (16, 50)
        assert bench["minWorkers"] == bench["maxWorkers"] == 2
        store = Path(props["model_store"])
        manifest = json.loads((store / "bench" / "MAR-INF" / "MANIFEST.json").read_text())
        assert manifest["model"]["handler"] == "torchserve_handler.py"
        assert (store / "bench" / "torchserve_handler.py").is_file()
        log4j = ET.parse(base / "log4j2.xml").getroot()
        levels = {e.get("name"): e.get("level") for e in log4j.iter("Logger")}
        assert levels["ACCESS_LOG"] == "off" and levels["MODEL_LOG"] == "info"
        env = launched.env
        assert env["TMPDIR"] == env["TEMP"] and len(env["TMPDIR"]) < 40
        assert "--foreground" in launched.cmd and "--disable-token-auth" in launched.cmd
    finally:
        for d in launched.cleanup:
            d.rmdir()
    off = torchserve.model_settings(2, launch.OFF.max_size, 0)["bench"]["1.0"]
    assert (off["batchSize"], off["maxBatchDelay"]) == (1, 0)


class _Context:
    request_ids = {0: "r0"}


def test_torchserve_handler_answers_a_batch_and_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TorchServe is not installed here: stand in for the one function the handler imports.
    sent: list[list[str]] = []
    utils = types.ModuleType("ts.handler_utils.utils")
    utils.send_intermediate_predict_response = (  # type: ignore[attr-defined]
        lambda ret, ids, msg, code, ctx: sent.append(ret)
    )
    for name in ("ts", "ts.handler_utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "ts.handler_utils.utils", utils)
    monkeypatch.delitem(sys.modules, "benchmarks.peers.torchserve_handler", raising=False)
    monkeypatch.setenv(models.STATS_ENV, str(tmp_path))
    from benchmarks.peers import torchserve_handler

    monkeypatch.setenv(models.MODEL_ENV, "trivial")
    h = torchserve_handler.BenchHandler()
    h.initialize(_Context())
    batch: list[dict[str, Any]] = [
        {"body": {"input": 1}},
        {"body": bytearray(b'{"input": 2}')},
        {"data": {"input": 3}},
    ]
    assert h.handle(batch, _Context()) == [{"output": 2}, {"output": 4}, {"output": 6}]

    monkeypatch.setenv(models.MODEL_ENV, "streamed")
    h.initialize(_Context())
    last = h.handle([{"body": {"input": 0}}], _Context())
    assert len(sent) == models.STREAM_ITEMS - 1
    assert json.loads(sent[0][0]) == {"output": 0}
    assert json.loads(last[0]) == {"output": models.STREAM_ITEMS - 1}
    assert (tmp_path / f"setup-{h.rec.pid}").exists()


def test_the_batching_case_runs_only_where_batching_exists() -> None:
    assert "batchcase" in GROUPS
    assert not runs_in("batchcase", "bare") and runs_in("trivial", "bare")
    assert all(runs_in("batchcase", p) for p in launch.BATCHING_PEERS)
    assert cli._groups("g,a") == ("trivial", "batchcase")
    assert cli._peers(None, quick=True) == launch.QUICK_PEERS
    assert cli._peers(None, quick=False) == launch.PEERS
    assert cli._peers("ferryman,torchserve", quick=True) == ("torchserve", "ferryman")
    with pytest.raises(SystemExit):
        cli._peers("ferryman,triton", quick=False)


def test_batching_case_table_and_targets() -> None:
    def w(rps: float, p50: float, p99: float, **extra: float) -> dict[str, float]:
        return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": 0, **extra}

    m: report.Medians = {
        "g1on": {"ferryman": w(250, 4.0, 6.0), "torchserve": w(18, 55.0, 60.0)},
        "g1off": {"ferryman": w(280, 3.5, 5.0), "torchserve": w(200, 4.5, 6.0)},
        "g64on": {"ferryman": w(5000, 12, 20, mean_batch=15.9), "torchserve": w(2700, 25, 40)},
        "g64off": {"ferryman": w(600, 100, 150), "torchserve": w(300, 200, 250)},
    }
    assert report.case_ratios(m, "ferryman") == (pytest.approx(4 / 3.5), pytest.approx(5000 / 600))
    table = report.batchcase_table(m)
    fm = next(x for x in table.splitlines() if x.startswith("| ferryman"))
    assert "| 4.00 / 3.50 |" in fm and "| 1.14x yes |" in fm and "| 8.33x yes |" in fm
    assert "| 15.90 |" in fm
    ts = next(x for x in table.splitlines() if x.startswith("| TorchServe"))
    assert "12.22x **no**" in ts and "9.00x yes" in ts
    verdicts = {t["target"]: t["met"] for t in report.targets(m)}
    assert verdicts["(g) batching: a lone client's p50, on ≤ 1.5x off"] is True
    assert verdicts["(g) batching: 64 conn req/s, on ≥ 3x off"] is True
    assert report.batchcase_table({}) == ""
    layouts = {p: launch.layout(p, launch.Counts()) for p in launch.PEERS}
    md = report.markdown(m, report.targets(m), report.machine(), {}, "# t", [], layouts)
    assert "| Ray Serve | 1 HTTP proxy" in md and "(g) batching case: 3 ms a call" in md


def _serve_200s(stop: threading.Event) -> int:
    """A tiny keep-alive HTTP server on a thread: 200 to every request, for the load client."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)

    def handle(conn: socket.socket) -> None:
        with conn:
            buf = b""
            while not stop.is_set():
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf and buf.endswith(httpclient.BODY):
                    buf = b""
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    def accept() -> None:
        with srv:
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except OSError:
                    continue
                conn.settimeout(1.0)
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return int(srv.getsockname()[1])


def test_load_client_reports_latencies_and_merges() -> None:
    stop = threading.Event()
    port = _serve_200s(stop)
    try:
        out = asyncio.run(loadclient.run(port, 2, 0.3, 2.0, "/predictions/bench", raw=True))
    finally:
        stop.set()
    assert out["ok"] > 0 and out["failed"] == 0 and len(out["latencies_ms"]) == out["ok"]
    assert out["rps"] > 0 and out["p50_ms"] <= out["p99_ms"]
    merged = gpu.merge_loads(
        [
            {"ok": 2, "duration_s": 2.0, "latencies_ms": [1.0, 3.0], "failed": 1},
            {"ok": 2, "duration_s": 1.0, "latencies_ms": [2.0, 4.0], "hung": 1},
        ]
    )
    assert merged["rps"] == 2.0 and merged["p50_ms"] == 3.0 and merged["p99_ms"] == 4.0
    assert (merged["failed"], merged["hung"]) == (1, 1)
    assert loadclient.percentile_ms([], 50) is None
    stats = loadclient.Stats()
    for _ in range(2001):
        stats.fail("status 503")
    assert len(stats.failures) == 2000 and stats.last_failure is not None
    assert stats.last_failure >= stats.failures[-1][0]  # the last one, kept past the cap


# -- the GPU script -----------------------------------------------------------------------------


def test_gpu_commands_env_and_wheels(tmp_path: Path) -> None:
    dry, real = gpu.GpuConfig.make(True), gpu.GpuConfig.make(False)
    assert (dry.accelerator, dry.shape.dtype, real.accelerator) == ("cpu", "float32", "cuda")
    assert (real.shape.dim, real.shape.layers, real.shape.dtype) == (2048, 8, "float16")
    py = Path("/venv/bin/python")
    fm = gpu.command(gpu.Case("ferryman", 2, True), real, py, 9000, 9001)
    assert fm[:5] == [
        str(py),
        "-m",
        "ferryman",
        "serve",
        "benchmarks.peers.gpu_ferryman:BatchedMLP",
    ]
    assert fm[fm.index("--devices") + 1] == "1" and fm[fm.index("--max-batch-size") + 1] == "16"
    assert fm[fm.index("--workers-per-device") + 1] == "2"
    assert "--devices" not in gpu.command(gpu.Case("ferryman", 1, False), dry, py, 1, 2)
    ls = gpu.command(gpu.Case("litserve", 1, False), real, py, 9000, 9001)
    assert "benchmarks.peers.gpu_litserve" in ls and "--max-batch-size" not in ls
    assert "--restart-workers" in ls
    cases = gpu.cases(real)
    assert len(cases) == 8 and cases[0] == gpu.Case("litserve", 1, True)

    install = gpu.install_commands(["pip"], tmp_path)
    assert all("--no-index" in c and str(tmp_path) in c for c in install)
    assert tools.LITSERVE in install[0] and "--force-reinstall" in install[1]
    env = gpu.peer_env(real, tmp_path / "stats", tmp_path)
    assert env["PYTHONPATH"] == str(tmp_path) and env["BENCH_GPU_DIM"] == "2048"

    dl = gpu_wheels.download_command(tmp_path / "ferryman-0.1.0-py3-none-any.whl", tmp_path, "3.12")
    assert dl[dl.index("--python-version") + 1] == "3.12" and "cp312" in dl
    assert "--only-binary=:all:" in dl and "manylinux2014_x86_64" in dl
    assert dl[-2:] == [str(tmp_path / "ferryman-0.1.0-py3-none-any.whl"), tools.LITSERVE]
    for name in ("torch-2.5.0-cp312-cp312-linux_x86_64.whl", "uvicorn-0.30.0-py3-none-any.whl"):
        (tmp_path / name).touch()
    assert gpu_wheels.forbidden(tmp_path) == ["torch-2.5.0-cp312-cp312-linux_x86_64.whl"]
    with pytest.raises(SystemExit):
        gpu_wheels.main([str(tmp_path), "--python", "3.x"])


def test_gpu_report_and_nvidia_smi_parser() -> None:
    assert gpu.parse_compute_apps("1234, 812\n5678, 790\nNo running processes found\n") == {
        1234: 812.0,
        5678: 790.0,
    }
    cfg = gpu.GpuConfig.make(False)

    def case(rps: float, batch: float | None, mem: list[float]) -> dict[str, Any]:
        return {
            "c1": {"rps": rps / 10, "p50_ms": 2.0, "p99_ms": 3.0},
            "c64": {"rps": rps, "p50_ms": 20.0, "p99_ms": 30.0},
            "mean_batch": batch,
            "startup_s": 4.0,
            "memory": {"torch_max_allocated_mb": mem, "nvidia_smi": "total only",
                       "nvidia_smi_total_mb": 1500.0, "nvidia_smi_mb": []},
            "kill": {"respawn_s": 3.1, "serves_again_s": None, "ok": 10, "failed": 2,
                     "hung": 0, "window_s": 60.0},
        }  # fmt: skip

    results = {
        gpu.Case("ferryman", 1, True).key: case(4000, 12.0, [70.0]),
        gpu.Case("litserve", 1, True).key: case(2000, 10.0, [70.0]),
        gpu.Case("ferryman", 2, True).key: case(3000, 11.0, [70.0, 71.0]),
    }
    md = gpu.markdown(results, cfg, ["# gpu"])
    assert md.startswith("# gpu\n")
    assert "| ferryman | 1 | on | 400 | 2.00 | 3.00 | 4,000 |" in md
    assert "| 1 | on | 2.00x | 1.00x |" in md  # ferryman ÷ LitServe
    assert "| ferryman | on | 0.75x |" in md  # 2 workers ÷ 1
    assert "1,500 (all processes)" in md and "not within 60 s" in md
    m = gpu.median_case([case(1000, 8.0, []), case(3000, 9.0, []), case(2000, None, [])])
    assert m["c64"]["rps"] == 2000 and m["mean_batch"] == 8.5
