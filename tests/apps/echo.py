"""Test APIs: echo back the input with the worker's identity and device environment."""

import os
import time

import ferryman


class Echo(ferryman.API):
    def setup(self, device):
        self.device = device

    def decode_request(self, request):
        if "fail" in request:
            raise ferryman.HTTPException(int(request["fail"]), "asked to fail")
        if "boom" in request:
            raise ValueError("boom in decode_request")
        return request

    def predict(self, x):
        if x.get("started"):  # tell the test this request is running, and where
            with open(x["started"], "w") as f:
                f.write(str(os.getpid()))
        if x.get("sleep"):
            time.sleep(float(x["sleep"]))
        if x.get("crash"):
            os._exit(13)
        if x.get("predict_error"):
            raise RuntimeError("predict failed on purpose")
        return {
            "input": x.get("input"),
            "worker": int(os.environ["FERRYMAN_WORKER_ID"]),
            "pid": os.getpid(),
            "device": self.device,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    def encode_response(self, output):
        if output["input"] == "unencodable":
            return {"output": object()}
        return output
