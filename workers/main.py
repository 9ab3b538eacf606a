"""Entry point of an inference worker process: `python -m ferryman.workers.main`.

The supervisor has already fixed CUDA_VISIBLE_DEVICES in our environment, before this first
import, so that torch (imported by the user's code, never here) sees exactly our one device.

Start-up, in order: the child's common start (spec, lifeline, logs, Hello), the user's code
imported and checked ("import"), `setup` ("setup"), the loop built and connected ("run"); a
failure at any of these is the app's fatal error, told to the supervisor once, exit status 3.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
from typing import Any

FATAL_EXIT = 3


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # a platform without uvloop: asyncio's own loop serves as well
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main() -> int:
    from ferryman.child import Child

    child = Child("worker")
    spec = child.spec
    assert spec.worker is not None, "a worker's spec names its model"
    model = spec.worker.model
    # LitServe apps read it; LitServe's own workers set it to their index.
    os.environ.setdefault("LITSERVE_WORKER_ID", str(spec.slot))

    from ferryman import gc_policy
    from ferryman.logs import kv
    from ferryman.workers import litserve_compat
    from ferryman.workers.hooks import Callbacks
    from ferryman.workers.litserve_compat import is_litapi
    from ferryman.workers.loader import load_api, prepare
    from ferryman.workers.loop import WorkerLoop

    log = logging.getLogger("ferryman.worker")
    # The loop exists before the user's code runs, so that setup() may create what binds to it.
    loop = _new_event_loop()
    asyncio.set_event_loop(loop)

    def fatal(stage: str, e: BaseException) -> int:
        child.fatal(stage, e)
        child.close()
        loop.close()
        return FATAL_EXIT

    try:
        api = load_api(model.app, model.instance_file, model.main_file)
        options = prepare(api, model.options, spec.worker.device)
        callbacks = Callbacks.of(api)
    except BaseException as e:
        return fatal("import", e)
    try:
        if callbacks.before_setup:
            callbacks.before_setup(api)
        setup = getattr(api, "setup", None)
        if callable(setup):
            done: Any = setup(spec.worker.device)
            if inspect.isawaitable(done):
                loop.run_until_complete(done)
    except BaseException as e:
        return fatal("setup", e)
    log.info("setup done", extra=kv(device=spec.worker.physical_device, api=type(api).__name__))
    try:
        if callbacks.after_setup:
            callbacks.after_setup(api)
        if callbacks.server_start:
            callbacks.server_start(api)
        worker = WorkerLoop(child, api, options, is_litapi(api))
    except Exception as e:
        return fatal("run", e)
    gc_policy.freeze_startup()  # after setup(): the model's own objects are start-up too
    status = 0
    try:
        loop.run_until_complete(worker.run())
    except Exception as e:
        if not worker.started:
            return fatal("run", e)
        log.exception("the worker's loop failed")
        status = 1
    if callbacks.server_end:
        callbacks.server_end(api)
    if is_litapi(api):
        litserve_compat.close(api)  # its loggers process what was logged
    child.close()
    loop.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
