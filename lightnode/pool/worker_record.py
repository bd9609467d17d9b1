"""WorkerRecord: what the pool machine knows about one pipeline.

Owns: a pipeline's state and the single guarded state setter that checks
every edge against `states.WORKER_TRANSITIONS`, plus the per-pipeline
bookkeeping the rules need (request in flight, idle order, retirement).
PURE: imports only the standard library and `lightnode.pool.states`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from lightnode.pool.states import WORKER_TRANSITIONS, IllegalTransition, WorkerState


def check_transition(old: WorkerState, new: WorkerState, worker_id: int) -> None:
    """Raise IllegalTransition unless `old -> new` is a listed edge."""
    if new not in WORKER_TRANSITIONS[old]:
        raise IllegalTransition(old, new, worker_id)


# init=False: the __init__ dataclass writes is interpreted even in the compiled build
# (4x the cost of this one, which mypyc compiles); eq and repr still come from dataclass.
@dataclass(slots=True, init=False)
class StagedRequest:
    """A request sent ahead into the pipe of a BUSY pipeline (prefetch)."""

    request_id: int
    arrived_s: float
    deadline_s: float  # its queue deadline, should it have to wait again
    start_by_s: float  # the pipeline does not start it after this time (it may be taken back)
    cancelled: bool  # rule 9: its result will be dropped

    def __init__(
        self,
        request_id: int,
        arrived_s: float,
        deadline_s: float,
        start_by_s: float = float("inf"),
        cancelled: bool = False,
    ) -> None:
        self.request_id = request_id
        self.arrived_s = arrived_s
        self.deadline_s = deadline_s
        self.start_by_s = start_by_s
        self.cancelled = cancelled


@dataclass(slots=True)
class WorkerRecord:
    """Mutable record of one pipeline, owned by exactly one PoolMachine."""

    worker_id: int
    state: WorkerState = WorkerState.STARTING
    served: int = 0  # requests finished by this pipeline
    # Idle order: a larger idle_seq became IDLE later (rule 2 dispatches to the
    # largest, rule 7 stops the smallest first).
    idle_seq: int = 0
    idle_since_s: float = 0.0
    # The request in flight; set exactly while BUSY.
    request_id: int | None = None
    dispatched_s: float = 0.0
    exec_deadline_s: float | None = None
    exec_timeout_ms: int = 0  # the limit in force when the request was dispatched
    request_cancelled: bool = False  # rule 9: the result will be dropped
    # When the request in flight arrived and its queue deadline: it waits again with
    # them if the pipeline answers NOT_STARTED for it.
    request_arrived_s: float = 0.0
    request_deadline_s: float = 0.0
    # Its current call ran past the start-by of a request staged behind it (which was
    # taken back): it takes no staged request until that call is answered.
    overdue: bool = False
    # Prefetch: the requests sent ahead into the pipe of this BUSY pipeline, in
    # the order it runs them; the first starts when the current one finishes
    # (never any unless BUSY, or STOPPING after an exec-timeout kill: they stay
    # attached until its answers are read and it has exited).
    staged: deque[StagedRequest] = field(default_factory=deque)
    # Killed for an exec timeout (STOPPING): the killed call's answer (dropped: it
    # was answered 504) may still come before those of its staged requests.
    killed_answer_due: bool = False
    # Rule 10 and ceil decreases.
    retiring: bool = False  # marked for replacement (max_requests or RSS)
    successor_id: int | None = None  # the pipeline starting to replace this one
    stop_when_free: bool = False  # BUSY and takes no new work: stop after this request
    replace_on_stop: bool = False  # retired at ceil: start the successor when it stops
    # Told of every state change (Pipelines keeps its counts with it).
    on_move: Callable[[WorkerRecord, WorkerState, WorkerState], None] | None = None

    def set_state(self, new: WorkerState) -> None:
        """Move to `new`; the state is unchanged if the edge is illegal.

        Raises:
            IllegalTransition: `self.state -> new` is not in WORKER_TRANSITIONS.
        """
        old = self.state
        check_transition(old, new, self.worker_id)
        self.state = new
        if self.on_move is not None:
            self.on_move(self, old, new)

    @property
    def leaving(self) -> bool:
        """BUSY but told to stop after its request: counted in allocated, gets no new work."""
        return self.state is WorkerState.BUSY and self.stop_when_free

    def clear_request(self) -> None:
        self.request_id = None
        self.dispatched_s = 0.0
        self.exec_deadline_s = None
        self.exec_timeout_ms = 0
        self.request_cancelled = False
        self.overdue = False
