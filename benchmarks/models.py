"""The model code every peer runs: one definition, one thin adapter per peer (peers/).

Imported by the ferryman worker, by the bare uvicorn app and by the other peers' model processes
(each in the suite's own virtual environment for that peer, through PYTHONPATH), so it must
depend on the standard library only.

The batching model sleeps instead of spinning: it stands for device time (a GPU kernel), during
which the CPU is free. On the 2-core benchmark machine a spinning model would steal the cores the
API processes need and turn every scenario into a CPU-contention measurement.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator

BATCH_FIXED_S = 0.002  # per predict call, whatever the batch size
BATCH_ITEM_S = 0.0001  # per request in the batch
# The batching case (g): a costlier call, so that batching on and off differ by far.
CASE_FIXED_S = 0.003
CASE_ITEM_S = 0.0001
STREAM_ITEMS = 256

STATS_ENV = "BENCH_STATS_DIR"
MODEL_ENV = "BENCH_MODEL"
COUNT_ENV = "BENCH_COUNT_BATCHES"
# Set for every peer; read by the adapters configured in code rather than by flags (BentoML's
# decorators). A size of 0 or 1 is no batching.
MAX_BATCH_ENV = "BENCH_MAX_BATCH_SIZE"
BATCH_TIMEOUT_ENV = "BENCH_BATCH_TIMEOUT"
FLUSH_EVERY_S = 0.1


def trivial(x: int) -> int:
    return x * 2


def batched(xs: list[int]) -> list[int]:
    time.sleep(BATCH_FIXED_S + BATCH_ITEM_S * len(xs))
    return [x * 2 for x in xs]


def batchcase(xs: list[int]) -> list[int]:
    time.sleep(CASE_FIXED_S + CASE_ITEM_S * len(xs))
    return [x * 2 for x in xs]


# The models whose predict takes a list (a batch) when the server batches; served one request per
# call (`one`) when it does not.
BATCH_MODELS: dict[str, Callable[[list[int]], list[int]]] = {
    "batched": batched,
    "batchcase": batchcase,
}


def one(model: str, x: int) -> int:
    """One request through a batch model, or through the trivial one."""
    fn = BATCH_MODELS.get(model)
    return fn([x])[0] if fn is not None else trivial(x)


def batching_from_env() -> tuple[int, float]:
    """(max batch size, batch timeout s) as the suite set them for this peer; size <= 1: off."""
    return int(os.environ.get(MAX_BATCH_ENV, "1")), float(os.environ.get(BATCH_TIMEOUT_ENV, "0"))


def stream(x: int) -> Iterator[int]:
    for i in range(STREAM_ITEMS):
        yield x + i


class Recorder:
    """What each model process tells the suite, through small files in $BENCH_STATS_DIR.

    setup-<pid>   wall time at which setup finished (which processes are workers, and when a
                  replacement came up)
    first-<pid>   wall time of the first predict (when a slot serves again after a kill)
    stats-<pid>   {"calls": n, "items": m}: predict calls and requests in them (mean batch size
                  for peers that do not export it); only with $BENCH_COUNT_BATCHES=1, rewritten
                  at most every FLUSH_EVERY_S. A rewrite costs ~2 ms on a busy disk (py-spy: 10%
                  of a trivial worker's busy time), so the scenarios that do not need it skip it.

    Without $BENCH_STATS_DIR every method is a no-op.
    """

    def __init__(self) -> None:
        self.dir = os.environ.get(STATS_ENV) or None
        self.pid = os.getpid()
        self.calls = 0
        self.items = 0
        self.first_done = False
        self.count = os.environ.get(COUNT_ENV) == "1"
        self.next_flush = 0.0

    def setup(self) -> None:
        # Workers forked or spawned after __init__ must report their own pid.
        self.pid = os.getpid()
        self.calls = self.items = 0
        self.first_done = False
        if self.dir:
            _write(os.path.join(self.dir, f"setup-{self.pid}"), repr(time.time()))

    def predicted(self, n: int = 1) -> None:
        if self.dir is None:
            return
        self.calls += 1
        self.items += n
        if not self.first_done:
            self.first_done = True
            _write(os.path.join(self.dir, f"first-{self.pid}"), repr(time.time()))
        if not self.count:
            return
        now = time.monotonic()
        if now >= self.next_flush:
            self.next_flush = now + FLUSH_EVERY_S
            self.flush()

    def flush(self) -> None:
        if self.dir:
            body = json.dumps({"calls": self.calls, "items": self.items})
            _write(os.path.join(self.dir, f"stats-{self.pid}"), body)


def _write(path: str, text: str) -> None:
    # Write then rename: the suite may read the file at any moment.
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
