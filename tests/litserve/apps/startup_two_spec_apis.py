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
# Written for ferryman's fixtures in the style of LitServe's tests/e2e apps, from tests/unit/test_openai_embedding.py at commit 1311d5b4aeaff2943f38a22cfb911c8bae2590bc (the 0.2.17 snapshot); it uses only classes that LitServe ships.
import litserve as ls
from litserve.specs.openai_embedding import OpenAIEmbeddingSpec
from litserve.test_examples.openai_embedding_spec_example import (
    TestEmbedAPIWithMissingEmbeddings,
    TestEmbedAPIWithNonDictOutput,
)


if __name__ == "__main__":
    # Two spec APIs on one server, the second on a custom path: LitServe checks the paths for
    # collisions before the spec has read the LitAPI's api_path, and refuses it.
    non_dict = TestEmbedAPIWithNonDictOutput(spec=OpenAIEmbeddingSpec())
    missing = TestEmbedAPIWithMissingEmbeddings(spec=OpenAIEmbeddingSpec(), api_path="/v2/embeddings")
    server = ls.LitServer([non_dict, missing])
    server.run(port=8000)
