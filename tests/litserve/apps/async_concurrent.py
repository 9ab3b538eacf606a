# Copyright The Lightning AI team.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
#
# TestAsyncLitAPI, TestSleepAsyncLitAPI copied unchanged from Lightning-AI/LitServe tests/unit/test_lit_server.py at commit 1311d5b4aeaff2943f38a22cfb911c8bae2590bc (the 0.2.17 snapshot); the imports they need and the __main__ block were written for ferryman's fixtures, in the style of LitServe's tests/e2e apps.
import asyncio

import litserve as ls
from litserve import LitServer


class TestAsyncLitAPI(ls.LitAPI):
    def setup(self, device):
        self.model = None

    async def decode_request(self, request):
        return request["input"]

    async def predict(self, x):
        return x**2

    async def encode_response(self, output):
        return {"output": output}


class TestSleepAsyncLitAPI(TestAsyncLitAPI):
    async def predict(self, x):
        # simulate a long-running task
        await asyncio.sleep(4)
        return x**2


if __name__ == "__main__":
    server = LitServer(TestSleepAsyncLitAPI(enable_async=True))
    server.run(port=8000)
