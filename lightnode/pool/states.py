"""Pipeline states and the legal edges between them (SPEC §4).

PURE: imports only the standard library.

    STARTING -ready-> IDLE -dispatch-> BUSY -finished-> IDLE -stop-> STOPPING -exit-> GONE
    (any state but GONE) -exit/kill-> STOPPING or GONE
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final


class WorkerState(enum.Enum):
    # Members are singletons compared by identity: hash them in C too (Enum's
    # own __hash__ is Python code, and the rules hash states on every event).
    __hash__ = object.__hash__

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    GONE = "gone"


ALLOCATED: Final = frozenset({WorkerState.STARTING, WorkerState.IDLE, WorkerState.BUSY})

WORKER_TRANSITIONS: Final[Mapping[WorkerState, frozenset[WorkerState]]] = {
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
# a global name), and a request reads states a dozen times. Final: the compiled build
# reads a Final name from a C variable, any other module name from the module's dict.
STARTING: Final[WorkerState] = WorkerState.STARTING
IDLE: Final[WorkerState] = WorkerState.IDLE
BUSY: Final[WorkerState] = WorkerState.BUSY
STOPPING: Final[WorkerState] = WorkerState.STOPPING
GONE: Final[WorkerState] = WorkerState.GONE
LOADING: Final[LoadState] = LoadState.LOADING
HEALTHY: Final[LoadState] = LoadState.HEALTHY
FAILED: Final[LoadState] = LoadState.FAILED
DRAINING: Final[LoadState] = LoadState.DRAINING


class IllegalTransition(Exception):
    def __init__(self, old: WorkerState, new: WorkerState, worker_id: int) -> None:
        super().__init__(f"worker {worker_id}: illegal transition {old.value} -> {new.value}")
        self.old = old
        self.new = new
        self.worker_id = worker_id
