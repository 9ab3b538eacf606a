"""A child must not outlive its supervisor, even one killed with SIGKILL.

PR_SET_PDEATHSIG makes the kernel signal us when the parent dies; the getppid() check covers the
window before prctl ran and any platform without it. Both run first thing in every child.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1


def bind_to_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except OSError:
            pass
    if os.getppid() != parent_pid:
        os._exit(70)
    _start_watch(parent_pid)


def _start_watch(parent_pid: int) -> None:
    """Belt and braces for PDEATHSIG: a daemon thread that exits the process once orphaned."""

    def watch() -> None:
        ev = threading.Event()
        while not ev.wait(0.5):
            if os.getppid() != parent_pid:
                os._exit(70)

    threading.Thread(target=watch, name="ferryman-lifeline", daemon=True).start()
