"""What a user subclasses, run in the inference workers: the API class, callbacks, HTTPException.

The class is LitServe-shaped (setup / decode_request / predict / encode_response, optional
batch / unbatch); users import it from `ferryman`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class HTTPException(Exception):
    """Raise from user code for a clean error response: `raise HTTPException(422, "bad size")`.

    Any exception with an integer `status_code` and a `detail` (FastAPI's and Starlette's
    HTTPException, as LitServe users raise) is answered the same way.
    """

    def __init__(self, status_code: int, detail: Any = None) -> None:
        super().__init__(detail)
        self.status_code = int(status_code)
        self.detail = detail


class API:
    """Subclass and override. One instance runs in each inference worker process.

    setup(device)          once per worker; device is "cpu" or "cuda:0" (the worker sees one GPU)
    decode_request(req)    req is the parsed JSON body; returns the model's input
    batch(inputs)          only with max_batch_size > 1: a list of inputs -> one batched input
    predict(x)             the model; a generator when streaming
    unbatch(output)        only with max_batch_size > 1: batched output -> one output per request
    encode_response(out)   returns something JSON-serialisable; a generator when streaming

    Any of decode_request, predict, encode_response, batch and unbatch may take a `context`
    argument (by that name): the request's `ferryman.Context`, a list of them for batch-level
    calls. `callbacks = [MyCallback()]` on the class adds `ferryman.Callback` hooks.

    Any of them may also be `async def` (predict and encode_response async generators when
    streaming): the worker then runs on an event loop and keeps many requests in flight at once,
    each awaiting on its own. Plain `def` methods run one request (or batch) at a time.
    """

    callbacks: list[Callback] = []

    def setup(self, device: str) -> None:
        pass

    def decode_request(self, request: Any) -> Any:
        return request

    def batch(self, inputs: list[Any]) -> Any:
        return default_batch(inputs)

    def predict(self, x: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define predict(self, x)")

    def unbatch(self, output: Any) -> list[Any]:
        return list(output)

    def encode_response(self, output: Any) -> Any:
        return output


def default_batch(inputs: Sequence[Any]) -> Any:
    """Stack numpy arrays or torch tensors into one; anything else stays a list.

    Looks at the type's module instead of importing numpy or torch, so a worker that never uses
    them never pays for the import.
    """
    if not inputs:
        return list(inputs)
    module = type(inputs[0]).__module__.split(".")[0]
    if module == "torch" and all(type(x).__module__.startswith("torch") for x in inputs):
        import torch

        return torch.stack(list(inputs))
    if module == "numpy" and all(type(x).__module__.startswith("numpy") for x in inputs):
        import numpy

        return numpy.stack(list(inputs))
    return list(inputs)


class Callback:
    """Hooks around the server's life and each predict; override the ones you need.

    Listed in the API's `callbacks` attribute; each runs in every inference worker and receives
    the API instance. An exception in a hook is logged and does not fail the request. With a
    stream, on_after_predict runs when the stream ends.
    """

    def on_server_start(self, api: Any) -> None:
        """After setup, before the worker takes its first request."""

    def on_server_end(self, api: Any) -> None:
        """When the worker stops, after its last request."""

    def on_before_predict(self, api: Any) -> None:
        """Before each predict call (once per batch)."""

    def on_after_predict(self, api: Any) -> None:
        """After each predict call (once per batch)."""


class OpenAISpec:
    """`Server(api, spec=OpenAISpec())`: serve POST /v1/chat/completions, OpenAI's chat API.

    The same as `spec="openai"` / `--spec openai`. predict receives the messages (a list of
    {"role", "content"} dicts, or what your decode_request returns from the whole request) and
    yields strings or {"role", "content"} dicts; the other request fields are in the context.
    """

    name = "openai"

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return "OpenAISpec()"
