"""ferryman: serve a model over HTTP under a real process supervisor.

    import ferryman

    class Doubler(ferryman.API):
        def setup(self, device): self.k = 2
        def decode_request(self, request): return request["input"]
        def predict(self, x): return x * self.k
        def encode_response(self, output): return {"output": output}

    ferryman.Server(Doubler(), workers_per_device=2).run(port=8000)

Everything a user imports is re-exported here, and only here.
"""

from ferryman._version import __version__
from ferryman.server import Server
from ferryman.workers.api import API, Callback, HTTPException, OpenAISpec
from ferryman.workers.engine import Context

__all__ = ["API", "Callback", "Context", "HTTPException", "OpenAISpec", "Server", "__version__"]
