"""Server options: one table drives `Server(**kw)`, `ferryman serve --flags` and `ferryman.toml`.

Every option is parsed by the same function whichever way it arrives, so a bad value gets the same
one-line message naming the option whether it came from Python, a flag or the config file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Devices = str | int | list[int]


class OptionError(ValueError):
    """A bad option value or config file; the message names the option."""


def _pos_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a positive integer")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a positive integer, got {value!r}") from None
    if n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(f"expected a positive integer, got {value!r}")
    return n


def _port(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a port number, got {value!r}") from None
    if not 0 <= n <= 65535 or isinstance(value, bool):
        raise ValueError(f"expected a port number 0-65535, got {value!r}")
    return n


def _nonneg_float(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if x < 0 or x != x or isinstance(value, bool):
        raise ValueError(f"expected a non-negative number, got {value!r}")
    return x


def _pos_float(value: Any) -> float:
    x = _nonneg_float(value)
    if x == 0:
        raise ValueError("expected a number greater than 0")
    return x


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        s = str(value).lower()
        if s not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return s

    return parse


def _optional_choice(*choices: str) -> Callable[[Any], str | None]:
    inner = _choice(*choices)

    def parse(value: Any) -> str | None:
        if value is None or str(value).lower() in ("", "none"):
            return None
        return inner(value)

    return parse


def _spec(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        # ferryman.OpenAISpec() (or LitServe's): an object that stands for its spec's name
        value = getattr(value, "name", None) or (
            "openai" if type(value).__name__ == "OpenAISpec" else value
        )
    return _optional_choice("openai")(value)


def _devices(value: Any) -> Devices:
    """`auto`, a count (`2`), or a list of device indices (`0,2` or `[0, 2]`)."""
    err = f"expected auto, a count or a list such as 0,2, got {value!r}"
    if isinstance(value, bool):
        raise ValueError(err)
    if isinstance(value, int):
        if value < 1:
            raise ValueError(err)
        return value
    if isinstance(value, list | tuple):
        items = list(value)
    else:
        s = str(value).strip().lower()
        if s == "auto":
            return "auto"
        if "," not in s and not s.startswith("["):
            try:
                n = int(s)
            except ValueError:
                raise ValueError(err) from None
            if n < 1:
                raise ValueError(err)
            return n
        items = [p for p in s.strip("[]").split(",") if p.strip()]
    try:
        indices = [int(i) for i in items]
    except (TypeError, ValueError):
        raise ValueError(err) from None
    if not indices or any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(err)
    return indices


def _optional_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _api_path(value: Any) -> str:
    s = str(value)
    if not s.startswith("/") or " " in s:
        raise ValueError(f"expected a path starting with /, got {value!r}")
    return s


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _default_api_servers() -> int:
    # The CPUs this process may run on (a container's cpuset), not the whole machine's.
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


@dataclass(frozen=True)
class Opt:
    name: str
    parse: Callable[[Any], Any]
    help: str
    metavar: str | None = None
    is_flag: bool = False  # a boolean switch: `--stream`
    reloadable: bool = True  # SIGHUP re-reads it; False: needs a full restart


OPTS: tuple[Opt, ...] = (
    # -- what and where
    Opt(
        "accelerator",
        _choice("auto", "cpu", "cuda"),
        "auto, cpu or cuda; auto picks cuda when a GPU is visible (nvidia-smi -L or "
        "CUDA_VISIBLE_DEVICES) [default: auto]",
        "KIND",
    ),
    Opt(
        "devices",
        _devices,
        "auto, a count of devices, or a list of device indices such as 0,2 [default: auto: "
        "every visible GPU, or 1 for cpu]",
        "DEVICES",
    ),
    Opt("workers_per_device", _pos_int, "inference worker processes per device [default: 1]", "N"),
    Opt(
        "api_servers",
        _pos_int,
        "uvicorn API processes sharing the port [default: one per core, at most 4]",
        "N",
    ),
    Opt("host", str, "address the API port binds [default: 127.0.0.1]", "HOST", reloadable=False),
    Opt("port", _port, "API port [default: 8000]", "PORT", reloadable=False),
    Opt("api_path", _api_path, "route of the model [default: /predict]", "PATH"),
    Opt(
        "spec",
        _spec,
        "an API spec: openai serves /v1/chat/completions [default: none]",
        "SPEC",
    ),
    # -- requests
    Opt(
        "timeout",
        _pos_float,
        "seconds a request may wait for its answer (for a stream: for each item) before a 504 "
        "[default: 30]",
        "SECONDS",
    ),
    Opt(
        "max_payload_size",
        _pos_int,
        "largest request body in bytes, else 413 [default: 100 MiB]",
        "BYTES",
    ),
    Opt("max_batch_size", _pos_int, "requests a worker batches into one predict [default: 1]", "N"),
    Opt(
        "batch_timeout",
        _nonneg_float,
        "seconds a worker waits for a batch to fill after its first request [default: 0]",
        "SECONDS",
    ),
    Opt(
        "stream",
        _bool,
        "predict and encode_response are generators; items are streamed",
        is_flag=True,
    ),
    Opt(
        "max_queue",
        _pos_int,
        "requests an API process holds before answering 503 with Retry-After [default: 1024]",
        "N",
    ),
    # -- supervision
    Opt(
        "graceful_timeout",
        _nonneg_float,
        "seconds a stopping process may take to finish its requests before SIGKILL [default: 30]",
        "SECONDS",
    ),
    Opt(
        "heartbeat_timeout",
        _pos_float,
        "seconds of silence after which a child is deemed hung and restarted; keep it above "
        "your longest predict [default: 60]",
        "SECONDS",
    ),
    Opt(
        "startup_timeout",
        _pos_float,
        "seconds a new child may take to become ready (setup included) [default: 600]",
        "SECONDS",
    ),
    Opt(
        "max_restarts",
        _pos_int,
        "crashes within --restart-window after which a slot is marked failed [default: 5]",
        "K",
    ),
    Opt(
        "restart_window",
        _pos_float,
        "seconds over which crashes are counted [default: 60]",
        "SECONDS",
    ),
    Opt(
        "backoff_max",
        _pos_float,
        "longest wait between restarts of a crashing child [default: 30]",
        "SECONDS",
    ),
    Opt(
        "failed_retry",
        _pos_float,
        "seconds after which a failed slot is tried again [default: 300]",
        "SECONDS",
    ),
    Opt(
        "min_ready_workers",
        _pos_int,
        "ready workers needed before the server reports ready (sd_notify READY=1) [default: 1]",
        "N",
    ),
    Opt("max_workers", _pos_int, "upper bound for scaling workers [default: 64]", "N"),
    Opt(
        "pid_file",
        _optional_str,
        "write the supervisor's pid to this file",
        "PATH",
        reloadable=False,
    ),
    # -- control plane
    Opt(
        "admin_host",
        str,
        "address of the admin port [default: 127.0.0.1]",
        "HOST",
        reloadable=False,
    ),
    Opt(
        "admin_port",
        _port,
        "admin port: status, scaling, /metrics; 0 disables it [default: 8001]",
        "PORT",
        reloadable=False,
    ),
    Opt(
        "admin_token",
        _optional_str,
        "bearer token for the admin port; required when it binds a non-loopback address "
        "[default: $FERRYMAN_ADMIN_TOKEN]",
        "TOKEN",
        reloadable=False,
    ),
    # -- logs
    Opt("log_level", _choice("debug", "info", "warning", "error"), "[default: info]", "LEVEL"),
    Opt(
        "log_format",
        _choice("logfmt", "json"),
        "log line format on stderr [default: logfmt]",
        "FORMAT",
    ),
)
OPTS_BY_NAME = {o.name: o for o in OPTS}


@dataclass
class Options:
    app: str | None = None
    accelerator: str = "auto"
    devices: Devices = "auto"
    workers_per_device: int = 1
    api_servers: int = field(default_factory=_default_api_servers)
    host: str = "127.0.0.1"
    port: int = 8000
    api_path: str = "/predict"
    spec: str | None = None
    timeout: float = 30.0
    max_payload_size: int = 100 * 1024 * 1024
    max_batch_size: int = 1
    batch_timeout: float = 0.0
    stream: bool = False
    max_queue: int = 1024
    graceful_timeout: float = 30.0
    heartbeat_timeout: float = 60.0
    startup_timeout: float = 600.0
    max_restarts: int = 5
    restart_window: float = 60.0
    backoff_max: float = 30.0
    failed_retry: float = 300.0
    min_ready_workers: int = 1
    max_workers: int = 64
    pid_file: str | None = None
    admin_host: str = "127.0.0.1"
    admin_port: int = 8001
    admin_token: str | None = None
    log_level: str = "info"
    log_format: str = "logfmt"
    # Set by `Server.run`: the pickled API instance a worker loads instead of importing `app`.
    instance_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_value(name: str, value: Any, origin: str = "") -> Any:
    opt = OPTS_BY_NAME.get(name)
    if opt is None:
        raise OptionError(f"{origin}unknown option {name!r}")
    try:
        return opt.parse(value)
    except ValueError as e:
        flag = "--" + name.replace("_", "-")
        raise OptionError(f"{origin}{flag}: {e}") from None


def parse_mapping(values: Mapping[str, Any], origin: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name == "app":
            out["app"] = str(value)
            continue
        out[name] = parse_value(name, value, origin)
    return out


def read_config_file(path: str) -> dict[str, Any]:
    """Keys of a TOML file, at the top level or under [ferryman], parsed like flags."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise OptionError(f"--config: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise OptionError(f"--config: {path} is not valid TOML: {e}") from None
    if isinstance(data.get("ferryman"), dict):
        data = data["ferryman"]
    return parse_mapping(data, origin=f"{path}: ")


def build(config_file: str | None, overrides: Mapping[str, Any]) -> Options:
    """Defaults, then the config file, then `overrides` (flags or Server kwargs, already parsed)."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(read_config_file(config_file))
    values.update(overrides)
    opts = Options(**values)
    if opts.admin_token is None:
        opts.admin_token = os.environ.get("FERRYMAN_ADMIN_TOKEN") or None
    return opts
