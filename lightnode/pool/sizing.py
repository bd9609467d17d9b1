"""Pure sizing arithmetic of one endpoint's pool (SPEC §4 rules 1, 3, 4, 7, 11).

Owns: how many pipelines to start or stop, whether a request is admitted,
the Retry-After estimate, the start-failure backoff and the run-time mean.
Every function is a pure function of its arguments: no state, no clock.
Imports: standard library and `lightnode.config.model` only; never asyncio,
subprocess, os, socket, time or random.
"""

from __future__ import annotations

import math
from typing import Final

from lightnode.config.model import PoolLimits

# First retry delay after a failed pipeline start; doubles on each consecutive
# failure of a retry. Short enough that a transient failure (a file being
# replaced while it is imported) heals quickly, long enough not to spin.
BACKOFF_FIRST_S: Final = 0.5
# Upper bound of the retry delay: a broken endpoint costs one start per 30 s,
# and a fixed one is noticed within 30 s without a code change.
BACKOFF_MAX_S: Final = 30.0

# Weight of the newest sample in the run-time mean (exponentially weighted).
# 0.2 follows a change of function speed within ~10 calls while one slow call
# moves the mean by only a fifth.
RUN_TIME_EWMA_ALPHA: Final = 0.2

# Assumed run time before any call has finished (rule 11 needs a figure).
UNKNOWN_RUN_TIME_S: Final = 1.0


def backoff_s(consecutive_failures: int) -> float:
    """Delay before the next start attempt after `consecutive_failures` failures.

    Returns 0.5 s after the first failure, doubling per failure, capped at 30 s.
    """
    if consecutive_failures <= 0:
        return 0.0
    # Cap the exponent first so a long outage never builds a huge integer.
    exponent = min(consecutive_failures - 1, 16)
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * float(1 << exponent))


def update_mean(mean_s: float | None, sample_s: float) -> float:
    """Fold one run time into the exponentially weighted mean (the first sample seeds it)."""
    if mean_s is None:
        return sample_s
    return mean_s + RUN_TIME_EWMA_ALPHA * (sample_s - mean_s)


def retry_after_s(queue_length: int, mean_run_time_s: float | None, serving: int) -> int:
    """Rule 11: whole seconds a rejected client should wait, at least 1.

    Args:
        queue_length: requests still waiting.
        mean_run_time_s: mean run time of a call, None when unknown (1 s assumed).
        serving: pipelines able to serve now (IDLE + BUSY).
    """
    mean = UNKNOWN_RUN_TIME_S if mean_run_time_s is None else mean_run_time_s
    estimate = queue_length * mean / max(1, serving)
    return max(1, math.ceil(estimate))


def admits(pool: PoolLimits, *, allocated: int, starting: int, waiting: int) -> bool:
    """Rule 4 for a request that found no IDLE pipeline.

    Below ceil the request always waits (rule 3 starts a pipeline for it).
    At (or, after a ceil decrease, above) ceil it waits only if fewer than
    `pool.queue` requests wait beyond those the STARTING pipelines will take.
    With `queue == 0` it waits only for a STARTING pipeline nobody claimed.
    """
    if allocated < pool.ceil:
        return True
    return waiting - starting < pool.queue


def spawns_wanted(
    pool: PoolLimits, *, allocated: int, starting: int, waiting: int, keep_floor: bool
) -> int:
    """Rules 1 and 3: how many pipelines to start now.

    Rule 1 (only when `keep_floor`): start up to `floor`. Rule 3: while more
    requests wait than pipelines start, and the pool is below ceil, start one.
    The result never takes `allocated` past `ceil`.
    """
    room = max(0, pool.ceil - allocated)
    for_floor = max(0, pool.floor - allocated) if keep_floor else 0
    for_floor = min(for_floor, room)
    for_queue = max(0, waiting - (starting + for_floor))
    return for_floor + min(for_queue, room - for_floor)


def surplus(pool: PoolLimits, *, allocated: int) -> int:
    """Rule 7: how many free pipelines may stop; the pool never goes below floor."""
    return max(0, allocated - max(pool.cruise, pool.floor))


def ceil_excess(pool: PoolLimits, *, allocated: int) -> int:
    """How many pipelines exceed ceil (only after a ceil decrease)."""
    return max(0, allocated - pool.ceil)
