"""Open-loop schedules: when each request is meant to be sent.

The run's global request sequence g = 0, 1, 2, ... of one stage is sent at the
times that make the cumulative count follow the stage's rate. Proc k of n owns
the requests g = k, k + n, k + 2n, ..., so the union of all procs is exactly
the single-process schedule, evenly interleaved. Latency is measured from these
intended times (coordinated omission), not from when a socket was free.

Pure: no clock, no I/O. Must not import asyncio or `lightnode`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from loadtest.plan import Stage


def offset_of(index: int, rate_rps: float, rate_to_rps: float, duration_s: float) -> float:
    """Seconds after the stage start at which global request `index` is due.

    The rate goes linearly from `rate_rps` to `rate_to_rps` over the stage, so
    the count sent by time t is N(t) = r0 t + (r1 - r0) t^2 / (2 D); this solves
    N(t) = index. Returns `math.inf` when a ramp-down never reaches `index`.
    """
    a = (rate_to_rps - rate_rps) / (2.0 * duration_s)
    b = rate_rps
    if index == 0:
        return 0.0
    disc = b * b + 4.0 * a * index
    if disc < 0.0:
        return math.inf
    denominator = b + math.sqrt(disc)
    # The form 2g / (b + sqrt(b^2 + 4ag)) stays exact when a == 0 (t = g / b).
    return 2.0 * index / denominator if denominator > 0.0 else math.inf


def stage_offsets(stage: Stage, proc_index: int = 0, procs: int = 1) -> Iterator[tuple[float, int]]:
    """Yield (offset_s, global_index) for proc `proc_index`'s requests of one stage.

    Offsets are seconds from the stage start, strictly below its duration.
    Closed-loop and idle stages yield nothing.
    """
    if not stage.is_open_loop:
        return
    rate = float(stage.rate_rps or 0.0)
    rate_to = float(stage.rate_to_rps if stage.rate_to_rps is not None else rate)
    if rate <= 0.0 and rate_to <= 0.0:
        return
    index = proc_index
    while True:
        offset = offset_of(index, rate, rate_to, stage.duration_s)
        if offset >= stage.duration_s:
            return
        yield offset, index
        index += procs


def expected_count(stage: Stage) -> float:
    """How many requests an open-loop stage is meant to send (all procs)."""
    if not stage.is_open_loop:
        return 0.0
    rate = float(stage.rate_rps or 0.0)
    rate_to = float(stage.rate_to_rps if stage.rate_to_rps is not None else rate)
    return (rate + rate_to) / 2.0 * stage.duration_s


def stage_starts(stages: tuple[Stage, ...] | list[Stage]) -> list[float]:
    """Start offset of each stage from the measured run's start (back to back)."""
    starts, now = [], 0.0
    for stage in stages:
        starts.append(now)
        now += stage.duration_s
    return starts
