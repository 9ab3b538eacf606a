"""TorchServe's files for one run, generated from the suite's settings (in the suite's Python).

TorchServe serves models from a model store; each model is a directory (an unpacked .mar) with
MAR-INF/MANIFEST.json naming its handler. Everything else comes from config.properties: the
addresses, the model to load with its worker count and batching (batchSize, maxBatchDelay), token
authorization off (it is on by default since 0.11). A log4j2 configuration keeps the front-end at
WARN: its defaults write an access-log line and debug lines for every request to disk, which the
other peers are not asked to do either. The gRPC ports get free ports of their own (the defaults,
7070 and 7071, would collide with anything else there).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_NAME = "bench"
HANDLER = Path(__file__).resolve().parent / "torchserve_handler.py"
PREDICT_PATH = f"/predictions/{MODEL_NAME}"

LOG4J2 = """\
<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off"/>
    <!-- The backend workers' output, where a failed start leaves its traceback (at INFO: the
         workers log to stdout), less the line each of them prints for every batch. -->
    <Logger name="MODEL_LOG" level="info">
      <RegexFilter regex="Backend received inference.*" onMatch="DENY" onMismatch="NEUTRAL"/>
    </Logger>
    <Logger name="TS_METRICS" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Root level="warn">
      <AppenderRef ref="STDOUT"/>
    </Root>
  </Loggers>
</Configuration>
"""


@dataclass(frozen=True)
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int


@dataclass(frozen=True)
class Layout:
    """Where one run's TorchServe files are."""

    config: Path
    model_store: Path
    log_config: Path
    logs: Path
    tmp: Path  # short: the backend workers' Unix sockets are made there


def model_settings(workers: int, batch_size: int, max_batch_delay_ms: int) -> dict[str, Any]:
    """The `models` entry of config.properties for our one model (one version)."""
    return {
        MODEL_NAME: {
            "1.0": {
                "defaultVersion": True,
                "marName": MODEL_NAME,
                "minWorkers": workers,
                "maxWorkers": workers,
                "batchSize": max(1, batch_size),
                "maxBatchDelay": max_batch_delay_ms,
                "responseTimeout": 120,
            }
        }
    }


def config_properties(
    ports: Ports,
    model_store: Path,
    workers: int,
    netty_threads: int,
    batch_size: int,
    max_batch_delay_ms: int,
) -> str:
    settings = model_settings(workers, batch_size, max_batch_delay_ms)
    lines = [
        f"inference_address=http://127.0.0.1:{ports.inference}",
        f"management_address=http://127.0.0.1:{ports.management}",
        f"metrics_address=http://127.0.0.1:{ports.metrics}",
        f"grpc_inference_port={ports.grpc_inference}",
        f"grpc_management_port={ports.grpc_management}",
        f"model_store={model_store}",
        f"load_models={MODEL_NAME}",
        # One JVM front-end: its Netty threads are what stands for the others' API processes.
        f"number_of_netty_threads={netty_threads}",
        f"default_workers_per_model={workers}",
        "disable_token_authorization=true",
        "install_py_dep_per_model=false",
        "enable_envvars_config=false",
        "models=" + json.dumps(settings, separators=(",", ":")),
    ]
    return "\n".join(lines) + "\n"


def manifest() -> dict[str, Any]:
    """MAR-INF/MANIFEST.json of an unpacked archive, as torch-model-archiver would write it."""
    return {
        "createdOn": "01/01/2026 00:00:00",  # without it TorchServe warns on every start
        "runtime": "python",
        "model": {
            "modelName": MODEL_NAME,
            "handler": HANDLER.name,
            "modelVersion": "1.0",
        },
        "archiverVersion": "0.12.0",
    }


def write(
    run_dir: Path,
    ports: Ports,
    workers: int,
    netty_threads: int,
    batch_size: int,
    max_batch_delay_ms: int,
    tmp: Path,
) -> Layout:
    """Write the model store, config.properties and log4j2.xml under run_dir/torchserve. `tmp`
    must be a short path: a Unix socket's path may not exceed 107 bytes."""
    base = run_dir / "torchserve"
    if base.exists():
        shutil.rmtree(base)
    store = base / "model-store"
    model_dir = store / MODEL_NAME
    (model_dir / "MAR-INF").mkdir(parents=True)
    (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest(), indent=2))
    shutil.copy(HANDLER, model_dir / HANDLER.name)
    layout = Layout(
        config=base / "config.properties",
        model_store=store,
        log_config=base / "log4j2.xml",
        logs=base / "logs",
        tmp=tmp,
    )
    layout.config.write_text(
        config_properties(
            ports,
            store,
            workers,
            netty_threads,
            batch_size,
            max_batch_delay_ms,
        )
    )
    layout.log_config.write_text(LOG4J2)
    layout.logs.mkdir()
    layout.tmp.mkdir(exist_ok=True)
    return layout


def command(torchserve: Path, layout: Layout) -> list[str]:
    # --foreground: the CLI waits for the JVM instead of daemonizing, so the suite's process is
    # the root of TorchServe's whole tree (CLI -> java -> Python backend workers).
    return [
        str(torchserve),
        "--start",
        "--foreground",
        "--ts-config",
        str(layout.config),
        "--model-store",
        str(layout.model_store),
        "--log-config",
        str(layout.log_config),
        "--ncs",
        "--disable-token-auth",
    ]


def env(layout: Layout) -> dict[str, str]:
    # The CLI keeps its pid file in the temp directory and refuses to start while another
    # TorchServe's is there, and the JVM puts the backend workers' sockets in it (TEMP): each
    # run gets its own. Logs and metrics go beside the config.
    return {
        "TMPDIR": str(layout.tmp),
        "TEMP": str(layout.tmp),
        "LOG_LOCATION": str(layout.logs),
        "METRICS_LOCATION": str(layout.logs),
    }
