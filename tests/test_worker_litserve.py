"""The inference worker serving LitServe's conventions: request bodies (JSON, forms, uploads,
pydantic), errors and answers as LitServe's app renders them, streams, OpenAISpec and
OpenAIEmbeddingSpec (with the official openai client), authorize, health, loggers and callbacks.

In-process engine tests where the behaviour is the engine's; a real worker process (the harness
of test_worker_process.py plays its supervisor and API process) where it needs the worker's loop
(authorize, health, callbacks, loggers); real servers for the openai client. Every assertion is on
what a client sees (status, content type, headers, body) or on what the app wrote.
"""

from __future__ import annotations

import base64
import json
import pickle
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_worker_engine import Sink, drive
from test_worker_process import APPS, WAIT, Harness, app

from ferryman import protocol as p
from ferryman.options import ModelOptions
from ferryman.workers import forms
from ferryman.workers.engine import Engine, Task
from ferryman.workers.loader import AppError, prepare

sys.path.insert(0, str(APPS))
import worker_litserve as wl

sys.path.pop(0)

JSON_CT = b"application/json"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


class Link:
    name = "a0.1"


def lit(api: Any, **options: Any) -> tuple[Engine, Sink]:
    """An engine for a LitAPI, prepared as the worker prepares it."""
    opts = prepare(api, ModelOptions(**options), "cpu")
    sink = Sink()
    return Engine(api, opts, sink), sink


def req(id: int, body: Any, ctype: bytes = JSON_CT, route: str = "predict") -> Task:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Task(Link(), id, route, 0.0, None, raw, time.monotonic(), b"", ctype)


def run(engine: Engine, *tasks: Task) -> None:
    """What the loop does with a batch: at once, or as a job driven by hand."""
    if engine.runs_now(tasks[0].route):
        engine.run(list(tasks))
    else:
        drive(engine.job(list(tasks)))


def reply_of(sink: Sink, id: int) -> tuple[int, bytes]:
    return sink.answer(id)


def detail(sink: Sink, id: int) -> tuple[int, Any]:
    status, body = sink.answer(id)
    return status, json.loads(body)["detail"]


class Recorder(Sink):
    """A Sink that also keeps each reply's content type, headers and `more`."""

    def __init__(self) -> None:
        super().__init__()
        self.meta: dict[int, tuple[str, Any, bool]] = {}

    def reply(self, t: Task, status: int, content_type: str, body: bytes, more: bool = False,
              headers: Any = None) -> None:  # fmt: skip
        self.meta[t.id] = (content_type, headers, more)
        super().reply(t, status, content_type, body, more, headers)


def lit_rec(api: Any, **options: Any) -> tuple[Engine, Recorder]:
    opts = prepare(api, ModelOptions(**options), "cpu")
    sink = Recorder()
    return Engine(api, opts, sink), sink


# -- what decode_request receives -----------------------------------------------------------------

MULTIPART = b"multipart/form-data; boundary=XyZ"
UPLOAD = (
    b'--XyZ\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
    b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n" + b"\x00\xffab" * 250 + b"\r\n--XyZ--\r\n"
)


def test_a_request_annotated_decode_gets_json_or_a_form_as_litserve_reads_them() -> None:
    engine, sink = lit(wl.Describe())
    cases: list[tuple[bytes, bytes, int, Any]] = [
        (b'{"input": 4}', JSON_CT, 200, {"type": "dict", "value": {"input": 4}}),
        # Any other content type is read as JSON too (LitServe does not look at it) ...
        (b'{"input": 4}', b"text/plain", 200, {"type": "dict", "value": {"input": 4}}),
        (b"[1, 2]", b"", 200, {"type": "list", "value": [1, 2]}),
        # ... but exactly this one is a form: `curl -d '{...}'` sends JSON as one.
        (b"input=4&b=x+y", forms.FORM, 200,
         {"type": "FormData", "value": {"input": "4", "b": "x y"}}),
        (b'{"input": 4}', forms.FORM, 200, {"type": "FormData", "value": {'{"input": 4}': ""}}),
        (UPLOAD, MULTIPART, 200, {"type": "FormData", "value": {
            "note": "hello", "file": {"filename": "a.bin", "size": 1000}}}),
        # A form with a charset is not exactly LitServe's form type: JSON, which it is not.
        (b"input=4", forms.FORM + b"; charset=utf-8", 500, None),
        (b"not json", JSON_CT, 500, None),
        (b"", JSON_CT, 500, None),
    ]  # fmt: skip
    for i, (body, ctype, _, _) in enumerate(cases):
        run(engine, req(i, body, ctype))
    for i, (_, _, status, expected) in enumerate(cases):
        got_status, body = sink.answer(i)
        assert got_status == status, (i, body)
        want = expected if status == 200 else {"detail": "Internal server error"}
        assert json.loads(body) == want, i


def test_multipart_without_python_multipart_is_a_415_that_names_it(monkeypatch) -> None:
    monkeypatch.setattr(forms, "_multipart", False)
    engine, sink = lit(wl.Describe())
    run(engine, req(1, UPLOAD, MULTIPART), req(2, b"input=4", forms.FORM))
    status, body = sink.answer(1)
    assert status == 415 and "python-multipart" in json.loads(body)["detail"]
    # An urlencoded form needs no python-multipart: the standard library reads it.
    assert json.loads(sink.answer(2)[1]) == {"type": "FormData", "value": {"input": "4"}}


def test_a_pydantic_annotated_decode_is_validated_as_fastapi_does() -> None:
    engine, sink = lit(wl.Typed())
    run(engine, req(1, {"input": "4"}))
    assert sink.answer(1) == (200, b'{"output":8.0}')
    cases = [
        (2, b'{"input": 4}', b"text/plain", [{"type": "model_attributes_type", "loc": ["body"],
         "msg": "Input should be a valid dictionary or object to extract fields from",
         "input": '{"input": 4}'}]),
        (3, b"nope", JSON_CT, [{"type": "json_invalid", "loc": ["body", 0],
         "msg": "JSON decode error", "input": {}, "ctx": {"error": "Expecting value"}}]),
        (4, b"", JSON_CT, [{"type": "missing", "loc": ["body"], "msg": "Field required",
         "input": None}]),
        (5, b"{}", JSON_CT, [{"type": "missing", "loc": ["body", "input"],
         "msg": "Field required", "input": {}}]),
    ]  # fmt: skip
    for id, body, ctype, _ in cases:
        run(engine, req(id, body, ctype))
    for id, _, _, expected in cases:
        assert detail(sink, id) == (422, expected)


# -- errors and answers ---------------------------------------------------------------------------


def test_errors_and_answers_as_litserves_app_renders_them() -> None:
    engine, sink = lit_rec(wl.Errors())
    bodies = {
        1: {"raise": "starlette"},  # not FastAPI's HTTPException: LitServe's worker says 500
        2: {"raise": "204"},
        3: {"raise": "headers"},  # raised in the worker: LitServe keeps status and detail only
        4: {"raise": "value"},
        5: {"numpy": 1},
        6: {"response": 1},
        7: {"input": "é"},
    }
    for id, body in bodies.items():
        run(engine, req(id, body))
    assert detail(sink, 1) == (500, "Internal server error")
    assert sink.answer(2) == (204, b"") and sink.meta[2][:2] == ("", None)
    assert detail(sink, 3) == (429, "slow down") and sink.meta[3][1] is None
    assert detail(sink, 4) == (500, "Internal server error")
    assert sink.answer(5) == (500, b"Internal Server Error")
    assert sink.meta[5][0] == "text/plain; charset=utf-8"
    assert sink.answer(6) == (201, b"made")
    assert sink.meta[6][:2] == ("", [("x-made", "1")])  # a Response without a media type
    assert sink.answer(7) == (200, '{"input":"é"}'.encode())  # FastAPI's compact UTF-8 JSON


def test_unbatch_of_the_wrong_size_fails_the_batch_as_litserve() -> None:
    engine, sink = lit(wl.Mismatch(max_batch_size=4))
    run(engine, req(1, {"a": 1}), req(2, {"a": 2}))
    assert detail(sink, 1) == (500, "Batch size mismatch")
    assert detail(sink, 2) == (500, "Batch size mismatch")


def test_a_litserve_stream_that_fails_just_ends_as_in_litserve() -> None:
    engine, sink = lit_rec(wl.streams)
    run(engine, req(1, {"n": 5}))
    run(engine, req(2, {"no_n": 1}))
    run(engine, req(3, b"not json"))
    status, body = sink.answer(1)
    assert (status, body) == (200, b'{"i": 0}\n{"i": 1}\n')  # no error line: the body ends
    assert sink.meta[1] == ("", None, True)  # no content type, as LitServe's stream
    assert sink.answer(2) == (200, b"") and sink.meta[2] == ("", None, True)  # still a stream
    assert detail(sink, 3) == (500, "Internal server error")  # read before the stream begins


# -- specs --------------------------------------------------------------------------------------


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_openai_spec_n_choices_validation_and_no_plain_route() -> None:
    engine, sink = lit_rec(wl.Chat(spec=wl.ls.OpenAISpec()), spec="openai")
    run(engine, req(1, chat_body(n=2), route="chat"))
    done = json.loads(sink.answer(1)[1])
    assert [c["message"]["content"] for c in done["choices"]] == ["run 1: hi", "run 2: hi"]
    assert done["usage"] == {"prompt_tokens": 0, "total_tokens": 0, "completion_tokens": 0}
    run(engine, req(2, chat_body(n=2, stream=True), route="chat"))
    assert sink.meta[2][0] == "text/event-stream; charset=utf-8"
    events = sink.answer(2)[1].decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    first = json.loads(events[0].removeprefix("data: "))
    assert [c["delta"]["content"] for c in first["choices"]] == ["run 3: ", "run 4: "]
    run(engine, req(3, {"model": "m"}, route="chat"))
    missing = {"type": "missing", "loc": ["body", "messages"], "msg": "Field required"}
    assert detail(sink, 3) == (422, [{**missing, "input": {"model": "m"}}])
    run(engine, req(4, {"input": 1}, route="predict"))  # a spec's LitAPI has no /predict
    assert detail(sink, 4) == (404, "Not Found")


def test_openai_spec_stream_failing_is_litserves_error_event() -> None:
    class Fails(wl.Chat):
        def predict(self, request):
            yield "a"
            raise wl.HTTPException(status_code=501, detail="not yet")

    engine, sink = lit_rec(Fails(spec=wl.ls.OpenAISpec()), spec="openai")
    run(engine, req(1, chat_body(stream=True), route="chat"))
    run(engine, req(2, chat_body(), route="chat"))
    events = sink.answer(1)[1].decode().split("\n\n")
    error = {"message": "not yet", "type": "internal", "param": None, "code": "internal_error"}
    assert json.loads(events[-1].removeprefix("data: ")) == {"error": error}
    assert detail(sink, 2) == (501, "not yet")  # the whole answer is built before it is sent
    # LitServe's timeout (the wait before the worker takes it): a 504, or in a stream its event.
    engine.expire(req(3, chat_body(), route="chat"))
    engine.expire(req(4, chat_body(stream=True), route="chat"))
    assert detail(sink, 3) == (504, "Request timed out")
    assert sink.meta[4][0] == "text/event-stream; charset=utf-8"
    event = json.loads(sink.answer(4)[1].decode().removeprefix("data: "))
    assert (sink.answer(4)[0], event["error"]["message"]) == (200, "Request timed out")


def embed_body(**extra: Any) -> dict[str, Any]:
    return {"model": "emb", "input": "hey", **extra}


def test_openai_embedding_spec_answers_and_validation() -> None:
    engine, sink = lit_rec(wl.Embed(spec=wl.ls.OpenAIEmbeddingSpec()), spec="openai_embedding")
    run(engine, req(1, embed_body(), route="embeddings"))
    assert sink.answer(1)[1] == (
        b'{"data":[{"index":0,"embedding":[3.0,0.5,-1.0],"object":"embedding"}],'
        b'"model":"emb","object":"list","usage":{"prompt_tokens":0,"total_tokens":0}}'
    )
    run(
        engine, req(2, embed_body(input=["a", "bcd"], encoding_format="base64"), route="embeddings")
    )
    data = json.loads(sink.answer(2)[1])["data"]
    floats = [struct.unpack("<3f", base64.b64decode(d["embedding"])) for d in data]
    assert floats == [(1.0, 0.5, -1.0), (3.0, 0.5, -1.0)]
    run(engine, req(3, {"input": "x"}, route="embeddings"))
    status, found = detail(sink, 3)
    assert status == 422 and found[0]["loc"] == ["body", "model"]


def test_openai_embedding_spec_batches_single_inputs() -> None:
    api = wl.EmbedBatched(spec=wl.ls.OpenAIEmbeddingSpec(), max_batch_size=4)
    engine, sink = lit_rec(api, spec="openai_embedding")
    run(engine, *(req(i, embed_body(input=s), route="embeddings") for i, s in enumerate("ab")))
    for i in range(2):
        assert json.loads(sink.answer(i)[1])["data"][0]["embedding"] == [1.0, 2.0]  # one batch
    run(engine, req(5, embed_body(input=["a", "b"]), route="embeddings"))
    status, found = detail(sink, 5)
    assert status == 400 and "client-side batching" in found


def test_embeddings_route_of_a_ferryman_api() -> None:
    import ferryman

    class Embedder(ferryman.API):
        def predict(self, inputs):
            items = inputs if isinstance(inputs, list) else [inputs]
            return [[float(len(s)), 1.0] for s in items]

        def encode_response(self, output):
            return {"embeddings": output, "prompt_tokens": 2, "total_tokens": 2}

    sink = Sink()
    engine = Engine(Embedder(), ModelOptions(spec="openai_embedding"), sink)
    run(engine, req(1, {"input": ["a", "bb"], "model": "e"}, route="embeddings"))
    assert json.loads(sink.answer(1)[1]) == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [1.0, 1.0]},
                 {"object": "embedding", "index": 1, "embedding": [2.0, 1.0]}],
        "model": "e",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }  # fmt: skip
    run(engine, req(2, {"input": 5}, route="embeddings"))
    status, body = sink.answer(2)
    assert status == 400 and json.loads(body)["error"]["param"] == "input"


@pytest.mark.parametrize(
    ("api", "options", "needle"),
    [
        (wl.unknown_spec, {}, "spec=MySpec is not supported"),
        (wl.chat, {}, "start ferryman with --spec openai"),
        (wl.embed, {"spec": "openai"}, "--spec openai-embedding"),
    ],
)
def test_specs_ferryman_cannot_serve_are_refused_by_name(api: Any, options: Any, needle: str):
    with pytest.raises(AppError, match=needle):
        prepare(api, ModelOptions(**options), "cpu")


# -- in a worker process: authorize, health, callbacks and loggers --------------------------------


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode()), (b"content-type", JSON_CT)]


def test_authorize_runs_in_the_worker_before_decode_request(harness: Harness, tmp_path: Path):
    events = tmp_path / "events"
    _, api, ready = harness.serve(
        app("worker_litserve:Bearer"), env={"FERRYMAN_TEST_EVENTS": str(events)}
    )
    assert ready.context is True  # it needs the request's headers
    ok = api.answer(api.send({"input": 1}, headers=bearer("s3cret")))
    assert (ok.status, ok.json()) == (200, {"output": 2})
    wrong = api.answer(api.send({"input": 2}, headers=bearer("nope")))
    assert (wrong.status, wrong.json(), wrong.reply.headers) == (401, {"detail": "Bad token"}, None)
    missing = api.answer(api.send({"input": 3}, headers=[(b"content-type", JSON_CT)]))
    assert (missing.status, missing.json()) == (401, {"detail": "Not authenticated"})
    assert missing.reply.headers == [("WWW-Authenticate", "Bearer")]  # FastAPI's, kept
    assert events.read_text().split("\n") == ["decode 1", ""]  # refused ones never decoded
    # The route that only asks authorize (for LitServe's own GET routes, which it guards too).
    let_in = api.answer(api.send(b"", route="authorize", headers=bearer("s3cret")))
    assert (let_in.status, let_in.body) == (200, b"")
    kept_out = api.answer(api.send(b"", route="authorize", headers=[]))
    assert (kept_out.status, kept_out.json()) == (401, {"detail": "Not authenticated"})


def test_authorize_async_with_an_api_key_header(harness: Harness):
    _, api, _ = harness.serve(app("worker_litserve:ApiKey"))
    key = [(b"x-key", b"k1"), (b"content-type", JSON_CT)]
    assert api.answer(api.send({"input": 2}, headers=key)).json() == {"output": 4}
    wrong = api.answer(api.send({"input": 2}, headers=[(b"x-key", b"k2")]))
    assert (wrong.status, wrong.json()) == (403, {"detail": "Wrong key"})


def test_authorize_with_a_header_parameter_and_one_that_raises(harness: Harness):
    worker, api2, _ = harness.serve(app("worker_litserve:NeedsHeader"))
    missing = api2.answer(api2.send({"input": 1}, headers=[]))
    assert missing.status == 422
    assert missing.json()["detail"][0]["loc"] == ["header", "x-tenant"]
    boom = api2.answer(api2.send({"input": 1}, headers=[(b"x-tenant", b"boom")]))
    assert (boom.status, boom.reply.content_type, boom.body) == (
        500, "text/plain; charset=utf-8", b"Internal Server Error")  # fmt: skip
    assert "tenant-secret-123" in worker.log()  # in the log, never in the answer
    ok = api2.answer(api2.send({"input": 5}, headers=[(b"x-tenant", b"acme")]))
    assert ok.json() == {"output": 10}


def test_health_is_reported_to_every_api_process(harness: Harness, tmp_path: Path):
    sick = tmp_path / "sick"
    env = {"FERRYMAN_TEST_SICK": str(sick)}
    a0 = harness.api("a0.1", 0)
    harness.spawn(app("worker_litserve:Healthy"), [a0], env=env)
    assert a0.wait_dealer(p.WorkerReady).healthy is True
    sick.touch()
    assert a0.wait_dealer(p.WorkerHealth).healthy is False
    # An API process that joins now hears the current answer in its WorkerReady.
    a1 = harness.api("a1.1", 1)
    harness.sup.endpoints([a0, a1])
    assert a1.wait_dealer(p.WorkerReady).healthy is False
    sick.unlink()
    assert a0.wait_dealer(p.WorkerHealth).healthy is True
    assert a0.answer(a0.send({"x": 1})).json() == {"x": 1}  # health never gated the requests


def test_litservers_callbacks_and_loggers_run_in_the_worker(harness: Harness, tmp_path: Path):
    events = tmp_path / "events"
    instance = tmp_path / "api.pickle"
    instance.write_bytes(pickle.dumps(wl.logged()))
    _, api, _ = harness.serve(
        app("worker_litserve:Logged"),
        env={"FERRYMAN_TEST_EVENTS": str(events)},
        instance_file=str(instance),
    )
    assert api.answer(api.send({"input": 3})).json() == {"output": 9}
    lines = wait_until(events, lambda ls: sum(x.startswith("logger") for x in ls) == 2)
    hooks = [x for x in lines if not x.startswith("logger")]
    assert hooks == [
        "on_before_setup", "setup", "on_after_setup device=cpu", "on_server_start",
        "on_request active=None", "on_before_decode_request", "decode_request",
        "on_after_decode_request", "on_before_predict", "predict", "on_after_predict",
        "on_before_encode_response", "encode_response", "on_after_encode_response",
        "on_response",
    ]  # fmt: skip
    logged = [x.split(" pid=")[0] for x in lines if x.startswith("logger")]
    assert logged == ["logger squared=9", "logger from_callback=1"]  # in order, off the loop


SCRIPT = """
import os, pickle, sys
import litserve as ls
from litserve.test_examples import SimpleLitAPI

def event(what):
    with open(os.environ["FERRYMAN_TEST_EVENTS"], "a") as f:
        f.write(what + "\\n")

class Tracker(ls.Callback):
    def on_after_predict(self, lit_api):
        lit_api.log("predicted", 1)

class Printer(ls.Logger):
    def process(self, key, value):
        event(f"{key}={value}")

if __name__ == "__main__":
    event("main block ran")
    api = SimpleLitAPI()
    api._ferryman_callbacks = [Tracker()]
    api._ferryman_loggers = [Printer()]
    with open(sys.argv[1], "wb") as f:
        pickle.dump(api, f)
"""


def test_a_library_litapi_with_callbacks_from_the_script(harness: Harness, tmp_path: Path):
    """The LitAPI's class is LitServe's own; its callback and logger pickle as `__main__.Name`
    of the script that built it, which the worker imports as `__main__`, not running its
    main block again."""
    script, events, instance = tmp_path / "server.py", tmp_path / "events", tmp_path / "api.pkl"
    script.write_text(SCRIPT)
    env = {"FERRYMAN_TEST_EVENTS": str(events)}
    subprocess.run([sys.executable, str(script), str(instance)], env={**__import__("os").environ,
                   **env}, check=True, timeout=60)  # fmt: skip
    _, api, _ = harness.serve(
        "litserve.test_examples.simple_example:SimpleLitAPI",
        env=env,
        instance_file=str(instance),
        main_file=str(script),
    )
    assert api.answer(api.send({"input": 4.0})).json() == {"output": 16.0}
    assert wait_until(events, lambda ls: "predicted=1" in ls) == ["main block ran", "predicted=1"]


def wait_until(path: Path, pred: Any) -> list[str]:
    deadline = time.monotonic() + WAIT
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if pred(lines):
            return lines
        assert time.monotonic() < deadline, f"{path.name}: {lines}"
        time.sleep(0.02)


# -- the official openai client, against real servers ---------------------------------------------


def test_openai_client_embeddings(serve) -> None:
    openai = pytest.importorskip("openai")
    lit_server = serve(app("worker_litserve:embed"), "--spec", "openai-embedding",
                       workers=1, api_servers=1)  # fmt: skip
    plain = serve(app("embedder:Embedder"), "--spec", "openai-embedding",
                  workers=1, api_servers=1)  # fmt: skip
    for s, vector in ((lit_server, [5.0, 0.5, -1.0]), (plain, [5.0, 1.0])):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="x",
                               max_retries=0)  # fmt: skip
        got = client.embeddings.create(model="emb", input="hello")  # base64 on the wire
        assert [list(d.embedding) for d in got.data] == [vector]
        assert got.model == "emb" and got.object == "list"
        two = client.embeddings.create(model="emb", input=["a", "bb"], encoding_format="float")
        assert [d.index for d in two.data] == [0, 1]
        assert two.data[1].embedding[0] == 2.0
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{lit_server.port}/v1", api_key="x",
                           max_retries=0)  # fmt: skip
    with pytest.raises(openai.UnprocessableEntityError):  # LitServe's 422 for a bad request
        client.embeddings.create(model="emb", input=5)  # type: ignore[arg-type]
