"""wrk: installing it, its Lua POST script, running it with a time limit, reading its output."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import procs

BODY = '{"input": 21}'

# done() prints one machine-readable line; wrk's own text report comes before it and is kept as a
# fallback (and for humans reading the raw logs). No response() callback: defining one switches
# wrk to a slower path that runs Lua for every response.
LUA = """\
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  local fields = {
    {"requests", summary.requests}, {"duration_us", summary.duration},
    {"bytes", summary.bytes}, {"connect", e.connect}, {"read", e.read}, {"write", e.write},
    {"status", e.status}, {"timeout", e.timeout},
    {"p50_us", latency:percentile(50)}, {"p90_us", latency:percentile(90)},
    {"p99_us", latency:percentile(99)}, {"mean_us", latency.mean}, {"max_us", latency.max},
  }
  local parts = {}
  for _, f in ipairs(fields) do
    local v = f[2]
    if v ~= v or v == math.huge then v = 0 end  -- no requests: nan, not JSON
    parts[#parts + 1] = string.format('"%%s": %%s', f[1], tostring(v))
  end
  io.write("BENCH_JSON {" .. table.concat(parts, ", ") .. "}\\n")
end
"""


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: int  # socket errors (connect, read, write, timeout) plus non-2xx/3xx answers
    non2xx: int
    timeouts: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def ensure_wrk(log: object = print) -> str:
    """Path of wrk, installed from Debian's packages when missing (the suite runs as root)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("wrk is not installed and cannot be installed here: apt-get install wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        if callable(log):
            log(f"installing wrk: {' '.join(cmd)}")
        subprocess.run(cmd, check=True, timeout=600, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get install wrk did not provide a wrk binary")
    return found


def write_script(directory: Path, body: str = BODY) -> Path:
    path = directory / "post.lua"
    path.write_text(LUA % {"body": body})
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(output: str) -> WrkResult:
    """Read a wrk run's stdout: the BENCH_JSON line when present, else wrk's text report."""
    for line in output.splitlines():
        if line.startswith("BENCH_JSON "):
            d = json.loads(line[len("BENCH_JSON ") :])
            duration = d["duration_us"] / 1e6
            socket_errors = d["connect"] + d["read"] + d["write"] + d["timeout"]
            return WrkResult(
                requests=d["requests"],
                duration_s=duration,
                rps=d["requests"] / duration if duration else 0.0,
                p50_ms=d["p50_us"] / 1e3,
                p90_ms=d["p90_us"] / 1e3,
                p99_ms=d["p99_us"] / 1e3,
                mean_ms=d["mean_us"] / 1e3,
                max_ms=d["max_us"] / 1e3,
                errors=socket_errors + d["status"],
                non2xx=d["status"],
                timeouts=d["timeout"],
            )
    return _parse_text(output)


def _parse_text(output: str) -> WrkResult:
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", output)
    if not m:
        raise ValueError("no wrk summary in output:\n" + output[-2000:])
    requests = int(m.group(1))
    duration = _ms(m.group(2)) / 1e3
    pct: dict[int, float] = {}
    for p, v in re.findall(r"^\s+(\d+)%\s+([\d.]+\w+)\s*$", output, re.M):
        pct[int(p)] = _ms(v)
    lat = re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", output)
    mean_ms, max_ms = (_ms(lat.group(1)), _ms(lat.group(3))) if lat else (0.0, 0.0)
    errs = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    socket_errors = sum(int(g) for g in errs.groups()) if errs else 0
    timeouts = int(errs.group(4)) if errs else 0
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    non2xx = int(non.group(1)) if non else 0
    rps_m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    return WrkResult(
        requests=requests,
        duration_s=duration,
        rps=float(rps_m.group(1)) if rps_m else (requests / duration if duration else 0.0),
        p50_ms=pct.get(50, 0.0),
        p90_ms=pct.get(90, 0.0),
        p99_ms=pct.get(99, 0.0),
        mean_ms=mean_ms,
        max_ms=max_ms,
        errors=socket_errors + non2xx,
        non2xx=non2xx,
        timeouts=timeouts,
    )


def run(
    wrk: str,
    script: Path,
    url: str,
    connections: int,
    duration_s: float,
    threads: int = 1,
    timeout_s: float = 5.0,
    log_path: Path | None = None,
) -> WrkResult:
    """One wrk run; killed (and an error raised) if it outlives its duration by far."""
    cmd = [
        wrk,
        f"-t{max(1, min(threads, connections))}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = procs.run_bounded(cmd, timeout=duration_s + timeout_s + 15)
    if log_path is not None:
        log_path.write_text(" ".join(cmd) + "\n" + out)
    return parse(out)
