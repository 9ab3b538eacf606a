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
# Copied unchanged from Lightning-AI/LitServe tests/e2e/openai_embedding_with_batching.py at commit 1311d5b4aeaff2943f38a22cfb911c8bae2590bc (the 0.2.17 snapshot); only the header lines above and this one were added.
import numpy as np

import litserve as ls


class EmbeddingsAPI(ls.LitAPI):
    def setup(self, device):
        def model(x):
            return np.random.rand(len(x), 768)

        self.model = model

    def predict(self, inputs):
        return self.model(inputs)


if __name__ == "__main__":
    api = EmbeddingsAPI(max_batch_size=10, batch_timeout=2, spec=ls.OpenAIEmbeddingSpec())
    server = ls.LitServer(api)
    server.run(port=8000)
