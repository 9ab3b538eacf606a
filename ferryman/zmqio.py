"""Read a ZeroMQ socket from an asyncio loop without a future per message.

zmq.asyncio awaits each message; on the request path that costs more than the message itself.
Instead: watch the socket's FD, and on each wake-up drain every queued message synchronously.
The FD is edge-triggered and is consumed by sends too, so whoever sends on a socket that it also
reads either calls `kick()` afterwards or drains it periodically (the dispatcher's ROUTER, whose
rare incoming messages do not justify a check after every request it sends).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import zmq

NOBLOCK = int(zmq.NOBLOCK)
# Messages handled per wake-up before yielding to the loop: the first item of a stream must
# reach its client without waiting for every item queued behind it to be read.
BURST = 64


class Reader:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: zmq.Socket[bytes],
        on_frames: Callable[[list[bytes]], None],
        pairs: bool = False,
    ) -> None:
        """pairs: every message is exactly two frames (the data plane's rule), read as such."""
        self.loop = loop
        self.sock = sock
        self.on_frames = on_frames
        self.fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        self.drain = self._drain_pairs if pairs else self._drain_any
        loop.add_reader(self.fd, self.drain)
        loop.call_soon(self.drain)

    def _drain_any(self) -> None:
        recv = self.sock.recv_multipart
        for _ in range(BURST):
            try:
                frames = recv(NOBLOCK)
            except zmq.ZMQError:  # Again: nothing left (or closed under us)
                return
            self.on_frames(frames)
        self.loop.call_soon(self.drain)

    def _drain_pairs(self) -> None:
        recv = self.sock.recv
        on_frames = self.on_frames
        for _ in range(BURST):
            try:
                header = recv(NOBLOCK)
            except zmq.ZMQError:
                return
            on_frames([header, recv(0)])  # a message's frames arrive together
        self.loop.call_soon(self.drain)

    def kick(self) -> None:
        if self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # type: ignore[operator,arg-type]
            self.loop.call_soon(self.drain)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
