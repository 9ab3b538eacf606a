"""Splits a batch's stream into one stream per request, in the inference worker.

`source` yields, per step of the batch's predict, a list with one item per request. A request's
stream advances the source only when it has nothing buffered, so predict runs once for the batch
while each request's encode_response consumes its own items, in order, at its own pace. An error
in the source ends every request's stream (after what was buffered for it) with that error. The
source may be a generator or an async generator; the streams are of the same kind.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ferryman.workers.codecs import BatchSizeMismatch


class FanOut:
    __slots__ = ("done", "error", "live", "logged", "n", "queues", "source")

    def __init__(self, source: Any, n: int) -> None:
        self.source = source
        self.n = n
        self.queues: list[deque[Any]] = [deque() for _ in range(n)]
        self.live = [True] * n
        self.done = False
        self.error: Exception | None = None
        self.logged = False  # the source's error was logged (once for the batch)

    def stream(self, i: int) -> Iterator[Any]:
        q = self.queues[i]
        while True:
            if q:
                yield q.popleft()
            elif self.done:
                if self.error is not None:
                    raise self.error
                return
            else:
                try:
                    self._spread(next(self.source))
                except StopIteration:
                    self.done = True
                except Exception as e:
                    self._fail(e)

    async def astream(self, i: int) -> AsyncIterator[Any]:
        q = self.queues[i]
        while True:
            if q:
                yield q.popleft()
            elif self.done:
                if self.error is not None:
                    raise self.error
                return
            else:
                try:
                    self._spread(await self.source.__anext__())
                except StopAsyncIteration:
                    self.done = True
                except Exception as e:
                    self._fail(e)

    def _spread(self, parts: Any) -> None:
        if len(parts) != self.n:
            raise BatchSizeMismatch(
                f"unbatch returned {len(parts)} items for a batch of {self.n} streams"
            )
        for i, part in enumerate(parts):
            if self.live[i]:
                self.queues[i].append(part)

    def _fail(self, e: Exception) -> None:
        self.done = True
        self.error = e

    def drop(self, i: int) -> None:
        """Request i left: buffer nothing more for it."""
        self.live[i] = False
        self.queues[i].clear()
