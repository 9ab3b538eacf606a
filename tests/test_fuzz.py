"""Fuzz: the admin API from its own OpenAPI document, the data routes with hostile input.

(a) schemathesis generates requests for every operation of `GET /openapi.json`, valid and
    invalid, and checks each answer against the document (status code, content type, schema),
    that the token is enforced where the document says so, and that no answer is a 5xx. Reading
    operations run against a server that must come out unchanged (same pids, still answering);
    the ones that change things (scale, restart, reload, add and delete models) against a
    throwaway server, where the documented 503/504 of `?wait=true` may answer but never a 500.
(b) the data routes over raw sockets, where an HTTP client would refuse or repair the request:
    every answer must be a 4xx with ferryman's JSON error body, the model's right answer for a
    request that is valid after all, or a clean close; never a 5xx, never a restarted process.

The examples are drawn from a fixed seed (`--chaos-seed`), so a CI run is reproducible.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from conftest import Served, app
from hypothesis import HealthCheck, Phase, given, settings
from reliability import Admin, launch, wait_ready
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

TOKEN = "fuzz-token"
BODY_TIMEOUT = 1.0
MAX_PAYLOAD = 1 << 20
OPTIONS = (
    "--admin-token", TOKEN,
    "--max-workers", "2",
    "--body-timeout", str(BODY_TIMEOUT),
    "--max-payload-size", str(MAX_PAYLOAD),
    "--startup-timeout", "30",
)  # fmt: skip
# Examples per operation and mode: the admin fuzz stays within ~30 s on 2 cores. Fewer for the
# operations that change things: each valid one really restarts, reloads or scales.
EXAMPLES = 12
EXAMPLES_CHANGING = 5
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for every reading operation and every data-route case (~2 s to start)."""
    s = launch(tmp_path_factory.mktemp("fuzz"), [app("chaos:Chaos")], *OPTIONS)
    try:
        wait_ready(s)
        yield s
    finally:
        s.kill_all()


def processes(s: Served) -> list[tuple[str, int, int, int]]:
    """(role, slot, pid, restarts) of every process: what must not change."""
    st = Admin(s.admin, TOKEN).status()
    return sorted(
        (row["role"], row["id"], row["pid"], row["restarts"])
        for row in st["api_servers"] + st["workers"]
    )


def answers(s: Served) -> None:
    """The server still serves: the admin port, and a request to the model."""
    assert httpx.get(s.admin + "/health", timeout=5).status_code == 200
    r = httpx.post(s.url + "/predict", json={"id": "alive", "n": 4}, timeout=10)
    assert r.status_code == 200 and r.json()["n2"] == 8, r.text


# -- (a) the admin API, from its OpenAPI document ------------------------------------------------


def fuzz(
    schema: Any,
    base_url: str,
    seed: int,
    checks: list[Any],
    examples: int,
    path_parameters: dict[str, Any] | None = None,
) -> list[str]:
    """Every operation of `schema`, positive then negative examples; the failures found."""
    found: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        if path_parameters and not any(f"{{{name}}}" in op.path for name in path_parameters):
            continue  # nothing to fix in its path: the first pass covered it
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode, path_parameters=path_parameters)

            @given(case=strategy)
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                case.call_and_validate(base_url=base_url, headers=AUTH, checks=checks, timeout=30)

            try:
                hypothesis.seed(seed)(run)()
            except hypothesis.errors.Unsatisfiable:
                pass  # nothing to negate: an operation without parameters or body
            except (Exception, BaseExceptionGroup) as e:  # schemathesis's FailureGroup
                found.append(f"{op.method.upper()} {op.path} ({mode.value}):\n{e}")
    return found


def load_schema(admin: str) -> Any:
    """The admin API's document, with its bearer token given to schemathesis (which then also
    tries requests without it), and no query parameters beyond the documented ones in the
    invalid examples: like most servers, the admin API ignores those."""
    config = schemathesis.config.SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": {"bearer": {"bearer": TOKEN}}},
            "generation": {"allow-extra-parameters": False},
        }
    )
    return schemathesis.openapi.from_url(admin + "/openapi.json", config=config, headers=AUTH)


def test_admin_api_reading_operations_match_the_document(
    server: Served, request: pytest.FixtureRequest
) -> None:
    seed: int = request.config.getoption("--chaos-seed")
    before = processes(server)
    schema = load_schema(server.admin)
    reading = schema.include(method="GET")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        negative_data_rejection,
        ignored_auth,
    ]
    found = fuzz(reading, server.admin, seed, checks, EXAMPLES)
    found += fuzz(reading, server.admin, seed, checks, EXAMPLES, {"name": "chaos", "id": "0"})
    assert not found, "\n\n".join(found)
    assert processes(server) == before
    answers(server)


def no_internal_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 503 or 504 is documented for `?wait=true` (failed, not carried out in time); a 500 is
    ferryman failing."""
    if response.status_code == 500 or response.status_code > 504:
        raise AssertionError(f"{response.status_code}: {response.text[:500]}")
    return None


def test_admin_api_operations_that_change_things_on_a_throwaway_server(
    serve: Callable[..., Served], request: pytest.FixtureRequest
) -> None:
    seed: int = request.config.getoption("--chaos-seed")
    s = serve(app("chaos:Chaos"), *OPTIONS, api_servers=1, workers=1, wait=False)
    wait_ready(s)
    schema = load_schema(s.admin)
    # Deleting the model last: the other operations have one to work on until then.
    changing = schema.exclude(method="GET").exclude(method="DELETE")
    checks = [
        no_internal_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        negative_data_rejection,
        ignored_auth,
    ]
    n = EXAMPLES_CHANGING
    found = fuzz(changing, s.admin, seed, checks, n)
    found += fuzz(changing, s.admin, seed, checks, n, {"name": "chaos", "id": "0"})
    found += fuzz(schema.include(method="DELETE"), s.admin, seed, checks, n)
    found += fuzz(schema.include(method="DELETE"), s.admin, seed, checks, n, {"name": "chaos"})
    assert not found, "\n\n".join(found)
    assert httpx.get(s.admin + "/health", timeout=5).status_code == 200
    assert s.proc.poll() is None


# -- (b) the data routes, over raw sockets -----------------------------------------------------


class Raw:
    """One connection, written and read as bytes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.reset = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more; False on EOF or reset."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer in time")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            self.reset = True
            return False
        except TimeoutError:
            raise TimeoutError("no answer in time") from None
        self.buf += data
        return bool(data)

    def response(self, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes] | None:
        """The next response (status, headers, body), or None when the connection closed
        without one."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                assert not self.buf, f"the connection closed mid-answer: {self.buf[:300]!r}"
                return None
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        assert "chunked" not in headers.get("transfer-encoding", ""), headers
        size = int(headers.get("content-length", "0"))
        while len(self.buf) < size:
            assert self._fill(deadline), "the connection closed mid-body"
        body, self.buf = self.buf[:size], self.buf[size:]
        return status, headers, body

    def closed(self, timeout: float = 10.0) -> bool:
        """The server closed the connection (and sent nothing more) within `timeout`."""
        deadline = time.monotonic() + timeout
        while not self.buf:
            try:
                if not self._fill(deadline):
                    return not self.buf
            except TimeoutError:
                return False
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server: Served) -> Iterator[Callable[[], Raw]]:
    """Raw connections to the API port; afterwards, no process may have been restarted."""
    before = processes(server)
    opened: list[Raw] = []

    def connect() -> Raw:
        conn = Raw(server.port)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()
    assert processes(server) == before, "a process was restarted"


def error(answer: tuple[int, dict[str, str], bytes] | None, status: int, kind: str) -> None:
    """A JSON error of ferryman's shape: {"error": {"type", "message"}}."""
    assert answer is not None, "the connection closed without an answer"
    code, headers, body = answer
    assert (code, headers.get("content-type")) == (status, "application/json"), answer
    err = json.loads(body)["error"]
    assert err["type"] == kind and isinstance(err["message"], str) and err["message"], err


def ok(answer: tuple[int, dict[str, str], bytes] | None, rid: str, n: int) -> None:
    assert answer is not None, "the connection closed without an answer"
    code, _, body = answer
    assert code == 200, answer
    got = json.loads(body)
    assert (got["id"], got["n2"]) == (rid, 2 * n), got


def post(body: bytes, *headers: bytes, path: bytes = b"/predict") -> bytes:
    head = [b"POST " + path + b" HTTP/1.1", b"host: ferryman", b"content-type: application/json"]
    head += [b"content-length: %d" % len(body), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def request_json(rid: str, n: int) -> bytes:
    return json.dumps({"id": rid, "n": n}).encode()


# Requests the HTTP parser frames, whose JSON the worker must refuse: 400 with its reason.
MALFORMED_JSON = {
    "nested-1000-deep-arrays": b'{"id": "d", "n": 1, "x": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    "nested-1000-deep-objects": b'{"a":' * 1000 + b"1" + b"}" * 1000,
    "invalid-utf8-in-a-string": b'{"id": "\xff\xfe\xc3", "n": 1}',
    "lone-surrogate-escape": b'{"id": "\\ud800", "n": 1}',
    "number-1e400": b'{"id": "big", "n": 1e400}',
    "integer-of-5000-digits": b'{"id": "big", "n": ' + b"9" * 5000 + b"}",
    "NaN": b'{"id": "nan", "n": NaN}',
    "trailing-garbage": b'{"id": "t", "n": 1} trailing',
    "byte-order-mark": b'\xef\xbb\xbf{"id": "bom", "n": 1}',
    "utf-16": '{"id": "u16", "n": 1}'.encode("utf-16"),
    "form-encoded": b"id=form&n=1",
    "truncated": b'{"id": "t", "n":',
}


@pytest.mark.parametrize("body", MALFORMED_JSON.values(), ids=MALFORMED_JSON.keys())
def test_malformed_json_is_a_400(raw: Callable[[], Raw], body: bytes) -> None:
    conn = raw()
    conn.send(post(body))
    error(conn.response(), 400, "invalid_json")


def test_an_integer_of_4001_digits_is_valid_json_and_answered(raw: Callable[[], Raw]) -> None:
    """10**4000 is valid JSON within the decoder's range: the model gets it (and doubles it)."""
    n = 10**4000
    conn = raw()
    conn.send(post(b'{"id": "huge", "n": %d}' % n))
    answer = conn.response()
    assert answer is not None and answer[0] == 200, answer
    assert json.loads(answer[2])["n2"] == 2 * n


def test_an_empty_body_is_a_400(raw: Callable[[], Raw]) -> None:
    conn = raw()
    conn.send(post(b""))
    error(conn.response(), 400, "invalid_request")


def test_the_content_type_is_not_what_decides(raw: Callable[[], Raw]) -> None:
    """Bodies are JSON whatever the content type says (README: the JSON body goes to
    decode_request); a wrong one neither breaks a valid body nor repairs an invalid one."""
    conn = raw()
    conn.send(post(request_json("ct", 5)).replace(b"application/json", b"text/plain"))
    ok(conn.response(), "ct", 5)
    conn.send(post(b"<xml/>").replace(b"application/json", b"application/xml"))
    error(conn.response(), 400, "invalid_json")


def test_a_body_over_max_payload_size_is_a_413(raw: Callable[[], Raw]) -> None:
    conn = raw()
    conn.send(post(b"", b"x-pad: 1").replace(b"content-length: 0", b"content-length: 5000000"))
    error(conn.response(), 413, "payload_too_large")


def test_a_chunked_body_that_stops_is_a_408_after_body_timeout(raw: Callable[[], Raw]) -> None:
    conn = raw()
    conn.send(
        b"POST /predict HTTP/1.1\r\nhost: ferryman\r\ntransfer-encoding: chunked\r\n\r\n"
        b'10\r\n{"id": "stall",'
    )
    t0 = time.monotonic()
    error(conn.response(timeout=BODY_TIMEOUT + 10), 408, "body_timeout")
    assert time.monotonic() - t0 >= BODY_TIMEOUT * 0.9


def test_a_slow_client_within_body_timeout_is_answered(raw: Callable[[], Raw]) -> None:
    body = request_json("slow", 7)
    conn = raw()
    conn.send(post(body)[: -len(body)])
    for i in range(0, len(body), 4):  # the whole body over ~half of body_timeout
        conn.send(body[i : i + 4])
        time.sleep(BODY_TIMEOUT / 2 / (len(body) / 4))
    ok(conn.response(), "slow", 7)


def test_a_body_slower_than_body_timeout_is_a_408(raw: Callable[[], Raw]) -> None:
    body = request_json("too-slow", 7)
    conn = raw()
    conn.send(post(body)[: -len(body)])
    deadline = time.monotonic() + BODY_TIMEOUT + 10
    sent = 0
    while time.monotonic() < deadline and sent < len(body):
        ready, _, _ = select.select([conn.sock], [], [], BODY_TIMEOUT / 3)
        if ready:
            break  # the server answered: stop sending
        conn.send(body[sent : sent + 1])
        sent += 1
    error(conn.response(), 408, "body_timeout")


def test_headers_that_never_end_are_a_408(raw: Callable[[], Raw]) -> None:
    conn = raw()
    conn.send(b"POST /predict HTTP/1.1\r\nhost: ferryman\r\nx-slow: ")
    error(conn.response(timeout=BODY_TIMEOUT + 10), 408, "header_timeout")
    assert conn.closed()


def test_a_connection_that_sends_nothing_is_closed(raw: Callable[[], Raw]) -> None:
    conn = raw()
    assert conn.closed(timeout=BODY_TIMEOUT + 10)


def test_pipelined_requests_are_all_answered_in_order(raw: Callable[[], Raw]) -> None:
    conn = raw()
    requests = [post(request_json(f"pipe-{i}", i)) for i in range(8)]
    requests.insert(4, b"GET /health HTTP/1.1\r\nhost: ferryman\r\n\r\n")
    conn.send(b"".join(requests))  # one write
    for i in range(8):
        if i == 4:
            health = conn.response()
            assert health is not None and health[0] == 200, health
        ok(conn.response(), f"pipe-{i}", i)


def test_very_many_small_headers_are_accepted(raw: Callable[[], Raw]) -> None:
    conn = raw()
    headers = [b"x-h%d: %d" % (i, i) for i in range(1000)]
    conn.send(post(request_json("many", 3), *headers))
    ok(conn.response(), "many", 3)


def test_a_header_too_large_is_a_431(raw: Callable[[], Raw]) -> None:
    conn = raw()
    conn.send(b"POST /predict HTTP/1.1\r\nhost: ferryman\r\nx-big: ")
    answer = None
    for _ in range(64 * 16):  # up to 16 MiB, 16 KiB at a time, until the server answers
        ready, _, _ = select.select([conn.sock], [], [], 0.05)
        if ready:
            answer = conn.response()
            break
        conn.send(b"a" * 16384)
    error(answer, 431, "header_too_large")
    assert conn.closed()


def test_the_admin_port_refuses_a_header_too_large_too(server: Served) -> None:
    """The supervisor's admin port has the same bounds (it must survive any client)."""
    conn = Raw(server.admin_port)
    try:
        conn.send(b"GET /health HTTP/1.1\r\nhost: ferryman\r\nx-big: ")
        answer = None
        for _ in range(64 * 16):
            ready, _, _ = select.select([conn.sock], [], [], 0.05)
            if ready:
                answer = conn.response()
                break
            conn.send(b"a" * 16384)
        error(answer, 431, "header_too_large")
    finally:
        conn.close()
    assert httpx.get(server.admin + "/health", timeout=5).status_code == 200


SMUGGLING = {
    # Both framings: RFC 9112 says reject (or let Transfer-Encoding win); the smuggled GET must
    # never be answered as a request of its own.
    "content-length-and-chunked": (
        b"POST /predict HTTP/1.1\r\nhost: ferryman\r\ncontent-length: 4\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\nhost: f\r\n\r\n"
    ),
    "chunked-and-content-length": (
        b"POST /predict HTTP/1.1\r\nhost: ferryman\r\ntransfer-encoding: chunked\r\n"
        b"content-length: 40\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\nhost: f\r\n\r\n"
    ),
    "obfuscated-transfer-encoding": (
        b"POST /predict HTTP/1.1\r\nhost: ferryman\r\ntransfer-encoding: xchunked\r\n"
        b"content-length: 4\r\n\r\nabcdGET /health HTTP/1.1\r\nhost: f\r\n\r\n"
    ),
    "two-content-lengths": (
        b"POST /predict HTTP/1.1\r\nhost: ferryman\r\ncontent-length: 4\r\n"
        b"content-length: 45\r\n\r\nabcdGET /health HTTP/1.1\r\nhost: f\r\n\r\n"
    ),
    "chunk-size-that-is-not-hex": (
        b"POST /predict HTTP/1.1\r\nhost: ferryman\r\ntransfer-encoding: chunked\r\n\r\n"
        b"zz\r\nGET /health HTTP/1.1\r\n\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("data", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_request_smuggling_is_refused_and_nothing_smuggled_is_answered(
    raw: Callable[[], Raw], data: bytes
) -> None:
    conn = raw()
    conn.send(data)
    error(conn.response(), 400, "invalid_http")
    assert conn.closed(), "a second answer: the smuggled request was served"


def test_a_websocket_upgrade_is_answered_as_plain_http(raw: Callable[[], Raw]) -> None:
    conn = raw()
    conn.send(
        b"GET /predict HTTP/1.1\r\nhost: ferryman\r\nupgrade: websocket\r\n"
        b"connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"sec-websocket-version: 13\r\n\r\n"
    )
    error(conn.response(), 405, "method_not_allowed")  # never 101 Switching Protocols


UNFRAMEABLE = {
    "random-bytes": bytes(range(256)) * 2 + b"\r\n\r\n",
    "tls-client-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64,
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "unknown-method": b"BREW /predict HTTP/1.1\r\nhost: ferryman\r\n\r\n",
    "bare-lf-line-ends": b"GET /health HTTP/1.1\nhost: ferryman\n\n",
    "space-before-colon": b"GET /health HTTP/1.1\r\nhost : ferryman\r\n\r\n",
    "nul-in-a-header": b"GET /health HTTP/1.1\r\nhost: ferryman\r\nx-a: a\x00b\r\n\r\n",
    "obsolete-line-folding": b"GET /health HTTP/1.1\r\nhost: ferryman\r\nx-a: a\r\n b\r\n\r\n",
    "negative-content-length": b"POST /predict HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
    "content-length-past-2**64": (
        b"POST /predict HTTP/1.1\r\ncontent-length: 99999999999999999999999\r\n\r\n"
    ),
}


@pytest.mark.parametrize("data", UNFRAMEABLE.values(), ids=UNFRAMEABLE.keys())
def test_what_the_http_parser_cannot_frame_is_a_400_and_a_close(
    raw: Callable[[], Raw], data: bytes
) -> None:
    conn = raw()
    conn.send(data)
    error(conn.response(), 400, "invalid_http")
    assert conn.closed()


def test_a_method_the_route_does_not_take_is_a_405(raw: Callable[[], Raw]) -> None:
    conn = raw()
    for method in (b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"):
        conn.send(method + b" /predict HTTP/1.1\r\nhost: ferryman\r\ncontent-length: 0\r\n\r\n")
        error(conn.response(), 405, "method_not_allowed")


PATHS = {
    "dot-dot": b"/../predict",
    "encoded-dot-dot": b"/%2e%2e/%2e%2e/etc/passwd",
    "encoded-slash": b"/predict%2f..",
    "encoded-nul": b"/predict%00",
    "bad-percent": b"/%zz",
    "double-encoded": b"/%2570redict",
    "trailing-slash": b"/predict/",
}


@pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())
def test_odd_paths_are_a_404(raw: Callable[[], Raw], path: bytes) -> None:
    conn = raw()
    conn.send(post(request_json("path", 1), path=path))
    error(conn.response(), 404, "not_found")


def test_a_percent_encoded_route_is_the_route(raw: Callable[[], Raw]) -> None:
    """%70 is `p`: RFC 3986 makes /%70redict the same path as /predict."""
    conn = raw()
    conn.send(post(request_json("pct", 2), path=b"/%70redict"))
    ok(conn.response(), "pct", 2)


def test_an_absolute_uri_and_http_1_0_are_served(raw: Callable[[], Raw]) -> None:
    conn = raw()
    conn.send(post(request_json("abs", 3), path=b"http://elsewhere/predict"))
    ok(conn.response(), "abs", 3)
    conn = raw()
    body = request_json("h10", 4)
    conn.send(b"POST /predict HTTP/1.0\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    ok(conn.response(), "h10", 4)
    assert conn.closed()  # HTTP/1.0 without keep-alive: one request per connection


def test_the_server_still_serves_after_the_hostile_input(
    server: Served, raw: Callable[[], Raw]
) -> None:
    answers(server)
