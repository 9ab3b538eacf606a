"""Read a ZeroMQ socket from an asyncio loop without a future per message.

zmq.asyncio awaits each message; on the request path that costs more than the message itself.
Instead: watch the socket's FD, and on each wake-up drain every queued message synchronously.
The FD is edge-triggered and is consumed by sends too, so whoever sends on a socket that it also
reads calls `kick()` afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import zmq


class Reader:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: zmq.Socket[bytes],
        on_frames: Callable[[list[bytes]], None],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.on_frames = on_frames
        self.fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        loop.add_reader(self.fd, self.drain)
        loop.call_soon(self.drain)

    def drain(self) -> None:
        sock = self.sock
        recv = sock.recv_multipart
        while True:
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:  # closed under us
                return
            self.on_frames(frames)

    def kick(self) -> None:
        if self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # type: ignore[operator,arg-type]
            self.loop.call_soon(self.drain)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
