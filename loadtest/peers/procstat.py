"""CPU seconds used by a process tree, from /proc (Linux).

A server's cost per request is the CPU its whole tree used during a run
(master, workers, lightnode's pipelines): utime + stime of every live
descendant plus cutime + cstime (children that exited and were reaped), read
before and after. `parse_stat` and `tree_ticks` are pure. Must not import
`lightnode`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class StatLine:
    ppid: int
    ticks: int  # utime + stime + cutime + cstime


def parse_stat(text: str) -> StatLine:
    """One /proc/PID/stat line. The command name may hold spaces and parentheses.

    Raises:
        ValueError: not a stat line.
    """
    close = text.rfind(")")
    if close < 0:
        raise ValueError("no ')' in stat line")
    fields = text[close + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    if len(fields) < 15:
        raise ValueError("stat line too short")
    ppid = int(fields[1])
    ticks = sum(int(value) for value in fields[11:15])
    return StatLine(ppid, ticks)


def tree_ticks(table: Mapping[int, StatLine], root: int) -> tuple[int, int]:
    """(ticks, processes) summed over `root` and all its descendants in `table`."""
    children: dict[int, list[int]] = {}
    for pid, line in table.items():
        children.setdefault(line.ppid, []).append(pid)
    total, count, todo, seen = 0, 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid].ticks
        count += 1
        todo.extend(children.get(pid, ()))
    return total, count


def read_table(proc: Path = PROC) -> dict[int, StatLine]:
    """Every process's stat line now (processes that vanish meanwhile are skipped)."""
    table: dict[int, StatLine] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            table[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError):
            continue
    return table


@dataclass(frozen=True)
class TreeCpu:
    total_s: float  # the whole tree
    root_s: float  # the root process alone (lightnode's node, a server's master)
    processes: int


def tree_cpu(root: int) -> TreeCpu:
    """CPU seconds of `root`'s tree now, and of `root` alone."""
    table = read_table()
    ticks, count = tree_ticks(table, root)
    root_ticks = table[root].ticks if root in table else 0
    return TreeCpu(ticks / CLOCK_TICKS_PER_S, root_ticks / CLOCK_TICKS_PER_S, count)
