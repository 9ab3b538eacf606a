"""Turning the medians into the Markdown tables, the target verdicts and results.json."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.peers.launch import LABELS, PEERS, VENV_PEERS

Medians = dict[str, dict[str, dict[str, Any]]]

WRK_SCENARIOS = (
    ("a1", "(a) trivial, 1 conn"),
    ("a32", "(a) trivial, 32 conn"),
    ("b", "(b) batching, 64 conn"),
    ("c", "(c) streaming 256 items, 8 conn"),
)


def fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float | int) and not isinstance(v, bool):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) < 1 and digits == 2 and v != 0:
            return f"{v:.3f}"
        return f"{v:.{digits}f}"
    return str(v)


def ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return float(a) / float(b)


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _peers(m: Medians) -> list[str]:
    present = {p for by_peer in m.values() for p in by_peer}
    return [p for p in PEERS if p in present]


def wrk_table(m: Medians) -> str:
    rows = [
        "| scenario | peer | req/s | p50 ms | p99 ms | req/s ÷ LitServe | req/s ÷ bare "
        "| p99 ÷ LitServe | notes |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for key, title in WRK_SCENARIOS:
        by_peer = m.get(key, {})
        lit, bare = by_peer.get("litserve", {}), by_peer.get("bare", {})
        for peer in _peers(m):
            v = by_peer.get(peer)
            if v is None:
                continue
            notes = []
            if key == "b" and v.get("mean_batch") is not None:
                notes.append(f"mean batch {v['mean_batch']:.2f}")
            if key == "c":
                notes.append(f"{fmt(v.get('items_per_s'))} items/s")
                notes.append(f"first item p50 {fmt(v.get('ttfi_p50_ms'))} ms")
            if v.get("errors"):
                notes.append(f"{fmt(v['errors'])} errors")
            rows.append(
                f"| {title} | {LABELS[peer]} | {fmt(v.get('rps'))} | {fmt(v.get('p50_ms'))} "
                f"| {fmt(v.get('p99_ms'))} | {fmt_ratio(ratio(v.get('rps'), lit.get('rps')))} "
                f"| {fmt_ratio(ratio(v.get('rps'), bare.get('rps')))} "
                f"| {fmt_ratio(ratio(v.get('p99_ms'), lit.get('p99_ms')))} | {'; '.join(notes)} |"
            )
    return "\n".join(rows)


def other_tables(m: Medians) -> str:
    out: list[str] = []
    d, e, f = m.get("d", {}), m.get("e", {}), m.get("f", {})
    if d:
        out += [
            "(d) memory, trivial model, whole process tree (PSS splits shared pages among "
            "the processes that share them; RSS counts them in each):",
            "",
            "| peer | processes | RSS idle MB | RSS under load MB | PSS idle MB "
            "| PSS under load MB | root process RSS MB |",
            "|---|--:|--:|--:|--:|--:|--:|",
        ]
        for peer in _peers(m):
            v = d.get(peer)
            if v:
                out.append(
                    f"| {LABELS[peer]} | {fmt(v.get('processes'), 0)} | {fmt(v['rss_idle_mb'], 1)} "
                    f"| {fmt(v['rss_load_mb'], 1)} | {fmt(v['pss_idle_mb'], 1)} "
                    f"| {fmt(v['pss_load_mb'], 1)} | {fmt(v['root_rss_load_mb'], 1)} |"
                )
        out.append("")
    if e:
        out += [
            "(e) start to first successful request:",
            "",
            "| peer | seconds | ÷ LitServe |",
            "|---|--:|--:|",
        ]
        lit = e.get("litserve", {}).get("startup_s")
        for peer in _peers(m):
            v = e.get(peer)
            if v:
                s = v.get("startup_s")
                out.append(f"| {LABELS[peer]} | {fmt(s)} | {fmt_ratio(ratio(s, lit))} |")
        out.append("")
    if f:
        out += [
            "(f) one worker SIGKILLed under load (32 connections, a request unanswered after "
            "the hang limit counts as hung):",
            "",
            "| peer | answered 200 | failed | of which hung | last failure after kill s "
            "| replacement up after s | slot serves again after s |",
            "|---|--:|--:|--:|--:|--:|--:|",
        ]
        for peer in _peers(m):
            v = f.get(peer)
            if v:
                window = v.get("window_s")
                again = v.get("serves_again_s")
                again_s = fmt(again) if again is not None else f"not within {fmt(window, 0)} s"
                out.append(
                    f"| {LABELS[peer]} | {fmt(v.get('ok'), 0)} | {fmt(v.get('failed'), 0)} "
                    f"| {fmt(v.get('hung'), 0)} | {fmt(v.get('last_failure_after_kill_s'))} "
                    f"| {fmt(v.get('respawn_s'))} | {again_s} |"
                )
        out.append("")
    return "\n".join(out)


# The batching case's targets, for every peer that batches (g).
CASE_P50_MAX = 1.5  # a lone client's p50, batching on / off
CASE_RPS_MIN = 3.0  # req/s at 64 connections, batching on / off


def case_ratios(m: Medians, peer: str, many: int = 64) -> tuple[float | None, float | None]:
    """(p50 on / off at 1 connection, req/s on / off at `many` connections) for one peer."""
    p50 = ratio(_get(m, "g1on", peer, "p50_ms"), _get(m, "g1off", peer, "p50_ms"))
    rps = ratio(_get(m, f"g{many}on", peer, "rps"), _get(m, f"g{many}off", peer, "rps"))
    return p50, rps


def _met(r: float | None, ok: bool) -> str:
    return "-" if r is None else ("yes" if ok else "**no**")


def _pair(m: Medians, key: str, peer: str, field: str) -> str:
    """`on / off` of one field of the batching case."""
    return f"{fmt(_get(m, key + 'on', peer, field))} / {fmt(_get(m, key + 'off', peer, field))}"


def batchcase_table(m: Medians, many: int = 64) -> str:
    """(g): per peer, batching on against off; empty when the case did not run."""
    ran = set(m.get("g1on", {})) | set(m.get("g1off", {}))
    peers = [p for p in _peers(m) if p in ran]
    if not peers:
        return ""
    out = [
        f"(g) batching case: {_case_model()}; 1 connection (a lone client) and {many} "
        "connections, batching on and off:",
        "",
        "| peer | p50 ms 1 conn on / off | p99 ms 1 conn on / off "
        f"| p50 on ÷ off (≤ {CASE_P50_MAX}x) | req/s {many} conn on / off "
        f"| req/s on ÷ off (≥ {CASE_RPS_MIN:.0f}x) | p99 ms {many} conn on / off | mean batch on |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    big = f"g{many}"
    for peer in peers:
        p50, rps = case_ratios(m, peer, many)
        keys = ("g1on", "g1off", big + "on", big + "off")
        errors = sum(int(_get(m, k, peer, "errors") or 0) for k in keys)
        mb = fmt(_get(m, big + "on", peer, "mean_batch"))
        out.append(
            f"| {LABELS[peer]} | {_pair(m, 'g1', peer, 'p50_ms')} "
            f"| {_pair(m, 'g1', peer, 'p99_ms')} "
            f"| {fmt_ratio(p50)} {_met(p50, p50 is not None and p50 <= CASE_P50_MAX)} "
            f"| {_pair(m, big, peer, 'rps')} "
            f"| {fmt_ratio(rps)} {_met(rps, rps is not None and rps >= CASE_RPS_MIN)} "
            f"| {_pair(m, big, peer, 'p99_ms')} | {mb}"
            + (f" ({errors} errors)" if errors else "")
            + " |"
        )
    out.append("")
    return "\n".join(out)


def _case_model() -> str:
    from benchmarks import models
    from benchmarks.peers.launch import Counts

    c = Counts()
    return (
        f"{models.CASE_FIXED_S * 1e3:g} ms a call + {models.CASE_ITEM_S * 1e3:g} ms an item, "
        f"max batch {c.case_max_batch_size}, batch timeout {c.case_batch_timeout * 1e3:g} ms"
    )


def _get(m: Medians, key: str, peer: str, field: str) -> Any:
    return m.get(key, {}).get(peer, {}).get(field)


def targets(m: Medians) -> list[dict[str, Any]]:
    """Issue 7's targets, each with what was measured and whether it holds."""
    out: list[dict[str, Any]] = []

    def add(name: str, measured: str, met: bool | None) -> None:
        out.append({"target": name, "measured": measured, "met": met})

    def vs(key: str, field: str, peer: str = "litserve") -> float | None:
        return ratio(_get(m, key, "ferryman", field), _get(m, key, peer, field))

    r = vs("a32", "rps")
    add("(a) 32 conn: req/s ≥ 5x LitServe", fmt_ratio(r), None if r is None else r >= 5)
    r = vs("a32", "p99_ms")
    add("(a) 32 conn: p99 ≤ 1/3 of LitServe's", fmt_ratio(r), None if r is None else r <= 1 / 3)
    r = vs("a32", "rps", "bare")
    add("(a) 32 conn: req/s ≥ 50% of bare uvicorn", fmt_ratio(r), None if r is None else r >= 0.5)
    p50 = _get(m, "a1", "ferryman", "p50_ms")
    add(
        "(a) 1 conn: p50 ≤ 0.4 ms",
        f"{fmt(p50)} ms" if p50 is not None else "-",
        None if p50 is None else p50 <= 0.4,
    )
    r = vs("b", "rps")
    mb = _get(m, "b", "ferryman", "mean_batch")
    add(
        "(b) batching: req/s ≥ 2x LitServe (mean batch reported)",
        f"{fmt_ratio(r)}, mean batch {fmt(mb)} "
        f"(LitServe {fmt(_get(m, 'b', 'litserve', 'mean_batch'))})",
        None if r is None else r >= 2,
    )
    r = vs("c", "items_per_s")
    add("(c) streaming: items/s ≥ 3x LitServe", fmt_ratio(r), None if r is None else r >= 3)
    r = vs("c", "ttfi_p50_ms")
    add(
        "(c) streaming: time to first item ≤ LitServe's",
        f"{fmt_ratio(r)} ({fmt(_get(m, 'c', 'ferryman', 'ttfi_p50_ms'))} ms vs "
        f"{fmt(_get(m, 'c', 'litserve', 'ttfi_p50_ms'))} ms)",
        None if r is None else r <= 1,
    )
    sup = [
        _get(m, "d", "ferryman", "root_rss_idle_mb"),
        _get(m, "d", "ferryman", "root_rss_load_mb"),
    ]
    sup_n = [x for x in sup if x is not None]
    add(
        "(d) supervisor RSS ≤ 60 MB",
        f"{fmt(max(sup_n), 1)} MB" if sup_n else "-",
        None if not sup_n else max(sup_n) <= 60,
    )
    ri, rl = vs("d", "rss_idle_mb"), vs("d", "rss_load_mb")
    pi, pl = vs("d", "pss_idle_mb"), vs("d", "pss_load_mb")
    add(
        "(d) whole tree ≤ LitServe's",
        f"RSS {fmt_ratio(ri)} idle, {fmt_ratio(rl)} loaded; PSS {fmt_ratio(pi)} idle, "
        f"{fmt_ratio(pl)} loaded",
        None if ri is None or rl is None else ri <= 1 and rl <= 1,
    )
    p50, rps = case_ratios(m, "ferryman")
    add(
        f"(g) batching: a lone client's p50, on ≤ {CASE_P50_MAX}x off",
        fmt_ratio(p50)
        + (
            f" ({fmt(_get(m, 'g1on', 'ferryman', 'p50_ms'))} ms vs "
            f"{fmt(_get(m, 'g1off', 'ferryman', 'p50_ms'))} ms)"
            if p50 is not None
            else ""
        ),
        None if p50 is None else p50 <= CASE_P50_MAX,
    )
    mb = _get(m, "g64on", "ferryman", "mean_batch")
    add(
        f"(g) batching: 64 conn req/s, on ≥ {CASE_RPS_MIN:.0f}x off",
        fmt_ratio(rps) + (f", mean batch {fmt(mb)}" if rps is not None else ""),
        None if rps is None else rps >= CASE_RPS_MIN,
    )
    f = m.get("f", {}).get("ferryman")
    if not f:
        add("(f) zero hung requests; only the killed worker's requests fail", "-", None)
        add("(f) its slot serves again within 1 s (+ setup, ~0 here)", "-", None)
    else:
        hung, failed = f.get("hung_max", f.get("hung")), f.get("failed")
        last = f.get("last_failure_after_kill_s")
        before = f.get("failed_before_kill_max", f.get("failed_before_kill")) or 0
        held = f.get("held_by_killed")
        extra = f.get("unexplained_failures_max", f.get("unexplained_failures"))
        only_held = failed is not None and before == 0 and (last or 0) <= 1.0
        if extra is not None:
            only_held = only_held and extra == 0
        add(
            "(f) zero hung requests; only the killed worker's requests fail",
            f"{fmt(hung, 0)} hung, {fmt(failed, 0)} failed"
            + (f" (the API processes report {fmt(held, 0)} held by it)" if held is not None else "")
            + f", the last {fmt(last)} s after the kill",
            bool(hung == 0 and only_held),
        )
        again = f.get("serves_again_s")
        add(
            "(f) its slot serves again within 1 s (+ setup, ~0 here)",
            f"{fmt(again)} s" if again is not None else "never within the window",
            None if again is None else again <= 1.0,
        )
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | ferryman measured | met |", "|---|---|---|"]
    verdict = {True: "yes", False: "**no**", None: "not measured"}
    for r in rows:
        lines.append(f"| {r['target']} | {r['measured']} | {verdict[r['met']]} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = 0.0
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def versions(peers: tuple[str, ...] | list[str], wrk_path: str) -> dict[str, str]:
    from benchmarks import tools

    out: dict[str, str] = {}
    try:
        import starlette
        import uvicorn

        import ferryman

        out.update(
            ferryman=ferryman.__version__,
            uvicorn=uvicorn.__version__,
            starlette=starlette.__version__,
        )
    except ImportError:
        pass
    for peer in peers:
        if peer in VENV_PEERS:
            out[peer] = tools.peer_version(peer)
    if "torchserve" in peers:
        out["java"] = _first_line(["java", "-version"]).removeprefix("openjdk version ")
    out["wrk"] = _first_line([wrk_path, "-v"]).split(" [")[0].removeprefix("wrk ")
    return out


def _first_line(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (p.stdout + p.stderr).strip().splitlines()
    return lines[0].strip('"') if lines else "?"


def layouts_table(layouts: dict[str, str]) -> str:
    lines = ["| peer | processes |", "|---|---|"]
    lines += [f"| {LABELS[p]} | {layouts[p]} |" for p in PEERS if p in layouts]
    return "\n".join(lines)


def markdown(
    m: Medians,
    rows: list[dict[str, Any]],
    mach: dict[str, Any],
    vers: dict[str, str],
    header: str,
    errors: list[str],
    layouts: dict[str, str] | None = None,
) -> str:
    parts = [
        header,
        "",
        f"Machine: {mach.get('cpus')} cores ({mach.get('cpu_model') or 'unknown CPU'}), "
        f"{mach.get('memory_gb')} GiB, Linux {mach.get('kernel')}, Python {mach.get('python')}. "
        + ", ".join(f"{k} {v}" for k, v in vers.items())
        + ".",
        "",
        *(
            [
                "Each peer's processes (where they are not 2 front-end + 2 model processes, "
                "the system cannot do otherwise):",
                "",
                layouts_table(layouts),
                "",
            ]
            if layouts
            else []
        ),
        wrk_table(m),
        "",
        batchcase_table(m),
        other_tables(m),
        "Targets of issue 7 and of the batching case (ferryman against the others in this run):",
        "",
        targets_table(rows),
    ]
    if errors:
        parts += ["", "Errors during the run:", ""] + [f"- {e}" for e in errors]
    return "\n".join(parts) + "\n"


def write(
    out_dir: Path,
    md: str,
    data: dict[str, Any],
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out_dir / "results.md", out_dir / "results.json"
    md_path.write_text(md)
    json_path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return md_path, json_path
