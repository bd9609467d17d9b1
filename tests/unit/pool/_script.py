"""Test helpers for pool machine event scripts (h11 test_state style)."""

from __future__ import annotations

from lightnode.config.model import EndpointConfig, ExecLimits, PoolLimits
from lightnode.pool.commands import Command, SpawnWorker
from lightnode.pool.events import Event, Loaded, Tick, WorkerReady
from lightnode.pool.machine import PoolMachine
from lightnode.pool.states import WorkerState


def make_config(
    *,
    floor: int = 1,
    ceil: int = 8,
    cruise: int = 2,
    queue: int = 16,
    timeout: int = 10000,
    scale_down_delay: int = 0,
    exec_timeout: int = 0,
    max_requests: int = 0,
    max_rss_mb: int = 0,
    prefetch: int = 1,
) -> EndpointConfig:
    return EndpointConfig(
        pool=PoolLimits(
            floor=floor,
            ceil=ceil,
            cruise=cruise,
            queue=queue,
            timeout=timeout,
            scale_down_delay=scale_down_delay,
            prefetch=prefetch,
        ),
        limits=ExecLimits(
            exec_timeout=exec_timeout, max_requests=max_requests, max_rss_mb=max_rss_mb
        ),
        source="test",
    )


class Script:
    """Drives one PoolMachine with a settable clock; checks invariants after every event."""

    def __init__(self, **pool: int) -> None:
        self.machine = PoolMachine(make_config(**pool))
        self.now = 0.0

    def __call__(self, event: Event, at: float | None = None) -> list[Command]:
        if at is not None:
            self.now = at
        commands = self.machine.handle(event, self.now)
        self.machine.check_invariants()
        return commands

    def state(self, worker_id: int) -> WorkerState:
        return self.machine.worker_state(worker_id)

    def states(self, *worker_ids: int) -> list[WorkerState]:
        return [self.machine.worker_state(w) for w in worker_ids]


def ready_pool(n: int, **pool: int) -> Script:
    """A loaded pool whose first n pipelines (ids 1..n) became IDLE at t=1..n."""
    s = Script(**pool)
    assert s(Loaded()) == [SpawnWorker(i) for i in range(1, n + 1)]
    for i in range(1, n + 1):
        assert s(WorkerReady(i), at=float(i)) == []
    return s


def wait_out_backoff(s: Script, now: float, worker: int) -> tuple[float, float]:
    """After a failed start at `now`: nothing starts before the backoff's deadline, and at
    it exactly one pipeline, `worker`. Returns (the delay, the deadline)."""
    deadline = s.machine.next_deadline()
    assert deadline is not None
    assert s(Tick(), at=deadline - 0.01) == []
    assert s(Tick(), at=deadline) == [SpawnWorker(worker)]  # exactly one start
    assert s.machine.next_deadline() is None
    return deadline - now, deadline
