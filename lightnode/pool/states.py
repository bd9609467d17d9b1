"""Pipeline states and the legal edges between them (SPEC §4).

PURE: imports only the standard library.

    STARTING -ready-> IDLE -dispatch-> BUSY -finished-> IDLE -stop-> STOPPING -exit-> GONE
    (any state but GONE) -exit/kill-> STOPPING or GONE
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class WorkerState(enum.Enum):
    # Members are singletons compared by identity: hash them in C too (Enum's
    # own __hash__ is Python code, and the rules hash states on every event).
    __hash__ = object.__hash__

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    GONE = "gone"


ALLOCATED = frozenset({WorkerState.STARTING, WorkerState.IDLE, WorkerState.BUSY})

WORKER_TRANSITIONS: Mapping[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.IDLE, WorkerState.STOPPING, WorkerState.GONE}),
    WorkerState.IDLE: frozenset({WorkerState.BUSY, WorkerState.STOPPING, WorkerState.GONE}),
    WorkerState.BUSY: frozenset({WorkerState.IDLE, WorkerState.STOPPING, WorkerState.GONE}),
    WorkerState.STOPPING: frozenset({WorkerState.GONE}),
    WorkerState.GONE: frozenset(),
}


class LoadState(enum.Enum):
    """The endpoint as a whole: can its code be loaded?"""

    # LOADING -first ready-> HEALTHY ; any -start failed-> FAILED -ready-> HEALTHY ; any -drain-> DRAINING
    __hash__ = object.__hash__

    LOADING = "loading"
    HEALTHY = "healthy"
    FAILED = "failed"
    DRAINING = "draining"


# The members as plain module names, for the pool's hot path: on Python 3.11 every
# `WorkerState.BUSY` goes through EnumType.__getattr__ (about 75 ns, against 15 ns for
# a global name), and a request reads states a dozen times.
STARTING, IDLE, BUSY, STOPPING, GONE = (
    WorkerState.STARTING, WorkerState.IDLE, WorkerState.BUSY, WorkerState.STOPPING, WorkerState.GONE,
)  # fmt: skip
LOADING, HEALTHY, FAILED, DRAINING = (
    LoadState.LOADING, LoadState.HEALTHY, LoadState.FAILED, LoadState.DRAINING,
)  # fmt: skip


class IllegalTransition(Exception):
    def __init__(self, old: WorkerState, new: WorkerState, worker_id: int) -> None:
        super().__init__(f"worker {worker_id}: illegal transition {old.value} -> {new.value}")
        self.old = old
        self.new = new
        self.worker_id = worker_id
