"""The `lightnode` command line (SPEC §8).

`main(argv) -> int` parses, checks, and calls into daemon/admin code; it never
starts an event loop at import time and never shows a traceback for a usage
error or an expected failure (a short message on stderr, non-zero exit).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lightnode import __version__, hotbuild
from lightnode.devtools.cli import host_name, port_number
from lightnode.errors import ConfigError, IdError

COMMANDS = ("serve", "init", "admin", "dev", "test", "package", "deploy")


class CliError(Exception):
    """An expected failure: printed as `lightnode: <message>`, exit code 1 (or `code`)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def data_dir_path(text: str) -> Path:
    """argparse type of every --data-dir: a path, never "" (which would mean the current directory)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty (give a path; '.' for the current directory)")
    return Path(text)


def file_path(text: str) -> Path:
    """argparse type of a file option (--pidfile): a path, never "" (`--pidfile "$UNSET"`).

    Path("") is the current directory: the lock would fail with "Is a directory: '.'",
    after the data directory had been laid out.
    """
    if not text:
        raise argparse.ArgumentTypeError("must not be empty (give a file path)")
    return Path(text)


def _serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=data_dir_path, required=True, help="the node's data directory")
    parser.add_argument("--host", type=host_name, help="listen address (default 127.0.0.1, or server.json)")
    parser.add_argument("--port", type=port_number, help="listen port (default 12000, or server.json; 0 = any free port)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--pidfile", type=file_path, help="lock file (default DATA_DIR/run/lightnode.pid)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightnode",
        description="An API node that serves Python functions over HTTP.",
        epilog="Without a command, `lightnode --data-dir DIR` serves DIR (the `serve` command).",
    )
    parser.add_argument("--version", action="version", version=f"lightnode {__version__}, hot path {hotbuild.status()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _serve_args(sub.add_parser("serve", help="run the node in the foreground"))
    init = sub.add_parser("init", help="lay out a data directory with the sample service")
    init.add_argument("dir", type=data_dir_path, nargs="?", help="the data directory to lay out")
    # Every other command names its data directory with --data-dir: accepted here too.
    init.add_argument("--data-dir", type=data_dir_path, dest="data_dir_option", metavar="DIR",
                      help="the same as DIR")
    from lightnode.admin.cli import add_admin_parser

    add_admin_parser(sub)
    from lightnode.admin.lifecycle_cli import add_package_commands

    add_package_commands(sub)
    from lightnode.devtools.cli import add_dev_parsers

    add_dev_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0].startswith("--") and args_list[0] not in ("--help", "--version"):
        args_list.insert(0, "serve")
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return _dispatch(args)
    except CliError as exc:
        print(f"lightnode: {exc}", file=sys.stderr)
        return exc.code
    except (ConfigError, IdError, OSError) as exc:
        print(f"lightnode: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from lightnode import daemon

        if args.data_dir.exists() and not args.data_dir.is_dir():
            raise CliError(f"--data-dir {args.data_dir} is not a directory")
        options = daemon.DaemonOptions(
            data_dir=args.data_dir.resolve(),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            pidfile=args.pidfile,
        )
        return daemon.run(options)
    if args.command == "init":
        if (args.dir is None) == (args.data_dir_option is None):
            raise CliError("init: give the data directory once: `lightnode init DIR` or `--data-dir DIR`", 2)
        return _init(args.dir or args.data_dir_option)
    if args.command == "admin":
        from lightnode.admin.cli import run_admin

        return run_admin(args)
    if args.command in ("package", "deploy"):
        from lightnode.admin import lifecycle_cli

        return lifecycle_cli.run_package(args) if args.command == "package" else lifecycle_cli.run_deploy(args)
    if args.command in ("dev", "test"):
        from lightnode.devtools import cli as devtools_cli

        return devtools_cli.run_dev(args) if args.command == "dev" else devtools_cli.run_test(args)
    raise CliError(f"unknown command {args.command}", 2)


def _init(directory: Path) -> int:
    from lightnode.services.store import DataDir

    if directory.exists() and not directory.is_dir():
        raise CliError(f"{directory} is not a directory")
    data_dir = DataDir(directory.resolve())
    if not data_dir.is_uninitialised():
        raise CliError(f"{directory} is not empty: not initialising it")
    data_dir.init_sample()
    print(f"Initialised {data_dir.root} with the sample service 'demo' (endpoint 'quote').")
    print("Next:")
    print(f"  lightnode --data-dir {data_dir.root}")
    print(
        "  curl -s -X POST http://127.0.0.1:12000/public/api/v1/demo/quote/run "
        "-d '{\"age\": 35, \"days\": 344, \"price\": 600}'"
    )
    return 0
