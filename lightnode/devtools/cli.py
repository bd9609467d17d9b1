"""The `lightnode dev` and `lightnode test` sub-commands: arguments, logging, exit codes.

`lightnode.cli` registers them with `add_dev_parsers` and calls `run_dev` /
`run_test`. Nothing heavy is imported until a command runs, so `lightnode --help`
stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def port_number(text: str) -> int:
    """argparse type of --port: 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number (got {text!r})") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535 (got {port})")
    return port


def host_name(text: str) -> str:
    """argparse type of --host: never "" (`--host "$UNSET"`), which would listen on every
    interface, IPv4 and IPv6, where the default is loopback only (server.json refuses it too)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (give an address: 127.0.0.1, 0.0.0.0, ::)")
    return text


TEST_EPILOG = """\
exit codes:
  0  every endpoint loads and every test query answers 200 and matches its expect
  1  a test query failed: an error answer, no answer, or an expect mismatch (a diff is printed)
  2  usage error (bad arguments, SRC_DIR is not a directory)
  3  service.json is invalid, or an endpoint fails to load (import error, exception in
     initialization code, code env that cannot be built)
  130  stopped by Ctrl-C; 143 stopped by SIGTERM (the node and its pipelines are stopped first)

A query passes when it answers 200 and its "expect" (if any) is a subset of the whole
envelope: every key it names is present with an equal value, recursively for objects;
arrays and scalars compare exactly. A query whose expect names "errorType" tests an error
case: it passes when the error answer matches.
"""

DEV_DESCRIPTION = """\
Serve SRC_DIR directly (no packaging) with real pipelines at
/public/api/v1/<service id>/<endpoint id>/run. Prints whether each endpoint's function
loads (with the error and traceback if not), plays each endpoint's test queries and
prints status, latency and result; on every change under SRC_DIR it reloads (new
pipelines, the old ones drained) and replays. Error answers carry tracebacks.
"""

LOG_LEVELS = ["debug", "info", "warning", "error"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src_dir", type=Path, metavar="SRC_DIR", help="a directory holding service.json")
    parser.add_argument(
        "--code-envs", type=Path, metavar="DIR",
        help="where requirements code envs are built and reused "
        "(default $XDG_CACHE_HOME/lightnode/code-envs, else ~/.cache/lightnode/code-envs)",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                        help="node log level on stderr (default warning; print() output is always shown)")


def add_dev_parsers(sub: Any) -> None:
    """Register `dev` and `test` on the top-level sub-parsers."""
    dev = sub.add_parser("dev", help="serve a source directory, reload and replay test queries on change",
                         description=DEV_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(dev)
    dev.add_argument("--host", type=host_name, default="127.0.0.1", help="listen address (default 127.0.0.1)")
    dev.add_argument("--port", type=port_number, default=12000, help="listen port (default 12000; 0 = any free port)")
    test = sub.add_parser(
        "test", help="play the test queries once (CI): exit 0 only if all load and pass",
        description="Play SRC_DIR's test queries once against real pipelines on a free loopback port.",
        epilog=TEST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(test)
    test.add_argument("--json", action="store_true", help="print a machine-readable report on stdout")


def _check_src(src_dir: Path) -> str | None:
    if not src_dir.is_dir():
        return f"SRC_DIR {src_dir} is not a directory"
    return None


def run_dev(args: argparse.Namespace) -> int:
    import uvloop

    from lightnode.daemon import StartupError
    from lightnode.devtools.server import serve_dev
    from lightnode.devtools.session import default_code_envs_dir

    problem = _check_src(args.src_dir)
    if problem:
        print(f"lightnode dev: {problem}", file=sys.stderr)
        return 2
    setup_dev_logging(args.log_level)
    code_envs = args.code_envs or default_code_envs_dir()
    try:
        return uvloop.run(serve_dev(args.src_dir, host=args.host, port=args.port, code_envs_dir=code_envs))
    except StartupError as exc:  # port in use, an address that does not resolve: a message, not a traceback
        print(f"lightnode dev: {exc}", file=sys.stderr)
        return 1


def run_test(args: argparse.Namespace) -> int:
    import uvloop

    from lightnode.devtools.report import EXIT_USAGE
    from lightnode.devtools.runner import run_tests
    from lightnode.devtools.session import default_code_envs_dir

    problem = _check_src(args.src_dir)
    if problem:
        print(f"lightnode test: {problem}", file=sys.stderr)
        return EXIT_USAGE
    setup_dev_logging(args.log_level)
    code_envs = args.code_envs or default_code_envs_dir()
    return uvloop.run(run_tests(args.src_dir, code_envs_dir=code_envs, as_json=args.json))


class _HideLoadFailures(logging.Filter):
    """Load errors are shown in the dev/test report with their traceback; the
    scheduler's log line (repeated on every retry) would only repeat them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "lightnode.scheduler" and "failed to load" in str(record.msg))


def setup_dev_logging(level: str) -> None:
    """Node log on stderr at `level`; user code's print()/logging always shown."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_HideLoadFailures())
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("lightnode.user").setLevel(logging.INFO)
