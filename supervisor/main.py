"""Run the supervisor until it stops (supervisor process); returns the process exit code."""

from __future__ import annotations

import asyncio
from typing import Any

from ferryman import logs
from ferryman.options import Config


def run(
    config: Config,
    config_file: str | None = None,
    flags: dict[str, Any] | None = None,
    apps: list[str] | None = None,
    launch: dict[str, Any] | None = None,
) -> int:
    from ferryman.supervisor.supervisor import Supervisor

    logs.setup("supervisor", 0, config.server.log_level, config.server.log_format)
    sup = Supervisor(config, config_file, flags, apps, launch)
    return asyncio.run(sup.run())
