"""ferryman's LitServer stand-in (ferryman/litserve.py), `ferryman serve FILE.py`, `python FILE.py`
with `import ferryman.litserve as ls`, and `ferryman dockerize`.

In-process tests check what `LitServer(...)` / `.run(...)` hand the supervisor and what they
refuse (nothing is exec'd: run_launch is replaced); subprocess tests check the command line's
exit statuses and one-line errors, and a real server for the two ways of running a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import litserve
import pytest
from conftest import ROOT, free_port, wait_for
from litserve_harness import started, wait_ready

import ferryman.litserve as fls
from ferryman.cli import _flags_only
from ferryman.config import build_config
from ferryman.options import LitServerOptions

LITSERVE_APPS = ROOT / "tests" / "litserve" / "apps"


class Square(litserve.LitAPI):
    def setup(self, device: Any) -> None:
        self.model = lambda x: x**2

    def decode_request(self, request: Any) -> Any:
        return request["input"]

    def predict(self, x: Any) -> Any:
        return self.model(x)

    def encode_response(self, output: Any) -> Any:
        return {"output": output}


class Chat(litserve.LitAPI):
    def predict(self, x: Any) -> Any:
        yield "hi"


class Embed(litserve.LitAPI):
    def predict(self, x: Any) -> Any:
        return [[0.0, 1.0]]


class Hook(litserve.Callback):
    def on_before_predict(self, lit_api: Any) -> None:
        pass


class FileLogger(litserve.Logger):
    def process(self, key: Any, value: Any) -> None:
        pass


class Unpicklable(litserve.Logger):
    def __init__(self) -> None:
        super().__init__()
        self.lock = __import__("threading").Lock()

    def process(self, key: Any, value: Any) -> None:
        pass


class CustomMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    """LitServer.run() without the exec: what it would start the supervisor with."""
    got: list[dict[str, Any]] = []
    monkeypatch.setattr(fls, "run_launch", got.append)
    monkeypatch.chdir(tmp_path)  # run() writes client.py into the current directory
    monkeypatch.delenv("FERRYMAN_CLI_ARGS", raising=False)
    monkeypatch.delenv("LIT_SERVER_API_KEY", raising=False)
    yield got
    for launch in got:
        for m in launch["models"]:
            with contextlib.suppress(OSError):
                os.unlink(m["instance_file"])


def test_names_are_litserves() -> None:
    assert fls.LitAPI is litserve.LitAPI
    assert fls.OpenAISpec is litserve.OpenAISpec
    assert fls.OpenAIEmbeddingSpec is litserve.OpenAIEmbeddingSpec
    assert fls.Callback is litserve.Callback and fls.Logger is litserve.Logger
    assert fls.Request is litserve.Request and fls.Response is litserve.Response
    assert fls.test_examples is litserve.test_examples
    assert fls.specs is litserve.specs  # any other name of the package
    assert fls.LitServer is not litserve.LitServer
    with pytest.raises(AttributeError):
        _ = fls.no_such_name


@pytest.mark.filterwarnings("ignore:Custom API path detected")
def test_launch_of_several_apis(launched: list[dict[str, Any]]) -> None:
    a, b = Square(api_path="/a"), Square(api_path="/b", max_batch_size=4, batch_timeout=0.01)
    chat = Chat(spec=litserve.OpenAISpec())
    emb = Embed(spec=litserve.OpenAIEmbeddingSpec(), api_path="/v2/embeddings")
    server = fls.LitServer(
        [a, b, chat, emb],
        accelerator="cpu",
        devices=4,  # LitServe ignores devices on the CPU
        workers_per_device={"/b": 2},
        timeout=False,
        max_payload_size="10MB",
        model_metadata={"v": 1},
        callbacks=[Hook()],
        loggers=[FileLogger(), Unpicklable()],
        track_requests=True,
        middlewares=[(__import__("starlette.middleware.cors").middleware.cors.CORSMiddleware, {})],
    )
    server.run(port=9001, num_api_servers=3, log_level="critical")
    (launch,) = launched
    assert launch["options"] == {"host": "0.0.0.0", "port": 9001, "log_level": "error"} | {
        "api_servers": 3
    }
    names = [m["name"] for m in launch["models"]]
    assert names == ["square", "square-2", "chat", "embed"]
    code = [m["code_options"] for m in launch["models"]]
    assert code[0]["api_path"] == "/a" and code[1]["api_path"] == "/b"
    assert [c["workers_per_device"] for c in code] == [1, 2, 1, 1]
    assert all(c["timeout"] is None and c["accelerator"] == "cpu" for c in code)
    assert all("devices" not in c for c in code)
    assert all(c["max_payload_size"] == 10 * 2**20 for c in code)
    assert code[1]["max_batch_size"] == 4 and code[1]["batch_timeout"] == 0.01
    assert code[2]["spec"] == "openai" and code[2]["stream"] is True
    assert code[3]["spec"] == "openai_embedding"
    assert "api_path" not in code[2] and "api_path" not in code[3]
    opts = launch["litserve"]
    assert [(r["path"], r["route"]) for r in opts["routes"]] == [
        ("/a", "predict"),
        ("/b", "predict"),
        ("/v1/chat/completions", "chat"),
        ("/v2/embeddings", "embeddings"),
    ]
    assert opts["gzip"] is False  # the chat API streams
    assert opts["model_metadata"] == {"v": 1} and opts["track_requests"] is True
    assert opts["info"] == {
        "workers_per_device": {"/b": 2},
        "timeout": False,
        "max_payload_size": "10MB",
    }
    assert opts["middlewares"] == [("starlette.middleware.cors:CORSMiddleware", {})]
    paths = json.loads(opts["openapi"])["paths"]
    assert {"/a", "/b", "/v1/chat/completions", "/v2/embeddings", "/health"} <= set(paths)
    # The workers get the LitAPIs as built, with the server's callbacks and loggers attached;
    # an unpicklable logger goes as LitServe's proxy (re-created with no arguments).
    with open(launch["models"][0]["instance_file"], "rb") as f:
        api = pickle.load(f)
    assert isinstance(api, Square) and api._loop == "auto"
    assert [type(c).__name__ for c in getattr(api, fls.CALLBACKS_ATTR)] == ["Hook"]
    kinds = [type(x).__name__ for x in getattr(api, fls.LOGGERS_ATTR)]
    assert kinds == ["FileLogger", "_LoggerProxy"]
    # What the API processes get passes the supervisor's own parsing.
    config = build_config(None, {}, [], {**launch, "options": launch["options"]})
    assert isinstance(config.server.litserve, LitServerOptions)
    assert [m.api_path for m in config.models][:2] == ["/a", "/b"]


def test_run_writes_client_py_with_the_flag_port(
    launched: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FERRYMAN_CLI_ARGS", json.dumps(["--port", "9555", "--api-servers", "1"]))
    fls.LitServer(Square()).run(port=8000)
    text = (tmp_path / "client.py").read_text()
    assert "http://127.0.0.1:9555/predict" in text
    assert text.startswith("# This file is auto-generated by LitServe.")
    (tmp_path / "client.py").write_text("mine")
    fls.LitServer(Square()).run(port=8000, generate_client_file=True)
    assert (tmp_path / "client.py").read_text() == "mine"  # never overwritten


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"lit_api": []}, "lit_apis must not be an empty iterable"),
        ({"accelerator": "tpu"}, "accelerator must be one of"),
        ({"accelerator": "mps"}, "accelerator='mps' is not supported by ferryman"),
        ({"accelerator": "cuda", "devices": [[0, 1]]}, "several devices per worker"),
        ({"healthcheck_path": "health"}, "healthcheck_path must start with '/'"),
        ({"info_path": "info"}, "info_path must start with '/'"),
        ({"model_metadata": {"x": object()}}, "model_metadata must be JSON serializable"),
        ({"workers_per_device": [1, 2]}, "workers_per_device list length must match"),
        ({"workers_per_device": {"/nope": 2}}, "unknown api_path values: ['/nope']"),
        ({"middlewares": "x"}, "middlewares must be a list"),
        ({"middlewares": [CustomMiddleware]}, "middlewares=[CustomMiddleware]"),
        ({"callbacks": [object()]}, "Invalid callback type"),
        ({"loggers": "x"}, "loggers must be a list or an instance of litserve.Logger"),
    ],
)
def test_litserver_refuses(kwargs: dict[str, Any], named: str) -> None:
    kwargs.setdefault("lit_api", Square())
    with pytest.raises(fls.LitServerError) as e:
        fls.LitServer(**kwargs)
    assert named in str(e.value)


def test_refuses_what_the_api_process_cannot_run() -> None:
    logger = FileLogger()
    logger.mount("/metrics", lambda scope, receive, send: None)
    with pytest.raises(fls.LitServerError, match=r"FileLogger\.mount\('/metrics'"):
        fls.LitServer(Square(), loggers=[logger])

    class MySpec(litserve.specs.base.LitSpec):
        pass

    with pytest.raises(fls.LitServerError, match=r"spec=MySpec\(\)"):
        fls.LitServer(Square(spec=MySpec()))
    cors = __import__("starlette.middleware.cors").middleware.cors.CORSMiddleware
    with pytest.raises(fls.LitServerError, match="plain JSON"):
        fls.LitServer(Square(), middlewares=[(cors, {"allow_origins": {"a"}})])


def test_litserver_app_is_refused_by_name() -> None:
    server = fls.LitServer(Square())
    with pytest.raises(fls.LitServerError, match=r"LitServer\.app"):
        server.app.add_api_route("/x", lambda: None)


def test_litservers_own_checks_run_on_a_copy() -> None:
    """pre_setup's errors (LitServe's words), without touching the instance the workers get."""
    api = Square(stream=True)  # predict is not a generator
    with pytest.raises(fls.LitServerError, match="When `stream=True` both"):
        fls.LitServer(api)
    ok = Square()
    fls.LitServer(ok)
    assert ok._loop == "auto" and ok._default_unbatch is None


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"port": 80}, "port must be a value from 1024 to 65535 but got 80"),
        ({"host": "10.0.0.1"}, "host must be '0.0.0.0', '127.0.0.1', or '::'"),
        ({"ssl_keyfile": "k.pem", "ssl_certfile": "c.pem"}, ".run(ssl_certfile=...)"),
        ({"ssl_keyfile": "k.pem"}, "terminate TLS in front of it"),
        ({"timeout_keep_alive": 5}, ".run(timeout_keep_alive=...)"),
        ({"api_server_worker_type": "fiber"}, "Invalid value for api_server_worker_type"),
        ({"num_api_servers": 0}, "num_api_servers must be greater than 0"),
        ({"log_level": "loud"}, "log_level='loud'"),
    ],
)
def test_run_refuses(launched: list[dict[str, Any]], kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(fls.LitServerError) as e:
        fls.LitServer(Square()).run(**kwargs)
    assert named in str(e.value)
    assert not launched


def test_run_refuses_tls_from_the_environment(
    launched: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIGHTNING_CERT_PEM", "eA==")
    monkeypatch.setenv("LIGHTNING_KEY_FILE", "eA==")
    with pytest.raises(fls.LitServerError, match="LIGHTNING_CERT_PEM"):
        fls.LitServer(Square()).run()
    assert not launched


def test_flags_only() -> None:
    raw = ["serve", "--port", "9", "app.py", "--stream", "--api-path=/x"]
    assert _flags_only(raw, "app.py") == ["--port", "9", "--stream", "--api-path=/x"]
    # A flag's value that happens to equal the file's name stays a value.
    assert _flags_only(["serve", "--config", "app.py", "app.py"], "app.py") == [
        "--config",
        "app.py",
    ]


# -- the command line ---------------------------------------------------------------------------


def _ferryman(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "ferryman", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ferryman: error:")]


def test_serve_file_exit_statuses(tmp_path: Path) -> None:
    (tmp_path / "nothing.py").write_text("x = 1\n")
    (tmp_path / "broken.py").write_text("raise RuntimeError('no model here')\n")
    (tmp_path / "refused.py").write_text(
        textwrap.dedent(
            """
            import litserve as ls

            class Mw:
                def __init__(self, app):
                    self.app = app

            if __name__ == "__main__":
                ls.LitServer(ls.test_examples.SimpleLitAPI(), middlewares=[Mw]).run()
            """
        )
    )
    r = _ferryman("serve", "nothing.py", cwd=tmp_path)
    assert r.returncode == 2 and len(_errors(r.stderr)) == 1
    assert "ran to its end without starting a server" in r.stderr
    r = _ferryman("serve", "broken.py", cwd=tmp_path)
    assert r.returncode == 3
    assert "Traceback" in r.stderr and "RuntimeError: no model here" in r.stderr
    r = _ferryman("serve", "refused.py", "--port", "9000", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "middlewares=[Mw]" in r.stderr
    assert not (tmp_path / "client.py").exists()  # refused before run() wrote anything
    r = _ferryman("serve", "missing.py", cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = _ferryman("serve", "nothing.py", "other.py:X", cwd=tmp_path)
    assert r.returncode == 2 and "give it alone" in r.stderr


@contextlib.contextmanager
def _session(cmd: list[str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server started by `cmd` in its own process group, killed whole at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIT_", "FERRYMAN_"))}
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _answer(url: str, log: Path, proc: subprocess.Popen[bytes]) -> httpx.Response:
    def get() -> httpx.Response | None:
        assert proc.poll() is None, log.read_text()
        try:
            r = httpx.post(url, json={"input": 4.0}, timeout=2)
        except httpx.HTTPError:
            return None
        return r if r.status_code == 200 else None

    result: httpx.Response = wait_for(get, timeout=30)
    return result


def test_python_file_with_the_one_line_switch(tmp_path: Path) -> None:
    """`import ferryman.litserve as ls` and `python server.py`: the process becomes ferryman's
    supervisor (same pid), with the file's run() arguments."""
    port, admin = free_port(), free_port()
    (tmp_path / "server.py").write_text(
        textwrap.dedent(
            f"""
            import ferryman.litserve as ls

            class Square(ls.LitAPI):
                def setup(self, device):
                    self.model = lambda x: x ** 2

                def decode_request(self, request):
                    return request["input"]

                def predict(self, x):
                    return self.model(x)

                def encode_response(self, output):
                    return {{"output": output}}

            if __name__ == "__main__":
                server = ls.LitServer(Square(), accelerator="cpu", model_metadata={{"m": 1}})
                server.run(host="127.0.0.1", port={port}, num_api_servers=1,
                           generate_client_file=False, admin_port={admin}, keep_alive=5)
            """
        )
    )
    # keep_alive is neither LitServe's nor ferryman's: refused by name, one line.
    r = _ferryman("serve", "server.py", cwd=tmp_path)
    assert r.returncode == 2 and ".run(keep_alive=...)" in r.stderr, r.stderr
    assert len(_errors(r.stderr)) == 1 and r.stderr.count("\n") == 1
    text = (tmp_path / "server.py").read_text().replace(", keep_alive=5", "")
    (tmp_path / "server.py").write_text(text)
    log = tmp_path / "log"
    with _session([sys.executable, "server.py"], tmp_path, log) as proc:
        r = _answer(f"http://127.0.0.1:{port}/predict", log, proc)
        assert r.json() == {"output": 16.0}
        assert httpx.get(f"http://127.0.0.1:{port}/info").json()["model"] == {"m": 1}
        # ferryman's own admin_port, given to run(): the supervisor there is the very process
        # `python server.py` started (exec), with one API process as num_api_servers says.
        status = httpx.get(f"http://127.0.0.1:{admin}/v1/status", timeout=5).json()
        assert status["supervisor"]["pid"] == proc.pid
        assert len(status["api_servers"]) == 1
        assert not (tmp_path / "client.py").exists()


def test_serve_file_flags_beat_the_file(serve: Any, tmp_path: Path) -> None:
    """`ferryman serve simple_server.py` with flags: --port beats the file's run(), the
    fixture's --workers-per-device 2 beats LitServer's 1; run()'s host default (LitServe's
    0.0.0.0) applies where no flag says otherwise."""
    s = serve(str(LITSERVE_APPS / "simple_server.py"), cwd=tmp_path)
    assert s.post("/predict", json={"input": 4.0}).json() == {"output": 16.0}
    info = s.get("/info").json()
    assert info["server"]["workers_per_device"] == 2 and info["server"]["timeout"] == 10
    status = s.status()
    assert status["supervisor"]["listen"] == f"0.0.0.0:{s.port}"
    assert len(status["workers"]) == 2
    assert (tmp_path / "client.py").read_text().count(f"127.0.0.1:{s.port}/predict") == 1


def test_api_key_with_several_litapis(tmp_path: Path) -> None:
    """LitServe's rule (LitServer.setup_auth; not recorded): with a list of LitAPIs,
    LIT_SERVER_API_KEY guards every route but those of a LitAPI with its own authorize(), which
    guards its route instead; /, health and info need the key."""
    case = {"file": "apps/auth_multi_api.py", "env": {"LIT_SERVER_API_KEY": "abcd"}}
    with started(case, tmp_path) as server:
        assert wait_ready(server), server.log()
        url = f"http://127.0.0.1:{server.port}"
        body = {"input": 5.0}
        key = {"X-API-Key": "abcd"}
        r = httpx.post(url + "/no-auth", json=body)
        assert (r.status_code, r.json()) == (401, {"detail": "Not authenticated"})
        assert r.headers["www-authenticate"] == "APIKey"
        assert httpx.post(url + "/no-auth", json=body, headers=key).json() == {"output": 25.0}
        r = httpx.post(url + "/needs-auth", json=body, headers={"Authorization": "Bearer alpha"})
        assert r.json() == {"output": 25.0}  # its authorize, not the key
        r = httpx.post(url + "/needs-auth", json=body, headers=key)
        assert (r.status_code, r.json()) == (401, {"detail": "Not authenticated"})
        assert httpx.get(url + "/health").status_code == 401
        assert httpx.get(url + "/health", headers=key).text == "ok"
        assert httpx.get(url + "/openapi.json").status_code == 200  # open, as in LitServe
        assert httpx.get(url + "/ready").status_code == 200  # ferryman's probe stays open


def test_litserver_gpus(serve: Any, tmp_path: Path) -> None:
    """accelerator="gpu", devices=2 on two GPUs (that exist only in CUDA_VISIBLE_DEVICES: no
    worker here touches CUDA): one worker per GPU, and /info lists them LitServe's way."""
    (tmp_path / "gpu.py").write_text(
        textwrap.dedent(
            """
            import litserve as ls

            if __name__ == "__main__":
                api = ls.test_examples.SimpleLitAPI()
                ls.LitServer(api, accelerator="gpu", devices=2).run(port=8000)
            """
        )
    )
    s = serve(
        str(tmp_path / "gpu.py"),
        cwd=tmp_path,
        workers=None,
        accelerator=None,
        env={"CUDA_VISIBLE_DEVICES": "0,1"},
    )
    assert s.get("/info").json()["server"]["devices"] == [["cuda:0"], ["cuda:1"]]
    assert sorted(w["device"] for w in s.status()["workers"]) == ["cuda:0", "cuda:1"]
    assert s.post("/predict", json={"input": 3.0}).json() == {"output": 9.0}


def test_serve_file_with_ferryman_server(serve: Any, tmp_path: Path) -> None:
    """A file that ends in ferryman.Server(...).run(port=8000) runs the same way."""
    s = serve(str(ROOT / "examples" / "doubler.py"), cwd=tmp_path, workers=1)
    assert s.post("/predict", json={"input": 21}).json() == {"output": 42}
    assert s.status()["supervisor"]["listen"].endswith(f":{s.port}")


# -- ferryman dockerize -------------------------------------------------------------------------


def test_dockerize(tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text("import litserve as ls\n")
    r = _ferryman("dockerize", "server.py", "--port", "8080", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "no requirements.txt" in r.stderr
    text = (tmp_path / "Dockerfile").read_text()
    assert "FROM ${FERRYMAN_IMAGE}" in text
    assert f"RUN pip install --no-cache-dir litserve=={litserve.__version__}\n" in text
    assert 'CMD ["server.py", "--port", "8080"]' in text and "EXPOSE 8080" in text
    r = _ferryman("dockerize", "server.py", cwd=tmp_path)
    assert r.returncode == 2 and "Dockerfile exists" in r.stderr
    (tmp_path / "requirements.txt").write_text("numpy\n")
    r = _ferryman("dockerize", "server.py", "--gpu", "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "Dockerfile").read_text()
    assert "COPY requirements.txt /app/requirements.txt\n" in text
    assert "-r /app/requirements.txt" in text
    assert 'CMD ["server.py", "--port", "8000", "--accelerator", "cuda"]' in text
    (tmp_path / "sub").mkdir()
    r = _ferryman("dockerize", "../server.py", cwd=tmp_path / "sub")
    assert r.returncode == 2 and "must be in the current directory" in r.stderr
    hadolint = _which("hadolint")
    if hadolint:
        res = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=tmp_path, text=True,
                             capture_output=True)  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)
