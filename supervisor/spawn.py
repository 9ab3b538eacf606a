"""Starting a child (supervisor): by exec, never a bare fork, its environment fixed first.

CUDA_VISIBLE_DEVICES is set in the child's environment before its interpreter starts, so torch in
a worker sees exactly its one device. Each child gets a session of its own, so a terminal's Ctrl-C
reaches only the supervisor (which decides the order of stopping) and a stop can signal the
child's whole process group, grandchildren included.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable

from ferryman import protocol as p
from ferryman.supervisor.devices import Device

MODULES = {"api": "ferryman.frontend.main", "worker": "ferryman.workers.main"}
# Children never need these: the admin token is the supervisor's alone, and systemd's socket and
# watchdog variables are meant for the supervisor.
PRIVATE = ("FERRYMAN_ADMIN_TOKEN", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def child_env(spec: p.ChildSpec, device: Device) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE}
    env[p.CHILD_ENV] = p.encode_spec(spec)
    env["PYTHONUNBUFFERED"] = "1"
    if spec.worker is not None:
        env["FERRYMAN_WORKER_ID"] = str(spec.slot)
        env["FERRYMAN_MODEL"] = spec.worker.model.name
        env["LITSERVE_WORKER_ID"] = str(spec.slot)  # LitServe apps read it
        env["FERRYMAN_DEVICE"] = device.local
        if device.visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = device.visible
    return env


def start(
    spec: p.ChildSpec, env: dict[str, str], pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", MODULES[spec.role]],
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=pass_fds,
        close_fds=True,
        start_new_session=True,
    )


class StderrRelay:
    """Copy a child's stderr to ours line by line, keeping its last lines for crash reports."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        popen: subprocess.Popen[bytes],
        tail: object,
        on_eof: Callable[[], None] | None = None,
    ) -> None:
        assert popen.stderr is not None
        self.loop = loop
        self.pipe = popen.stderr
        self.fd = self.pipe.fileno()
        self.tail = tail
        self.partial = b""
        self.on_eof = on_eof
        os.set_blocking(self.fd, False)
        loop.add_reader(self.fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        out = sys.stderr.buffer
        try:
            out.write(data)
            out.flush()
        except (OSError, ValueError):
            pass  # our own stderr is gone; keep supervising
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()[-4096:]
        for line in lines[-20:]:
            self.tail.append(line.decode(errors="replace"))  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.fd < 0:
            return
        self.loop.remove_reader(self.fd)
        self.pipe.close()
        self.fd = -1
        if self.on_eof is not None:
            self.on_eof()
