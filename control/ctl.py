"""`ferryman ctl`: the admin API from the command line (runs in the operator's shell).

    ferryman ctl status                  every process, grouped by model
    ferryman ctl models                  the models: path, devices, workers ready
    ferryman ctl scale [MODEL] N         N workers, waiting until they are ready
    ferryman ctl load NAME=APP [--set KEY=VALUE ...]   register a model and wait for it
    ferryman ctl unload NAME             drain and stop a model's workers
    ferryman ctl restart [MODEL] ID      replace a worker (the new one ready first)
    ferryman ctl restart-api ID          replace an API process
    ferryman ctl reload [MODEL]          rolling reload (as SIGHUP), or of one model
    ferryman ctl metrics                 the Prometheus text

--admin URL (default $FERRYMAN_ADMIN or http://127.0.0.1:8001), token from $FERRYMAN_ADMIN_TOKEN,
--json for scripts. Exits 1 with a one-line message when the server is unreachable or says no.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


def add_parser(sub: Any) -> None:
    ctl = sub.add_parser(
        "ctl",
        help="talk to a running server's admin port",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ctl.add_argument(
        "--admin",
        default=os.environ.get("FERRYMAN_ADMIN", "http://127.0.0.1:8001"),
        metavar="URL",
        help="admin URL [default: $FERRYMAN_ADMIN or http://127.0.0.1:8001]",
    )
    ctl.add_argument("--json", action="store_true", help="print the JSON answer")
    ctl.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for an answer [default: 600]",
    )
    what = ctl.add_subparsers(dest="action", metavar="ACTION", required=True)
    what.add_parser("status", help="every process: model, role, id, pid, device, state")
    what.add_parser("models", help="the models: path, devices, workers ready")
    scale = what.add_parser("scale", help="set the number of workers of a model")
    scale.add_argument("target", nargs="+", metavar="[MODEL] N")
    scale.add_argument("--no-wait", action="store_true", help="return at once (202)")
    load = what.add_parser("load", help="register a model (NAME=APP) and wait until it serves")
    load.add_argument("model", metavar="NAME=APP")
    load.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model option, e.g. --set max_batch_size=8 (repeatable)",
    )
    load.add_argument("--no-wait", action="store_true", help="return at once (202)")
    unload = what.add_parser("unload", help="drain and stop a model's workers")
    unload.add_argument("name")
    restart = what.add_parser("restart", help="replace a worker (the new one ready first)")
    restart.add_argument("target", nargs="+", metavar="[MODEL] ID")
    restart_api = what.add_parser("restart-api", help="replace an API process")
    restart_api.add_argument("api_id", type=int)
    reload = what.add_parser("reload", help="rolling reload of every process, or of one model")
    reload.add_argument("model", nargs="?")
    what.add_parser("metrics", help="print the Prometheus metrics")


class CtlError(Exception):
    pass


def call(base: str, method: str, path: str, body: Any = None, timeout: float = 600.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    token = os.environ.get("FERRYMAN_ADMIN_TOKEN")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            ctype = resp.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            err = json.loads(raw)["error"]
            msg = f"{err.get('type')}: {err.get('message')}"
        except Exception:
            msg = raw.decode(errors="replace")[:200]
        raise CtlError(f"{method} {path} answered {e.code}: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CtlError(f"cannot reach the admin port at {base}: {reason}") from None
    if "json" in ctype:
        return json.loads(raw)
    return raw.decode()


def _row(row: dict[str, Any]) -> str:
    up = "-" if row["uptime_s"] is None else f"{row['uptime_s']:.0f}s"
    return (
        f"{row['role']:<8}{row['id']:>4}  {row['pid'] or '-':>8}  {row['device']:<8} "
        f"{row['state']:<9} {row['restarts']:>8} {row['requests_in_flight']:>9} "
        f"{row['served']:>8}  {up:>8}  {row['last_exit'] or ''}"
    )


def status_table(status: dict[str, Any]) -> str:
    sup = status["supervisor"]
    head = (
        f"{'ROLE':<8}{'ID':>4}  {'PID':>8}  {'DEVICE':<8} {'STATE':<9} {'RESTARTS':>8} "
        f"{'IN-FLIGHT':>9} {'SERVED':>8}  {'UPTIME':>8}  LAST EXIT"
    )
    lines = [
        f"ferryman {sup['version']}  pid {sup['pid']}  listen {sup['listen']}  "
        f"{'ready' if sup['ready'] else 'NOT READY'}  up {sup['uptime_s']:.0f}s"
        + (f"  ({sup['operation']})" if sup.get("operation") else ""),
        "",
        "API processes",
        head,
        *(_row(r) for r in status["api_servers"]),
    ]
    for m in status["models"]:
        lines += [
            "",
            f"model {m['name']}  {m['api_path']}  {m['state']}  "
            f"{m['workers_ready']}/{m['workers_desired']} ready  on {','.join(m['devices'])}"
            + (f"  error: {m['error']}" if m.get("error") else ""),
            head,
            *(_row(r) for r in m["workers"]),
        ]
    return "\n".join(lines)


def models_table(models: list[dict[str, Any]]) -> str:
    lines = [f"{'MODEL':<16} {'STATE':<9} {'READY':>7}  {'PATH':<24} {'DEVICES':<16} APP"]
    for m in models:
        ready = f"{m['workers_ready']}/{m['workers_desired']}"
        lines.append(
            f"{m['name']:<16} {m['state']:<9} {ready:>7}  {m['api_path']:<24} "
            f"{','.join(m['devices']):<16} {m['app']}"
        )
    return "\n".join(lines)


def _model_and_number(target: list[str], what: str) -> tuple[str | None, int]:
    if len(target) not in (1, 2):
        raise CtlError(f"expected [MODEL] {what}")
    try:
        n = int(target[-1])
    except ValueError:
        raise CtlError(f"{what} must be a whole number, got {target[-1]!r}") from None
    return (target[0] if len(target) == 2 else None), n


def _options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CtlError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    base, t = args.admin, args.timeout
    show = lambda out, text: print(json.dumps(out, indent=2) if args.json else text)  # noqa: E731
    try:
        if args.action == "status":
            out = call(base, "GET", "/v1/status", timeout=t)
            show(out, status_table(out))
        elif args.action == "models":
            out = call(base, "GET", "/v1/models", timeout=t)
            show(out, models_table(out["models"]))
        elif args.action == "scale":
            model, n = _model_and_number(args.target, "N")
            q = "" if args.no_wait else f"?wait=true&timeout={t}"
            path = f"/v1/models/{urllib.parse.quote(model)}/workers" if model else "/v1/workers"
            out = call(base, "PUT", path + q, {"count": n}, timeout=t + 5)
            show(out, f"{out.get('model') or 'workers'}: {out['target']} ({out['state']})")
        elif args.action == "load":
            name, sep, app = args.model.partition("=")
            if not sep or not name or not app:
                raise CtlError(f"expected NAME=APP, got {args.model!r}")
            q = "" if args.no_wait else f"?wait=true&timeout={t}"
            body = {"name": name, "app": app, **_options(args.set)}
            out = call(base, "POST", "/v1/models" + q, body, timeout=t + 5)
            show(out, f"model {out['name']}: {out['state']} on {out['api_path']}")
        elif args.action == "unload":
            q = f"?wait=true&timeout={t}"
            out = call(
                base, "DELETE", f"/v1/models/{urllib.parse.quote(args.name)}" + q, timeout=t + 5
            )
            show(out, f"model {args.name}: removed ({len(out.get('stopped', []))} workers stopped)")
        elif args.action == "restart":
            model, worker = _model_and_number(args.target, "ID")
            path = (
                f"/v1/models/{urllib.parse.quote(model)}/workers/{worker}/restart"
                if model
                else f"/v1/workers/{worker}/restart"
            )
            out = call(base, "POST", path, timeout=t)
            show(out, "restarting")
        elif args.action == "restart-api":
            out = call(base, "POST", f"/v1/api-servers/{args.api_id}/restart", timeout=t)
            show(out, "restarting")
        elif args.action == "reload":
            path = (
                f"/v1/models/{urllib.parse.quote(args.model)}/reload"
                if args.model
                else "/v1/reload"
            )
            out = call(base, "POST", path + f"?timeout={t}", timeout=t + 5)
            show(
                out,
                f"reloaded: {len(out['started'])} started, {len(out['stopped'])} stopped, "
                f"{len(out['kept'])} kept",
            )
        elif args.action == "metrics":
            sys.stdout.write(call(base, "GET", "/metrics", timeout=t))
    except CtlError as e:
        print(f"ferryman ctl: {e}", file=sys.stderr)
        return 1
    return 0
