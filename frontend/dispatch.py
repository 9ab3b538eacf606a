"""The API process's side of the data plane: route each request to a worker of its model, and
wait for the answer (runs in the API process).

Workers of every model connect to us (ROUTER for requests, PULL for answers) and announce
themselves; each joins its model's pool. A request goes to the worker of its model with the least
work, counted across all API processes on the load board (board.py); ties are broken from a
different worker in each API process, so that requests arriving at the same moment on two API
processes go to two workers. A worker holds at most its `window` of requests from all API
processes together; beyond that, requests wait here, in a bounded queue per model, where a
worker's death cannot take them, and go to the first worker with room.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from ferryman import protocol as p
from ferryman.board import Board
from ferryman.logs import kv
from ferryman.zmqio import Reader

log = logging.getLogger("ferryman.api")

SWEEP_INTERVAL = 0.05  # how late a timeout may fire
QUEUE_POLL = 0.002  # while requests wait here, how often to look for a worker with room
# How long a request waits for a worker the supervisor has seen ready but that has not reached
# this API process yet (both just started), before it is refused with 503.
JOIN_WAIT = 5.0


class Unavailable(Exception):
    """503: no worker can take the request (none ready, queue full, or its worker died)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _no_worker(model: str) -> Unavailable:
    return Unavailable("no_worker", f"no worker of model {model!r} is ready")


class Expired(Exception):
    """504: the request's deadline passed."""


class Link:
    """A worker, as this API process sees it."""

    __slots__ = (
        "capacity", "column", "context", "device", "draining", "healthy", "ident", "in_flight",
        "index", "litserve", "model", "name", "pid", "sent", "slot", "window",
    )  # fmt: skip

    def __init__(self, ident: bytes, msg: p.WorkerReady, board: Board, row: int) -> None:
        self.ident = ident
        self.name = msg.worker
        self.model = msg.model
        self.slot = msg.slot
        self.pid = msg.pid
        self.device = msg.device
        self.capacity = max(1, msg.capacity)
        self.window = max(1, msg.window)
        self.context = msg.context  # wants each request's headers and query
        self.litserve = msg.litserve
        self.healthy = msg.healthy  # its API's health(), for LitServe's /health
        self.in_flight: dict[int, Job] = {}
        self.draining = False
        self.column = board.column(msg.cell)  # every API process's count for this worker
        self.index = board.index(msg.cell, row)  # our cell in it
        self.sent = 0


class Job:
    __slots__ = (
        "body", "chunks", "closed", "deadline", "expires", "fut", "headers", "id", "link",
        "model", "query", "route",
    )  # fmt: skip

    def __init__(
        self,
        id: int,
        model: str,
        route: str,
        body: bytes,
        headers: Any,
        query: bytes,
        deadline: float,
        fut: asyncio.Future[Any],
    ) -> None:
        self.id = id
        self.model = model
        self.route = route
        self.body = body
        self.headers = headers
        self.query = query
        self.deadline = deadline  # time.monotonic(), set once when taken; 0.0: none
        self.expires = deadline  # when this process answers 504 (0.0: it does not)
        self.fut = fut
        self.link: Link | None = None
        self.chunks: asyncio.Queue[tuple[bytes, bool] | BaseException] | None = None
        self.closed = False  # the HTTP side has its answer (or gave up); late messages are dropped


class Pool:
    """One model's workers, as this API process sees them, and its queue."""

    __slots__ = ("expected", "joined", "litserve", "name", "pending", "ready", "timeout")

    def __init__(self, name: str, timeout: float | None) -> None:
        self.name = name
        self.timeout = timeout
        self.ready: list[Link] = []
        self.pending: deque[Job] = deque()
        self.litserve = False  # LitServe's conventions, as its workers say
        self.expected: frozenset[str] = frozenset()  # ready workers, as the supervisor says
        self.joined: set[str] = set()  # workers that reached us (and may have left since)

    def awaited(self) -> bool:
        """A worker the supervisor saw ready has not reached this API process yet."""
        return not self.expected <= self.joined


class Dispatcher:
    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: p.ApiEndpoint,
        board: Board,
        max_queue: int,
    ) -> None:
        self.router = p.make_socket(ctx, zmq.ROUTER, bind=endpoint.requests)
        self.pull = p.make_socket(ctx, zmq.PULL, bind=endpoint.replies)
        self.board = board
        self.row = endpoint.row
        self.max_queue = max_queue
        self.pools: dict[str, Pool] = {}
        self.links: dict[bytes, Link] = {}
        self.jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._turn = endpoint.row  # where tie-breaking starts: different in each API process
        self._ready_changed = asyncio.Event()
        self.on_change: Callable[[], None] = lambda: None  # the set of ready workers changed
        self._queue_timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self._sweeper = asyncio.ensure_future(self._sweep())
        self._router_reader = Reader(self.loop, self.router, self._on_router)
        self._pull_reader = Reader(self.loop, self.pull, self._on_pull, pairs=True)

    # -- models ----------------------------------------------------------------------------------

    def set_models(self, routes: list[p.ModelRoute]) -> None:
        """The models this server routes to now: new ones get a pool; a removed one's queue is
        answered 503 (its workers finish what they hold and leave)."""
        wanted = {r.name: r for r in routes}
        for r in routes:
            pool = self.pools.get(r.name)
            if pool is None:
                pool = self.pools[r.name] = Pool(r.name, r.timeout)
            else:
                pool.timeout = r.timeout
            pool.expected = frozenset(r.workers)
            pool.joined &= pool.expected | {link.name for link in pool.ready}
            if not pool.ready and not pool.awaited():
                self._fail_queue(pool, _no_worker(r.name))
        for name, pool in list(self.pools.items()):
            if name not in wanted:
                self._fail_queue(pool, Unavailable("no_worker", f"model {name!r} was removed"))
                if not pool.ready:
                    del self.pools[name]

    def pool(self, model: str) -> Pool | None:
        return self.pools.get(model)

    # -- the HTTP side -----------------------------------------------------------------------------

    def submit(
        self, model: str, route: str, body: bytes, headers: Any = None, query: bytes = b""
    ) -> Job:
        pool = self.pools.get(model)
        if pool is None or not pool.ready:
            if pool is None or not pool.awaited():
                raise Unavailable(
                    "no_worker", f"no worker of model {model!r} is ready; retry shortly"
                )
            link = None
            room = False
        else:
            link = self._pick(pool)
            room = sum(link.column) < link.window
        if not room and len(pool.pending) >= self.max_queue:
            raise Unavailable("overloaded", "the request queue is full; retry shortly")
        deadline = time.monotonic() + pool.timeout if pool.timeout else 0.0
        job = Job(
            next(self._ids), model, route, body, headers, query, deadline, self.loop.create_future()
        )
        self.jobs[job.id] = job
        if link is None:
            # Its workers are on their way here: wait for them, though not for long.
            join_by = time.monotonic() + JOIN_WAIT
            job.expires = min(deadline, join_by) if deadline else join_by
            pool.pending.append(job)
        elif room:
            self._send(link, job)
        else:
            pool.pending.append(job)
            self._watch_queue()
        return job

    async def next_chunk(self, job: Job) -> tuple[bytes, bool]:
        """The next piece of a streamed answer: (body, more)."""
        assert job.chunks is not None
        item = await job.chunks.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def give_up(self, job: Job) -> None:
        """The client went away: stop the worker, drop whatever it still sends."""
        if job.closed:
            return
        job.closed = True
        job.expires = 0.0
        if job.link is None:
            self._unqueue(job)
        else:
            self._cancel_remote(job)

    def finish(self, job: Job) -> None:
        """The HTTP side has sent everything."""
        job.closed = True
        job.expires = 0.0

    def ready_count(self, model: str | None = None) -> int:
        if model is not None:
            pool = self.pools.get(model)
            return len(pool.ready) if pool is not None else 0
        return sum(len(pool.ready) for pool in self.pools.values())

    def ready_workers(self) -> list[str]:
        return [link.name for pool in self.pools.values() for link in pool.ready]

    def litserve(self, model: str) -> bool:
        pool = self.pools.get(model)
        return pool is not None and pool.litserve

    def healthy(self, model: str) -> bool:
        """No ready worker of the model says its API's health() is false."""
        pool = self.pools.get(model)
        return pool is None or all(link.healthy for link in pool.ready)

    async def wait_for_workers(self, n: int, timeout: float, settle: float = 0.5) -> None:
        """Until `n` workers are ready; or every model has one and no other has joined for
        `settle` seconds (some of the `n` left before they reached us: a scale down, a crash;
        they never come); or `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.ready_count() < n:
            self._ready_changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.pools and all(pool.ready for pool in self.pools.values()):
                left = min(left, settle)
            try:
                await asyncio.wait_for(self._ready_changed.wait(), left)
            except TimeoutError:
                return

    def _pick(self, pool: Pool) -> Link:
        """The worker with the least work from every API process; ties go round, starting at a
        different worker in each API process."""
        ready = pool.ready
        n = len(ready)
        if n == 1:
            return ready[0]
        self._turn = start = self._turn + 1
        best = ready[start % n]
        best_load = sum(best.column) / best.capacity
        if best_load == 0:
            return best
        for i in range(1, n):
            link = ready[(start + i) % n]
            load = sum(link.column) / link.capacity
            if load < best_load:
                best, best_load = link, load
                if load == 0:
                    break
        return best

    # -- the supervisor's word ---------------------------------------------------------------------

    def worker_gone(self, name: str, reason: str) -> None:
        link = next((lk for lk in self.links.values() if lk.name == name), None)
        if link is not None:
            self._drop(link, reason)
        for pool in self.pools.values():
            if name in pool.expected:  # it will not reach us: stop waiting for it
                pool.expected = pool.expected - {name}
                if not pool.ready and not pool.awaited():
                    self._fail_queue(pool, _no_worker(pool.name))

    # -- sockets -----------------------------------------------------------------------------------

    def _send(self, link: Link, job: Job) -> None:
        job.link = link
        if link.litserve:
            job.expires = 0.0  # LitServe's timeout counts only the wait before predict: the
            # worker answers 504 for one that waited too long; once it runs, it runs.
        else:
            job.expires = job.deadline  # it may have waited for a worker to join, on a shorter one
        link.in_flight[job.id] = job
        board = self.board
        board.outstanding[link.index] = len(link.in_flight)
        link.sent += 1
        board.sent[link.index] = link.sent  # before the send: a worker never sees more than this
        if link.context:
            header = p.encode(p.Work(job.id, job.route, job.deadline, job.headers, job.query))
        elif link.litserve:
            ctype = next((v for k, v in job.headers or () if k == b"content-type"), b"")
            header = p.encode(p.Work(job.id, job.route, job.deadline, content_type=ctype))
        else:
            header = p.encode(p.Work(job.id, job.route, job.deadline))
        try:
            p.send_routed_pair(self.router, link.ident, header, job.body)
        except zmq.ZMQError:
            # EHOSTUNREACH: its connection is gone, whoever has not told us yet. Nothing was
            # queued for it, so this request goes to another worker.
            del link.in_flight[job.id]
            link.sent -= 1  # it never left: a worker must not wait for it
            self.board.sent[link.index] = link.sent
            job.link = None
            job.expires = job.deadline
            self._drop(link, "its connection closed")
            pool = self.pools.get(job.model)
            if pool is not None and pool.ready:
                pool.pending.appendleft(job)
                self._pump(pool)
            else:
                self.jobs.pop(job.id, None)
                job.closed = True
                self._fail(job, _no_worker(job.model))
        # No kick() here: what arrives on this ROUTER (READY, LEAVING) is rare, and the sweeper
        # drains it every SWEEP_INTERVAL in case a send consumed the FD's edge.

    def _on_router(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            return
        ident = frames[0]
        try:
            msg = p.from_worker_dealer(frames[1])
        except Exception:
            log.warning("dropped a malformed message from a worker")
            return
        if isinstance(msg, p.WorkerReady):
            if ident in self.links:
                return
            link = Link(ident, msg, self.board, self.row)
            self.links[ident] = link
            pool = self.pools.get(msg.model)
            if pool is None:  # a model we have not heard of yet (added a moment ago)
                pool = self.pools[msg.model] = Pool(msg.model, None)
            pool.ready.append(link)
            pool.joined.add(link.name)
            pool.litserve = msg.litserve
            for job in pool.pending:  # those that waited for a worker to join: the wait is over
                job.expires = job.deadline
            self._ready_changed.set()
            self.on_change()
            log.debug("worker joined", extra=kv(worker=link.name, model=link.model, pid=link.pid))
            self._pump(pool)
        elif isinstance(msg, p.WorkerHealth):
            link = self.links.get(ident)  # type: ignore[assignment]
            if link is not None:
                link.healthy = msg.healthy
        elif isinstance(msg, p.WorkerLeaving):
            link = self.links.get(ident)  # type: ignore[assignment]
            if link is not None and not link.draining:
                link.draining = True
                pool = self.pools.get(link.model)
                if pool is not None and link in pool.ready:
                    pool.ready.remove(link)
                self._ready_changed.set()
                self.on_change()
            try:
                p.send_routed_pair(self.router, ident, p.encode(p.LeaveAck()), p.EMPTY)
            except zmq.ZMQError:
                pass
            self._router_reader.kick()

    def _on_pull(self, frames: list[bytes]) -> None:
        try:
            msg = p.from_worker_push(frames[0])
        except Exception:
            log.warning("dropped a malformed answer from a worker")
            return
        job = self.jobs.get(msg.id)
        if job is None:
            return
        body = frames[1]
        if type(msg) is p.Reply:
            if not msg.more:
                self._settle(job)
            elif not job.closed:
                job.chunks = asyncio.Queue()
                self._rearm(job)  # a stream's timeout applies to each item, not to the whole
            if not job.fut.done():
                job.fut.set_result((msg, body))
        else:  # Chunk
            if not msg.more:
                self._settle(job)
            if not job.closed and job.chunks is not None:
                job.chunks.put_nowait((body, msg.more))
                if msg.more:
                    self._rearm(job)

    # -- bookkeeping -------------------------------------------------------------------------------

    def _settle(self, job: Job) -> None:
        """The worker is done with the job: it no longer counts against that worker."""
        self.jobs.pop(job.id, None)
        link = job.link
        if link is not None:
            link.in_flight.pop(job.id, None)
            if link.ident in self.links:
                self.board.outstanding[link.index] = len(link.in_flight)
            pool = self.pools.get(link.model)
            if pool is not None and pool.pending:
                self._pump(pool)

    def _pump(self, pool: Pool) -> None:
        """Send queued requests to the workers with room, least loaded first."""
        while pool.pending and pool.ready:
            link = self._pick(pool)
            if sum(link.column) >= link.window:
                self._watch_queue()
                return
            job = pool.pending.popleft()
            if not job.closed:
                self._send(link, job)

    def _watch_queue(self) -> None:
        """While requests wait here, look for room every QUEUE_POLL: a worker freed by another
        API process's request says nothing to us, only the board shows it."""
        if self._queue_timer is None:
            self._queue_timer = self.loop.call_later(QUEUE_POLL, self._queue_tick)

    def _queue_tick(self) -> None:
        self._queue_timer = None
        waiting = False
        for pool in list(self.pools.values()):
            if pool.pending:
                self._pump(pool)
                waiting = waiting or bool(pool.pending)
        if waiting:
            self._watch_queue()

    def _unqueue(self, job: Job) -> None:
        """A request that waited here and is answered otherwise (expired, client gone) leaves
        the queue at once, so that it no longer counts against max_queue."""
        self.jobs.pop(job.id, None)
        pool = self.pools.get(job.model)
        if pool is not None:
            try:
                pool.pending.remove(job)
            except ValueError:
                pass

    def _rearm(self, job: Job) -> None:
        pool = self.pools.get(job.model)
        if pool is not None and pool.timeout and not (job.link and job.link.litserve):
            job.expires = time.monotonic() + pool.timeout

    async def _sweep(self) -> None:
        # A periodic sweep instead of a TimerHandle per request: call_later + cancel cost more
        # than the rest of the bookkeeping, and the sweep only walks requests in flight.
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self._router_reader.drain()
                now = time.monotonic()
                expired = [j for j in self.jobs.values() if j.expires and j.expires <= now]
                for job in expired:
                    self._expire(job)
            except Exception as e:  # the sweep is what answers timeouts: it must go on
                log.error(f"dispatcher sweep failed: {e!r}", exc_info=e)

    def _expire(self, job: Job) -> None:
        job.expires = 0.0
        if job.closed:
            return
        job.closed = True
        if job.link is None:
            self._unqueue(job)
        else:
            self._cancel_remote(job)
        pool = self.pools.get(job.model)
        if job.link is None and (pool is None or not pool.ready):
            # It waited for a worker to reach this API process, and none did.
            self._fail(job, _no_worker(job.model))
            return
        timeout = pool.timeout if pool is not None and pool.timeout else 0
        self._fail(job, Expired(f"no answer within the {timeout:g} s timeout"))

    def _cancel_remote(self, job: Job) -> None:
        link = job.link
        if link is None or link.ident not in self.links:
            self.jobs.pop(job.id, None)
            return
        try:
            p.send_routed_pair(self.router, link.ident, p.encode(p.Cancel(job.id)), p.EMPTY)
        except zmq.ZMQError:
            pass
        self._router_reader.kick()

    def _fail(self, job: Job, err: BaseException) -> None:
        if not job.fut.done():
            job.fut.set_exception(err)
            job.fut.exception()  # mark retrieved: the HTTP side may be gone already
        elif job.chunks is not None:
            job.chunks.put_nowait(err)

    def _fail_queue(self, pool: Pool, err: Unavailable) -> None:
        while pool.pending:
            job = pool.pending.popleft()
            self.jobs.pop(job.id, None)
            if not job.closed:
                job.closed = True
                self._fail(job, err)

    def _drop(self, link: Link, reason: str) -> None:
        """A worker is gone: fail what it held, hand the queue to the others."""
        if self.links.pop(link.ident, None) is None:
            return
        self.board.outstanding[link.index] = 0
        pool = self.pools.get(link.model)
        if pool is not None and link in pool.ready:
            pool.ready.remove(link)
        self._ready_changed.set()
        self.on_change()
        held = list(link.in_flight.values())
        link.in_flight.clear()
        if held:
            log.warning(
                "worker gone with requests in flight",
                extra=kv(
                    worker=link.name,
                    model=link.model,
                    worker_pid=link.pid,
                    failed=len(held),
                    reason=reason,
                ),
            )
        for job in held:
            self.jobs.pop(job.id, None)
            if not job.closed:
                job.closed = True
                self._fail(
                    job,
                    Unavailable(
                        "worker_died",
                        f"worker {link.slot} of model {link.model!r} (pid {link.pid}) died while "
                        f"handling the request: {reason}",
                    ),
                )
        if pool is None:
            return
        if pool.ready:
            self._pump(pool)
        elif not pool.awaited():
            self._fail_queue(pool, _no_worker(pool.name))

    def describe_workers(self) -> list[dict[str, Any]]:
        return [
            {
                "worker": lk.name,
                "model": lk.model,
                "slot": lk.slot,
                "pid": lk.pid,
                "device": lk.device,
                "in_flight": len(lk.in_flight),
                "load": sum(lk.column),
                "draining": lk.draining,
            }
            for lk in self.links.values()
        ]

    def close(self) -> None:
        self._sweeper.cancel()
        if self._queue_timer is not None:
            self._queue_timer.cancel()
        self._router_reader.close()
        self._pull_reader.close()
        for link in self.links.values():
            self.board.outstanding[link.index] = 0
        self.router.close(0)
        self.pull.close(0)
