"""One Prometheus scrape for the whole process tree, served by the supervisor.

Children write their metrics to files (prometheus-client's multiprocess mode, a directory per
run); this aggregates those files and adds what only the supervisor knows: worker states,
restarts, reloads, and each child's CPU and memory read from /proc.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from ferryman.supervisor.core import Supervisor

STATES = ("starting", "ready", "draining", "backoff", "failed", "stopped")
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
        sup = self.sup
        states = GaugeMetricFamily("ferryman_workers", "Worker slots by state", labels=["state"])
        counts = dict.fromkeys(STATES, 0)
        for s in sup.worker_slots:
            st = s.current_state()
            counts[st] = counts.get(st, 0) + 1
        for st, n in counts.items():
            states.add_metric([st], n)
        yield states
        yield GaugeMetricFamily(
            "ferryman_workers_desired", "Worker slots wanted", value=len(sup.worker_slots)
        )
        up = GaugeMetricFamily(
            "ferryman_worker_up", "1 if the worker slot is serving", labels=["worker", "device"]
        )
        for s in sup.worker_slots:
            ok = s.child is not None and s.child.state == "ready"
            up.add_metric([str(s.index), s.device.name], 1 if ok else 0)
        yield up
        proc_up = GaugeMetricFamily(
            "ferryman_process_up", "1 if the process is running", labels=["role", "id"]
        )
        proc_up.add_metric(["supervisor", "0"], 1)
        for s in sup.api_slots + sup.worker_slots:
            proc_up.add_metric([s.role, str(s.index)], 1 if s.child is not None else 0)
        yield proc_up
        restarts = CounterMetricFamily(
            "ferryman_process_restarts",
            "Children replaced after exiting, by role and reason",
            labels=["role", "reason"],
        )
        for (role, reason), n in sorted(sup.restarts.items()):
            restarts.add_metric([role, reason], n)
        yield restarts
        yield CounterMetricFamily(
            "ferryman_reloads", "Rolling reloads completed", value=sup.reloads
        )
        yield GaugeMetricFamily(
            "ferryman_ready", "1 if the server is ready to serve", value=1 if sup.is_ready() else 0
        )
        cpu = CounterMetricFamily(
            "ferryman_process_cpu_seconds", "CPU time of each process", labels=["role", "id"]
        )
        mem = GaugeMetricFamily(
            "ferryman_process_resident_memory_bytes",
            "Resident memory of each process",
            labels=["role", "id"],
        )
        # By role and slot, not pid: a respawned child continues its slot's series. A child
        # being replaced shares its slot with its successor for a moment; both are summed.
        usage: dict[tuple[str, str], list[float]] = {("supervisor", "0"): [0.0, 0.0]}
        procs = [("supervisor", "0", os.getpid())]
        procs += [(c.role, str(c.slot), c.pid) for c in list(sup.children.values())]
        for role, ident, pid in procs:
            got = proc_usage(pid)
            if got is not None:
                acc = usage.setdefault((role, ident), [0.0, 0.0])
                acc[0] += got[0]
                acc[1] += got[1]
        for (role, ident), (cpu_s, rss) in usage.items():
            cpu.add_metric([role, ident], cpu_s)
            mem.add_metric([role, ident], rss)
        yield cpu
        yield mem


class MetricsEndpoint:
    def __init__(self, sup: Supervisor) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(self.registry, path=sup.metrics_dir)
        self.registry.register(SupervisorCollector(sup))

    def render(self) -> bytes:
        return generate_latest(self.registry)
