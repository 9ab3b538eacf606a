"""The inference worker's I/O loop: every socket, the queue, batching, heartbeats, draining.

One asyncio (uvloop) event loop owns all I/O; the engine (engine.py) only runs user code and
hands its answers to this loop's sink methods. ZeroMQ sockets are read on their FD's wake-up,
draining what is queued (zmqio.Reader), and again after anything that kept the loop busy.

- A request (Work) is queued; `_dispatch` takes a batch from the queue when there is room,
  unless more requests are known to be on their way (batching.py), and starts a job for it.
- Synchronous user code: one job at a time, driven by hand on the loop's own thread. A plain
  batch runs to its end in one go; a stream hands control back after each part, so that the
  loop reads Cancels and new requests between parts. A predict that hangs blocks the loop, and
  with it the heartbeat: the supervisor sees a silent worker and replaces it.
- Async user code: each job is an asyncio task, up to `capacity` requests at once; a job whose
  every client went away is cancelled.
- Heartbeats (every second) and metrics (every FLUSH_INTERVAL) go to the supervisor from this
  loop's timers; the supervisor's Endpoints say which API processes to be connected to.
- A LitAPI's `authorize` runs as each request arrives, as an asyncio task of this loop (FastAPI's
  dependency solver awaits), before the request is queued; its `health()` is asked every
  HEALTH_INTERVAL between batches, and each change of its answer goes to every API process
  (WorkerHealth), which answer LitServe's /health with it.
- SIGTERM drains: WorkerLeaving to every API process, keep answering, wait for each LeaveAck
  (LEAVE_ACK_TIMEOUT at most) and for the queue to empty, then return.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Coroutine
from functools import partial
from typing import Any

import msgspec
import zmq

from ferryman import protocol as p
from ferryman.board import Board
from ferryman.child import Child
from ferryman.logs import kv
from ferryman.metrics import FLUSH_INTERVAL
from ferryman.options import ModelOptions
from ferryman.workers import litserve_compat
from ferryman.workers.batching import capacity_and_window, wait_for_more
from ferryman.workers.engine import Engine, Task
from ferryman.workers.hooks import Callbacks
from ferryman.workers.links import EXIT_LINGER_MS, ApiLink
from ferryman.workers.metrics import WorkerStats
from ferryman.zmqio import Reader

log = logging.getLogger("ferryman.worker")

HEARTBEAT_INTERVAL = 1.0
# Before a batch of synchronous code starts, a heartbeat older than this is refreshed, so that
# status shows what a long predict holds.
BEAT_BEFORE_BATCH = 0.25
LEAVE_ACK_TIMEOUT = 5.0
DRAIN_CHECK = 0.05
# Requests an async API works on at once (each awaiting on its own).
ASYNC_CAPACITY = 64
# A stream's first part is followed by this pause (synchronous code only): a generator that
# yields its items within microseconds otherwise had its first item queued behind the rest of
# its stream, reaching the client after ~3 ms of a ~6 ms stream on 2 cores (0.8 ms with it).
STREAM_FIRST_PAUSE = 0.0002
# Synchronous batches run back to back for this long before the event loop gets a turn.
SYNC_BUDGET = 0.005
# Bodies at least this long are sent without a copy (zero-copy has a fixed cost of its own).
ZERO_COPY_MIN = 65536
# How often a LitAPI's own health() is asked (LitServe asks it on each GET /health).
HEALTH_INTERVAL = 1.0
# The route each spec's requests come on, and the path authorize's request is given.
SPEC_PATHS = {"chat": "/v1/chat/completions", "embeddings": "/v1/embeddings"}
# A route that only asks authorize (LitServe guards its own GET routes, `/`, health and info,
# with a single LitAPI's authorize): 200 with no body when it lets the request in, else its
# refusal. The API process may send the route's path as a `:path` header.
AUTHORIZE_ROUTE = "authorize"


class Job:
    """A batch being answered: its tasks, and the coroutine (sync) or asyncio task (async)."""

    __slots__ = ("coro", "handle", "tasks")

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks
        self.coro: Coroutine[Any, Any, None] | None = None
        self.handle: asyncio.Task[None] | None = None


class WorkerLoop:
    def __init__(self, child: Child, api: Any, options: ModelOptions, litserve: bool) -> None:
        spec = child.spec
        assert spec.worker is not None
        self.child = child
        self.spec = spec
        self.wspec = spec.worker
        self.name = spec.name
        self.model = self.wspec.model.name
        self.stats = WorkerStats(child.metrics, self.model)
        self.api = api
        self.litserve = litserve
        self.engine = Engine(api, options, self, self.stats)
        self.api_path = options.api_path or "/predict"
        # LitServe's server-side pieces, run here: authorize, health, on_request / on_response.
        self.authorizer = litserve_compat.authorizer(api) if litserve else None
        self.health_fn = litserve_compat.health_check(api) if litserve else None
        self.healthy = True
        self._health_task: asyncio.Task[None] | None = None
        self._health_timer: asyncio.TimerHandle | None = None
        self.admitting = 0  # requests whose authorize runs
        self._admissions: set[asyncio.Task[None]] = set()  # their tasks, kept from the gc
        cbs = Callbacks.of(api)
        self.on_request = cbs.request
        self.on_response = cbs.response
        lit_server = getattr(spec.server, "litserve", None)
        self.track_requests = bool(getattr(lit_server, "track_requests", False))
        self.concurrent = self.engine.concurrent
        self.max_batch = self.engine.max_batch_size
        self.batch_timeout = options.batch_timeout
        self.capacity, self.window = capacity_and_window(
            self.max_batch, self.concurrent, ASYNC_CAPACITY, options.max_ongoing_requests
        )
        self.ready = p.WorkerReady(
            worker=self.name,
            model=self.model,
            slot=spec.slot,
            pid=os.getpid(),
            device=self.wspec.physical_device,
            cell=self.wspec.cell,
            capacity=self.capacity,
            window=self.window,
            # authorize reads the request's headers (the Content-Type comes with them)
            context=self.engine.context or self.authorizer is not None,
            litserve=litserve,
        )
        self.ready_msg = p.encode(self.ready)
        self.leaving_msg = p.encode(p.WorkerLeaving())
        self.board = _open_board(spec.board) if self.max_batch > 1 else None
        self.links: dict[str, ApiLink] = {}
        self.pending: deque[Task] = deque()
        self.jobs: set[Job] = set()
        self.current: Job | None = None  # synchronous code: the job being driven
        self.running = 0  # requests in started jobs
        self.in_flight = 0  # requests received and not finally answered
        self.served = 0
        self.started = False  # the loop runs: failures from now on are not start-up failures
        self.draining = False
        self.drain_deadline = 0.0
        self.last_beat = 0.0
        self.said_busy = False  # the last heartbeat counted requests in flight
        self._armed = False  # a _dispatch is scheduled
        self._dispatching = False  # _dispatch runs: no need to schedule another
        self._stale = False  # the loop was busy: sockets may hold unread requests
        self._batch_timer: asyncio.TimerHandle | None = None  # a batch forming waits for it
        self._beat_timer: asyncio.TimerHandle | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        self._control: Reader | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until drained."""
        loop = self._loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        try:
            loop.add_signal_handler(signal.SIGTERM, self.start_drain)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
            if self.health_fn is not None:
                await self._ask_health()  # what the first WorkerReady says
            self._set_apis(self.wspec.apis)
            self._control = Reader(loop, self.child.control, self._on_control)
            # The supervisor's Endpoints may have come while setup() ran: connect to what it
            # says now, so that Ready means announced to every API process.
            self._control.drain()
            self.child.ready()
            self._control.kick()
            log.info(
                "worker ready",
                extra=kv(
                    device=self.wspec.physical_device,
                    worker=self.name,
                    capacity=self.capacity,
                    mode="async" if self.concurrent else "sync",
                ),
            )
            self.started = True
            self._beat()
            self._flush()
            if self.health_fn is not None:
                self._health_timer = self._call_later(HEALTH_INTERVAL, self._health_tick)
            await self._done
        finally:
            self._shutdown()
        log.info("worker drained, exiting", extra=kv(served=self.served))

    def _shutdown(self) -> None:
        timers = (
            self._batch_timer,
            self._beat_timer,
            self._flush_timer,
            self._drain_timer,
            self._health_timer,
        )
        for h in timers:
            if h is not None:
                h.cancel()
        if self._health_task is not None:
            self._health_task.cancel()
        for task in self._admissions:
            task.cancel()
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGTERM)
        if self._control is not None:
            self._control.close()
        for link in list(self.links.values()):
            # Our last answers may still sit in the PUSH queues: let them out before exit.
            link.close(EXIT_LINGER_MS)
        self.links.clear()
        if self.board is not None:
            self.board.close()

    def start_drain(self) -> None:
        """SIGTERM: stop taking work, finish what we hold, exit."""
        if self.draining:
            return
        log.info("draining: no new work, finishing what is queued", extra=kv(worker=self.name))
        self.draining = True
        self.drain_deadline = time.monotonic() + LEAVE_ACK_TIMEOUT
        for link in self.links.values():
            link.acked = False
            link.say(self.leaving_msg)
        self._drain_tick()  # and every DRAIN_CHECK until done

    def _drain_tick(self) -> None:
        try:
            self._check_drained()
        except Exception:
            log.exception("drain check failed")
        if self._done is not None and not self._done.done():
            self._drain_timer = self._call_later(DRAIN_CHECK, self._drain_tick)

    def _check_drained(self) -> None:
        """Every API process has stopped routing to us (or the wait is over), and nothing is
        queued or running."""
        if not self.draining or self._done is None or self._done.done():
            return
        if self.pending or self.running or self.admitting or self.current is not None:
            return
        acked = all(link.acked for link in self.links.values())
        if acked or time.monotonic() > self.drain_deadline:
            if not acked:
                log.warning(
                    "drained without every API process's LeaveAck",
                    extra=kv(missing=",".join(n for n, lk in self.links.items() if not lk.acked)),
                )
            self._done.set_result(None)

    # -- timers --------------------------------------------------------------------------------

    def _call_later(self, delay: float, fn: Any) -> asyncio.TimerHandle:
        assert self._loop is not None
        return self._loop.call_later(delay, fn)

    def _beat(self) -> None:
        try:
            self._heartbeat()
        except Exception:
            log.exception("heartbeat failed")
        self._beat_timer = self._call_later(HEARTBEAT_INTERVAL, self._beat)

    def _heartbeat(self) -> None:
        self.last_beat = time.monotonic()
        self.said_busy = self.in_flight > 0
        self.child.heartbeat(self.in_flight, self.served)
        if self._control is not None:
            self._control.kick()

    # -- health (a LitAPI's own health()) ---------------------------------------------------------

    def _health_tick(self) -> None:
        if self._health_task is None or self._health_task.done():
            assert self._loop is not None
            self._health_task = self._loop.create_task(self._ask_health())
        self._health_timer = self._call_later(HEALTH_INTERVAL, self._health_tick)

    async def _ask_health(self) -> None:
        """Ask health() (awaited if async); tell every API process when its answer changed. An
        exception counts as unhealthy, as in LitServe."""
        assert self.health_fn is not None
        try:
            verdict = self.health_fn()
            if inspect.isawaitable(verdict):
                verdict = await verdict
            healthy = bool(verdict)
        except Exception as e:
            log.warning(f"health() raised {type(e).__name__}: {e}", extra=kv(stage="health"))
            healthy = False
        if healthy == self.healthy:
            return
        self.healthy = healthy
        self.ready_msg = p.encode(msgspec.structs.replace(self.ready, healthy=healthy))
        log.info("health() changed", extra=kv(healthy=healthy))
        said = p.encode(p.WorkerHealth(healthy))
        for link in self.links.values():
            link.say(said)

    def _flush(self) -> None:
        try:
            self.stats.flush()
            self.child.flush_metrics()
            if self._control is not None:
                self._control.kick()
        except Exception:
            log.exception("metrics flush failed")
        self._flush_timer = self._call_later(FLUSH_INTERVAL, self._flush)

    # -- the supervisor ------------------------------------------------------------------------

    def _on_control(self, frames: list[bytes]) -> None:
        try:
            msg = p.from_supervisor(frames[-1])
        except Exception:
            log.warning("dropped a malformed message from the supervisor")
            return
        try:
            if isinstance(msg, p.Endpoints):
                self._set_apis(msg.apis)
        except Exception:
            log.exception("could not apply the supervisor's message")

    def _set_apis(self, apis: list[p.ApiEndpoint]) -> None:
        wanted = {a.name: a for a in apis}
        for name in [n for n in self.links if n not in wanted]:
            self._drop_link(self.links[name])
        for name, ep in wanted.items():
            if name not in self.links:
                self._connect(ep)

    def _connect(self, ep: p.ApiEndpoint) -> None:
        assert self._loop is not None
        link = ApiLink(self.child.ctx, self._loop, ep, self.name, self.wspec.cell, self._on_frames)
        self.links[ep.name] = link
        # A draining worker only says it is leaving: no API process should start routing to it.
        link.say(self.leaving_msg if self.draining else self.ready_msg)
        log.debug("connected to API process", extra=kv(api=ep.name))

    def _drop_link(self, link: ApiLink) -> None:
        """The API process is gone: nothing it sent can be answered any more."""
        log.debug("disconnected from API process", extra=kv(api=link.name))
        del self.links[link.name]
        link.close()
        for t in list(link.tasks.values()):
            if t.job is None:
                self._forget(t)
            else:
                self._cancel_running(t)
        self.pending = deque(t for t in self.pending if t.link is not link)
        self._check_drained()

    # -- API processes -------------------------------------------------------------------------

    def _on_frames(self, link: ApiLink, frames: list[bytes]) -> None:
        try:
            msg = p.to_worker(frames[0])
        except Exception:
            log.warning("dropped a malformed message", extra=kv(api=link.name))
            return
        try:
            if type(msg) is p.Work:
                link.received += 1
                content_type = msg.content_type
                if self.litserve and not content_type and msg.headers:
                    content_type = _content_type(msg.headers)
                t = Task(
                    link,
                    msg.id,
                    msg.route,
                    msg.deadline,
                    msg.headers,
                    frames[1],
                    time.monotonic(),
                    msg.query,
                    content_type,
                )
                link.tasks[msg.id] = t
                self.in_flight += 1
                if self.authorizer is not None:
                    self._admit(t)
                    return
                if self.on_request is not None:
                    self._request_hook()
                self.pending.append(t)
                if not (self._armed or self._dispatching):
                    self._schedule()
            elif type(msg) is p.Cancel:
                self._on_cancel(link, msg.id)
            elif type(msg) is p.LeaveAck:
                link.acked = True
                self._check_drained()
        except Exception:
            log.exception("could not take a message", extra=kv(api=link.name))

    def _admit(self, t: Task) -> None:
        """Run authorize before the request is queued."""
        assert self._loop is not None
        self.admitting += 1
        task = self._loop.create_task(self._authorize(t))
        self._admissions.add(task)
        task.add_done_callback(self._admissions.discard)

    async def _authorize(self, t: Task) -> None:
        assert self.authorizer is not None
        try:
            if t.route == AUTHORIZE_ROUTE:
                method, path = "GET", _header(t.headers or [], b":path") or "/"
            else:
                method, path = "POST", SPEC_PATHS.get(t.route, self.api_path)
            failure = await self.authorizer.check(
                method, path, t.headers or [], t.query, t.body, t.request_id
            )
        except Exception as e:  # the solver itself failed: never leave the request hanging
            log.exception("authorize could not run")
            failure = self.engine.describe(t, e)
        finally:
            self.admitting -= 1
        try:
            if t.finished:  # its API process went away meanwhile
                pass
            elif t.cancelled:
                self.engine.drop(t)
            elif failure is not None:
                self.engine.refuse(t, failure)
            elif t.route == AUTHORIZE_ROUTE:
                self.reply(t, 200, "", b"")  # let in: the API process answers it itself
            else:
                if self.on_request is not None:
                    self._request_hook()
                self.pending.append(t)
                if not (self._armed or self._dispatching):
                    self._schedule()
        finally:
            self._check_drained()

    def _request_hook(self) -> None:
        assert self.on_request is not None
        # LitServe counts requests in flight only with track_requests; here, this worker's.
        self.on_request(self.api, active_requests=self.in_flight if self.track_requests else None)

    def _on_cancel(self, link: ApiLink, id: int) -> None:
        t = link.tasks.get(id)
        if t is None or t.finished:
            return
        log.debug("request cancelled by its API process", extra=kv(api=link.name, id=id))
        if t.job is not None:
            self._cancel_running(t)
            return
        t.cancelled = True
        try:
            self.pending.remove(t)
        except ValueError:  # being answered right now
            return
        self.engine.drop(t)  # still queued: it never runs
        self._check_drained()

    def _cancel_running(self, t: Task) -> None:
        """The job sees the flag at its next part; an async job whose every client went away
        is cancelled where it awaits."""
        t.cancelled = True
        job = t.job
        if job.handle is not None and all(x.cancelled or x.finished for x in job.tasks):
            job.handle.cancel()

    def _forget(self, t: Task) -> None:
        """A queued request of a gone API process: no answer can reach it."""
        if not t.finished:
            t.finished = True
            t.link.tasks.pop(t.id, None)
            self.in_flight -= 1

    # -- scheduling ------------------------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._armed and self._loop is not None:
            self._armed = True
            self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Start what can start: batches while there is room and nothing is worth waiting for.

        Synchronous batches run back to back here, up to SYNC_BUDGET at a time: a turn of the
        event loop per request would cost a syscall or two each; past the budget the loop gets
        its turn (timers, the heartbeat) before the next batch."""
        self._armed = False
        self._dispatching = True
        try:
            until = time.monotonic() + SYNC_BUDGET
            while True:
                if self._stale and self.max_batch > 1 and len(self.pending) < self.max_batch:
                    # User code kept the loop busy: read what arrived meanwhile before sizing
                    # the next batch (unbatched, the loop's wake-up reads it as cheaply).
                    self._stale = False
                    for link in list(self.links.values()):
                        link.poll()
                if not self.pending or self.current is not None:
                    return
                room = self.capacity - self.running
                if room <= 0:
                    return
                if self.max_batch > 1:
                    wait = wait_for_more(
                        len(self.pending),
                        self.max_batch,
                        self._in_transit(),
                        time.monotonic() - self.pending[0].t_recv,
                        self.batch_timeout,
                    )
                    if wait > 0.0:
                        if self._batch_timer is None:
                            for link in self.links.values():
                                link.mark = link.received
                            self._batch_timer = self._call_later(wait, self._on_batch_timer)
                        return
                    if self._batch_timer is not None:  # waited for is here: the wait is over
                        self._batch_timer.cancel()
                        self._batch_timer = None
                batch = self._take(min(self.max_batch, room))
                if not batch or self.concurrent:
                    if batch:
                        self._start(batch)
                    continue
                self._start(batch)
                if self.pending and time.monotonic() >= until:
                    self._dispatching = False
                    self._schedule()
                    return
        except Exception:
            log.exception("dispatch failed")
        finally:
            self._dispatching = False

    def _on_batch_timer(self) -> None:
        self._batch_timer = None
        try:
            self._forgive_lost()
        except Exception:
            log.exception("could not check the load board")
        self._dispatch()

    def _forgive_lost(self) -> None:
        """Requests counted on the board that never came: stop waiting for them.

        An API process that counted a request it then failed to send would otherwise make every
        batch of ours wait its full timeout. A link that sent nothing during a whole wait (this
        timer runs only when a wait ran its course) while the board says it has more on the way
        is taken at its word no longer."""
        board = self.board
        if board is None:
            return
        for link in self.links.values():
            if link.index < 0 or link.received != link.mark:
                continue
            lost = board.sent[link.index] - link.received
            if lost > 0:
                link.received += lost
                log.warning(
                    "requests counted as sent to this worker never arrived; not waiting for them",
                    extra=kv(api=link.name, lost=lost),
                )

    def _in_transit(self) -> int:
        """Requests the load board says were sent to us that we have not received yet."""
        board = self.board
        if board is None:
            return 0
        sent = board.sent
        n = 0
        for link in self.links.values():
            if link.index >= 0:
                d = sent[link.index] - link.received
                if d > 0:
                    n += d
        return n

    def _take(self, n: int) -> list[Task]:
        """Up to n queued requests of one route, in order; expired ones get their 504."""
        pending = self.pending
        batch: list[Task] = []
        route = None
        now = time.monotonic()
        while pending and len(batch) < n:
            t = pending[0]
            if route is not None and t.route != route:
                break
            pending.popleft()
            if t.deadline and now > t.deadline:
                self.engine.expire(t)
                continue
            route = t.route
            batch.append(t)
        if not batch:
            self._check_drained()
        return batch

    def _start(self, batch: list[Task]) -> None:
        self.running += len(batch)
        if not self.concurrent:
            # A beat before the batch keeps the supervisor's view fresh while predict blocks the
            # loop: always when its last word was "idle" (else a long predict would show 0 in
            # flight throughout), else at most every BEAT_BEFORE_BATCH. At most one more beat
            # per heartbeat interval than the timer's.
            if not self.said_busy or time.monotonic() - self.last_beat > BEAT_BEFORE_BATCH:
                self._heartbeat()
            self._stale = True
            if batch[0].route in self.engine.now_routes:
                error: BaseException | None = None
                try:
                    self.engine.run(batch)
                except Exception as e:
                    error = e
                self._batch_done(batch, error)
                return
        job = Job(batch)
        for t in batch:
            t.job = job
        coro = self.engine.job(batch)
        if self.concurrent:
            assert self._loop is not None
            job.handle = self._loop.create_task(coro)
            self.jobs.add(job)
            job.handle.add_done_callback(partial(self._task_done, job))
            return
        job.coro = coro
        self.current = job
        self._drive()

    def _drive(self) -> None:
        """One step of the synchronous job: one part of each of its streams."""
        job = self.current
        if job is None or job.coro is None:
            return
        self._stale = True
        try:
            awaited = job.coro.send(None)
        except StopIteration:
            self._job_done(job, None)
            return
        except Exception as e:
            self._job_done(job, e)
            return
        if awaited is not None:
            # Only calls.step() may suspend a job of synchronous code.
            job.coro.close()
            self._job_done(job, RuntimeError(f"a synchronous job awaited {awaited!r}"))
            return
        assert self._loop is not None
        self._loop.call_soon(self._drive)

    def _task_done(self, job: Job, fut: asyncio.Future[None]) -> None:
        error: BaseException | None = None
        if fut.cancelled():
            for t in job.tasks:  # cancelled before it ever ran
                self.engine.cut(t)
        else:
            error = fut.exception()
        self._job_done(job, error)

    def _job_done(self, job: Job, error: BaseException | None) -> None:
        if self.current is job:
            self.current = None
        self.jobs.discard(job)
        self._batch_done(job.tasks, error)

    def _batch_done(self, batch: list[Task], error: BaseException | None) -> None:
        try:
            self.running -= len(batch)
            if error is not None:
                log.error(
                    f"a job failed outside user code: {type(error).__name__}: {error}",
                    exc_info=error,
                )
            for t in batch:
                if not t.finished:  # the engine's promise broken: never leave a request hanging
                    self.engine.crash(t, error or RuntimeError("the job ended without answering"))
                # Task and Job refer to each other: a cycle left for the garbage collector would
                # make it run every few thousand requests.
                t.job = None
        except Exception:
            log.exception("could not close a job")
        if self.pending:
            if not self._dispatching:
                self._schedule()
        elif self.draining:
            self._check_drained()

    # -- the engine's sink ---------------------------------------------------------------------

    def reply(
        self,
        t: Task,
        status: int,
        content_type: str,
        body: bytes,
        more: bool = False,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        if t.finished:
            return
        link = t.link
        t.status = status
        if not more:
            self._settle(t)
        if link.open:
            push = link.push
            try:
                push.send(p.encode(p.Reply(t.id, status, content_type, more, headers)), p.SNDMORE)
                push.send(body, 0, copy=len(body) < ZERO_COPY_MIN)
            except zmq.ZMQError as e:  # the socket closed under us: nothing to answer to
                log.warning("could not send an answer", extra=kv(api=link.name, error=str(e)))
                return
            if more and not self.concurrent:
                time.sleep(STREAM_FIRST_PAUSE)

    def chunk(self, t: Task, body: bytes, more: bool) -> None:
        if t.finished:
            return
        link = t.link
        if not more:
            self._settle(t)
        if link.open:
            push = link.push
            try:
                push.send(p.encode(p.Chunk(t.id, more)), p.SNDMORE)
                push.send(body, 0, copy=len(body) < ZERO_COPY_MIN)
            except zmq.ZMQError as e:
                log.warning("could not send an answer", extra=kv(api=link.name, error=str(e)))

    def _settle(self, t: Task) -> None:
        t.finished = True
        t.link.tasks.pop(t.id, None)
        self.in_flight -= 1
        self.served += 1
        # LitServe's on_response: a successful answer of the model's own route (not a spec's).
        if self.on_response is not None and t.route == "predict" and 0 < t.status < 400:
            self.on_response(self.api)


def _content_type(headers: list[tuple[bytes, bytes]]) -> bytes:
    for k, v in headers:
        if k == b"content-type":
            return v
    return b""


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return ""


def _open_board(path: str) -> Board | None:
    """The load board, read to know what is on its way; without it, batches never wait."""
    try:
        return Board(path)
    except OSError as e:
        log.warning(
            "no load board: batches will not wait for requests on their way",
            extra=kv(board=path, error=str(e)),
        )
        return None
