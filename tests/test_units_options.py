"""Fast in-process tests of option and configuration parsing (what `ferryman serve` accepts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferryman.config import build_config, check_app_file, model_from_request, parse_app_arg
from ferryman.options import ModelOptions, OptionError, parse_value


@pytest.mark.parametrize(
    "value, expected",
    [("auto", "auto"), ("2", 2), ("0,2", [0, 2]), ("[1, 3]", [1, 3]), (2, 2), ([0], [0])],
)
def test_devices(value, expected) -> None:
    assert parse_value("devices", value) == expected


@pytest.mark.parametrize("value", ["x,y", "0", "-1", "0,0", [], [True], [1.5], True])
def test_bad_devices(value) -> None:
    with pytest.raises(OptionError, match="--devices"):
        parse_value("devices", value)


@pytest.mark.parametrize("value", ["none", "off", "false", False, None, 0, "-1", -1])
def test_no_timeout(value) -> None:
    assert parse_value("timeout", value) is None


@pytest.mark.parametrize(
    "name", ["timeout", "graceful_timeout", "batch_timeout", "heartbeat_timeout"]
)
@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e999"])
def test_non_finite_seconds_are_refused(name, value) -> None:
    with pytest.raises(OptionError, match="--" + name.replace("_", "-")):
        parse_value(name, value)


def test_sizes() -> None:
    assert parse_value("max_payload_size", "10M") == 10 * 2**20
    assert parse_value("worker_max_rss", "1.5GiB") == int(1.5 * 2**30)
    assert parse_value("worker_max_rss", "none") is None
    with pytest.raises(OptionError, match="--max-payload-size"):
        parse_value("max_payload_size", "ten")


def test_app_args() -> None:
    assert parse_app_arg("embed=models.py:Embedder") == ("embed", "models.py:Embedder")
    assert parse_app_arg("models.py:Embedder") == (None, "models.py:Embedder")
    assert parse_app_arg("pkg.mod:Name") == (None, "pkg.mod:Name")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ferryman.toml"
    path.write_text(text)
    return str(path)


def test_two_models_from_a_file_with_defaults_and_flags(tmp_path) -> None:
    cfg = write(
        tmp_path,
        """
api_servers = 2
max_batch_size = 4
[[models]]
name = "embed"
app = "models.py:Embedder"
devices = [0]
workers_per_device = 2
max_batch_size = 32
[[models]]
app = "models.py:Reranker"
accelerator = "cpu"
api_path = "/rerank"
""",
    )
    config = build_config(cfg, {"timeout": 7.0})
    assert config.server.api_servers == 2
    embed, rerank = config.models
    assert (embed.name, embed.api_path, embed.options.max_batch_size) == (
        "embed",
        "/embed/predict",
        32,
    )
    assert embed.options.devices == [0] and embed.options.workers_per_device == 2
    assert (rerank.name, rerank.api_path, rerank.options.max_batch_size) == (
        "reranker",
        "/rerank",
        4,
    )
    assert embed.options.timeout == rerank.options.timeout == 7.0  # a flag beats the file
    flagged = build_config(cfg, {"max_batch_size": 8})
    assert [m.options.max_batch_size for m in flagged.models] == [8, 8]


def test_the_single_model_file_of_old_keeps_working(tmp_path) -> None:
    cfg = write(
        tmp_path, 'app = "examples/doubler.py:Doubler"\napi_path = "/x"\nworkers_per_device = 3\n'
    )
    (model,) = build_config(cfg, {}).models
    assert (model.name, model.api_path, model.options.workers_per_device) == ("doubler", "/x", 3)


def test_one_model_is_on_predict_several_on_their_names() -> None:
    (one,) = build_config(None, {}, ["a.py:Alpha"]).models
    assert one.api_path == "/predict"
    two = build_config(None, {}, ["a.py:Alpha", "b=a.py:Beta"]).models
    assert [(m.name, m.api_path) for m in two] == [("alpha", "/alpha/predict"), ("b", "/b/predict")]


def test_a_class_served_twice_gets_distinct_names() -> None:
    models = build_config(None, {}, ["a.py:Alpha", "a.py:Alpha"]).models
    assert [m.name for m in models] == ["alpha", "alpha-2"]


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[[models]]\nname="x"\napp="a.py:A"\n[[models]]\nname="x"\napp="b.py:B"\n', "named 'x'"),
        (
            '[[models]]\napp="a.py:A"\napi_path="/p"\n[[models]]\napp="b.py:B"\napi_path="/p"\n',
            "both on /p",
        ),
        ('[[models]]\napp="a.py:A"\napi_path="/health"\n', "/health"),
        ('[[models]]\napp="a.py:A"\nport=9\n', "'port' is a server option"),
        ('[[models]]\nname="bad name"\napp="a.py:A"\n', "model name"),
        ('[[models]]\nname="x"\n', "no app"),
        ("models = 3\n", "array of tables"),
        ('app="a.py:A"\n[[models]]\napp="b.py:B"\n', "one or the other"),
        ("workers_per_devic = 2\n", "workers_per_devic"),
        ('timeout = "inf"\n', "--timeout"),
        ('app = "no-colon"\n', "must look like"),
    ],
)
def test_bad_configs_name_what_is_wrong(tmp_path, text, needle) -> None:
    with pytest.raises(OptionError, match=needle) as e:
        build_config(write(tmp_path, text), {})
    assert "\n" not in str(e.value)


def test_unreadable_configs_are_one_line(tmp_path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'api_path = "/caf\xe9"\n')
    for path, needle in (
        (str(bad), "UTF-8"),
        (str(tmp_path), "directory"),
        (str(tmp_path / "no.toml"), "cannot read"),
    ):
        with pytest.raises(OptionError, match=needle) as e:
            build_config(path, {})
        assert "\n" not in str(e.value)


def test_a_model_registered_at_runtime() -> None:
    spec = model_from_request(
        {"name": "r", "app": "a.py:R", "max_batch_size": 8}, ModelOptions(timeout=5)
    )
    assert (spec.name, spec.options.max_batch_size, spec.options.timeout) == ("r", 8, 5)
    assert spec.options.api_path is None  # the supervisor gives it /r/predict
    for body, needle in (
        ({"app": "a.py:R", "port": 1}, "server option"),
        ({"name": "r"}, "app is required"),
        ({"app": "a.py:R", "max_batch_size": 0}, "--max-batch-size"),
    ):
        with pytest.raises(OptionError, match=needle):
            model_from_request(body, ModelOptions())


def test_app_files_are_checked_without_importing_them(tmp_path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        "raise SystemExit('imported!')\n"
        "class Model:\n    pass\n"
        "try:\n    from x import Y\nexcept ImportError:\n    Y = None\n"
    )
    check_app_file(f"{app}:Model")
    check_app_file(f"{app}:Y")
    with pytest.raises(OptionError, match="defines no 'Nope'"):
        check_app_file(f"{app}:Nope")
    with pytest.raises(OptionError, match="does not exist"):
        check_app_file(f"{tmp_path / 'missing.py'}:Model")
    check_app_file("some.module:Name")  # left to the worker: finding it would import its package
