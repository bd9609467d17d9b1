"""PoolSnapshot: a frozen, read-only picture of one pool for metrics and status.

Owns: the snapshot value type and the running counters it reports.
PURE: imports only the standard library and `lightnode.config.model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lightnode.config.model import EndpointConfig


@dataclass(slots=True)
class PoolCounters:
    """Monotonic counters of one pool; they survive LimitsChanged."""

    served_total: int = 0  # WorkerFinished events
    prefetched_total: int = 0  # requests sent ahead to a busy pipeline (Dispatch staged)
    starts_total: int = 0  # SpawnWorker commands
    crashes_total: int = 0  # pipelines that died while IDLE or BUSY
    retirements_total: int = 0  # pipelines marked for replacement (rule 10)
    start_failures_total: int = 0  # WorkerStartFailed, or an exit while STARTING
    rejections_total: dict[str, int] = field(default_factory=dict)  # errorType -> count

    def count_rejection(self, error_type: str) -> None:
        self.rejections_total[error_type] = self.rejections_total.get(error_type, 0) + 1


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """State of one pool at `now`; `pipelines` maps state value -> count."""

    pipelines: dict[str, int]  # keys: starting, idle, busy, stopping
    allocated: int  # STARTING + IDLE + BUSY
    queue_length: int
    staged: int  # requests sent ahead into busy pipelines' pipes (prefetch), not yet started
    oldest_wait_s: float  # 0.0 when nothing waits
    load_state: str  # LoadState value
    last_load_error: str | None
    mean_run_time_s: float | None  # exponentially weighted, None before the first call
    served_total: int
    prefetched_total: int
    starts_total: int
    crashes_total: int
    retirements_total: int
    start_failures_total: int
    rejections_total: dict[str, int]
    config: EndpointConfig
