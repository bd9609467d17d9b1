"""Event scripts for PoolMachine: one or more per SPEC §4 rule, commands and states asserted."""

from __future__ import annotations

import dataclasses

import pytest

from lightnode.errors import InternalError
from lightnode.pool.commands import Dispatch, Drained, KillWorker, Reject, SpawnWorker, StopWorker
from lightnode.pool.events import (
    DrainRequested,
    LimitsChanged,
    Loaded,
    RequestArrived,
    RequestCancelled,
    Tick,
    WorkerExited,
    WorkerFinished,
    WorkerOverLimit,
    WorkerReady,
    WorkerStartFailed,
)
from lightnode.pool.machine import SHUTTING_DOWN_MESSAGE, PoolMachine
from lightnode.pool.states import LoadState, WorkerState

from ._script import Script, make_config, ready_pool, wait_out_backoff

STARTING, IDLE, BUSY = WorkerState.STARTING, WorkerState.IDLE, WorkerState.BUSY
STOPPING, GONE = WorkerState.STOPPING, WorkerState.GONE
ARRIVE, CANCEL = RequestArrived, RequestCancelled
READY, DONE, EXIT = WorkerReady, WorkerFinished, WorkerExited


def full(rid: int, retry: int) -> Reject:
    return Reject(rid, "QueueFull", "Request queue is full", retry)


def unavailable(rid: int, error: str) -> Reject:
    return Reject(rid, "EndpointUnavailable", error)


def with_limits(s: Script, **changes: int) -> LimitsChanged:
    config = s.machine.config
    pool_keys = {f.name for f in dataclasses.fields(config.pool)}
    pool = dataclasses.replace(config.pool, **{k: v for k, v in changes.items() if k in pool_keys})
    limits = dataclasses.replace(
        config.limits, **{k: v for k, v in changes.items() if k not in pool_keys}
    )
    return LimitsChanged(dataclasses.replace(config, pool=pool, limits=limits))


# -- rule 1: load ------------------------------------------------------------


def test_nothing_starts_before_loaded() -> None:
    s = Script(floor=2)
    assert s(Tick(), at=5.0) == []
    assert s.machine.next_deadline() is None
    assert s.machine.load_state is LoadState.LOADING


def test_loaded_starts_floor_pipelines_once() -> None:
    s = Script(floor=2)
    assert s(Loaded()) == [SpawnWorker(1), SpawnWorker(2)]
    assert s.states(1, 2) == [STARTING, STARTING]
    assert s(Loaded()) == []
    assert s(READY(1), at=1.0) == []
    assert s.machine.load_state is LoadState.HEALTHY
    assert s.states(1, 2) == [IDLE, STARTING]


def test_request_before_loaded_counts_as_loaded() -> None:
    s = Script(floor=1)
    assert s(ARRIVE(7)) == [SpawnWorker(1)]  # one start serves both rule 1 and rule 3
    assert s(Loaded()) == []
    assert s(READY(1), at=2.0) == [Dispatch(7, 1, 2.0)]


def test_floor_zero_scales_from_and_to_zero() -> None:
    s = Script(floor=0, cruise=0, ceil=2)
    assert s(Loaded()) == []
    assert s(ARRIVE(1), at=1.0) == [SpawnWorker(1)]
    assert s(READY(1), at=1.5) == [Dispatch(1, 1, 0.5)]
    assert s(DONE(1), at=2.0) == [StopWorker(1)]
    assert s(EXIT(1, "exit code 0"), at=2.1) == []
    assert s.state(1) is GONE
    assert s.machine.snapshot(2.1).allocated == 0


# -- rule 2: dispatch, most recently used first --------------------------------


def test_dispatch_to_idle_has_zero_wait() -> None:
    s = ready_pool(1, floor=1)
    assert s(ARRIVE(1), at=3.0) == [Dispatch(1, 1, 0.0)]
    assert s.state(1) is BUSY


def test_dispatch_prefers_most_recently_used_idle() -> None:
    s = ready_pool(3, floor=3, cruise=3, ceil=3)
    assert s(ARRIVE(10), at=4.0) == [Dispatch(10, 3, 0.0)]  # 3 became idle last
    assert s(ARRIVE(11), at=4.0) == [Dispatch(11, 2, 0.0)]
    assert s(DONE(3), at=5.0) == []
    assert s(ARRIVE(12), at=6.0) == [Dispatch(12, 3, 0.0)]  # freed last, used first
    assert s.states(1, 2, 3) == [IDLE, BUSY, BUSY]


# -- rules 3 and 4: grow and admit ---------------------------------------------


def test_grow_one_start_per_waiting_request_up_to_ceil() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=3)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [SpawnWorker(2)]
    assert s(ARRIVE(3), at=2.0) == [SpawnWorker(3)]
    assert s(ARRIVE(4), at=2.0) == []  # at ceil: waits, no start
    assert s.machine.snapshot(2.0).queue_length == 3
    assert s(READY(2), at=3.0) == [Dispatch(2, 2, 1.0)]


def test_queue_full_at_ceil() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1, queue=1)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == []
    assert s(ARRIVE(3), at=2.0) == [full(3, 1)]
    assert s.machine.snapshot(2.0).rejections_total == {"QueueFull": 1}


def test_queue_zero_rejects_instead_of_queueing() -> None:
    s = Script(floor=0, cruise=0, ceil=1, queue=0)
    assert s(ARRIVE(1)) == [SpawnWorker(1)]  # below ceil: waits for the start
    assert s(ARRIVE(2)) == [full(2, 1)]
    assert s(READY(1), at=1.0) == [Dispatch(1, 1, 1.0)]
    assert s(ARRIVE(3), at=1.0) == [full(3, 1)]


def test_queue_zero_admits_for_an_unclaimed_start() -> None:
    s = Script(floor=2, cruise=2, ceil=2, queue=0)
    assert s(Loaded()) == [SpawnWorker(1), SpawnWorker(2)]
    assert s(ARRIVE(1)) == []
    assert s(ARRIVE(2)) == []
    assert s(ARRIVE(3)) == [full(3, 2)]  # 2 waiting x 1 s (unknown mean) / max(1, 0)
    assert s(READY(2), at=1.0) == [Dispatch(1, 2, 1.0)]


def test_queue_counts_only_requests_beyond_starting_pipelines() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=2, queue=1)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [SpawnWorker(2)]  # taken by worker 2
    assert s(ARRIVE(3), at=2.0) == []  # the one allowed beyond
    assert s(ARRIVE(4), at=2.0) == [full(4, 2)]  # 2 waiting x 1 s / 1 serving


# -- rule 5: fairness ----------------------------------------------------------


def test_freed_pipeline_takes_oldest_waiting_request() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=3.0) == []
    assert s(ARRIVE(3), at=4.0) == []
    assert s(DONE(1), at=5.0) == [Dispatch(2, 1, 2.0)]
    assert s(DONE(1), at=6.0) == [Dispatch(3, 1, 2.0)]


def test_answers_due_are_those_of_calls_that_ran_the_mean_run_time() -> None:
    """The scheduler reads a busy pipeline's answer pipe early (before the loop's turn)
    only where an answer may wait: while a request waits, for calls that have run at
    least the mean run time (before any call has ended, every busy pipeline), and for
    pipelines whose last answer was read so, early (the loop is late for them)."""
    s = ready_pool(2, floor=2, cruise=2, ceil=2, prefetch=0)
    assert s(ARRIVE(1), at=10.0) == [Dispatch(1, 2, 0.0)]
    assert s(ARRIVE(2), at=10.0) == [Dispatch(2, 1, 0.0)]
    assert s.machine.answers_due(10.5, set()) == []  # nothing waits: no early read
    assert s(ARRIVE(3), at=10.5) == []
    assert sorted(s.machine.answers_due(10.5, set())) == [1, 2]  # no run time known yet
    assert s(DONE(2), at=11.0) == [Dispatch(3, 2, 0.5)]  # the mean run time: 1 s
    assert s(ARRIVE(4), at=11.2) == []
    assert s.machine.answers_due(11.2, set()) == [1]  # pipeline 2's call started at 11.0
    assert s.machine.answers_due(11.99, set()) == [1]
    assert sorted(s.machine.answers_due(12.0, set())) == [1, 2]
    # Pipeline 2's last answer was read late (the loop behind): its pipe, at once.
    assert sorted(s.machine.answers_due(11.2, {2})) == [1, 2]


# -- rule 6: timeout -------------------------------------------------------------


def test_waiting_request_times_out_at_its_deadline() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1, timeout=1000)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.5) == []
    assert s.machine.next_deadline() == 3.5
    assert s(Tick(), at=3.4) == []
    assert s(Tick(), at=3.5) == [Reject(2, "QueueTimeout", "Request timed out", 1)]
    assert s.machine.snapshot(3.5).queue_length == 0
    assert s(DONE(1), at=4.0) == []


def test_expired_request_is_not_served_by_a_late_free_pipeline() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1, timeout=1000)
    s(ARRIVE(1), at=2.0)
    s(ARRIVE(2), at=2.0)
    assert s(DONE(1), at=3.2) == [Reject(2, "QueueTimeout", "Request timed out", 1)]
    assert s.state(1) is IDLE


def test_deadline_is_fixed_at_arrival() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1, timeout=1000)
    s(ARRIVE(1), at=2.0)
    s(ARRIVE(2), at=2.0)
    assert s(with_limits(s, timeout=100), at=2.0) == []
    s(ARRIVE(3), at=2.5)  # new arrivals use the new timeout: deadline 2.6
    assert s.machine.next_deadline() == pytest.approx(2.6)
    assert s(Tick(), at=2.6) == [Reject(3, "QueueTimeout", "Request timed out", 1)]
    assert s(Tick(), at=3.0) == [Reject(2, "QueueTimeout", "Request timed out", 1)]


# -- rule 7: shrink ---------------------------------------------------------------


def test_free_pipeline_above_cruise_stops_at_once() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=3)
    s(ARRIVE(1), at=2.0)
    assert s(ARRIVE(2), at=2.0) == [SpawnWorker(2)]
    assert s(READY(2), at=3.0) == [Dispatch(2, 2, 1.0)]
    assert s(DONE(1), at=4.0) == [StopWorker(1)]
    assert s(DONE(2), at=4.0) == []  # at cruise now
    assert s.states(1, 2) == [STOPPING, IDLE]


def test_ready_pipeline_nobody_waits_for_is_stopped_above_cruise() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=3)
    s(ARRIVE(1), at=2.0)
    assert s(ARRIVE(2), at=2.0) == [SpawnWorker(2)]
    assert s(CANCEL(2), at=2.1) == []
    assert s(READY(2), at=3.0) == [StopWorker(2)]


def test_shrink_never_goes_below_floor() -> None:
    s = ready_pool(2, floor=2, cruise=2, ceil=4)
    s(ARRIVE(1), at=3.0)
    s(ARRIVE(2), at=3.0)
    assert s(ARRIVE(3), at=3.0) == [SpawnWorker(3)]
    assert s(READY(3), at=4.0) == [Dispatch(3, 3, 1.0)]
    assert s(DONE(1), at=5.0) == [StopWorker(1)]
    assert s(DONE(2), at=5.0) == []
    assert s(DONE(3), at=5.0) == []
    assert s.machine.snapshot(5.0).allocated == 2


def test_delayed_shrink_stops_least_recently_used_first() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=3, scale_down_delay=500)
    s(ARRIVE(1), at=2.0)
    assert s(ARRIVE(2), at=2.0) == [SpawnWorker(2)]
    assert s(ARRIVE(3), at=2.0) == [SpawnWorker(3)]
    assert s(READY(2), at=3.0) == [Dispatch(2, 2, 1.0)]
    assert s(READY(3), at=3.0) == [Dispatch(3, 3, 1.0)]
    assert s(DONE(1), at=10.0) == []
    assert s(DONE(2), at=10.2) == []
    assert s.machine.next_deadline() == pytest.approx(10.5)
    assert s(Tick(), at=10.49) == []
    assert s(Tick(), at=10.5) == [StopWorker(1)]
    assert s.machine.next_deadline() == pytest.approx(10.7)
    assert s(Tick(), at=10.7) == [StopWorker(2)]
    assert s.machine.next_deadline() is None
    assert s.states(1, 2, 3) == [STOPPING, STOPPING, BUSY]


def test_delayed_shrink_restarts_the_clock_when_a_pipeline_serves_again() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=2, scale_down_delay=1000)
    s(ARRIVE(1), at=2.0)
    s(ARRIVE(2), at=2.0)
    s(READY(2), at=3.0)
    assert s(DONE(1), at=4.0) == []
    assert s(DONE(2), at=4.5) == []
    assert s(ARRIVE(3), at=4.8) == [Dispatch(3, 2, 0.0)]  # MRU: worker 2
    assert s(Tick(), at=5.0) == [StopWorker(1)]  # 1 is still surplus
    assert s(DONE(2), at=5.5) == []
    assert s(Tick(), at=9.0) == []  # 2 is the last one: at cruise


# -- rule 8: death ------------------------------------------------------------------


def test_busy_pipeline_death_fails_only_its_request_and_is_replaced() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1)
    s(ARRIVE(1), at=2.0)
    s(ARRIVE(2), at=2.0)
    assert s(EXIT(1, "exit code 1"), at=3.0) == [
        Reject(1, "WorkerCrashed", "The pipeline died while running the request (exit code 1)"),
        SpawnWorker(2),
    ]
    assert s.state(1) is GONE
    assert s(READY(2), at=4.0) == [Dispatch(2, 2, 2.0)]
    snap = s.machine.snapshot(4.0)
    assert (snap.crashes_total, snap.rejections_total) == (1, {"WorkerCrashed": 1})


def test_idle_pipeline_death_counts_a_crash_and_keeps_floor() -> None:
    s = ready_pool(1, floor=1)
    assert s(EXIT(1, "killed by signal 9"), at=2.0) == [SpawnWorker(2)]
    assert s.machine.snapshot(2.0).crashes_total == 1
    assert s(EXIT(1, "again"), at=2.0) == []  # a stale event is ignored


# -- rule 9: client gone --------------------------------------------------------------


def test_cancelled_waiting_request_leaves_silently() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1)
    s(ARRIVE(1), at=2.0)
    s(ARRIVE(2), at=2.0)
    s(ARRIVE(3), at=2.0)
    assert s(CANCEL(2), at=2.5) == []
    assert s(DONE(1), at=3.0) == [Dispatch(3, 1, 1.0)]


def test_cancelled_running_request_finishes_without_commands() -> None:
    s = ready_pool(1, floor=1)
    s(ARRIVE(1), at=2.0)
    assert s(CANCEL(1), at=2.5) == []
    assert s(DONE(1), at=3.0) == []
    assert s.machine.snapshot(3.0).served_total == 1
    assert s(CANCEL(1), at=3.0) == []  # finished: ignored
    assert s(CANCEL(99), at=3.0) == []  # unknown: ignored


def test_cancelled_running_request_gets_no_crash_reject() -> None:
    s = ready_pool(1, floor=1)
    s(ARRIVE(1), at=2.0)
    s(CANCEL(1), at=2.5)
    assert s(EXIT(1, "exit code 1"), at=3.0) == [SpawnWorker(2)]


# -- rule 10: retire ------------------------------------------------------------------


def test_retire_with_room_starts_successor_first() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=2, max_requests=2)
    s(ARRIVE(1), at=2.0)
    assert s(DONE(1), at=3.0) == []
    s(ARRIVE(2), at=3.0)
    assert s(DONE(1), at=4.0) == [SpawnWorker(2)]  # served 2: successor starts
    assert s(ARRIVE(3), at=4.5) == [Dispatch(3, 1, 0.0)]  # the old one keeps serving
    assert s(READY(2), at=5.0) == []
    assert s.states(1, 2) == [BUSY, IDLE]
    assert s(ARRIVE(4), at=5.0) == [Dispatch(4, 2, 0.0)]  # old one takes no new work
    assert s(DONE(1), at=6.0) == [StopWorker(1)]
    assert s(EXIT(1, "exit code 0"), at=6.1) == []
    snap = s.machine.snapshot(6.1)
    assert (snap.retirements_total, snap.crashes_total, snap.rejections_total) == (1, 0, {})


def test_retire_idle_with_room_stops_when_successor_is_ready() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=2)
    assert s(WorkerOverLimit(1), at=2.0) == [SpawnWorker(2)]
    assert s(WorkerOverLimit(1), at=2.1) == []  # counted once
    assert s(READY(2), at=3.0) == [StopWorker(1)]
    assert s.machine.snapshot(3.0).retirements_total == 1


def test_retire_at_ceil_stops_first_then_starts_successor() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1, max_requests=1)
    s(ARRIVE(1), at=2.0)
    s(ARRIVE(2), at=2.0)
    assert s(DONE(1), at=3.0) == [StopWorker(1), SpawnWorker(2)]  # 2 still waits
    assert s(READY(2), at=4.0) == [Dispatch(2, 2, 2.0)]


def test_retire_busy_at_ceil_after_its_current_request() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1)
    s(ARRIVE(1), at=2.0)
    assert s(WorkerOverLimit(1), at=2.5) == []
    assert s(ARRIVE(2), at=2.6) == []
    assert s(DONE(1), at=3.0) == [StopWorker(1), SpawnWorker(2)]
    assert s(READY(2), at=4.0) == [Dispatch(2, 2, 4.0 - 2.6)]


def test_retire_surplus_pipeline_needs_no_successor() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=3, max_requests=1)
    s(ARRIVE(1), at=2.0)
    assert s(ARRIVE(2), at=2.0) == [SpawnWorker(2)]
    s(READY(2), at=3.0)
    assert s(DONE(1), at=4.0) == [StopWorker(1)]
    assert s.machine.snapshot(4.0).retirements_total == 1


def test_retire_successor_failure_keeps_old_pipeline() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=2)
    assert s(WorkerOverLimit(1), at=2.0) == [SpawnWorker(2)]
    assert s(WorkerStartFailed(2, "boom"), at=2.5) == []
    assert s.state(1) is IDLE
    assert s.machine.load_state is LoadState.HEALTHY  # pipeline 1 serves on
    assert s(EXIT(2, "exit code 3"), at=2.6) == []
    # After the backoff delay, the next successor.
    assert s(Tick(), at=3.0) == [SpawnWorker(3)]
    assert s(READY(3), at=4.0) == [StopWorker(1)]


# -- rule 11: Retry-After -------------------------------------------------------------


def test_retry_after_uses_mean_run_time() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1, queue=3)
    s(ARRIVE(1), at=0.0)
    s(DONE(1), at=4.0)  # run time 4 s
    assert s(ARRIVE(2), at=4.0) == [Dispatch(2, 1, 0.0)]
    for rid in (3, 4, 5):
        assert s(ARRIVE(rid), at=4.0) == []
    assert s(ARRIVE(6), at=4.0) == [full(6, 12)]  # 3 waiting x 4 s / 1 pipeline


def test_mean_run_time_is_exponentially_weighted() -> None:
    s = ready_pool(1, floor=1)
    s(ARRIVE(1), at=2.0)
    s(DONE(1), at=3.0)
    s(ARRIVE(2), at=3.0)
    s(DONE(1), at=5.0)
    assert s.machine.snapshot(5.0).mean_run_time_s == pytest.approx(1.2)


# -- start failure and backoff ------------------------------------------------------


def test_start_failure_rejects_waiting_and_new_requests() -> None:
    s = Script(floor=1, ceil=2)
    assert s(Loaded()) == [SpawnWorker(1)]
    assert s(ARRIVE(1), at=0.5) == []
    err = "ImportError: No module named 'x'"
    assert s(WorkerStartFailed(1, err), at=1.0) == [unavailable(1, err)]
    assert s.machine.load_state is LoadState.FAILED
    assert s.state(1) is STOPPING
    assert s(ARRIVE(2), at=1.2) == [unavailable(2, err)]
    assert s(EXIT(1, "exit code 3"), at=1.3) == []  # no floor start while backing off
    snap = s.machine.snapshot(1.3)
    assert (snap.load_state, snap.last_load_error, snap.start_failures_total) == ("failed", err, 1)


def test_backoff_doubles_to_a_cap_then_recovers() -> None:
    s = Script(floor=1, ceil=2)
    s(Loaded())
    now, worker = 0.0, 1
    delays = []
    for _ in range(9):
        assert s(WorkerStartFailed(worker, "boom"), at=now) == []
        s(EXIT(worker, "exit code 3"), at=now)
        worker += 1
        delay, now = wait_out_backoff(s, now, worker)  # exactly one probe
        delays.append(delay)
        assert s(ARRIVE(100 + worker), at=now) == [unavailable(100 + worker, "boom")]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert s(READY(worker), at=now + 1) == []
    assert s.machine.load_state is LoadState.HEALTHY
    assert s(ARRIVE(1), at=now + 1) == [Dispatch(1, worker, 0.0)]
    assert s(EXIT(worker, "exit code 1"), at=now + 2) == [
        Reject(1, "WorkerCrashed", "The pipeline died while running the request (exit code 1)"),
        SpawnWorker(worker + 1),
    ]
    # After recovery the backoff starts again from 0.5 s.
    s(WorkerStartFailed(worker + 1, "boom"), at=now + 3)
    assert s.machine.next_deadline() == now + 3.5


def test_probe_runs_even_with_floor_zero() -> None:
    s = Script(floor=0, cruise=0, ceil=1)
    assert s(ARRIVE(1)) == [SpawnWorker(1)]
    assert s(WorkerStartFailed(1, "boom"), at=0.1) == [unavailable(1, "boom")]
    assert s(EXIT(1, "exit code 3"), at=0.2) == []
    assert s(Tick(), at=0.6) == [SpawnWorker(2)]
    assert s(READY(2), at=1.0) == [StopWorker(2)]  # healthy again; nothing needs it
    assert s.machine.load_state is LoadState.HEALTHY


def test_exit_while_starting_is_a_start_failure() -> None:
    s = Script(floor=1)
    s(Loaded())
    assert s(EXIT(1, "killed by signal 9"), at=1.0) == []
    snap = s.machine.snapshot(1.0)
    assert (snap.load_state, snap.last_load_error) == ("failed", "killed by signal 9")
    assert (snap.start_failures_total, snap.crashes_total) == (1, 0)
    assert s.machine.next_deadline() == 1.5


def test_concurrent_start_failures_do_not_double_backoff() -> None:
    s = Script(floor=3, cruise=3, ceil=5)
    assert s(Loaded()) == [SpawnWorker(1), SpawnWorker(2), SpawnWorker(3)]
    s(WorkerStartFailed(1, "first"), at=0.0)
    s(WorkerStartFailed(2, "second"), at=0.1)
    assert s.machine.next_deadline() == 0.5
    assert s.machine.snapshot(0.1).last_load_error == "second"
    assert s(READY(3), at=0.2) == [SpawnWorker(4), SpawnWorker(5)]  # healthy: floor again
    assert s.machine.next_deadline() is None


def test_probe_waits_for_room_when_a_ceil_decrease_left_none() -> None:
    s = Script(floor=2, cruise=2, ceil=2)
    s(Loaded())
    s(WorkerStartFailed(1, "boom"), at=0.0)
    s(EXIT(1, "exit code 3"), at=0.1)
    assert s(with_limits(s, floor=1, cruise=1, ceil=1), at=0.2) == []
    assert s.machine.next_deadline() is None  # pipeline 2, still starting, fills ceil
    assert s(Tick(), at=0.5) == []
    assert s(WorkerStartFailed(2, "boom"), at=0.6) == [SpawnWorker(3)]  # the probe, due since 0.5


# -- exec timeout -------------------------------------------------------------------------


def test_exec_timeout_kills_rejects_and_replaces() -> None:
    s = ready_pool(1, floor=1, ceil=2, exec_timeout=1000)
    assert s(ARRIVE(1), at=1.0) == [Dispatch(1, 1, 0.0)]
    assert s.machine.next_deadline() == 2.0
    assert s(Tick(), at=1.99) == []
    assert s(Tick(), at=2.0) == [
        KillWorker(1, "execution timeout (1000 ms)"),
        Reject(1, "ExecutionTimeout", "The function ran past the execution timeout of 1000 ms"),
        SpawnWorker(2),  # STOPPING is not allocated: the replacement starts now
    ]
    assert s.state(1) is STOPPING
    assert s(DONE(1), at=2.01) == []  # a result that raced the kill is ignored
    assert s(EXIT(1, "killed by signal 9"), at=2.1) == []
    assert s.machine.snapshot(2.1).crashes_total == 0


def test_exec_timeout_change_applies_to_new_dispatches() -> None:
    s = ready_pool(2, floor=2, ceil=2, exec_timeout=1000)
    s(ARRIVE(1), at=3.0)
    s(with_limits(s, exec_timeout=5000), at=3.0)
    s(ARRIVE(2), at=3.0)
    assert s(Tick(), at=4.0) == [
        KillWorker(2, "execution timeout (1000 ms)"),
        Reject(1, "ExecutionTimeout", "The function ran past the execution timeout of 1000 ms"),
        SpawnWorker(3),
    ]
    assert s.machine.next_deadline() == 8.0


def test_exec_timeout_of_a_cancelled_request_kills_silently() -> None:
    s = ready_pool(1, floor=1, exec_timeout=500)
    s(ARRIVE(1), at=2.0)
    s(CANCEL(1), at=2.1)
    assert s(Tick(), at=2.5) == [KillWorker(1, "execution timeout (500 ms)"), SpawnWorker(2)]


# -- drain ----------------------------------------------------------------------------------


def test_drain_serves_queued_requests_then_reports_drained_once() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=2)
    s(ARRIVE(1), at=2.0)
    assert s(ARRIVE(2), at=2.0) == [SpawnWorker(2)]
    assert s(ARRIVE(3), at=2.0) == []
    assert s(DrainRequested(), at=2.5) == []
    assert s.machine.load_state is LoadState.DRAINING
    assert s(ARRIVE(4), at=2.6) == [Reject(4, "ShuttingDown", SHUTTING_DOWN_MESSAGE)]
    assert s(READY(2), at=3.0) == [Dispatch(2, 2, 1.0)]
    assert s(DONE(1), at=3.0) == [Dispatch(3, 1, 1.0)]
    assert s(DONE(2), at=4.0) == [StopWorker(2)]
    assert s(DONE(1), at=4.0) == [StopWorker(1)]
    assert s(EXIT(2, "exit code 0"), at=4.1) == []
    assert s(EXIT(1, "exit code 0"), at=4.2) == [Drained()]
    assert s(Tick(), at=5.0) == []
    assert s(DrainRequested(), at=5.0) == []


def test_drain_stops_starts_nobody_needs() -> None:
    s = Script(floor=2)
    s(Loaded())
    assert s(DrainRequested()) == [StopWorker(1), StopWorker(2)]
    assert s(READY(1), at=1.0) == []  # stale: it was told to stop
    assert s(EXIT(1, "exit code 0"), at=1.0) == []
    assert s(EXIT(2, "exit code 0"), at=1.0) == [Drained()]


def test_drain_keeps_growing_for_queued_requests_after_a_crash() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1)
    s(ARRIVE(1), at=2.0)
    s(ARRIVE(2), at=2.0)
    s(DrainRequested(), at=2.0)
    crash = Reject(1, "WorkerCrashed", "The pipeline died while running the request (x)")
    assert s(EXIT(1, "x"), at=3.0) == [crash, SpawnWorker(2)]
    assert s(READY(2), at=4.0) == [Dispatch(2, 2, 2.0)]
    assert s.machine.load_state is LoadState.DRAINING
    assert s(DONE(2), at=5.0) == [StopWorker(2)]
    assert s(EXIT(2, "exit code 0"), at=5.1) == [Drained()]


def test_drain_of_an_empty_pool_is_immediate() -> None:
    assert Script()(DrainRequested()) == [Drained()]


def test_drain_while_failed() -> None:
    s = Script(floor=1)
    s(Loaded())
    s(ARRIVE(1))
    assert s(WorkerStartFailed(1, "boom"), at=1.0) == [unavailable(1, "boom")]
    assert s(DrainRequested(), at=1.1) == []
    assert s.machine.next_deadline() is None  # no more retries
    assert s(EXIT(1, "exit code 3"), at=1.2) == [Drained()]


# -- hot reload (LimitsChanged) -------------------------------------------------------------


def test_lower_ceil_stops_idle_now_and_busy_when_free() -> None:
    s = ready_pool(4, floor=4, cruise=4, ceil=4)
    assert s(ARRIVE(1), at=5.0) == [Dispatch(1, 4, 0.0)]
    assert s(ARRIVE(2), at=6.0) == [Dispatch(2, 3, 0.0)]
    change = with_limits(s, floor=1, cruise=1, ceil=1)
    assert s(change, at=7.0) == [StopWorker(1), StopWorker(2)]
    assert s(ARRIVE(3), at=7.0) == []  # at ceil: waits for worker 4
    assert s(DONE(3), at=8.0) == [StopWorker(3)]
    assert s(DONE(4), at=8.0) == [Dispatch(3, 4, 1.0)]
    snap = s.machine.snapshot(8.0)
    assert (snap.allocated, snap.config.pool.ceil) == (1, 1)


def test_lower_ceil_stops_excess_starts_and_keeps_queue() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=3, queue=4)
    s(ARRIVE(1), at=2.0)
    assert s(ARRIVE(2), at=2.0) == [SpawnWorker(2)]
    assert s(ARRIVE(3), at=2.0) == [SpawnWorker(3)]
    assert s(with_limits(s, ceil=1, queue=0), at=2.5) == [StopWorker(3), StopWorker(2)]
    assert s.machine.snapshot(2.5).queue_length == 2  # queued requests stay queued
    assert s(ARRIVE(4), at=2.5) == [full(4, 2)]
    assert s(DONE(1), at=3.0) == [Dispatch(2, 1, 1.0)]
    assert s(DONE(1), at=3.5) == [Dispatch(3, 1, 1.5)]


def test_higher_ceil_starts_for_waiting_requests() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1)
    s(ARRIVE(1), at=2.0)
    s(ARRIVE(2), at=2.0)
    assert s(with_limits(s, ceil=2), at=3.0) == [SpawnWorker(2)]


def test_higher_floor_starts_now() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=4)
    assert s(with_limits(s, floor=3, cruise=3), at=2.0) == [SpawnWorker(2), SpawnWorker(3)]


def test_lower_cruise_follows_scale_down_delay() -> None:
    s = ready_pool(3, floor=3, cruise=3, ceil=3)
    change = with_limits(s, floor=1, cruise=1, scale_down_delay=5000)
    assert s(change, at=4.0) == []
    assert s.machine.next_deadline() == 6.0  # worker 1 idle since t=1
    assert s(Tick(), at=6.0) == [StopWorker(1)]
    assert s(Tick(), at=7.0) == [StopWorker(2)]
    assert s.machine.next_deadline() is None


def test_counters_survive_limits_changed() -> None:
    s = ready_pool(1, floor=1)
    s(ARRIVE(1), at=2.0)
    s(DONE(1), at=2.5)
    s(with_limits(s, ceil=4), at=3.0)
    snap = s.machine.snapshot(3.0)
    assert (snap.served_total, snap.starts_total) == (1, 1)
    assert snap.pipelines == {"starting": 0, "idle": 1, "busy": 0, "stopping": 0}


def test_snapshot_reports_waiting_time() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1)
    s(ARRIVE(1), at=2.0)
    s(ARRIVE(2), at=2.5)
    snap = s.machine.snapshot(4.0)
    assert (snap.queue_length, snap.oldest_wait_s, snap.allocated) == (1, 1.5, 1)
    assert snap.pipelines["busy"] == 1


# -- protocol errors --------------------------------------------------------------------------


def test_event_for_unknown_worker_is_an_internal_error() -> None:
    s = Script(floor=1)
    s(Loaded())
    with pytest.raises(InternalError):
        s(READY(9))
    with pytest.raises(KeyError):
        s.machine.worker_state(9)


def test_event_in_wrong_state_raises_and_changes_nothing() -> None:
    s = ready_pool(1, floor=1, cruise=1, ceil=1, timeout=1000)
    s(ARRIVE(1), at=2.0)
    s(ARRIVE(2), at=2.0)
    before = s.machine.snapshot(9.0)
    with pytest.raises(InternalError):
        s(READY(1), at=9.0)  # BUSY pipeline cannot become ready
    with pytest.raises(InternalError):
        s(ARRIVE(2), at=9.0)  # duplicate request id
    assert s.machine.snapshot(9.0) == before  # the expired request was not touched
    assert s.state(1) is BUSY


def test_machine_starts_nothing_on_construction() -> None:
    machine = PoolMachine(make_config(floor=3))
    assert machine.snapshot(0.0).allocated == 0
    assert machine.load_state is LoadState.LOADING
    machine.check_invariants()
