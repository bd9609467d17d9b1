"""A pipeline start that fails beside pipelines that serve (SPEC §4, start failures).

The endpoint stays HEALTHY: waiting requests stay queued for the serving
pipelines, new ones are admitted, and no pipeline starts until the backoff
delay has passed (0.5 s doubling per consecutive failure, capped at 30 s).
With no pipeline serving, a failed start makes the endpoint FAILED as before.
"""

from __future__ import annotations

from lightnode.pool.commands import Dispatch, Reject, SpawnWorker, StopWorker
from lightnode.pool.events import (
    Loaded,
    RequestArrived,
    Tick,
    WorkerExited,
    WorkerFinished,
    WorkerOverLimit,
    WorkerReady,
    WorkerStartFailed,
)
from lightnode.pool.states import LoadState, WorkerState

from ._script import Script, ready_pool, wait_out_backoff

ARRIVE, READY, DONE, EXIT = RequestArrived, WorkerReady, WorkerFinished, WorkerExited
HEALTHY, FAILED = LoadState.HEALTHY, LoadState.FAILED
CRASHED = "The pipeline died while running the request (exit code 1)"


def test_failed_start_beside_a_serving_pipeline_keeps_serving() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=2, queue=2)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [SpawnWorker(2)]
    err = "MemoryError"
    assert s(WorkerStartFailed(2, err), at=3.0) == []  # request 2 stays queued
    assert s.machine.load_state is HEALTHY
    snap = s.machine.snapshot(3.0)
    assert (snap.load_state, snap.last_load_error, snap.start_failures_total) == ("healthy", err, 1)
    assert snap.queue_length == 1
    assert s(ARRIVE(3), at=3.125) == []  # admitted, but no start while held back
    assert s(DONE(1), at=3.25) == [Dispatch(2, 1, 1.25)]  # the serving pipeline takes it
    assert s(EXIT(2, "exit code 3"), at=3.3) == []
    assert s(DONE(1), at=3.375) == [Dispatch(3, 1, 0.25)]
    # Held back, the pool cannot grow: rule 4 admits as at ceil.
    assert s(ARRIVE(4), at=3.4375) == []
    assert s(ARRIVE(5), at=3.4375) == []
    [rejected] = s(ARRIVE(6), at=3.4375)
    assert isinstance(rejected, Reject) and rejected.error_type == "QueueFull"
    # The end of the hold is a timer: growth resumes on a Tick alone.
    assert s.machine.next_deadline() == 3.5
    assert s(Tick(), at=3.49) == []
    assert s(Tick(), at=3.5) == [SpawnWorker(3)]
    assert s(READY(3), at=4.0) == [Dispatch(4, 3, 0.5625)]


def test_failed_starts_beside_a_serving_pipeline_back_off_until_one_succeeds() -> None:
    s = Script(floor=2, cruise=2, ceil=2)
    assert s(Loaded()) == [SpawnWorker(1), SpawnWorker(2)]
    assert s(READY(1), at=0.0) == []
    now, worker, rid = 1.0, 2, 0
    delays = []
    for _ in range(8):
        assert s(WorkerStartFailed(worker, "boom"), at=now) == []
        assert s(EXIT(worker, "exit code 3"), at=now) == []  # no floor start while held back
        assert s.machine.load_state is HEALTHY
        rid += 1
        assert s(ARRIVE(rid), at=now) == [Dispatch(rid, 1, 0.0)]  # pipeline 1 serves on
        assert s(DONE(1), at=now) == []
        worker += 1
        delay, now = wait_out_backoff(s, now, worker)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert s.machine.snapshot(now).start_failures_total == 8
    assert s(READY(worker), at=now + 1) == []
    # A start that succeeds resets the count: the next failure waits 0.5 s again.
    assert s(EXIT(1, "exit code 1"), at=now + 2) == [SpawnWorker(worker + 1)]
    assert s(WorkerStartFailed(worker + 1, "boom"), at=now + 3) == []
    assert s.machine.next_deadline() == now + 3.5


def test_starts_already_running_at_a_failure_do_not_double_the_delay() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=4)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    for rid, worker in ((2, 2), (3, 3), (4, 4)):
        assert s(ARRIVE(rid), at=2.0) == [SpawnWorker(worker)]
    assert s(WorkerStartFailed(2, "first"), at=3.0) == []
    assert s(WorkerStartFailed(3, "second"), at=3.1) == []
    assert s.machine.next_deadline() == 3.5
    assert s.machine.snapshot(3.1).last_load_error == "second"
    # One that was starting loads after all: the hold ends, rule 3 grows again.
    assert s(READY(4), at=3.25) == [Dispatch(2, 4, 1.25), SpawnWorker(5), SpawnWorker(6)]
    assert s.machine.next_deadline() == 12.0  # only the queue deadlines


def test_failed_start_with_no_pipeline_serving_is_failed() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=2)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [SpawnWorker(2)]
    assert s(WorkerStartFailed(2, "boom"), at=3.0) == []
    assert s(EXIT(2, "exit code 3"), at=3.0) == []
    # The last serving pipeline dies while starts are held back: nothing starts yet.
    assert s(EXIT(1, "exit code 1"), at=3.1) == [Reject(1, "WorkerCrashed", CRASHED)]
    assert s.machine.load_state is HEALTHY
    assert s(Tick(), at=3.5) == [SpawnWorker(3)]
    # That start fails too, with nothing serving: FAILED, the second consecutive failure.
    assert s(WorkerStartFailed(3, "boom again"), at=4.0) == [
        Reject(2, "EndpointUnavailable", "boom again")
    ]
    assert s.machine.load_state is FAILED
    assert s.machine.next_deadline() == 5.0
    assert s(ARRIVE(3), at=4.1) == [Reject(3, "EndpointUnavailable", "boom again")]


def test_retirement_waits_while_starts_are_held_back() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=2)
    assert s(WorkerOverLimit(1), at=2.0) == [SpawnWorker(2)]
    assert s(WorkerStartFailed(2, "boom"), at=2.5) == []
    assert s(EXIT(2, "exit code 3"), at=2.6) == []
    assert s.state(1) is WorkerState.IDLE  # the old pipeline serves on
    assert s(ARRIVE(1), at=2.7) == [Dispatch(1, 1, 0.0)]
    assert s(DONE(1), at=2.8) == []
    assert s(Tick(), at=3.0) == [SpawnWorker(3)]  # the successor, after the delay
    assert s(READY(3), at=4.0) == [StopWorker(1)]


def test_retirement_at_ceil_keeps_the_old_pipeline_while_starts_are_held_back() -> None:
    s = ready_pool(2, floor=2, cruise=2, ceil=2)
    assert s(ARRIVE(1), at=3.0) == [Dispatch(1, 2, 0.0)]
    assert s(WorkerOverLimit(2), at=3.0) == []  # at ceil: it stops when free, then a successor
    s(EXIT(1, "exit code 1"), at=3.1)  # pipeline 1 dies: its replacement fails to start
    assert s(WorkerStartFailed(3, "boom"), at=3.2) == []
    # Pipeline 2 is free, but no successor could start: it serves on instead of stopping.
    assert s(DONE(2), at=3.3) == []
    assert s.state(2) is WorkerState.IDLE
    assert s(ARRIVE(2), at=3.4) == [Dispatch(2, 2, 0.0)]
