"""LitServe APIs for the worker tests of LitServe's request, auth, health, logger, callback and
spec conventions (tests/test_worker_litserve.py). Events go to the file $FERRYMAN_TEST_EVENTS."""

# ruff: noqa: B008  (FastAPI dependencies are written as argument defaults)
import os
import time

import litserve as ls
import numpy as np
from fastapi import Depends, Header, HTTPException, Request, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from litserve.specs.base import LitSpec
from pydantic import BaseModel


def event(what):
    path = os.environ.get("FERRYMAN_TEST_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{what}\n")


# -- what decode_request receives -----------------------------------------------------------------


class Describe(ls.LitAPI):
    """LitServe's own tests/simple_server.py annotates `request: Request` and indexes a dict."""

    def setup(self, device):
        pass

    def decode_request(self, request: Request):
        if isinstance(request, dict | list | int | float | str):
            return {"type": type(request).__name__, "value": request}
        fields = {}
        for key, value in request.multi_items():
            if hasattr(value, "file"):
                fields[key] = {"filename": value.filename, "size": len(value.file.read())}
            else:
                fields[key] = value
        return {"type": type(request).__name__, "value": fields}

    def predict(self, x):
        return x

    def encode_response(self, output):
        return output


class Item(BaseModel):
    input: float


class Typed(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request: Item):
        return request.input

    def predict(self, x):
        return x * 2

    def encode_response(self, output):
        return {"output": output}


# -- authorize ----------------------------------------------------------------------------------


class Bearer(ls.LitAPI):
    """LitServe's tests/unit/test_auth.py form: HTTPBearer, then the token checked."""

    def setup(self, device):
        pass

    def decode_request(self, request):
        event(f"decode {request['input']}")
        return request["input"]

    def predict(self, x):
        return x * 2

    def encode_response(self, output):
        return {"output": output}

    def authorize(self, auth: HTTPAuthorizationCredentials = Depends(HTTPBearer())):
        if auth.scheme != "Bearer" or auth.credentials != "s3cret":
            raise HTTPException(status_code=401, detail="Bad token")


class ApiKey(Bearer):
    async def authorize(self, key: str = Depends(APIKeyHeader(name="X-Key"))):
        if key != "k1":
            raise HTTPException(status_code=403, detail="Wrong key")


class NeedsHeader(Bearer):
    def authorize(self, x_tenant: str = Header(...)):
        if x_tenant == "boom":
            raise RuntimeError("tenant-secret-123")


# -- health, loggers, callbacks -----------------------------------------------------------------


class Healthy(ls.LitAPI):
    """Healthy while $FERRYMAN_TEST_SICK does not exist."""

    def setup(self, device):
        pass

    def predict(self, x):
        return x

    def health(self):
        return not os.path.exists(os.environ["FERRYMAN_TEST_SICK"])


class FileLogger(ls.Logger):
    def process(self, key, value):
        event(f"logger {key}={value} pid={os.getpid()}")


class BrokenLogger(ls.Logger):
    def process(self, key, value):
        raise RuntimeError("a broken logger")


class Hooks(ls.Callback):
    def on_before_setup(self, lit_api):
        event("on_before_setup")

    def on_after_setup(self, lit_api):
        event(f"on_after_setup device={lit_api.device}")

    def on_server_start(self, *args, **kwargs):
        event("on_server_start")

    def on_request(self, active_requests, **kwargs):
        event(f"on_request active={active_requests}")

    def on_before_decode_request(self, lit_api):
        event("on_before_decode_request")

    def on_after_decode_request(self, lit_api):
        event("on_after_decode_request")

    def on_before_predict(self, lit_api):
        event("on_before_predict")

    def on_after_predict(self, lit_api):
        event("on_after_predict")
        lit_api.log("from_callback", 1)

    def on_before_encode_response(self, lit_api):
        event("on_before_encode_response")

    def on_after_encode_response(self, lit_api):
        event("on_after_encode_response")

    def on_response(self, *args, **kwargs):
        event("on_response")

    def on_server_end(self, *args, **kwargs):
        event("on_server_end")


class Logged(ls.LitAPI):
    def setup(self, device):
        event("setup")

    def decode_request(self, request):
        event("decode_request")
        return request["input"]

    def predict(self, x):
        event("predict")
        self.log("squared", x * x)
        return x * x

    def encode_response(self, output):
        event("encode_response")
        return {"output": output}


def logged():
    """A Logged as ferryman.litserve hands it over: LitServer's callbacks and loggers on it."""
    api = Logged()
    api._ferryman_callbacks = [Hooks()]
    api._ferryman_loggers = [FileLogger, BrokenLogger()]  # a class: re-created in the worker
    return api


# -- errors and answers ---------------------------------------------------------------------------


class Errors(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        return request

    def predict(self, x):
        kind = x.get("raise")
        if kind == "starlette":
            from starlette.exceptions import HTTPException as StarletteHTTPException

            raise StarletteHTTPException(status_code=418, detail="teapot")
        if kind == "204":
            raise HTTPException(status_code=204)
        if kind == "headers":
            raise HTTPException(status_code=429, detail="slow down", headers={"Retry-After": "9"})
        if kind == "value":
            raise ValueError("password=hunter2")
        return x

    def encode_response(self, output):
        if output.get("numpy"):
            return {"output": np.int64(3)}  # FastAPI cannot encode it: a bare text 500
        if output.get("response"):
            return Response(content="made", status_code=201, headers={"x-made": "1"})
        return output


class Mismatch(ls.LitAPI):
    def setup(self, device):
        pass

    def predict(self, xs):
        return xs

    def unbatch(self, output):  # one output too many
        return [*output, "extra"]


class Streams(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        return request["n"]  # KeyError for a body without n: the stream just ends

    def predict(self, n):
        for i in range(n):
            if i == 2:
                raise ValueError("secret-stream-error")
            yield i

    def encode_response(self, outputs):
        for i in outputs:
            yield {"i": i}


streams = Streams(stream=True)


# -- specs ----------------------------------------------------------------------------------------


class Chat(ls.LitAPI):
    def setup(self, device):
        self.runs = 0

    def predict(self, request):
        self.runs = getattr(self, "runs", 0) + 1  # the engine tests run it without setup
        yield f"run {self.runs}: "
        yield request.messages[-1].content


chat = Chat(spec=ls.OpenAISpec())
chat_custom_path = Chat(spec=ls.OpenAISpec(), api_path="/v2/chat/completions")


class Embed(ls.LitAPI):
    def setup(self, device):
        pass

    def predict(self, inputs):
        items = inputs if isinstance(inputs, list) else [inputs]
        return [[float(len(s)), 0.5, -1.0] for s in items]


embed = Embed(spec=ls.OpenAIEmbeddingSpec())


class EmbedBatched(ls.LitAPI):
    def setup(self, device):
        pass

    def predict(self, inputs):
        time.sleep(0.2)  # long enough for concurrent requests to share a batch
        return np.asarray([[float(len(s)), float(len(inputs))] for s in inputs])


embed_batched = EmbedBatched(spec=ls.OpenAIEmbeddingSpec(), max_batch_size=4, batch_timeout=0.1)


class MySpec(LitSpec):
    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output


unknown_spec = Errors(spec=MySpec())
