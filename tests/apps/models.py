"""Test APIs for several models in one server: each answer says which model and worker made it."""

import os
import time

import ferryman


class _Model(ferryman.API):
    kind = "model"

    def setup(self, device):
        self.device = device

    def predict(self, x):
        if x.get("sleep"):
            time.sleep(float(x["sleep"]))
        return {
            "model": self.kind,
            "input": x.get("input"),
            "pid": os.getpid(),
            "worker": int(os.environ["FERRYMAN_WORKER_ID"]),
            "served_as": os.environ.get("FERRYMAN_MODEL"),
            "device": self.device,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }


class Embedder(_Model):
    kind = "embed"


class Reranker(_Model):
    kind = "rerank"


class Broken(ferryman.API):
    def setup(self, device):
        raise RuntimeError("the weights of Broken are missing")

    def predict(self, x):
        return x


class Chatty(ferryman.API):
    """An OpenAI chat model that says its own name, so a test can see which model answered."""

    def predict(self, messages):
        yield f"{type(self).__name__} heard: {messages[-1]['content']}"


class Talky(Chatty):
    pass
