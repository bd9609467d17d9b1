"""`lightnode-loadtest` (also `python -m loadtest`): run, scenario, compare.

    lightnode-loadtest run (URL | --spawn DATA_DIR) --service S --endpoint E
        [--body JSON | --body-file F | --bodies-jsonl F]
        [--connections N | --rate R] [--duration S] [--procs N] [--out DIR]
        [--warmup S] [--timeout S] [--key KEY] [--max-connections N] [--quiet]
    lightnode-loadtest scenario FILE.json [--target URL] [--out DIR] [--warmup S]
        [--procs N] [--admin-key KEY] [--quiet]
    lightnode-loadtest compare A.json B.json

Exit codes: 0 done (scenario: every expectation held), 1 a scenario
expectation or fault failed, 2 usage error (arguments, or a scenario file that
does not parse or does not say which service to load), 3 the run could not be carried
out (target unreachable, node failed to start or died during the run,
generator failed), 130 Ctrl-C (also after the first one, whose report of the
part that ran is written).
No asyncio at import time. Must not import `lightnode`.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from loadtest import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_CONNECTIONS = 8
DEFAULT_DURATION_S = 10.0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def api_key(text: str) -> str:
    """An API key for an Authorization header: visible ASCII, as the node issues them.

    Anything else cannot go into the request head (a UnicodeEncodeError, or a line
    break that splits it); the key itself is not echoed in the error.
    """
    if not text or not all("!" <= char <= "~" for char in text):
        raise argparse.ArgumentTypeError(
            "must be printable ASCII without spaces (no typographic quotes, accents "
            "or line breaks: check how the key was pasted)"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightnode-loadtest",
        description="Load-test a lightnode (or any HTTP endpoint with the same wire format).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(commands.add_parser("run", help="one run against a URL or a node started here"))
    _add_scenario(commands.add_parser("scenario", help="run a scenario file with expectations"))
    compare = commands.add_parser("compare", help="two reports side by side, with B/A ratios")
    compare.add_argument("a", metavar="A.json", type=Path)
    compare.add_argument("b", metavar="B.json", type=Path)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where report.json and the plots go (default ./loadtest-out/<time>/)",
    )
    parser.add_argument(
        "--procs", type=_positive_int, metavar="N", help="generator processes (default 1)"
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_float,
        metavar="S",
        help="seconds of load before measuring (not in the report)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def _add_run(run: argparse.ArgumentParser) -> None:
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "url", nargs="?", metavar="URL", help="the node's base URL, http://127.0.0.1:12000"
    )
    where.add_argument(
        "--spawn",
        type=Path,
        metavar="DATA_DIR",
        help="start `lightnode --data-dir DATA_DIR` on a free port, stop it after",
    )
    run.add_argument("--service", required=True, metavar="S", help="service id")
    run.add_argument("--endpoint", required=True, metavar="E", help="endpoint id")
    body = run.add_mutually_exclusive_group()
    body.add_argument("--body", metavar="JSON", help="inline JSON object (default {})")
    body.add_argument("--body-file", type=Path, metavar="F", help="a file holding one JSON object")
    body.add_argument(
        "--bodies-jsonl", type=Path, metavar="F", help="JSON lines, one object per line, cycled"
    )
    load = run.add_mutually_exclusive_group()
    load.add_argument(
        "--connections",
        type=_positive_int,
        metavar="N",
        help=f"closed loop on N keep-alive connections (default {DEFAULT_CONNECTIONS})",
    )
    load.add_argument(
        "--rate",
        type=_positive_float,
        metavar="R",
        help="open loop: R requests per second on schedule",
    )
    run.add_argument(
        "--duration",
        type=_positive_float,
        default=DEFAULT_DURATION_S,
        metavar="S",
        help=f"measured seconds (default {DEFAULT_DURATION_S:g})",
    )
    run.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="seconds a request may go unanswered after it was due (default 30)",
    )
    run.add_argument(
        "--key", type=api_key, metavar="KEY", help="API key, sent as Authorization: Bearer"
    )
    run.add_argument(
        "--max-connections",
        type=_positive_int,
        default=2048,
        metavar="N",
        help="open-loop connection pool cap, all procs (default 2048)",
    )
    _add_common(run)


def _add_scenario(scenario: argparse.ArgumentParser) -> None:
    scenario.add_argument("file", type=Path, metavar="FILE.json")
    scenario.add_argument(
        "--target",
        metavar="URL",
        help="a running node (default: start one with the scenario's service)",
    )
    scenario.add_argument(
        "--admin-key", type=api_key, metavar="KEY", help="admin API key for --target"
    )
    _add_common(scenario)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so a node the harness started is stopped too.
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command == "run":
            return _cmd_run(parser, args)
        if args.command == "scenario":
            return _cmd_scenario(args)
        return _cmd_compare(args)
    except KeyboardInterrupt:
        print("\nlightnode-loadtest: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _fail(message: str, code: int = EXIT_CANNOT_RUN) -> int:
    print(f"lightnode-loadtest: error: {message}", file=sys.stderr)
    return code


def _run_async(coroutine: Coroutine[Any, Any, Any]) -> Any:
    import uvloop

    return uvloop.run(coroutine)


def _bodies(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[bytes, ...]:
    from loadtest.plan import PlanError, encode_body, parse_bodies_jsonl

    try:
        if args.body is not None:
            return (encode_body(json.loads(args.body)),)
        if args.body_file is not None:
            return (encode_body(json.loads(args.body_file.read_text())),)
        if args.bodies_jsonl is not None:
            return parse_bodies_jsonl(args.bodies_jsonl.read_text(), source=str(args.bodies_jsonl))
    except OSError as exc:
        parser.error(f"cannot read {exc.filename}: {exc.strerror}")
    except (ValueError, PlanError) as exc:
        parser.error(f"body: {exc}")
    return (b"{}",)


def _cmd_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from loadtest.plan import PlanError, RunPlan, Stage, Target

    bodies = _bodies(parser, args)
    if args.rate is not None:
        stage = Stage(args.duration, rate_rps=args.rate)
    else:
        stage = Stage(args.duration, connections=args.connections or DEFAULT_CONNECTIONS)
    try:
        target = Target.parse(args.url) if args.url else None
    except PlanError as exc:
        parser.error(str(exc))
    if args.spawn is not None and not args.spawn.is_dir():
        # lightnode would create it and serve nothing: a run of 404s at a typo.
        parser.error(
            f"--spawn {args.spawn}: no such directory (a data dir with the service deployed)"
        )
    headers = (("Authorization", f"Bearer {args.key}"),) if args.key else ()

    def plan_for(run_target: Target) -> RunPlan:
        return RunPlan(
            target=run_target,
            service_id=args.service,
            endpoint_id=args.endpoint,
            bodies=bodies,
            stages=(stage,),
            procs=args.procs or 1,
            warmup_s=args.warmup or 0.0,
            timeout_s=args.timeout,
            max_connections=args.max_connections,
            headers=headers,
        )

    out_dir = _out_dir(args)
    return _run_and_report(
        lambda: _run_plan(plan_for, target, args.spawn, out_dir, args.quiet), out_dir
    )


async def _run_plan(
    plan_for: Any, target: Any, spawn: Path | None, out_dir: Path, quiet: bool
) -> dict[str, Any]:
    from loadtest import node, runner
    from loadtest.faults import NodeAccess
    from loadtest.progress import ProgressLine

    progress = ProgressLine(enabled=not quiet)
    if spawn is None:
        return await runner.execute(plan_for(target), progress=progress)
    spawned = node.SpawnedNode(spawn.resolve(), out_dir / "node.log")
    spawned.start()
    result: dict[str, Any] | None = None
    try:
        await spawned.wait_up()
        plan = plan_for(spawned.target)
        access = NodeAccess(
            spawned.target, plan.service_id, plan.endpoint_id, data_dir=spawn.resolve()
        )
        result = await runner.execute(plan, access=access, progress=progress)
    finally:
        spawned.stop_after_run(result)
    return result


def _out_dir(args: argparse.Namespace) -> Path:
    from loadtest.runner import default_out_dir

    return args.out if args.out is not None else default_out_dir()


def _run_and_report(make: Any, out_dir: Path) -> int:
    """Run, write the outputs and print the summary; map failures to exit codes."""
    from loadtest import report, runner
    from loadtest.faults import FaultFailed
    from loadtest.node import NodeError
    from loadtest.plan import PlanError
    from loadtest.procs import GeneratorFailed

    try:
        result = _run_async(make())
    except PlanError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (runner.TargetUnreachable, NodeError, GeneratorFailed, FaultFailed) as exc:
        return _fail(str(exc))
    paths = runner.write_outputs(result, out_dir)
    print(report.summary_text(result))
    print(f"written    {', '.join(str(p) for p in paths)}")
    if result.get("node_died"):
        return _fail(f"{report.node_died_text(result)} (its log: {out_dir / 'node.log'})")
    return EXIT_INTERRUPTED if result.get("interrupted") else EXIT_OK


def _cmd_scenario(args: argparse.Namespace) -> int:
    from loadtest import report, runner
    from loadtest.faults import FaultFailed
    from loadtest.node import NodeError
    from loadtest.plan import PlanError
    from loadtest.procs import GeneratorFailed
    from loadtest.progress import ProgressLine
    from loadtest.scenario import ScenarioError, load_scenario
    from loadtest.scenario_run import (
        ScenarioSetupError,
        ScenarioUsageError,
        run_scenario,
        verdict_text,
    )

    try:
        scenario = load_scenario(args.file)
    except ScenarioError as exc:
        return _fail(str(exc), EXIT_USAGE)
    out_dir = _out_dir(args)
    progress = ProgressLine(enabled=not args.quiet)
    try:
        result, checks = _run_async(
            run_scenario(
                scenario,
                target_url=args.target,
                out_dir=out_dir,
                admin_key=args.admin_key,
                warmup_s=args.warmup,
                procs=args.procs,
                progress=progress,
            )
        )
    except PlanError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ScenarioUsageError as exc:
        return _fail(f"scenario {scenario.name}: {exc}", EXIT_USAGE)
    except (
        ScenarioSetupError,
        runner.TargetUnreachable,
        NodeError,
        GeneratorFailed,
        FaultFailed,
    ) as exc:
        return _fail(f"scenario {scenario.name}: {exc}")
    paths = runner.write_outputs(result, out_dir)
    print(report.summary_text(result))
    print(verdict_text(result, checks))
    print(f"written    {', '.join(str(p) for p in paths)}")
    if result.get("interrupted"):
        return EXIT_INTERRUPTED
    return EXIT_OK if result["passed"] else EXIT_FAILED


# Keys every report has; a JSON object with none of them is some other file.
REPORT_KEYS = ("requests", "throughput_rps", "latency_ms")


def _cmd_compare(args: argparse.Namespace) -> int:
    from loadtest.report import REPORT_VERSION, compare_text

    reports = []
    for path in (args.a, args.b):
        try:
            value = json.loads(path.read_text())
        except OSError as exc:
            return _fail(f"cannot read {path}: {exc.strerror}", EXIT_USAGE)
        except ValueError as exc:
            return _fail(f"{path}: not JSON: {exc}", EXIT_USAGE)
        if not isinstance(value, dict):
            return _fail(f"{path}: not a report (a JSON object)", EXIT_USAGE)
        if not any(key in value for key in REPORT_KEYS):
            hint = ""
            if "runs" in value and "summary" in value:
                hint = "; a peer benchmark's file? read those with python -m loadtest.peers.tally"
            return _fail(
                f"{path}: not a lightnode-loadtest report (none of {', '.join(REPORT_KEYS)}){hint}",
                EXIT_USAGE,
            )
        reports.append(value)
    names = (_label(args.a), _label(args.b))
    if names[0] == names[1]:
        names = (str(args.a), str(args.b))
    print(compare_text(reports[0], reports[1], names=names))
    for name, value in zip(names, reports, strict=True):
        version = value.get("version")
        if version is not None and version != REPORT_VERSION:
            print(
                f"note: {name} is a version {version} report (this harness writes "
                f"version {REPORT_VERSION}); rows it lacks show -"
            )
    return EXIT_OK


def _label(path: Path) -> str:
    """A report's column title: its run directory for ".../<run>/report.json"."""
    return path.parent.name if path.name == "report.json" and path.parent.name else path.name
