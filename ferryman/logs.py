"""Structured log lines on stderr that name the process: role, model, id and pid on every line.

Used by every process (supervisor, API processes, workers, the CLI).

logfmt by default (`ts=… level=info role=worker id=2 pid=4242 msg="ready" device=cuda:0`), or one
JSON object a line with `--log-format json`; journald and `kubectl logs` read either.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_ROLE = "supervisor"
_ID = "-"
_MODEL: str | None = None


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts += f".{int(record.msecs):03d}Z"
        fields: dict[str, Any] = {
            "ts": ts,
            "level": record.levelname.lower(),
            "role": _ROLE,
            **({"model": _MODEL} if _MODEL is not None else {}),
            "id": _ID,
            "pid": os.getpid(),
            "msg": record.getMessage(),
        }
        if record.name and not record.name.startswith("ferryman"):
            fields["logger"] = record.name
        kv = getattr(record, "kv", None)
        if kv:
            fields.update((k, v) for k, v in kv.items() if v is not None and v != "")
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(v: Any) -> str:
    s = str(v)
    if s and not any(c in s for c in ' "=\n\t'):
        return s
    return json.dumps(s)


def setup(
    role: str, ident: str | int, level: str = "info", fmt: str = "logfmt", model: str | None = None
) -> None:
    global _ROLE, _ID, _MODEL
    _ROLE, _ID, _MODEL = role, str(ident), model
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's loggers carry their own handlers; route them through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel("WARNING")
    logging.getLogger("uvicorn.error").setLevel("WARNING")  # "Started server process" noise


def kv(**fields: Any) -> dict[str, Any]:
    """`log.info("worker ready", extra=kv(device="cuda:0"))`"""
    return {"kv": fields}
