"""deploy/ stays consistent with the code: files parse, metric names exist, probes hit real routes.

Metric names and routes are read from the source (control/metrics.py, workers/metrics.py,
control/admin.py, workers/http_app.py), flags and config keys through the real option parser.
Nothing here starts a server; systemd-analyze, kubectl and promtool are used when installed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferryman.cli import build_parser
from ferryman.options import Options, build, read_config_file

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "kubernetes"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "ferryman-dashboard.json"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])

# Unit settings that hide /dev/nvidia* or break CUDA, JITs or NCCL (see ferryman.service).
GPU_BREAKING = ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock", "ProcSubset")
GPU_BREAKING += ("MemoryDenyWriteExecute", "SystemCallFilter")


# -- what the code defines -------------------------------------------------------------------------


def exposed_metric_names() -> set[str]:
    """Series names a scrape of the admin port can contain."""
    kinds = r"(Counter|Gauge|Histogram|Summary)(?:MetricFamily)?"
    names: set[str] = set()
    for rel in ("control/metrics.py", "workers/metrics.py"):
        source = (ROOT / rel).read_text()
        for kind, name in re.findall(kinds + r'\(\s*"(ferryman_\w+)"', source):
            if kind == "Counter":  # exposed with _total (a _total in the source is stripped)
                names.add(name.removesuffix("_total") + "_total")
            elif kind in ("Histogram", "Summary"):
                names.update(name + s for s in ("_bucket", "_sum", "_count"))
            else:
                names.add(name)
    return names


def admin_routes() -> set[str]:
    return set(re.findall(r'Route\(\s*"([^"]+)"', (ROOT / "control/admin.py").read_text()))


def api_routes() -> set[str]:
    source = (ROOT / "workers/http_app.py").read_text()
    return set(re.findall(r'"(/[\w/.-]*)":\s*self\._', source)) | {Options().api_path}


def serve_options(argv: list[str]) -> Options:
    """`ferryman serve ARGV` through the real parser, as `ferryman.cli.serve` builds them."""
    args = build_parser().parse_args(["serve", *argv])
    skip = ("command", "config", "app", "instance_file")
    flags = {k: v for k, v in vars(args).items() if k not in skip}
    if args.app:
        flags["app"] = args.app
    return build(args.config and str(SYSTEMD / Path(args.config).name), flags)


# -- helpers -------------------------------------------------------------------------------------


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


def k8s(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def deployment() -> dict[str, Any]:
    (dep,) = [d for d in k8s("deployment.yaml") if d["kind"] == "Deployment"]
    return dep


def container() -> dict[str, Any]:
    return deployment()["spec"]["template"]["spec"]["containers"][0]


def container_options() -> Options:
    entrypoint = json.loads(dockerfile()["ENTRYPOINT"][-1])
    return serve_options(entrypoint[2:] + container().get("args", []))


def probe_target(probe: dict[str, Any], ports: dict[str, int]) -> tuple[int, str]:
    if "httpGet" in probe:
        port = probe["httpGet"]["port"]
        return (ports[port] if isinstance(port, str) else port), probe["httpGet"]["path"]
    command = " ".join(probe["exec"]["command"])
    m = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[\w/.-]*)", command)
    assert m, f"no loopback URL in exec probe: {command}"
    return int(m.group(1)), m.group(2)


# -- every file ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


def test_code_metric_names_found() -> None:
    names = exposed_metric_names()
    for expected in ("ferryman_requests_total", "ferryman_workers", "ferryman_batch_size_bucket"):
        assert expected in names, sorted(names)


def test_every_metric_in_deploy_exists() -> None:
    known = exposed_metric_names()
    used: dict[str, set[str]] = {}
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        for name in re.findall(r"\bferryman_[a-z0-9_]+\b", path.read_text()):
            used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    unknown = {name: sorted(files) for name, files in used.items() if name not in known}
    assert not unknown, f"metric names the code does not expose: {unknown}"
    assert len(used) >= 10


# -- systemd -------------------------------------------------------------------------------------


def test_example_config_is_valid() -> None:
    values = read_config_file(str(SYSTEMD / "ferryman.toml"))
    assert "admin_token" not in values  # secrets go in the EnvironmentFile
    assert ":" in values["app"]


def test_service_unit() -> None:
    svc = read_unit(SYSTEMD / "ferryman.service")["Service"]

    def last(key: str) -> str:
        assert key in svc, f"ferryman.service has no {key}="
        return svc[key][-1]

    assert last("Type") in ("notify", "notify-reload")
    if last("Type") == "notify":
        assert re.fullmatch(r"\S*kill -HUP \$MAINPID", last("ExecReload"))
    assert last("NotifyAccess") == "main"
    assert seconds(last("WatchdogSec")) > 0
    assert last("KillMode") in ("mixed", "control-group")
    assert last("Restart") == "on-failure"
    argv = shlex.split(last("ExecStart"))
    assert argv[0].endswith("/ferryman") and argv[1] == "serve"
    opts = serve_options(argv[2:])
    # Shutdown drains the API processes, then the workers, each up to graceful_timeout + 5 s.
    assert seconds(last("TimeoutStopSec")) >= 2 * opts.graceful_timeout + 10
    assert seconds(last("TimeoutStartSec")) > opts.startup_timeout
    assert not [k for k in GPU_BREAKING if k in svc]


def test_notify_reload_dropin() -> None:
    svc = read_unit(SYSTEMD / "ferryman.service.d" / "notify-reload.conf")["Service"]
    assert svc["Type"] == ["notify-reload"]
    assert svc["ExecReload"] == [""]  # clears the kill -HUP of the main unit


def test_socket_unit() -> None:
    sock = read_unit(SYSTEMD / "ferryman.socket")["Socket"]
    port = int(sock["ListenStream"][0].rpartition(":")[2])
    assert port == read_config_file(str(SYSTEMD / "ferryman.toml")).get("port", Options().port)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    out = subprocess.run([analyze, "--version"], capture_output=True, text=True, timeout=30)
    m = re.match(r"systemd (\d+)", out.stdout)
    version = int(m.group(1)) if m else 0
    # verify wants ExecStart to exist: point it at a real executable.
    exe = shutil.which("ferryman") or sys.executable
    text = (SYSTEMD / "ferryman.service").read_text()
    (tmp_path / "ferryman.service").write_text(
        re.sub(r"^ExecStart=\S+", f"ExecStart={exe}", text, flags=re.M)
    )
    shutil.copy(SYSTEMD / "ferryman.socket", tmp_path)
    if version >= 253:  # notify-reload is unknown before 253
        shutil.copytree(SYSTEMD / "ferryman.service.d", tmp_path / "ferryman.service.d")
    units = [str(tmp_path / "ferryman.service"), str(tmp_path / "ferryman.socket")]
    res = subprocess.run(
        [analyze, "verify", "--man=no", *units], capture_output=True, text=True, timeout=120
    )
    ours = [line for line in res.stderr.splitlines() if str(tmp_path) in line]
    if res.returncode != 0 and not ours:
        pytest.skip(f"systemd-analyze cannot run here: {res.stderr.strip()[:200]}")
    assert res.returncode == 0 and not ours, res.stderr


# -- container image -----------------------------------------------------------------------------


def test_dockerfile() -> None:
    df = dockerfile()
    assert df["FROM"][0] == "python:3.11-slim"
    assert df["USER"][-1] not in ("root", "0")
    assert {"8000", "8001"} <= set(" ".join(df["EXPOSE"]).split())
    entrypoint = json.loads(df["ENTRYPOINT"][-1])
    assert entrypoint[:2] == ["ferryman", "serve"]
    cmd = json.loads(df["CMD"][-1])
    opts = serve_options(entrypoint[2:] + cmd)
    assert opts.host == "0.0.0.0"
    assert opts.app and (ROOT / opts.app.partition(":")[0]).is_file()  # the example app ships

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {pyproject["project"]["readme"], "pyproject.toml"}
    needed |= set(pyproject["tool"]["setuptools"]["package-dir"].values())
    sources = set()
    for args in df["COPY"]:
        sources.update(a for a in args.split()[:-1] if not a.startswith("--"))
    assert needed <= sources, f"not copied into the image: {needed - sources}"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for src in sources:
        assert (ROOT / src).exists(), src
        assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is excluded from the context"


# -- Kubernetes ----------------------------------------------------------------------------------


def test_deployment_probes_and_ports() -> None:
    c = container()
    opts = container_options()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == opts.port and ports["admin"] == opts.admin_port
    routes = {opts.port: api_routes(), opts.admin_port: admin_routes()}
    targets = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        port, path = targets[kind] = probe_target(c[kind], ports)
        assert port in routes, f"{kind} probes port {port}, not a ferryman port"
        assert path in routes[port], f"{kind}: no route {path} on port {port}"
    assert targets["livenessProbe"] == (opts.admin_port, "/health")
    assert targets["readinessProbe"][1] == "/ready"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > opts.startup_timeout


def test_deployment_admin_token_and_shutdown() -> None:
    dep = deployment()
    c = container()
    opts = container_options()
    if opts.admin_host not in ("127.0.0.1", "::1", "localhost"):
        (env,) = [e for e in c["env"] if e["name"] == "FERRYMAN_ADMIN_TOKEN"]
        assert "secretKeyRef" in env["valueFrom"]
        # An httpGet probe cannot send a token taken from a Secret.
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = c[kind].get("httpGet", {}).get("port")
            assert port not in ("admin", opts.admin_port), kind
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    sleep = float(pre_stop[-1]) if pre_stop[0] == "sleep" else 0.0
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= sleep + 2 * opts.graceful_timeout + 10
    assert "resources" in c
    notes = dep["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/port"] == str(opts.admin_port)
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


def test_kustomization() -> None:
    (kust,) = k8s("kustomization.yaml")
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return
    try:
        res = subprocess.run(
            [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.skip("kubectl kustomize did not answer")
    assert res.returncode == 0, res.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(res.stdout) if d}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= kinds


# -- Prometheus and Grafana ----------------------------------------------------------------------


def test_prometheus_scrape_config() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (PROM / rule_file).is_file(), rule_file
    for job in config["scrape_configs"]:
        assert job["metrics_path"] in admin_routes()
    (static,) = [j for j in config["scrape_configs"] if "static_configs" in j]
    port = int(static["static_configs"][0]["targets"][0].rpartition(":")[2])
    assert port == read_config_file(str(SYSTEMD / "ferryman.toml"))["admin_port"]


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
    promtool = shutil.which("promtool")
    if promtool is not None:
        res = subprocess.run(
            [promtool, "check", "rules", str(PROM / "ferryman-rules.yml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    exprs = []
    for p in panels:
        assert p["title"] and p["gridPos"] and p["targets"], p.get("title")
        exprs += [t["expr"] for t in p["targets"]]
    text = " ".join(exprs)
    for name in (
        "ferryman_requests_total",
        "ferryman_request_duration_seconds_bucket",
        "ferryman_batch_size_",
        "ferryman_queue_duration_seconds_bucket",
        "ferryman_workers{",
        "ferryman_process_restarts_total",
        "ferryman_process_cpu_seconds_total",
        "ferryman_process_resident_memory_bytes",
    ):
        assert name in text, name
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert "datasource" in variables
