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
# SimpleLitAPI, AsyncHealthLitAPI copied unchanged from Lightning-AI/LitServe tests/unit/test_simple.py at commit 1311d5b4aeaff2943f38a22cfb911c8bae2590bc (the 0.2.17 snapshot); the imports they need and the __main__ block were written for ferryman's fixtures, in the style of LitServe's tests/e2e apps.
import asyncio

from fastapi import Request, Response

from litserve import LitAPI, LitServer


class SimpleLitAPI(LitAPI):
    def setup(self, device):
        self.model = lambda x: x**2

    def decode_request(self, request: Request):
        return request["input"]

    def predict(self, x):
        return self.model(x)

    def encode_response(self, output) -> Response:
        return {"output": output}


class AsyncHealthLitAPI(SimpleLitAPI):
    async def health(self) -> bool:
        await asyncio.sleep(0.1)
        return True


if __name__ == "__main__":
    server = LitServer(AsyncHealthLitAPI(), accelerator="cpu", devices=1, timeout=5)
    server.run(port=8000)
