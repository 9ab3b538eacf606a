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
from ferryman.options import (
    MODEL_OPTS,
    OPTS,
    SERVER_OPTS,
    Config,
    OptionError,
    build_config,
    check_app_file,
    parse_app_arg,
    parse_mapping,
    parse_value,
)

SERVE_EPILOG = """\
APP is path/to/file.py:Name or package.module:Name (Name: an API class, instantiated with no
arguments, or an instance); NAME=APP names the model (else it is the class name, lower-cased).
Several APPs serve several models, each on /NAME/predict (one model: /predict). Every flag may
also be a key of --config FILE (TOML, same names with underscores), where [[models]] tables give
each model its own options; a flag beats the file, for every model. SIGHUP re-reads the file and
replaces every process, one at a time, without dropping requests.

examples:
  ferryman serve examples/doubler.py:Doubler --workers-per-device 2
  ferryman serve app.py:Model --accelerator cuda --devices 0,1 --max-batch-size 8
  ferryman serve embed=models.py:Embedder rerank=models.py:Reranker
  ferryman serve --config ferryman.toml
"""


class Parser(argparse.ArgumentParser):
    """One line per error (not argparse's usage block), exit status 2."""

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "ctl":
        from ferryman.control.ctl import run as run_ctl

        return run_ctl(args)
    parser.print_help()
    return 2


def fail(message: str) -> NoReturn:
    print(f"ferryman: error: {message}", file=sys.stderr)
    sys.exit(2)


def serve(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k in SERVER_OPTS or k in MODEL_OPTS}
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
    return {"options": parse_mapping(raw.get("options") or {}), "models": models}


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
