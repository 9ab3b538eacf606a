"""Entry point of an API process: `python -m ferryman.workers.api_main`.

A uvicorn server on the listening socket the supervisor bound and passed down (so every API
process accepts on the same port), plus the ZeroMQ sockets workers connect to. No user code is
imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

# Seconds a stopping API process keeps its open connections, answering each next request with
# `connection: close`, before it closes the idle ones.
DRAIN_GRACE = 1.0


def main() -> int:
    from ferryman import protocol as p
    from ferryman.lifeline import bind_to_parent

    spec = p.decode_spec(os.environ[p.CHILD_ENV])
    bind_to_parent(spec.supervisor_pid)

    from ferryman.workers import gc_policy

    gc_policy.relax()

    from ferryman import logs

    logs.setup("api", spec.slot, str(spec.options["log_level"]), str(spec.options["log_format"]))
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(serve(spec))
    return uvloop.run(serve(spec))


async def serve(spec: Any) -> int:
    import uvicorn
    import zmq
    from ferryman.workers import control_link, gc_policy
    from ferryman.workers.dispatch import Dispatcher
    from ferryman.workers.http_app import HttpApp
    from ferryman.workers.metrics import FLUSH_INTERVAL, ApiMetrics

    from ferryman import protocol as p
    from ferryman.logs import kv
    from ferryman.zmqio import Reader

    log = logging.getLogger("ferryman.api")
    loop = asyncio.get_running_loop()
    opts = spec.options
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dispatcher = Dispatcher(ctx, spec.endpoint, opts)
    control = control_link.connect(ctx, spec)
    metrics = ApiMetrics()
    app = HttpApp(dispatcher, spec, metrics)

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
            grace = loop.time() + DRAIN_GRACE
            while self.server_state.connections and loop.time() < grace:
                await asyncio.sleep(0.02)
            for conn in list(self.server_state.connections):
                conn.shutdown()
            try:
                await asyncio.wait_for(
                    self._wait_tasks_to_complete(), self.config.timeout_graceful_shutdown
                )
            except TimeoutError:
                for task in self.server_state.tasks:
                    task.cancel()

    config = uvicorn.Config(
        app,
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(max(1, float(opts["graceful_timeout"]))),
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
        msg = p.from_supervisor(frames[0])
        if isinstance(msg, p.WorkerGone):
            dispatcher.worker_gone(msg.worker, msg.reason)

    control_reader = Reader(loop, control, on_control)

    async def heartbeat() -> None:
        while True:
            control.send(p.encode(p.Heartbeat(app.in_flight, app.served)), zmq.NOBLOCK)
            control_reader.kick()
            await asyncio.sleep(1.0)

    async def announce_ready() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        control.send(p.encode(p.Ready()))
        control_reader.kick()
        log.info("serving", extra=kv(workers_ready=dispatcher.ready_count))

    async def flush_metrics() -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            metrics.flush(app.in_flight)

    hb = asyncio.ensure_future(heartbeat())
    flusher = asyncio.ensure_future(flush_metrics())
    # On a rolling reload, a new API process waits until the workers already serving have
    # connected to it before it accepts connections, so that it never answers 503 for want of one.
    if spec.expect_workers:
        await dispatcher.wait_for_workers(spec.expect_workers, timeout=10.0)
    gc_policy.freeze_startup()
    ready = asyncio.ensure_future(announce_ready())
    sock = socket.socket(fileno=spec.listen_fd)
    try:
        await server.serve(sockets=[sock])
    finally:
        hb.cancel()
        ready.cancel()
        flusher.cancel()
        metrics.flush(0)
        control_reader.close()
        dispatcher.close()
        control.close(0)
        ctx.term()
    log.info("stopped", extra=kv(served=app.served))
    return 0


if __name__ == "__main__":
    sys.exit(main())
