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
# Copied unchanged from Lightning-AI/LitServe tests/e2e/default_mcp.py at commit 1311d5b4aeaff2943f38a22cfb911c8bae2590bc (the 0.2.17 snapshot); only the header lines above and this one were added.
from pydantic import BaseModel

import litserve as ls
from litserve.mcp import MCP


class PowerRequest(BaseModel):
    input: float


class MyLitAPI(ls.test_examples.SimpleLitAPI):
    def decode_request(self, request: PowerRequest) -> int:
        print(f"Decoding request: {request}")
        return request.input


if __name__ == "__main__":
    api = MyLitAPI(mcp=MCP(description="Returns the power of a number."))
    server = ls.LitServer(api)
    server.run(port=8000)
