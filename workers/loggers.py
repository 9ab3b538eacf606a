"""LitServe's loggers, run in the inference worker: `self.log(key, value)` reaches every
`Logger.process(key, value)` of the LitServer's `loggers=`.

LitServe runs them in one separate process fed by a queue. ferryman's supervisor never holds user
code, so each worker runs its own copies of them, on a thread of their own: `log()` only puts the
pair on a queue and returns, as in LitServe, and a slow logger never holds up a request. Entries
are processed in the order one worker logged them; with several workers each has its own loggers
(a logger writing a file then has one writer per worker).

The launcher attaches the loggers to the pickled LitAPI as `LITSERVER_LOGGERS`: each a
`litserve.Logger`, or, for one that cannot be pickled, its class (or LitServe's `_LoggerProxy`),
re-created here with no arguments, as LitServe does.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from ferryman.logs import kv

log = logging.getLogger("ferryman.worker")

# The attribute of a pickled LitAPI that holds its LitServer's loggers= (set by the launcher).
LITSERVER_LOGGERS = "_ferryman_loggers"

_STOP = object()


def configured(api: Any) -> list[Any]:
    found = getattr(api, LITSERVER_LOGGERS, None)
    if not found:
        return []
    return list(found) if isinstance(found, list | tuple) else [found]


def _instance(entry: Any) -> Any:
    if isinstance(entry, type):
        return entry()
    create = getattr(entry, "create_logger", None)  # litserve.loggers._LoggerProxy
    if callable(create) and not hasattr(entry, "process"):
        return create()
    return entry


class LoggerThread:
    """A queue with `put((key, value))`, as LitAPI.set_logger_queue expects, and the thread that
    hands each entry to every logger."""

    def __init__(self, entries: list[Any]) -> None:
        self.loggers = [_instance(e) for e in entries]
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="litserve-loggers", daemon=True)
        self.thread.start()

    def put(self, item: Any) -> None:
        self.queue.put(item)

    def close(self, timeout: float = 5.0) -> None:
        """Process what was logged so far, then stop."""
        self.queue.put(_STOP)
        self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            try:
                key, value = item
            except (TypeError, ValueError):
                continue
            for logger in self.loggers:
                try:
                    logger.process(key, value)
                except Exception as e:  # as LitServe: logged, and the next entry goes on
                    log.error(
                        f"{type(logger).__name__} ran into an error while processing log for "
                        f"entry with key {key} and value {value}: {e}",
                        extra=kv(key=str(key)),
                    )


class WorkerLog:
    """Without loggers: `self.log()` lands in the worker's log."""

    def __init__(self, api_name: str) -> None:
        self.api_name = api_name

    def put(self, item: Any) -> None:
        key, value = item
        log.info(f"{self.api_name}.log {key}={value!r}", extra=kv(key=str(key)))

    def close(self, timeout: float = 0.0) -> None:
        pass
