"""One Prometheus scrape for the whole process tree (runs in the supervisor).

Children send what they counted over their control link (ferryman/metrics.py); MetricStore adds
it to totals held here, so that counters never go backwards when a child is replaced and nothing
is left on disk by dead children. The collector adds what only the supervisor knows: worker
states per model, restarts, reloads, readiness, and each process's CPU and memory (from /proc
while it runs; a dead child's CPU time, from wait4, is carried into its slot's total).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from ferryman.supervisor.pools import SlotState
from ferryman.supervisor.reconcile import slot_state

if TYPE_CHECKING:
    from ferryman.supervisor.operations import Operations as Supervisor

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def proc_usage(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of a process, from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().rsplit(b")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / _TICKS
        rss = int(stat[21]) * _PAGE
        return cpu, rss
    except (OSError, IndexError, ValueError):
        return None


class SupervisorCollector:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Iterator[Metric]:
        from ferryman.supervisor.registry import Role

        sup = self.sup
        now = time.monotonic()
        children = list(sup.registry)
        yield GaugeMetricFamily(
            "ferryman_requests_in_flight",
            "Requests being answered now, in every API process",
            value=sum(c.in_flight for c in children if c.role == Role.API),
        )
        states = GaugeMetricFamily(
            "ferryman_workers", "Worker slots by model and state", labels=["model", "state"]
        )
        desired = GaugeMetricFamily(
            "ferryman_workers_desired", "Worker slots wanted, by model", labels=["model"]
        )
        up = GaugeMetricFamily(
            "ferryman_worker_up",
            "1 if the worker slot is serving",
            labels=["model", "worker", "device"],
        )
        model_ready = GaugeMetricFamily(
            "ferryman_model_ready", "1 if the model has its ready workers", labels=["model"]
        )
        for name, pool in sup.models.items():
            kids = sup.registry.of(name)
            counts = dict.fromkeys((s.value for s in SlotState), 0)
            for slot in pool.ordered():
                mine = [c for c in kids if c.slot == slot.index]
                st = slot_state(slot, mine, now)
                counts[st.value] += 1
                up.add_metric(
                    [name, str(slot.index), slot.device.name], 1 if st == SlotState.READY else 0
                )
            for state, n in counts.items():
                states.add_metric([name, state], n)
            desired.add_metric([name], len(pool.slots))
            model_ready.add_metric([name], 1 if sup.model_ready(pool) else 0)
        yield states
        yield desired
        yield up
        yield model_ready
        proc_up = GaugeMetricFamily(
            "ferryman_process_up", "1 if the process is running", labels=["role", "model", "id"]
        )
        proc_up.add_metric(["supervisor", "", "0"], 1)
        for pool in sup.pools():
            model = pool.name if pool.role == Role.WORKER else ""
            running = {c.slot for c in sup.registry.of(pool.name) if c.alive}
            for index in sorted(pool.slots):
                proc_up.add_metric(
                    [str(pool.role), model, str(index)], 1 if index in running else 0
                )
        yield proc_up
        restarts = CounterMetricFamily(
            "ferryman_process_restarts",
            "Children replaced after an unexpected exit, by role, model and cause",
            labels=["role", "model", "reason"],
        )
        from ferryman.supervisor.state import RESTART_REASONS

        keys = {("api", "", r) for r in RESTART_REASONS}
        keys |= {("worker", m, r) for m in sup.models for r in RESTART_REASONS}
        keys |= set(sup.restarts)
        for key in sorted(keys):
            restarts.add_metric(list(key), sup.restarts.get(key, 0))
        yield restarts
        yield CounterMetricFamily(
            "ferryman_reloads", "Rolling reloads completed", value=sup.reloads
        )
        yield GaugeMetricFamily(
            "ferryman_ready", "1 if the server is ready to serve", value=1 if sup.is_ready() else 0
        )
        cpu = CounterMetricFamily(
            "ferryman_process_cpu_seconds",
            "CPU time of each process (a slot's replaced children included)",
            labels=["role", "model", "id"],
        )
        mem = GaugeMetricFamily(
            "ferryman_process_resident_memory_bytes",
            "Resident memory of each process",
            labels=["role", "model", "id"],
        )
        # By role and slot, not pid: a respawned child continues its slot's series. A child
        # being replaced shares its slot with its successor for a moment; both are summed.
        cpu_s = dict(sup.retired_cpu)
        rss: dict[tuple[str, str, str], float] = {}
        procs = [(("supervisor", "", "0"), os.getpid())]
        for c in children:
            model = c.pool if c.role == Role.WORKER else ""
            procs.append(((str(c.role), model, str(c.slot)), c.pid))
        for key, pid in procs:
            got = proc_usage(pid)
            if got is not None:
                cpu_s[key] = cpu_s.get(key, 0.0) + got[0]
                rss[key] = rss.get(key, 0.0) + got[1]
        for key, value in sorted(cpu_s.items()):
            cpu.add_metric(list(key), value)
        for key, value in sorted(rss.items()):
            mem.add_metric(list(key), value)
        yield cpu
        yield mem


class MetricsEndpoint:
    def __init__(self, sup: Supervisor) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(sup.metrics)
        self.registry.register(SupervisorCollector(sup))

    def render(self) -> bytes:
        return generate_latest(self.registry)
