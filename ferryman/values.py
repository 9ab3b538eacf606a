"""Option values: each parser turns what a flag, a config file or `Server(**kw)` gave into a typed
value, or raises ValueError saying what it expected (options.py names the option).

Used by every process that reads configuration (the CLI, the supervisor, `Server`).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable
from typing import Any

from ferryman.board import CELLS, ROWS

Devices = str | int | list[int]
# The load board has a row per API process and a cell per worker, live or replaced a moment ago
# (a rolling reload starts each replacement before the old one goes): half of each at most.
MAX_API_SERVERS = ROWS // 2
MAX_WORKERS = CELLS // 2


def pos_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a positive integer")
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a positive integer, got {value!r}") from None
    if n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(f"expected a positive integer, got {value!r}")
    return n


def nonneg_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer >= 0")
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected an integer >= 0, got {value!r}") from None
    if n < 0 or (isinstance(value, float) and value != n):
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return n


def port(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a port number, got {value!r}")
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a port number, got {value!r}") from None
    if not 0 <= n <= 65535 or (isinstance(value, float) and value != n):
        raise ValueError(f"expected a port number 0-65535, got {value!r}")
    return n


def api_servers(value: Any) -> int:
    """API processes: each has a row of the load board, and a rolling reload needs a spare."""
    n = pos_int(value)
    if n > MAX_API_SERVERS:
        raise ValueError(f"expected at most {MAX_API_SERVERS} API processes, got {value!r}")
    return n


def max_workers(value: Any) -> int:
    """Workers: each has a cell of the load board, and a reload starts replacements first."""
    n = pos_int(value)
    if n > MAX_WORKERS:
        raise ValueError(f"expected at most {MAX_WORKERS} workers, got {value!r}")
    return n


def nonneg_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number of seconds, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"expected a finite number of seconds, got {value!r}")
    if x < 0:
        raise ValueError(f"expected a non-negative number, got {value!r}")
    return x


def pos_float(value: Any) -> float:
    x = nonneg_float(value)
    if x == 0:
        raise ValueError("expected a number greater than 0")
    return x


NONE_WORDS = ("none", "off", "false", "no", "never")


def timeout(value: Any) -> float | None:
    """Seconds, or no timeout at all: none / false / off, or 0 or -1 (LitServe's False and -1)."""
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in NONE_WORDS:
        return None
    if value is True:
        raise ValueError("expected a number of seconds, or none")
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a number of seconds, or none, got {value!r}") from None
    if x in (0, -1):
        return None
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"expected a finite number of seconds, or none, got {value!r}")
    return x


def bytes_size(value: Any) -> int | None:
    """A size in bytes (`512M`, `2GiB` and the like accepted), or none."""
    if value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS):
        return None
    if isinstance(value, bool):
        raise ValueError(f"expected a size in bytes, got {value!r}")
    if isinstance(value, int | float):
        return pos_int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", str(value).lower())
    if not m:
        raise ValueError(f"expected a size such as 2G or 512M, got {value!r}")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2)]
    return pos_int(int(float(m.group(1)) * scale))


def choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        s = str(value).lower()
        if s not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return s

    return parse


SPECS = {"openai": "openai", "openai-embedding": "openai_embedding"}


def spec(value: Any) -> str | None:
    """`openai` (chat completions) or `openai-embedding` (embeddings); a spec object, such as
    ferryman's or LitServe's OpenAISpec(), stands for its name."""
    if value is not None and not isinstance(value, str):
        kind = type(value).__name__
        value = getattr(value, "name", None) or {
            "OpenAISpec": "openai",
            "OpenAIEmbeddingSpec": "openai-embedding",
        }.get(kind, kind)
    if value is None or str(value).lower() in ("", "none"):
        return None
    key = str(value).lower().replace("_", "-")
    if key not in SPECS:
        raise ValueError(f"expected openai or openai-embedding, got {value!r}")
    return SPECS[key]


def devices(value: Any) -> Devices:
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
        if any(isinstance(i, bool) or (isinstance(i, float) and i != int(i)) for i in items):
            raise ValueError
        indices = [int(i) for i in items]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(err) from None
    if not indices or any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(err)
    return indices


def optional_pos_int(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "auto", "")):
        return None
    return pos_int(value)


def optional_str(value: Any) -> str | None:
    """A string (a key, a token), or none. A number or boolean in the config file is a mistake
    (`admin_token = true` must not make the token "True")."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def optional_path(value: Any) -> str | None:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a path, got {value!r}")
    return value


# Labels as in host names, plus `_`, which container networks allow in service names.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def host(value: Any) -> str:
    """An IP address or a host name (0.0.0.0 or :: for every interface). Whether a name
    resolves is seen when binding (exit status 1); a value that can never be an address is a
    bad option."""
    err = f"expected an IP address or a host name (0.0.0.0 for every interface), got {value!r}"
    if not isinstance(value, str) or not value:
        raise ValueError(err)
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if (
        len(value) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()  # 999.1.1.1 looks like an address and is none
    ):
        raise ValueError(err)
    return value


def path(value: Any) -> str:
    s = str(value)
    if not s.startswith("/") or any(c.isspace() for c in s) or "?" in s or "#" in s:
        raise ValueError(f"expected a path starting with /, got {value!r}")
    return s


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def default_api_servers() -> int:
    # The CPUs this process may run on (a container's cpuset), not the whole machine's.
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))
