"""The live progress line on stderr: rewritten in place on a terminal, plain lines otherwise.

Also the parent's per-second tally of what the generator processes shipped,
from which the line is made. No asyncio; must not import `lightnode`.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from loadtest import histo


class ProgressLine:
    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._width = 0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line that stays (e.g. a fault fired), above the progress line."""
        if not self.enabled:
            return
        self.end()
        self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.enabled and self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


class Tally:
    """Per-second buckets as they arrive from the processes, and their latest info."""

    def __init__(self, procs: int) -> None:
        self.procs = procs
        self.buckets: list[dict[str, Any]] = []
        self.by_second: dict[int, list[dict[str, Any]]] = {}
        self.info: dict[int, dict[str, Any]] = {}

    def add(self, proc_index: int, buckets: list[dict[str, Any]], info: dict[str, Any]) -> None:
        for bucket in buckets:
            self.buckets.append(bucket)
            self.by_second.setdefault(int(bucket["t"]), []).append(bucket)
        if info:
            self.info[proc_index] = info

    def latest_second(self) -> int | None:
        complete = [t for t, items in self.by_second.items() if len(items) >= self.procs]
        return max(complete) if complete else None

    def line(self, elapsed_s: float, duration_s: float, pool: dict[str, Any] | None) -> str:
        """`  12/30 s  sent 1,000/s  ok 998/s  err 2  p99 3.1 ms  conns 8 ...`."""
        parts = [f"{elapsed_s:5.0f}/{duration_s:g} s"]
        second = self.latest_second()
        if second is not None:
            items = self.by_second[second]
            p99 = histo.summary_ms(
                histo.merge((b.get("latency") for b in items), histo.SECOND_DIGITS)
            )["p99"]
            parts += [
                f"sent {sum(b['sent'] for b in items):,}/s",
                f"ok {sum(b['ok'] for b in items):,}/s",
                f"err {sum(b['errors'] for b in items):,}",
                f"p99 {p99:g} ms",
            ]
        if self.info:
            conns = sum(i.get("connections", 0) for i in self.info.values())
            backlog = sum(i.get("backlog", 0) for i in self.info.values())
            cpu = max(i.get("cpu_pct", 0.0) for i in self.info.values())
            parts.append(f"conns {conns}" + (f" backlog {backlog}" if backlog else ""))
            parts.append(f"gen cpu {cpu:.0f}%")
        if pool and pool.get("pipelines"):
            states = " ".join(f"{k} {v}" for k, v in sorted(pool["pipelines"].items()) if v)
            parts.append(f"pool {states or 'empty'} q {pool.get('queue') or 0}")
        return "  ".join(parts)
