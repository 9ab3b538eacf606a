"""Bounds on a request that uvicorn does not set (API processes and the admin port).

Used by the API processes (frontend/main.py) and the supervisor's admin port (control/admin.py).
uvicorn's httptools protocol buffers a header of any size (a 200 MiB one took an API process from
37 to 311 MiB), and keeps a connection open forever that sends nothing, stops halfway through its
headers, or stops halfway through its body (200 such connections held 200 fds of the
supervisor). This protocol answers:

- 431 once the request line and headers pass `max_head` bytes (give or take one read);
- 408 when a request's headers, or its body, have not all arrived `timeout` seconds after the
  read that left them incomplete began the wait, and closes a connection that has sent nothing at
  all `timeout` seconds after it opened;
- 400 for what the HTTP parser cannot frame,

each as ferryman's JSON error with `connection: close`.

The timer is armed only when a read ends with a request incomplete: the usual request, whole in
one read, costs none (a timer per request, armed and cancelled, cost more than the rest of the
API process's bookkeeping of it).
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
        in_body = False  # between the end of its headers and the end of its body
        head_bytes = 0
        began = False  # a request began in the data being parsed: that data is not counted
        timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()  # a connection that never sends a byte

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self.began = False
            super().data_received(data)
            if self.transport.is_closing():
                return
            if self.in_head:
                if not self.began:
                    self.head_bytes += len(data)
                    if self.head_bytes > max_head:
                        self._refuse(
                            b"431 Request Header Fields Too Large",
                            "header_too_large",
                            f"the request line and headers are larger than {max_head} bytes",
                        )
                        return
                self._arm()
            elif self.in_body:
                self._arm()
            else:
                self._disarm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.in_head, self.in_body, self.head_bytes, self.began = True, False, 0, True

        def on_headers_complete(self) -> None:
            self.in_head, self.in_body = False, True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.in_body = False
            self._disarm()
            super().on_message_complete()

        def _arm(self) -> None:
            # Once per wait, not per read: a slow client has `timeout` for the whole of it.
            if self.timer is None:
                self.timer = self.loop.call_later(timeout, self._expired)

        def _disarm(self) -> None:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

        def _expired(self) -> None:
            self.timer = None
            if self.transport.is_closing():
                return
            if self.in_head:
                self._refuse(
                    b"408 Request Timeout",
                    "header_timeout",
                    f"the request headers did not arrive within {timeout:g} s",
                )
            elif self.in_body:
                self._refuse(
                    b"408 Request Timeout",
                    "body_timeout",
                    f"the request body did not arrive within {timeout:g} s",
                )
            elif self.cycle is None:  # connected, and not a byte since: just close
                self.transport.close()

        def _refuse(self, status: bytes, kind: str, message: str) -> None:
            self._disarm()
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
