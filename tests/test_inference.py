"""Inference features through real HTTP: batching, streaming, the OpenAI route, LitServe APIs,
the per-request context and callbacks."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import zmq
from conftest import ROOT, app, wait_for

import ferryman
from ferryman import protocol as p
from ferryman.board import Board
from ferryman.frontend.dispatch import Dispatcher

# A worker that batches up to 8 requests, waiting at most 50 ms for a batch to fill.
BATCH_8 = ("--max-batch-size", "8", "--batch-timeout", "0.05")

# -- helpers -------------------------------------------------------------------------------------


def post_many(url: str, bodies: list[Any], path: str = "/predict") -> list[httpx.Response]:
    """POST every body at once, each from its own connection; answers in the bodies' order."""

    def one(body: Any) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=30) as c:
            if isinstance(body, bytes):
                return c.post(path, content=body)
            return c.post(path, json=body)

    with cf.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def ndjson(r: httpx.Response) -> list[Any]:
    return [json.loads(line) for line in r.text.splitlines() if line]


def read_int(path: Path) -> int:
    return int(path.read_text()) if path.exists() else -1


def stream_lines(url: str, body: Any, n: int) -> list[Any]:
    """Read the first n NDJSON lines of a stream, then hang up."""
    got = []
    with (
        httpx.Client(base_url=url, timeout=30) as c,
        c.stream("POST", "/predict", json=body) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line:
                got.append(json.loads(line))
            if len(got) == n:
                break
    return got


def assert_stopped(progress: Path, end: int) -> None:
    """predict's generator was closed well before its end, and no longer advances."""
    closed = Path(f"{progress}.closed")
    wait_for(closed.exists, timeout=15)
    reached = read_int(progress)
    assert 0 <= reached < end // 2
    time.sleep(0.3)
    assert read_int(progress) == reached


# -- dynamic batching ----------------------------------------------------------------------------


def test_requests_are_batched(serve):
    s = serve(
        app("batching:BatchSize"),
        *BATCH_8,
        workers=1,
        api_servers=1,
    )

    def round_trip() -> int:
        rs = post_many(s.url, [{"input": i} for i in range(16)])
        assert [r.status_code for r in rs] == [200] * 16
        answers = [r.json() for r in rs]
        assert [a["input"] for a in answers] == list(range(16))
        sizes = [a["batch_size"] for a in answers]
        assert all(1 <= n <= 8 for n in sizes)
        return max(sizes)

    wait_for(lambda: round_trip() > 1, timeout=60, interval=0)
    metrics = s.admin_call("GET", "/metrics").text
    assert "ferryman_batch_size_bucket" in metrics


def test_a_bad_request_fails_alone_in_its_batch(serve):
    s = serve(
        app("batching:BatchSize"),
        "--max-batch-size",
        "8",
        "--batch-timeout",
        "0.5",
        workers=1,
        api_servers=1,
    )
    bodies: list[Any] = [
        {"input": 0},
        {"bad": 1},
        {"input": 1},
        b"{not json",
        {"input": 2},
        {"boom": 1},
        {"input": 3},
        b"",
    ]
    expected = [200, 422, 200, 400, 200, 500, 200, 400]

    def round_trip() -> int:
        rs = post_many(s.url, bodies)
        assert [r.status_code for r in rs] == expected, [r.text for r in rs]
        valid = [r.json() for r, code in zip(rs, expected, strict=True) if code == 200]
        assert [a["input"] for a in valid] == [0, 1, 2, 3]
        for r, code in zip(rs, expected, strict=True):
            if code != 200:
                assert r.json()["error"]["message"]
        # Only the valid ones reach predict, whatever batch they shared with the bad ones.
        assert all(a["batch_size"] <= 4 for a in valid)
        return max(a["batch_size"] for a in valid)

    wait_for(lambda: round_trip() > 1, timeout=60, interval=0)
    assert s.post(json={"input": 9}).json()["input"] == 9


def test_numpy_inputs_are_stacked_by_default(serve):
    s = serve(
        app("batching:Stacked"),
        *BATCH_8,
        workers=1,
        api_servers=1,
    )

    def round_trip() -> int:
        rs = post_many(s.url, [{"input": [i, i + 1, i + 2]} for i in range(8)])
        answers = [r.json() for r in rs]
        for i, a in enumerate(answers):
            assert a["type"] == "ndarray"
            assert len(a["shape"]) == 2 and a["shape"][1] == 3
            assert a["sum"] == 3 * i + 3
        return max(a["shape"][0] for a in answers)

    wait_for(lambda: round_trip() > 1, timeout=60, interval=0)


# -- streaming -----------------------------------------------------------------------------------


def test_stream_items_arrive_in_order_as_ndjson(serve):
    s = serve(app("streaming:Counter"), "--stream", workers=1, api_servers=1)
    r = s.post(json={"n": 5})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    assert ndjson(r) == [{"i": i} for i in range(5)]
    empty = s.post(json={"n": 0})
    assert empty.status_code == 200 and empty.text == ""


def test_stream_items_arrive_while_predict_runs(serve, tmp_path):
    s = serve(app("streaming:Counter"), "--stream", workers=1, api_servers=1)
    progress = tmp_path / "progress"
    first: list[Any] = []
    with s.http.stream(
        "POST", "/predict", json={"n": 40, "delay": 0.05, "progress": str(progress)}
    ) as r:
        lines = r.iter_lines()
        first.append(json.loads(next(lines)))
        # The first item is here while predict is still far from its end.
        assert read_int(progress) < 39
        rest = [json.loads(line) for line in lines if line]
    assert first + rest == [{"i": i} for i in range(40)]


def test_stream_cut_by_the_client_stops_predict(serve, tmp_path):
    s = serve(app("streaming:Counter"), "--stream", workers=1, api_servers=1)
    progress = tmp_path / "progress"
    end = 100_000
    got = stream_lines(s.url, {"n": end, "delay": 0.002, "progress": str(progress)}, 3)
    assert got == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert_stopped(progress, end)
    # The worker is free again.
    assert ndjson(s.post(json={"n": 2})) == [{"i": 0}, {"i": 1}]


def test_stream_that_fails_midway_ends_with_an_error_line(serve):
    s = serve(app("streaming:Counter"), "--stream", workers=1, api_servers=1)
    r = s.post(json={"n": 5, "fail_at": 2})
    assert r.status_code == 200
    lines = ndjson(r)
    assert lines[:2] == [{"i": 0}, {"i": 1}]
    assert lines[2]["error"]["type"] == "internal_error"
    # The client gets the request id, never the exception's text: that goes to the log.
    assert "stream failed on purpose" not in lines[2]["error"]["message"]
    assert lines[2]["error"]["request_id"] in lines[2]["error"]["message"]
    assert "stream failed on purpose" in s.log()
    assert len(lines) == 3
    # Failing before the first item is a plain error status.
    r = s.post(json={"n": 5, "fail_at": 0})
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "internal_error"


def test_batched_streams_each_get_their_own_items(serve):
    s = serve(
        app("streaming:BatchedCounter"),
        "--stream",
        "--max-batch-size",
        "4",
        "--batch-timeout",
        "0.1",
        workers=1,
        api_servers=1,
    )
    tags = {"a": 2, "b": 3, "c": 4, "d": 5}

    def round_trip() -> int:
        rs = post_many(s.url, [{"tag": t, "n": n} for t, n in tags.items()])
        biggest = 0
        for (tag, n), r in zip(tags.items(), rs, strict=True):
            assert r.status_code == 200
            lines = ndjson(r)
            assert [(x["tag"], x["i"]) for x in lines[:-1]] == [(tag, i) for i in range(n)]
            assert lines[-1] == {"done": n}  # encode_response ran once for this request
            biggest = max(biggest, *(x["batch_size"] for x in lines[:-1]))
        return biggest

    wait_for(lambda: round_trip() > 1, timeout=60, interval=0)


def test_batched_stream_cut_by_the_client_stops_predict(serve, tmp_path):
    s = serve(
        app("streaming:BatchedCounter"),
        "--stream",
        "--max-batch-size",
        "4",
        workers=1,
        api_servers=1,
    )
    progress = tmp_path / "progress"
    end = 100_000
    body = {"tag": "a", "n": end, "delay": 0.002, "progress": str(progress)}
    got = stream_lines(s.url, body, 2)
    assert [x["i"] for x in got] == [0, 1]
    assert_stopped(progress, end)
    lines = ndjson(s.post(json={"tag": "b", "n": 2}))
    assert [x.get("i") for x in lines] == [0, 1, None]


def test_one_client_leaving_a_batched_stream_does_not_stop_the_others(serve):
    s = serve(
        app("streaming:BatchedCounter"),
        "--stream",
        "--max-batch-size",
        "4",
        "--batch-timeout",
        "0.3",
        workers=1,
        api_servers=1,
    )

    def full(tag: str) -> list[Any]:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            return ndjson(c.post("/predict", json={"tag": tag, "n": 30, "delay": 0.01}))

    def round_trip() -> int:
        with cf.ThreadPoolExecutor(2) as pool:
            stays = pool.submit(full, "stays")
            leaves = pool.submit(stream_lines, s.url, {"tag": "leaves", "n": 30, "delay": 0.01}, 2)
            assert [x["i"] for x in leaves.result()] == [0, 1]
            lines = stays.result()
        assert [x["i"] for x in lines[:-1]] == list(range(30))
        assert lines[-1] == {"done": 30}
        return lines[0]["batch_size"]

    wait_for(lambda: round_trip() > 1, timeout=60, interval=0)


# -- OpenAI-compatible route ---------------------------------------------------------------------


def _client(s) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)


def test_openai_client_plain_and_streamed(serve):
    s = serve(app("chat:Chat"), "--spec", "openai", workers=1, api_servers=1)
    client = _client(s)
    messages = [{"role": "user", "content": "hello big world"}]
    done = client.chat.completions.create(
        model="m1", messages=messages, temperature=0.5, max_tokens=7
    )
    assert done.object == "chat.completion"
    assert done.model == "m1"
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == "[m1 t=0.5 max=7] hello big world"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (3, 4)
    assert done.usage.total_tokens == 7

    chunks = list(
        client.chat.completions.create(model="m2", messages=messages, stream=True, max_tokens=3)
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[m2 t=None max=3] hello big world"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7

    with_usage = list(
        client.chat.completions.create(
            model="m3", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage is not None and with_usage[-1].usage.prompt_tokens == 3

    models = client.models.list()
    assert [m.id for m in models.data] == ["chat"]  # the model's name


def test_openai_stream_is_server_sent_events(serve):
    s = serve(app("chat:Chat"), "--spec", "openai", workers=1, api_servers=1)
    r = s.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    for event in events[:-2]:
        assert event.startswith("data: ")
        assert json.loads(event[6:])["object"] == "chat.completion.chunk"


def test_openai_errors_have_openai_shape(serve):
    s = serve(app("chat:Chat"), "--spec", "openai", workers=1, api_servers=1)
    client = _client(s)

    r = s.post("/v1/chat/completions", json={"model": "m"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["param"] == "messages"

    r = s.post("/v1/chat/completions", content=b"{nope")
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"

    with pytest.raises(openai.UnprocessableEntityError) as e422:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "fail"}])
    assert "cannot answer that" in str(e422.value)

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "crash"}])
    r = s.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "crash"}], "stream": True},
    )
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error"

    # Failing after the first chunk: an error event ends the stream, and the client raises.
    r = s.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "crash later"}], "stream": True},
    )
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == "partial"
    last = json.loads(events[-1][6:])
    assert last["error"]["type"] == "server_error"
    assert "failed after its first item" not in last["error"]["message"]  # logged, not sent
    msgs = [{"role": "user", "content": "crash later"}]
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="m", messages=msgs, stream=True))

    r = s.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "n": 2}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    # The plain route of the same API still has ferryman's shape.
    assert s.get("/v1/chat/completions").status_code == 405


def test_openai_decode_request_gets_the_whole_request(serve):
    s = serve(app("chat:ChatDecoded"), "--spec", "openai", workers=1, api_servers=1)
    done = _client(s).chat.completions.create(
        model="m",
        user="bob",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    )
    assert done.choices[0].message.content == "2 messages from bob"


def test_openai_with_batching(serve):
    s = serve(
        app("chat:BatchedChat"),
        "--spec",
        "openai",
        "--max-batch-size",
        "4",
        "--batch-timeout",
        "0.1",
        workers=1,
        api_servers=1,
    )
    client = _client(s)

    def ask(i: int) -> str:
        stream = i % 2 == 0
        msgs = [{"role": "user", "content": f"q{i}"}]
        if stream:
            chunks = client.chat.completions.create(model="m", messages=msgs, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        done = client.chat.completions.create(model="m", messages=msgs)
        return done.choices[0].message.content or ""

    def round_trip() -> int:
        with cf.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, range(4)))
        sizes = set()
        for i, text in enumerate(answers):
            parts = text.split()
            assert [p.split("(")[0] for p in parts] == [f"q{i}-{k}" for k in range(3)]
            sizes |= {int(p.split("(")[1].rstrip(")")) for p in parts}
        return max(sizes)

    wait_for(lambda: round_trip() > 1, timeout=60, interval=0)


def test_openai_spec_object_is_the_spec_option():
    class Chat(ferryman.API):
        def predict(self, messages):
            yield "x"

    assert ferryman.Server(Chat(), spec=ferryman.OpenAISpec()).options["spec"] == "openai"
    assert ferryman.Server(Chat(), spec="openai").options["spec"] == "openai"
    with pytest.raises(ValueError, match="--spec"):
        ferryman.Server(Chat(), spec="anthropic")


# -- context and callbacks -----------------------------------------------------------------------


def test_context_and_callbacks(serve, tmp_path):
    events = tmp_path / "events"
    s = serve(
        app("context:WithContext"),
        "--timeout",
        "20",
        workers=1,
        api_servers=1,
        env={"FERRYMAN_TEST_EVENTS": str(events)},
    )
    r = s.post(json={"x": 1}, headers={"X-Custom": "hi", "X-Request-ID": "req-7"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "req-7"
    assert body["custom"] == "hi"
    assert 0 < body["time_left"] <= 20
    assert body["decoded_by"] == "decode_request"
    assert body["keys"] == ["decoded_by"]
    assert body["encoded"] == "true"
    other = s.post(json={"x": 2}).json()
    assert other["request_id"] and other["request_id"] != "req-7"
    assert other["custom"] is None

    lines = [line.split()[1] for line in events.read_text().splitlines()]
    assert lines[0] == "start"
    assert lines[1:] == ["before", "after", "before", "after"]
    assert "a broken hook" in s.log()  # logged, and the requests still succeeded


def test_headers_cross_only_to_workers_that_take_a_context(tmp_path):
    """The API process hands every request's headers to the dispatcher by reference; they are
    encoded into the Work message only for a worker that announced it takes a context."""

    async def main() -> list[Any]:
        ctx = zmq.Context()
        board = Board(str(tmp_path / "board"), create=True)
        ep = p.ApiEndpoint("a0.1", f"ipc://{tmp_path}/req", f"ipc://{tmp_path}/rep", 0)
        d = Dispatcher(ctx, ep, board, max_queue=10)
        d.set_models([p.ModelRoute(name="m", api_path="/predict", timeout=5)])
        seen = []
        try:
            for cell, (name, wants) in enumerate((("m.w0.1", False), ("m.w1.2", True))):
                dealer = ctx.socket(zmq.DEALER)
                dealer.setsockopt(zmq.IDENTITY, name.encode())
                dealer.connect(ep.requests)
                ready = p.WorkerReady(name, "m", cell, 1, "cpu", cell, 1, 4, context=wants)
                dealer.send(p.encode(ready))
                await d.wait_for_workers(1, timeout=5)
                job = d.submit("m", "predict", b"{}", [(b"x-custom", b"hi")])
                assert await asyncio.to_thread(dealer.poll, 5000)
                seen.append(p.to_worker(dealer.recv_multipart()[0]))
                d.give_up(job)
                d.worker_gone(name, "test")
                dealer.close(0)
        finally:
            d.close()
            board.close()
            ctx.term()
        return seen

    plain, with_context = asyncio.run(main())
    assert plain.headers is None
    assert with_context.headers == [(b"x-custom", b"hi")]


# -- LitServe APIs, unchanged --------------------------------------------------------------------


def lit(name: str) -> str:
    return app(f"lit_apps:{name}")


def test_litserve_readme_api(serve):
    s = serve(lit("InferencePipeline"), workers=1, api_servers=1)
    assert s.post(json={"input": 4}).json() == {"output": 80}
    s2 = serve(lit("SimpleLitAPI"), workers=1, api_servers=1)
    assert s2.post(json={"input": 3}).json() == {
        "output": 9,
        "device": "cpu",
        "setup_device": "cpu",
    }


def test_litserve_batching(serve):
    s = serve(
        lit("SimpleBatchedAPI"),
        "--max-batch-size",
        "4",
        "--batch-timeout",
        "0.1",
        workers=1,
        api_servers=1,
    )

    def round_trip() -> int:
        rs = post_many(s.url, [{"input": i} for i in range(4)])
        answers = [r.json() for r in rs]
        assert [a["output"] for a in answers] == [float(i * i) for i in range(4)]
        return max(a["batch_size"] for a in answers)

    wait_for(lambda: round_trip() > 1, timeout=60, interval=0)


def test_litserve_streaming_is_byte_for_byte(serve):
    expected = '{"output": "0: Hello"}\n{"output": "1: Hello"}\n{"output": "2: Hello"}\n'
    s = serve(lit("SimpleStreamAPI"), "--stream", workers=1, api_servers=1)
    assert s.post(json={"input": "Hello"}).text == expected
    # An instance built with stream=True streams without the flag.
    s2 = serve(lit("stream_api"), workers=1, api_servers=1)
    assert s2.post(json={"input": "Hello"}).text == expected


def test_litserve_batched_streaming(serve):
    s = serve(
        lit("BatchedStreamAPI"),
        "--stream",
        "--max-batch-size",
        "4",
        "--batch-timeout",
        "0.1",
        workers=1,
        api_servers=1,
    )

    def round_trip() -> int:
        rs = post_many(s.url, [{"input": f"x{i}"} for i in range(4)])
        sizes = set()
        for i, r in enumerate(rs):
            outs = [line["output"] for line in ndjson(r)]
            assert [o.split("/")[0] for o in outs] == [f"x{i}-{k}" for k in range(3)]
            sizes |= {int(o.split("/")[1]) for o in outs}
        return max(sizes)

    wait_for(lambda: round_trip() > 1, timeout=60, interval=0)


def test_litserve_pydantic_request_context_and_response(serve):
    s = serve(lit("TypedAPI"), workers=1, api_servers=1)
    assert s.post(json={"name": "pen", "count": 2}).json() == {"name": "pen", "doubled": 4}
    # Errors in LitServe's shape, as a client written for LitServe reads them.
    r = s.post(json={"name": "pen"})
    assert r.status_code == 422
    assert "count" in str(r.json()["detail"])
    r = s.post(json={"name": "pen", "count": -1})
    assert r.status_code == 400
    assert r.json() == {"detail": "count must be >= 0"}
    r = s.post(json={"name": "pen", "count": 0})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.content == b"\x89PNG..."


def test_litserve_openai_spec(serve):
    s = serve(lit("openai_api"), "--spec", "openai", workers=1, api_servers=1)
    client = _client(s)
    msgs = [{"role": "user", "content": "hi"}]
    done = client.chat.completions.create(model="lit", messages=msgs)
    assert done.choices[0].message.content == "This is a generated output"
    chunks = list(client.chat.completions.create(model="lit", messages=msgs, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == (
        "This is a generated output"
    )

    s2 = serve(lit("OpenAIWithUsageEncodeResponse"), "--spec", "openai", workers=1, api_servers=1)
    done = _client(s2).chat.completions.create(
        model="lit", messages=[{"role": "user", "content": "10"}]
    )
    assert done.choices[0].message.content == "10 + 6 is equal to 16."
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (25, 10)
    assert done.usage.total_tokens == 35


def test_server_takes_a_litapi_instances_settings():
    import litserve as ls

    sys.path.insert(0, str(ROOT / "tests" / "apps"))
    try:
        import lit_apps
    finally:
        sys.path.pop(0)

    def code_options(api, **kw):
        launch = ferryman.Server(api, **kw).launch()
        for m in launch["models"]:
            if m["instance_file"]:
                os.unlink(m["instance_file"])
        return launch["models"][0]["code_options"], launch["options"]

    api = lit_apps.BatchedStreamAPI(max_batch_size=4, batch_timeout=0.01, stream=True)
    opts, _ = code_options(api)
    assert (opts["max_batch_size"], opts["batch_timeout"], opts["stream"]) == (4, 0.01, True)
    # A keyword of Server (as a flag) beats the instance's own setting.
    assert code_options(api, max_batch_size=2)[1]["max_batch_size"] == 2
    chat = lit_apps.OpenAIAPI(spec=ls.OpenAISpec())
    assert code_options(chat)[0]["spec"] == "openai"
    assert code_options(lit_apps.SimpleLitAPI(api_path="/v2"))[0]["api_path"] == "/v2"
    assert code_options(lit_apps.SimpleLitAPI())[0] == {}


@pytest.mark.parametrize(
    "name, args, needle",
    [
        ("SimpleStreamAPI", [], "SimpleStreamAPI.predict is a generator"),
        ("openai_api", [], "start ferryman with --spec openai"),
    ],
)
def test_litserve_unsupported_is_refused_by_name(serve, name, args, needle):
    s = serve(lit(name), *args, wait=False, workers=1, api_servers=1)
    assert s.proc.wait(60) == 3
    assert needle in s.log()


def test_supervisor_and_api_processes_never_import_litserve():
    code = (
        "import sys, ferryman, ferryman.cli, ferryman.frontend.main, "
        "ferryman.frontend.http_app, ferryman.frontend.dispatch, ferryman.supervisor.main,"
        " ferryman.supervisor.supervisor, ferryman.control.admin;"
        "bad = [m for m in ('litserve', 'fastapi', 'torch') if m in sys.modules];"
        "bad += [m for m in sys.modules if m.startswith('ferryman.workers')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_public_names():
    for name in ("API", "Callback", "Context", "HTTPException", "OpenAISpec", "Server"):
        assert name in ferryman.__all__
        assert getattr(ferryman, name) is not None
