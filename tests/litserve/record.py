"""Record what real LitServe answers to the apps in apps/, into expected.json.

Each app is started as LitServe's own e2e tests start theirs, `python FILE.py`, on a copy of the
file whose `.run(...)` call gets a free port instead of the one written there, in a fresh
temporary directory (LitServe writes client.py into the current directory), in a process group
of its own. One app runs at a time; its whole process group is killed when its
requests are done, and on any error or interrupt (atexit and signal handlers too).

    python tests/litserve/record.py                           # every case
    python tests/litserve/record.py --only simple_server      # some cases, merged into the file
    python tests/litserve/record.py --list                    # the case ids
    python tests/litserve/record.py --extras-python /tmp/lsvenv/bin/python

Cases that need `python-multipart` (form data) or `fastmcp` + `mcp<2` (MCP) run with
--extras-python, a Python where those are installed besides LitServe (README.md says how to make
one); without it they are recorded as skipped. README.md describes the format of expected.json.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import http.client
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Answers are shaped by the module the replay (tests/litserve_harness.py) uses too.
sys.path.insert(0, str(HERE.parent))
from litserve_shapes import (  # noqa: E402
    MULTIPART_BOUNDARY,
    multipart_body,
    openai_call,
    read_until,
    shape_response,
    summarize_embeddings,
)
from processes import group_members  # noqa: E402

APPS = HERE / "apps"
EXPECTED = HERE / "expected.json"
LITSERVE_REPO_COMMIT = "1311d5b4aeaff2943f38a22cfb911c8bae2590bc"

OPENAI_VOLATILE = ["id", "created"]
RUN_PORT = re.compile(r"\.run\((?P<args>[^)]*)\)")


# --------------------------------------------------------------------------- process handling

_LIVE_GROUPS: set[int] = set()


def _kill_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_members(pgid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_members(pgid):
        time.sleep(0.1)
    _LIVE_GROUPS.discard(pgid)


def _kill_all() -> None:
    for pgid in list(_LIVE_GROUPS):
        _kill_group(pgid, grace=2.0)


def _on_signal(signum: int, _frame: Any) -> None:
    _kill_all()
    raise SystemExit(128 + signum)


atexit.register(_kill_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def with_port(text: str, port: int) -> str:
    """The app's source with the port of its last `.run(...)` call replaced (or added)."""
    calls = list(RUN_PORT.finditer(text))
    if not calls:
        raise ValueError("no .run(...) call in the app")
    m = calls[-1]
    args = m.group("args")
    if re.search(r"port\s*=", args):
        new_args = re.sub(r"port\s*=\s*\d+", f"port={port}", args)
    else:
        new_args = f"{args}, port={port}" if args.strip() else f"port={port}"
    return text[: m.start()] + f".run({new_args})" + text[m.end() :]


@contextlib.contextmanager
def started(python: str, app: Path, env: dict[str, str]) -> Iterator[Server]:
    """`python FILE.py` on a copy of the app, in a temporary directory, in its own process group.

    The copy differs from the app only by the port of its `.run(...)` call. (Running the file
    through runpy instead changes what LitServe's processes can unpickle: a pydantic model defined
    in the app and returned by encode_response then fails.)
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="litserve-fixture-") as tmp:
        workdir = Path(tmp)
        script = workdir / app.name
        script.write_text(with_port(app.read_text(), port))
        log_path = workdir / "server.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("LIT_", "LITSERVE_"))}
        full_env.update(env)
        full_env["PYTHONUNBUFFERED"] = "1"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [python, script.name],
                cwd=workdir,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE_GROUPS.add(proc.pid)
        try:
            yield Server(proc, port, workdir, log_path)
        finally:
            _kill_group(proc.pid)
            proc.wait(timeout=10)


def connect_once(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return "connected"
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as e:
        return type(e).__name__


def wait_ready(server: Server, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        if connect_once(server.port) == "connected":
            return True
        time.sleep(0.1)
    return False


# --------------------------------------------------------------------------- steps


@dataclass
class Http:
    method: str
    path: str
    json: Any = None
    body: str | None = None
    body_size: int | None = None  # a body of that many "x"
    headers: dict[str, str] = field(default_factory=dict)
    form: dict[str, str] | None = None
    files: dict[str, dict[str, Any]] | None = None
    stream: bool = False
    label: str = ""
    volatile: list[str] = field(default_factory=list)
    timeout: float = 30.0
    send_json: bool = False  # json=None is "no body"; set this to send the JSON `null`


@dataclass
class Concurrent:
    requests: list[Http]
    label: str = ""
    order_volatile: bool = False
    volatile: list[str] = field(default_factory=list)


@dataclass
class Sleep:
    seconds: float


@dataclass
class Probe:
    label: str = ""


@dataclass
class WaitExit:
    timeout: float
    label: str = ""


@dataclass
class OpenAICall:
    call: str  # "chat" or "embeddings"
    kwargs: dict[str, Any]
    label: str = ""
    volatile: list[str] = field(default_factory=list)


Step = Http | Concurrent | Sleep | Probe | WaitExit | OpenAICall


def _wire(req: Http) -> tuple[bytes | None, dict[str, str], dict[str, Any]]:
    """The body and headers to send, and how the request is written down in expected.json."""
    headers = dict(req.headers)
    record: dict[str, Any] = {"method": req.method, "path": req.path}
    body: bytes | None = None
    if req.json is not None or req.send_json:
        body = json.dumps(req.json).encode()
        headers.setdefault("Content-Type", "application/json")
        record["json"] = req.json
    elif req.form is not None:
        body = urllib.parse.urlencode(req.form).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        record["form"] = req.form
    elif req.files is not None:
        body = multipart_body(req.files)
        headers.setdefault("Content-Type", f"multipart/form-data; boundary={MULTIPART_BOUNDARY}")
        record["files"] = req.files
    elif req.body_size is not None:
        body = b"x" * req.body_size
        record["body"] = {"repeat": "x", "size": req.body_size}
    elif req.body is not None:
        body = req.body.encode()
        record["body"] = req.body
    if headers:
        record["headers"] = headers
    if req.stream:
        record["stream"] = True
    return body, headers, record


def do_http(port: int, req: Http) -> dict[str, Any]:
    body, headers, record = _wire(req)
    started_at = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=req.timeout)
    try:
        conn.request(req.method, req.path, body=body, headers=headers)
        resp = conn.getresponse()
        raw, cut = read_until(conn, resp, started_at + req.timeout)
    except TimeoutError:
        response: dict[str, Any] = {"error": f"no answer within {req.timeout} s"}
    except OSError as e:
        response = {"error": type(e).__name__}
    except http.client.HTTPException as e:
        response = {"error": type(e).__name__}
    else:
        response = shape_response(resp, raw, cut, req.stream, req.timeout)
    finally:
        conn.close()
    out = {"request": record, "response": response}
    out["elapsed_s"] = round(time.monotonic() - started_at, 1)
    return out


def do_openai(port: int, step: OpenAICall) -> dict[str, Any]:
    out: dict[str, Any] = {"openai": {"call": step.call, "kwargs": step.kwargs}}
    out.update(openai_call(port, step.call, step.kwargs))
    return out


def run_step(server: Server, step: Step) -> dict[str, Any]:
    if isinstance(step, Http):
        out = do_http(server.port, step)
        out = {"label": step.label, **out}
        if step.volatile:
            out["volatile"] = step.volatile
        return out
    if isinstance(step, Concurrent):
        t0 = time.monotonic()
        with ThreadPoolExecutor(len(step.requests)) as pool:
            futures = []
            for r in step.requests:
                futures.append(pool.submit(do_http, server.port, r))
                time.sleep(0.05)  # keep the submission order
            results = [f.result() for f in futures]
        for r, res in zip(step.requests, results, strict=True):
            if r.volatile:
                res["volatile"] = r.volatile
        out = {
            "label": step.label,
            "concurrent": results,
            "elapsed_s": round(time.monotonic() - t0, 1),
        }
        if step.order_volatile:
            out["order_volatile"] = True
            out["statuses_sorted"] = sorted(r["response"].get("status", 0) for r in results)
        if step.volatile:
            out["volatile"] = step.volatile
        return out
    if isinstance(step, Sleep):
        time.sleep(step.seconds)
        return {"sleep": step.seconds}
    if isinstance(step, Probe):
        return {"label": step.label, "probe": "tcp connect", "result": connect_once(server.port)}
    if isinstance(step, WaitExit):
        try:
            code = server.proc.wait(timeout=step.timeout)
            return {"label": step.label, "wait_exit": step.timeout, "exit_code": code}
        except subprocess.TimeoutExpired:
            return {"label": step.label, "wait_exit": step.timeout, "exit_code": None}
    if isinstance(step, OpenAICall):
        out = {"label": step.label, **do_openai(server.port, step)}
        if step.volatile:
            out["volatile"] = step.volatile
        return out
    raise TypeError(step)


# --------------------------------------------------------------------------- output shaping

_LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - (?P<process>[^\[]+)\[\d+\] - (?P<logger>\S+) - "
    r"(?P<level>\w+) - (?P<where>\S+) - (?P<message>.*)$"
)
_WARNING = re.compile(r"^\S+:\d+: (?P<category>\w*Warning): (?P<message>.*)$")
_EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit)(?::|$)")


def _log_entry(line: str) -> dict[str, str]:
    m = _LOG_LINE.match(line)
    if m:
        return {k: m.group(k).strip() for k in ("process", "logger", "level", "message")}
    return {"line": line}


def matching_log_lines(log: str, patterns: list[str], port: int) -> list[dict[str, str]]:
    out = []
    for line in log.splitlines():
        if any(re.search(p, line) for p in patterns):
            out.append(_log_entry(line.replace(str(port), "{PORT}")))
    return out


def warnings_in(log: str) -> list[dict[str, str]]:
    """The `warnings` module's lines (the message's first line; a message can span lines)."""
    out = []
    for line in log.splitlines():
        m = _WARNING.match(line)
        if m:
            out.append({"category": m.group("category"), "message": m.group("message")})
    return out


def final_exception(log: str) -> str | None:
    """The last traceback's exception text (it may span several lines)."""
    lines = log.splitlines()
    start = None
    for i, line in enumerate(lines):
        if _EXC_LINE.match(line):
            start = i
    if start is None:
        return None
    tail = []
    for line in lines[start:]:
        if _LOG_LINE.match(line) or line.startswith(("INFO:", "Traceback", "Process ")):
            break
        tail.append(line)
    return re.sub(r" at 0x[0-9a-f]+", " at 0x...", "\n".join(tail).rstrip())


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    id: str
    file: str
    steps: list[Step]
    note: str = ""
    env: dict[str, str] = field(default_factory=dict)
    needs: list[str] = field(default_factory=list)  # modules beyond LitServe
    expect_start: bool = True
    probe_first: bool = False
    log_patterns: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    embeddings: bool = False


def J(path: str, obj: Any, label: str = "", **kw: Any) -> Http:
    return Http("POST", path, json=obj, label=label, **kw)


def GET(path: str, label: str = "", **kw: Any) -> Http:
    return Http("GET", path, label=label, **kw)


def RAW(method: str, path: str, body: str | None, ctype: str | None, label: str = "", **kw: Any):
    headers = {"Content-Type": ctype} if ctype else {}
    headers.update(kw.pop("headers", {}))
    return Http(method, path, body=body, headers=headers, label=label, **kw)


X4 = {"input": 4.0}


def basic(path: str = "/predict", payload: Any = X4) -> list[Step]:
    """A JSON API's usual answers: one request, wrong method, unknown route, health."""
    return [
        J(path, payload, "a JSON request"),
        Http("GET", path, label="wrong method"),
        J("/no-such-route", payload, "unknown route"),
        GET("/health", "health"),
    ]


def decode_errors(path: str = "/predict") -> list[Step]:
    return [
        RAW("POST", path, "not json", "application/json", "a body that is not JSON"),
        RAW("POST", path, None, None, "no body at all"),
        J(path, {"wrong": 1}, "JSON without the key decode_request reads"),
    ]


CHAT = {"model": "lit", "messages": [{"role": "user", "content": "Hello"}]}
CHAT_PATH = "/v1/chat/completions"


def chat(**extra: Any) -> dict[str, Any]:
    return {**CHAT, **extra}


def openai_basic(path: str = CHAT_PATH) -> list[Step]:
    return [
        J(
            path,
            chat(),
            "a chat completion",
            volatile=["response.body.id", "response.body.created"],
        ),
        J(
            path,
            chat(stream=True),
            "a streamed chat completion",
            stream=True,
            volatile=["response.events[*].id", "response.events[*].created"],
        ),
    ]


def openai_client(stream: bool = True, **extra: Any) -> list[Step]:
    steps: list[Step] = [
        OpenAICall("chat", chat(**extra), "openai client", volatile=["result.id", "result.created"])
    ]
    if stream:
        steps.append(
            OpenAICall(
                "chat",
                chat(stream=True, **extra),
                "openai client, streamed",
                volatile=["stream[*].id", "stream[*].created"],
            )
        )
    return steps


AUDIO = base64.b64encode(bytearray(range(1, 11))).decode()
IMAGE_URL = "https://example.com/image.jpg"


def openai_full() -> list[Step]:
    """Everything about the chat route, on LitServe's own e2e OpenAI app."""
    v = ["response.body.id", "response.body.created"]
    ev = ["response.events[*].id", "response.events[*].created"]
    return [
        *openai_basic(),
        J(
            CHAT_PATH,
            chat(stream=True, stream_options={"include_usage": True}),
            "stream_options.include_usage (not a field of LitServe's request model)",
            stream=True,
            volatile=ev,
        ),
        J(CHAT_PATH, {"messages": CHAT["messages"]}, "no model field", volatile=v),
        J(CHAT_PATH, chat(n=2), "n=2", volatile=v),
        J(CHAT_PATH, chat(n=2, stream=True), "n=2, streamed", stream=True, volatile=ev),
        J(CHAT_PATH, chat(messages=[]), "an empty messages list", volatile=v),
        J(
            CHAT_PATH,
            chat(messages=[{"role": "bogus", "content": "x"}]),
            "an unknown role",
            volatile=v,
        ),
        J(CHAT_PATH, {"model": "lit"}, "no messages"),
        J(CHAT_PATH, chat(messages="hi"), "messages not a list"),
        J(CHAT_PATH, chat(temperature="hot"), "temperature not a number"),
        J(CHAT_PATH, chat(stream="yes"), "stream not a boolean"),
        RAW("POST", CHAT_PATH, "{not json", "application/json", "a body that is not JSON"),
        RAW("POST", CHAT_PATH, None, None, "no body"),
        J(
            CHAT_PATH,
            chat(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What's in this image?"},
                            {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "low"}},
                        ],
                    }
                ]
            ),
            "image content parts",
            volatile=v,
        ),
        J(
            CHAT_PATH,
            chat(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is in this recording?"},
                            {
                                "type": "input_audio",
                                "input_audio": {"data": AUDIO, "format": "wav"},
                            },
                        ],
                    }
                ]
            ),
            "audio content part (wav)",
            volatile=v,
        ),
        J(
            CHAT_PATH,
            chat(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_audio",
                                "input_audio": {"data": AUDIO, "format": "flac"},
                            }
                        ],
                    }
                ]
            ),
            "audio content part (flac)",
        ),
        J(
            CHAT_PATH,
            chat(max_tokens=5, user="u1", seed=3, logprobs=True, extra_field="x"),
            "extra and unknown fields",
            volatile=v,
        ),
        Http("GET", CHAT_PATH, label="wrong method"),
        Http("OPTIONS", CHAT_PATH, label="OPTIONS"),
        GET("/v1/models", "models list"),
        J("/predict", X4, "the default /predict route"),
        J(
            CHAT_PATH,
            chat(),
            "Accept-Encoding: gzip",
            headers={"Accept-Encoding": "gzip"},
            volatile=v,
        ),
        GET("/health", "health"),
        GET("/info", "info"),
        *openai_client(),
        OpenAICall(
            "chat",
            {"model": "lit", "messages": []},
            "openai client, empty messages",
            volatile=["result.id", "result.created"],
        ),
    ]


EMB_PATH = "/v1/embeddings"


def embedding_full() -> list[Step]:
    return [
        J(EMB_PATH, {"input": "hello", "model": "lit"}, "one string"),
        J(EMB_PATH, {"input": ["a", "b"], "model": "lit"}, "two strings"),
        J(EMB_PATH, {"input": "hello", "model": "lit", "encoding_format": "base64"}, "base64"),
        J(EMB_PATH, {"input": "hello", "model": "lit", "dimensions": 4}, "dimensions=4"),
        J(EMB_PATH, {"input": [[1, 2, 3], [4, 5]], "model": "lit"}, "token id lists"),
        J(EMB_PATH, {"input": "hello"}, "no model"),
        J(EMB_PATH, {"input": 5, "model": "lit"}, "input a number"),
        J(
            EMB_PATH,
            {"input": "hello", "model": "lit", "encoding_format": "int8"},
            "unknown encoding_format",
        ),
        RAW("POST", EMB_PATH, "nope", "application/json", "a body that is not JSON"),
        GET(EMB_PATH, "GET on the embeddings route"),
        J(
            EMB_PATH,
            {"input": "hello", "model": "lit"},
            "Accept-Encoding: gzip",
            headers={"Accept-Encoding": "gzip"},
            volatile=["response.wire_length", "response.headers.content-length"],
        ),
        GET("/v1/models", "models list"),
        OpenAICall("embeddings", {"model": "lit", "input": "hello", "encoding_format": "float"}),
        OpenAICall("embeddings", {"model": "lit", "input": "hello"}, "default encoding_format"),
        OpenAICall("embeddings", {"model": "lit", "input": ["a", "b"]}, "two strings"),
    ]


FORM_CT = "application/x-www-form-urlencoded"


def simple_server_steps() -> list[Step]:
    return [
        J("/predict", X4, "a JSON request"),
        J("/predict", {"input": 4}, "an integer input"),
        J("/predict", X4, "Accept-Encoding: gzip", headers={"Accept-Encoding": "gzip"}),
        RAW("POST", "/predict", '{"input": 4.0}', "text/plain", "JSON sent as text/plain"),
        RAW("POST", "/predict", '{"input": 4.0}', FORM_CT, "JSON sent as curl -d sends it"),
        RAW(
            "POST",
            "/predict",
            '{"input": 4.0}',
            FORM_CT + "; charset=utf-8",
            "JSON sent as form-urlencoded with a charset",
        ),
        *decode_errors(),
        J("/predict", [1, 2], "a JSON list"),
        Http("GET", "/predict", label="GET on the model route"),
        Http("PUT", "/predict", body="{}", label="PUT on the model route"),
        J("/no-such-route", X4, "unknown route (POST)"),
        GET("/no-such-route", "unknown route (GET)"),
        J("/predict/", X4, "the model route with a trailing slash"),
        GET("/", "index"),
        GET("/health", "health"),
        Http("HEAD", "/health", label="HEAD on health"),
        Http("POST", "/health", label="POST on health"),
        GET("/info", "info"),
        GET("/docs", "docs", volatile=["response.body", "response.text", "response.headers"]),
        GET("/openapi.json", "OpenAPI schema"),
        GET("/redoc", "redoc", volatile=["response.body", "response.text", "response.headers"]),
        GET("/metrics", "metrics (not a LitServe route)"),
        Http("POST", "/shutdown", label="shutdown (not enabled)"),
        Concurrent([J("/predict", {"input": float(i)}) for i in range(4)], "4 concurrent requests"),
    ]


def stream_steps(path: str = "/predict", payload: Any = X4) -> list[Step]:
    return [
        J(path, payload, "a streamed request", stream=True),
        J(path, payload, "Accept-Encoding: gzip", stream=True, headers={"Accept-Encoding": "gzip"}),
        RAW("POST", path, "not json", "application/json", "a body that is not JSON", stream=True),
        J(path, {"wrong": 1}, "JSON without the key decode_request reads", stream=True),
        Http("GET", path, label="wrong method"),
        GET("/info", "info"),
    ]


MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def mcp_rpc(method: str, params: dict[str, Any], rid: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


CASES: list[Case] = [
    # ---- LitServe's tests/simple_server.py and tests/e2e apps
    Case(
        "simple_server",
        "simple_server.py",
        simple_server_steps(),
        files=["client.py"],
        log_patterns=[r"Swagger UI is available"],
    ),
    Case("default_api", "default_api.py", [*basic(), *decode_errors()]),
    Case(
        "default_batching",
        "default_batching.py",
        [
            *basic(),
            J("/predict", {"input": 4}, "an integer input (numpy int64 output)"),
            J("/predict", {"input": [1.0, 2.0]}, "a list input"),
            Concurrent([J("/predict", {"input": float(i)}) for i in range(1, 5)], "4 concurrent"),
        ],
    ),
    Case("default_single_streaming", "default_single_streaming.py", stream_steps()),
    Case(
        "default_async_streaming",
        "default_async_streaming.py",
        [
            *stream_steps(),
            Concurrent([J("/predict", X4, stream=True) for _ in range(3)], "3 concurrent streams"),
        ],
    ),
    Case(
        "default_batched_streaming",
        "default_batched_streaming.py",
        [
            *stream_steps(),
            J("/predict", {"input": 4}, "an integer input (numpy int64 items)", stream=True),
            Concurrent(
                [J("/predict", {"input": x}, stream=True) for x in (4.0, 5.0)],
                "2 concurrent streams, batched",
            ),
        ],
    ),
    Case("default_openaispec", "default_openaispec.py", openai_full()),
    Case(
        "default_openaispec_api_key",
        "default_openaispec.py",
        [
            J(CHAT_PATH, chat(), "no key"),
            J(
                CHAT_PATH,
                chat(),
                "X-API-Key",
                headers={"X-API-Key": "abcd"},
                volatile=["response.body.id", "response.body.created"],
            ),
            *openai_client(stream=False),
        ],
        env={"LIT_SERVER_API_KEY": "abcd"},
        note="LitServe's own app, started with LIT_SERVER_API_KEY=abcd.",
    ),
    Case("default_spec", "default_spec.py", openai_basic()),
    Case(
        "default_openaispec_tools",
        "default_openaispec_tools.py",
        [
            *openai_basic(),
            *openai_client(
                tools=[
                    {
                        "type": "function",
                        "function": {
                            "name": "get_current_weather",
                            "description": "Get the current weather in a given location",
                            "parameters": {
                                "type": "object",
                                "properties": {"location": {"type": "string"}},
                                "required": ["location"],
                            },
                        },
                    }
                ]
            ),
            J(
                CHAT_PATH,
                chat(tools=[{"type": "function", "function": {"name": "f"}}]),
                "a tool without description and parameters",
            ),
            J(CHAT_PATH, chat(tool_choice="required"), "tool_choice 'required'"),
        ],
    ),
    Case(
        "default_openaispec_response_format",
        "default_openaispec_response_format.py",
        [
            *openai_basic(),
            *openai_client(
                response_format={
                    "type": "json_schema",
                    "json_schema": {
                        "name": "calendar_event",
                        "schema": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}},
                            "required": ["name"],
                        },
                        "strict": True,
                    },
                }
            ),
            J(
                CHAT_PATH,
                chat(response_format={"type": "json_object"}),
                "response_format json_object",
                volatile=["response.body.id", "response.body.created"],
            ),
            J(CHAT_PATH, chat(response_format={"type": "yaml"}), "unknown response_format"),
        ],
    ),
    Case(
        "default_openai_with_batching",
        "default_openai_with_batching.py",
        [
            *openai_basic(),
            Concurrent(
                [
                    J(CHAT_PATH, chat(), volatile=["response.body.id", "response.body.created"]),
                    J(CHAT_PATH, chat(), volatile=["response.body.id", "response.body.created"]),
                ],
                "2 concurrent requests, batched",
            ),
            *openai_client(stream=False),
        ],
    ),
    Case(
        "default_openai_embedding_spec",
        "default_openai_embedding_spec.py",
        embedding_full(),
        embeddings=True,
    ),
    Case(
        "openai_embedding_with_batching",
        "openai_embedding_with_batching.py",
        [
            Concurrent(
                [J(EMB_PATH, {"input": [f"request {i}"], "model": "m"}) for i in range(4)],
                "4 concurrent requests, one input each",
            ),
            J(EMB_PATH, {"input": ["a", "b"], "model": "m"}, "two inputs with batching"),
            OpenAICall("embeddings", {"model": "text-embedding-3-large", "input": ["x"]}),
        ],
        embeddings=True,
    ),
    Case(
        "default_mcp",
        "default_mcp.py",
        [
            J("/predict", X4, "the model route"),
            J("/predict", {"input": "x"}, "the model route, pydantic validation error"),
            J(
                "/mcp/",
                mcp_rpc(
                    "initialize",
                    {
                        "protocolVersion": "2025-03-26",
                        "capabilities": {},
                        "clientInfo": {"name": "ferryman-fixtures", "version": "0"},
                    },
                ),
                "MCP initialize",
                headers=MCP_HEADERS,
                volatile=[
                    "response.body.result.serverInfo.version",
                    "response.text",
                    "response.headers.content-length",
                ],
            ),
            J("/mcp/", mcp_rpc("tools/list", {}, 2), "MCP tools/list", headers=MCP_HEADERS),
            J(
                "/mcp/",
                mcp_rpc("tools/call", {"name": "predict", "arguments": {"request": X4}}, 3),
                "MCP tools/call",
                headers=MCP_HEADERS,
            ),
            J("/mcp", mcp_rpc("tools/list", {}, 4), "MCP without the slash", headers=MCP_HEADERS),
            GET("/mcp/", "GET on /mcp/", headers=MCP_HEADERS, timeout=3.0),
            J("/no-such-route", X4, "unknown route (MCP is mounted at /)"),
            GET("/health", "health"),
        ],
        needs=["fastmcp", "mcp.server.fastmcp"],
    ),
    # ---- from LitServe's unit tests
    Case(
        "auth_custom",
        "auth_custom.py",
        [
            J("/predict", X4, "right token", headers={"Authorization": "Bearer 1234"}),
            J("/predict", X4, "wrong token", headers={"Authorization": "Bearer wrong"}),
            J("/predict", X4, "no Authorization header"),
            J("/predict", X4, "not a bearer scheme", headers={"Authorization": "Basic 1234"}),
            GET("/health", "health without a token"),
            GET("/health", "health with the token", headers={"Authorization": "Bearer 1234"}),
            GET("/info", "info without a token"),
            GET("/", "index without a token"),
        ],
    ),
    Case(
        "auth_api_key",
        "auth_api_key.py",
        [
            J("/predict", X4, "right key", headers={"X-API-Key": "abcd"}),
            J("/predict", X4, "wrong key", headers={"X-API-Key": "wrong"}),
            J("/predict", X4, "no key"),
            J(
                "/predict",
                X4,
                "the key as a bearer token",
                headers={"Authorization": "Bearer abcd"},
            ),
            GET("/health", "health without a key"),
            GET("/health", "health with the key", headers={"X-API-Key": "abcd"}),
            GET("/info", "info without a key"),
            GET("/", "index without a key"),
            GET("/docs", "docs without a key", volatile=["response.body", "response.text"]),
        ],
        env={"LIT_SERVER_API_KEY": "abcd"},
    ),
    Case(
        "auth_multi_api",
        "auth_multi_api.py",
        [
            J("/no-auth", {"input": 5.0}, "the API without authorize"),
            J("/needs-auth", {"input": 5.0}, "wrong token", headers={"Authorization": "Bearer x"}),
            J(
                "/needs-auth",
                {"input": 5.0},
                "right token",
                headers={"Authorization": "Bearer alpha"},
            ),
            J("/needs-auth", {"input": 5.0}, "no Authorization header"),
            GET("/health", "health without a token"),
        ],
    ),
    Case(
        "form_urlencoded",
        "form_urlencoded.py",
        [
            Http("POST", "/predict", form={"input": "4.0"}, label="a form"),
            J("/predict", X4, "JSON"),
            RAW("POST", "/predict", "input=4.0", FORM_CT + "; charset=utf-8", "form with charset"),
            Http("POST", "/predict", form={"other": "1"}, label="a form without the field"),
        ],
        needs=["multipart"],
    ),
    Case(
        "form_urlencoded_without_python_multipart",
        "form_urlencoded.py",
        [Http("POST", "/predict", form={"input": "4.0"}, label="a form, no python-multipart")],
        note="Run with a Python that lacks python-multipart (LitServe does not depend on it).",
        needs=["!multipart"],
    ),
    Case(
        "form_file",
        "form_file.py",
        [
            Http(
                "POST",
                "/predict",
                files={"input": {"filename": "a.txt", "content_type": "text/plain", "size": 1000}},
                label="a 1000-byte file",
            ),
            Http(
                "POST",
                "/predict",
                files={"input": {"filename": "b.bin", "content_type": "text/plain", "size": 2**21}},
                label="a 2 MiB file, over max_payload_size",
            ),
            Http(
                "POST",
                "/predict",
                body_size=2**21,
                headers={"Content-Type": "application/json"},
                label="a 2 MiB body",
            ),
            Http(
                "POST",
                "/predict",
                form={"input": "abc"},
                label="a form field instead of a file",
            ),
            J("/predict", X4, "JSON"),
            GET("/info", "info"),
        ],
        needs=["multipart"],
    ),
    Case(
        "compression",
        "compression.py",
        [
            J("/predict", {}, "gzip accepted", headers={"Accept-Encoding": "gzip"}),
            J("/predict", {}, "gzip not accepted", headers={"Accept-Encoding": ""}),
            J(
                "/predict",
                {},
                "gzip, deflate, br",
                headers={"Accept-Encoding": "gzip, deflate, br"},
            ),
            GET("/info", "info with gzip", headers={"Accept-Encoding": "gzip"}),
        ],
    ),
    Case(
        "max_payload_size_string",
        "max_payload_size_string.py",
        [J("/predict", X4, "a request with a body"), GET("/health", "health (no body)")],
    ),
    Case(
        "response_types",
        "response_types.py",
        [
            *[
                J(f"/{kind}", X4, f"encode_response returns {kind}")
                for kind in (
                    "response",
                    "plaintext",
                    "jsonresponse",
                    "pydantic",
                    "pydantic-annotated",
                    "string",
                    "none",
                    "bytes",
                    "list",
                )
            ],
            J("/response", X4, "Response, gzip asked", headers={"Accept-Encoding": "gzip"}),
        ],
    ),
    Case(
        "stream_item_types",
        "stream_item_types.py",
        [
            J(f"/{kind}", {"n": 3}, f"encode_response yields {kind}", stream=True)
            for kind in (
                "dict",
                "pydantic",
                "string",
                "bytes",
                "list",
                "error-after-first",
                "http-error-after-first",
                "http-error-before-first",
            )
        ],
    ),
    Case(
        "multiple_endpoints",
        "multiple_endpoints.py",
        [
            J("/api1", {"input": 2.0}, "api1"),
            J("/api2", {"input": 5.0}, "api2"),
            J("/predict", X4, "the default path"),
            GET("/info", "info"),
            GET("/health", "health"),
        ],
    ),
    Case(
        "mixed_stream_endpoints",
        "mixed_stream_endpoints.py",
        [
            J("/predict", X4, "the non-streaming API"),
            J("/stream", {"input": "hi"}, "the streaming API", stream=True),
            J("/predict", X4, "gzip asked", headers={"Accept-Encoding": "gzip"}),
            GET("/info", "info"),
        ],
    ),
    Case(
        "pydantic_api",
        "pydantic_api.py",
        [
            J("/predict", X4, "valid"),
            J("/predict", {"input": "4"}, "a numeric string (coerced)"),
            J("/predict", {"input": "four"}, "not a number"),
            J("/predict", {}, "missing field"),
            J("/predict", {"input": 4.0, "extra": 1}, "an extra field"),
            RAW("POST", "/predict", "not json", "application/json", "not JSON"),
            RAW("POST", "/predict", None, None, "no body"),
            RAW("POST", "/predict", '{"input": 4.0}', "text/plain", "JSON sent as text/plain"),
            RAW("POST", "/predict", '{"input": 4.0}', FORM_CT, "JSON sent as curl -d sends it"),
            J("/predict", [1], "a JSON list"),
            GET("/openapi.json", "OpenAPI schema"),
        ],
    ),
    Case(
        "callbacks_api",
        "callbacks_api.py",
        [J("/predict", X4, "one request"), Concurrent([J("/predict", X4)] * 2, "2 concurrent")],
        log_patterns=[r"Prediction took", r"Active requests"],
    ),
    Case(
        "hooks_and_env",
        "hooks_and_env.py",
        [J("/predict", X4, "one request"), GET("/health", "health"), Sleep(1.0)],
        log_patterns=[r"^FIXTURE "],
    ),
    Case(
        "logger_file",
        "logger_file.py",
        [J("/predict", X4, "one request"), Sleep(1.0)],
        files=["test_logger_temp.txt"],
    ),
    Case(
        "logger_callback",
        "logger_callback.py",
        [J("/predict", X4, "one request"), Sleep(1.0)],
        files=["test_logger_temp.txt"],
    ),
    Case(
        "logger_nonpickleable",
        "logger_nonpickleable.py",
        [J("/predict", X4, "one request"), Sleep(1.0)],
        log_patterns=[r"Logged my-key", r"not pickleable"],
    ),
    Case(
        "middlewares_request_id",
        "middlewares_request_id.py",
        [J("/predict", X4, "a request"), GET("/health", "health"), GET("/nope", "unknown route")],
    ),
    Case(
        "middlewares_starlette",
        "middlewares_starlette.py",
        [
            J("/predict", X4, "plain http (HTTPSRedirectMiddleware)"),
            J("/predict", X4, "untrusted Host", headers={"Host": "not-trusted-host"}),
            J(
                "/predict",
                X4,
                "as if behind a TLS proxy (X-Forwarded-Proto is not read)",
                headers={"X-Forwarded-Proto": "https"},
            ),
        ],
    ),
    Case(
        "http_exception",
        "http_exception.py",
        [J("/predict", X4, "HTTPException(501)"), J("/predict2", X4, "HTTPException(400)")],
    ),
    Case(
        "http_exception_variants",
        "http_exception_variants.py",
        [
            J(f"/{kind}", X4, kind)
            for kind in (
                "fastapi-with-headers",
                "fastapi-dict-detail",
                "fastapi-no-detail",
                "fastapi-204",
                "starlette",
                "value-error",
            )
        ],
    ),
    Case(
        "exception_api",
        "exception_api.py",
        [J("/predict", X4, "predict raises an exception that cannot be unpickled")],
    ),
    Case(
        "context_single",
        "context_single.py",
        [
            J("/predict", {"input": 5.0}, "context"),
            J("/predict-error", {"input": 5.0}, "bad predict"),
        ],
    ),
    Case(
        "context_batched",
        "context_batched.py",
        [
            J("/predict", {"input": 5.0}, "alone"),
            Concurrent([J("/predict", {"input": x}) for x in (1.0, 2.0)], "2 concurrent"),
        ],
    ),
    Case(
        "context_batched_streaming",
        "context_batched_streaming.py",
        [
            J("/predict", {"input": 5.0}, "alone", stream=True),
            Concurrent(
                [J("/predict", {"input": x}, stream=True) for x in (1.0, 2.0)], "2 concurrent"
            ),
        ],
    ),
    Case(
        "info_paths",
        "info_paths.py",
        [
            GET("/v1/custom_info", "custom info path"),
            GET("/v1/custom_health", "custom health path"),
            GET("/info", "default info path"),
            GET("/health", "default health path"),
            GET("/openapi.json", "OpenAPI schema, disabled"),
            GET("/docs", "docs, with the schema disabled", volatile=["response.text"]),
            J("/predict", X4, "the model route"),
        ],
    ),
    Case(
        "health_custom",
        "health_custom.py",
        [
            GET("/health", "first health call (starts LitAPI.health's 5 s in the API process)"),
            J("/predict", X4, "a request while health says 503"),
            Sleep(5.5),
            GET("/health", "health after 5 s"),
        ],
        probe_first=True,
    ),
    Case("health_async", "health_async.py", [GET("/health", "async health")]),
    Case(
        "shutdown_api",
        "shutdown_api.py",
        [
            Http("POST", "/shutdown", label="no token"),
            Http(
                "POST", "/shutdown", headers={"Authorization": "Bearer wrong"}, label="wrong token"
            ),
            Http("GET", "/shutdown", label="GET"),
            Http(
                "POST",
                "/shutdown",
                headers={"Authorization": "Bearer test-key-123"},
                label="right token",
            ),
            WaitExit(60, "the server exits"),
        ],
        env={"LIT_SHUTDOWN_API_KEY": "test-key-123"},
    ),
    Case(
        "timeout_api",
        "timeout_api.py",
        [
            J("/predict", X4, "one request: predict takes 2 s, timeout=1"),
            Concurrent(
                [J("/predict", {"input": float(i)}) for i in range(3)],
                "3 concurrent requests: the later ones wait over 1 s in the queue",
            ),
        ],
    ),
    Case(
        "timeout_disabled",
        "timeout_disabled.py",
        [Concurrent([J("/predict", {"input": float(i)}) for i in range(3)], "3 concurrent")],
    ),
    Case(
        "batch_timeout",
        "batch_timeout.py",
        [
            Concurrent(
                [J("/predict", {"input": x}) for x in (4.0, 5.0, 6.0)],
                "3 concurrent, batches of 2, predict 2 s, timeout 1.9",
                order_volatile=True,
            )
        ],
    ),
    Case(
        "async_api",
        "async_api.py",
        [
            J("/predict", {"input": 5.0}, "async methods"),
            J("/predict-error", {"input": 5.0}, "async decode_request raising HTTPException"),
            J("/predict", {"wrong": 1}, "async decode_request raising KeyError"),
        ],
    ),
    Case(
        "async_concurrent",
        "async_concurrent.py",
        [
            Concurrent(
                [J("/predict", {"input": 5.0}) for _ in range(4)],
                "4 concurrent 4 s predicts in one worker",
                volatile=["elapsed_s", "concurrent[*].elapsed_s"],
            )
        ],
    ),
    Case("async_stream", "async_stream.py", stream_steps()),
    Case(
        "continuous_batching",
        "continuous_batching.py",
        [],
        expect_start=False,
    ),
    Case(
        "continuous_batching_servable",
        "continuous_batching_servable.py",
        [
            J("/predict", {"input": "x"}, "one sequence", stream=True),
            Concurrent(
                [J("/predict", {"input": str(i)}, stream=True) for i in range(3)], "3 concurrent"
            ),
        ],
    ),
    Case(
        "restart_workers",
        "restart_workers.py",
        [
            J("/predict", {"input": 1}, "a request", volatile=["response.body.output"]),
            J("/predict", {"input": 0}, "a request that kills its worker", timeout=20),
            Sleep(8.0),
            J("/predict", {"input": 1}, "after the restart", volatile=["response.body.output"]),
        ],
        log_patterns=[r"\[monitoring\]", r"died"],
    ),
    Case(
        "worker_crash",
        "worker_crash.py",
        [
            J("/predict", {"input": 1}, "a request"),
            J("/predict", {"input": 0}, "a request that kills the only worker", timeout=45),
            WaitExit(60, "the server exits"),
        ],
        log_patterns=[r"died", r"Shutting down"],
    ),
    Case(
        "openai_spec_api",
        "openai_spec_api.py",
        [*openai_basic(), *openai_client()],
    ),
    Case(
        "openai_usage_per_token",
        "openai_usage_per_token.py",
        [
            *openai_basic(),
            J(
                CHAT_PATH,
                chat(stream=True, stream_options={"include_usage": True}),
                "stream_options.include_usage",
                stream=True,
                volatile=["response.events[*].id", "response.events[*].created"],
            ),
            *openai_client(),
        ],
    ),
    Case("openai_usage_encode", "openai_usage_encode.py", openai_basic()),
    Case(
        "openai_usage_batched",
        "openai_usage_batched.py",
        [
            *openai_basic(),
            Concurrent(
                [
                    J(CHAT_PATH, chat(), volatile=["response.body.id", "response.body.created"]),
                    J(CHAT_PATH, chat(), volatile=["response.body.id", "response.body.created"]),
                ],
                "2 concurrent, batched",
            ),
        ],
    ),
    Case(
        "openai_metadata",
        "openai_metadata.py",
        [
            J(
                CHAT_PATH,
                chat(metadata={"user_id": "123"}),
                "with metadata",
                volatile=["response.body.id", "response.body.created"],
            ),
            J(CHAT_PATH, chat(), "without: HTTPException(500) in predict"),
            J(CHAT_PATH, chat(stream=True), "without, streamed", stream=True),
            J(CHAT_PATH, chat(metadata={"user_id": 123}), "metadata values must be strings"),
            *openai_client(stream=True),
        ],
    ),
    Case(
        "openai_http_error",
        "openai_http_error.py",
        [
            J(CHAT_PATH, chat(), "HTTPException(501) after the first item"),
            J(
                CHAT_PATH,
                chat(stream=True),
                "streamed",
                stream=True,
                volatile=["response.events[*].id", "response.events[*].created"],
            ),
            *openai_client(),
        ],
    ),
    Case(
        "openai_prepopulated_context",
        "openai_prepopulated_context.py",
        [
            J(
                CHAT_PATH,
                chat(max_completion_tokens=3),
                "max_completion_tokens=3 read from the context",
                volatile=["response.body.id", "response.body.created"],
            ),
            J(CHAT_PATH, chat(), "max_completion_tokens absent (None in the context)"),
        ],
    ),
    Case(
        "openai_reasoning_effort",
        "openai_reasoning_effort.py",
        [
            J(
                CHAT_PATH,
                chat(reasoning_effort="low"),
                "reasoning_effort low",
                volatile=["response.body.id", "response.body.created"],
            ),
            J(
                CHAT_PATH,
                chat(),
                "no reasoning_effort",
                volatile=["response.body.id", "response.body.created"],
            ),
            J(CHAT_PATH, chat(reasoning_effort="random"), "reasoning_effort random"),
        ],
    ),
    Case(
        "openai_async",
        "openai_async.py",
        [*openai_basic(), *openai_client(stream=False)],
    ),
    Case(
        "openai_custom_path",
        "openai_custom_path.py",
        [
            *openai_basic("/v2/chat/completions"),
            J(CHAT_PATH, chat(), "the default path"),
        ],
    ),
    Case(
        "deprecated_spec_arg",
        "deprecated_spec_arg.py",
        openai_basic(),
    ),
    Case(
        "deprecated_server_args",
        "deprecated_server_args.py",
        [
            J("/v1/predict", X4, "the api_path given to LitServer"),
            J("/predict", X4, "the default path"),
            GET("/info", "info"),
        ],
    ),
    Case(
        "deprecated_stream_arg", "deprecated_stream_arg.py", stream_steps(payload={"input": "hi"})
    ),
    Case(
        "embedding_usage",
        "embedding_usage.py",
        [J(EMB_PATH, {"input": "hello", "model": "lit"}, "usage from encode_response")],
        embeddings=True,
    ),
    Case(
        "embedding_batching",
        "embedding_batching.py",
        [
            J(EMB_PATH, {"input": ["a", "b"], "model": "lit"}, "client-side batch"),
            Concurrent(
                [J(EMB_PATH, {"input": x, "model": "lit"}) for x in ("a", "b")],
                "2 concurrent single inputs, batched (predict sleeps 2 s)",
                volatile=["elapsed_s", "concurrent[*].elapsed_s"],
            ),
        ],
        embeddings=True,
    ),
    Case(
        "embedding_non_dict",
        "embedding_non_dict.py",
        [J(EMB_PATH, {"input": "hello", "model": "lit"}, "encode_response returns a list")],
        embeddings=True,
    ),
    Case(
        "embedding_missing_key",
        "embedding_missing_key.py",
        [J(EMB_PATH, {"input": "hello", "model": "lit"}, "no 'embeddings' key")],
        embeddings=True,
    ),
    # ---- refused at start
    Case("startup_setup_fails", "startup_setup_fails.py", [], expect_start=False),
    Case("startup_path_collision", "startup_path_collision.py", [], expect_start=False),
    Case("startup_openai_not_generator", "startup_openai_not_generator.py", [], expect_start=False),
    Case("startup_embedding_yield", "startup_embedding_yield.py", [], expect_start=False),
    Case("startup_stream_not_generator", "startup_stream_not_generator.py", [], expect_start=False),
    Case("startup_async_not_async", "startup_async_not_async.py", [], expect_start=False),
    Case("startup_two_spec_apis", "startup_two_spec_apis.py", [], expect_start=False),
]


# --------------------------------------------------------------------------- driver


def port_in_file(text: str) -> dict[str, Any]:
    calls = list(RUN_PORT.finditer(text))
    if not calls:
        return {"run_call": None, "port": None}
    m = calls[-1]
    pm = re.search(r"port\s*=\s*(\d+)", m.group("args"))
    return {"run_call": m.group(0), "port": int(pm.group(1)) if pm else 8000}


def has_modules(python: str, modules: list[str]) -> bool:
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    r = subprocess.run([python, "-c", code, *modules], capture_output=True, timeout=120)
    return r.returncode == 0


def pick_python(case: Case, extras: str | None) -> tuple[str | None, str]:
    wanted = [m for m in case.needs if not m.startswith("!")]
    unwanted = [m[1:] for m in case.needs if m.startswith("!")]
    for python in [sys.executable, extras]:
        if python is None:
            continue
        if wanted and not has_modules(python, wanted):
            continue
        if any(has_modules(python, [m]) for m in unwanted):
            continue
        return python, python
    return None, f"no Python given has {wanted} without {unwanted}"


def record_case(case: Case, extras: str | None) -> dict[str, Any]:
    app = APPS / case.file
    text = app.read_text()
    entry: dict[str, Any] = {
        "id": case.id,
        "file": f"apps/{case.file}",
        "started_as": f"python {case.file}  (a copy, with the port of its .run(...) replaced)",
        **port_in_file(text),
    }
    if case.env:
        entry["env"] = case.env
    if case.needs:
        entry["needs"] = case.needs
    if case.note:
        entry["note"] = case.note
    python, why = pick_python(case, extras)
    if python is None:
        entry["skipped"] = why
        return entry
    steps_out: list[dict[str, Any]] = []
    with started(python, app, case.env) as server:
        if case.probe_first:
            steps_out.append(
                {
                    "label": "a connection right after the start",
                    "probe": "tcp connect",
                    "result": connect_once(server.port),
                }
            )
        if not case.expect_start:
            try:
                code = server.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                code = None
            log = server.log()
            entry["startup"] = {
                "exit_code": code,
                "error": final_exception(log),
                "warnings": warnings_in(log),
            }
            return normalize_port(entry, server.port)
        t0 = time.monotonic()
        ready = wait_ready(server)
        entry["startup"] = {"ready": ready, "seconds": round(time.monotonic() - t0, 1)}
        entry["volatile"] = ["startup.seconds"]
        if not ready:
            log = server.log()
            entry["startup"]["exit_code"] = server.proc.poll()
            entry["startup"]["error"] = final_exception(log)
            entry["startup"]["log_tail"] = log[-3000:]
            return entry
        for step in case.steps:
            steps_out.append(run_step(server, step))
        time.sleep(0.3)
        log = server.log()
        entry["steps"] = steps_out
        entry["startup"]["warnings"] = warnings_in(log)
        if case.log_patterns:
            entry["log_lines"] = matching_log_lines(log, case.log_patterns, server.port)
        if case.files:
            files = {}
            for name in case.files:
                p = server.workdir / name
                files[name] = (
                    p.read_text().replace(str(server.port), "{PORT}") if p.exists() else None
                )
            entry["files_written"] = files
        entry["exit_code_before_kill"] = server.proc.poll()
    if case.embeddings:
        entry["steps"] = summarize_embeddings(entry["steps"])
    return normalize_port(entry, server.port)


def normalize_port(entry: dict[str, Any], port: int) -> dict[str, Any]:
    """The random port becomes {PORT} wherever it is written after a loopback host."""
    text = json.dumps(entry)
    text = re.sub(rf"(127\.0\.0\.1|0\.0\.0\.0|localhost):{port}(?!\d)", r"\1:{PORT}", text)
    return json.loads(text)


def versions(python: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, platform\n"
        "out = {'python': platform.python_version()}\n"
        "for p in ['litserve', 'fastapi', 'starlette', 'uvicorn', 'pydantic', 'pyzmq', 'numpy',"
        " 'python-multipart', 'fastmcp', 'mcp', 'openai']:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "print(json.dumps(out))\n"
    )
    return json.loads(subprocess.check_output([python, "-c", code], text=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="case ids to (re)record, merged into the file")
    ap.add_argument("--extras-python", help="a Python with python-multipart, fastmcp and mcp<2")
    ap.add_argument("--list", action="store_true", help="list the case ids and exit")
    ap.add_argument("--out", type=Path, default=EXPECTED)
    args = ap.parse_args(argv)
    if args.list:
        for case in CASES:
            print(f"{case.id:45} apps/{case.file}")
        return 0
    selected = [c for c in CASES if not args.only or c.id in args.only]
    unknown = set(args.only or []) - {c.id for c in CASES}
    if unknown:
        ap.error(f"unknown case ids: {sorted(unknown)}")
    previous: dict[str, Any] = {}
    if args.only and args.out.exists():
        previous = json.loads(args.out.read_text())
    by_id = {a["id"]: a for a in previous.get("apps", [])}
    record_versions = {"base": versions(sys.executable)}
    if args.extras_python:
        record_versions["extras"] = versions(args.extras_python)
    for case in selected:
        t0 = time.monotonic()
        print(f"recording {case.id} ...", end=" ", flush=True)
        entry = record_case(case, args.extras_python)
        by_id[case.id] = entry
        print(f"{time.monotonic() - t0:.1f} s", "skipped" if "skipped" in entry else "")
    doc = {
        "description": "LitServe 0.2.19's answers to the apps in apps/; see README.md.",
        "recorded_with": record_versions,
        "platform": platform.platform(),
        "litserve_repo_commit": LITSERVE_REPO_COMMIT,
        "apps": [by_id[c.id] for c in CASES if c.id in by_id],
    }
    args.out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out} ({len(doc['apps'])} apps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
