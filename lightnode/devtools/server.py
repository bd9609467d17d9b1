"""`lightnode dev SRC_DIR`: serve a source directory, replay its test queries on every change.

    start node ─▶ load + play + print ─▶ awatch(SRC_DIR) ─change─▶ load + play + print ─▶ ...
                                              │
    SIGINT / SIGTERM ─▶ stop event ───────────┴─▶ staged node shutdown ─▶ exit 0

A change is any file event under SRC_DIR that watchfiles' default filter keeps
(bytecode caches, editor swap files and VCS directories are ignored). Each
reload is a new generation: pipelines start on the new code and the previous
ones drain, so a request in flight during a reload still gets its answer.
The reload loop is a boundary: an unexpected error in one reload is printed
and the loop goes on waiting for the next change.

Imports: devtools.session, devtools.report, watchfiles.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TextIO

from watchfiles import awatch

from lightnode.devtools.report import render_load, render_queries, render_summary
from lightnode.devtools.session import DevSession

# watchfiles groups the events of one save: it yields once no new event came for
# WATCH_STEP_MS (an editor's write + rename), or after WATCH_DEBOUNCE_MS at most.
WATCH_STEP_MS = 50
WATCH_DEBOUNCE_MS = 1000
CHANGED_NAMES_SHOWN = 5


def say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


async def serve_dev(
    src_dir: Path, *, host: str, port: int, code_envs_dir: Path, out: TextIO = sys.stdout
) -> int:
    """Run the dev server until SIGINT/SIGTERM; return the exit code (0).

    Raises:
        OSError: the node cannot listen (port in use, bad address).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    session = DevSession(src_dir, host=host, port=port, code_envs_dir=code_envs_dir, progress=sys.stderr)
    await session.start()
    try:
        say(out, f"lightnode dev: serving {session.src_dir} on {session.url} (Ctrl-C to stop)")
        reloads = loop.create_task(_reload_loop(session, stop, out))
        stopped = loop.create_task(stop.wait())
        await asyncio.wait({reloads, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        reloads.cancel()
        await asyncio.gather(reloads, stopped, return_exceptions=True)
    finally:
        say(out, "lightnode dev: stopping")
        await session.close()
    return 0


async def _reload_loop(session: DevSession, stop: asyncio.Event, out: TextIO) -> None:
    await cycle(session, out)
    async for changes in awatch(session.src_dir, stop_event=stop, step=WATCH_STEP_MS,
                                debounce=WATCH_DEBOUNCE_MS):
        names = sorted({os.path.relpath(path, session.src_dir) for _, path in changes})
        more = f" and {len(names) - CHANGED_NAMES_SHOWN} more" if len(names) > CHANGED_NAMES_SHOWN else ""
        say(out, f"\nchanged: {', '.join(names[:CHANGED_NAMES_SHOWN])}{more}; reloading")
        await cycle(session, out)


async def cycle(session: DevSession, out: TextIO) -> None:
    """Load SRC_DIR as a new generation, print which endpoints load, play the test queries."""
    try:
        report = await session.load()
        say(out, render_load(report))
        if report.problem is not None:
            return
        for status in report.endpoints:
            say(out, f"  POST {session.endpoint_url(status.endpoint_id)}")
        outcomes = await session.play(report)
        say(out, "test queries:")
        say(out, render_queries(outcomes))
        say(out, render_summary(report, outcomes))
    except Exception:  # boundary: one bad reload must not end the dev loop
        say(out, "reload failed:\n" + traceback.format_exc())
