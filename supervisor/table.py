"""The process table: slots (what should run) and children (what runs), and the restart policy.

A slot is a place for one child: API process i, or worker i on a device. It outlives its children:
a crashed child is replaced in the same slot, on the same device. States, as operators see them:

  starting  a child was spawned and has not said Ready yet
  ready     serving
  draining  told to stop taking work; finishing what it has
  backoff   crashed; waiting before the next start
  failed    crashed max_restarts times within restart_window; retried every failed_retry seconds
  stopped   not running and not meant to (shutdown)
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ferryman.supervisor.devices import Device

API = "api"
WORKER = "worker"


@dataclass(eq=False)
class Child:
    role: str
    slot: int
    name: str  # routing identity, unique per incarnation: "w3.17"
    popen: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    state: str = "starting"
    ready_at: float | None = None
    last_seen: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    served: int = 0
    # Why we stopped it ("reload", "scale", "restart", "shutdown", "hang"); None: it just died.
    stop_reason: str | None = None
    kill_timer: Any = None
    fatal: Any = None  # the Fatal message it sent, if any
    endpoint: Any = None  # API processes: their ApiEndpoint, once they said Hello
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass(eq=False)
class Slot:
    role: str
    index: int
    device: Device
    child: Child | None = None
    # Children being replaced or retired from this slot, still finishing their work.
    retiring: list[Child] = field(default_factory=list)
    state: str = "starting"  # when child is None: backoff, failed or stopped
    restarts: int = 0
    crashes: deque[float] = field(default_factory=deque)
    consecutive: int = 0
    next_start: float = 0.0
    start_timer: Any = None
    last_exit: str | None = None
    last_error: str | None = None
    ever_ready: bool = False
    retired: bool = False  # scaled away: never respawned

    @property
    def key(self) -> str:
        return f"{self.role}:{self.index}"

    def current_state(self) -> str:
        return self.child.state if self.child is not None else self.state


@dataclass
class RestartPolicy:
    max_restarts: int = 5
    window: float = 60.0
    base: float = 0.1
    cap: float = 30.0

    def after_crash(self, slot: Slot, now: float, was_ready_for: float | None) -> float | None:
        """Seconds to wait before the next start, or None: the slot is now failed."""
        slot.crashes.append(now)
        while slot.crashes and slot.crashes[0] < now - self.window:
            slot.crashes.popleft()
        if len(slot.crashes) >= self.max_restarts:
            return None
        # A child that served a good while and then crashed comes back at once; one that keeps
        # crashing waits longer each time: exponential, capped, with jitter against herds.
        if was_ready_for is not None and was_ready_for > self.window:
            slot.consecutive = 0
        slot.consecutive += 1
        if slot.consecutive == 1 and was_ready_for is not None:
            return 0.0
        delay = min(self.cap, self.base * 2 ** (slot.consecutive - 1))
        return delay * random.uniform(0.8, 1.2)


def describe_exit(status: int) -> str:
    """A waitpid status as words: 'exit code 3', 'killed by SIGKILL'."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit code {status}"
