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
# FailingLitAPI copied unchanged from Lightning-AI/LitServe tests/unit/test_lit_server.py at commit 1311d5b4aeaff2943f38a22cfb911c8bae2590bc (the 0.2.17 snapshot); the imports they need and the __main__ block were written for ferryman's fixtures, in the style of LitServe's tests/e2e apps.
import os

from litserve import LitAPI, LitServer


class FailingLitAPI(LitAPI):
    def setup(self, device):
        worker_id = os.environ.get("LITSERVE_WORKER_ID", "0")
        print(f"Worker {worker_id} setup successfully on {device}")

    def decode_request(self, request):
        return request["input"]

    def predict(self, x):
        if x == 0:
            os._exit(1)  # This will terminate the worker process
        return int(os.environ.get("LITSERVE_WORKER_ID", "0"))

    def encode_response(self, output):
        return {"output": output}


if __name__ == "__main__":
    # {"input": 0} kills the worker that takes it (os._exit(1)); LitServe starts a new one.
    server = LitServer(FailingLitAPI(), accelerator="cpu", devices=1, workers_per_device=2, restart_workers=True)
    server.run(port=8000)
