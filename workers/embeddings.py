"""The OpenAI embeddings route (`spec="openai_embedding"`), as the inference worker renders it for
a ferryman API (a LitAPI's is in litserve_specs.py, LitServe's own).

LitServe's OpenAIEmbeddingSpec conventions: decode_request receives the `input` (a string, a list
of strings, a list of token ids or a list of such lists: your own decode_request gets the whole
request instead), predict returns one vector per input (a list of lists, a 2-D numpy array or
tensor; a single vector for a single input), and encode_response may return the vectors, or a
dict with `embeddings` and optional `prompt_tokens` / `total_tokens` (the usage). The answer is
OpenAI's `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
"usage"}`, each embedding a list of floats, or with `"encoding_format": "base64"` the base64 of
its little-endian float32s (what the official client asks for by default). With batching, each
request brings one input, as in LitServe. Errors take OpenAI's shape.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from ferryman import errors
from ferryman.api import API
from ferryman.workers.calls import overrides
from ferryman.workers.codecs import JSON, Answer, Codec, RequestError, json_encode

CLIENT_BATCHING = (
    "with dynamic batching (max_batch_size > 1) each request must bring a single input; "
    "send one input per request"
)


class EmbeddingCodec(Codec):
    shape = errors.OPENAI

    def __init__(self, api: Any, max_batch_size: int) -> None:
        super().__init__(api, stream=False)
        self.max_batch_size = max_batch_size
        self.model = type(api).__name__
        decode = getattr(api, "decode_request", None)
        encode = getattr(api, "encode_response", None)
        default_decode = _single_input if max_batch_size > 1 else _input
        self.set_user_methods(
            decode if overrides(api, "decode_request", API) else default_decode,
            encode if overrides(api, "encode_response", API) else None,
        )

    def parse(self, body: bytes, content_type: bytes = b"") -> Any:
        request = super().parse(body, content_type)
        if not isinstance(request, dict):
            raise RequestError(400, "invalid_request", "the request body must be a JSON object")
        items = request.get("input")
        if not _valid_input(items):
            raise RequestError(
                400,
                "invalid_request",
                "input must be a string, a list of strings, a list of token ids or a list of "
                "token id lists, and not empty",
                param="input",
            )
        fmt = request.get("encoding_format", "float")
        if fmt not in ("float", "base64", None):
            raise RequestError(
                400, "invalid_request", "encoding_format must be float or base64", "encoding_format"
            )
        model = request.get("model")
        if model is not None and not isinstance(model, str):
            raise RequestError(400, "invalid_request", "model must be a string", param="model")
        if self.max_batch_size > 1 and _count(items) > 1:
            raise RequestError(400, "invalid_request", CLIENT_BATCHING, param="input")
        return request

    def answer(self, encoded: Any, request: Any) -> Answer:
        usage = {"prompt_tokens": 0, "total_tokens": 0}
        vectors = encoded
        if isinstance(encoded, dict):
            if "embeddings" not in encoded:
                raise TypeError("encode_response returned a dict without an 'embeddings' key")
            vectors = encoded["embeddings"]
            for key in usage:
                value = encoded.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    usage[key] = value
        rows = _rows(vectors)
        expected = _count(request["input"])
        if len(rows) != expected:
            raise ValueError(f"predict returned {len(rows)} embeddings for {expected} inputs")
        base64_wanted = request.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _b64(row) if base64_wanted else row,
            }
            for i, row in enumerate(rows)
        ]
        answer = {
            "object": "list",
            "data": data,
            "model": request.get("model") or self.model,
            "usage": usage,
        }
        return 200, JSON, json_encode(answer), None


def _input(request: dict[str, Any]) -> Any:
    return request["input"]


def _single_input(request: dict[str, Any]) -> Any:
    """With batching, a request's one input itself (["text"] is "text"): predict receives a
    list of inputs, one per request."""
    items = request["input"]
    if isinstance(items, list) and len(items) == 1 and not isinstance(items[0], int):
        return items[0]
    return items


def _valid_input(items: Any) -> bool:
    if isinstance(items, str):
        return True
    if not isinstance(items, list) or not items:
        return False
    if all(isinstance(x, str) for x in items):
        return True
    if all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        return True
    return all(
        isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
        for x in items
    )


def _count(items: Any) -> int:
    """Inputs in a request: a string or one token id list is one; a list of either, its length."""
    if isinstance(items, str):
        return 1
    if items and all(isinstance(x, int) for x in items):
        return 1
    return len(items)


def _rows(vectors: Any) -> list[list[float]]:
    """Vectors as lists of floats, one per input: a 2-D array or tensor, a list of lists, or a
    single vector (1-D array, list of numbers)."""
    tolist = getattr(vectors, "tolist", None)
    if callable(tolist):
        vectors = tolist()
    if isinstance(vectors, tuple):
        vectors = list(vectors)
    if not isinstance(vectors, list) or not vectors:
        raise TypeError(f"predict must return a list of vectors; got {type(vectors).__name__}")
    if all(isinstance(x, int | float) for x in vectors):
        vectors = [vectors]
    rows = []
    for v in vectors:
        tolist = getattr(v, "tolist", None)
        if callable(tolist):
            v = tolist()
        rows.append([float(x) for x in v])
    return rows


def _b64(row: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(row)}f", *row)).decode("ascii")
