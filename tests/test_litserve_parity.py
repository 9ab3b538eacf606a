"""LitServe's own server files, served unchanged by `ferryman serve FILE.py`, answer as LitServe.

Each case of tests/litserve/expected.json (what real LitServe 0.2.19 answered) is replayed
through tests/litserve_harness.py: same file, same requests, byte for byte; ferryman's documented
differences are held to ferryman's documented answer (the harness's DIFFERENCES and REFUSED say
why). By default the cases that exercise the server itself run (routes, auth, /info, health,
docs, shutdown, gzip, several APIs, refusals at start); FERRYMAN_LITSERVE_CASES=all runs every
recorded case (about five minutes), or a comma-separated list of ids.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
from litserve_harness import CASES, REFUSED, replay

# The server-level cases (this suite's default), a few of each kind of API besides.
DEFAULT = [
    "simple_server",
    "default_api",
    "info_paths",
    "auth_api_key",
    "auth_multi_api",
    "shutdown_api",
    "compression",
    "multiple_endpoints",
    "mixed_stream_endpoints",
    "middlewares_starlette",
    "default_single_streaming",
    "default_openaispec_api_key",
    "default_openai_embedding_spec",
    "openai_custom_path",
    "deprecated_server_args",
    "deprecated_spec_arg",
    "max_payload_size_string",
    "response_types",
    "hooks_and_env",
    "logger_file",
    "health_custom",
    "auth_custom",
]
# Refused at start, by LitServe or by ferryman: cheap (nothing is served).
STARTUP = [
    "startup_path_collision",
    "startup_two_spec_apis",
    "startup_openai_not_generator",
    "startup_embedding_yield",
    "startup_stream_not_generator",
    "startup_async_not_async",
    "startup_setup_fails",
    "continuous_batching",
    "continuous_batching_servable",
    "middlewares_request_id",
]


def _selected() -> list[str]:
    wanted = os.environ.get("FERRYMAN_LITSERVE_CASES", "")
    if wanted == "all":
        return list(CASES)
    if wanted:
        return [c.strip() for c in wanted.split(",") if c.strip()]
    return DEFAULT + STARTUP


def _missing_needs(case: dict[str, object]) -> str | None:
    """The case needs modules this Python lacks (or must lack one it has)."""
    for need in case.get("needs") or []:  # type: ignore[attr-defined]
        name = str(need)
        present = importlib.util.find_spec(name.lstrip("!").split(".")[0]) is not None
        if name.startswith("!") and present:
            return f"recorded without {name[1:]}, which is installed here"
        if not name.startswith("!") and not present:
            return f"needs {name}"
    return None


# LitServe refused these at start (exit 1); ferryman refuses them too, before anything starts:
# exit status 2 with LitServe's own message where LitServe's check caught it (run here on a
# copy of each LitAPI), or 3 with the traceback where the file's own code raised (as for any
# app that cannot start).
STARTUP_EXIT = {
    "startup_path_collision": 2,
    "startup_two_spec_apis": 2,
    "startup_openai_not_generator": 2,
    "startup_embedding_yield": 2,
    "startup_stream_not_generator": 2,
    "startup_async_not_async": 3,  # LitAPI(enable_async=True) raises in the file itself
    "startup_setup_fails": 3,  # setup() raises in the worker
    "continuous_batching": 2,  # ferryman refuses custom loops (LitServe: KeyError)
}


# Where ferryman's refusal names something else than LitServe's error did.
STARTUP_NAMED = {
    # LitServe fails with KeyError: 'request' (its route needs a `request` argument); ferryman
    # refuses the custom loop first.
    "continuous_batching": "loop=ContinuousBatchingLoop",
}


def _normal(text: str) -> str:
    return re.sub(r" at 0x[0-9a-f]+", " at 0x...", text)


@pytest.mark.parametrize("case_id", _selected())
def test_litserve_case(case_id: str, tmp_path: Path) -> None:
    case = CASES[case_id]
    why = _missing_needs(case)
    if why:
        pytest.skip(why)
    r = replay(case_id, tmp_path)
    if case_id in REFUSED:
        named, reason = REFUSED[case_id]
        assert not r.started, f"{case_id} should be refused at start ({reason})"
        assert r.exit_code == 2, r.log[-2000:]
        errors = [line for line in r.log.splitlines() if line.startswith("ferryman: error:")]
        assert len(errors) == 1 and named in errors[0], r.log[-2000:]
        return
    if "exit_code" in case["startup"]:
        assert not r.started
        assert r.exit_code == STARTUP_EXIT[case_id], r.log[-3000:]
        recorded = case["startup"]["error"].split(": ", 1)[-1]
        if recorded.startswith("("):  # LitServe raised a tuple of parts; ferryman says them
            recorded = "".join(ast.literal_eval(recorded))
        recorded = STARTUP_NAMED.get(case_id, recorded)
        if r.exit_code == 2:
            # One line naming it: `ferryman: error: <LitServe's message>` (which may itself
            # span lines, as LitServe's OpenAISpec example does).
            assert r.log.count("ferryman: error:") == 1, r.log[-3000:]
            assert recorded.splitlines()[0] in _normal(r.log), r.log[-3000:]
            assert "Traceback" not in r.log
        elif case_id != "startup_setup_fails":
            assert recorded.splitlines()[0] in r.log, r.log[-3000:]
        return
    assert r.started, r.log[-3000:]
    assert not r.mismatches, "\n".join(r.mismatches) + "\n" + r.log[-2000:]
    for name, text in (case.get("files_written") or {}).items():
        assert r.files.get(name) == text, f"{name}: {r.files.get(name)!r}"


def test_default_selection_exists() -> None:
    """Every id this suite names is a recorded case (a typo would silently test nothing)."""
    assert set(DEFAULT + STARTUP) <= set(CASES)
    assert set(STARTUP_EXIT) | set(REFUSED) >= {
        c for c in STARTUP if "exit_code" in CASES[c]["startup"]
    }


def test_harness_sees_a_difference(tmp_path: Path) -> None:
    """The comparison can fail: a recorded answer changed by one byte is reported."""
    import litserve_harness as h

    case = json.loads(json.dumps(CASES["simple_server"]))
    step = case["steps"][0]
    actual = json.loads(json.dumps(step))
    assert h._compare_step("simple_server", step, actual, False) == []
    actual["response"]["text"] = actual["response"]["text"].replace("16.0", "16.5")
    actual["response"]["headers"]["x-extra"] = "1"
    out = h._compare_step("simple_server", step, actual, False)
    assert any("response.text" in line for line in out)
    assert any("x-extra" in line for line in out)
