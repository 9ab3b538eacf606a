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
# Written for ferryman's fixtures in the style of LitServe's tests/e2e apps, from tests/unit/test_lit_server.py at commit 1311d5b4aeaff2943f38a22cfb911c8bae2590bc (the 0.2.17 snapshot); it uses only classes that LitServe ships.
import litserve as ls


if __name__ == "__main__":
    # LitServer arguments deprecated in favour of LitAPI's (test_lit_server.py::test_max_batch_size_warning).
    server = ls.LitServer(ls.test_examples.SimpleBatchedAPI(), max_batch_size=4, batch_timeout=0.05, api_path="/v1/predict")
    server.run(port=8000)
