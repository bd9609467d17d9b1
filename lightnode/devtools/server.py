"""`lightnode dev SRC_DIR`: serve a source directory, replay its test queries on every change.

    start node ─▶ load + play + print ─▶ awatch(SRC_DIR) ─change─▶ load + play + print ─▶ ...
                                              │
    SIGINT / SIGTERM ─▶ stop event ───────────┴─▶ staged node shutdown ─▶ exit 0

A change is any file event under SRC_DIR that `DevFilter` keeps (bytecode
caches, VCS directories and the files editors write besides a save are
ignored). Each reload is a new generation: pipelines start on the new code and
the previous ones drain, so a request in flight during a reload still gets its
answer (within a grace: `session.OLD_GENERATION_GRACE_S`). The files are
watched all the time, not only between replays: a change while SRC_DIR loads
(initialization code may hang) or the test queries play (one may hang)
interrupts them and reloads at once, as the code under way is stale.
The reload loop is a boundary: an unexpected error in one reload is printed
and the loop goes on waiting for the next change. A watch of SRC_DIR that fails
(Linux's inotify watch limit) stops the dev server with the reason, exit 1: a
dev server that silently no longer reloads would serve stale code.

Imports: devtools.session, devtools.report, watchfiles.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Set
from pathlib import Path
from typing import Any, TextIO

from watchfiles import Change, DefaultFilter, awatch

from lightnode.devtools.report import render_load, render_queries, render_summary
from lightnode.devtools.session import DevSession, QueryOutcome

# watchfiles groups the events of one save: it yields once no new event came for
# WATCH_STEP_MS (an editor's write + rename), or after WATCH_DEBOUNCE_MS at most.
WATCH_STEP_MS = 50
WATCH_DEBOUNCE_MS = 1000
CHANGED_NAMES_SHOWN = 5
# A file changed this long after a reload ended still counts as changed during it
# (watchfiles may hold an event back WATCH_DEBOUNCE_MS): see Changes.
SELF_WRITE_WINDOW_S = WATCH_DEBOUNCE_MS / 1000 + 0.5
# Vim probes a directory before a write with a file named 4913 (then 5036, ... if taken).
VIM_PROBE_FIRST, VIM_PROBE_STEP = 4913, 123


class DevFilter(DefaultFilter):
    """watchfiles' default filter applied to paths inside SRC_DIR, plus Emacs auto-save
    files (`#name#`, written while the developer types, before any save) and Vim's
    write probe: neither is a change of the service.

    The default filter alone looks at every part of the absolute path, so a SRC_DIR
    inside a directory it ignores (`node_modules`, `.venv`...) would never reload.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(ignore_entity_patterns=(*DefaultFilter.ignore_entity_patterns, r"^#.*#$"))
        self.root = str(root)

    def __call__(self, change: Change, path: str) -> bool:
        name = os.path.basename(path)
        if name.isdigit() and int(name) >= VIM_PROBE_FIRST and (int(name) - VIM_PROBE_FIRST) % VIM_PROBE_STEP == 0:
            return False
        relative = os.path.relpath(path, self.root)
        return super().__call__(change, path if relative.startswith("..") else relative)


def say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


async def serve_dev(
    src_dir: Path, *, host: str, port: int, code_envs_dir: Path, out: TextIO = sys.stdout
) -> int:
    """Run the dev server until SIGINT/SIGTERM; return the exit code: 0, or 1 when
    SRC_DIR cannot be watched (a dev server that no longer reloads stops, saying why).

    Raises:
        StartupError: the node cannot listen (port in use, an address that does not resolve).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    session = DevSession(src_dir, host=host, port=port, code_envs_dir=code_envs_dir, progress=sys.stderr,
                         notice=lambda text: say(out, text))
    await session.start()
    code = 0
    try:
        say(out, f"lightnode dev: serving {session.src_dir} on {session.url} (Ctrl-C to stop)")
        reloads = loop.create_task(_reload_loop(session, stop, out))
        stopped = loop.create_task(stop.wait())
        await asyncio.wait({reloads, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        reloads.cancel()
        results = await asyncio.gather(reloads, stopped, return_exceptions=True)
        if isinstance(results[0], WatchFailed):
            say(out, f"lightnode dev: {results[0]}")
            code = 1
        elif isinstance(results[0], Exception):
            say(out, "lightnode dev: the reload loop failed:\n" + "".join(
                traceback.format_exception(type(results[0]), results[0], results[0].__traceback__)))
            code = 1
    finally:
        say(out, "lightnode dev: stopping")
        await session.close()
    return code


class WatchFailed(Exception):
    """SRC_DIR can no longer be watched (e.g. the inotify watch limit is reached)."""


class Changes:
    """Names of the files changed since the reload loop last took them.

    Files the service writes itself (a cache or a log its initialization code or
    function writes into SRC_DIR or one of its folders) would reload it for ever: each
    reload writes them again. So a file other than code (`.py`, service.json, a
    requirements file) that changes during a reload, or within SELF_WRITE_WINDOW_S
    after it, and had changed during the reload before too, is taken as written by
    the service: it is ignored from then on, and `notice` says so once.
    """

    def __init__(self, notice: Callable[[str], None] | None = None) -> None:
        self.names: set[str] = set()
        self.event = asyncio.Event()
        self.notice = notice
        self.ignored: set[str] = set()
        self._reloading = False
        self._reload_ended = -math.inf
        self._during_last: set[str] = set()  # non-code files changed during the reload before
        self._during_this: set[str] = set()  # ... and during the one under way (or just over)

    def reload_started(self) -> None:
        self._during_last, self._during_this = self._during_this, set()
        self._reloading = True

    def reload_ended(self) -> None:
        self._reloading = False
        self._reload_ended = time.monotonic()

    def add(self, names: Set[str]) -> None:
        names = set(names) - self.ignored
        if self._reloading or time.monotonic() - self._reload_ended < SELF_WRITE_WINDOW_S:
            suspects = {name for name in names if not _is_code(name)}
            written = suspects & self._during_last
            self._during_this |= suspects - written
            if written:
                self.ignored |= written
                names -= written
                if self.notice is not None:
                    listed = ", ".join(sorted(written))
                    self.notice(f"\n{listed}: changed again while the service reloaded, so taken as written by the"
                                " service itself; changes to it no longer reload (restart lightnode dev to watch it"
                                " again, or save another file to reload)")
        if names:
            self.names |= names
            self.event.set()

    async def take(self) -> list[str]:
        await self.event.wait()
        names, self.names = sorted(self.names), set()
        self.event.clear()
        return names


async def _watch(src_dir: Path, stop: asyncio.Event, changes: Changes) -> None:
    async for batch in awatch(src_dir, watch_filter=DevFilter(src_dir), stop_event=stop,
                              step=WATCH_STEP_MS, debounce=WATCH_DEBOUNCE_MS):
        changes.add({os.path.relpath(path, src_dir) for _, path in batch})


def _is_code(name: str) -> bool:
    """A file of the service's code or definition: never taken as written by the service."""
    base = os.path.basename(name)
    return base.endswith(".py") or base == "service.json" or (base.startswith("requirements") and base.endswith(".txt"))


async def _reload_loop(session: DevSession, stop: asyncio.Event, out: TextIO) -> None:
    changes = Changes(notice=lambda text: say(out, text))
    watcher = asyncio.get_running_loop().create_task(_watch(session.src_dir, stop, changes))
    try:
        await cycle(session, out, changes)
        while True:
            taken = asyncio.ensure_future(changes.take())
            await asyncio.wait({taken, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not taken.done():  # the watcher ended: stop set, or it failed
                taken.cancel()
                failure = watcher.exception()
                if failure is not None:
                    raise WatchFailed(f"cannot watch {session.src_dir} for changes: {failure}") from failure
                return
            names = taken.result()
            more = f" and {len(names) - CHANGED_NAMES_SHOWN} more" if len(names) > CHANGED_NAMES_SHOWN else ""
            say(out, f"\nchanged: {', '.join(names[:CHANGED_NAMES_SHOWN])}{more}; reloading")
            await cycle(session, out, changes)
    finally:
        watcher.cancel()


async def cycle(session: DevSession, out: TextIO, changes: Changes | None = None) -> None:
    """Load SRC_DIR as a new generation, print which endpoints load, play the test queries.

    A change (in `changes`) while SRC_DIR loads or the queries play interrupts
    them: what was played is printed, with the query under way marked INTERRUPTED.
    """
    if changes is not None:
        changes.reload_started()
    try:
        await _cycle(session, out, changes)
    finally:
        if changes is not None:
            changes.reload_ended()


async def _cycle(session: DevSession, out: TextIO, changes: Changes | None) -> None:
    try:
        load = asyncio.ensure_future(session.load())
        if not await _until_changed(load, changes):
            generation = session.loading
            await _cancel(load)
            say(out, f"loading {generation} interrupted: a file changed")
            return
        report = load.result()
        say(out, render_load(report))
        if report.problem is not None:
            return
        for status in report.endpoints:
            say(out, f"  POST {session.endpoint_url(status.endpoint_id)}")
        outcomes: list[QueryOutcome] = []
        play = asyncio.ensure_future(session.play(report, outcomes))
        if not await _until_changed(play, changes):
            cut = session.interrupted_outcome()
            await _cancel(play)
            played = outcomes + ([cut] if cut is not None else [])
            if played:
                say(out, "test queries:")
                say(out, render_queries(played))
            say(out, "test queries interrupted: a file changed")
            return
        play.result()
        say(out, "test queries:")
        say(out, render_queries(outcomes))
        say(out, render_summary(report, outcomes))
    except Exception:  # boundary: one bad reload must not end the dev loop
        say(out, "reload failed:\n" + traceback.format_exc())


async def _until_changed(task: asyncio.Future[Any], changes: Changes | None) -> bool:
    """Wait for `task` or a change, whichever comes first; True if `task` is done.
    Cancelled itself (the dev server stops), it cancels `task` too."""
    changed = asyncio.ensure_future(changes.event.wait() if changes is not None else asyncio.Future())
    try:
        await asyncio.wait({task, changed}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        await _cancel(task)
        raise
    finally:
        changed.cancel()
    return task.done()


async def _cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
