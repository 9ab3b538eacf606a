"""Run the supervisor until it stops; returns the process exit code."""

from __future__ import annotations

import asyncio
from typing import Any

from ferryman import logs
from ferryman.options import Options


def run(opts: Options, config_file: str | None = None, flags: dict[str, Any] | None = None) -> int:
    from ferryman.supervisor.core import Supervisor

    logs.setup("supervisor", 0, opts.log_level, opts.log_format)
    sup = Supervisor(opts, config_file, flags)
    return asyncio.run(sup.run())
