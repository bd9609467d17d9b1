"""How many pipelines of the whole node boot at once.

A pipeline's start is a Python interpreter importing the runtime and the user's code:
tens of ms to seconds of CPU. Started all at once, as a node of a hundred floor-1
endpoints does at start (or a large service's new generation at a deploy), the
interpreters share the machine's cores with the node's event loop and the serving
pipelines: on 2 cores, a node of 100 floor-1 endpoints wrote its address after 5.3-6 s
and answered /isAlive in up to 0.8 s, and a deploy of 40 endpoints took the p99 of a
1 ms endpoint under load from 8-9 ms to 0.8-1 s (21-23 ms through this gate; BENCHMARKS
run 38, `python -m loadtest.starts`).

Every pool asks this node-wide gate before it starts a process. A start holds one of
`slots` (two per core the node may run on, at least four) from its spawn until the
pipeline says READY or exits, or until it stops wanting the CPU: a start whose process
was runnable (on a core, or waiting for one) less than half of the last `CHECK_S` (it
waits on the network, the disk or a lock), or has held its slot for `MAX_HOLD_S`, leaves
its slot to the next. So inits that wait on I/O still overlap as before, and only
CPU-bound boots queue. Runnable, not on-CPU, time: on a machine busy with other work a
CPU-bound boot gets less than half a core, and must keep its slot all the same. The
others wait in arrival order; the pool machine sees them as STARTING all along (its
queue timeout and start rules are unchanged), and a pipeline stopped before its turn
never starts.

Only pools that serve nothing yet ask (a node's start, a deploy's new generation, an
endpoint whose pipelines all died): a serving pool's starts answer load now waiting and
launch at once (scheduler.EndpointPool._spawn); a request arriving at a pool that serves
nothing puts that pool's waiting starts first in line.

Imports: stdlib only (the pool and its handles are duck-typed).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Final

log: Final = logging.getLogger("lightnode.scheduler")

# How often a holder's runnable time is read.
CHECK_S: Final = 0.2
# A start runnable less than this share of the last CHECK_S leaves its slot.
BUSY_SHARE: Final = 0.5
# A start holds a slot at most this long, busy or not: a slow CPU-bound init (a large
# model parsed in Python) overlaps with the next starts rather than holding them back.
MAX_HOLD_S: Final = 5.0

_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The cores this process's cgroups let it use (a container's CPU limit sets the
    quota), or None when unlimited or unknown.

    cgroup v2: `cpu.max` ("QUOTA PERIOD", or "max PERIOD") of the cgroup named on the
    "0::PATH" line of /proc/self/cgroup and of its ancestors; v1: `cpu.cfs_quota_us` /
    `cpu.cfs_period_us` (quota -1: none) in the hierarchy of the cpu controller. All
    under `root`; the tightest quota found wins.
    """
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    files: list[tuple[Path, str | None]] = []  # (quota file, period file name or None: v2)
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        relative = Path(path.lstrip("/"))
        dirs = [relative, *relative.parents]  # the cgroup, then each ancestor up to the root
        if controllers == "":
            files += [(root / d / "cpu.max", None) for d in dirs]
        elif "cpu" in controllers.split(","):
            for mount in dict.fromkeys((controllers, "cpu", "cpu,cpuacct")):
                files += [(root / mount / d / "cpu.cfs_quota_us", "cpu.cfs_period_us") for d in dirs]
    limits = []
    for quota_file, period_name in files:
        try:
            if period_name is None:
                quota_text, period_text = quota_file.read_text().split()[:2]
            else:
                quota_text = quota_file.read_text().strip()
                period_text = quota_file.with_name(period_name).read_text().strip()
            quota, period = int(quota_text), int(period_text)
        except (OSError, ValueError):  # absent, "max" or -1 (no quota), or unreadable
            continue
        if quota > 0 and period > 0:
            limits.append(quota / period)
    return min(limits) if limits else None


def default_slots() -> int:
    """Two per core this process may run on (within its cgroup's CPU quota), at least four.

    A boot is not all CPU (exec, page faults, file reads): with 100 light endpoints on 2
    cores, beside other work, one slot per core left the cores 6-12 % idle and the node
    ready in 10 s, against 7.6-7.8 s all at once; two per core, 8.1-8.6 s. On an idle
    machine, two per core: 7.2-7.9 s, against 6.8-7.7 s (BENCHMARKS run 38).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:  # a container limited to 2 CPUs on a 64-core host
        cores = min(cores, max(1, math.ceil(limit)))
    return 2 * max(2, cores)


def process_runnable_s(pid: int) -> float | None:
    """Seconds the threads of process `pid` have been runnable (on a core or waiting for
    one), or None where it cannot be read.

    Linux: the time on a core and the time waiting in the run queue (ns) of each
    /proc/PID/task/TID/schedstat (/proc/PID/schedstat is the main thread's only: a boot
    whose work runs in a library's threads would look idle). On a kernel without those
    figures (absent, or all zero with scheduler statistics off), the CPU time of
    /proc/PID/stat, which sums the threads (fields 14 and 15, after the command name,
    which may hold spaces and parentheses, hence the last ")"). A thread that exits
    takes its time with it: the next difference is smaller, so the start leaves its slot
    early, which only lets the next one in.
    """
    total_ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    on_core_ns, waiting_ns = f.read().split()[:2]
            except FileNotFoundError:  # the thread exited meanwhile
                continue
            total_ns += int(on_core_ns) + int(waiting_ns)
    except (OSError, ValueError):
        total_ns = 0
    if total_ns:
        return total_ns / 1e9
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
    except (IndexError, ValueError):
        return None


class _Start:
    """One pipeline start: `launch()` spawns it and says whether it was spawned."""

    __slots__ = ("launch", "pid_of", "runnable_s", "checked_at", "held_since", "timer")

    def __init__(self, launch: Callable[[], bool], pid_of: Callable[[], int]) -> None:
        self.launch = launch
        self.pid_of = pid_of
        self.runnable_s: float | None = None
        self.checked_at = 0.0
        self.held_since = 0.0
        self.timer: asyncio.TimerHandle | None = None


class StartGate:
    """Node-wide: at most `slots` pipeline starts use the CPU at once (None: no limit)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        slots: int | None,
        *,
        runnable_s: Callable[[int], float | None] = process_runnable_s,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loop = loop
        self.slots = slots
        self._runnable_s = runnable_s
        self._clock = clock
        self._holding: dict[object, _Start] = {}
        self._waiting: deque[tuple[object, _Start]] = deque()

    @property
    def holding(self) -> int:
        return len(self._holding)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def ask(self, key: object, launch: Callable[[], bool], pid_of: Callable[[], int]) -> None:
        """Start `key` now if a slot is free, else when one is: `launch()` spawns it."""
        start = _Start(launch, pid_of)
        if self.slots is not None and len(self._holding) >= self.slots:
            self._waiting.append((key, start))
            return
        self._launch(key, start)

    def withdraw(self, key: object) -> bool:
        """`key` is not to start: True if it was still waiting for a slot (it never will)."""
        for index, (waiting_key, _) in enumerate(self._waiting):
            if waiting_key is key:
                del self._waiting[index]
                return True
        return False

    def hurry(self, key: object) -> None:
        """Requests wait for `key`: if it waits for a slot, it is first in line now."""
        for index, (waiting_key, start) in enumerate(self._waiting):
            if waiting_key is key:
                if index:
                    del self._waiting[index]
                    self._waiting.appendleft((key, start))
                return

    def release(self, key: object) -> None:
        """`key` is no longer booting (READY, failed, exited): its slot goes to the next."""
        start = self._holding.pop(key, None)
        if start is None:
            return
        if start.timer is not None:
            start.timer.cancel()
        self._next()

    def _launch(self, key: object, start: _Start) -> None:
        try:
            launched = start.launch()
        except Exception:  # boundary: one pool's failure must not stop the others' starts
            log.exception("starting a pipeline failed")
            return
        if not launched:  # not spawned (stopped meanwhile, or the spawn failed)
            return
        if self.slots is None:
            return
        now = self._clock()
        start.held_since = start.checked_at = now
        start.runnable_s = self._runnable_s(start.pid_of())
        self._holding[key] = start
        start.timer = self.loop.call_later(CHECK_S, self._check, key, start)

    def _check(self, key: object, start: _Start) -> None:
        """Keep `key`'s slot while its process wants a core (see the module docstring)."""
        if self._holding.get(key) is not start:
            return
        now = self._clock()
        runnable_s = self._runnable_s(start.pid_of())
        busy = (
            runnable_s is not None
            and start.runnable_s is not None
            and runnable_s - start.runnable_s >= BUSY_SHARE * (now - start.checked_at)
        )
        if busy and now - start.held_since < MAX_HOLD_S:
            start.runnable_s, start.checked_at = runnable_s, now
            start.timer = self.loop.call_later(CHECK_S, self._check, key, start)
            return
        start.timer = None
        self.release(key)

    def _next(self) -> None:
        while self._waiting and (self.slots is None or len(self._holding) < self.slots):
            key, start = self._waiting.popleft()
            self._launch(key, start)
