"""How an HTTP answer is written down, for LitServe's recording (litserve/record.py) and ferryman's
replay of it (litserve_harness.py): both sides shaped by the same code, so that they compare.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import re
import struct
import time
from typing import Any

MULTIPART_BOUNDARY = "ferrymanfixtureboundary"


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def shrink(obj: Any, limit: int = 2000) -> Any:
    """Strings longer than limit become their length, sha256 and first characters."""
    if isinstance(obj, str) and len(obj) > limit:
        digest = hashlib.sha256(obj.encode()).hexdigest()
        return {"long_string": True, "length": len(obj), "sha256": digest, "head": obj[:60]}
    if isinstance(obj, dict):
        return {k: shrink(v, limit) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shrink(v, limit) for v in obj]
    return obj


def body_fields(raw: bytes, content_type: str, stream: bool) -> dict[str, Any]:
    text = raw.decode("utf-8", errors="replace")
    out: dict[str, Any] = {}
    if "text/event-stream" in content_type:
        events = []
        for block in text.split("\n\n"):
            if not block.strip():
                continue
            data = "\n".join(
                line[len("data: ") :] if line.startswith("data: ") else line
                for line in block.split("\n")
            )
            events.append(parse_json(data))
        out["events"] = events
    elif stream:
        out["lines"] = [parse_json(line) for line in text.split("\n") if line != ""]
    elif content_type.startswith("application/json"):
        out["body"] = parse_json(text)
    else:
        out["body"] = text
    for key in ("body", "lines", "events"):
        if key in out:
            out[key] = shrink(out[key])
    out["text"] = shrink(text, limit=20000)
    return out


def read_until(
    conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, deadline: float
) -> tuple[bytes, bool]:
    """The body, read until it ends or the deadline passes (a stream may never end)."""
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), True
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        try:
            data = resp.read1(65536)
        except TimeoutError:
            return b"".join(chunks), True
        if not data:
            return b"".join(chunks), False
        chunks.append(data)


def shape_response(
    resp: http.client.HTTPResponse, raw: bytes, cut: bool, stream: bool, timeout: float
) -> dict[str, Any]:
    """An answer as expected.json holds it: status, reason, headers (not date and server),
    content type, the body decoded (gunzipped, JSON parsed, streams split), long strings shrunk."""
    hdrs: dict[str, str] = {}
    for name, value in resp.getheaders():
        key = name.lower()
        if key in ("date", "server"):
            continue
        hdrs[key] = f"{hdrs[key]}, {value}" if key in hdrs else value
    wire_length = len(raw)
    if hdrs.get("content-encoding") == "gzip":
        raw = gzip.decompress(raw)
    response: dict[str, Any] = {
        "status": resp.status,
        "reason": resp.reason,
        "content_type": hdrs.get("content-type"),
        "headers": hdrs,
    }
    if hdrs.get("content-encoding"):
        response["wire_length"] = wire_length
    if cut:
        response["cut"] = f"still open after {timeout} s: what came until then"
    response.update(body_fields(raw, hdrs.get("content-type", ""), stream))
    return response


def summarize_embeddings(obj: Any) -> Any:
    """Random embedding vectors become their length (and, for base64, the float count).

    A response that holds them also loses its exact text, content-length and wire length, which
    depend on the random values.
    """
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        text = obj.get("text")
        flat = text if isinstance(text, str) else json.dumps(text)
        random_text = re.search(r'\\?"embedding\\?":\s*\\?[\["]', flat) is not None
        omitted = {"omitted": "depends on random embedding values"}
        for k, v in obj.items():
            if random_text and k in ("text", "wire_length"):
                out[k] = omitted
            elif k == "headers" and random_text and isinstance(v, dict) and "content-length" in v:
                out[k] = {**v, "content-length": omitted}
            elif k == "embedding" and isinstance(v, list):
                out[k] = {"summary": "list of numbers", "length": len(v)}
            elif k == "embedding" and isinstance(v, dict) and v.get("long_string"):
                out[k] = {"summary": "base64 string", "length": v["length"]}
            elif k == "embedding" and isinstance(v, str):
                n = len(base64.b64decode(v)) // struct.calcsize("<f")
                out[k] = {"summary": "base64 little-endian float32", "floats": n}
            else:
                out[k] = summarize_embeddings(v)
        return out
    if isinstance(obj, list):
        return [summarize_embeddings(v) for v in obj]
    return obj


def openai_call(port: int, call: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What the official openai client returns or raises for `chat` or `embeddings` with these
    arguments, as data: the result (a stream's chunks, as far as they came), or the exception."""
    import openai

    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="lit", max_retries=0, timeout=30
    )
    out: dict[str, Any] = {}
    try:
        if call == "chat":
            result = client.chat.completions.create(**kwargs)
            if kwargs.get("stream"):
                chunks: list[Any] = []
                out["stream"] = chunks
                for chunk in result:
                    chunks.append(chunk.model_dump(mode="json", exclude_unset=True))
            else:
                out["type"] = type(result).__name__
                out["result"] = result.model_dump(mode="json", exclude_unset=True)
        else:
            result = client.embeddings.create(**kwargs)
            out["type"] = type(result).__name__
            out["result"] = result.model_dump(mode="json", exclude_unset=True)
    except openai.APIStatusError as e:
        out["raised"] = {
            "exception": type(e).__name__,
            "status_code": e.status_code,
            "body": e.body,
            "message": str(e),
        }
    except openai.APIError as e:
        out["raised"] = {"exception": type(e).__name__, "body": e.body, "message": str(e)}
    except Exception as e:
        out["raised"] = {"exception": type(e).__name__, "message": str(e)}
    return out


def multipart_body(files: dict[str, dict[str, Any]]) -> bytes:
    """A multipart/form-data body of the recorded files (`text`, or `size` bytes of "a")."""
    parts = []
    for name, spec in files.items():
        content = spec["text"].encode() if "text" in spec else b"a" * spec["size"]
        parts.append(
            (
                f"--{MULTIPART_BOUNDARY}\r\n"
                f'Content-Disposition: form-data; name="{name}"; '
                f'filename="{spec["filename"]}"\r\n'
                f"Content-Type: {spec['content_type']}\r\n\r\n"
            ).encode()
            + content
            + b"\r\n"
        )
    return b"".join(parts) + f"--{MULTIPART_BOUNDARY}--\r\n".encode()
