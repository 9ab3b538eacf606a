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
# MetadataRequiredAPI copied unchanged from Lightning-AI/LitServe tests/unit/test_specs.py at commit 1311d5b4aeaff2943f38a22cfb911c8bae2590bc (the 0.2.17 snapshot); the imports they need and the __main__ block were written for ferryman's fixtures, in the style of LitServe's tests/e2e apps.
from fastapi import HTTPException

import litserve as ls
from litserve.specs.openai import OpenAISpec


class MetadataRequiredAPI(ls.LitAPI):
    def setup(self, device):
        self.device = device

    def decode_request(self, request):
        return request

    def predict(self, request):
        metadata = request.metadata
        if not metadata or "user_id" not in metadata:
            raise HTTPException(status_code=500, detail="Missing required metadata")
        yield "ok"


if __name__ == "__main__":
    server = ls.LitServer(MetadataRequiredAPI(spec=OpenAISpec()))
    server.run(port=8000)
