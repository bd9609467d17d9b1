"""`lightnode test SRC_DIR`: play the test queries once against real pipelines (SPEC §7.1).

A node is started on a free loopback port with SRC_DIR as its only service
(a `DevSession`), every endpoint is loaded, every test query is played, and the
node is stopped. The exit code tells CI what happened (see `report.EXIT_*`).

Imports: devtools.session, devtools.report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from lightnode.devtools.report import (
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
    report, outcomes = await play_once(src_dir, code_envs_dir=code_envs_dir)
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
