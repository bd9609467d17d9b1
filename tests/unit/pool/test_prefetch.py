"""Prefetch: a BUSY pipeline at ceil takes the next request into its pipe (pool/machine.py).

Event scripts: when a request is staged, when it starts, and what happens to it
when its pipeline dies, is killed, retires or its client leaves.
"""

from __future__ import annotations

from lightnode.pool.commands import (
    Command,
    Dispatch,
    KillWorker,
    Reject,
    SpawnWorker,
    StopWorker,
    Withdraw,
)
from lightnode.pool.events import (
    AnswersRead,
    Loaded,
    RequestArrived,
    RequestCancelled,
    Tick,
    WorkerExited,
    WorkerFinished,
    WorkerNotStarted,
    WorkerOverLimit,
    WorkerReady,
    WorkerStartFailed,
)
from lightnode.pool.machine import (
    MAX_STAGED,
    PREFETCH_BUDGET_S,
    PREFETCH_MAX_RUN_S,
    START_BY_MIN_S,
    START_BY_RUNS,
    PoolMachine,
)
from lightnode.pool.states import LoadState, WorkerState

from ._script import Script

ARRIVE, CANCEL, READY, DONE, EXIT = (
    RequestArrived, RequestCancelled, WorkerReady, WorkerFinished, WorkerExited,
)  # fmt: skip
BUSY, IDLE = WorkerState.BUSY, WorkerState.IDLE
RUN_S = 2.0**-10  # a fast endpoint, well under PREFETCH_MAX_RUN_S (exact in binary)
# About 1 ms: one staged request per pipeline (PREFETCH_BUDGET_S holds one such call).
assert int(PREFETCH_BUDGET_S / RUN_S) == 1
FAST_S = 2.0**-16  # a trivial function: MAX_STAGED such calls fit in PREFETCH_BUDGET_S
assert FAST_S * MAX_STAGED <= PREFETCH_BUDGET_S


def fixed_pool(n: int, run_s: float = RUN_S, *, fast: bool = False, max_staged: int = MAX_STAGED, **pool: int) -> Script:
    """n pipelines at ceil, all IDLE at t=1, with one call of run_s served (the mean is known).

    `fast`: prefetch and stage up to `max_staged` whatever the run time.
    """
    settings = {"floor": n, "cruise": n, "ceil": n, "queue": 8, **pool}
    s = Script(**settings)
    if fast:
        options = {"prefetch_max_run_s": float("inf"), "prefetch_budget_s": float("inf"), "max_staged": max_staged}
        s.machine = PoolMachine(s.machine.config, **options)  # type: ignore[arg-type]
    assert s(Loaded()) == [SpawnWorker(i) for i in range(1, n + 1)]
    for i in range(1, n + 1):
        assert s(READY(i), at=1.0) == []
    assert s(ARRIVE(100), at=1.0) == [Dispatch(100, n, 0.0)]
    assert s(DONE(n), at=1.0 + run_s) == []
    return s


def staged(rid: int, wid: int, wait_s: float = 0.0) -> Dispatch:
    return Dispatch(rid, wid, wait_s, staged=True)


def test_at_ceil_a_busy_pipeline_takes_the_next_request_ahead() -> None:
    s = fixed_pool(1)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [staged(2, 1)]
    # One staged request per pipeline: the next one waits in the queue.
    assert s(ARRIVE(3), at=2.0) == []
    assert s.machine.snapshot(2.0).queue_length == 1
    # The pipeline finishes 1 and is already running 2: it stays BUSY, 3 is staged next.
    assert s(DONE(1), at=2.0 + RUN_S) == [staged(3, 1, RUN_S)]
    assert s.state(1) is BUSY
    assert s(DONE(1), at=2.0 + 2 * RUN_S) == []  # 2 done, 3 starts
    assert s(DONE(1), at=2.0 + 3 * RUN_S) == []  # 3 done
    assert s.state(1) is IDLE


def test_the_pipeline_whose_call_started_first_takes_it() -> None:
    s = fixed_pool(2)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 2, 0.0)]
    assert s(ARRIVE(2), at=2.5) == [Dispatch(2, 1, 0.0)]
    assert s(ARRIVE(3), at=2.6) == [staged(3, 2)]
    assert s(ARRIVE(4), at=2.6) == [staged(4, 1)]


def test_no_prefetch_below_ceil_the_pool_grows_instead() -> None:
    s = fixed_pool(1, ceil=2)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [SpawnWorker(2)]
    assert s(READY(2), at=2.5) == [Dispatch(2, 2, 0.5)]


def test_no_prefetch_when_disabled() -> None:
    s = fixed_pool(1, prefetch=0)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == []
    assert s(DONE(1), at=2.0 + RUN_S) == [Dispatch(2, 1, RUN_S)]


def test_no_prefetch_for_slow_calls_or_before_the_first_call() -> None:
    s = Script(floor=1, cruise=1, ceil=1)
    assert s(Loaded()) == [SpawnWorker(1)]
    assert s(READY(1), at=1.0) == []
    assert s(ARRIVE(1), at=1.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=1.0) == []  # run time unknown: it waits
    slow_s = 0.0625
    assert slow_s > PREFETCH_MAX_RUN_S
    assert s(DONE(1), at=1.0 + slow_s) == [Dispatch(2, 1, slow_s)]
    assert s(ARRIVE(3), at=1.1) == []  # slow endpoint: it waits


def test_a_staged_request_waits_again_when_its_pipeline_dies() -> None:
    s = fixed_pool(1)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [staged(2, 1)]
    assert s(ARRIVE(3), at=2.0) == []
    commands = s(EXIT(1, "killed by signal 9"), at=2.5)
    assert commands[0].error_type == "WorkerCrashed" and commands[0].request_id == 1  # type: ignore[union-attr]
    assert commands[1:] == [SpawnWorker(2)]
    # 2 never ran: it is back in the queue, ahead of 3, and goes first.
    assert s.machine.snapshot(2.5).queue_length == 2
    assert s(READY(2), at=3.0) == [Dispatch(2, 2, 1.0), staged(3, 2, 1.0)]


def test_a_staged_request_past_its_deadline_times_out_when_its_pipeline_dies() -> None:
    s = fixed_pool(1, timeout=1000)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [staged(2, 1)]
    commands = s(EXIT(1, "exit code 1"), at=3.5)
    assert [type(c) for c in commands] == [Reject, Reject, SpawnWorker]
    assert commands[1] == Reject(2, "QueueTimeout", commands[1].message, commands[1].retry_after_s)  # type: ignore[union-attr]


def _killed_with_staged(*staged_ids: int) -> Script:
    """Pipeline 1 (ceil 1) runs 1 and holds `staged_ids` when its exec timeout kills it at 2.5."""
    s = fixed_pool(1, exec_timeout=500, max_staged=len(staged_ids), fast=True)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    for rid in staged_ids:
        assert s(ARRIVE(rid), at=2.0) == [staged(rid, 1)]
    commands = s(Tick(), at=2.5)
    assert isinstance(commands[0], KillWorker)
    assert [(type(c), getattr(c, "error_type", None)) for c in commands[1:]] == [
        (Reject, "ExecutionTimeout"),
        (SpawnWorker, None),
    ]
    return s


def test_an_exec_timeout_kill_keeps_the_staged_requests_until_the_pipeline_exited() -> None:
    # The killed call may have ended, its answer unread, and the next one started:
    # nothing staged waits again before the pipeline is gone and its answers read.
    s = _killed_with_staged(2, 3)
    assert s.machine.snapshot(2.5).queue_length == 0
    assert s(READY(2), at=2.625) == []  # the replacement takes nothing yet
    # Its answers, in order: the killed call's (dropped, 504 already), then 2's (delivered).
    assert s(DONE(1), at=2.625) == []
    assert s(DONE(1), at=2.625) == []
    # Exited: 3 may have been running (WorkerCrashed); nothing after it.
    commands = s(EXIT(1, "killed by signal SIGKILL"), at=2.75)
    assert [(type(c), getattr(c, "request_id", None)) for c in commands] == [(Reject, 3)]
    assert commands[0].error_type == "WorkerCrashed"  # type: ignore[union-attr]
    assert "may have started this one (killed by signal SIGKILL)" in commands[0].message  # type: ignore[union-attr]


def test_after_a_kill_only_the_first_unanswered_request_may_have_run() -> None:
    s = _killed_with_staged(2, 3)
    assert s(READY(2), at=2.625) == []
    assert s(DONE(1), at=2.625) == []  # the killed call's answer: 2 may start
    commands = s(EXIT(1, "killed by signal SIGKILL"), at=2.75)
    assert [(type(c), getattr(c, "request_id", None)) for c in commands] == [
        (Reject, 2), (Dispatch, 3),
    ]  # fmt: skip
    assert commands[1] == Dispatch(3, 2, 0.75)  # never started: the replacement runs it


def test_after_a_kill_nothing_staged_ran_if_the_killed_call_was_never_answered() -> None:
    s = _killed_with_staged(2, 3)
    assert s(READY(2), at=2.625) == []
    assert s(EXIT(1, "killed by signal SIGKILL"), at=2.75) == [Dispatch(2, 2, 0.75), staged(3, 2, 0.75)]


def test_a_killed_pipeline_that_saw_the_kill_notice_gives_back_what_it_holds() -> None:
    s = _killed_with_staged(2, 3)
    assert s(READY(2), at=2.625) == []
    assert s(DONE(1), at=2.625) == []  # the killed call's answer
    # NOT_STARTED(stopping) for 2: it starts nothing more, so 3 is taken back too.
    commands = s(WorkerNotStarted(1, stopping=True), at=2.6875)
    assert commands == [Withdraw(3, 1), Dispatch(2, 2, 0.6875), staged(3, 2, 0.6875)]
    assert s(EXIT(1, "exit code 0"), at=2.75) == []


def test_a_start_by_passed_on_a_killed_pipeline_takes_the_request_back_before_it_exits() -> None:
    s = _killed_with_staged(2)
    assert s(READY(2), at=2.625) == []
    assert s.machine.overdue_pipelines(2.625) == [1]
    assert s(AnswersRead((1,), 2.625), at=2.625) == [Withdraw(2, 1), Dispatch(2, 2, 0.625)]
    assert s(DONE(1), at=2.75) == []  # the killed call's answer, then NOT_STARTED for 2: dropped
    assert s(EXIT(1, "killed by signal SIGKILL"), at=2.75) == []


def test_the_exec_timeout_of_a_staged_request_runs_from_its_start() -> None:
    s = fixed_pool(1, exec_timeout=500)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [staged(2, 1)]
    assert s(DONE(1), at=2.4) == []
    assert s.machine.next_deadline() == 2.9
    assert s(Tick(), at=2.6) == []  # 2 started at 2.4: not due


def test_a_cancelled_staged_request_is_silent() -> None:
    s = fixed_pool(1)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [staged(2, 1)]
    assert s(CANCEL(2), at=2.0) == []
    commands = s(EXIT(1, "exit code 1"), at=2.1)
    assert [c.request_id for c in commands if isinstance(c, Reject)] == [1]  # nothing for 2


def test_a_pipeline_retired_at_ceil_runs_its_staged_request_first() -> None:
    s = fixed_pool(1)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [staged(2, 1)]
    assert s(WorkerOverLimit(1), at=2.0) == []  # at ceil: stop when free, successor then
    assert s(ARRIVE(3), at=2.0) == []  # never staged onto a retiring pipeline
    assert s(DONE(1), at=2.0 + RUN_S) == []  # 2 starts on it before it stops
    assert s.state(1) is BUSY
    assert s(DONE(1), at=2.0 + 2 * RUN_S) == [StopWorker(1), SpawnWorker(2)]


def test_no_prefetch_onto_a_pipeline_that_retires_after_its_call() -> None:
    s = fixed_pool(1, max_requests=2)  # the warm-up call was its first
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == []


def test_a_staged_request_is_unavailable_if_its_pipeline_is_killed_while_the_endpoint_failed() -> None:
    s = fixed_pool(2, exec_timeout=500)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 2, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [Dispatch(2, 1, 0.0)]
    assert s(ARRIVE(3), at=2.0) == [staged(3, 2)]
    s(EXIT(1, "exit code 1"), at=2.1)  # pipeline 1 crashes
    commands = s(Tick(), at=2.5)  # pipeline 2's call runs past its exec timeout
    assert isinstance(commands[0], KillWorker)
    rejected = {c.request_id: c.error_type for c in commands if isinstance(c, Reject)}
    assert rejected == {1: "ExecutionTimeout"}  # 3 stays with pipeline 2 until it exited
    # With no pipeline serving, a replacement cannot load the code: FAILED.
    s(WorkerStartFailed(3, "ImportError: boom"), at=2.6)
    assert s.machine.load_state is LoadState.FAILED
    commands = s(EXIT(2, "killed by signal SIGKILL"), at=2.75)
    rejected = {c.request_id: c.error_type for c in commands if isinstance(c, Reject)}
    assert rejected == {3: "EndpointUnavailable"}  # 3 never ran; nothing waits


# -- several staged requests per pipeline (trivial functions) --------------------------


def test_the_stage_limit_follows_the_mean_run_time() -> None:
    assert fixed_pool(1, run_s=RUN_S).machine.stage_limit() == 1
    assert fixed_pool(1, run_s=FAST_S).machine.stage_limit() == MAX_STAGED
    assert fixed_pool(1, run_s=PREFETCH_BUDGET_S / 3).machine.stage_limit() == 3
    assert fixed_pool(1, run_s=PREFETCH_BUDGET_S * 5).machine.stage_limit() == 1  # never below one


def test_a_fast_pipeline_holds_up_to_the_limit_and_runs_them_in_order() -> None:
    s = fixed_pool(1, run_s=FAST_S, queue=4)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    for rid in range(2, 2 + MAX_STAGED):
        assert s(ARRIVE(rid), at=2.0) == [staged(rid, 1)]
    last = 1 + MAX_STAGED
    assert s(ARRIVE(last + 1), at=2.0) == []  # full: it waits in the queue
    assert s.machine.snapshot(2.0).queue_length == 1
    snapshot = s.machine.snapshot(2.0)
    assert snapshot.prefetched_total == MAX_STAGED
    assert snapshot.staged == MAX_STAGED  # sent ahead, not yet started: not in queue_length
    # 1 ends: 2 starts, and the queue head takes the freed place in the pipe.
    t = 2.0 + FAST_S
    assert s(DONE(1), at=t) == [staged(last + 1, 1, FAST_S)]
    for _ in range(MAX_STAGED + 1):  # 2 .. last + 1, one after the other
        assert s.state(1) is BUSY
        t += FAST_S
        assert s(DONE(1), at=t) == []
    assert s.state(1) is IDLE and s.machine.snapshot(t).staged == 0
    assert s.machine.snapshot(t).served_total == 1 + MAX_STAGED + 2  # the warm-up call too


def test_staged_requests_go_to_the_pipeline_holding_the_fewest() -> None:
    s = fixed_pool(2, run_s=FAST_S)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 2, 0.0)]
    assert s(ARRIVE(2), at=2.5) == [Dispatch(2, 1, 0.0)]
    # Pipeline 2's call started first: it takes the first; then they alternate.
    assert [s(ARRIVE(rid), at=2.6) for rid in range(3, 7)] == [
        [staged(3, 2)], [staged(4, 1)], [staged(5, 2)], [staged(6, 1)],
    ]  # fmt: skip


def test_every_staged_request_waits_again_in_arrival_order_when_its_pipeline_dies() -> None:
    s = fixed_pool(2, run_s=FAST_S, timeout=1000)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 2, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [Dispatch(2, 1, 0.0)]
    assert [s(ARRIVE(rid), at=2.0) for rid in (3, 4, 5, 6)] == [
        [staged(3, 2)], [staged(4, 1)], [staged(5, 2)], [staged(6, 1)],
    ]  # fmt: skip
    assert s(ARRIVE(7), at=2.25) == [staged(7, 2)]  # a later deadline than the others
    assert s(CANCEL(5), at=2.3) == []  # its client left while it was staged
    commands = s(EXIT(2, "killed by signal 9"), at=3.125)
    # 1 crashed; 3 waited past its deadline (2.0 + 1 s); 5 leaves silently; 7 waits again.
    rejected = {c.request_id: c.error_type for c in commands if isinstance(c, Reject)}
    assert rejected == {1: "WorkerCrashed", 3: "QueueTimeout"}
    assert s.machine.snapshot(3.125).queue_length == 1
    # Pipeline 1 still runs 2 and holds 4 and 6; the replacement takes 7.
    assert SpawnWorker(3) in commands
    assert s(READY(3), at=3.1875) == [Dispatch(7, 3, 0.9375)]
    assert s(DONE(1), at=3.3) == []  # 2 done, 4 starts
    assert s(DONE(1), at=3.3) == []  # 4 done, 6 starts
    assert s(DONE(1), at=3.3) == []  # 6 done
    assert s.state(1) is IDLE


def test_a_pipeline_near_max_requests_holds_only_what_it_may_still_serve() -> None:
    s = fixed_pool(1, run_s=FAST_S, max_requests=4)  # the warm-up call was its first
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [staged(2, 1)]
    assert s(ARRIVE(3), at=2.0) == [staged(3, 1)]  # its fourth and last call
    assert s(ARRIVE(4), at=2.0) == []  # a fifth would be one too many: it waits
    assert s.machine.snapshot(2.0).queue_length == 1


# -- taking a staged request back (its start-by passed, its predecessor unanswered) --


def _routes(commands: list[Command]) -> list[tuple[int, int, bool]]:
    return [(c.request_id, c.worker_id, c.staged) for c in commands if isinstance(c, Dispatch)]


def test_a_staged_request_carries_a_start_by_bounded_by_its_queue_deadline() -> None:
    s = fixed_pool(1, timeout=1000)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    (command,) = s(ARRIVE(2), at=2.0)
    assert command == staged(2, 1)
    assert command.start_by_s == 2.0 + max(START_BY_RUNS * RUN_S, START_BY_MIN_S)  # type: ignore[union-attr]
    assert s.machine.next_start_by() == command.start_by_s  # type: ignore[union-attr]
    assert s(DONE(1), at=2.0 + RUN_S) == []  # 2 starts: no longer staged
    assert s.machine.next_start_by() is None


def test_a_start_by_is_never_later_than_the_queue_deadline() -> None:
    s = fixed_pool(1, timeout=1000, fast=True, max_staged=1)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [staged(2, 1)]
    assert s(ARRIVE(3), at=2.0) == []
    (command,) = s(DONE(1), at=2.875)
    assert command == staged(3, 1, 0.875)
    assert command.start_by_s == 3.0  # type: ignore[union-attr]
    # Taken back at its queue deadline: QueueTimeout (rule 6 counts from its arrival).
    commands = s(AnswersRead((1,), 3.0), at=3.0)
    assert [(type(c), getattr(c, "error_type", None)) for c in commands] == [
        (Withdraw, None), (Reject, "QueueTimeout"),
    ]  # fmt: skip


def test_a_staged_request_behind_a_hung_call_is_taken_back_and_served_elsewhere() -> None:
    s = fixed_pool(2)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 2, 0.0)]  # 1 will hang
    assert s(ARRIVE(2), at=2.0005) == [Dispatch(2, 1, 0.0)]
    (command,) = s(ARRIVE(3), at=2.001)
    assert command == staged(3, 2)  # the call that started first is expected to end first
    start_by = command.start_by_s  # type: ignore[union-attr]
    assert s.machine.overdue_pipelines(start_by - 1e-6) == []
    assert s.machine.overdue_pipelines(start_by) == [2]
    # Pipeline 1 finished meanwhile: 3 stays where it is until the pipe of 2 is read.
    assert s(DONE(1), at=2.002) == []
    assert s(ARRIVE(4), at=2.003) == [Dispatch(4, 1, 0.0)]
    # Read at start_by with no answer from 2: 3 is taken back, and pipeline 1 (busy
    # with 4) takes it ahead; 2, overdue, takes no staged request any more.
    commands = s(AnswersRead((2,), start_by), at=start_by + 0.001)
    assert commands[0] == Withdraw(3, 2) and _routes(commands[1:]) == [(3, 1, True)]
    assert s(ARRIVE(5), at=start_by + 0.002) == []  # waits: 1 holds one, 2 is overdue
    # 1 runs 4, then 3, then 5: none waits behind the hung call.
    assert _routes(s(DONE(1), at=start_by + 0.003)) == [(5, 1, True)]
    # When the hung call ends, 2 is free again and may take requests ahead.
    assert s(DONE(2), at=9.0) == []
    assert s.state(2) is IDLE


def test_a_staged_request_whose_predecessor_was_answered_is_not_taken_back() -> None:
    s = fixed_pool(1)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    (command,) = s(ARRIVE(2), at=2.0)
    start_by = command.start_by_s  # type: ignore[union-attr]
    # The read at start_by found 1's answer: 2 may be running; nothing changes.
    assert s(DONE(1), at=start_by) == []
    assert s(AnswersRead((1,), start_by), at=start_by) == []
    assert s.state(1) is BUSY and s.machine.snapshot(start_by).queue_length == 0


def test_a_taken_back_request_keeps_its_arrival_time_and_times_out_from_it() -> None:
    s = fixed_pool(1, timeout=1000)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [staged(2, 1)]
    assert s(AnswersRead((1,), 2.5), at=2.5) == [Withdraw(2, 1)]  # waits: ceil 1, 1 is overdue
    assert s.machine.snapshot(2.5).queue_length == 1
    commands = s(Tick(), at=3.0)
    assert [(type(c), getattr(c, "error_type", None)) for c in commands] == [(Reject, "QueueTimeout")]


def test_a_taken_back_request_that_was_cancelled_leaves_silently() -> None:
    s = fixed_pool(1)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 1, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [staged(2, 1)]
    assert s(CANCEL(2), at=2.0) == []
    assert s(AnswersRead((1,), 2.5), at=2.5) == [Withdraw(2, 1)]
    assert s.machine.snapshot(2.5).queue_length == 0


def test_a_request_the_pipeline_did_not_start_waits_again() -> None:
    # The scheduler read the pipe too late: the pipeline refused the staged request itself.
    s = fixed_pool(2)
    assert s(ARRIVE(1), at=2.0) == [Dispatch(1, 2, 0.0)]
    assert s(ARRIVE(2), at=2.0) == [Dispatch(2, 1, 0.0)]
    assert s(ARRIVE(3), at=2.0) == [staged(3, 2)]
    assert s(ARRIVE(4), at=2.0) == [staged(4, 1)]
    assert s(DONE(2), at=2.5) == []  # 3 promoted...
    assert s(DONE(1), at=2.5) == []  # 4 promoted
    # ... but 2 answers NOT_STARTED for 3: 3 waits again, first, and 2 is free.
    assert s(WorkerNotStarted(2), at=2.625) == [Dispatch(3, 2, 0.625)]
    assert s(DONE(2), at=2.75) == []
    assert s.state(2) is IDLE
