"""The supervisor's private run directory: control and data-plane sockets, the load board.

Under systemd with `RuntimeDirectory=`, it lives in `$RUNTIME_DIRECTORY` (systemd creates it with
the right owner and removes it at stop); otherwise in the temporary directory, mode 0700. Each run
gets a directory of its own holding a `pid` file, so that a later start can tell and remove what a
supervisor killed by SIGKILL left behind. The sockets of an API process are removed when it exits:
a long-lived server reloaded many times must not accumulate them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile

log = logging.getLogger("ferryman.supervisor")

PREFIX = "ferryman-"


def _base() -> str:
    runtime = os.environ.get("RUNTIME_DIRECTORY", "")
    # systemd may list several directories, separated by colons: the first is ours.
    first = runtime.split(":")[0]
    if first and os.path.isdir(first) and os.access(first, os.W_OK):
        return first
    return tempfile.gettempdir()


def create() -> str:
    base = _base()
    remove_stale(base)
    path = tempfile.mkdtemp(prefix=PREFIX, dir=base)  # mode 0700
    with open(os.path.join(path, "pid"), "w") as f:
        f.write(f"{os.getpid()}\n")
    return path


def remove_stale(base: str) -> None:
    """Remove the run directories of supervisors that are gone (killed by SIGKILL)."""
    try:
        entries = os.listdir(base)
    except OSError:
        return
    me = os.getuid()
    for entry in entries:
        if not entry.startswith(PREFIX):
            continue
        path = os.path.join(base, entry)
        try:
            if os.lstat(path).st_uid != me or not os.path.isdir(path):
                continue
            with open(os.path.join(path, "pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue  # not one of ours, or one being created right now
        if _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info(
            "removed the run directory of a supervisor that is gone",
            extra={"kv": {"path": path, "old_pid": pid}},
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_files(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
