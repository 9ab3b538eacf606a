"""The API port (supervisor): sockets bound by the supervisor, or the one systemd passed.

By default each API slot gets a socket of its own on the port (SO_REUSEPORT), so that the kernel
spreads new connections evenly over the API processes: with one shared socket, whichever process
wakes first accepts, and one API process was seen taking 31 of 32 connections while the other
idled (nginx's `reuseport` and Envoy do the same for the same reason). The supervisor keeps each
socket and hands it to the slot's next process, so that a reload or a crash loses no connection
waiting in its queue. Socket activation passes one socket: it is shared by every API process.
"""

from __future__ import annotations

import logging
import os
import socket

SD_LISTEN_FDS_START = 3

log = logging.getLogger("ferryman.supervisor")


def from_systemd() -> socket.socket | None:
    """The first socket systemd passed us, if LISTEN_PID names this process.

    ferryman serves one API port: with more than one socket (LISTEN_FDS=2 or more, e.g. a second
    ListenStream= in ferryman.socket) the first is used, the others are left unused (and kept
    from the children), and a warning says so."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        n = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    # Our children must not think the fds are theirs.
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if n < 1:
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    sock.set_inheritable(True)
    if n > 1:
        for fd in range(SD_LISTEN_FDS_START + 1, SD_LISTEN_FDS_START + n):
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
        log.warning(
            f"systemd passed {n} sockets (LISTEN_FDS={n}"
            + (f", LISTEN_FDNAMES={':'.join(names)}" if any(names) else "")
            + f"); serving on the first only, fd {SD_LISTEN_FDS_START} ({_describe_fd(sock)}),"
            f" and ignoring the other {n - 1}: give ferryman.socket a single ListenStream= "
            "(the admin port is always bound by the supervisor itself)"
        )
    return sock


def _describe_fd(sock: socket.socket) -> str:
    try:
        return describe(sock)
    except OSError as e:  # not a socket, or already closed: say so rather than fail
        return f"unreadable: {e.strerror}"


def bind(host: str, port: int, backlog: int = 2048, reuseport: bool = False) -> socket.socket:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def describe(sock: socket.socket) -> str:
    addr = sock.getsockname()
    if isinstance(addr, tuple):
        host = addr[0]
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)


class Listeners:
    """The API port's sockets: one per API slot, or one shared by every API process."""

    def __init__(self, host: str, port: int, shared: socket.socket | None = None) -> None:
        self.host = host
        self.port = port
        self.shared = shared
        self.by_slot: dict[int, socket.socket] = {}

    @classmethod
    def open(cls, host: str, port: int) -> Listeners:
        """Raises OSError when the port cannot be bound (in use, no permission)."""
        passed = from_systemd()
        if passed is not None:
            log.info("using the socket systemd passed (socket activation)")
            return cls(host, port, shared=passed)
        # A plain bind first: it fails if anything listens on the port, another ferryman's
        # reuseport group included, which a reuseport bind of the same user would silently join.
        probe = bind(host, port)
        if not hasattr(socket, "SO_REUSEPORT"):
            return cls(host, port, shared=probe)
        actual = probe.getsockname()[1]  # --port 0: the one the kernel picked, for every slot
        probe.close()
        listeners = cls(host, actual)
        listeners.for_slot(0)
        return listeners

    def for_slot(self, index: int) -> socket.socket:
        if self.shared is not None:
            return self.shared
        sock = self.by_slot.get(index)
        if sock is None:
            sock = self.by_slot[index] = bind(self.host, self.port, reuseport=True)
        return sock

    def release(self, index: int) -> None:
        """A slot scaled away: close its socket (connections still in its queue are reset)."""
        sock = self.by_slot.pop(index, None)
        if sock is not None:
            sock.close()

    @property
    def address(self) -> str:
        return describe(self.shared if self.shared is not None else self.for_slot(0))

    def close(self) -> None:
        for sock in self.by_slot.values():
            sock.close()
        self.by_slot.clear()
        if self.shared is not None:
            self.shared.close()
