"""What every child does at start-up, and its link to the supervisor: API processes and workers.

Run first thing in a child: read the spec the supervisor put in our environment, die with the
supervisor (lifeline), relax the garbage collector, set up the log lines, connect the control
link and say hello. The control link is a DEALER to the supervisor's ROUTER: Ready, heartbeats,
the metrics counted, and a fatal error's traceback go up; what the supervisor says comes down.
"""

from __future__ import annotations

import os
import traceback

import zmq

from ferryman import gc_policy, logs
from ferryman import protocol as p
from ferryman.lifeline import bind_to_parent
from ferryman.metrics import Recorder


class Child:
    def __init__(self, role: str) -> None:
        self.spec = p.decode_spec(os.environ[p.CHILD_ENV])
        bind_to_parent(self.spec.supervisor_pid)
        gc_policy.relax()
        server = self.spec.server
        model = self.spec.worker.model.name if self.spec.worker is not None else None
        logs.setup(role, self.spec.slot, server.log_level, server.log_format, model=model)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        # Linger: a Fatal or the last metrics sent just before exit must still arrive.
        self.control = p.make_socket(
            self.ctx, zmq.DEALER, identity=self.spec.name, linger_ms=2000, connect=self.spec.control
        )
        endpoint = self.spec.api.endpoint if self.spec.api is not None else None
        self.send(p.encode(p.Hello(endpoint)))
        self.metrics = Recorder()

    def send(self, raw: bytes) -> None:
        try:
            self.control.send(raw, p.NOBLOCK)
        except zmq.ZMQError:  # the supervisor is gone: the lifeline ends us shortly
            pass

    def ready(self) -> None:
        self.send(p.encode(p.Ready()))

    def heartbeat(self, in_flight: int, served: int, workers: list[str] | None = None) -> None:
        self.send(p.encode(p.Heartbeat(in_flight, served, workers)))

    def flush_metrics(self) -> None:
        raw = self.metrics.take()
        if raw is not None:
            self.send(raw)

    def fatal(self, stage: str, exc: BaseException) -> None:
        """Tell the supervisor why this child cannot run; it logs it once, however many children."""
        tb = "".join(traceback.format_exception(exc)).rstrip()
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        self.send(p.encode(p.Fatal(stage, error, tb)))

    def close(self) -> None:
        self.flush_metrics()
        self.control.close()
        self.ctx.term()
