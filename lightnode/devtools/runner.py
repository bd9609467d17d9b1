"""`lightnode test SRC_DIR`: play the test queries once against real pipelines (SPEC §7.1).

A node is started on a free loopback port with SRC_DIR as its only service
(a `DevSession`), every endpoint is loaded, every test query is played, and the
node is stopped. The exit code tells CI what happened (see `report.EXIT_*`).
SIGTERM (a cancelled or timed-out CI job) stops the run as Ctrl-C does: the
node shuts down (its pipelines stopped, the temp data dir removed) before the
exit, with code 143 (130 for Ctrl-C).

Imports: devtools.session, devtools.report.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import TextIO

from lightnode.devtools.report import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    exit_code,
    json_report,
    render_load,
    render_queries,
    render_summary,
)
from lightnode.devtools.session import DevSession, LoadReport, QueryOutcome


async def run_tests(
    src_dir: Path, *, code_envs_dir: Path, as_json: bool = False, out: TextIO = sys.stdout
) -> int:
    """Load, play, print (a table, or the JSON report), and return the exit code."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopped_by: list[int] = []

    def on_signal(signum: int) -> None:
        if not stopped_by:  # once: a second cancel would cut the node's shutdown
            stopped_by.append(signum)
            task.cancel()

    # Both through the loop (not asyncio.Runner's SIGINT handler, run only when the
    # interpreter gets control back): the node is shut down before the exit either way.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        report, outcomes = await play_once(src_dir, code_envs_dir=code_envs_dir)
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        if stopped_by[0] == signal.SIGINT:
            print("lightnode test: stopped by Ctrl-C", file=sys.stderr)
            return EXIT_INTERRUPTED
        print("lightnode test: stopped by SIGTERM", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    if as_json:
        json.dump(json_report(report, outcomes), out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        out.write(render_load(report) + "\n")
        if report.problem is None:
            out.write("test queries:\n" + render_queries(outcomes) + "\n")
        out.write(render_summary(report, outcomes) + "\n")
    out.flush()
    return exit_code(report, outcomes)


async def play_once(src_dir: Path, *, code_envs_dir: Path) -> tuple[LoadReport, list[QueryOutcome]]:
    session = DevSession(src_dir, host="127.0.0.1", port=0, code_envs_dir=code_envs_dir, progress=sys.stderr)
    await session.start()
    try:
        report = await session.load()
        outcomes = await session.play(report)
    finally:
        await session.close()
    return report, outcomes
