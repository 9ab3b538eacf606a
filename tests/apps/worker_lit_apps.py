"""LitServe APIs for the worker-process tests: errors, the timeout rule, async."""

import asyncio
import os
import time

import litserve as ls


class LitSlow(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        if "boom" in request:
            raise ValueError("secret-token-lit")
        return request

    def predict(self, x):
        time.sleep(float(x.get("sleep", 0)))
        return {"input": x.get("input"), "worker_id": os.environ.get("LITSERVE_WORKER_ID")}

    def encode_response(self, output):
        return output


class LitAsync(ls.LitAPI):
    """LitServe's enable_async=True: many requests in flight in one worker."""

    def setup(self, device):
        self.active = 0
        self.peak = 0

    async def decode_request(self, request):
        return request

    async def predict(self, x):
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(float(x.get("sleep", 0.3)))
        finally:
            self.active -= 1
        return {"input": x.get("input"), "peak": self.peak}

    async def encode_response(self, output):
        return output


lit_async = LitAsync(enable_async=True)
