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
# Written for ferryman's fixtures in the style of LitServe's tests/e2e apps, from tests/unit/test_multiple_endpoints.py at commit 1311d5b4aeaff2943f38a22cfb911c8bae2590bc (the 0.2.17 snapshot); it uses only classes that LitServe ships.
import litserve as ls


if __name__ == "__main__":
    # Two APIs on one server, one streaming and one not (LitServe's "mixed streaming" path).
    api = ls.test_examples.SimpleLitAPI(api_path="/predict")
    stream_api = ls.test_examples.SimpleStreamAPI(stream=True, api_path="/stream")
    server = ls.LitServer([api, stream_api])
    server.run(port=8000)
