"""The API process's side of the data plane: route each request to a worker and wait for its answer.

Workers connect to us (ROUTER for requests, PULL for answers) and announce themselves; each request
goes to the ready worker with the fewest requests in flight from this process. A worker holds at
most `window` of our requests; the rest wait in a bounded local queue, so that when a worker dies
only what it really held fails, and the queue is handed to the others.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from typing import Any

import zmq

from ferryman import protocol as p
from ferryman.logs import kv
from ferryman.zmqio import Reader

log = logging.getLogger("ferryman.api")

SWEEP_INTERVAL = 0.05  # how late a timeout may fire


class Unavailable(Exception):
    """503: no worker can take the request (none ready, queue full, or its worker died)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Expired(Exception):
    """504: the request's deadline passed."""


class Link:
    """A worker, as this API process sees it."""

    __slots__ = (
        "context", "device", "draining", "ident", "in_flight", "name", "pid", "slot", "window",
    )  # fmt: skip

    def __init__(self, ident: bytes, msg: p.WorkerReady) -> None:
        self.ident = ident
        self.name = msg.worker
        self.slot = msg.slot
        self.pid = msg.pid
        self.device = msg.device
        self.context = msg.context  # wants each request's headers
        # How many of our requests it may hold: enough to fill two batches, so one can be
        # collected while the other runs; the rest wait here, where a death cannot take them.
        self.window = max(4, 2 * msg.max_batch_size)
        self.in_flight: dict[int, Job] = {}
        self.draining = False


class Job:
    __slots__ = ("body", "chunks", "closed", "deadline", "fut", "headers", "id", "link", "route")

    def __init__(self, id: int, route: str, body: bytes, headers: Any, fut: asyncio.Future[Any]):
        self.id = id
        self.route = route
        self.body = body
        self.headers = headers
        self.fut = fut
        self.link: Link | None = None
        self.deadline = 0.0  # loop.time() after which it expires; 0: none
        self.chunks: asyncio.Queue[tuple[bytes, bool] | BaseException] | None = None
        self.closed = False  # the HTTP side has its answer (or gave up); late messages are dropped


class Dispatcher:
    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: p.ApiEndpoint,
        options: dict[str, Any],
    ) -> None:
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unknown worker: error, not silence
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(endpoint.requests)
        self.pull = ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.RCVHWM, 0)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.bind(endpoint.replies)
        self.timeout = float(options["timeout"])
        self.max_queue = int(options["max_queue"])
        self.links: dict[bytes, Link] = {}
        self.ready: list[Link] = []
        self.jobs: dict[int, Job] = {}
        self.pending: deque[Job] = deque()
        self._ids = itertools.count(1)
        self._turn = 0
        self._ready_changed = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self._sweeper = asyncio.ensure_future(self._sweep())
        self._router_reader = Reader(self.loop, self.router, self._on_router)
        self._pull_reader = Reader(self.loop, self.pull, self._on_pull, pairs=True)

    # -- the HTTP side -----------------------------------------------------------------------------

    def submit(self, route: str, body: bytes, headers: Any = None) -> Job:
        if not self.ready:
            raise Unavailable("no_worker", "no inference worker is ready; retry shortly")
        fut = self.loop.create_future()
        job = Job(next(self._ids), route, body, headers, fut)
        link = self._pick()
        if len(link.in_flight) >= link.window and len(self.pending) >= self.max_queue:
            raise Unavailable("overloaded", "the request queue is full; retry shortly")
        self.jobs[job.id] = job
        self._arm(job)
        if len(link.in_flight) < link.window:
            self._send(link, job)
        else:
            self.pending.append(job)
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
        self._disarm(job)
        self._cancel_remote(job)

    def finish(self, job: Job) -> None:
        """The HTTP side has sent everything."""
        job.closed = True
        self._disarm(job)

    @property
    def ready_count(self) -> int:
        return len(self.ready)

    async def wait_for_workers(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ready) < n:
            self._ready_changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(self._ready_changed.wait(), left)
            except TimeoutError:
                return

    def _pick(self) -> Link:
        """The ready worker with the fewest of our requests; ties rotate, so that an idle
        fleet shares the load instead of one worker taking every request."""
        ready = self.ready
        n = len(ready)
        if n == 1:
            return ready[0]
        self._turn = start = (self._turn + 1) % n
        best = ready[start]
        best_load = len(best.in_flight)
        for i in range(1, n):
            link = ready[(start + i) % n]
            load = len(link.in_flight)
            if load < best_load:
                best, best_load = link, load
        return best

    # -- the supervisor's word ---------------------------------------------------------------------

    def worker_gone(self, name: str, reason: str) -> None:
        link = next((lk for lk in self.links.values() if lk.name == name), None)
        if link is None:
            return
        self._drop(link, reason)

    # -- sockets -----------------------------------------------------------------------------------

    def _send(self, link: Link, job: Job) -> None:
        job.link = link
        link.in_flight[job.id] = job
        headers = job.headers if link.context else None
        header = p.encode(p.Work(job.id, job.route, time.monotonic() + self.timeout, headers))
        send = self.router.send
        try:
            send(link.ident, p.SNDMORE_NOBLOCK)
        except zmq.ZMQError:
            # EHOSTUNREACH: the worker's connection is gone even if nobody told us yet.
            self._drop(link, "its connection closed")
            return
        send(header, p.SNDMORE_NOBLOCK)
        send(job.body, p.NOBLOCK)
        # No kick() here: what arrives on this ROUTER (READY, LEAVING) is rare, and the sweeper
        # drains it every SWEEP_INTERVAL in case a send consumed the FD's edge.

    def _on_router(self, frames: list[bytes]) -> None:
        ident = frames[0]
        try:
            msg = p.from_worker_dealer(frames[1])
        except Exception:
            log.warning("dropped a malformed message from a worker")
            return
        if isinstance(msg, p.WorkerReady):
            if ident in self.links:
                return
            link = Link(ident, msg)
            self.links[ident] = link
            self.ready.append(link)
            self._ready_changed.set()
            log.debug("worker joined", extra=kv(worker=link.name, pid=link.pid))
            self._pump(link)
        elif isinstance(msg, p.WorkerLeaving):
            link = self.links.get(ident)  # type: ignore[assignment]
            if link is not None and not link.draining:
                link.draining = True
                if link in self.ready:
                    self.ready.remove(link)
                self._ready_changed.set()
            try:
                self.router.send_multipart((ident, p.encode(p.LeaveAck()), p.EMPTY), p.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._router_reader.kick()

    def _on_pull(self, frames: list[bytes]) -> None:
        msg = p.from_worker_push(frames[0])
        job = self.jobs.get(msg.id)
        if job is None:
            return
        body = frames[1]
        if type(msg) is p.Reply:
            if not msg.more:
                self._settle(job)
            elif not job.closed:
                job.chunks = asyncio.Queue()
                self._arm(job)  # a stream's deadline applies to each item, not to the whole
            if not job.closed and not job.fut.done():
                job.fut.set_result((msg, body))
        else:  # Chunk
            if not msg.more:
                self._settle(job)
            if not job.closed and job.chunks is not None:
                job.chunks.put_nowait((body, msg.more))
                if msg.more:
                    self._arm(job)

    # -- bookkeeping -------------------------------------------------------------------------------

    def _settle(self, job: Job) -> None:
        """The worker is done with the job: it no longer counts against that worker."""
        self.jobs.pop(job.id, None)
        link = job.link
        if link is not None:
            link.in_flight.pop(job.id, None)
            if self.pending and not link.draining:
                self._pump(link)

    def _pump(self, link: Link) -> None:
        while self.pending and len(link.in_flight) < link.window and link.ident in self.links:
            job = self.pending.popleft()
            if not job.closed:
                self._send(link, job)

    def _arm(self, job: Job) -> None:
        # A periodic sweep instead of a TimerHandle per request: call_later + cancel cost more
        # than the rest of the bookkeeping, and the sweep only walks requests still in flight
        # (bounded by connections and max_queue), holding nothing once they are answered.
        job.deadline = self.loop.time() + self.timeout

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self._router_reader.drain()
            now = self.loop.time()
            expired = [
                j for j in self.jobs.values() if j.deadline and j.deadline <= now and not j.closed
            ]
            for job in expired:
                self._expire(job)

    def _expire(self, job: Job) -> None:
        job.deadline = 0.0
        if job.closed:
            return
        job.closed = True
        if job.link is None:
            self.jobs.pop(job.id, None)  # still queued here: it is skipped when its turn comes
        else:
            self._cancel_remote(job)
        err = Expired(f"no answer within the {self.timeout:g} s timeout")
        self._fail(job, err)

    def _disarm(self, job: Job) -> None:
        job.deadline = 0.0

    def _cancel_remote(self, job: Job) -> None:
        link = job.link
        if link is None or link.ident not in self.links:
            self.jobs.pop(job.id, None)
            return
        try:
            self.router.send_multipart((link.ident, p.encode(p.Cancel(job.id)), p.EMPTY), p.NOBLOCK)
        except zmq.ZMQError:
            pass
        self._router_reader.kick()

    def _fail(self, job: Job, err: BaseException) -> None:
        if not job.fut.done():
            job.fut.set_exception(err)
            job.fut.exception()  # mark retrieved: the HTTP side may be gone already
        elif job.chunks is not None:
            job.chunks.put_nowait(err)

    def _drop(self, link: Link, reason: str) -> None:
        """A worker is gone: fail what it held, hand the queue to the others."""
        self.links.pop(link.ident, None)
        if link in self.ready:
            self.ready.remove(link)
        self._ready_changed.set()
        held = list(link.in_flight.values())
        link.in_flight.clear()
        if held:
            log.warning(
                "worker gone with requests in flight",
                extra=kv(worker=link.name, worker_pid=link.pid, failed=len(held), reason=reason),
            )
        for job in held:
            self.jobs.pop(job.id, None)
            if not job.closed:
                job.closed = True
                self._disarm(job)
                self._fail(
                    job,
                    Unavailable(
                        "worker_died",
                        f"worker {link.slot} (pid {link.pid}) died while handling the request: "
                        f"{reason}",
                    ),
                )
        if not self.ready:
            while self.pending:
                job = self.pending.popleft()
                if not job.closed:
                    job.closed = True
                    self.jobs.pop(job.id, None)
                    self._disarm(job)
                    self._fail(job, Unavailable("no_worker", "no inference worker is ready"))
        else:
            for other in list(self.ready):
                self._pump(other)

    def describe_workers(self) -> list[dict[str, Any]]:
        return [
            {
                "worker": lk.name,
                "slot": lk.slot,
                "pid": lk.pid,
                "device": lk.device,
                "in_flight": len(lk.in_flight),
                "draining": lk.draining,
            }
            for lk in self.links.values()
        ]

    def close(self) -> None:
        self._sweeper.cancel()
        self._router_reader.close()
        self._pull_reader.close()
        self.router.close(0)
        self.pull.close(0)
