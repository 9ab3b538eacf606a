"""Bad configuration: every invalid flag and config-file value is refused before anything starts.

README: "A bad option gets a one-line message naming it and exit status 2". For each option of
`ferryman.options.OPTS`, bad values are generated from its parser's kind (numbers out of range,
the wrong type, inf and nan for seconds, ...), once as a flag and once as a key of a `--config`
file, plus broken files, model tables, apps and paths. Each must give exactly one line on stderr
that names the flag or key, and exit status 2, without starting a server.

Most cases run `ferryman serve` in this process with the supervisor replaced by a stub that fails
the test if it is ever reached (a value wrongly accepted would start a server). A representative
subset, and what only the supervisor can check, runs as the real `ferryman serve` process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, ROOT, free_port

from ferryman import cli
from ferryman.options import OPTS, Opt, parse_value
from ferryman.values import MAX_API_SERVERS, MAX_WORKERS

APP = str(ROOT / "examples" / "doubler.py") + ":Doubler"

# Bad values for each parser kind: (as a flag, as a TOML value). The TOML values are TOML source.
BAD_FLAGS: dict[str, list[str]] = {
    "pos_int": ["0", "-1", "1.5", "one", "", "1e3", "nan"],
    "optional_pos_int": ["0", "-1", "1.5", "many", "nan"],
    "api_servers": ["0", "-1", "1.5", "two", "", "33", "100000"],
    "max_workers": ["0", "-1", "1.5", "many", "", "513", "100000"],
    "nonneg_int": ["-1", "1.5", "x", ""],
    "port": ["-1", "65536", "http", "1.5", ""],
    "nonneg_float": ["-1", "-0.5", "inf", "nan", "-inf", "soon", ""],
    "pos_float": ["0", "-1", "inf", "nan", "1e999", "soon", ""],
    "timeout": ["-2", "inf", "nan", "1e999", "forever", "true"],
    "bytes_size": ["0", "-1", "0.5", "10Q", "lots", "inf", "nan"],
    "parse": ["GPU", "", "information"],  # the choice() parsers
    "devices": ["0", "-1", "a,b", "0,0", "1.5", "[]", "auto,0", ""],
    "path": ["predict", "/a b", "/a?b=1", "/a#frag", ""],
    "spec": ["anthropic", "1"],
    "host": ["", "bad host", "999.1.1.1", "-leading-dash"],
}
BAD_TOML: dict[str, list[str]] = {
    "pos_int": ["0", "-1", "1.5", "'one'", "true", "[1]", "inf", "nan", "{a = 1}"],
    "optional_pos_int": ["0", "-1", "1.5", "'many'", "true", "inf"],
    "api_servers": ["0", "1.5", "'two'", "true", "33", "100000"],
    "max_workers": ["0", "1.5", "'many'", "true", "513", "100000"],
    "nonneg_int": ["-1", "1.5", "true", "'x'", "inf"],
    "port": ["-1", "65536", "8000.5", "true", "'http'", "inf"],
    "nonneg_float": ["-1", "inf", "nan", "-inf", "true", "'soon'", "[1]"],
    "pos_float": ["0", "-1.5", "inf", "nan", "true", "'soon'"],
    "timeout": ["-2", "inf", "nan", "true", "'forever'", "[30]"],
    "bytes_size": ["0", "-1", "1.5", "inf", "nan", "true", "'lots'"],
    "parse": ["1", "true", "['cpu']", "'GPU'"],
    "devices": ["0", "-1", "[]", "[0, 0]", "[-1]", "[1.5]", "[true]", "true", "'x'"],
    "path": ["5", "true", "'predict'", "'/a b'"],
    "spec": ["5", "true", "'anthropic'"],
    "boolean": ["'maybe'", "2", "[true]", "{}"],
    "host": ["5", "true", "[]", "''", "'bad host'"],
    "optional_str": ["5", "true", "[]", "{}"],
    "optional_path": ["5", "true", "[]", "{}"],
}


def kind(opt: Opt) -> str:
    return getattr(opt.parse, "__name__", type(opt.parse).__name__)


def flag_cases() -> list[Any]:
    cases = []
    for opt in OPTS:
        if opt.is_flag:
            cases.append(pytest.param(opt, [f"{opt.flag}=yes"], id=f"{opt.flag}=yes"))
            continue
        for value in BAD_FLAGS.get(kind(opt), []):
            cases.append(pytest.param(opt, [opt.flag, value], id=f"{opt.flag} {value!r}"))
    return cases


def toml_cases() -> list[Any]:
    cases = []
    for opt in OPTS:
        for value in BAD_TOML.get(kind(opt), []):
            cases.append(pytest.param(opt, value, id=f"{opt.name} = {value}"))
    return cases


def test_every_option_has_bad_values() -> None:
    """A new option whose parser kind has no bad values here is a gap in this suite."""
    for opt in OPTS:
        assert kind(opt) in BAD_TOML, f"{opt.name}: no bad values for parser {kind(opt)}"
        # Any string is a key, a token or a path name: only the file can give a wrong type.
        assert (
            opt.is_flag or kind(opt) in BAD_FLAGS or kind(opt) in ("optional_str", "optional_path")
        )


Run = Callable[..., tuple[int, str]]


@pytest.fixture
def serve_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """`ferryman serve ARGS` in this process, up to where it would start the supervisor:
    (exit status, stderr). Reaching the supervisor fails the test: the value was accepted."""
    monkeypatch.delenv("FERRYMAN_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("FERRYMAN_API_KEY", raising=False)

    def started(*args: Any, **kw: Any) -> int:
        raise AssertionError("accepted: the supervisor would have started")

    monkeypatch.setattr("ferryman.supervisor.main.run", started)

    def run(*args: str) -> tuple[int, str]:
        try:
            code = cli.main(["serve", *args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
        return code, capsys.readouterr().err

    return run


def refused(code: int, stderr: str, *names: str) -> None:
    """Exit status 2 and one line on stderr naming one of `names`."""
    lines = stderr.strip().splitlines()
    assert code == 2, f"exit status {code}: {stderr}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{stderr}"
    assert any(n in lines[0] for n in names), f"names none of {names}: {lines[0]}"


def names_of(opt: Opt) -> tuple[str, ...]:
    return (opt.flag, opt.name)


@pytest.mark.parametrize(("opt", "args"), flag_cases())
def test_a_bad_flag_value_is_refused(serve_cli: Run, opt: Opt, args: list[str]) -> None:
    refused(*serve_cli(APP, *args), *names_of(opt))


@pytest.mark.parametrize(("opt", "value"), toml_cases())
def test_a_bad_config_value_is_refused(
    serve_cli: Run, tmp_path: Path, opt: Opt, value: str
) -> None:
    config = tmp_path / "ferryman.toml"
    config.write_text(f"app = '{APP}'\n{opt.name} = {value}\n")
    refused(*serve_cli("--config", str(config)), *names_of(opt))
    if opt.scope == "model":  # also in a model's own table
        config.write_text(f"[[models]]\napp = '{APP}'\n{opt.name} = {value}\n")
        refused(*serve_cli("--config", str(config)), *names_of(opt))


BAD_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    # name: (the file's text, what the message names)
    "unknown-key": ("wokers_per_device = 2\n", ("wokers_per_device",)),
    "not-toml": ("workers_per_device = \n", ("--config", "TOML")),
    "models-not-an-array": (f"models = '{APP}'\n", ("models",)),
    "models-of-numbers": ("models = [1, 2]\n", ("models",)),
    "model-without-app": ("[[models]]\nname = 'a'\n", ("app",)),
    "model-app-not-a-string": ("[[models]]\napp = 5\n", ("app",)),
    "model-app-empty": ("[[models]]\napp = ''\n", ("app",)),
    "model-app-without-class": ("[[models]]\napp = 'examples/doubler.py'\n", ("app", "APP")),
    "model-name-with-spaces": (f"[[models]]\nname = 'my model'\napp = '{APP}'\n", ("name",)),
    "model-name-not-a-string": (f"[[models]]\nname = 5\napp = '{APP}'\n", ("name",)),
    "server-option-in-a-model": (f"[[models]]\napp = '{APP}'\nport = 9000\n", ("port",)),
    "unknown-key-in-a-model": (f"[[models]]\napp = '{APP}'\nbatch = 8\n", ("batch",)),
    "app-and-models": (f"app = '{APP}'\n[[models]]\napp = '{APP}'\n", ("app", "models")),
    "reserved-api-path": (
        f"[[models]]\napp = '{APP}'\napi_path = '/health'\n",
        ("api_path", "--api-path"),
    ),
    "two-models-one-path": (
        f"[[models]]\nname = 'a'\napp = '{APP}'\napi_path = '/x'\n"
        f"[[models]]\nname = 'b'\napp = '{APP}'\napi_path = '/x'\n",
        ("/x", "api_path"),
    ),
    "one-name-twice": (
        f"[[models]]\nname = 'a'\napp = '{APP}'\n[[models]]\nname = 'a'\napp = '{APP}'\n",
        ("'a'",),
    ),
    "missing-app-file": ("[[models]]\napp = 'no/such/file.py:Model'\n", ("no/such/file.py",)),
    "app-file-lacks-the-class": (f"[[models]]\napp = '{APPS}/echo.py:Nope'\n", ("Nope",)),
    "no-model-at-all": ("workers_per_device = 2\n", ("APP", "models")),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_bad_config_file_is_refused(serve_cli: Run, tmp_path: Path, name: str) -> None:
    text, names = BAD_FILES[name]
    config = tmp_path / "ferryman.toml"
    config.write_text(text)
    code, err = serve_cli("--config", str(config))
    refused(code, err, *names)
    assert str(config) in err or "--config" in err or "APP" in err or any(n in err for n in names)


def test_a_config_file_that_is_not_utf8_is_refused(serve_cli: Run, tmp_path: Path) -> None:
    config = tmp_path / "ferryman.toml"
    config.write_bytes(b"workers_per_device = 2\n# \xff\xfe latin-1 \xe9\n")
    refused(*serve_cli(APP, "--config", str(config)), "--config", str(config))


def test_a_directory_as_config_is_refused(serve_cli: Run, tmp_path: Path) -> None:
    refused(*serve_cli(APP, "--config", str(tmp_path)), "--config")


def test_a_missing_config_file_is_refused(serve_cli: Run, tmp_path: Path) -> None:
    refused(*serve_cli(APP, "--config", str(tmp_path / "nope.toml")), "--config")


PATH_CASES = {
    "pid-file-in-a-missing-directory": ("--pid-file", "{tmp}/no/such/dir/ferryman.pid"),
    "pid-file-naming-a-directory": ("--pid-file", "{tmp}"),
    "reserved-api-path": ("--api-path", "/health"),
    "another-reserved-api-path": ("--api-path", "/v1/chat/completions"),
}


@pytest.mark.parametrize("name", PATH_CASES)
def test_a_bad_path_is_refused(serve_cli: Run, tmp_path: Path, name: str) -> None:
    flag, value = PATH_CASES[name]
    refused(*serve_cli(APP, flag, value.format(tmp=tmp_path)), flag)


APP_CASES = {
    "missing-app-file": ("no/such/app.py:Model", "no/such/app.py"),
    "app-file-lacks-the-class": (f"{APPS}/echo.py:NoSuchClass", "NoSuchClass"),
    "empty-app": ("", "APP"),
}


@pytest.mark.parametrize("name", APP_CASES)
def test_a_bad_app_is_refused(serve_cli: Run, name: str) -> None:
    app, named = APP_CASES[name]
    refused(*serve_cli(app), named)


def test_two_models_on_one_path_and_one_name_twice_are_refused(serve_cli: Run) -> None:
    refused(*serve_cli(f"a={APP}", f"b={APP}", "--api-path", "/same"), "/same")
    refused(*serve_cli(f"a={APP}", f"a={APP}"), "'a'")


def test_an_unknown_flag_is_refused(serve_cli: Run) -> None:
    refused(*serve_cli(APP, "--wrokers-per-device", "2"), "--wrokers-per-device")


# -- the real `ferryman serve`: a subset, and what only the supervisor can check ----------------


def ferryman_serve(*args: str, cwd: Path = ROOT) -> tuple[int, str, float]:
    port, admin = free_port(), free_port()
    t0 = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    proc = subprocess.run(
        [sys.executable, "-m", "ferryman", "serve", *args, "--port", str(port),
         "--admin-port", str(admin)],
        capture_output=True, text=True, cwd=cwd, timeout=30, env=env,
    )  # fmt: skip
    return proc.returncode, proc.stderr, time.monotonic() - t0


REAL = {
    # name: (args, what the message names)
    "workers-per-device-above-max-workers": (
        [APP, "--workers-per-device", "8", "--max-workers", "2"],
        ("--max-workers", "--workers-per-device"),
    ),
    "negative-timeout": ([APP, "--heartbeat-timeout", "-1"], ("--heartbeat-timeout",)),
    "nan-seconds": ([APP, "--graceful-timeout", "nan"], ("--graceful-timeout",)),
    "no-api-servers": ([APP, "--api-servers", "0"], ("--api-servers",)),
    "bad-devices": ([APP, "--devices", "0,0"], ("--devices",)),
    "reserved-path": ([APP, "--api-path", "/health"], ("--api-path",)),
    "missing-app-file": (["no/such/app.py:Model"], ("no/such/app.py",)),
    "app-lacks-the-class": ([f"{APPS}/echo.py:Nope"], ("Nope",)),
    # A file alone is run as a server file: one that starts no server is refused, named.
    "app-without-a-class": ([f"{APPS}/echo.py"], (f"{APPS}/echo.py", "APP")),
    "directory-as-config": ([APP, "--config", str(APPS)], ("--config",)),
    "unreadable-host": ([APP, "--host", "bad host"], ("--host",)),
    # It used to start 64 API processes, then fail with a traceback (exit status 1): the load
    # board has 64 rows.
    "too-many-api-servers": ([APP, "--api-servers", "65"], ("--api-servers",)),
}


@pytest.mark.parametrize("name", REAL)
def test_the_real_command_refuses_at_once(name: str) -> None:
    args, names = REAL[name]
    code, err, took = ferryman_serve(*args)
    refused(code, err, *names)
    assert took < 10, f"took {took:.1f} s to refuse"


def test_a_bad_config_file_through_the_real_command(tmp_path: Path) -> None:
    config = tmp_path / "ferryman.toml"
    config.write_text(f"[[models]]\napp = '{APP}'\nmax_batch_size = 0\n")
    code, err, _ = ferryman_serve("--config", str(config))
    refused(code, err, "max_batch_size", "--max-batch-size")


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "my_service", "node-1.example.com."]
)
def test_a_good_host_is_accepted(host: str) -> None:
    """The other side of the host checks: addresses and names (a container network's service
    names included) pass; whether they resolve is for the bind to say (exit status 1)."""
    assert parse_value("host", host) == parse_value("admin_host", host) == host


def test_good_values_of_the_stricter_parsers_are_accepted() -> None:
    assert parse_value("port", 8000.0) == 8000  # TOML 8000.0 is still a whole number
    assert parse_value("api_servers", MAX_API_SERVERS) == MAX_API_SERVERS
    assert parse_value("max_workers", MAX_WORKERS) == MAX_WORKERS
    assert parse_value("pid_file", Path("/run/ferryman.pid")) == "/run/ferryman.pid"
    assert parse_value("admin_token", "s3cret") == "s3cret"
    assert parse_value("api_key", "") is None
