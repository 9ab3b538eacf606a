"""The OpenAI chat completions route (`spec="openai"`): POST /v1/chat/completions.

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
from collections.abc import Iterable, Iterator
from typing import Any

from ferryman.workers.api import API
from ferryman.workers.engine import Codec, RequestError, Task, describe, json_encode, overrides

SSE = "text/event-stream"
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(status: int, code: str, message: str, param: str | None = None) -> bytes:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    kind = _TYPES.get(status) or ("invalid_request_error" if status < 500 else "server_error")
    return json_encode({"error": {"message": message, "type": kind, "param": param, "code": code}})


class OpenAICodec(Codec):
    stream_content_type = SSE

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

    def parse(self, task: Task) -> Any:
        request = super().parse(task)
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
        return request.get("stream") is True

    def populate(self, ctx: Any, request: Any) -> None:
        for k, v in request.items():
            if k != "messages":
                ctx[k] = v

    def render_stream(self, items: Iterable[Any], t: Task) -> Iterator[bytes]:
        request = t.request
        model = request.get("model") or self.model
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        usage = [0, 0, 0]
        reported = False
        finish = "stop"
        if isinstance(items, str | dict) or not hasattr(items, "__iter__"):
            items = [items]  # predict returned one answer instead of yielding it
        if self.is_stream(request):
            first = True
            for item in items:
                msg = message(item)
                reported |= _take_usage(msg, usage)
                finish = msg.pop("finish_reason", None) or finish
                delta = {k: v for k, v in msg.items() if v is not None}
                if first:
                    first = False
                elif delta.get("role") == "assistant":
                    del delta["role"]  # as OpenAI does: the role comes with the first chunk only
                if not delta:
                    yield b""
                    continue
                yield _sse(
                    {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                )
            include = (request.get("stream_options") or {}).get("include_usage") is True
            last: dict[str, Any] = {
                **head,
                "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
            }
            if reported and not include:
                last["usage"] = _usage(usage)
            yield _sse(last)
            if include:  # OpenAI's stream_options: one more chunk, with no choices, for usage
                yield _sse({**head, "choices": [], "usage": _usage(usage)})
            yield b"data: [DONE]\n\n"
            return
        parts: list[str] = []
        tool_calls = None
        for item in items:
            msg = message(item)
            _take_usage(msg, usage)
            finish = msg.pop("finish_reason", None) or finish
            content = msg.get("content")
            if isinstance(content, str):
                parts.append(content)
            if msg.get("tool_calls"):
                tool_calls = msg["tool_calls"]
            yield b""  # lets the engine see, between items, whether the client is still there
        answer: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(parts) if parts or not tool_calls else None,
        }
        if tool_calls:
            answer["tool_calls"] = tool_calls
        head["object"] = "chat.completion"
        yield json_encode(
            {
                **head,
                "choices": [{"index": 0, "message": answer, "finish_reason": finish}],
                "usage": _usage(usage),
            }
        )

    def error(self, e: Exception) -> tuple[int, bytes]:
        status, kind, message = describe(e)
        return status, openai_error(status, kind, message, getattr(e, "param", None))

    def stream_error(self, e: Exception) -> bytes:
        return b"data: " + self.error(e)[1] + b"\n\n"


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
    raise RequestError(
        500,
        "internal_error",
        "predict (or encode_response) must yield strings or {'role': ..., 'content': ...} "
        f"dicts; got {type(item).__name__}: {item!r:.200}",
    )


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
