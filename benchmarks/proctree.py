"""Process trees from /proc: who belongs to a peer, how much memory they hold, and killing them.

Every peer is measured as the whole tree under the pid the suite started (ferryman's supervisor,
LitServe's main process, uvicorn's manager), found by parent links, because the peers start their
children differently (new sessions, multiprocessing spawn, forks) and no single process group or
session covers all of them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

PROC = "/proc"


def parse_stat(text: str) -> tuple[str, str, int]:
    """(comm, state, ppid) from the text of /proc/<pid>/stat.

    comm sits in parentheses and may itself contain spaces and ')', so split at the last one.
    """
    head, _, tail = text.rpartition(")")
    comm = head.partition("(")[2]
    fields = tail.split()
    return comm, fields[0], int(fields[1])


def parent_map(proc: str = PROC) -> dict[int, int]:
    """pid -> ppid for every live (non-zombie) process."""
    out: dict[int, int] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat") as f:
                _, state, ppid = parse_stat(f.read())
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        if state != "Z":
            out[int(entry)] = ppid
    return out


def descendants(root: int, parents: dict[int, int]) -> list[int]:
    """root's children, grandchildren, ... (not root), breadth first."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    queue = list(children.get(root, ()))
    seen = {root}
    while queue:
        pid = queue.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        out.append(pid)
        queue.extend(children.get(pid, ()))
    return out


def tree(root: int, proc: str = PROC) -> list[int]:
    """root and all its live descendants; empty when root is gone."""
    parents = parent_map(proc)
    if root not in parents:
        return []
    return [root, *descendants(root, parents)]


def alive(pid: int, proc: str = PROC) -> bool:
    try:
        with open(f"{proc}/{pid}/stat") as f:
            return parse_stat(f.read())[1] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def status_kb(pid: int, field: str, proc: str = PROC) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM); 0 when the process is gone."""
    try:
        with open(f"{proc}/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def pss_kb(pid: int, proc: str = PROC) -> int:
    """Proportional set size: shared pages split among their users, so a sum over a tree of
    forked processes does not count copy-on-write pages once per process as RSS does."""
    try:
        with open(f"{proc}/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class Memory:
    processes: int
    rss_mb: float
    pss_mb: float
    root_rss_mb: float


def memory(root: int, proc: str = PROC) -> Memory:
    pids = tree(root, proc)
    rss = sum(status_kb(p, "VmRSS", proc) for p in pids)
    pss = sum(pss_kb(p, proc) for p in pids)
    root_rss = status_kb(root, "VmRSS", proc) if pids else 0
    return Memory(len(pids), rss / 1024, pss / 1024, root_rss / 1024)


def kill_all(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_gone(pids: Iterable[int], timeout: float) -> bool:
    pending = list(pids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if alive(p)]
        if pending:
            time.sleep(0.05)
    return not pending
