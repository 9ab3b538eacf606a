"""The wire: every message that crosses a process boundary, how it is framed, and the sockets.

Messages are msgspec Structs (tagged unions, msgpack). Two planes, two sets of sockets:

data plane (API process <-> worker; the supervisor is not on it)
  API ROUTER  <- worker DEALER : WorkerReady, WorkerLeaving, WorkerHealth one frame
  API ROUTER  -> worker DEALER : Work [header, body], Cancel, LeaveAck     two frames
  API PULL    <- worker PUSH   : Reply [header, body], Chunk [header, body] two frames

control plane (child <-> supervisor)
  supervisor ROUTER <- child DEALER : Hello, Ready, Heartbeat, Fatal, Metrics
  supervisor ROUTER -> child DEALER : Endpoints, WorkerGone, Routes
  (stopping a child is a signal, SIGTERM, not a message: it works even when its loop is stuck)

The two-frame rule: every data-plane message towards a worker and towards an API process's PULL
is exactly two frames, a header and a body (empty where there is none), so that both ends read it
with two plain recv calls: pyzmq's recv_multipart probes RCVMORE per frame, which costs more than
the recv itself. Bodies travel as their own frame and are never re-encoded: a JSON request body is
decoded once, in the worker, and a response body is encoded once, in the worker.

Invariant of the data plane: every Work gets exactly one final message (a Reply or Chunk with
more=False), even when it was cancelled or expired, so that in-flight accounting stays exact.
"""

from __future__ import annotations

from typing import Any

import msgspec
import zmq

from ferryman.options import ModelSpec, ServerOptions

# -- data plane ----------------------------------------------------------------------------------


class Work(msgspec.Struct, tag="work", array_like=True):
    id: int
    route: str  # "predict" (the model's api_path), "chat", "embeddings"
    # time.monotonic() (system-wide on Linux) after which the answer is useless; 0.0: no limit.
    # Set once, when the API process takes the request.
    deadline: float
    # The HTTP request as a worker that asked for it (WorkerReady.context) sees it.
    headers: list[tuple[bytes, bytes]] | None = None
    query: bytes = b""
    # The request's Content-Type, for a worker that renders LitServe's conventions (a form body
    # is parsed as a form there); empty for the others, which read every body as JSON.
    content_type: bytes = b""


class Cancel(msgspec.Struct, tag="cancel", array_like=True):
    id: int


class LeaveAck(msgspec.Struct, tag="leave_ack", array_like=True):
    pass


class WorkerReady(msgspec.Struct, tag="ready", array_like=True):
    worker: str  # "embed.w3.17": model, slot 3, generation 17; also the DEALER's identity
    model: str
    slot: int
    pid: int
    device: str
    cell: int  # its column on the load board (board.py)
    capacity: int  # requests it works on at once: its batch size, or more for an async API
    window: int  # requests it wants to hold: capacity and the next batch forming
    context: bool = False  # the user's code takes the request (headers, query): send them
    # LitServe's conventions for a LitAPI: errors as {"detail": ...}, and the timeout counts
    # only the wait before predict starts.
    litserve: bool = False
    # What the API's health() said after setup (LitServe's /health consults it); WorkerHealth
    # tells each change.
    healthy: bool = True


class WorkerLeaving(msgspec.Struct, tag="leaving", array_like=True):
    pass


class WorkerHealth(msgspec.Struct, tag="health", array_like=True):
    """The API's health() changed its answer (sent by a worker that polls it; LitServe's
    /health is 503 while any worker's says false)."""

    healthy: bool


class Reply(msgspec.Struct, tag="reply", array_like=True):
    id: int
    status: int
    content_type: str
    more: bool = False  # a stream: Chunks follow
    headers: list[tuple[str, str]] | None = None  # extra response headers (a Response object's)


class Chunk(msgspec.Struct, tag="chunk", array_like=True):
    id: int
    more: bool


# -- control plane -------------------------------------------------------------------------------


class ApiEndpoint(msgspec.Struct, array_like=True):
    name: str  # "a0.4"
    requests: str  # ipc:// address of the API process's ROUTER
    replies: str  # ipc:// address of its PULL
    row: int  # its row on the load board


class ModelRoute(msgspec.Struct, kw_only=True):
    """What an API process needs to route to a model; it never sees the model's code."""

    name: str
    api_path: str
    spec: str | None = None
    timeout: float | None = 30.0
    max_payload_size: int | None = None
    # The model's workers the supervisor has seen ready: each connects to every API process. A
    # request that finds none of them here yet (this process or they just started) waits for
    # them rather than being refused.
    workers: list[str] = []
    # For GET /info only.
    app: str = ""
    devices: list[str] = []
    options: dict[str, Any] = {}


class Hello(msgspec.Struct, tag="hello", array_like=True):
    endpoint: ApiEndpoint | None = None  # API processes: where workers connect


class Ready(msgspec.Struct, tag="ready", array_like=True):
    pass


class Heartbeat(msgspec.Struct, tag="hb", array_like=True):
    in_flight: int
    served: int
    # API processes: the workers they route to. A model is ready only through workers that every
    # API process knows, so that readiness on the admin port never runs ahead of the API port.
    workers: list[str] | None = None


class Fatal(msgspec.Struct, tag="fatal", array_like=True):
    stage: str  # "import", "setup", "run"
    error: str  # one line
    traceback: str


class Metrics(msgspec.Struct, tag="metrics", array_like=True):
    """What a child counted since its last Metrics: (name, label values, amount) and
    (name, label values, bucket counts, sum). The supervisor adds them to its totals."""

    counters: list[tuple[str, list[str], float]]
    histograms: list[tuple[str, list[str], list[int], float]]


class Endpoints(msgspec.Struct, tag="endpoints", array_like=True):
    apis: list[ApiEndpoint]


class WorkerGone(msgspec.Struct, tag="gone", array_like=True):
    worker: str
    reason: str


class Routes(msgspec.Struct, tag="routes", array_like=True):
    models: list[ModelRoute]


ToWorker = Work | Cancel | LeaveAck
FromWorkerDealer = WorkerReady | WorkerLeaving | WorkerHealth
FromWorkerPush = Reply | Chunk
ToSupervisor = Hello | Ready | Heartbeat | Fatal | Metrics
FromSupervisor = Endpoints | WorkerGone | Routes

# zmq's flags as plain ints: pyzmq's Flag enums cost an enum operation per `|` on the hot path.
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)
SNDMORE_NOBLOCK = SNDMORE | NOBLOCK
EMPTY = b""

encode = msgspec.msgpack.Encoder().encode
to_worker = msgspec.msgpack.Decoder(ToWorker).decode
from_worker_dealer = msgspec.msgpack.Decoder(FromWorkerDealer).decode
from_worker_push = msgspec.msgpack.Decoder(FromWorkerPush).decode
to_supervisor = msgspec.msgpack.Decoder(ToSupervisor).decode
from_supervisor = msgspec.msgpack.Decoder(FromSupervisor).decode


# -- sockets and framing ------------------------------------------------------------------------

Context = zmq.Context  # a process's one ZeroMQ context
Socket = zmq.Socket


def make_socket(
    ctx: zmq.Context[Any],
    kind: int,
    *,
    identity: str | None = None,
    linger_ms: int = 0,
    bind: str | None = None,
    connect: str | None = None,
) -> zmq.Socket[bytes]:
    """Every socket of ferryman, with what each needs.

    No high-water marks: every queue a socket feeds is bounded where the work is counted
    (max_queue in the API process, the window per worker), and a message dropped at a mark would
    break the one-final-message invariant. Linger 0 by default: a process that exits has nothing
    left to say, except where a caller says otherwise (last answers, a Fatal before exit).
    """
    sock: zmq.Socket[bytes] = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    if kind == zmq.ROUTER:
        # A message to a peer that is gone raises (EHOSTUNREACH) instead of vanishing.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity.encode())
    if bind is not None:
        sock.bind(bind)
    if connect is not None:
        sock.connect(connect)
    return sock


def send_pair(sock: zmq.Socket[bytes], header: bytes, body: bytes, copy: bool = True) -> None:
    """A two-frame data-plane message (DEALER/PUSH side)."""
    sock.send(header, SNDMORE)
    sock.send(body, 0, copy=copy)


def send_routed_pair(sock: zmq.Socket[bytes], ident: bytes, header: bytes, body: bytes) -> None:
    """A two-frame data-plane message through a ROUTER, to the peer `ident`. Raises ZMQError
    (EHOSTUNREACH) before anything is queued when the peer is gone."""
    sock.send(ident, SNDMORE_NOBLOCK)
    sock.send(header, SNDMORE_NOBLOCK)
    sock.send(body, NOBLOCK)


def recv_pair(sock: zmq.Socket[bytes]) -> tuple[bytes, bytes] | None:
    """(header, body) of a two-frame message, or None when nothing is queued."""
    try:
        header = sock.recv(NOBLOCK)
    except zmq.Again:
        return None
    return header, sock.recv(0)  # a message's frames arrive together


# -- what a child is told at spawn, through one environment variable ------------------------------

CHILD_ENV = "FERRYMAN_CHILD"


class WorkerSpec(msgspec.Struct, kw_only=True):
    """What an inference worker runs: its model, its device, where its column of the board is."""

    model: ModelSpec
    device: str = "cpu"  # what setup() is told: "cpu" or "cuda:0"
    physical_device: str = "cpu"  # what the operator sees: "cuda:2"
    cell: int = 0
    apis: list[ApiEndpoint] = []  # API processes to connect to at start


class ApiSpec(msgspec.Struct, kw_only=True):
    """What an API process serves: the socket it inherits, where it binds, the models' routes."""

    listen_fd: int
    endpoint: ApiEndpoint
    routes: list[ModelRoute]
    expect_workers: int = 0  # ready workers to wait for before it accepts connections


class ChildSpec(msgspec.Struct, kw_only=True):
    role: str  # "api" or "worker"
    slot: int
    name: str  # routing identity: "a0.4" / "embed.w3.17"
    supervisor_pid: int
    control: str  # ipc:// address of the supervisor's ROUTER
    run_dir: str
    board: str  # path of the load board file
    server: ServerOptions
    api: ApiSpec | None = None
    worker: WorkerSpec | None = None


def encode_spec(spec: ChildSpec) -> str:
    return msgspec.json.encode(spec).decode()


def decode_spec(raw: str) -> ChildSpec:
    return msgspec.json.decode(raw, type=ChildSpec)
