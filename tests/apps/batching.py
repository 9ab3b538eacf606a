"""Test APIs for dynamic batching: each answer tells which batch it was part of."""

import os

import numpy as np

import ferryman


class BatchSize(ferryman.API):
    """Answers each request with the size of the batch predict saw it in."""

    def decode_request(self, request):
        if "bad" in request:
            raise ferryman.HTTPException(422, "bad input")
        if "boom" in request:
            raise ValueError("boom in decode_request")
        return request["input"]

    def predict(self, xs):
        return [{"input": x, "batch_size": len(xs), "pid": os.getpid()} for x in xs]


class Stacked(ferryman.API):
    """numpy inputs: the default batch() stacks them into one array."""

    def decode_request(self, request):
        return np.asarray(request["input"], dtype=np.float64)

    def predict(self, x):
        return [
            {"type": type(x).__name__, "shape": list(x.shape), "sum": float(row.sum())} for row in x
        ]
