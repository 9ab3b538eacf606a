"""The restart policy (supervisor): what a slot does after its child exited unexpectedly.

supervisord's `startsecs` rule: only a child that dies before it was ready, or within a short
grace after without having answered a request, counts as a failure to start. Those back off
exponentially (with jitter against herds) and, after `max_restarts` of them within `window`, mark
the slot failed for a while. A child that served and then died (OOM killer, an operator's kill -9,
a crash on one request) is replaced at once, every time: it says nothing about whether the next
one can start. Having answered a request is serving, however soon after ready it died.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

GRACE = 1.0  # seconds after ready within which a death still counts as a failure to start


@dataclass
class StartHistory:
    """A slot's record of failures to start."""

    failures: deque[float] = field(default_factory=deque)
    consecutive: int = 0


@dataclass
class RestartPolicy:
    max_restarts: int = 5
    window: float = 60.0
    base: float = 0.1
    cap: float = 30.0
    grace: float = GRACE

    def after_exit(
        self, history: StartHistory, now: float, ready_for: float | None, served: bool = False
    ) -> float | None:
        """Seconds to wait before the next start (0: at once), or None: the slot is failed.

        ready_for: how long the child had been ready when it died (None: it never was);
        served: it had answered requests."""
        if ready_for is not None and (served or ready_for >= self.grace):
            history.consecutive = 0
            return 0.0
        history.failures.append(now)
        while history.failures and history.failures[0] < now - self.window:
            history.failures.popleft()
        if len(history.failures) >= self.max_restarts:
            return None
        history.consecutive += 1
        delay = min(self.cap, self.base * 2 ** (history.consecutive - 1))
        return delay * random.uniform(0.8, 1.2)
