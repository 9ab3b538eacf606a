"""Replay tests/litserve/expected.json against `ferryman serve FILE.py` (runs in the test process).

Each recorded case is one of LitServe's own server files (tests/litserve/apps/) and what real
LitServe 0.2.19 answered to a list of requests. `replay(case_id, workdir)` starts the same file
unchanged with `ferryman serve FILE.py` on free loopback ports (the port written in the file is
beaten by `--port`, the feature under test), sends the recorded requests byte for byte, and
returns what differs from the recording, per step: status, reason, headers (all but date and
server), content type and body, ignoring what the recording marks volatile (ids, timestamps,
timings). Differences ferryman documents are in `DIFFERENCES` (the README's table says why):
there the step is held to ferryman's documented answer instead.

Answers are written down by litserve_shapes.py, as record.py writes LitServe's, so that both
sides compare.

    python tests/litserve_harness.py simple_server info_paths   # print what differs
    python tests/litserve_harness.py --all                        # every recorded case
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litserve_shapes import (
    multipart_body,
    openai_call,
    read_until,
    shape_response,
    summarize_embeddings,
)
from ports import free_port
from processes import group_members

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LITSERVE = HERE / "litserve"
EXPECTED = LITSERVE / "expected.json"


def load_cases() -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in json.loads(EXPECTED.read_text())["apps"]}


CASES = load_cases()


# -- documented differences -------------------------------------------------------------------


@dataclass
class Difference:
    """A recorded step where ferryman answers otherwise, on purpose. `expect` replaces parts
    of the recorded response (dotted paths, as `volatile` names them); `check`, if given, is
    asserted on the actual response instead of comparing those parts."""

    why: str
    expect: dict[str, Any] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)
    check: Callable[[dict[str, Any]], bool] | None = None
    step: dict[str, Any] | None = None  # sent instead of the recorded step


_LIMIT = 100 * 1024 * 1024
_BOUNDED = (
    "ferryman bounds a request body at 100 MiB by default (what LitServe's docstring promises; "
    "LitServe itself sets no limit), and /info shows the limit in force"
)


def _info(text: str) -> dict[str, Any]:
    """/info with ferryman's default body limit instead of LitServe's null."""
    body = json.loads(text)
    body["server"]["max_payload_size"] = _LIMIT
    new = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return {
        "response.body": body,
        "response.text": new,
        "response.headers.content-length": str(len(new.encode())),
    }


def _status(status: int, **body: Any) -> Callable[[dict[str, Any]], bool]:
    """A check: the response has this status (and these top-level body values)."""

    def check(actual: dict[str, Any]) -> bool:
        response = actual.get("response") or {}
        found = response.get("body")
        return response.get("status") == status and all(
            isinstance(found, dict) and found.get(k) == v for k, v in body.items()
        )

    return check


def _output_in(*values: Any) -> Callable[[dict[str, Any]], bool]:
    def check(actual: dict[str, Any]) -> bool:
        response = actual.get("response") or {}
        return response.get("status") == 200 and response["body"].get("output") in values

    return check


_WORKER_DIED = (
    "a worker that dies is replaced at once and the request it held gets 503 (its detail "
    "names the worker and how it died); LitServe never answers that request (restart_workers="
    "True) or shuts the whole server down (False)"
)
_AUTHORIZE_OPEN = (
    "with one LitAPI that has its own authorize(), LitServe also guards /, health and info "
    "with it; in ferryman authorize() runs in the worker, so those three routes stay open "
    "(LIT_SERVER_API_KEY, when set, still guards them)"
)

DIFFERENCES: dict[tuple[str, str], Difference] = {
    ("health_custom", "a connection right after the start"): Difference(
        "the supervisor listens from the start: before a worker is ready a request gets 503 "
        "(no_worker) and /health 503, rather than a refused connection",
        expect={"result": "connected"},
    ),
    ("max_payload_size_string", "a request with a body"): Difference(
        'max_payload_size="10MB" is read as 10 MiB (LitServe\'s docstring says strings are '
        "accepted; LitServe 0.2.19 then fails every request with a body with a 500)",
        ignore=["response"],
        check=lambda a: (
            a["response"].get("status") == 200 and a["response"]["body"] == {"output": 16.0}
        ),
    ),
    **{
        ("auth_custom", label): Difference(_AUTHORIZE_OPEN, ignore=["response"], check=check)
        for label, check in [
            ("index without a token", _status(200)),
            ("health without a token", _status(200)),
            ("info without a token", _status(200)),
        ]
    },
    # Which of two workers takes a request is the router's choice (LITSERVE_WORKER_ID).
    ("restart_workers", "a request"): Difference(
        "either worker may answer", ignore=["response"], check=_output_in(0, 1)
    ),
    ("restart_workers", "after the restart"): Difference(
        "either worker may answer", ignore=["response"], check=_output_in(0, 1)
    ),
    ("restart_workers", "a request that kills its worker"): Difference(
        _WORKER_DIED, ignore=["response"], check=_status(503)
    ),
    ("worker_crash", "a request that kills the only worker"): Difference(
        _WORKER_DIED, ignore=["response"], check=_status(503)
    ),
    ("stream_item_types", "encode_response yields list"): Difference(
        "a streamed item format_encoded_response leaves as neither text nor bytes is sent as "
        "a JSON line (LitServe's connection breaks after the headers)",
        ignore=["response"],
        check=lambda a: (
            a["response"].get("status") == 200
            and a["response"].get("lines") == [[0, 0], [1, 1], [2, 2]]
        ),
    ),
    ("worker_crash", "the server exits"): Difference(
        _WORKER_DIED + ": the server goes on",
        step={"label": "the server goes on", "wait_exit": 2},
        expect={"label": "the server goes on", "wait_exit": 2, "exit_code": None},
    ),
}

# Cases LitServe serves and ferryman refuses at start, by name (exit status 2): what the one-line
# message must name, and why.
REFUSED: dict[str, tuple[str, str]] = {
    "middlewares_request_id": (
        "middlewares=[RequestIdMiddleware]",
        "a middleware class of the user's would run user code in the API processes, which "
        "never import it; starlette's own middlewares are accepted",
    ),
    "continuous_batching_servable": (
        "loop=ContinuousBatchingLoop",
        "a custom loop speaks LitServe's internal queue protocol; ferryman's worker loop "
        "batches and streams",
    ),
    "default_mcp": ("mcp=", "MCP mounts a second server in LitServe's API process"),
}


def documented(case_id: str, step: dict[str, Any]) -> Difference | None:
    """The documented difference of a step, if any: DIFFERENCES, or /info's body limit."""
    found = DIFFERENCES.get((case_id, step.get("label", "")))
    if found is not None:
        return found
    response = step.get("response") or {}
    chat = any(
        (st.get("request") or {}).get("path") == "/v1/chat/completions"
        for st in CASES[case_id].get("steps") or []
    )
    models = (step.get("request") or {}).get("path") == "/v1/models"
    if chat and models and response.get("status") == 404:
        return Difference(
            "ferryman adds OpenAI's GET /v1/models beside an OpenAISpec API (LitServe answers "
            "404), so that OpenAI clients can list the model",
            ignore=["response"],
            check=lambda actual: (
                actual["response"].get("status") == 200
                and actual["response"].get("body", {}).get("object") == "list"
            ),
        )
    body = response.get("body")
    if (
        response.get("status") == 200
        and isinstance(body, dict)
        and set(body) == {"model", "server"}
        and body["server"].get("max_payload_size") is None
    ):
        return Difference(_BOUNDED, expect=_info(response["text"]))
    return None


# -- the server -------------------------------------------------------------------------------


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    workdir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _kill_group(pgid: int) -> None:
    """SIGKILL the server's whole process group (the supervisor and its children), and wait
    until /proc shows none of them."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and group_members(pgid):
        time.sleep(0.05)


@contextlib.contextmanager
def started(
    case: dict[str, Any], workdir: Path, extra_args: tuple[str, ...] = ()
) -> Iterator[Served]:
    """`ferryman serve tests/litserve/apps/FILE.py` in `workdir` (LitServe writes client.py
    and loggers their files into the current directory), in a process group of its own that is
    killed at the end, whatever happened."""
    port, admin_port = free_port(), free_port()
    app = LITSERVE / case["file"]
    log_path = workdir / "server.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LIT_", "LITSERVE_", "FERRYMAN_")) and k != "NOTIFY_SOCKET"
    }
    env.update(case.get("env") or {})
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [
        sys.executable, "-m", "ferryman", "serve", str(app),
        "--port", str(port), "--admin-port", str(admin_port), "--host", "127.0.0.1",
        # One API process, as LitServe starts (one per worker) for these one-worker files.
        "--api-servers", "1",
        *extra_args,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Served(proc, port, admin_port, workdir, log_path)
    finally:
        _kill_group(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def wait_ready(server: Served, timeout: float = 60.0) -> bool:
    """Until the admin port's /ready says every model has a worker; False if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.admin_port, timeout=2)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return True
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    return False


# -- requests, as record.py sends and writes them down -------------------------------------------


def _wire(req: dict[str, Any]) -> tuple[bytes | None, dict[str, str]]:
    headers = dict(req.get("headers") or {})
    body: bytes | None = None
    if "json" in req:
        body = json.dumps(req["json"]).encode()
    elif "form" in req:
        body = urllib.parse.urlencode(req["form"]).encode()
    elif "files" in req:
        body = multipart_body(req["files"])
    elif isinstance(req.get("body"), dict):
        body = req["body"]["repeat"].encode() * req["body"]["size"]
    elif "body" in req:
        body = req["body"].encode()
    return body, headers


def do_http(port: int, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    body, headers = _wire(req)
    started_at = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(req["method"], req["path"], body=body, headers=headers)
        resp = conn.getresponse()
        raw, cut = read_until(conn, resp, started_at + timeout)
    except TimeoutError:
        return {"error": f"no answer within {timeout:g} s"}
    except (OSError, http.client.HTTPException) as e:
        return {"error": type(e).__name__}
    finally:
        conn.close()
    return shape_response(resp, raw, cut, bool(req.get("stream")), timeout)


def do_openai(port: int, call: dict[str, Any]) -> dict[str, Any]:
    return openai_call(port, call["call"], call["kwargs"])


def _port_free(text: Any, port: int) -> Any:
    raw = json.dumps(text)
    raw = re.sub(rf"(127\.0\.0\.1|0\.0\.0\.0|localhost):{port}(?!\d)", r"\1:{PORT}", raw)
    return json.loads(raw)


# -- comparing ----------------------------------------------------------------------------------


def _drop(obj: Any, path: list[str]) -> None:
    """Remove a dotted path (with [*] for every item) from obj, in place."""
    if not path or obj is None:
        return
    head, rest = path[0], path[1:]
    m = re.fullmatch(r"(.*)\[\*\]", head)
    if m:
        items = obj.get(m.group(1)) if isinstance(obj, dict) else None
        for item in items or []:
            _drop(item, rest)
        return
    if not isinstance(obj, dict) or head not in obj:
        return
    if rest:
        _drop(obj[head], rest)
    else:
        del obj[head]


def _set(obj: dict[str, Any], dotted: str, value: Any) -> None:
    # Header names hold dots only in theory; bodies' keys are split on every dot.
    head, _, rest = dotted.partition(".")
    if head == "headers" and rest:
        obj.setdefault("headers", {})[rest] = value
        return
    if not rest:
        obj[head] = value
        return
    _set(obj.setdefault(head, {}), rest, value)


def _diff(expected: Any, actual: Any, where: str, out: list[str]) -> None:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for k in sorted(set(expected) | set(actual)):
            if k not in actual:
                out.append(f"{where}.{k}: missing (expected {expected[k]!r:.200})")
            elif k not in expected:
                out.append(f"{where}.{k}: unexpected {actual[k]!r:.200}")
            else:
                _diff(expected[k], actual[k], f"{where}.{k}", out)
    elif isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _diff(e, a, f"{where}[{i}]", out)
    elif expected != actual:
        out.append(f"{where}: expected {expected!r:.300}, got {actual!r:.300}")


_CHAT_ID = re.compile(r'"id":\s*"chatcmpl-[0-9a-f]+"')
_CREATED = re.compile(r'"created":\s*\d+')


def _steady(obj: Any) -> None:
    """OpenAI's ids and timestamps change from run to run, wherever they are (the recording
    marks most, not all: a coerced `"stream": "yes"` streams too), also in a body's exact
    text."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "text" and isinstance(v, str):
                obj[k] = _CREATED.sub('"created":0', _CHAT_ID.sub('"id":"chatcmpl-x"', v))
            elif k == "id" and isinstance(v, str) and v.startswith("chatcmpl-"):
                obj[k] = "chatcmpl-x"
            elif k == "created" and isinstance(v, int):
                obj[k] = 0
            else:
                _steady(v)
    elif isinstance(obj, list):
        for v in obj:
            _steady(v)


def _compare_step(
    case_id: str, step: dict[str, Any], actual: dict[str, Any], embeddings: bool
) -> list[str]:
    label = step.get("label", "")
    expected = json.loads(json.dumps(step))
    actual = json.loads(json.dumps(actual))
    if embeddings:
        actual = summarize_embeddings(actual)
    difference = documented(case_id, step)
    checked = difference is None or difference.check is None or difference.check(actual)
    if difference is not None:
        for dotted, value in difference.expect.items():
            _set(expected, dotted, value)
    volatile = list(step.get("volatile") or [])
    for entry in step.get("concurrent") or []:
        volatile += [f"concurrent[*].{v}" for v in entry.get("volatile") or []]
    volatile += ["elapsed_s", "concurrent[*].elapsed_s"]
    if difference is not None:
        volatile += difference.ignore
    for target in (expected, actual):
        for path in volatile:
            _drop(target, path.split("."))
        target.pop("label", None)
        _steady(target)
    if step.get("order_volatile"):
        for target in (expected, actual):
            target.pop("concurrent", None)
    out: list[str] = []
    _diff(expected, actual, "", out)
    if not checked:
        assert difference is not None
        out.append(f": documented difference not met: {difference.why}")
    return [f"{case_id} / {label or '(step)'}{line}" for line in out]


def run_step(server: Served, step: dict[str, Any]) -> dict[str, Any]:
    """Send one recorded step; answer it in the recording's shape."""
    out: dict[str, Any] = {"label": step.get("label", "")}
    if "request" in step:
        timeout = 30.0 if "error" not in step["response"] else 5.0
        out["request"] = step["request"]
        out["response"] = do_http(server.port, step["request"], timeout)
    elif "concurrent" in step:
        with ThreadPoolExecutor(len(step["concurrent"])) as pool:
            futures = []
            for r in step["concurrent"]:
                futures.append(pool.submit(do_http, server.port, r["request"]))
                time.sleep(0.05)  # keep the submission order, as recorded
            results = [f.result() for f in futures]
        out["concurrent"] = [
            {"request": r["request"], "response": res}
            | ({"volatile": r["volatile"]} if r.get("volatile") else {})
            for r, res in zip(step["concurrent"], results, strict=True)
        ]
        if step.get("order_volatile"):
            out["order_volatile"] = True
            out["statuses_sorted"] = sorted(res.get("status", 0) for res in results)
    elif "sleep" in step:
        time.sleep(step["sleep"])
        out = {"sleep": step["sleep"]}
    elif "probe" in step:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=2):
                result = "connected"
        except ConnectionRefusedError:
            result = "connection refused"
        out.update(probe="tcp connect", result=result)
    elif "wait_exit" in step:
        try:
            code = server.proc.wait(timeout=step["wait_exit"])
        except subprocess.TimeoutExpired:
            code = None
        out.update(wait_exit=step["wait_exit"], exit_code=code)
    elif "openai" in step:
        out["openai"] = step["openai"]
        out.update(do_openai(server.port, step["openai"]))
    if step.get("volatile"):
        out["volatile"] = step["volatile"]
    return _port_free(out, server.port)


@dataclass
class Replay:
    case: str
    started: bool
    mismatches: list[str]
    log: str
    files: dict[str, str | None]
    exit_code: int | None


def replay(
    case_id: str,
    workdir: Path,
    only: Callable[[dict[str, Any]], bool] | None = None,
    extra_args: tuple[str, ...] = (),
) -> Replay:
    """Start the case's file with ferryman, send its recorded steps (those `only` keeps), and
    say what differs."""
    case = CASES[case_id]
    steps = [s for s in case.get("steps") or [] if only is None or only(s)]
    embeddings = any("embedding" in json.dumps(s) for s in steps)
    mismatches: list[str] = []
    with started(case, workdir, extra_args) as server:
        if "exit_code" in case["startup"]:  # LitServe refused to start: so must ferryman
            try:
                code: int | None = server.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                code = None
            return Replay(case_id, False, [], server.log(), {}, code)
        if not wait_ready(server):
            return Replay(
                case_id, False, [f"{case_id}: did not start"], server.log(), {}, server.proc.poll()
            )
        for step in steps:
            difference = documented(case_id, step)
            sent = difference.step if difference is not None and difference.step else step
            actual = run_step(server, sent)
            mismatches += _compare_step(case_id, step, actual, embeddings)
        files = {}
        for name in case.get("files_written") or {}:
            p = workdir / name
            files[name] = p.read_text().replace(str(server.port), "{PORT}") if p.exists() else None
        return Replay(case_id, True, mismatches, server.log(), files, server.proc.poll())


def main(argv: list[str]) -> int:
    ids = list(CASES) if argv[:1] == ["--all"] else argv
    unknown = [i for i in ids if i not in CASES]
    if not ids or unknown:
        print(__doc__.rsplit("\n\n", 1)[-1].rstrip(), file=sys.stderr)
        if unknown:
            print(
                f"unknown case: {', '.join(unknown)} (the ids are in {EXPECTED})", file=sys.stderr
            )
        return 2
    failed = 0
    for case_id in ids:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="ferryman-litserve-") as tmp:
            r = replay(case_id, Path(tmp))
        took = time.monotonic() - t0
        expected_files = CASES[case_id].get("files_written") or {}
        for name, text in expected_files.items():
            if r.files.get(name) != text:
                r.mismatches.append(f"{case_id}: file {name}: {r.files.get(name)!r:.200}")
        status = "ok" if not r.mismatches else f"{len(r.mismatches)} differ"
        if not r.started:
            status = f"not served (exit {r.exit_code})" + (
                "" if "exit_code" in CASES[case_id]["startup"] else " UNEXPECTED"
            )
        print(f"== {case_id}: {status} ({took:.1f} s)")
        for line in r.mismatches:
            print("   ", line)
        if not r.started:
            print("   ", "\n    ".join(r.log.strip().splitlines()[-4:]))
        failed += bool(r.mismatches)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
