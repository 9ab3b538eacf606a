"""A configuration from what the operator gave: the config file, the app argument, the flags, a
model added over the admin API; names and API paths checked, relative paths made absolute.

Used by the CLI, `Server`, the LitServe shim and the admin API (in the supervisor, which must not
import user code: an app file is only parsed here, never run).
"""

from __future__ import annotations

import ast
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ferryman.options import (
    MODEL,
    MODEL_OPTS,
    Config,
    LitServerOptions,
    ModelOptions,
    ModelSpec,
    OptionError,
    ServerOptions,
    parse_mapping,
    split_scopes,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Routes of the API port that a model's api_path may not take.
RESERVED_PATHS = frozenset(
    {"/", "/health", "/ready", "/info", "/v1/models", "/v1/chat/completions", "/v1/embeddings"}
)


def read_config_file(path: str) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """(top-level options, the [[models]] tables or None). The top level may also be [ferryman].

    A model table holds `name` (optional with one model), `app` and any model option."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except IsADirectoryError:
        raise OptionError(f"--config: {path} is a directory, not a TOML file") from None
    except OSError as e:
        raise OptionError(f"--config: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise OptionError(f"--config: {path} is not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise OptionError(f"--config: {path} is not valid TOML: {e}") from None
    if isinstance(data.get("ferryman"), dict):
        data = data["ferryman"]
    origin = f"{path}: "
    models_raw = data.pop("models", None)
    top: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in ("app", "name"):
            top[name] = str(value)
            continue
        top.update(parse_mapping({name: value}, origin))
    if models_raw is None:
        return top, None
    if not isinstance(models_raw, list) or not all(isinstance(m, dict) for m in models_raw):
        raise OptionError(f"{origin}models must be an array of tables: [[models]]")
    if "app" in top:
        raise OptionError(f"{origin}'app' at the top level and [[models]]: use one or the other")
    models: list[dict[str, Any]] = []
    for i, raw in enumerate(models_raw):
        where = f"{origin}models[{i}]: "
        entry: dict[str, Any] = {}
        for key, value in raw.items():
            name = str(key).replace("-", "_")
            if name in ("app", "name"):
                if not isinstance(value, str) or not value:
                    raise OptionError(f"{where}{name} must be a non-empty string")
                entry[name] = value
            else:
                entry.update(parse_mapping({name: value}, where, scope=MODEL))
        if "app" not in entry:
            raise OptionError(f'{where}no app (e.g. app = "models.py:Embedder")')
        models.append(entry)
    return top, models


def parse_app_arg(arg: str) -> tuple[str | None, str]:
    """`NAME=APP` or `APP` -> (name or None, app)."""
    name, sep, app = arg.partition("=")
    if sep and ":" not in name and "/" not in name:
        return name, app
    return None, arg


def default_name(app: str) -> str:
    """The model name an APP gets when none is given: its class name, lower-cased."""
    return app.rpartition(":")[2].rpartition(".")[2].lower() or "model"


def check_app(app: str) -> None:
    module, sep, name = app.rpartition(":")
    if not sep or not module or not name:
        raise OptionError(
            f"APP {app!r} must look like app.py:MyAPI or package.module:MyAPI (or NAME=APP)"
        )


def check_name(name: str, origin: str = "") -> None:
    if not NAME_RE.match(name):
        raise OptionError(
            f"{origin}model name {name!r}: use letters, digits, '.', '_' and '-' (at most 64), "
            "starting with a letter or digit"
        )


def make_model(
    entry: Mapping[str, Any], defaults: Mapping[str, Any], overrides: Mapping[str, Any]
) -> ModelSpec:
    """A model from its entry (name, app, instance_file, code_options, its own options), the
    defaults every model shares, and the flags that beat both."""
    app = str(entry["app"])
    check_app(app)
    name = str(entry.get("name") or default_name(app))
    check_name(name)
    code = dict(entry.get("code_options") or {})
    own = {k: v for k, v in entry.items() if k in MODEL_OPTS}
    values = {**defaults, **code, **own, **overrides}
    return ModelSpec(
        name=name,
        app=app,
        options=ModelOptions(**values),
        instance_file=entry.get("instance_file"),
        code_options=code,
        main_file=entry.get("main_file"),
    )


def resolve_paths(models: Sequence[ModelSpec], origin: str = "") -> None:
    """Give every model its route, and refuse two models on one path or one name twice."""
    seen_names: dict[str, ModelSpec] = {}
    for m in models:
        if m.name in seen_names:
            raise OptionError(
                f"{origin}two models are named {m.name!r} ({seen_names[m.name].app} and {m.app})"
            )
        seen_names[m.name] = m
    single = len(models) == 1
    seen_paths: dict[str, ModelSpec] = {}
    for m in models:
        if m.options.api_path is None:
            m.options.api_path = "/predict" if single else f"/{m.name}/predict"
        path = m.options.api_path
        if path in RESERVED_PATHS:
            raise OptionError(
                f"{origin}--api-path {path} (model {m.name!r}): {path} is one of the server's own "
                "routes; pick another path"
            )
        other = seen_paths.get(path)
        if other is not None:
            raise OptionError(
                f"{origin}models {other.name!r} and {m.name!r} are both on {path}: give one "
                "another api_path"
            )
        seen_paths[path] = m


def build_config(
    config_file: str | None,
    flags: Mapping[str, Any],
    apps: Sequence[str] = (),
    launch: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults, then the config file, then the app's own settings (`launch`: what `Server(...)`
    or `LitServer(...)` said), then flags (already parsed).

    The models come from `apps` (`NAME=APP` or `APP`) if any, else from `launch`, else from the
    file's [[models]] tables or its top-level `app`."""
    top: dict[str, Any] = {}
    file_models: list[dict[str, Any]] | None = None
    if config_file:
        top, file_models = read_config_file(config_file)
    launch = launch or {}
    server_flags, model_flags = split_scopes(flags)
    top_server, top_model = split_scopes(top)
    launch_server, launch_model = split_scopes(launch.get("options", {}))
    server_values = {**top_server, **launch_server, **server_flags}
    server = ServerOptions(**server_values)
    if launch.get("litserve"):
        try:
            server.litserve = msgspec.convert(launch["litserve"], LitServerOptions)
        except msgspec.ValidationError as e:
            raise OptionError(f"the launch file's LitServer settings: {e}") from None
    if server.admin_token is None:
        server.admin_token = os.environ.get("FERRYMAN_ADMIN_TOKEN") or None
    if server.api_key is None:
        server.api_key = (
            os.environ.get("FERRYMAN_API_KEY") or os.environ.get("LIT_SERVER_API_KEY") or None
        )
    defaults = {**top_model, **launch_model}
    entries: list[dict[str, Any]]
    if apps:
        entries = []
        for arg in apps:
            name, app = parse_app_arg(arg)
            entries.append({"name": name, "app": app})
    elif launch.get("models"):
        entries = [dict(m) for m in launch["models"]]
    elif file_models is not None:
        entries = file_models
    elif top.get("app"):
        entries = [{"name": top.get("name"), "app": top["app"]}]
    else:
        entries = []
    models = [make_model(e, defaults, model_flags) for e in entries]
    models = _unique_names(models, explicit=[e.get("name") for e in entries])
    resolve_paths(models, f"{config_file}: " if config_file and not apps else "")
    return Config(server=server, models=models)


def _unique_names(models: list[ModelSpec], explicit: Sequence[Any]) -> list[ModelSpec]:
    """Models named after their class (no explicit name) get -2, -3 when a class serves twice; an
    explicit name used twice is an error, raised by resolve_paths."""
    taken = {m.name for m, given in zip(models, explicit, strict=True) if given}
    for m, given in zip(models, explicit, strict=True):
        if given:
            continue
        base, n = m.name, 1
        while m.name in taken:
            n += 1
            m.name = f"{base}-{n}"
        taken.add(m.name)
    return models


def model_from_request(
    body: Mapping[str, Any], defaults: ModelOptions, origin: str = ""
) -> ModelSpec:
    """A model registered at runtime (`POST /v1/models`): name, app and any model option."""
    body = dict(body)
    app = body.pop("app", None)
    name = body.pop("name", None)
    if not isinstance(app, str) or not app:
        raise OptionError(f'{origin}app is required (e.g. "models.py:Embedder")')
    if name is not None and not isinstance(name, str):
        raise OptionError(f"{origin}name must be a string")
    own = parse_mapping(body, origin, scope=MODEL)
    base = msgspec.structs.asdict(defaults)
    base["api_path"] = None
    return make_model({"name": name, "app": app, **own}, base, {})


def model_defaults(config_file: str | None, flags: Mapping[str, Any]) -> ModelOptions:
    """The options a model added at runtime starts from: the file's top level, then flags."""
    top: dict[str, Any] = {}
    if config_file:
        top, _ = read_config_file(config_file)
    _, top_model = split_scopes(top)
    _, model_flags = split_scopes(flags)
    return ModelOptions(**{**top_model, **model_flags})


def check_app_file(app: str) -> None:
    """For `file.py:Name`: the file exists and defines Name at its top level (read with ast, not
    imported). Dotted modules are left to the worker: finding one would import its package."""
    target, _, name = app.rpartition(":")
    if not (target.endswith(".py") or os.sep in target):
        return
    if not os.path.isfile(target):
        raise OptionError(f"app file {target!r} does not exist")
    try:
        with open(target, "rb") as f:
            tree = ast.parse(f.read(), filename=target)
    except (OSError, SyntaxError, ValueError):
        return  # the worker reports it with its traceback
    head = name.split(".")[0]
    if head not in _top_level_names(tree):
        raise OptionError(f"app {app!r}: {target} defines no {head!r} at its top level")


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(a.name == "*" for a in node.names):
                names.add("*")
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            # Definitions under if/try (a fallback import, a platform switch) count too.
            body = list(node.body) + list(getattr(node, "orelse", []))
            body += list(getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                body += handler.body
            names |= _top_level_names(ast.Module(body=body, type_ignores=[]))
    if "*" in names:
        return _Everything()
    return names


class _Everything(set[str]):
    """A module with `from x import *`: any name may be there."""

    def __contains__(self, item: object) -> bool:
        return True
