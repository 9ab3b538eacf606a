"""The inference worker's link to one API process: a DEALER for requests in (and our Ready /
Leaving out), a PUSH for answers out, and what the worker counts about it.

The DEALER's identity is the worker's name, so that the API process's ROUTER can address it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

import zmq

from ferryman import protocol as p
from ferryman.board import CELLS, ROWS
from ferryman.zmqio import Reader

EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
# Last answers still queued in a PUSH when the worker exits get this long to leave.
EXIT_LINGER_MS = 2000


class ApiLink:
    __slots__ = (
        "acked",
        "dealer",
        "index",
        "mark",
        "name",
        "open",
        "push",
        "reader",
        "received",
        "tasks",
    )

    def __init__(
        self,
        ctx: zmq.Context[Any],
        loop: asyncio.AbstractEventLoop,
        ep: p.ApiEndpoint,
        identity: str,
        cell: int,
        on_frames: Callable[[ApiLink, list[bytes]], None],
    ) -> None:
        self.name = ep.name
        # Where this API process counts what it sent us on the load board (-1: off the board).
        self.index = cell * ROWS + ep.row if 0 <= ep.row < ROWS and 0 <= cell < CELLS else -1
        self.received = 0  # Works received from it, to compare with the board's count
        self.mark = 0  # `received` when a batch started waiting for more
        self.tasks: dict[int, Any] = {}  # its requests we hold, by id, until their final answer
        self.acked = False  # it acknowledged our WorkerLeaving
        self.open = True
        self.dealer = p.make_socket(ctx, zmq.DEALER, identity=identity, connect=ep.requests)
        self.push = p.make_socket(ctx, zmq.PUSH, connect=ep.replies)
        self.reader = Reader(loop, self.dealer, partial(on_frames, self), pairs=True)

    def say(self, raw: bytes) -> None:
        """A one-frame message to the API process (WorkerReady, WorkerLeaving)."""
        try:
            self.dealer.send(raw, p.NOBLOCK)
        except zmq.ZMQError:
            return
        # A send may consume the edge of the socket's FD: look for what arrived meanwhile.
        self.reader.kick()

    def poll(self) -> None:
        """Read what arrived while the loop was busy, without waiting for its wake-up."""
        if self.dealer.get(EVENTS) & POLLIN:  # type: ignore[operator]
            self.reader.drain()

    def close(self, linger_ms: int = 0) -> None:
        """linger_ms 0: the API process is gone, nothing more can reach it."""
        if not self.open:
            return
        self.open = False
        self.reader.close()
        self.dealer.close(0)
        self.push.close(linger_ms)
