"""A ferryman API on the OpenAI embeddings route (spec = "openai_embedding")."""

import ferryman


class Embedder(ferryman.API):
    def predict(self, inputs):
        items = inputs if isinstance(inputs, list) else [inputs]
        return [[float(len(s)), 1.0] for s in items]
