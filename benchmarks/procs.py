"""Every process the suite starts goes through here, so that none outlives it.

Each is started in a session of its own (so its process group can be signalled without touching
the suite) and registered; `cleanup()` runs from try/finally, atexit and the SIGTERM handler, and
kills each registered process group and each descendant still found in /proc.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from benchmarks import proctree

_lock = threading.Lock()
_started: dict[int, subprocess.Popen[Any]] = {}


def spawn(
    cmd: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    log: IO[Any] | int | None = subprocess.DEVNULL,
    stdout: IO[Any] | int | None = None,
) -> subprocess.Popen[Any]:
    p = subprocess.Popen(
        list(cmd),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log if stdout is None else stdout,
        stderr=log,
        start_new_session=True,
    )
    with _lock:
        _started[p.pid] = p
    return p


def stop(p: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """SIGTERM the process's group, give it `grace` seconds, then SIGKILL its whole tree.

    The tree is read before anything is signalled: once the root is gone its children are
    re-parented and can no longer be found from it.
    """
    family = proctree.tree(p.pid) if p.poll() is None else []
    try:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        family += [q for q in proctree.tree(p.pid) if q not in family]
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proctree.kill_all([q for q in family if q != p.pid])
        if p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        proctree.wait_gone(family, timeout=5)
        with _lock:
            _started.pop(p.pid, None)


def run_bounded(cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run to completion and return stdout+stderr; past `timeout`, kill it and raise."""
    p = spawn(cmd, env=env, log=subprocess.STDOUT, stdout=subprocess.PIPE)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(p, grace=0.5)
        raise RuntimeError(f"{cmd[0]} ran past {timeout:.0f}s and was killed") from None
    finally:
        if p.poll() is None:
            stop(p, grace=0.5)
        with _lock:
            _started.pop(p.pid, None)
    text = out.decode(errors="replace") if isinstance(out, bytes) else str(out or "")
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {p.returncode}:\n{text[-2000:]}")
    return text


def cleanup() -> None:
    with _lock:
        live = list(_started.values())
    for p in live:
        try:
            stop(p, grace=1.0)
        except Exception:
            pass
    if _subreaper:
        # Anything a peer left behind (a worker LitServe restarted while we stopped it, say)
        # was re-parented to us: still our descendant, so it can be found and ended.
        left = proctree.descendants(os.getpid(), proctree.parent_map())
        proctree.kill_all(left)
        proctree.wait_gone(left, timeout=5)
        _reap()


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


_subreaper = False


def _become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER: orphaned descendants are re-parented to us, not to init."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # 36: PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _on_sigterm(signum: int, frame: Any) -> None:
    # Turned into an exception so that every try/finally on the way out runs.
    raise KeyboardInterrupt(f"signal {signum}")


def install_handlers() -> None:
    global _subreaper
    _subreaper = _become_subreaper()
    atexit.register(cleanup)
    # Explicitly: a shell starts background jobs with SIGINT ignored, and Python then leaves it so.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
