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
# NonPickleableLogger, PickleTestAPI copied unchanged from Lightning-AI/LitServe tests/unit/test_logger.py at commit 1311d5b4aeaff2943f38a22cfb911c8bae2590bc (the 0.2.17 snapshot); the imports they need and the __main__ block were written for ferryman's fixtures, in the style of LitServe's tests/e2e apps.
import threading

import litserve as ls


class NonPickleableLogger(ls.Logger):
    # This is a logger that contains a non-picklable resource
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()  # Non-picklable resource

    def process(self, key, value):
        with self._lock:
            print(f"Logged {key}: {value}", flush=True)


class PickleTestAPI(ls.test_examples.SimpleLitAPI):
    def predict(self, x):
        self.log("my-key", x)
        return super().predict(x)


if __name__ == "__main__":
    server = ls.LitServer(PickleTestAPI(), loggers=NonPickleableLogger())
    server.run(port=8000)
