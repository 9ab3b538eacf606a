"""sd_notify(3) without libsystemd (supervisor): one datagram to $NOTIFY_SOCKET per state change.

Under systemd with Type=notify (or notify-reload) this says READY=1 once serving, RELOADING=1 and
READY=1 around a rolling reload, STOPPING=1, STATUS= lines, and WATCHDOG=1 pings. Without
NOTIFY_SOCKET every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET", "")
        self.addr: str | bytes | None = None
        if addr.startswith("@"):
            self.addr = b"\0" + addr[1:].encode()  # an abstract socket
        elif addr.startswith("/"):
            self.addr = addr
        self.sock: socket.socket | None = None
        if self.addr is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)
        # Children must not notify systemd on our behalf.
        os.environ.pop("NOTIFY_SOCKET", None)
        self.watchdog_interval = watchdog_interval()
        self.stopped = False

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, *lines: str) -> None:
        if self.sock is None or self.addr is None:
            return
        try:
            self.sock.sendto("\n".join(lines).encode(), self.addr)
        except OSError:
            pass  # systemd gone or busy: never fatal to the supervisor

    def ready(self, status: str) -> None:
        if self.stopped:  # a reload that ends while we stop must not say READY after STOPPING
            return
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.stopped = True
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC, in seconds, if the watchdog is on and meant for us."""
    usec = os.environ.pop("WATCHDOG_USEC", None)
    pid = os.environ.pop("WATCHDOG_PID", None)
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000 / 2
    except ValueError:
        return None
