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
# TestAPIWithReasoningEffort copied unchanged from Lightning-AI/LitServe tests/unit/test_specs.py at commit 1311d5b4aeaff2943f38a22cfb911c8bae2590bc (the 0.2.17 snapshot); the imports they need and the __main__ block were written for ferryman's fixtures, in the style of LitServe's tests/e2e apps.
import litserve as ls
from litserve.specs.openai import ChatMessage, OpenAISpec
from litserve.test_examples.openai_spec_example import TestAPI


class TestAPIWithReasoningEffort(TestAPI):
    def encode_response(self, output, context):
        yield ChatMessage(
            role="assistant",
            content=f"This is a generated output with reasoning effort: {context.get('reasoning_effort', None)}",
        )


if __name__ == "__main__":
    server = ls.LitServer(TestAPIWithReasoningEffort(spec=OpenAISpec()))
    server.run(port=8000)
