"""`ferryman serve APP [flags]`, `ferryman ctl ...`, `ferryman --version`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ferryman._version import __version__
from ferryman.options import OPTS, OptionError, build, parse_value

SERVE_EPILOG = """\
APP is path/to/file.py:Name or package.module:Name; Name is an API class (instantiated with no
arguments) or an instance. Every flag may also be a key of --config FILE (TOML, same names with
underscores); flags override the file. SIGHUP re-reads the file and replaces every process, one at
a time, without dropping requests.

examples:
  ferryman serve examples/doubler.py:Doubler --workers-per-device 2
  ferryman serve app.py:Model --accelerator cuda --devices 0,1 --max-batch-size 8
"""


def _typed(name: str) -> Any:
    def parse(value: str) -> Any:
        try:
            return parse_value(name, value)
        except OptionError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None

    parse.__name__ = name.replace("_", "-")  # argparse names it in "invalid X value"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferryman",
        description="Serve a model over HTTP under a process supervisor.",
    )
    parser.add_argument("--version", action="version", version=f"ferryman {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="start a server on an API class",
        description="Start the supervisor, its uvicorn API processes and inference workers.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("app", nargs="?", metavar="APP", help="path/to/file.py:Name or module:Name")
    serve.add_argument("--config", metavar="FILE", help="a TOML file with any of the options below")
    serve.add_argument("--instance-file", dest="instance_file", help=argparse.SUPPRESS)
    for opt in OPTS:
        flag = "--" + opt.name.replace("_", "-")
        if opt.is_flag:
            serve.add_argument(
                flag, dest=opt.name, action="store_true", default=argparse.SUPPRESS, help=opt.help
            )
        else:
            serve.add_argument(
                flag,
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
        return serve(parser, args)
    if args.command == "ctl":
        from ferryman.control.ctl import run as run_ctl

        return run_ctl(args)
    parser.print_help()
    return 2


def serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    flags = {
        k: v
        for k, v in vars(args).items()
        if k not in ("command", "config", "app", "instance_file")
    }
    if args.app:
        flags["app"] = args.app
    try:
        opts = build(args.config, flags)
    except OptionError as e:
        parser.exit(2, f"ferryman: error: {e}\n")
    if not opts.app:
        parser.exit(2, "ferryman: error: no APP given (e.g. ferryman serve app.py:MyAPI)\n")
    if ":" not in opts.app:
        parser.exit(
            2,
            f"ferryman: error: APP {opts.app!r} must look like app.py:MyAPI or "
            "package.module:MyAPI\n",
        )
    if args.instance_file:
        opts.instance_file = args.instance_file
    from ferryman.supervisor.main import run

    try:
        return run(opts, args.config, flags)
    except KeyboardInterrupt:  # pragma: no cover - handled by the supervisor's own handler
        return 130


if __name__ == "__main__":
    sys.exit(main())
