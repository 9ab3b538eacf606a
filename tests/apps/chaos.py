"""A model for the chaos, fuzz and soak suites: each answer proves which request it answers.

The client sends a unique `id` and a number `n`; the answer carries them back (`n2` = 2n, so the
body was really decoded and computed on, not copied), with the model, worker slot and pid that
made it. `sleep` keeps a request on its worker for a while, so that a worker killed under load
holds requests. Anything else in the body is accepted, so that hostile but valid JSON reaches the
worker and is answered 200 with its type.
"""

import os
import time

import ferryman


class Chaos(ferryman.API):
    def setup(self, device):
        self.model = os.environ["FERRYMAN_MODEL"]
        self.slot = int(os.environ["FERRYMAN_WORKER_ID"])
        self.pid = os.getpid()

    def decode_request(self, request):
        return request

    def predict(self, x):
        if not isinstance(x, dict) or "id" not in x:
            return {"kind": type(x).__name__, "model": self.model, "pid": self.pid}
        if x.get("sleep"):
            time.sleep(float(x["sleep"]))
        return {
            "id": x["id"],
            "n2": x["n"] * 2,
            "model": self.model,
            "slot": self.slot,
            "pid": self.pid,
        }

    def encode_response(self, output):
        return output
