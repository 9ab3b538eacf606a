"""Free loopback ports for the servers the tests start (runs in the test process)."""

from __future__ import annotations

import random
import socket

_given: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return 32768, 60999
    return lo, hi


def free_port() -> int:
    """A loopback port nobody listens on, never handed out twice, outside the kernel's ephemeral
    range: a port from that range may be taken, between this call and the server's bind, by any
    outgoing connection, even by a client polling that very port (a TCP connect whose source
    port equals its destination connects to itself and holds the port)."""
    lo, hi = _ephemeral_range()
    ports = range(20000, lo) if lo > 21000 else range(hi + 1, 65536)
    for _ in range(1000):
        port = random.choice(ports)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {ports}")
