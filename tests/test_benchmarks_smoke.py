"""The benchmark suite's own pieces, in-process: no wrk, no LitServe, no network.

`python -m benchmarks --quick` exercises the whole suite (CI runs it); these keep its parsers,
/proc walk and report formatting honest in the ordinary test run, in well under a second.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `pytest` (unlike `python -m pytest`) does not add the cwd
    sys.path.insert(0, str(ROOT))

from benchmarks import httpclient, proctree, report, wrk  # noqa: E402
from benchmarks.peers.launch import metric_sum  # noqa: E402
from benchmarks.suite import median_dict, percentile  # noqa: E402

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


def test_metric_sum_adds_every_label_set() -> None:
    text = (
        "# TYPE ferryman_batch_size histogram\n"
        'ferryman_batch_size_bucket{le="8.0"} 9.0\n'
        "ferryman_batch_size_sum 40.0\n"
        "ferryman_batch_size_count 6.0\n"
        'ferryman_batch_size_count{worker="1"} 4.0 1700000000\n'
        "ferryman_batch_size_counted 99\n"
    )
    assert metric_sum(text, "ferryman_batch_size_count") == 10.0
    assert metric_sum(text, "ferryman_batch_size_sum") == 40.0


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
