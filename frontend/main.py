"""Entry point of an API process: `python -m ferryman.frontend.main`.

Runs in the API process: a uvicorn server on the listening socket the supervisor bound and passed
down (so that every API process accepts on the same port), plus the ZeroMQ sockets workers connect
to. No user code is imported here, nor any of the worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

# Seconds a stopping API process keeps its open connections, answering each next request with
# `connection: close`, before it closes the idle ones.
DRAIN_GRACE = 1.0
HEARTBEAT_INTERVAL = 1.0


def main() -> int:
    from ferryman.child import Child

    child = Child("api")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(serve(child))
    return uvloop.run(serve(child))


async def serve(child: Any) -> int:
    import uvicorn

    from ferryman import gc_policy
    from ferryman import protocol as p
    from ferryman.board import Board
    from ferryman.frontend.dispatch import Dispatcher
    from ferryman.frontend.http_app import HttpApp
    from ferryman.frontend.metrics import ApiMetrics
    from ferryman.httpguard import guarded_protocol
    from ferryman.logs import kv
    from ferryman.metrics import FLUSH_INTERVAL
    from ferryman.zmqio import Reader

    log = logging.getLogger("ferryman.api")
    loop = asyncio.get_running_loop()
    spec = child.spec
    assert spec.api is not None
    board = Board(spec.board)
    dispatcher = Dispatcher(child.ctx, spec.api.endpoint, board, spec.server.max_queue)
    app = HttpApp(dispatcher, spec, ApiMetrics(child.metrics))
    asgi: Any = app
    if spec.server.litserve is not None:  # a LitServe file's LitServer: its routes and shapes
        from ferryman.frontend.litserve_routes import wrap

        asgi = wrap(app, spec.server.litserve)

    # JSON errors for what the parser cannot frame, and bounds on the request head (431, 408).
    JsonErrors = guarded_protocol(spec.server.body_timeout)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # ours are installed below; uvicorn's would re-raise them at exit

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn closes idle keep-alive connections at once, racing any request a client
            # is sending on one. Instead: stop accepting, answer the next request on each
            # connection with `connection: close` for a short grace, then close what is left.
            for srv in self.servers:
                srv.close()
            for sock in sockets or []:
                sock.close()
            # All of it within graceful_timeout: the supervisor's SIGKILL comes soon after.
            total = spec.server.graceful_timeout
            start = loop.time()
            grace = start + min(DRAIN_GRACE, total / 2)
            while self.server_state.connections and loop.time() < grace:
                await asyncio.sleep(0.02)
            for conn in list(self.server_state.connections):
                conn.shutdown()
            try:
                await asyncio.wait_for(
                    self._wait_tasks_to_complete(), max(0.1, start + total - loop.time())
                )
            except TimeoutError:
                # Requests still unanswered get a 503 (HttpApp answers a cancelled request so
                # while draining) rather than a connection closed without a word.
                tasks = list(self.server_state.tasks)
                for task in tasks:
                    task.cancel()
                if tasks:
                    await asyncio.wait(tasks, timeout=2)

    config = uvicorn.Config(
        asgi,
        http=JsonErrors,
        ws="none",  # an Upgrade request is answered as plain HTTP (JSON), never half-handled
        lifespan="off",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(spec.server.graceful_timeout)),
        timeout_keep_alive=5,
    )
    server = Server(config)

    def stop() -> None:
        if not server.should_exit:
            log.info("stopping: no new connections, finishing requests in flight")
        app.start_drain()
        server.should_exit = True

    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides

    def on_control(frames: list[bytes]) -> None:
        try:
            msg = p.from_supervisor(frames[0])
        except Exception:
            log.warning("dropped a malformed message from the supervisor")
            return
        if isinstance(msg, p.WorkerGone):
            dispatcher.worker_gone(msg.worker, msg.reason)
        elif isinstance(msg, p.Routes):
            app.set_routes(msg.models)

    control_reader = Reader(loop, child.control, on_control)

    beat_soon: list[asyncio.Handle] = []

    def beat() -> None:
        beat_soon.clear()
        child.heartbeat(app.in_flight, app.served, dispatcher.ready_workers())
        control_reader.kick()

    def workers_changed() -> None:
        # Tell the supervisor at once (coalesced): its readiness waits for what we know.
        if not beat_soon:
            beat_soon.append(loop.call_soon(beat))

    dispatcher.on_change = workers_changed

    async def periodic() -> None:
        next_beat = 0.0
        while True:
            try:
                now = loop.time()
                if now >= next_beat:
                    beat()
                    next_beat = now + HEARTBEAT_INTERVAL
                child.flush_metrics()
                control_reader.kick()
            except Exception as e:  # heartbeats and timeouts depend on this loop: keep it going
                log.error(f"periodic work failed: {e!r}", exc_info=e)
            await asyncio.sleep(FLUSH_INTERVAL)

    async def announce_ready() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        child.ready()
        control_reader.kick()
        log.info("serving", extra=kv(workers_ready=dispatcher.ready_count()))

    ticker = asyncio.ensure_future(periodic())
    # On a rolling reload, a new API process waits until the workers already serving have
    # connected to it before it accepts connections, so that it never answers 503 for want of one.
    if spec.api.expect_workers:
        await dispatcher.wait_for_workers(spec.api.expect_workers, timeout=10.0)
    gc_policy.freeze_startup()
    ready = asyncio.ensure_future(announce_ready())
    sock = socket.socket(fileno=spec.api.listen_fd)
    try:
        await server.serve(sockets=[sock])
    finally:
        ticker.cancel()
        ready.cancel()
        control_reader.close()
        dispatcher.close()
        board.close()
        child.close()
    log.info("stopped", extra=kv(served=app.served))
    return 0


if __name__ == "__main__":
    sys.exit(main())
