"""Every message that crosses a process boundary, as msgspec Structs (tagged unions, msgpack).

Two planes, two sets of sockets:

data plane (API process <-> worker, the supervisor is not on it)
  API ROUTER  <- worker DEALER : WorkerReady, WorkerLeaving          [header]
  API ROUTER  -> worker DEALER : Work [header, body], Cancel, LeaveAck
  API PULL    <- worker PUSH   : Reply [header, body], Chunk [header, body]

control plane (child <-> supervisor)
  supervisor ROUTER <- child DEALER : Hello, Ready, Heartbeat, Fatal
  supervisor ROUTER -> child DEALER : Endpoints, WorkerGone
  (stopping a child is a signal, SIGTERM, not a message: it works even when its loop is stuck)

Bodies travel as their own raw frame so they are never re-encoded: a JSON request body is decoded
once, in the worker, and a response body is encoded once, in the worker.

Data-plane messages to a worker and to an API process's PULL are always exactly two frames, a
header and a body (empty where there is none), so that both ends read them with two plain recv calls
(READY and LEAVING, rare, are one frame, read with recv_multipart):
pyzmq's recv_multipart probes RCVMORE per frame, which costs more than the recv itself.

Invariant of the data plane: every Work gets exactly one final message (a Reply or Chunk with
more=False), even when it was cancelled or expired, so that in-flight accounting stays exact.
"""

from __future__ import annotations

import msgspec
import zmq

# -- data plane ----------------------------------------------------------------------------------


class Work(msgspec.Struct, tag="work", array_like=True):
    id: int
    route: str  # "predict" or a spec route such as "chat"
    deadline: float  # time.monotonic() (system-wide on Linux) after which the answer is useless
    # The HTTP headers as ASGI has them, sent only to a worker that asked (WorkerReady.context).
    headers: list[tuple[bytes, bytes]] | None = None


class Cancel(msgspec.Struct, tag="cancel", array_like=True):
    id: int


class LeaveAck(msgspec.Struct, tag="leave_ack", array_like=True):
    pass


class WorkerReady(msgspec.Struct, tag="ready", array_like=True):
    worker: str  # "w3.17": slot 3, generation 17; also the DEALER's routing identity
    slot: int
    pid: int
    device: str
    context: bool = False  # the user's code takes a per-request context: send headers
    max_batch_size: int = 1  # what the worker really batches (a LitAPI may set its own)


class WorkerLeaving(msgspec.Struct, tag="leaving", array_like=True):
    worker: str


class Reply(msgspec.Struct, tag="reply", array_like=True):
    id: int
    status: int
    content_type: str
    more: bool = False  # a stream: Chunks follow
    queue_s: float = 0.0  # time the request waited in the worker before predict
    predict_s: float = 0.0
    batch_size: int = 1


class Chunk(msgspec.Struct, tag="chunk", array_like=True):
    id: int
    more: bool


# -- control plane -------------------------------------------------------------------------------


class ApiEndpoint(msgspec.Struct, array_like=True):
    name: str  # "a0.4"
    requests: str  # ipc:// address of the API process's ROUTER
    replies: str  # ipc:// address of its PULL


class Hello(msgspec.Struct, tag="hello", array_like=True):
    role: str
    slot: int
    pid: int
    endpoint: ApiEndpoint | None = None  # API processes: where workers connect


class Ready(msgspec.Struct, tag="ready", array_like=True):
    pass


class Heartbeat(msgspec.Struct, tag="hb", array_like=True):
    in_flight: int
    served: int


class Fatal(msgspec.Struct, tag="fatal", array_like=True):
    stage: str  # "import", "setup", "run"
    error: str  # one line
    traceback: str


class Endpoints(msgspec.Struct, tag="endpoints", array_like=True):
    apis: list[ApiEndpoint]


class WorkerGone(msgspec.Struct, tag="gone", array_like=True):
    worker: str
    reason: str


ToWorker = Work | Cancel | LeaveAck
FromWorkerDealer = WorkerReady | WorkerLeaving
FromWorkerPush = Reply | Chunk
ToSupervisor = Hello | Ready | Heartbeat | Fatal
FromSupervisor = Endpoints | WorkerGone

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


# -- what a child is told at spawn, through one environment variable ------------------------------

CHILD_ENV = "FERRYMAN_CHILD"


class ChildSpec(msgspec.Struct):
    role: str  # "api" or "worker"
    slot: int
    name: str  # routing identity: "a0.4" / "w3.17"
    supervisor_pid: int
    control: str  # ipc:// address of the supervisor's ROUTER
    run_dir: str
    options: dict[str, object]
    device: str = "cpu"  # what the worker's setup() is told: "cpu" or "cuda:0"
    physical_device: str = "cpu"  # what the operator sees: "cuda:2"
    listen_fd: int = -1  # API processes: the inherited listening socket
    endpoint: ApiEndpoint | None = None  # API processes: where to bind
    apis: list[ApiEndpoint] = []  # workers: API processes to connect to at start
    expect_workers: int = 0  # API processes: ready workers to wait for before serving
    devices: list[str] = []  # for /info


def encode_spec(spec: ChildSpec) -> str:
    return msgspec.json.encode(spec).decode()


def decode_spec(raw: str) -> ChildSpec:
    return msgspec.json.decode(raw, type=ChildSpec)
