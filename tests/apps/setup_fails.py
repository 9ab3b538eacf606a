import os

import ferryman


class SetupFails(ferryman.API):
    """Fails in setup on the worker slots listed in FAIL_SLOTS (all when unset)."""

    def setup(self, device):
        slots = os.environ.get("FAIL_SLOTS")
        if slots is None or os.environ["FERRYMAN_WORKER_ID"] in slots.split(","):
            raise RuntimeError(f"cannot load weights on worker {os.environ['FERRYMAN_WORKER_ID']}")

    def predict(self, x):
        return {"pid": os.getpid(), "worker": int(os.environ["FERRYMAN_WORKER_ID"])}
