"""A child's DEALER to the supervisor's control ROUTER (the control plane, never the data plane)."""

from __future__ import annotations

import os
import traceback

import zmq

from ferryman import protocol as p


def connect(ctx: zmq.Context[zmq.Socket[bytes]], spec: p.ChildSpec) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, spec.name.encode())
    sock.setsockopt(zmq.LINGER, 2000)  # a Fatal sent just before exit must still arrive
    sock.connect(spec.control)
    sock.send(p.encode(p.Hello(spec.role, spec.slot, os.getpid(), spec.endpoint)))
    return sock


def report_fatal(sock: zmq.Socket[bytes], stage: str, exc: BaseException) -> None:
    """Tell the supervisor why this child cannot run; it logs it once, however many children."""
    tb = "".join(traceback.format_exception(exc)).rstrip()
    error = f"{type(exc).__name__}: {exc}"
    sock.send(p.encode(p.Fatal(stage, error, tb)))
