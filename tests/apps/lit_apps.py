"""LitServe APIs written the way LitServe's README and examples write them, served unchanged."""

import litserve as ls
import numpy as np
from fastapi import Response
from pydantic import BaseModel


# LitServe's README quick start.
class InferencePipeline(ls.LitAPI):
    def setup(self, device):
        self.model1 = lambda x: x**2
        self.model2 = lambda x: x**3

    def predict(self, request):
        x = request["input"]
        # perform calculations using both models
        a = self.model1(x)
        b = self.model2(x)
        c = a + b
        return {"output": c}


# The four-method form, and the device LitServe sets on the instance.
class SimpleLitAPI(ls.LitAPI):
    def setup(self, device):
        self.model = lambda x: x**2
        self.setup_device = device

    def decode_request(self, request):
        return request["input"]

    def predict(self, x):
        return self.model(x)

    def encode_response(self, output):
        return {"output": output, "device": self.device, "setup_device": self.setup_device}


# LitServe's batching example: decode to numpy, batch stacks, unbatch splits.
class SimpleBatchedAPI(ls.LitAPI):
    def setup(self, device):
        self.model = lambda x: x**2

    def decode_request(self, request):
        return np.asarray(request["input"])

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return {"squares": self.model(x), "batch_size": len(x)}

    def unbatch(self, output):
        return [{"output": float(s), "batch_size": output["batch_size"]} for s in output["squares"]]

    def encode_response(self, output):
        return output


# LitServe's streaming example.
class SimpleStreamAPI(ls.LitAPI):
    def setup(self, device) -> None:
        self.model = lambda x, y: f"{x}: {y}"

    def decode_request(self, request):
        return request["input"]

    def predict(self, x):
        for i in range(3):
            yield self.model(i, x)

    def encode_response(self, output_stream):
        for output in output_stream:
            yield {"output": output}


# An instance built with its settings: served as lit_apps.py:stream_api, no --stream needed.
stream_api = SimpleStreamAPI(stream=True)


# Batched streaming, LitServe's way: encode_response sees the batch's stream, one list per step.
class BatchedStreamAPI(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        return request["input"]

    def batch(self, inputs):
        return inputs

    def predict(self, inputs):
        for i in range(3):
            yield [f"{x}-{i}/{len(inputs)}" for x in inputs]

    def unbatch(self, output):
        return output

    def encode_response(self, output_stream):
        for outputs in output_stream:
            yield [{"output": o} for o in outputs]


# Request validation by a pydantic annotation, a context argument, HTTPException, Response.
class Item(BaseModel):
    name: str
    count: int


class TypedAPI(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request: Item, context):
        context["name"] = request.name
        if request.count < 0:
            from fastapi import HTTPException

            raise HTTPException(status_code=400, detail="count must be >= 0")
        return request.count

    def predict(self, x, context):
        return x * 2

    def encode_response(self, output, context):
        if output == 0:
            return Response(content=b"\x89PNG...", media_type="image/png")
        return {"name": context["name"], "doubled": output}


# LitServe's OpenAI-spec examples (litserve/test_examples/openai_spec_example.py).
class OpenAIAPI(ls.LitAPI):
    def setup(self, device):
        self.model = None

    def predict(self, x):
        yield "This is a generated output"


# As LitServe's README builds it: an instance with the spec.
openai_api = OpenAIAPI(spec=ls.OpenAISpec())


class OpenAIWithUsageEncodeResponse(ls.LitAPI):
    def setup(self, device):
        self.model = None

    def decode_request(self, request):
        return request.messages[-1].content

    def predict(self, x, context):
        # streaming tokens
        yield from [x, " +", " ", "6", " is", " equal", " to", " ", "16", "."]

    def encode_response(self, output):
        for out in output:
            yield {"role": "assistant", "content": out}

        yield {
            "role": "assistant",
            "content": "",
            "prompt_tokens": 25,
            "completion_tokens": 10,
            "total_tokens": 35,
        }


# What ferryman refuses, by name.
class AsyncAPI(ls.LitAPI):
    def setup(self, device):
        pass

    async def predict(self, x):
        return x


class AuthAPI(ls.LitAPI):
    def setup(self, device):
        pass

    def predict(self, x):
        return x

    def authorize(self, auth):
        return True
