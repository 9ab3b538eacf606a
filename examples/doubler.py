"""The smallest ferryman API: doubles a number.

ferryman serve examples/doubler.py:Doubler
curl -d '{"input": 21}' localhost:8000/predict      # {"output":42}
"""

import ferryman


class Doubler(ferryman.API):
    def setup(self, device):
        self.k = 2

    def decode_request(self, request):
        return request["input"]

    def predict(self, x):
        return x * self.k

    def encode_response(self, output):
        return {"output": output}


if __name__ == "__main__":
    ferryman.Server(Doubler(), workers_per_device=2).run(port=8000)
