"""The OpenAI chat completions route (`spec="openai"`), as the inference worker renders it.

LitServe's OpenAISpec conventions: predict receives the messages (or what decode_request returns
from the whole request) and yields strings or {"role", "content"} dicts, optionally with
prompt_tokens / completion_tokens / total_tokens (usage) and finish_reason; this codec wraps them
into a `chat.completion` object, or into `chat.completion.chunk` Server-Sent Events ending with
`data: [DONE]` when the request asks for a stream. Every other field of the request is passed
through in the context. Errors take OpenAI's shape.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ferryman import errors
from ferryman.api import API
from ferryman.workers.calls import overrides
from ferryman.workers.codecs import Codec, Failure, RequestError, json_encode

SSE = "text/event-stream"
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


class OpenAICodec(Codec):
    stream_content_type = SSE
    shape = errors.OPENAI

    def __init__(self, api: Any) -> None:
        super().__init__(api, stream=True)
        self.iterates = True  # predict yields; a request without "stream" gets it whole
        self.model = type(api).__name__
        decode = getattr(api, "decode_request", None)
        encode = getattr(api, "encode_response", None)
        self.set_user_methods(
            decode if overrides(api, "decode_request", API) else _messages,
            encode if overrides(api, "encode_response", API) else None,
        )

    def parse(self, body: bytes, content_type: bytes = b"") -> Any:
        request = super().parse(body, content_type)
        if not isinstance(request, dict):
            raise RequestError(400, "invalid_request", "the request body must be a JSON object")
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(
                400, "invalid_request", "messages must be a non-empty list", param="messages"
            )
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise RequestError(
                    400,
                    "invalid_request",
                    f"messages[{i}] must be an object with a string role",
                    param=f"messages[{i}]",
                )
        stream = request.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise RequestError(400, "invalid_request", "stream must be a boolean", param="stream")
        n = request.get("n")
        if n is not None and n != 1:
            raise RequestError(
                400, "invalid_request", "only n=1 is supported (one choice per request)", "n"
            )
        return request

    def is_stream(self, request: Any) -> bool:
        return _field(request, "stream") is True

    def populate(self, ctx: Any, request: Any) -> None:
        for k, v in request.items():
            if k != "messages":
                ctx[k] = v

    def items(self, encoded: Any) -> Any:
        if isinstance(encoded, str | dict) or not (
            hasattr(encoded, "__iter__") or hasattr(encoded, "__aiter__")
        ):
            return [encoded]  # predict returned one answer instead of yielding it
        return encoded

    def renderer(self, request: Any) -> ChatRenderer:
        return ChatRenderer(request, self.model, self.is_stream(request))

    def stream_error(self, f: Failure, request_id: str) -> bytes:
        return b"data: " + self.error_body(f, request_id) + b"\n\n"


class ChatRenderer:
    """One request's items as chat.completion.chunk events, or as one chat.completion."""

    __slots__ = ("finish", "first", "head", "include_usage", "parts", "reported", "tool_calls",
                 "usage", "whole")  # fmt: skip

    def __init__(self, request: Any, model: str, stream: bool) -> None:
        self.whole = not stream
        self.head: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": _field(request, "model") or model,
        }
        options = _field(request, "stream_options") or {}
        include = options.get("include_usage") if isinstance(options, dict) else None
        if include is None:
            include = getattr(options, "include_usage", None)
        self.include_usage = include is True
        self.usage = [0, 0, 0]
        self.reported = False
        self.finish = "stop"
        self.first = True
        self.parts: list[str] = []
        self.tool_calls: Any = None

    def item(self, item: Any) -> bytes:
        msg = message(item)
        self.reported |= _take_usage(msg, self.usage)
        self.finish = msg.pop("finish_reason", None) or self.finish
        if self.whole:
            content = msg.get("content")
            if isinstance(content, str):
                self.parts.append(content)
            if msg.get("tool_calls"):
                self.tool_calls = msg["tool_calls"]
            return b""
        delta = {k: v for k, v in msg.items() if v is not None}
        if self.first:
            self.first = False
        elif delta.get("role") == "assistant":
            del delta["role"]  # as OpenAI does: the role comes with the first chunk only
        if not delta:
            return b""
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        return _sse({**self.head, "choices": [choice]})

    def end(self) -> bytes:
        if self.whole:
            answer: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(self.parts) if self.parts or not self.tool_calls else None,
            }
            if self.tool_calls:
                answer["tool_calls"] = self.tool_calls
            choice = {"index": 0, "message": answer, "finish_reason": self.finish}
            return json_encode(
                {
                    **self.head,
                    "object": "chat.completion",
                    "choices": [choice],
                    "usage": _usage(self.usage),
                }
            )
        last: dict[str, Any] = {
            **self.head,
            "choices": [{"index": 0, "delta": {}, "finish_reason": self.finish}],
        }
        if self.reported and not self.include_usage:
            last["usage"] = _usage(self.usage)
        out = _sse(last)
        if self.include_usage:  # OpenAI's stream_options: one more chunk, no choices, for usage
            out += _sse({**self.head, "choices": [], "usage": _usage(self.usage)})
        return out + b"data: [DONE]\n\n"


def message(item: Any) -> dict[str, Any]:
    """One item from predict / encode_response as a chat message dict (a copy)."""
    if item is None:
        return {"role": "assistant", "content": None}
    if isinstance(item, str):
        return {"role": "assistant", "content": item}
    dump = getattr(item, "model_dump", None)
    if callable(dump):  # LitServe's ChatMessage and other pydantic models
        item = dump(mode="json", exclude_none=True)
    if isinstance(item, list) and item and isinstance(item[-1], dict):
        item = item[-1]  # a whole conversation: the last message is the answer
    if isinstance(item, dict) and ("content" in item or "tool_calls" in item):
        msg = dict(item)
        msg.setdefault("role", "assistant")
        return msg
    # The user's code broke the route's contract: a 500 whose text stays in the log.
    raise TypeError(
        "predict (or encode_response) must yield strings or {'role': ..., 'content': ...} "
        f"dicts; got {type(item).__name__}: {item!r:.200}"
    )


def _field(request: Any, name: str) -> Any:
    """A request field, from the JSON dict or from LitServe's validated request object."""
    if isinstance(request, dict):
        return request.get(name)
    return getattr(request, name, None)


def _messages(request: dict[str, Any]) -> Any:
    return request["messages"]


def _take_usage(msg: dict[str, Any], usage: list[int]) -> bool:
    found = False
    for i, key in enumerate(USAGE_KEYS):
        value = msg.pop(key, None)
        if isinstance(value, int):
            usage[i] += value
            found = True
    return found


def _usage(usage: list[int]) -> dict[str, int]:
    prompt, completion, total = usage
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total or prompt + completion,
    }


def _sse(obj: Any) -> bytes:
    return b"data: " + json_encode(obj) + b"\n\n"
