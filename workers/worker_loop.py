"""The inference worker's loop: talk to every API process directly, batch, answer, heartbeat.

Single-threaded on purpose: the heartbeat is sent from this loop, between batches, so a predict
that hangs silences it and the supervisor replaces the worker.

Per API process the worker holds a DEALER (requests in, READY/LEAVING out; its identity is the
worker's name, so the API's ROUTER can address it) and a PUSH (answers out). The supervisor's
Endpoints message says which API processes exist; the worker connects and disconnects to match.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from typing import Any

import zmq
from ferryman.workers.engine import Engine, Task
from ferryman.workers.metrics import FLUSH_INTERVAL

from ferryman import protocol as p
from ferryman.logs import kv

log = logging.getLogger("ferryman.worker")

HEARTBEAT_INTERVAL = 1.0
STREAM_FIRST_PAUSE = 0.0002
LEAVE_ACK_TIMEOUT = 5.0


class ApiLink:
    __slots__ = ("acked", "dealer", "name", "push")

    def __init__(self, name: str, dealer: zmq.Socket[bytes], push: zmq.Socket[bytes]) -> None:
        self.name = name
        self.dealer = dealer
        self.push = push
        self.acked = False


class WorkerLoop:
    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        control: zmq.Socket[bytes],
        spec: p.ChildSpec,
        api: Any,
        metrics: Any = None,
    ) -> None:
        self.ctx = ctx
        self.control = control
        self.spec = spec
        self.name = spec.name
        self.links: dict[str, ApiLink] = {}
        self.by_socket: dict[zmq.Socket[bytes], ApiLink] = {}
        self.poller = zmq.Poller()
        self.poller.register(control, zmq.POLLIN)
        self.pending: deque[Task] = deque()
        self.cancels: set[tuple[str, int]] = set()
        self.engine = Engine(api, spec.options, self)
        self.max_batch = self.engine.max_batch_size
        # API processes send a request's headers only to workers whose code takes a context,
        # and let each worker hold enough requests to fill its batches.
        self.ready_msg = p.encode(
            p.WorkerReady(
                spec.name,
                spec.slot,
                os.getpid(),
                spec.physical_device,
                self.engine.context,
                self.max_batch,
            )
        )
        self.leaving_msg = p.encode(p.WorkerLeaving(self.name))
        self.batch_timeout = float(spec.options.get("batch_timeout", 0.0))  # type: ignore[arg-type]
        self.metrics = metrics
        self.served = 0
        self.in_flight = 0
        self.draining = False
        self.drain_deadline = 0.0
        self.next_heartbeat = 0.0
        self.last_heartbeat = 0.0
        self.next_flush = 0.0
        # SIGTERM must wake the poll at once: its handler only writes to this pipe.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.poller.register(self._wake_r, zmq.POLLIN)

    # -- lifecycle ---------------------------------------------------------------------------------

    def run(self) -> None:
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGTERM, lambda *_: None)  # acted on in the loop, via the wakeup fd
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
        self._set_apis(self.spec.apis)
        self.control.send(p.encode(p.Ready()))
        log.info("worker ready", extra=kv(device=self.spec.physical_device, worker=self.name))
        while True:
            now = time.monotonic()
            if now >= self.next_heartbeat:
                self._heartbeat(now)
            if self.metrics is not None and now >= self.next_flush:
                self.metrics.flush()
                self.next_flush = now + FLUSH_INTERVAL
            if self.pending:
                first = self.pending[0].t_recv
                if len(self.pending) >= self.max_batch or now >= first + self.batch_timeout:
                    if now > self.last_heartbeat + 0.25:
                        # A long predict is about to start: let status show what we hold.
                        self._heartbeat(now)
                    self._run_batch()
                    continue
                timeout = min(first + self.batch_timeout, self.next_heartbeat) - now
            else:
                if self.draining and self._drained(now):
                    break
                timeout = self.next_heartbeat - now
                if self.draining:
                    timeout = min(timeout, 0.05)
            self._poll(max(timeout, 0.0))
        log.info("worker drained, exiting", extra=kv(served=self.served))
        if self.metrics is not None:
            self.metrics.flush()
        for link in list(self.links.values()):
            # Our last answers may still sit in the PUSH queues: let them out before exit.
            self._close(link, linger_ms=2000)

    def _heartbeat(self, now: float) -> None:
        self.last_heartbeat = now
        self.next_heartbeat = now + HEARTBEAT_INTERVAL
        try:
            self.control.send(p.encode(p.Heartbeat(self.in_flight, self.served)), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _start_drain(self) -> None:
        if self.draining:
            return
        log.info("draining: no new work, finishing what is queued", extra=kv(worker=self.name))
        self.draining = True
        self.drain_deadline = time.monotonic() + LEAVE_ACK_TIMEOUT
        for link in self.links.values():
            link.acked = False
            link.dealer.send(self.leaving_msg, zmq.NOBLOCK)

    def _drained(self, now: float) -> bool:
        """Every API process has stopped routing to us (or is gone), and nothing is queued."""
        return all(link.acked for link in self.links.values()) or now > self.drain_deadline

    # -- sockets -----------------------------------------------------------------------------------

    def _poll(self, timeout: float) -> None:
        for sock, _ in self.poller.poll(int(timeout * 1000.0 + 0.999)):
            if sock is self.control:
                self._drain_control()
            elif sock == self._wake_r:
                self._on_signal()
            else:
                link = self.by_socket.get(sock)
                if link is not None:
                    self._drain_link(link)

    def _on_signal(self) -> None:
        try:
            data = os.read(self._wake_r, 64)
        except BlockingIOError:
            return
        if signal.SIGTERM in data:
            self._start_drain()

    def _drain_link(self, link: ApiLink) -> None:
        recv = link.dealer.recv
        now = time.monotonic()
        while True:
            try:
                header = recv(p.NOBLOCK)
            except zmq.Again:
                return
            body = recv(0)  # always two frames (protocol.py), and they arrive together
            msg = p.to_worker(header)
            if type(msg) is p.Work:
                self.in_flight += 1
                self.pending.append(
                    Task(
                        link,
                        msg.id,
                        msg.route,
                        msg.deadline,
                        msg.headers,
                        body,
                        now,
                    )
                )
            elif type(msg) is p.Cancel:
                self.cancels.add((link.name, msg.id))
            elif type(msg) is p.LeaveAck:
                link.acked = True

    def _drain_control(self) -> None:
        while True:
            try:
                raw = self.control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            msg = p.from_supervisor(raw)
            if isinstance(msg, p.Endpoints):
                self._set_apis(msg.apis)

    def _set_apis(self, apis: list[p.ApiEndpoint]) -> None:
        wanted = {a.name: a for a in apis}
        for name in [n for n in self.links if n not in wanted]:
            self._close(self.links[name])
        for name, ep in wanted.items():
            if name not in self.links:
                self._connect(ep)

    def _connect(self, ep: p.ApiEndpoint) -> None:
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, self.name.encode())
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.RCVHWM, 0)
        dealer.connect(ep.requests)
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.setsockopt(zmq.SNDHWM, 0)
        push.connect(ep.replies)
        link = ApiLink(ep.name, dealer, push)
        self.links[ep.name] = link
        self.by_socket[dealer] = link
        self.poller.register(dealer, zmq.POLLIN)
        dealer.send(self.ready_msg)
        if self.draining:
            link.dealer.send(self.leaving_msg)
        log.debug("connected to API process", extra=kv(api=ep.name))

    def _close(self, link: ApiLink, linger_ms: int = 0) -> None:
        """Disconnect from an API process (linger_ms 0: it is gone, nothing can be answered)."""
        self.links.pop(link.name, None)
        self.by_socket.pop(link.dealer, None)
        self.poller.unregister(link.dealer)
        link.dealer.close(0)
        link.push.close(linger_ms)
        link.acked = True
        dropped = [t for t in self.pending if t.link is link]
        if dropped:
            self.pending = deque(t for t in self.pending if t.link is not link)
            self.in_flight -= len(dropped)

    # -- running work ------------------------------------------------------------------------------

    def _run_batch(self) -> None:
        n = min(self.max_batch, len(self.pending))
        route = self.pending[0].route
        batch: list[Task] = []
        while self.pending and len(batch) < n and self.pending[0].route == route:
            batch.append(self.pending.popleft())
        if self.metrics is not None:
            self.metrics.batch(len(batch))
        self.engine.run(batch)

    # -- Sink: what the engine calls ---------------------------------------------------------------

    def start(
        self,
        task: Task,
        status: int,
        content_type: str,
        body: bytes,
        more: bool = False,
        queue_s: float = 0.0,
        predict_s: float = 0.0,
        batch_size: int = 1,
    ) -> None:
        if not more:
            self._done(task)
        if task.link.name not in self.links:
            return
        header = p.encode(
            p.Reply(task.id, status, content_type, more, queue_s, predict_s, batch_size)
        )
        push = task.link.push
        push.send(header, p.SNDMORE)
        push.send(body, 0, copy=len(body) < 65536)
        if more:
            # A generator that yields its items within microseconds kept this first one queued
            # behind the rest of its stream: measured on 2 cores, its client saw it after ~3 ms
            # of a ~6 ms stream. A short pause lets ZeroMQ's I/O thread ship it alone first
            # (first item 3.1 -> 0.8 ms, total unchanged). Once per stream; 50 us was too short.
            time.sleep(STREAM_FIRST_PAUSE)
        # Once per request (a stream's first reply), and only where predict really ran.
        if self.metrics is not None and status < 400:
            self.metrics.observe(queue_s, predict_s)

    def chunk(self, task: Task, body: bytes, more: bool) -> None:
        if not more:
            self._done(task)
        if task.link.name not in self.links:
            return
        push = task.link.push
        push.send(p.encode(p.Chunk(task.id, more)), p.SNDMORE)
        push.send(body, 0, copy=len(body) < 65536)

    def cancelled(self, task: Task, poll: bool = False) -> bool:
        if poll:
            self._poll(0)
            now = time.monotonic()
            if now >= self.next_heartbeat:  # a long stream must not look like a hung worker
                self._heartbeat(now)
        return (task.link.name, task.id) in self.cancels or task.link.name not in self.links

    def _done(self, task: Task) -> None:
        self.in_flight -= 1
        self.served += 1
        if self.cancels:
            self.cancels.discard((task.link.name, task.id))
