"""`python -m loadtest.peers`: the peer benchmark in one command.

    python -m loadtest.peers [--rounds 3] [--duration 10] [--concurrency 8,64]
        [--only NAMES] [--functions add,spin] [--warmup 1] [--procs 1]
        [--no-wrk] [--generator harness|wrk] [--out DIR]

Writes DIR/peers.json (every run, the wrk cross-check, medians, the machine)
and DIR/peers.md (the tables), and prints the tables. Exit codes: 0 done,
1 a run failed or a server did not start, 2 usage error (or a peer server not
installed), 130 interrupted. No asyncio at import time. Must not import
`lightnode`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from loadtest.cli import non_negative_float
from loadtest.peers import running, servers

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
FUNCTIONS = ("add", "spin")
GENERATORS = ("harness", "wrk")  # what loads the server in the measured runs


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need integers >= 1, got {text}")
    return values


def _functions(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [value for value in values if value not in FUNCTIONS]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(FUNCTIONS)}, got {text}")
    return values


def _positive(kind: Any) -> Any:
    def convert(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.peers",
        description="Benchmark lightnode against peer Python servers on the same functions.",
        epilog=f"Servers: {', '.join(servers.SERVER_NAMES)}; with --only also: "
        f"{', '.join(servers.EXTRA_NAMES)}. Peers: {servers.PIP_LINE}",
    )
    parser.add_argument("--rounds", type=_positive(int), default=3, help="rounds (default 3)")
    parser.add_argument(
        "--duration", type=_positive(float), default=10.0, metavar="S",
        help="measured seconds per run (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=_int_list, default=(8, 64), metavar="C[,C...]",
        help="keep-alive connections, closed loop (default 8,64)",
    )  # fmt: skip
    parser.add_argument("--only", metavar="NAMES", help="comma-separated servers (default all)")
    parser.add_argument(
        "--functions", type=_functions, default=FUNCTIONS, metavar="F[,F...]",
        help="add, spin (default both)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=non_negative_float, default=1.0, metavar="S",
        help="unrecorded load per function after each server start (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--procs", type=_positive(int), default=1, metavar="N",
        help="harness generator processes (default 1)",
    )  # fmt: skip
    parser.add_argument("--no-wrk", action="store_true", help="skip the wrk cross-check")
    parser.add_argument(
        "--generator", choices=GENERATORS, default="harness",
        help="what loads the server in the measured runs: the harness (default) or wrk -t1 "
        "(a second opinion on the whole table; warm-ups still use the harness; no cross-check)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, metavar="DIR",
        help="output directory (default ./loadtest-out/peers-<time>/)",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        chosen = servers.select(args.only)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    missing = servers.missing_packages(chosen)
    if missing:
        print(
            f"peers: not installed: {', '.join(missing)}; install with: {servers.PIP_LINE}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args, tuple(spec.name for spec in chosen))
    except KeyboardInterrupt:
        print("\npeers: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        running.kill_all()
        signal.signal(signal.SIGTERM, previous)


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, names: tuple[str, ...]) -> int:
    from loadtest.peers import runner, wrk

    out_dir = args.out or Path("loadtest-out") / datetime.now().strftime("peers-%Y%m%d-%H%M%S")
    if args.generator == "wrk" and not wrk.available():
        _echo("peers: --generator wrk needs wrk on PATH (apt-get install wrk)")
        return EXIT_USAGE
    crosscheck = args.generator == "harness" and not args.no_wrk and wrk.available()
    if args.generator == "harness" and not args.no_wrk and not crosscheck:
        _echo("peers: wrk not found on PATH; the cross-check is skipped (apt-get install wrk)")
    config = runner.BenchConfig(
        out_dir=out_dir,
        rounds=args.rounds,
        duration_s=args.duration,
        concurrencies=args.concurrency,
        servers=names,
        functions=args.functions,
        warmup_s=args.warmup,
        procs=args.procs,
        crosscheck=crosscheck,
        generator=args.generator,
    )
    result = runner.run_benchmark(config, _echo)
    json_path, md_path = runner.write_outputs(result, out_dir)
    print(result["markdown"])
    print(f"written {json_path}, {md_path}")
    for entry in result["crosscheck"]:
        if not entry.get("within_tolerance"):
            _echo(
                f"peers: WARNING: harness and wrk disagree by more than 10% in round"
                f" {entry['round']} ({entry['function']} c={entry['concurrency']})"
            )
    failed = [run for run in result["runs"] if run.get("failed")]
    return EXIT_FAILED if failed or result["server_errors"] else EXIT_OK
