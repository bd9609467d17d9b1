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
    | WorkerExited
    | WorkerOverLimit
    | Tick
    | LimitsChanged
    | DrainRequested
)
