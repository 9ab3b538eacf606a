"""Bounds on a request's head that uvicorn does not set (API processes and the admin port).

Used by the API processes (frontend/main.py) and the supervisor's admin port (control/admin.py).
uvicorn's httptools protocol buffers a header of any size (a 200 MiB one took an API process from
37 to 311 MiB), and keeps a connection that sends nothing, or stops halfway through its headers,
open forever (200 such connections held 200 fds of the supervisor). This protocol answers:

- 431 once the request line and headers pass `max_head` bytes (give or take one read);
- 408 when the headers have not arrived `timeout` seconds after the request began, and closes a
  connection that has sent nothing at all `timeout` seconds after it opened;
- 400 for what the HTTP parser cannot frame,

each as ferryman's JSON error with `connection: close`.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ferryman import errors

MAX_HEAD = 64 * 1024


def guarded_protocol(timeout: float, max_head: int = MAX_HEAD) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with those bounds: give it to uvicorn.Config(http=...)."""

    class Guarded(HttpToolsProtocol):
        in_head = False  # between the first byte of a request and the end of its headers
        head_bytes = 0
        began = False  # a request began in the data being parsed: that data is not counted
        head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self.began = False
            super().data_received(data)
            if self.in_head and not self.began and not self.transport.is_closing():
                self.head_bytes += len(data)
                if self.head_bytes > max_head:
                    self._refuse(
                        b"431 Request Header Fields Too Large",
                        "header_too_large",
                        f"the request line and headers are larger than {max_head} bytes",
                    )

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.in_head, self.head_bytes, self.began = True, 0, True
            if self.head_timer is None:
                self._arm_head_timer()

        def on_headers_complete(self) -> None:
            self.in_head = False
            self._cancel_head_timer()
            super().on_headers_complete()

        def _arm_head_timer(self) -> None:
            self.head_timer = self.loop.call_later(timeout, self._head_timeout)

        def _cancel_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _head_timeout(self) -> None:
            self.head_timer = None
            if self.transport.is_closing():
                return
            if not self.in_head:  # connected, and not a byte since: just close
                if self.cycle is None:
                    self.transport.close()
                return
            self._refuse(
                b"408 Request Timeout",
                "header_timeout",
                f"the request headers did not arrive within {timeout:g} s",
            )

        def _refuse(self, status: bytes, kind: str, message: str) -> None:
            self._cancel_head_timer()
            body = errors.ferryman_error(kind, message)
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
            )
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            """A request the parser cannot frame: ferryman's JSON error, not plain text."""
            self._refuse(b"400 Bad Request", "invalid_http", msg)

    return Guarded
