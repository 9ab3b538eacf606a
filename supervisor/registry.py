"""The supervisor's one registry of children: what runs, keyed by pid and by name.

A child is one incarnation of a slot: API process i, or worker i of a model. Its state is what the
supervisor knows of it, changed in one place each:

  starting  spawned, has not said Ready yet
  ready     serving
  draining  told to stop (SIGTERM): finishing what it holds, then exiting
  killed    sent SIGKILL (hung, too slow to start or to drain); waiting to be reaped
"""

from __future__ import annotations

import enum
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ferryman.supervisor.devices import Device


class Role(enum.StrEnum):
    API = "api"
    WORKER = "worker"


class ChildState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    KILLED = "killed"


class Stop(enum.StrEnum):
    """Why the supervisor stopped (the first four) or killed (the last three) a child."""

    REPLACED = "replaced"  # a newer generation took over (reload, restart, recycling)
    SCALED = "scaled"  # its slot was scaled away, or its model removed
    SHUTDOWN = "shutdown"
    FAILED_START = "failed_start"  # a replacement given up on
    HANG = "hang"  # silent for heartbeat_timeout
    STARTUP_TIMEOUT = "startup_timeout"  # not ready within startup_timeout
    DRAIN_TIMEOUT = "drain_timeout"  # did not exit within graceful_timeout of SIGTERM


@dataclass(eq=False)
class Child:
    role: Role
    pool: str  # "api" or the model's name
    slot: int
    generation: int
    name: str  # routing identity, unique per incarnation: "a0.4", "embed.w3.17"
    popen: subprocess.Popen[bytes]
    device: Device
    board_index: int  # API processes: their row on the load board; workers: their cell
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    state: ChildState = ChildState.STARTING
    ready_at: float | None = None
    last_seen: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    served: int = 0
    routes_to: frozenset[str] = frozenset()  # API processes: the workers they know as ready
    stop: Stop | None = None  # why we asked it to stop (None: we did not)
    killed: Stop | None = None  # why we sent it SIGKILL (None: we did not)
    kill_at: float | None = None  # when a draining child gets SIGKILL
    fatal: Any = None  # the Fatal message it sent, if any
    endpoint: Any = None  # API processes: their ApiEndpoint, once they said Hello
    recycle_after: int = 0  # requests after which it is replaced (max_requests + jitter); 0: never
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        """Counts toward its slot: started or serving, not on its way out."""
        return self.state in (ChildState.STARTING, ChildState.READY)


class Registry:
    def __init__(self) -> None:
        self.by_pid: dict[int, Child] = {}
        self.by_name: dict[str, Child] = {}

    def add(self, child: Child) -> None:
        self.by_pid[child.pid] = child
        self.by_name[child.name] = child

    def remove(self, pid: int) -> Child | None:
        child = self.by_pid.pop(pid, None)
        if child is not None:
            self.by_name.pop(child.name, None)
        return child

    def __iter__(self) -> Any:
        return iter(list(self.by_pid.values()))

    def __len__(self) -> int:
        return len(self.by_pid)

    def __contains__(self, child: object) -> bool:
        return isinstance(child, Child) and self.by_pid.get(child.pid) is child

    def of(self, pool: str) -> list[Child]:
        return [c for c in self.by_pid.values() if c.pool == pool]

    def role(self, role: Role) -> list[Child]:
        return [c for c in self.by_pid.values() if c.role == role]
