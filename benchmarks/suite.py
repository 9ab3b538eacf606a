"""The scenarios, and the interleaved rounds that run them.

Each scenario group starts every peer fresh, once per round, in the order A B C ... A B C ...
(launch.PEERS: LitServe, BentoML, Ray Serve, TorchServe, bare, ferryman), so that drift on a
shared machine hits all peers alike:

trivial    x*2; measures (e) start to first 200, (d) memory at idle, (a) 1 and 32 connections,
           (d) memory under load (sampled during the 32-connection run)
batched    fixed 2 ms + 0.1 ms per item, max_batch_size 8, batch_timeout 5 ms, 64 connections (b)
batchcase  fixed 3 ms + 0.1 ms per item, max_batch_size 16, batch_timeout 50 ms, each peer that
           batches started twice, batching on then off: 1 connection (p50, p99) and 64
           connections (req/s, mean batch) (g)
streamed   256 items per request: time to first item one request at a time, then items/s under
           wrk with 8 connections (c)
kill       SIGKILL one worker under load: failed and hung requests, time until its slot serves (f)
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import httpclient, procs, wrk
from benchmarks.peers import launch
from benchmarks.peers.launch import BATCHING_PEERS, Counts, Running

GROUPS = ("trivial", "batched", "batchcase", "streamed", "kill")
HELD = re.compile(r"worker gone with requests in flight.*?failed=(\d+)")


@dataclass
class Config:
    quick: bool
    rounds: int
    warmup_s: float
    measure_s: float
    idle_settle_s: float
    ttfi_requests: int
    kill_at_s: float
    kill_window_s: float
    hung_s: float
    stop_grace_s: float
    startup_timeout_s: float = 60.0
    peers: tuple[str, ...] = launch.PEERS
    groups: tuple[str, ...] = GROUPS
    counts: Counts = field(default_factory=Counts)
    trivial_connections: tuple[int, ...] = (1, 32)
    batch_connections: int = 64
    stream_connections: int = 8
    wrk_threads: int = 1
    litserve_fast_queue: bool = False

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(
                quick=True,
                rounds=1,
                warmup_s=1,
                measure_s=2,
                idle_settle_s=0.5,
                ttfi_requests=20,
                kill_at_s=1.0,
                kill_window_s=6.0,
                hung_s=2.0,
                stop_grace_s=2.0,
            )
        return cls(
            quick=False,
            rounds=3,
            warmup_s=3,
            measure_s=10,
            idle_settle_s=2.0,
            ttfi_requests=100,
            kill_at_s=3.0,
            kill_window_s=15.0,
            hung_s=3.0,
            stop_grace_s=5.0,
        )


Log = Callable[[str], None]


class Suite:
    def __init__(self, cfg: Config, raw_dir: Path, log: Log = print) -> None:
        self.cfg = cfg
        self.raw = raw_dir
        self.log = log
        self.wrk = ""
        self.script = Path()
        # results[key][peer] -> one dict per round; key is a scenario id such as "a32"
        self.results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.errors: list[str] = []

    def prepare(self) -> None:
        self.raw.mkdir(parents=True, exist_ok=True)
        self.wrk = wrk.ensure_wrk(self.log)
        self.script = wrk.write_script(self.raw)

    def run(self) -> None:
        self.prepare()
        for group in self.cfg.groups:
            peers = [p for p in self.cfg.peers if runs_in(group, p)]
            for rnd in range(1, self.cfg.rounds + 1):
                for peer in peers:
                    self._one(group, peer, rnd)

    def _record(self, key: str, peer: str, values: dict[str, Any]) -> None:
        self.results.setdefault(key, {}).setdefault(peer, []).append(values)

    def _one(self, group: str, peer: str, rnd: int) -> None:
        run_dir = self.raw / f"{group}-{peer}-r{rnd}"
        t0 = time.monotonic()
        self.log(f"[{group} round {rnd}] {launch.LABELS[peer]} ...")
        try:
            getattr(self, f"_{group}")(peer, run_dir)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            msg = f"{group} / {peer} / round {rnd}: {type(e).__name__}: {e}"
            self.errors.append(msg)
            self.log(f"  FAILED {msg}")
        else:
            self.log(f"  done in {time.monotonic() - t0:.1f}s")

    def _start(self, peer: str, model: str, run_dir: Path, **opts: Any) -> Running:
        opts.setdefault("litserve_fast_queue", self.cfg.litserve_fast_queue)
        return launch.start(peer, model, run_dir, self.cfg.counts, self.cfg.startup_timeout_s, opts)

    def _wrk(
        self, r: Running, connections: int, seconds: float, run_dir: Path, name: str
    ) -> wrk.WrkResult:
        return wrk.run(
            self.wrk,
            self.script,
            r.url,
            connections,
            seconds,
            threads=self.cfg.wrk_threads,
            timeout_s=5.0,
            log_path=run_dir / f"wrk-{name}.txt",
        )

    def _check_alive(self, r: Running) -> None:
        if r.proc.poll() is not None:
            raise RuntimeError(f"{r.peer} exited with {r.proc.returncode} during the run")

    # -- (e) (d) (a) -----------------------------------------------------------------------------

    def _trivial(self, peer: str, run_dir: Path) -> None:
        c = self.cfg
        r = self._start(peer, "trivial", run_dir)
        try:
            self._record("e", peer, {"startup_s": r.startup_s})
            time.sleep(c.idle_settle_s)
            idle = r.memory()
            self._wrk(r, max(c.trivial_connections), c.warmup_s, run_dir, "warmup")
            for conns in c.trivial_connections:
                if conns == max(c.trivial_connections):
                    with MemorySampler(r) as sampler:
                        res = self._wrk(r, conns, c.measure_s, run_dir, f"c{conns}")
                    load = sampler.peak()
                else:
                    res = self._wrk(r, conns, c.measure_s, run_dir, f"c{conns}")
                self._check_alive(r)
                self._record(f"a{conns}", peer, res.to_dict())
            self._record(
                "d",
                peer,
                {
                    "processes": idle.processes,
                    "rss_idle_mb": idle.rss_mb,
                    "pss_idle_mb": idle.pss_mb,
                    "root_rss_idle_mb": idle.root_rss_mb,
                    "rss_load_mb": load.rss_mb,
                    "pss_load_mb": load.pss_mb,
                    "root_rss_load_mb": load.root_rss_mb,
                },
            )
        finally:
            r.stop(c.stop_grace_s)

    # -- (b) -------------------------------------------------------------------------------------

    def _batched(self, peer: str, run_dir: Path) -> None:
        c = self.cfg
        r = self._start(peer, "batched", run_dir)
        try:
            self._wrk(r, c.batch_connections, c.warmup_s, run_dir, "warmup")
            calls0, items0 = r.batch_totals()
            res = self._wrk(r, c.batch_connections, c.measure_s, run_dir, "measure")
            # The model's own counters are flushed every 0.1 s: let the last one land.
            time.sleep(0.25)
            calls1, items1 = r.batch_totals()
            self._check_alive(r)
            values: dict[str, Any] = res.to_dict()
            calls = calls1 - calls0
            values["mean_batch"] = (items1 - items0) / calls if calls > 0 else None
            self._record("b", peer, values)
        finally:
            r.stop(c.stop_grace_s)

    # -- (g) -------------------------------------------------------------------------------------

    def _batchcase(self, peer: str, run_dir: Path) -> None:
        """The same model with batching on, then off: what batching costs a lone client (1
        connection) and what it brings under load (64 connections)."""
        c = self.cfg
        for mode, on in (("on", True), ("off", False)):
            sub = run_dir / mode
            r = self._start(peer, "batchcase", sub, batching=on)
            try:
                self._wrk(r, c.batch_connections, c.warmup_s, sub, "warmup")
                lone = self._wrk(r, 1, c.measure_s, sub, "c1")
                calls0, items0 = r.batch_totals()
                loaded = self._wrk(r, c.batch_connections, c.measure_s, sub, "measure")
                time.sleep(0.25)  # the model's counters are flushed every 0.1 s
                calls1, items1 = r.batch_totals()
                self._check_alive(r)
            finally:
                r.stop(c.stop_grace_s)
            self._record(f"g1{mode}", peer, lone.to_dict())
            values: dict[str, Any] = loaded.to_dict()
            calls = calls1 - calls0
            values["mean_batch"] = (items1 - items0) / calls if calls > 0 else None
            self._record(f"g{c.batch_connections}{mode}", peer, values)

    # -- (c) -------------------------------------------------------------------------------------

    def _streamed(self, peer: str, run_dir: Path) -> None:
        from benchmarks.models import STREAM_ITEMS

        c = self.cfg
        r = self._start(peer, "streamed", run_dir)
        try:
            self._wrk(r, c.stream_connections, c.warmup_s, run_dir, "warmup")
            # wrk's connections close with streams still being produced (a peer that cannot
            # cancel finishes them): let that drain, or it lands in the first-item times.
            time.sleep(c.idle_settle_s)
            ttfi, totals = [], []
            conn = httpclient.Connection(r.port, timeout=10.0)
            deadline = time.monotonic() + max(10.0, c.ttfi_requests * 0.5)
            try:
                for _ in range(c.ttfi_requests):
                    if time.monotonic() > deadline:
                        break
                    resp = conn.post(r.path)
                    lines = resp.body.count(b"\n")
                    if resp.status != 200 or lines != STREAM_ITEMS:
                        raise RuntimeError(
                            f"stream answered {resp.status} with {lines} lines, "
                            f"not {STREAM_ITEMS}: {resp.body[:200]!r}"
                        )
                    ttfi.append(resp.first_item_s * 1e3)
                    totals.append(resp.total_s * 1e3)
            finally:
                conn.close()
            res = self._wrk(r, c.stream_connections, c.measure_s, run_dir, "measure")
            self._check_alive(r)
            values = dict(res.to_dict())
            values["items_per_s"] = res.rps * STREAM_ITEMS
            values["ttfi_p50_ms"] = statistics.median(ttfi)
            values["ttfi_p99_ms"] = percentile(ttfi, 99)
            values["stream_p50_ms_unloaded"] = statistics.median(totals)
            self._record("c", peer, values)
        finally:
            r.stop(c.stop_grace_s)

    # -- (f) -------------------------------------------------------------------------------------

    def _kill(self, peer: str, run_dir: Path) -> None:
        c = self.cfg
        r = self._start(peer, "trivial", run_dir, restart_workers=True)
        client: subprocess.Popen[Any] | None = None
        try:
            expected = c.counts.workers if peer != "bare" else c.counts.api_servers
            deadline = time.monotonic() + c.startup_timeout_s
            while len(r.worker_pids()) < expected:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(r.worker_pids())} of {expected} workers came up")
                time.sleep(0.05)
            before = {pid for _, pid in r.worker_pids()}
            out_path = run_dir / "loadclient.json"
            with open(out_path, "w") as out, open(run_dir / "loadclient.err", "w") as err:
                client = procs.spawn(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.loadclient",
                        "--port",
                        str(r.port),
                        "--connections",
                        str(max(c.trivial_connections)),
                        "--duration",
                        str(c.kill_at_s + c.kill_window_s),
                        "--hung",
                        str(c.hung_s),
                        "--path",
                        r.path,
                    ],
                    env={**os.environ, "PYTHONPATH": str(launch.ROOT)},
                    cwd=launch.ROOT,
                    log=err,
                    stdout=out,
                )
            time.sleep(c.kill_at_s)
            self._check_alive(r)
            victim = r.worker_pids()[0][1]
            t_kill = time.time()
            os.kill(victim, signal.SIGKILL)
            self.log(f"  SIGKILLed worker pid {victim}")
            respawn = first = None
            stop_at = time.monotonic() + c.kill_window_s
            while time.monotonic() < stop_at and client.poll() is None:
                new = {
                    pid: t
                    for pid, t in launch.read_markers(r.stats_dir, "setup").items()
                    if pid not in before and t >= t_kill
                }
                if new:
                    respawn = min(new.values()) - t_kill
                    served = [
                        t
                        for pid, t in launch.read_markers(r.stats_dir, "first").items()
                        if pid in new
                    ]
                    if served:
                        first = min(served) - t_kill
                        break
                time.sleep(0.02)
            try:
                client.wait(timeout=c.kill_window_s + c.kill_at_s + c.hung_s + 15)
            except subprocess.TimeoutExpired:
                raise RuntimeError("the load client did not finish") from None
            result = json.loads(out_path.read_text() or "{}")
            failures = [t - t_kill for t, _ in result.get("failures", [])]
            failed = int(result.get("failed", 0))
            held: int | None = None
            if peer == "ferryman":
                # Each API process logs how many of its requests the dead worker held: the
                # client's failures should be exactly those.
                r.log.flush()
                text = Path(r.log.name).read_text(errors="replace")
                held = sum(int(n) for n in HELD.findall(text))
            self._record(
                "f",
                peer,
                {
                    "ok": result.get("ok", 0),
                    "failed": failed,
                    "hung": result.get("hung", 0),
                    "statuses": result.get("statuses", {}),
                    "errors": result.get("errors", {}),
                    "failed_before_kill": sum(1 for d in failures if d < 0),
                    "held_by_killed": held,
                    "unexplained_failures": None if held is None else failed - held,
                    "last_failure_after_kill_s": (
                        result["last_failure"] - t_kill
                        if result.get("last_failure") is not None
                        else max(failures, default=None)
                    ),
                    "respawn_s": respawn,
                    "serves_again_s": first,
                    "window_s": c.kill_window_s,
                },
            )
        finally:
            if client is not None and client.poll() is None:
                procs.stop(client, grace=0.5)
            r.stop(c.stop_grace_s)

    # -- summary ---------------------------------------------------------------------------------

    def medians(self) -> dict[str, dict[str, dict[str, Any]]]:
        out = {
            key: {peer: median_dict(runs) for peer, runs in by_peer.items()}
            for key, by_peer in self.results.items()
        }
        # A hang or a stray failure in any round matters, not only in the median one.
        for peer, runs in self.results.get("f", {}).items():
            for k in ("hung", "unexplained_failures", "failed_before_kill"):
                vals = [r[k] for r in runs if isinstance(r.get(k), int)]
                out["f"][peer][f"{k}_max"] = max(vals) if vals else None
        return out


def runs_in(group: str, peer: str) -> bool:
    """Whether a scenario group applies to a peer: the batching case only to peers that batch."""
    return group != "batchcase" or peer in BATCHING_PEERS


class MemorySampler:
    """Samples a peer's tree every 0.25 s in a thread while load runs; keeps the largest."""

    def __init__(self, r: Running, every: float = 0.25) -> None:
        self.r = r
        self.every = every
        self.samples: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(self.r.memory())

    def peak(self) -> Any:
        if not self.samples:
            return self.r.memory()
        return max(self.samples, key=lambda m: m.rss_mb)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def median_dict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per key, the median of the rounds' numbers; other values from the middle run.

    A None among numbers means "did not happen within the window" (a slot that never served
    again) and sorts as +infinity, so one such round cannot be hidden by the others."""
    out: dict[str, Any] = {"rounds": len(runs)}
    keys = {k for run in runs for k in run}
    for k in sorted(keys):
        vals = [run.get(k) for run in runs]
        if any(_is_num(v) for v in vals) and all(_is_num(v) or v is None for v in vals):
            m = statistics.median(float("inf") if v is None else v for v in vals)
            out[k] = None if m == float("inf") else m
        else:
            present = [v for v in vals if v is not None]
            out[k] = present[len(present) // 2] if present else None
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
