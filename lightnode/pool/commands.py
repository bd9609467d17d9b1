"""Commands returned by the pool machine: imperatives for the scheduler to carry out.

PURE: imports only the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SpawnWorker:
    """Start a new pipeline process; report WorkerReady or WorkerStartFailed later."""

    worker_id: int


@dataclass(slots=True, init=False)
class Dispatch:
    """Send the request to the (now BUSY) pipeline.

    `staged`: the pipeline is still running another request; this one is sent
    ahead into its pipe (prefetch) and starts when that one finishes.
    `start_by_s` (staged only; 0.0 otherwise): the monotonic time after which the
    pipeline must not start it (the CALL frame's value, in ns: see the machine's
    docstring, "Taking a staged request back"). Left out of ==: tests compare
    commands by what the rules decide and check this derived time on its own.

    Not frozen, unlike the other commands, though nobody changes one: it is made
    for every request, and a frozen dataclass's __init__ costs three times as much.
    Its own __init__ for the same reason: the one dataclass writes is interpreted
    even in the compiled build (4x the cost of this one, which mypyc compiles).
    """

    request_id: int
    worker_id: int
    wait_s: float  # how long the request waited in the queue
    staged: bool
    start_by_s: float = field(compare=False)

    def __init__(
        self, request_id: int, worker_id: int, wait_s: float, staged: bool = False, start_by_s: float = 0.0
    ) -> None:
        self.request_id = request_id
        self.worker_id = worker_id
        self.wait_s = wait_s
        self.staged = staged
        self.start_by_s = start_by_s


@dataclass(frozen=True, slots=True)
class Withdraw:
    """A request staged on `worker_id` was taken back before it could start: it waits
    again (or has been answered). The pipeline's NOT_STARTED answer for it, still to
    come unless the pipeline is gone, is expected and dropped."""

    request_id: int
    worker_id: int


@dataclass(frozen=True, slots=True)
class StopWorker:
    """Stop a pipeline that runs nothing: close its pipe, let it exit, then report WorkerExited."""

    worker_id: int


@dataclass(frozen=True, slots=True)
class KillWorker:
    """Kill a pipeline now (exec timeout): log its stack, SIGKILL, then report WorkerExited."""

    worker_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer a request with an error; the request is finished for the machine.

    `retry_after_s` is set for QueueFull and QueueTimeout (rule 11).
    """

    request_id: int
    error_type: str
    message: str
    retry_after_s: int | None = None


@dataclass(frozen=True, slots=True)
class Drained:
    """After DrainRequested: nothing runs, nothing waits, every pipeline is GONE."""


Command = SpawnWorker | Dispatch | Withdraw | StopWorker | KillWorker | Reject | Drained
