"""Events fed into the pool machine: past-tense facts (SPEC §4).

PURE: imports only the standard library and `lightnode.config.model`.
Ids are small integers chosen by the machine (workers) or the scheduler
(requests). `now` is passed beside the event, never stored in it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightnode.config.model import EndpointConfig


@dataclass(frozen=True, slots=True)
class Loaded:
    """The endpoint was loaded: start `floor` pipelines (rule 1)."""


@dataclass(frozen=True, slots=True)
class RequestArrived:
    request_id: int


@dataclass(frozen=True, slots=True)
class RequestCancelled:
    """The client went away (rule 9). Queued: leaves the queue. Running: result dropped."""

    request_id: int


@dataclass(frozen=True, slots=True)
class WorkerReady:
    """The pipeline finished its initialization code and can take a request."""

    worker_id: int


@dataclass(frozen=True, slots=True)
class WorkerStartFailed:
    """The pipeline's initialization failed (import error, exception in init code)."""

    worker_id: int
    error: str


@dataclass(frozen=True, slots=True)
class WorkerFinished:
    """The pipeline answered its current request (result or user error)."""

    worker_id: int


@dataclass(frozen=True, slots=True)
class WorkerNotStarted:
    """The pipeline answered its current request NOT_STARTED: it never ran it.

    Either the request's start-by time had passed when the pipeline came to it
    (a staged request the scheduler did not take back in time), or, with
    `stopping`, the pipeline is being killed and starts no call any more (it
    exits without answering the calls behind this one).
    """

    worker_id: int
    stopping: bool = False


@dataclass(frozen=True, slots=True)
class AnswersRead:
    """The scheduler read, at or after monotonic time `read_s`, every answer that the
    pipelines `worker_ids` had written (and reported each as an event before this one):
    any of their staged requests whose start-by is <= `read_s` can be taken back."""

    worker_ids: tuple[int, ...]
    read_s: float


@dataclass(frozen=True, slots=True)
class WorkerExited:
    """The pipeline's process is gone, for whatever reason.

    `detail` says how ("exit code 1", "killed by signal 9") for the
    WorkerCrashed message of an in-flight request.
    """

    worker_id: int
    detail: str


@dataclass(frozen=True, slots=True)
class WorkerOverLimit:
    """The pipeline's RSS exceeded `limits.max_rss_mb` (rule 10)."""

    worker_id: int


@dataclass(frozen=True, slots=True)
class Tick:
    """A timer fired: queue deadlines, exec deadlines, delayed shrink, backoff."""


@dataclass(frozen=True, slots=True)
class LimitsChanged:
    config: EndpointConfig


@dataclass(frozen=True, slots=True)
class DrainRequested:
    """Stop taking new requests; finish running and queued ones; then stop every pipeline."""


Event = (
    Loaded
    | RequestArrived
    | RequestCancelled
    | WorkerReady
    | WorkerStartFailed
    | WorkerFinished
    | WorkerNotStarted
    | AnswersRead
    | WorkerExited
    | WorkerOverLimit
    | Tick
    | LimitsChanged
    | DrainRequested
)
