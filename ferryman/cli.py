"""`ferryman serve APP... [flags]`, `ferryman ctl ...`, `ferryman --version` (the command line).

`ferryman serve` becomes the supervisor: it parses and checks everything it can without importing
the user's code, then runs it (same process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn

from ferryman._version import __version__
from ferryman.config import build_config, check_app_file, parse_app_arg
from ferryman.options import (
    MODEL_OPTS,
    OPTS,
    SERVER_OPTS,
    Config,
    OptionError,
    parse_mapping,
    parse_value,
)

SERVE_EPILOG = """\
APP is path/to/file.py:Name or package.module:Name (Name: an API class, instantiated with no
arguments, or an instance); NAME=APP names the model (else it is the class name, lower-cased).
A file alone (ferryman serve server.py) is run as `python server.py` would run it, its
LitServe LitServer(...).run() (or ferryman.Server(...).run()) served by ferryman, the flags
given here beating the file's arguments.
Several APPs serve several models, each on /NAME/predict (one model: /predict). Every flag may
also be a key of --config FILE (TOML, same names with underscores), where [[models]] tables give
each model its own options; a flag beats the file, for every model. SIGHUP re-reads the file and
replaces every process, one at a time, without dropping requests.

examples:
  ferryman serve examples/doubler.py:Doubler --workers-per-device 2
  ferryman serve app.py:Model --accelerator cuda --devices 0,1 --max-batch-size 8
  ferryman serve embed=models.py:Embedder rerank=models.py:Reranker
  ferryman serve --config ferryman.toml
  ferryman serve server.py --port 8080          # a LitServe server file, unchanged
"""

DOCKERFILE = """\
# Written by `ferryman dockerize {file}` (ferryman {version}).
# The base is ferryman's image; build it once from ferryman's repository:
#   docker build -f deploy/Dockerfile -t ferryman .
# Then, here:
#   docker build -t {image} .
#   docker run --rm -p {port}:{port}{gpus} {image}
ARG FERRYMAN_IMAGE=ferryman
FROM ${{FERRYMAN_IMAGE}}

####### Add your own installation commands here #######
# RUN pip install some-package
# RUN wget https://path/to/some/data/or/weights
# USER 0
# RUN apt-get update && apt-get install -y --no-install-recommends <package-name>
# USER 10001

WORKDIR /app
USER 0
{install}COPY --chown=10001:10001 . /app
USER 10001
EXPOSE {port}
# The image's entry point is `ferryman serve --host 0.0.0.0`.
CMD [{cmd}]
"""


class Parser(argparse.ArgumentParser):
    """One line per error (not argparse's usage block), exit status 2; no abbreviated flags
    (`--workers 2` must not quietly mean --workers-per-device)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ferryman: error: {message} (see ferryman {self._sub()}--help)\n")

    def _sub(self) -> str:
        parts = self.prog.split()[1:]
        return " ".join(parts) + " " if parts else ""


def _typed(name: str) -> Any:
    def parse(value: str) -> Any:
        try:
            return parse_value(name, value)
        except OptionError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None

    parse.__name__ = name.replace("_", "-")  # argparse names it in "invalid X value"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ferryman",
        description="Serve models over HTTP under a process supervisor.",
    )
    parser.add_argument("--version", action="version", version=f"ferryman {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    serve = sub.add_parser(
        "serve",
        help="start a server on one or more API classes",
        description="Start the supervisor, its uvicorn API processes and inference workers.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "apps",
        nargs="*",
        metavar="APP",
        help="[NAME=]path/to/file.py:Name or [NAME=]module:Name; several for several models",
    )
    serve.add_argument("--config", metavar="FILE", help="a TOML file with any of the options below")
    serve.add_argument("--launch-file", dest="launch_file", help=argparse.SUPPRESS)
    groups = {
        "model": serve.add_argument_group(
            "model options", "the defaults of every model (a [[models]] table may set its own)"
        ),
        "server": serve.add_argument_group("server options"),
    }
    for opt in OPTS:
        group = groups[opt.scope]
        if opt.is_flag:
            group.add_argument(
                opt.flag,
                dest=opt.name,
                action="store_true",
                default=argparse.SUPPRESS,
                help=opt.help,
            )
        else:
            group.add_argument(
                opt.flag,
                dest=opt.name,
                type=_typed(opt.name),
                metavar=opt.metavar,
                default=argparse.SUPPRESS,
                help=opt.help,
            )
    from ferryman.control.ctl import add_parser as add_ctl

    add_ctl(sub)
    docker = sub.add_parser(
        "dockerize",
        help="write a Dockerfile that serves a server file with ferryman",
        description="Write ./Dockerfile for SERVER.py (in the current directory): ferryman's "
        "image, your requirements.txt, and `ferryman serve SERVER.py` (as `litserve "
        "dockerize` does for LitServe).",
    )
    docker.add_argument("server", metavar="SERVER.py", help="the server file, or FILE.py:Name")
    docker.add_argument("--port", type=_typed("port"), default=8000, help="[default: 8000]")
    docker.add_argument(
        "--gpu", action="store_true", help="serve on CUDA GPUs (docker run --gpus all)"
    )
    docker.add_argument("--force", action="store_true", help="replace an existing Dockerfile")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    if args.command == "serve":
        return serve(args, raw)
    if args.command == "dockerize":
        return dockerize(args)
    if args.command == "ctl":
        from ferryman.control.ctl import run as run_ctl

        return run_ctl(args)
    parser.print_help()
    return 2


def fail(message: str) -> NoReturn:
    print(f"ferryman: error: {message}", file=sys.stderr)
    sys.exit(2)


def serve(args: argparse.Namespace, raw: list[str] | None = None) -> int:
    flags = {k: v for k, v in vars(args).items() if k in SERVER_OPTS or k in MODEL_OPTS}
    script = _script(args.apps)
    if script is not None:
        if args.launch_file:
            fail("--launch-file cannot be given with a server file")
        return serve_file(script, _flags_only(raw or [], script))
    try:
        launch = read_launch(args.launch_file) if args.launch_file else None
        config = build_config(args.config, flags, args.apps, launch)
        if not config.models:
            fail("no APP given (e.g. ferryman serve app.py:MyAPI, or [[models]] in --config)")
        check(config)
    except OptionError as e:
        fail(str(e))
    from ferryman.supervisor.main import run

    try:
        return run(config, args.config, flags, args.apps, launch)
    except KeyboardInterrupt:  # pragma: no cover - handled by the supervisor's own handler
        return 130


def _script(apps: list[str]) -> str | None:
    """The server file of `ferryman serve FILE.py` (a .py path without :Name), if that is it."""
    files = [a for a in apps if parse_app_arg(a)[0] is None and a.endswith(".py")]
    if not files:
        return None
    if len(apps) > 1:
        fail(
            f"{files[0]} without :Name runs that file as the server; give it alone (or name "
            "the API class: FILE.py:MyAPI)"
        )
    if not os.path.isfile(files[0]):
        fail(f"server file {files[0]!r} does not exist")
    return files[0]


def _flags_only(raw: list[str], script: str) -> list[str]:
    """The command line after `serve`, less the server file: the flags that go along to the
    supervisor the file execs."""
    tail = raw[raw.index("serve") + 1 :] if "serve" in raw else list(raw)
    takes_value = {o.flag for o in OPTS if not o.is_flag} | {"--config", "--launch-file"}
    out: list[str] = []
    dropped = False
    after_option = False
    for token in tail:
        if token == script and not after_option and not dropped:
            dropped = True
            continue
        out.append(token)
        after_option = token in takes_value
    return out


def serve_file(script: str, cli_args: list[str]) -> int:
    """Run the server file (see ferryman.server.run_file); it ends by exec'ing the
    supervisor. What stops it first: a refusal or a bad argument (one line, exit 2), an error
    of the file's own (its traceback, exit 3, as for an app that cannot start)."""
    from ferryman.server import NoServer, run_file

    try:
        run_file(script, cli_args)
    except (OptionError, NoServer) as e:
        fail(str(e))
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
        fail(f"{script} exited without starting a server")
    except KeyboardInterrupt:
        return 130
    except BaseException:
        import traceback

        traceback.print_exc()
        print(f"ferryman: error: {script} failed before it started a server", file=sys.stderr)
        return 3
    return 2  # pragma: no cover - run_file never returns


def dockerize(args: argparse.Namespace) -> int:
    """`ferryman dockerize SERVER.py`: ./Dockerfile on ferryman's image (deploy/Dockerfile)."""
    target = args.server
    file = target.rpartition(":")[0] if ":" in target else target
    if not os.path.isfile(file):
        fail(f"server file {file!r} does not exist")
    if os.path.dirname(os.path.abspath(file)) != os.getcwd():
        fail(
            f"server file {file!r} must be in the current directory (the image copies it): "
            f"cd {os.path.dirname(os.path.abspath(file))}"
        )
    if os.path.exists("Dockerfile") and not args.force:
        fail("./Dockerfile exists; pass --force to replace it")
    name = os.path.basename(target)
    with open(file, "rb") as f:
        uses_litserve = b"litserve" in f.read()
    packages = []
    if uses_litserve:
        from importlib.metadata import PackageNotFoundError, version

        try:
            packages.append(f"litserve=={version('litserve')}")
        except PackageNotFoundError:
            packages.append("litserve")
    has_requirements = os.path.isfile("requirements.txt")
    if not has_requirements:
        print(
            "ferryman: no requirements.txt here: the image will have only ferryman"
            + (" and LitServe" if uses_litserve else "")
            + "; add one listing what your server imports",
            file=sys.stderr,
        )
    install = ""
    if packages or has_requirements:
        if has_requirements:
            install += "COPY requirements.txt /app/requirements.txt\n"
        pip = ["pip", "install", "--no-cache-dir", *packages]
        if has_requirements:
            pip += ["-r", "/app/requirements.txt"]
        install += "RUN " + " ".join(pip) + "\n"
    cmd = [name, "--port", str(args.port)]
    if args.gpu:
        cmd += ["--accelerator", "cuda"]
    image = os.path.splitext(os.path.basename(file))[0].lower().replace("_", "-") or "server"
    text = DOCKERFILE.format(
        file=name,
        version=__version__,
        image=image,
        port=args.port,
        gpus=" --gpus all" if args.gpu else "",
        install=install,
        cmd=", ".join(json.dumps(c) for c in cmd),
    )
    with open("Dockerfile", "w") as f:
        f.write(text)
    print(
        f"wrote ./Dockerfile: docker build -t {image} . && docker run --rm -p "
        f"{args.port}:{args.port}{' --gpus all' if args.gpu else ''} {image}"
    )
    return 0


def read_launch(path: str) -> dict[str, Any]:
    """What `Server(...).run()` handed over (and may hold the admin token): read once, removed."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise OptionError(f"cannot read the launch file {path}: {e}") from None
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    models = []
    for m in raw.get("models", []):
        m = dict(m)
        m["code_options"] = parse_mapping(m.get("code_options") or {})
        models.append(m)
    return {
        "options": parse_mapping(raw.get("options") or {}),
        "models": models,
        "litserve": raw.get("litserve"),
    }


def check(config: Config) -> None:
    """What can be known wrong before anything starts, without importing the user's code."""
    pid_file = config.server.pid_file
    if pid_file:
        directory = os.path.dirname(os.path.abspath(pid_file))
        if os.path.isdir(pid_file):
            raise OptionError(f"--pid-file {pid_file} is a directory")
        if not os.path.isdir(directory):
            raise OptionError(f"--pid-file {pid_file}: the directory {directory} does not exist")
    for m in config.models:
        if m.instance_file:
            continue
        check_app_file(m.app)


__all__ = ["main", "parse_app_arg"]
