"""The inference worker process on its own: a real `python -m ferryman.workers.main`, with this
test playing its supervisor (a ROUTER on the control address, answering Hello with Endpoints)
and its API processes (a ROUTER for requests, a PULL for answers, and their load-board row).

Every test asserts behaviour (statuses, bodies, messages), never a timing: waits are generous
upper bounds on what should take milliseconds. Every process a test starts is killed at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from ferryman import errors
from ferryman import protocol as p
from ferryman.board import Board
from ferryman.options import ModelOptions, ModelSpec, ServerOptions

APPS = Path(__file__).resolve().parent / "apps"
WAIT = 20.0  # seconds: an upper bound for what takes milliseconds, on a loaded CI machine
MODEL = "m"


def wait_lines(path: Path) -> list[str]:
    """The lines of a file the worker's app writes, once it wrote a whole one."""
    deadline = time.monotonic() + WAIT
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < deadline, f"{path.name} never written"
        time.sleep(0.01)
    return path.read_text().split()


def app(name: str) -> str:
    module, cls = name.split(":")
    return f"{APPS / module}.py:{cls}"


class Answer:
    """One request's answer: its Reply, and the bodies of its parts in order."""

    def __init__(self, reply: p.Reply, body: bytes) -> None:
        self.reply = reply
        self.parts = [body]
        self.done = not reply.more

    @property
    def status(self) -> int:
        return self.reply.status

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


class FakeApi:
    """An API process, as far as a worker can tell: ROUTER + PULL on ipc://, a board row."""

    def __init__(self, ctx: zmq.Context[Any], tmp: Path, name: str, row: int, board: Board):
        self.name = name
        self.row = row
        self.board = board
        self.endpoint = p.ApiEndpoint(
            name, f"ipc://{tmp}/{name}-req", f"ipc://{tmp}/{name}-rep", row
        )
        self.router = p.make_socket(ctx, zmq.ROUTER, bind=self.endpoint.requests)
        self.pull = p.make_socket(ctx, zmq.PULL, bind=self.endpoint.replies)
        self.ident: bytes | None = None
        self.cell = 0
        self.next_id = 1
        self.answers: dict[int, Answer] = {}
        self.dealer_msgs: list[Any] = []

    def wait_dealer(self, kind: type, timeout: float = WAIT) -> Any:
        """The next message of `kind` from the worker's DEALER (WorkerReady, WorkerLeaving)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.dealer_msgs):
                if isinstance(m, kind):
                    return self.dealer_msgs.pop(i)
            left = deadline - time.monotonic()
            assert left > 0, f"{self.name}: no {kind.__name__} from the worker"
            if self.router.poll(int(left * 1000)):
                ident, raw = self.router.recv_multipart()
                msg = p.from_worker_dealer(raw)
                if isinstance(msg, p.WorkerReady):
                    self.ident = ident
                    self.cell = msg.cell
                self.dealer_msgs.append(msg)

    def send(
        self,
        body: Any,
        route: str = "predict",
        deadline: float = 0.0,
        headers: list[tuple[bytes, bytes]] | None = None,
        query: bytes = b"",
        count: bool = True,
        content_type: bytes = b"",
    ) -> int:
        assert self.ident is not None, "the worker has not announced itself"
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        id = self.next_id
        self.next_id += 1
        if count:  # as an API process does: counted on the board, then sent
            self.board.sent[self.board.index(self.cell, self.row)] += 1
        work = p.Work(id, route, deadline, headers, query, content_type)
        p.send_routed_pair(self.router, self.ident, p.encode(work), raw)
        return id

    def cancel(self, id: int) -> None:
        assert self.ident is not None
        p.send_routed_pair(self.router, self.ident, p.encode(p.Cancel(id)), b"")

    def leave_ack(self) -> None:
        assert self.ident is not None
        p.send_routed_pair(self.router, self.ident, p.encode(p.LeaveAck()), b"")

    def _recv_one(self, timeout: float) -> bool:
        if not self.pull.poll(int(timeout * 1000)):
            return False
        header, body = self.pull.recv_multipart()
        msg = p.from_worker_push(header)
        if isinstance(msg, p.Reply):
            assert msg.id not in self.answers, f"a second Reply for request {msg.id}"
            self.answers[msg.id] = Answer(msg, body)
        else:
            a = self.answers.get(msg.id)
            assert a is not None, f"a Chunk before the Reply of request {msg.id}"
            assert not a.done, f"a message after the final one for request {msg.id}"
            a.parts.append(body)
            a.done = not msg.more
        return True

    def answer(self, id: int, timeout: float = WAIT) -> Answer:
        """Request id's whole answer, once its final message arrived."""
        deadline = time.monotonic() + timeout
        while not (id in self.answers and self.answers[id].done):
            left = deadline - time.monotonic()
            assert left > 0, f"no final answer to request {id}"
            self._recv_one(left)
        return self.answers[id]

    def parts_of(self, id: int, n: int, timeout: float = WAIT) -> Answer:
        """Wait until request id's answer has at least n parts."""
        deadline = time.monotonic() + timeout
        while not (id in self.answers and len(self.answers[id].parts) >= n):
            left = deadline - time.monotonic()
            assert left > 0, f"request {id} got fewer than {n} parts"
            self._recv_one(left)
        return self.answers[id]

    def close(self) -> None:
        self.router.close(0)
        self.pull.close(0)


class FakeSupervisor:
    """The worker's control link: Hello in, Endpoints out, then Ready, heartbeats, metrics."""

    def __init__(self, ctx: zmq.Context[Any], tmp: Path) -> None:
        self.address = f"ipc://{tmp}/control"
        self.router = p.make_socket(ctx, zmq.ROUTER, bind=self.address)
        self.ident: bytes | None = None
        self.msgs: list[Any] = []

    def wait(self, kind: type, timeout: float = WAIT, pred: Callable[[Any], bool] = bool) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.msgs):
                if isinstance(m, kind) and pred(m):
                    return self.msgs.pop(i)
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind.__name__} from the worker"
            if self.router.poll(int(left * 1000)):
                ident, raw = self.router.recv_multipart()
                self.ident = ident
                self.msgs.append(p.to_supervisor(raw))

    def drain(self) -> list[Any]:
        """Every message already queued."""
        out = []
        while self.router.poll(0):
            _, raw = self.router.recv_multipart()
            out.append(p.to_supervisor(raw))
        return out

    def collect(self, seconds: float) -> list[Any]:
        """Every message that arrives within `seconds`."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.router.poll(int(left * 1000) + 1):
                _, raw = self.router.recv_multipart()
                out.append(p.to_supervisor(raw))
        return out

    def endpoints(self, apis: list[FakeApi]) -> None:
        assert self.ident is not None
        msg = p.Endpoints([a.endpoint for a in apis])
        self.router.send_multipart([self.ident, p.encode(msg)])

    def close(self) -> None:
        self.router.close(0)


class Worker:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, sup: FakeSupervisor):
        self.proc = proc
        self.log_path = log
        self.sup = sup

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout: float = WAIT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker did not exit; its log:\n{self.log()}") from None


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.board_path = str(tmp / "board")
        self.board = Board(self.board_path, create=True)
        self.sup = FakeSupervisor(self.ctx, tmp)
        self.apis: list[FakeApi] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def api(self, name: str = "a0.1", row: int = 0) -> FakeApi:
        a = FakeApi(self.ctx, self.tmp, name, row, self.board)
        self.apis.append(a)
        return a

    def spawn(
        self,
        target: str,
        apis: list[FakeApi] | None = None,
        slot: int = 0,
        cell: int = 3,
        env: dict[str, str] | None = None,
        instance_file: str | None = None,
        main_file: str | None = None,
        **options: Any,
    ) -> Worker:
        """Start a worker; its API processes come in the Endpoints answering its Hello."""
        spec = p.ChildSpec(
            role="worker",
            slot=slot,
            name=f"{MODEL}.w{slot}.1",
            supervisor_pid=os.getpid(),
            control=self.sup.address,
            run_dir=str(self.tmp),
            board=self.board_path,
            server=ServerOptions(log_level="debug"),
            worker=p.WorkerSpec(
                model=ModelSpec(
                    name=MODEL,
                    app=target,
                    options=ModelOptions(**options),
                    instance_file=instance_file,
                    main_file=main_file,
                ),
                device="cpu",
                physical_device="cpu",
                cell=cell,
            ),
        )
        full_env = {
            **os.environ,
            p.CHILD_ENV: p.encode_spec(spec),
            "FERRYMAN_WORKER_ID": str(slot),
            **(env or {}),
        }
        full_env.pop("LITSERVE_WORKER_ID", None)
        log = self.tmp / f"worker{slot}-{len(self.procs)}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ferryman.workers.main"],
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        worker = Worker(proc, log, self.sup)
        self.sup.wait(p.Hello)
        self.sup.endpoints(apis or [])
        return worker

    def serve(
        self, target: str, env: dict[str, str] | None = None, **options: Any
    ) -> tuple[Worker, FakeApi, p.WorkerReady]:
        """A worker with one API process, ready to take requests."""
        api = self.api()
        worker = self.spawn(target, [api], env=env, **options)
        ready = api.wait_dealer(p.WorkerReady)
        return worker, api, ready

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        for a in self.apis:
            a.close()
        self.sup.close()
        self.ctx.term()
        self.board.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


# -- plain requests ---------------------------------------------------------------------------


def test_plain_request_and_answer(harness: Harness) -> None:
    worker, api, ready = harness.serve(app("worker_apps:Echo"))
    assert (ready.worker, ready.model, ready.slot, ready.cell) == ("m.w0.1", MODEL, 0, 3)
    assert ready.pid == worker.proc.pid
    assert (ready.capacity, ready.window, ready.context, ready.litserve) == (1, 16, False, False)
    harness.sup.wait(p.Ready)
    a = api.answer(api.send({"input": 21}))
    assert (a.status, a.reply.content_type, a.reply.more) == (200, "application/json", False)
    assert a.json() == {"input": 21, "device": "cpu", "litserve_worker_id": "0"}
    ids = [api.send({"input": i}) for i in range(20)]
    assert [api.answer(i).json()["input"] for i in ids] == list(range(20))


def test_error_statuses(harness: Harness) -> None:
    worker, api, _ = harness.serve(app("worker_apps:Echo"))
    cases: list[tuple[bytes | dict[str, Any], int, str]] = [
        (b"{not json", 400, "invalid_json"),
        (b"[" * 1000 + b"]" * 1000, 400, "invalid_json"),  # RecursionError in the decoder
        (b'{"input": "\xff\xfe"}', 400, "invalid_json"),  # invalid UTF-8 inside a string
        (b"", 400, "invalid_request"),
        ({"fail": 422}, 422, "http_exception"),
        ({"fail": 503}, 503, "http_exception"),
        ({"boom": 1}, 500, "internal_error"),
        ({"predict_error": 1}, 500, "internal_error"),
    ]
    ids = [api.send(body) for body, _, _ in cases]
    for id, (_, status, kind) in zip(ids, cases, strict=True):
        a = api.answer(id)
        assert a.status == status, a.body
        err = a.json()["error"]
        assert err["type"] == kind
        if status == 500:
            rid = f"a0.1-{id}"
            assert err == {
                "type": "internal_error",
                "message": errors.internal_error_message(rid),
                "request_id": rid,
            }
            assert b"secret-token" not in a.body
    assert api.answer(ids[4]).json()["error"]["message"] == "asked to fail"
    # The traceback is in the log, with the request id; malformed bodies are not the user's
    # failures and are not logged as such.
    log = worker.log()
    assert "secret-token-123" in log and "request_id=a0.1-7" in log
    assert "secret-token-456" in log and "request_id=a0.1-8" in log
    assert "RecursionError" not in log and "UnicodeDecodeError" not in log
    # ... and the worker keeps serving.
    assert api.answer(api.send({"input": 1})).json()["input"] == 1


def test_unknown_route_and_expired_request(harness: Harness) -> None:
    _, api, _ = harness.serve(app("worker_apps:Echo"))
    assert api.answer(api.send({}, route="embeddings")).status == 404
    expired = api.answer(api.send({"input": 1}, deadline=time.monotonic() - 1))
    assert expired.status == 504 and expired.json()["error"]["type"] == "timeout"


def test_context_gets_headers_and_query(harness: Harness) -> None:
    _, api, ready = harness.serve(app("worker_apps:WithContext"))
    assert ready.context is True
    headers = [(b"x-custom", b"hi"), (b"x-request-id", b"req-7")]
    a = api.answer(
        api.send({}, deadline=time.monotonic() + 60, headers=headers, query=b"a=1&b=two")
    )
    assert a.json() == {
        "request_id": "req-7",
        "custom": "hi",
        "query": {"a": "1", "b": "two"},
        "has_deadline": True,
    }
    plain = api.answer(api.send({})).json()
    assert plain["request_id"] == "a0.1-2" and plain["custom"] is None


# -- batching -------------------------------------------------------------------------------------


def test_requests_arriving_while_a_batch_runs_form_the_next_batch(
    harness: Harness, tmp_path: Path
) -> None:
    # batch_timeout far beyond the test's patience: a batch that waited for it would fail it.
    _, api, ready = harness.serve(app("worker_apps:Batched"), max_batch_size=16, batch_timeout=600)
    assert (ready.capacity, ready.window) == (16, 32)
    lone = api.answer(api.send({"input": "lone"}))
    assert lone.json() == {"input": "lone", "batch_size": 1}  # not held for batch_timeout
    mark = tmp_path / "first-started"
    first = api.send({"input": 0, "sleep": 1.0, "mark": str(mark)})
    deadline = time.monotonic() + WAIT
    while not mark.exists():  # its predict runs: what comes now must wait for the next batch
        assert time.monotonic() < deadline
        time.sleep(0.005)
    rest = [api.send({"input": i}) for i in range(1, 9)]
    assert api.answer(first).json() == {"input": 0, "batch_size": 1}
    assert [api.answer(i).json() for i in rest] == [
        {"input": i, "batch_size": 8} for i in range(1, 9)
    ]


def test_a_batch_waits_only_for_requests_known_to_be_on_their_way(harness: Harness) -> None:
    _, api, _ = harness.serve(app("worker_apps:Batched"), max_batch_size=4, batch_timeout=600)
    # The board says two requests were sent; only one has been: the worker waits for the other.
    api.board.sent[api.board.index(api.cell, api.row)] += 2
    a = api.send({"input": "a"}, count=False)
    assert not api._recv_one(0.3)  # held: more is on its way
    b = api.send({"input": "b"}, count=False)
    assert api.answer(a).json() == {"input": "a", "batch_size": 2}
    assert api.answer(b).json() == {"input": "b", "batch_size": 2}
    # Board and worker agree again: the next lone request runs at once.
    assert api.answer(api.send({"input": "c"})).json() == {"input": "c", "batch_size": 1}


def test_requests_counted_but_never_sent_are_not_waited_for_again(harness: Harness) -> None:
    worker, api, _ = harness.serve(app("worker_apps:Batched"), max_batch_size=4, batch_timeout=0.5)
    # An API process counted a request on the board that it never sent (say, its send failed).
    api.board.sent[api.board.index(api.cell, api.row)] += 1
    assert api.answer(api.send({"input": "a"})).json() == {"input": "a", "batch_size": 1}
    assert "never arrived" in worker.log()
    assert api.answer(api.send({"input": "b"})).json() == {"input": "b", "batch_size": 1}


def test_batches_take_requests_from_every_api_process(harness: Harness, tmp_path: Path) -> None:
    a0, a1 = harness.api("a0.1", 0), harness.api("a1.1", 1)
    harness.spawn(app("worker_apps:Batched"), [a0, a1], max_batch_size=8, batch_timeout=600)
    a0.wait_dealer(p.WorkerReady)
    a1.wait_dealer(p.WorkerReady)
    mark = tmp_path / "started"
    first = a0.send({"input": "first", "sleep": 1.0, "mark": str(mark)})
    deadline = time.monotonic() + WAIT
    while not mark.exists():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    ids0 = [a0.send({"input": f"x{i}"}) for i in range(3)]
    ids1 = [a1.send({"input": f"y{i}"}) for i in range(3)]
    assert a0.answer(first).json()["batch_size"] == 1
    sizes = {a0.answer(i).json()["batch_size"] for i in ids0}
    sizes |= {a1.answer(i).json()["batch_size"] for i in ids1}
    assert sizes == {6}


# -- async APIs -----------------------------------------------------------------------------------


def test_async_predicts_run_concurrently(harness: Harness) -> None:
    _, api, ready = harness.serve(app("worker_apps:AsyncSleeper"))
    assert ready.capacity == 64 and ready.window >= 64
    ids = [api.send({"input": i, "sleep": 1.0}) for i in range(8)]
    answers = [api.answer(i).json() for i in ids]
    assert [a["input"] for a in answers] == list(range(8))
    assert max(a["peak"] for a in answers) == 8  # all eight awaited at once
    failed = api.answer(api.send({"fail": 1, "sleep": 0}))
    assert failed.status == 409 and failed.json()["error"]["message"] == "async conflict"


def test_litserve_enable_async(harness: Harness) -> None:
    _, api, ready = harness.serve(app("worker_lit_apps:lit_async"))
    assert ready.litserve is True and ready.capacity == 64
    ids = [api.send({"input": i, "sleep": 1.0}) for i in range(8)]
    answers = [api.answer(i).json() for i in ids]
    assert max(a["peak"] for a in answers) == 8


# -- streams --------------------------------------------------------------------------------------


def test_stream_items_and_a_failure_midway(harness: Harness) -> None:
    _, api, _ = harness.serve(app("worker_apps:Counter"), stream=True)
    a = api.answer(api.send({"n": 5}))
    assert (a.status, a.reply.content_type, a.reply.more) == (200, "application/x-ndjson", True)
    assert a.lines() == [{"i": i} for i in range(5)]
    empty = api.answer(api.send({"n": 0}))
    assert (empty.status, empty.body) == (200, b"")
    failed = api.answer(api.send({"n": 5, "fail_at": 2}))
    lines = failed.lines()
    assert lines[:2] == [{"i": 0}, {"i": 1}] and len(lines) == 3
    assert lines[2]["error"]["type"] == "internal_error"
    assert b"secret-token" not in failed.body
    at_once = api.answer(api.send({"n": 5, "fail_at": 0}))
    assert at_once.status == 500


def test_cancel_closes_the_stream_generator_at_its_yield(harness: Harness, tmp_path: Path) -> None:
    _, api, _ = harness.serve(app("worker_apps:Counter"), stream=True)
    marks = tmp_path / "marks"
    id = api.send({"n": 100000, "delay": 0.01, "marks": str(marks)})
    got = api.parts_of(id, 3)
    api.cancel(id)
    a = api.answer(id)  # the final message comes, whatever happens
    assert a.done and len(a.lines()) < 100000
    assert got.lines()[:3] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert wait_lines(marks) == ["GeneratorExit"]
    assert api.answer(api.send({"n": 2})).lines() == [{"i": 0}, {"i": 1}]


def test_cancel_of_a_queued_request_answers_it_without_running_it(
    harness: Harness, tmp_path: Path
) -> None:
    _, api, _ = harness.serve(app("worker_apps:Batched"), max_batch_size=2)
    mark = tmp_path / "started"
    busy = api.send({"input": "busy", "sleep": 1.0, "mark": str(mark)})
    deadline = time.monotonic() + WAIT
    while not mark.exists():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    queued = api.send({"input": "queued", "mark": str(mark)})
    api.cancel(queued)
    assert api.answer(queued).status == 499  # its final message: it never ran ...
    assert api.answer(busy).json()["input"] == "busy"
    assert mark.read_text().split() == ["started"]  # ... as its mark shows


def test_cancel_stops_an_async_stream(harness: Harness, tmp_path: Path) -> None:
    _, api, _ = harness.serve(app("worker_apps:AsyncCounter"), stream=True)
    marks = tmp_path / "marks"
    id = api.send({"n": 100000, "delay": 0.01, "marks": str(marks)})
    api.parts_of(id, 2)
    api.cancel(id)
    assert api.answer(id).done
    assert wait_lines(marks)[0] in ("GeneratorExit", "CancelledError")
    assert api.answer(api.send({"n": 3})).lines() == [{"i": i} for i in range(3)]


def test_batched_streams_each_get_their_own_items(harness: Harness, tmp_path: Path) -> None:
    _, api, _ = harness.serve(
        app("worker_apps:BatchedCounter"), stream=True, max_batch_size=4, batch_timeout=600
    )
    # All four on the board before the first is sent: the worker waits for them all.
    api.board.sent[api.board.index(api.cell, api.row)] += 4
    ids = [api.send({"tag": t, "n": n}, count=False) for t, n in (("a", 3), ("b", 1), ("c", 5))]
    ids.append(api.send({"tag": "d", "n": 2}, count=False))
    for id, (tag, n) in zip(ids, (("a", 3), ("b", 1), ("c", 5), ("d", 2)), strict=True):
        lines = api.answer(id).lines()
        assert lines == [*({"tag": tag, "i": i} for i in range(n)), {"done": n}]


# -- LitServe -------------------------------------------------------------------------------------


def test_litapi_errors_have_litserve_shape_and_its_timeout_rule(harness: Harness) -> None:
    _, api, ready = harness.serve(app("worker_lit_apps:LitSlow"))
    assert ready.litserve is True
    ok = api.answer(api.send({"input": 1}))
    assert ok.json() == {"input": 1, "worker_id": "0"}  # LITSERVE_WORKER_ID: the slot
    boom = api.answer(api.send({"boom": 1}))
    assert (boom.status, boom.json()) == (500, {"detail": "Internal server error"})
    bad = api.answer(api.send(b"{nope"))  # LitServe's API process: 500 for a body not JSON
    assert (bad.status, bad.json()) == (500, {"detail": "Internal server error"})
    # Its deadline passes while predict runs: it runs to completion (LitServe's rule) ...
    slow = api.send({"input": "slow", "sleep": 2.0}, deadline=time.monotonic() + 1.0)
    # ... while this one's deadline passes before predict starts: 504.
    late = api.send({"input": "late"}, deadline=time.monotonic() + 1.0)
    assert api.answer(slow).json()["input"] == "slow"
    expired = api.answer(late)
    assert (expired.status, expired.json()) == (504, {"detail": "Request timed out"})


def test_litapi_served_unchanged(harness: Harness) -> None:
    _, api, _ = harness.serve(app("lit_apps:SimpleStreamAPI"), stream=True)
    a = api.answer(api.send({"input": "Hello"}))
    expected = "".join(json.dumps({"output": f"{i}: Hello"}) + "\n" for i in range(3))
    assert a.body.decode() == expected


@pytest.mark.parametrize(
    ("target", "options", "body", "expected"),
    [
        ("lit_apps:InferencePipeline", {}, {"input": 4}, [{"output": 80}]),
        ("lit_apps:SimpleLitAPI", {}, {"input": 3}, [{"output": 9, "device": "cpu",
                                                      "setup_device": "cpu"}]),
        ("lit_apps:SimpleBatchedAPI", {"max_batch_size": 4}, {"input": 3},
         [{"output": 9.0, "batch_size": 1}]),
        ("lit_apps:BatchedStreamAPI", {"max_batch_size": 4, "stream": True}, {"input": "x"},
         [{"output": f"x-{i}/1"} for i in range(3)]),
    ],
)  # fmt: skip
def test_litapis_from_litserves_examples(
    harness: Harness, target: str, options: dict[str, Any], body: Any, expected: Any
) -> None:
    _, api, _ = harness.serve(app(target), **options)
    a = api.answer(api.send(body))
    assert a.status == 200, a.body
    assert a.lines() == expected


def test_litapi_openai_spec(harness: Harness) -> None:
    _, api, _ = harness.serve(app("lit_apps:OpenAIWithUsageEncodeResponse"), spec="openai")
    req = {"model": "m", "messages": [{"role": "user", "content": "10"}]}
    done = api.answer(api.send(req, route="chat")).json()
    assert done["choices"][0]["message"]["content"] == "10 + 6 is equal to 16."
    assert done["usage"] == {"prompt_tokens": 25, "completion_tokens": 10, "total_tokens": 35}
    streamed = api.answer(api.send({**req, "stream": True}, route="chat"))
    assert streamed.body.endswith(b"data: [DONE]\n\n")


def test_litapi_response_object_and_validation(harness: Harness) -> None:
    _, api, _ = harness.serve(app("lit_apps:TypedAPI"))
    assert api.answer(api.send({"name": "pen", "count": 2})).json() == {
        "name": "pen",
        "doubled": 4,
    }
    invalid = api.answer(api.send({"name": "pen"}))
    assert invalid.status == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "count"]
    png = api.answer(api.send({"name": "pen", "count": 0}))
    assert (png.status, png.reply.content_type, png.body) == (200, "image/png", b"\x89PNG...")


def test_openai_chat_route(harness: Harness) -> None:
    _, api, _ = harness.serve(app("chat:Chat"), spec="openai")
    req = {"model": "m1", "messages": [{"role": "user", "content": "hello big world"}]}
    whole = api.answer(api.send(req, route="chat"))
    assert whole.status == 200 and whole.reply.content_type == "application/json"
    done = whole.json()
    assert done["object"] == "chat.completion"
    assert done["choices"][0]["message"]["content"] == "[m1 t=None max=None] hello big world"
    streamed = api.answer(api.send({**req, "stream": True}, route="chat"))
    assert streamed.reply.content_type == "text/event-stream"
    events = streamed.body.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    bad = api.answer(api.send({"messages": []}, route="chat"))
    assert bad.status == 400 and bad.json()["error"]["param"] == "messages"
    crash = {"messages": [{"role": "user", "content": "crash"}]}
    err = api.answer(api.send(crash, route="chat"))
    assert err.status == 500 and err.json()["error"]["type"] == "server_error"
    assert "on purpose" not in err.body.decode()


# -- the control link -------------------------------------------------------------------------


def test_metrics_and_heartbeats_reach_the_supervisor(harness: Harness) -> None:
    _, api, _ = harness.serve(app("worker_apps:Echo"))
    for _ in range(3):
        api.answer(api.send({"input": 1}))
    names: dict[str, list[str]] = {}
    deadline = time.monotonic() + WAIT
    while "ferryman_batch_size" not in names or "ferryman_queue_duration_seconds" not in names:
        assert time.monotonic() < deadline
        m = harness.sup.wait(p.Metrics)
        for name, labels, counts, _total in m.histograms:
            names[name] = labels
            assert sum(counts) >= 1
    assert names["ferryman_batch_size"] == [MODEL]
    assert names["ferryman_queue_duration_seconds"] == [MODEL]
    assert names["ferryman_predict_duration_seconds"] == [MODEL]
    hb = harness.sup.wait(p.Heartbeat, pred=lambda h: h.served >= 3)
    assert hb.in_flight == 0


def test_heartbeats_stop_while_synchronous_code_hangs(harness: Harness, tmp_path: Path) -> None:
    _, api, _ = harness.serve(app("worker_apps:Batched"), max_batch_size=2)
    harness.sup.wait(p.Heartbeat)
    mark = tmp_path / "started"
    hung = api.send({"input": "hung", "sleep": 3.0, "mark": str(mark)})
    deadline = time.monotonic() + WAIT
    while not mark.exists():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.3)
    harness.sup.drain()  # what was sent before predict started
    silent = harness.sup.collect(1.5)  # a live loop sends one a second
    assert not [m for m in silent if isinstance(m, p.Heartbeat)]
    assert api.answer(hung).json()["input"] == "hung"
    assert harness.sup.wait(p.Heartbeat, pred=lambda h: h.served >= 1)  # and they resume


def test_callbacks_run_around_predict(harness: Harness, tmp_path: Path) -> None:
    events = tmp_path / "events"
    target = f"{APPS / 'context.py'}:WithContext"
    api = harness.api()
    worker = harness.spawn(target, [api], env={"FERRYMAN_TEST_EVENTS": str(events)})
    api.wait_dealer(p.WorkerReady)
    for _ in range(2):
        assert api.answer(api.send({"x": 1})).status == 200
    assert [line.split()[1] for line in events.read_text().splitlines()] == [
        "start", "before", "after", "before", "after",
    ]  # fmt: skip
    assert "a broken hook" in worker.log()  # logged; the requests still succeeded


def test_endpoints_add_and_remove_api_processes(harness: Harness) -> None:
    worker, a0, _ = harness.serve(app("worker_apps:Echo"))
    a1 = harness.api("a1.1", 1)
    harness.sup.endpoints([a0, a1])
    a1.wait_dealer(p.WorkerReady)
    assert a1.answer(a1.send({"input": "via a1"})).json()["input"] == "via a1"
    harness.sup.endpoints([a1])  # a0 is gone: the worker disconnects from it
    deadline = time.monotonic() + WAIT
    while True:
        try:
            a0.send({"input": "nobody answers this"})
        except zmq.ZMQError as e:  # ROUTER_MANDATORY: the worker's DEALER is gone
            assert e.errno == zmq.EHOSTUNREACH
            break
        assert time.monotonic() < deadline, "still connected to a0"
        time.sleep(0.02)
    assert a1.answer(a1.send({"input": 2})).json()["input"] == 2
    assert worker.proc.poll() is None


def test_drain_on_sigterm(harness: Harness) -> None:
    worker, api, _ = harness.serve(app("worker_apps:Echo"))
    held = api.send({"input": "held", "sleep": 0.3})
    time.sleep(0.05)
    worker.proc.send_signal(signal.SIGTERM)
    api.wait_dealer(p.WorkerLeaving)
    # Sent before the API process heard of the leaving: still answered.
    late = api.send({"input": "late"})
    assert api.answer(held).json()["input"] == "held"
    assert api.answer(late).json()["input"] == "late"
    assert worker.proc.poll() is None  # waiting for our LeaveAck
    api.leave_ack()
    assert worker.wait_exit() == 0
    assert "worker drained" in worker.log()


def test_drain_without_leave_ack_ends_after_a_while(harness: Harness) -> None:
    worker, api, _ = harness.serve(app("worker_apps:Echo"))
    worker.proc.send_signal(signal.SIGTERM)
    api.wait_dealer(p.WorkerLeaving)
    assert worker.wait_exit() == 0
    assert "LeaveAck" in worker.log()


# -- start-up failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "options", "stage", "needle"),
    [
        (app("broken_import:Broken"), {}, "import", "this_module_does_not_exist"),
        (app("worker_apps:SetupFails"), {}, "setup", "cannot load weights"),
        (app("worker_apps:GeneratorWithoutStream"), {}, "import", "--stream"),
        (app("worker_apps:Nope"), {}, "import", "no attribute 'Nope'"),
        (app("worker_litserve:unknown_spec"), {}, "import", "spec=MySpec is not supported"),
    ],
)
def test_fatal_start_up_errors(
    harness: Harness, target: str, options: dict[str, Any], stage: str, needle: str
) -> None:
    worker = harness.spawn(target, **options)
    fatal = harness.sup.wait(p.Fatal)
    assert fatal.stage == stage
    assert needle in fatal.error + fatal.traceback
    assert worker.wait_exit() == 3


def test_worker_dies_with_its_supervisor(tmp_path: Path) -> None:
    """The lifeline: a worker whose parent is not the supervisor it was told exits at once."""
    spec = p.ChildSpec(
        role="worker",
        slot=0,
        name="m.w0.1",
        supervisor_pid=1,  # not our pid: this worker's parent is not "its supervisor"
        control=f"ipc://{tmp_path}/control",
        run_dir=str(tmp_path),
        board=str(tmp_path / "board"),
        server=ServerOptions(),
        worker=p.WorkerSpec(
            model=ModelSpec(name=MODEL, app=app("worker_apps:Echo"), options=ModelOptions())
        ),
    )
    env = {**os.environ, p.CHILD_ENV: msgspec.json.encode(spec).decode()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferryman.workers.main"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.wait(WAIT) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
