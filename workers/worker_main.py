"""Entry point of an inference worker process: `python -m ferryman.workers.worker_main`.

The supervisor has already fixed CUDA_VISIBLE_DEVICES in our environment, before this first
import, so that torch (imported by the user's code, never here) sees exactly our one device.
"""

from __future__ import annotations

import logging
import os
import sys


def main() -> int:
    from ferryman import protocol as p
    from ferryman.lifeline import bind_to_parent

    spec = p.decode_spec(os.environ[p.CHILD_ENV])
    bind_to_parent(spec.supervisor_pid)

    from ferryman.workers import gc_policy

    gc_policy.relax()

    import zmq
    from ferryman.workers import control_link
    from ferryman.workers.hooks import Callbacks
    from ferryman.workers.loader import load_api, prepare
    from ferryman.workers.metrics import WorkerMetrics
    from ferryman.workers.worker_loop import WorkerLoop

    from ferryman import logs
    from ferryman.logs import kv

    opts = spec.options
    logs.setup("worker", spec.slot, str(opts["log_level"]), str(opts["log_format"]))
    log = logging.getLogger("ferryman.worker")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    control = control_link.connect(ctx, spec)

    try:
        api = load_api(str(opts["app"]), opts.get("instance_file"))
        prepare(api, opts, spec.device)
    except BaseException as e:
        control_link.report_fatal(control, "import", e)
        control.close()
        ctx.term()
        return 3
    try:
        api.setup(spec.device)
    except BaseException as e:
        control_link.report_fatal(control, "setup", e)
        control.close()
        ctx.term()
        return 3
    log.info("setup done", extra=kv(device=spec.physical_device, api=type(api).__name__))
    callbacks = Callbacks.of(api)
    if callbacks.server_start:
        callbacks.server_start(api)
    gc_policy.freeze_startup()  # after setup(): the model's own objects are start-up too
    loop = WorkerLoop(ctx, control, spec, api, WorkerMetrics())
    loop.run()
    if callbacks.server_end:
        callbacks.server_end(api)
    control.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
