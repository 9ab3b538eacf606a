"""The load board: per worker, what every API process has sent it, in shared memory.

Used by API processes and workers; the supervisor creates it and hands out its rows and cells.

Each API process counts, per worker, the requests it has sent that are not answered yet, so that
it can route to the least-loaded worker. Counting only its own would let two API processes pile
onto one worker while another idles, so the counts live in one shared file in the run directory
(nginx keeps `least_conn` counts in a shared memory zone across its worker processes for the same
reason): every API process writes its own row, every reader sums a worker's column. No message is
exchanged on the request path and no lock is taken: each cell has one writer, and an aligned
8-byte store is atomic on the machines ferryman runs on; a read that races a write is off by one
request for a moment, which routing tolerates.

Two tables of int64, cell-major so that one worker's column is contiguous:
  outstanding[cell][row]  requests API process `row` sent to worker `cell` and has not settled
  sent[cell][row]         requests API process `row` ever sent to worker `cell` (monotonic)

A worker compares `sent` with what it received from each API process: the difference is on its
way, which tells its batching whether waiting for more will pay.

Rows (API process incarnations) and cells (worker incarnations) are handed out by the supervisor,
zeroed when handed out and when their process exits, and not reused for a while after.
"""

from __future__ import annotations

import mmap
import os
import time

ROWS = 64
CELLS = 1024
_WORD = 8
TABLE = ROWS * CELLS * _WORD
SIZE = 2 * TABLE


class Board:
    def __init__(self, path: str, create: bool = False) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, SIZE)
            self.mm = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        view = memoryview(self.mm).cast("q")
        self.outstanding = view[: ROWS * CELLS]
        self.sent = view[ROWS * CELLS :]

    def column(self, cell: int) -> memoryview:
        """One worker's outstanding counts, one per API process row: sum() it for its load."""
        return self.outstanding[cell * ROWS : (cell + 1) * ROWS]

    def index(self, cell: int, row: int) -> int:
        return cell * ROWS + row

    def clear_row(self, row: int) -> None:
        for cell in range(CELLS):
            i = cell * ROWS + row
            self.outstanding[i] = 0
            self.sent[i] = 0

    def clear_cell(self, cell: int) -> None:
        start = cell * ROWS
        for i in range(start, start + ROWS):
            self.outstanding[i] = 0
            self.sent[i] = 0

    def close(self) -> None:
        self.outstanding.release()
        self.sent.release()
        try:
            self.mm.close()
        except BufferError:  # a view still held somewhere: the mapping goes with the process
            pass


class Allocator:
    """Hands out rows or cells (supervisor side): the lowest one not in use and not released in
    the last `quarantine` seconds, so that a late write by a process that has not yet heard of
    an exit never lands on a newcomer's counts."""

    def __init__(self, size: int, quarantine: float = 10.0) -> None:
        self.size = size
        self.quarantine = quarantine
        self.used: set[int] = set()
        self.released: dict[int, float] = {}

    def take(self) -> int:
        now = time.monotonic()
        for i in range(self.size):
            if i in self.used:
                continue
            if now - self.released.get(i, -1e9) < self.quarantine:
                continue
            self.used.add(i)
            self.released.pop(i, None)
            return i
        # Everything in use or quarantined: take the oldest released one.
        if self.released:
            i = min(self.released, key=self.released.__getitem__)
            del self.released[i]
            self.used.add(i)
            return i
        raise RuntimeError(f"more than {self.size} processes at once")

    def release(self, i: int) -> None:
        if i in self.used:
            self.used.discard(i)
            self.released[i] = time.monotonic()
