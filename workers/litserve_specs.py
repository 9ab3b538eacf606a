"""In the inference worker: LitServe's OpenAISpec and OpenAIEmbeddingSpec routes, as it answers.

LitServe validates the request with its pydantic models in its API process, runs the LitAPI's
methods (whose defaults are the spec's) in its worker, and builds the answer from the items the
worker sends back, in its API process again. Here all of it happens in the worker, with
LitServe's own models and the spec's own methods, so the bytes are LitServe's: chunk by chunk for
a stream (a new id per chunk, the role in every delta, the last item's usage on the last chunk,
`data: [DONE]`), the whole `chat.completion` otherwise; 422 with FastAPI's body for a request
that does not fit the models; `{"detail": ...}` errors; and in a stream that fails, LitServe's
`data: {"error": ...}` event, which ends it.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from ferryman import errors
from ferryman.workers import forms
from ferryman.workers.codecs import JSON, Answer, Choices, Codec, Failure, RequestError
from ferryman.workers.litserve_compat import (
    STATUS_STAGES,
    detail_reply,
    lit_describe,
    lit_json,
    lit_spec,
    plain_500,
    validate,
)

SSE = "text/event-stream; charset=utf-8"
# FastAPI's detail for HTTPException(500) without one: what LitServe's spec routes answer when
# the worker failed.
SPEC_500 = "Internal Server Error"
CLIENT_BATCHING = (
    "The OpenAIEmbedding spec does not support dynamic batching when client-side batching is "
    "used. To resolve this, either set `max_batch_size=1` or send a single input from the client."
)


def _request_body(body: bytes, content_type: bytes) -> Any:
    value = forms.fastapi_body(body, content_type)
    if value is None:
        raise forms.missing_body()
    return value


class LitChatCodec(Codec):
    """POST /v1/chat/completions (or the LitAPI's own api_path) of a LitAPI with OpenAISpec."""

    shape = errors.LITSERVE
    stream_content_type = SSE
    batch_encodes_streams = True
    may_copy = True
    fails_by_request = True

    def __init__(self, api: Any) -> None:
        super().__init__(api, stream=True)
        from litserve.specs.openai import ChatCompletionRequest

        self.iterates = True  # predict yields; a request without "stream" gets it whole
        self.model = ChatCompletionRequest
        self.set_user_methods(api.decode_request, api.encode_response)
        self.format = api.format_encoded_response

    def parse(self, body: bytes, content_type: bytes = b"") -> Any:
        return validate(self.model, _request_body(body, content_type))

    def populate(self, ctx: Any, request: Any) -> None:
        # The spec's own: every field but the messages, defaults included.
        lit_spec(self.api).populate_context(ctx, request)

    def is_stream(self, request: Any) -> bool:
        return bool(getattr(request, "stream", False))

    def copies(self, request: Any) -> int:
        """LitServe answers `n` choices by running the request `n` times."""
        n = getattr(request, "n", 1)
        return n if isinstance(n, int) and n > 1 else 1

    def copy(self, request: Any) -> Any:
        return request.model_copy(update={"n": 1})

    def items(self, encoded: Any) -> Any:
        return encoded

    def renderer(self, request: Any) -> LitChatRenderer:
        return LitChatRenderer(self.format, request)

    def describe(self, e: BaseException, request_id: str) -> Failure:
        return lit_describe(e, request_id, SPEC_500)

    def fails_as_stream(self, request: Any, stage: str) -> bool:
        return request is not None and self.is_stream(request) and stage not in STATUS_STAGES

    def error_reply(self, f: Failure, request_id: str, request: Any, stage: str) -> Answer:
        return detail_reply(f)

    def stream_error(self, f: Failure, request_id: str) -> bytes:
        """LitServe's error event: no blank line after it, no [DONE]."""
        # An HTTPException's detail (the timeout's included); anything else, LitServe's words.
        message = "Internal server error" if f.kind == "internal_error" else f.detail
        error = {"message": message, "type": "internal", "param": None, "code": "internal_error"}
        return ("data: " + json.dumps({"error": error})).encode()


class LitChatRenderer:
    """One request's items (Choices for n copies) as LitServe's chunks, or its one answer."""

    __slots__ = ("format", "messages", "model", "n", "tool_calls", "usage", "usages", "whole")

    def __init__(self, fmt: Any, request: Any) -> None:
        self.format = fmt
        self.whole = not getattr(request, "stream", False)
        self.model = getattr(request, "model", "")
        self.n = 1
        self.usage: Any = None  # streaming: the last step's
        self.usages: list[list[Any]] = []  # whole: every item's, per choice
        self.messages: list[list[Any]] = []
        self.tool_calls: list[Any] = []

    def _encoded(self, item: Any) -> dict[str, Any]:
        # What LitServe's worker sends (format_encoded_response) and its API process reads back.
        data = self.format(item)
        encoded: dict[str, Any] = json.loads(data)
        return encoded

    def item(self, item: Any) -> bytes:
        from litserve.specs.openai import (
            ChatCompletionChunk,
            ChatCompletionStreamingChoice,
            ChatMessage,
            ChoiceDelta,
            UsageInfo,
        )

        step = list(item) if isinstance(item, Choices) else [item]
        self.n = len(step)
        encoded = [self._encoded(x) for x in step]
        if self.whole:
            while len(self.messages) < self.n:
                self.messages.append([])
                self.usages.append([])
                self.tool_calls.append(None)
            for i, enc in enumerate(encoded):
                msg = ChatMessage(**enc)
                self.usages[i].append(UsageInfo(**enc))
                self.messages[i].append(msg.content)
                if msg.tool_calls:
                    self.tool_calls[i] = msg.tool_calls
            return b""
        choices = [
            ChatCompletionStreamingChoice(index=i, delta=ChoiceDelta(**enc), finish_reason=None)
            for i, enc in enumerate(encoded)
        ]
        self.usage = sum(UsageInfo(**enc) for enc in encoded)
        chunk = ChatCompletionChunk(model=self.model, choices=choices, usage=None)
        return b"data: " + chunk.model_dump_json(by_alias=True).encode() + b"\n\n"

    def end(self) -> bytes:
        from litserve.specs.openai import (
            ChatCompletionChunk,
            ChatCompletionResponse,
            ChatCompletionResponseChoice,
            ChatCompletionStreamingChoice,
            ChoiceDelta,
        )

        if not self.whole:
            choices = [
                ChatCompletionStreamingChoice(index=i, delta=ChoiceDelta(), finish_reason="stop")
                for i in range(self.n)
            ]
            last = ChatCompletionChunk(model=self.model, choices=choices, usage=self.usage)
            return (
                b"data: " + last.model_dump_json(by_alias=True).encode() + b"\n\ndata: [DONE]\n\n"
            )
        answers = []
        for i, parts in enumerate(self.messages or [[]]):
            content = "".join(p for p in parts if p is not None)
            tool_calls = self.tool_calls[i] if self.tool_calls else None
            msg = {"role": "assistant", "content": content, "tool_calls": tool_calls}
            answers.append(ChatCompletionResponseChoice(index=i, message=msg, finish_reason="stop"))
        usage = sum(u for per_choice in self.usages for u in per_choice)
        response = ChatCompletionResponse(model=self.model, choices=answers, usage=usage)
        return lit_json(response)


class LitEmbeddingCodec(Codec):
    """POST /v1/embeddings (or the LitAPI's own api_path) of a LitAPI with OpenAIEmbeddingSpec."""

    shape = errors.LITSERVE

    def __init__(self, api: Any, max_batch_size: int) -> None:
        super().__init__(api, stream=False)
        from litserve.specs.openai_embedding import EmbeddingRequest

        self.model = EmbeddingRequest
        self.name = type(api).__name__
        self.max_batch_size = max_batch_size
        self.set_user_methods(api.decode_request, api.encode_response)

    def parse(self, body: bytes, content_type: bytes = b"") -> Any:
        request = validate(self.model, _request_body(body, content_type))
        if self.max_batch_size > 1 and request.get_num_items() > 1:
            raise RequestError(400, "invalid_request", CLIENT_BATCHING)
        return request

    def answer(self, encoded: Any, request: Any) -> Answer:
        """What LitServe's embeddings endpoint makes of encode_response's value, with the spec's
        own checks; one that fails them is LitServe's bare text 500."""
        from litserve.specs.openai_embedding import EmbeddingResponse, UsageInfo

        spec = lit_spec(self.api)
        try:
            spec._validate_response(encoded)
            data = spec._handle_embedding_response(encoded["embeddings"], request.get_num_items())
            if request.encoding_format == "base64":
                for item in data:
                    # OpenAI's clients decode base64 embeddings as little-endian float32s.
                    packed = struct.pack(f"<{len(item.embedding)}f", *item.embedding)
                    item.embedding = base64.b64encode(packed).decode("ascii")
            usage = UsageInfo(**encoded)
            answer = EmbeddingResponse(data=data, model=request.model, usage=usage)
            return 200, JSON, lit_json(answer), None
        except Exception as e:
            return plain_500(self.name, "its embeddings answer is not what the spec takes", e)

    def describe(self, e: BaseException, request_id: str) -> Failure:
        return lit_describe(e, request_id, SPEC_500)

    def error_reply(self, f: Failure, request_id: str, request: Any, stage: str) -> Answer:
        return detail_reply(f)
