"""A model that leaks: every call keeps 8 MiB, as a cache that is never emptied would."""

import os

import ferryman


class Leaky(ferryman.API):
    def setup(self, device):
        self.kept = []

    def predict(self, x):
        self.kept.append(bytearray(os.urandom(1024)) * 8192)  # 8 MiB, really touched
        return {"input": x.get("input"), "pid": os.getpid(), "calls": len(self.kept)}
