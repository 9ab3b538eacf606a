"""A minimal HTTP/1.1 client on raw sockets, for what wrk cannot measure.

Used for time to first streamed item, time to first successful request at startup, and the
worker-kill scenario's per-request outcomes. Raw sockets rather than httpx: its per-request
overhead (~0.3 ms) would be a large part of what is measured here.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

BODY = b'{"input": 21}'


def post_request(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class Response:
    status: int
    body: bytes
    first_item_s: float  # from sending the request to the first complete body line
    total_s: float


class HeadParseError(ValueError):
    pass


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and lower-cased headers of a response head (without the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise HeadParseError(f"not an HTTP response: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class Connection:
    """One keep-alive connection; reconnects when the server closed it."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.addr = (host, port)
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        if self.sock is None:
            s = socket.create_connection(self.addr, timeout=self.timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = s
        return self.sock

    def _fill(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def post(self, path: str = "/predict", body: bytes = BODY) -> Response:
        try:
            return self._post(path, body)
        except BaseException:
            self.close()
            raise

    def _post(self, path: str, body: bytes) -> Response:
        sock = self._connect()
        t0 = time.perf_counter()
        sock.sendall(post_request(path, body))
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status, headers = parse_head(head)
        first = 0.0
        parts: list[bytes] = []
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():  # trailers, then the blank line
                        pass
                    break
                parts.append(self._take(size))
                self._take(2)
                if not first and b"\n" in parts[-1]:
                    first = time.perf_counter() - t0
        else:
            parts.append(self._take(int(headers.get("content-length", "0"))))
        total = time.perf_counter() - t0
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, b"".join(parts), first or total, total)


def wait_ok(port: int, deadline: float, path: str = "/predict", body: bytes = BODY) -> float:
    """Poll with POSTs until one answers 200; return the monotonic time it did. Raises
    TimeoutError at `deadline` (a monotonic time)."""
    while True:
        conn = Connection(port, timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        try:
            if conn.post(path, body).status == 200:
                return time.monotonic()
        except (OSError, ValueError):
            pass
        finally:
            conn.close()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no 200 from 127.0.0.1:{port}{path}")
        time.sleep(0.02)


def get_json_text(port: int, path: str, timeout: float = 5.0) -> str:
    """GET a small document (the admin port's /metrics or /v1/status) as text."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    if status != 200:
        raise OSError(f"GET {path} answered {status}")
    return body.decode()


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(data[:size])
        data = data[size + 2 :]
    return b"".join(out)
