"""`ferryman ctl`: the admin API from the command line.

    ferryman ctl status            a table of every process
    ferryman ctl scale 4           four workers, waiting until they are ready
    ferryman ctl restart 2         drain and replace worker 2
    ferryman ctl reload            rolling reload (as SIGHUP)
    ferryman ctl metrics           the Prometheus text

--admin URL (default $FERRYMAN_ADMIN or http://127.0.0.1:8001), token from $FERRYMAN_ADMIN_TOKEN,
--json for scripts. Exits 1 with a one-line message when the server is unreachable or says no.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
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
    what.add_parser("status", help="every process: role, id, pid, device, state, restarts")
    scale = what.add_parser("scale", help="set the number of workers")
    scale.add_argument("count", type=int)
    scale.add_argument("--no-wait", action="store_true", help="return at once (202)")
    restart = what.add_parser("restart", help="drain and replace a worker")
    restart.add_argument("worker_id", type=int)
    restart_api = what.add_parser("restart-api", help="drain and replace an API process")
    restart_api.add_argument("api_id", type=int)
    what.add_parser("reload", help="rolling reload of every process")
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


def _table(status: dict[str, Any]) -> str:
    sup = status["supervisor"]
    lines = [
        f"ferryman {sup['version']}  pid {sup['pid']}  listen {sup['listen']}  "
        f"{'ready' if sup['ready'] else 'NOT READY'}  up {sup['uptime_s']:.0f}s"
        + (f"  ({sup['operation']})" if sup.get("operation") else ""),
        "",
        f"{'ROLE':<8}{'ID':>4}  {'PID':>8}  {'DEVICE':<8} {'STATE':<9} {'RESTARTS':>8} "
        f"{'IN-FLIGHT':>9} {'SERVED':>8}  {'UPTIME':>8}  LAST EXIT",
    ]
    for row in status["api_servers"] + status["workers"]:
        up = "-" if row["uptime_s"] is None else f"{row['uptime_s']:.0f}s"
        lines.append(
            f"{row['role']:<8}{row['id']:>4}  {row['pid'] or '-':>8}  {row['device']:<8} "
            f"{row['state']:<9} {row['restarts']:>8} {row['requests_in_flight']:>9} "
            f"{row['served']:>8}  {up:>8}  {row['last_exit'] or ''}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    base, t = args.admin, args.timeout
    try:
        if args.action == "status":
            out = call(base, "GET", "/v1/status", timeout=t)
            print(json.dumps(out, indent=2) if args.json else _table(out))
        elif args.action == "scale":
            q = "" if args.no_wait else f"?wait=true&timeout={t}"
            out = call(base, "PUT", f"/v1/workers{q}", {"count": args.count}, timeout=t + 5)
            print(
                json.dumps(out, indent=2)
                if args.json
                else f"workers: {out['target']} ({out['state']})"
            )
        elif args.action in ("restart", "restart-api"):
            path = (
                f"/v1/workers/{args.worker_id}/restart"
                if args.action == "restart"
                else f"/v1/api-servers/{args.api_id}/restart"
            )
            out = call(base, "POST", path, timeout=t)
            print(json.dumps(out, indent=2) if args.json else "restarting")
        elif args.action == "reload":
            out = call(base, "POST", "/v1/reload", timeout=t)
            print(
                json.dumps(out, indent=2)
                if args.json
                else f"reloaded: {len(out['started'])} started, {len(out['stopped'])} stopped, "
                f"{len(out['kept'])} kept"
            )
        elif args.action == "metrics":
            sys.stdout.write(call(base, "GET", "/metrics", timeout=t))
    except CtlError as e:
        print(f"ferryman ctl: {e}", file=sys.stderr)
        return 1
    return 0
