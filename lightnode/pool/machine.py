"""PoolMachine: the pure state machine of one endpoint's pool (SPEC §4, §5).

Owns: every pipeline's state, the waiting queue, the endpoint's load state,
start-failure backoff, retirement and drain. It never awaits, spawns, sleeps
or reads a clock: the scheduler feeds it events with `now` (monotonic
seconds), carries out the returned commands, and arms one timer at
`next_deadline()`.
PURE: no asyncio, subprocess, os, socket, time or random imports; imports
only the standard library, `lightnode.errors`, `lightnode.config.model` and
`lightnode.pool`.

One call to `handle(event, now)` runs, in this order:
  1. queue deadlines (rule 6): requests whose deadline is <= now get QueueTimeout;
     a hold on starts (below) whose end is <= now ends;
  2. the event itself;
  3. the rules, until the pool is consistent again: exec deadlines, ceil,
     retirements (rule 10), dispatch (rules 2, 5), drain, grow (rules 1, 3),
     start retry (backoff), shrink (rule 7), Drained.
Timers are therefore honoured by any event, not only by Tick; Tick is the
event that carries nothing else.

Prefetch (`pool.prefetch`, on by default): at ceil, with nothing IDLE or
STARTING and a request waiting, the queue head may be sent ahead into the
pipe of a BUSY pipeline (`Dispatch(staged=True)`) so that the pipeline starts
it the moment its current call ends instead of idling for a round trip
through the node. Only for endpoints whose mean run time is below
PREFETCH_MAX_RUN_S (a slow call would hold the staged request behind it),
never onto a pipeline that is retiring or told to stop, and only while
HEALTHY. How many a pipeline may hold staged depends on that mean: as many
as run in PREFETCH_BUDGET_S, at least one, at most MAX_STAGED (see
`stage_limit`), so that a request waits at most about PREFETCH_BUDGET_S in a
pipe that another pipeline might have emptied sooner. A fast function then
gets its calls and answers in batches: fewer pipe writes and reads, and
fewer wake-ups of sleeping processes, per request. Of the pipelines that may
take one, the one with the fewest staged takes it (then the one whose
current call started first), but never one that is `overdue` (below). While
a request waits, no pipeline can take one ahead (checked with the
invariants), which lets the hot path skip looking for one.

Taking a staged request back (rules 2 and 6 for staged requests). A staged
request carries a start-by time, `start_by_s` (`Dispatch.start_by_s`, sent
in its CALL frame as CLOCK_MONOTONIC nanoseconds, the clock of
`time.monotonic()` in the node and of `time.monotonic_ns()` in the worker,
system-wide on Linux): staging time + max(START_BY_RUNS x the mean run time
x the calls ahead of it, START_BY_MIN_S), never later than its queue
deadline. The worker, after it has written the answer of the call before
it, reads its clock; past a non-zero start-by it does not run the call and
answers NOT_STARTED (WorkerNotStarted: it waits again). The scheduler, once
a start-by has passed (`overdue_pipelines()`, `next_start_by()`), reads
every answer already in that pipeline's answer pipe, reports them, then
sends AnswersRead(read_s = a time taken before that read): each staged
request still staged there with start_by_s <= read_s is taken back
(Withdraw), waits again with its arrival time (so its queue deadline still
counts from arrival, rule 6), and goes to the next free pipeline, oldest
first (rule 5); the pipeline becomes `overdue` until its current call is
answered. Why this is safe: the call before it was not answered when the
scheduler read the pipe at or after read_s >= start-by; the worker writes
that answer before it reads its clock for the staged call, so that clock
read comes after start-by and the worker will not run the call: its later
NOT_STARTED answer is expected and dropped. If that answer was there, the
request was promoted (it may be running): it is no longer staged, and
nothing changes.

If a pipeline dies (a crash) before starting its staged requests, they go
back into the queue in arrival order (they never ran), or get QueueTimeout if
their deadline has passed, or EndpointUnavailable while the endpoint is
FAILED. A pipeline killed for an exec timeout may already have finished the
killed call and started the next (its answer unread), or ignore the stack-dump
signal that tells it to start nothing more: its staged requests stay attached
to it (STOPPING, `killed_answer_due`) until it has exited and its answer pipe
has been read to the end. Answers read meanwhile are delivered (the killed
call's is dropped: it was answered 504 at once); a NOT_STARTED answer puts
that request back in the queue, and NOT_STARTED with `stopping` (the worker
saw the kill notice) all of them; at the exit, the first request after the
last answer may have been running and gets WorkerCrashed, and those after it
(certainly never started) go back to the queue.

Contract with the scheduler: after RequestCancelled for a request, no
command names that request again (its result, crash or timeout is silent),
but a Withdraw (so that the scheduler expects its NOT_STARTED answer).
A pipeline killed for an exec timeout is STOPPING (not allocated), so rules 1
and 3 may start its replacement at once, before its WorkerExited arrives.
Events for a STOPPING or GONE pipeline (a result or ready that raced a stop)
are ignored; events that no scheduler could send raise InternalError.
A start failure while DRAINING rejects the waiting requests with
EndpointUnavailable (so the drain ends) but never retries.

A pipeline start that fails (WorkerStartFailed, or WorkerExited while
STARTING: an init error, the OOM killer during a model load) is counted and
its error kept as the last load error. What follows depends on whether a
pipeline of the pool serves (IDLE or BUSY: it loaded this very code):
- none serves: the code cannot load. The endpoint is FAILED: waiting and new
  requests get EndpointUnavailable, and one start at a time retries the load
  after the backoff delay (`sizing.backoff_s`); a retry that loads makes it
  HEALTHY. (So FAILED never has a serving pipeline.)
- one serves: the endpoint stays HEALTHY. Waiting requests stay queued for
  the serving pipelines (or time out, rule 6), new ones are admitted as at
  ceil (rule 4: the pool cannot grow), but starts are *held back*: no
  pipeline starts (rules 1, 3 and 10) until the backoff delay has passed, so
  that a start that always fails (a model that no longer fits in memory)
  never becomes a start storm. The end of the hold is in `next_deadline()`.
  A retiring pipeline serves on meanwhile; its successor starts after it.
Both count consecutive failures the same way: the delay is 0.5 s after the
first, doubling for each failure of a start begun after the previous counted
failure (a retry), capped at 30 s; a start that was already running when
another failed does not double it. A start that loads (WorkerReady) resets
the count and ends the hold. If the last serving pipeline goes away while
starts are held back, the next start happens when the hold ends; if it
fails, the endpoint is FAILED (and the delay doubles on).
"""

from __future__ import annotations

from collections import deque
from typing import Final

from lightnode.config.model import EndpointConfig
from lightnode.errors import QUEUE_FULL_MESSAGE, QUEUE_TIMEOUT_MESSAGE, InternalError
from lightnode.pool import sizing
from lightnode.pool.commands import (
    Command,
    Dispatch,
    Drained,
    KillWorker,
    Reject,
    SpawnWorker,
    StopWorker,
    Withdraw,
)
from lightnode.pool.events import (
    AnswersRead,
    DrainRequested,
    Event,
    LimitsChanged,
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
from lightnode.pool.fair_queue import FairQueue, QueuedRequest
from lightnode.pool.invariants import check_pool_invariants
from lightnode.pool.pipelines import SERVING, Pipelines
from lightnode.pool.snapshot import PoolCounters, PoolSnapshot
from lightnode.pool.states import (
    BUSY,
    DRAINING,
    FAILED,
    GONE,
    HEALTHY,
    IDLE,
    LOADING,
    STARTING,
    STOPPING,
    LoadState,
    WorkerState,
)
from lightnode.pool.worker_record import StagedRequest, WorkerRecord

SHUTTING_DOWN_MESSAGE: Final = "The endpoint is shutting down"
# Prefetch only for endpoints whose calls take less than this on average.
PREFETCH_MAX_RUN_S: Final = 0.02
# A pipeline holds staged as many calls as it runs in this time on average
# (at least one, at most MAX_STAGED): the longest a staged request waits in
# one pipe while another pipeline might have taken it.
PREFETCH_BUDGET_S: Final = 0.001
MAX_STAGED: Final = 7
# A staged request's start-by (see "Taking a staged request back"): it is taken back
# once it has waited START_BY_RUNS mean run times per call ahead of it, and never
# sooner than START_BY_MIN_S. The cost of a larger bound: a request staged behind a
# call that hangs waits that much longer than it would have in the queue (once per
# hang: the pipeline is then overdue). Of a smaller one: a pipeline that is merely
# slow to be scheduled (a loaded 2-core machine deschedules a process for a few ms;
# the node's own event loop pass can take a few ms) refuses calls it would have run
# at once, each refusal costing a round trip through the node. 10 ms is about one
# scheduler time slice under load; 4 mean run times leave room for the spread of a
# function's run times around its mean.
START_BY_RUNS: Final = 4.0
START_BY_MIN_S: Final = 0.010
UNKNOWN_LOAD_ERROR: Final = "The endpoint's code failed to load"

# Load states in which the pool starts pipelines for floor, queue and retirements
# (unless a failed start holds starts back).
_SPAWNING: Final = frozenset({LOADING, HEALTHY})
_STALE: Final = frozenset({STOPPING, GONE})
# The state a worker event requires; an event for a STOPPING/GONE worker is
# stale (the scheduler raced a stop) and ignored.
_EXPECTED_STATE: Final[dict[type, WorkerState]] = {
    WorkerReady: STARTING,
    WorkerStartFailed: STARTING,
    WorkerFinished: BUSY,
    WorkerNotStarted: BUSY,
}


class PoolMachine:
    """The pool of one endpoint. See the module docstring for the contract."""

    def __init__(
        self,
        config: EndpointConfig,
        *,
        prefetch_max_run_s: float = PREFETCH_MAX_RUN_S,
        prefetch_budget_s: float = PREFETCH_BUDGET_S,
        max_staged: int = MAX_STAGED,
    ) -> None:
        self._config = config
        self._prefetch_max_run_s = prefetch_max_run_s
        self._prefetch_budget_s = prefetch_budget_s
        self._max_staged = max_staged
        self._workers = Pipelines()
        self._queue = FairQueue()
        self._waiting = self._queue.waiting  # ids, for cheap tests on the hot path
        self._running: dict[int, int] = {}  # request_id -> worker_id
        self._load_state = LOADING
        self._loaded = False
        self._last_load_error: str | None = None
        self._failures = 0  # consecutive failed start attempts (backoff exponent)
        # No pipeline starts before this time: FAILED's retry, or the end of a hold
        # on starts while HEALTHY (see the module docstring); None otherwise.
        self._retry_at_s: float | None = None
        # A failed start of a pipeline with this id or above (started after the
        # last counted failure) doubles the delay; one started before does not.
        self._retry_from_id: int = 0
        self._probe_id: int | None = None  # the single start attempt while FAILED
        self._drained_sent = False
        # True while the queue may exceed `queue + STARTING` because a hot
        # reload lowered queue or ceil (queued requests stay queued, SPEC §5).
        self._queue_bound_relaxed = False
        self._mean_run_time_s: float | None = None
        self._counters = PoolCounters()
        # True after a handle() taken by the fast path: no deadline appeared but, at
        # most, the queue's, so a caller holding a timer at or before the previous
        # next_deadline() need only compare it with queue_deadline() (the hot path
        # skips the full next_deadline()).
        self.only_queue_deadline_moved = False
        self._calm = False  # see _is_calm()

    # -- public API ---------------------------------------------------------

    @property
    def config(self) -> EndpointConfig:
        return self._config

    @property
    def load_state(self) -> LoadState:
        return self._load_state

    def handle(self, event: Event, now: float) -> list[Command]:
        """Apply one event at monotonic time `now` and return the commands to carry out.

        Raises:
            InternalError: the event contradicts the machine's state (an unknown
                worker id, a duplicate request id, WorkerFinished for an IDLE
                pipeline...). The machine is unchanged when this is raised.
        """
        self._check_event(event)
        if self._steady(now):
            fast = self._fast_path(event, now)
            if fast is not None:
                self.only_queue_deadline_moved = True
                return fast
        self.only_queue_deadline_moved = False
        out: list[Command] = []
        self._expire_queue(now, out)
        self._end_hold(now)
        self._apply(event, now, out)
        self._reconcile(now, out)
        self._calm = self._is_calm()  # the fast paths leave it as it is
        return out

    # -- the request hot path -------------------------------------------------------
    #
    # In a steady pool (healthy, nothing retiring, no timer due, no ceil excess)
    # an arriving request that finds an IDLE pipeline, or a pipeline that finishes,
    # changes nothing that the general rules would act on beyond one dispatch. The
    # fast path does exactly that and returns the commands the general path would
    # return; any other case falls through to the general path. The property tests
    # check both paths against the same model.

    def _steady(self, now: float) -> bool:
        if not self._calm:
            return False
        deadline = self._queue.next_deadline()
        return deadline is None or deadline > now

    def _is_calm(self) -> bool:
        """The part of _steady() that only the general path can change (kept in `_calm`)."""
        if self._load_state is not HEALTHY or self._workers.has_retiring():
            return False
        if self._retry_at_s is not None:
            return False  # starts held back: its end is a timer of the general path
        if self._config.limits.exec_timeout:
            return False  # exec deadlines use the general path
        for worker in self._workers.busy_view():
            if worker.stop_when_free or worker.exec_deadline_s is not None:
                return False  # a ceil decrease or a deadline of an earlier setting
        return self._workers.allocated() <= self._config.pool.ceil

    # The two events of every request, without an event object or the generic
    # checks: the same as handle(RequestArrived(...)) / handle(WorkerFinished(...)).

    def request_arrived(self, request_id: int, now: float) -> list[Command]:
        """handle(RequestArrived(request_id), now), faster in a steady pool."""
        if request_id not in self._running and request_id not in self._waiting and self._steady(now):
            fast = self._fast_arrival(request_id, now)
            if fast is not None:
                self.only_queue_deadline_moved = True
                return fast
        return self.handle(RequestArrived(request_id), now)

    def worker_finished(self, worker_id: int, now: float) -> list[Command]:
        """handle(WorkerFinished(worker_id), now), faster in a steady pool."""
        worker = self._workers.get(worker_id)
        if worker is not None and worker.state is BUSY and self._steady(now):
            fast = self._fast_finish(worker, now)
            if fast is not None:
                self.only_queue_deadline_moved = True
                return fast
        return self.handle(WorkerFinished(worker_id), now)

    def _fast_path(self, event: Event, now: float) -> list[Command] | None:
        if type(event) is RequestArrived:
            return self._fast_arrival(event.request_id, now)
        if type(event) is WorkerFinished:
            worker = self._workers.get(event.worker_id)
            if worker is None or worker.state is not BUSY:
                return None
            return self._fast_finish(worker, now)
        return None

    def _fast_finish(self, worker: WorkerRecord, now: float) -> list[Command] | None:
        if worker.stop_when_free:
            return None
        max_requests = self._config.limits.max_requests
        if max_requests and worker.served + 1 >= max_requests:
            return None  # rule 10 retires it
        staged = bool(worker.staged)
        if not staged:
            pool = self._config.pool
            if not self._waiting and self._workers.allocated() > max(pool.cruise, pool.floor):
                return None  # rule 7 may stop it
            if not self._waiting and pool.scale_down_delay and self._shrink_candidates():
                return None
        out: list[Command] = []
        self._on_finished(worker, now, out)  # IDLE, or still BUSY with its staged request
        if self._waiting and not staged:
            item = self._queue.pop_oldest()
            out.append(self._start_call(worker, item.request_id, now, item.arrived_s, item.deadline_s))
        self._prefetch_waiting(now, out)
        if not self._waiting:
            self._queue_bound_relaxed = False
        return out

    def _fast_arrival(self, request_id: int, now: float) -> list[Command] | None:
        workers = self._workers
        if workers.any_in(IDLE):
            if self._waiting:
                return None
            if self._config.pool.scale_down_delay and self._shrink_candidates():
                return None  # an idle surplus pipeline may be due to stop now
            self._loaded = True
            deadline_s = now + self._config.pool.timeout / 1000
            return [self._start_call(workers.idle_lru()[-1], request_id, now, now, deadline_s)]
        pool = self._config.pool
        allocated = workers.allocated()
        if allocated < pool.ceil:
            return None  # rule 3 may start a pipeline for it
        # At ceil with every pipeline busy or starting: prefetch, queue (rule 4) or refuse.
        # (While requests wait no pipeline can take one ahead: see check_invariants.)
        self._loaded = True
        if not self._waiting:
            target = self._prefetch_target()
            if target is not None:
                return [self._stage_call(target, request_id, now, now, now + pool.timeout / 1000)]
        out: list[Command] = []
        if sizing.admits(
            pool, allocated=allocated, starting=workers.count(STARTING),
            waiting=len(self._waiting),
        ):  # fmt: skip
            self._queue.push(QueuedRequest(request_id, now, now + pool.timeout / 1000))
        else:
            self._reject(out, request_id, "QueueFull", QUEUE_FULL_MESSAGE, self._retry_after())
            if not self._waiting:
                self._queue_bound_relaxed = False
        return out

    def _start_call(
        self, worker: WorkerRecord, request_id: int, now: float, arrived_s: float, deadline_s: float
    ) -> Dispatch:
        """IDLE -> BUSY with `request_id` (rules 2 and 5)."""
        worker.set_state(BUSY)  # IDLE -> BUSY: request dispatched
        worker.request_id = request_id
        worker.dispatched_s = now
        worker.request_arrived_s = arrived_s
        worker.request_deadline_s = deadline_s
        exec_timeout_ms = self._config.limits.exec_timeout
        worker.exec_timeout_ms = exec_timeout_ms
        worker.exec_deadline_s = now + exec_timeout_ms / 1000 if exec_timeout_ms > 0 else None
        self._running[request_id] = worker.worker_id
        return Dispatch(request_id, worker.worker_id, now - arrived_s)

    def _stage_call(
        self, worker: WorkerRecord, request_id: int, now: float, arrived_s: float, deadline_s: float
    ) -> Dispatch:
        """Prefetch: send `request_id` ahead to BUSY `worker`; it starts after those before it."""
        mean_s = self._mean_run_time_s
        assert mean_s is not None  # prefetch waits for the first call's run time
        ahead = 1 + len(worker.staged)  # the running call and those staged before it
        start_by_s = min(now + max(START_BY_RUNS * mean_s * ahead, START_BY_MIN_S), deadline_s)
        worker.staged.append(StagedRequest(request_id, arrived_s, deadline_s, start_by_s))
        self._running[request_id] = worker.worker_id
        self._counters.prefetched_total += 1
        return Dispatch(request_id, worker.worker_id, now - arrived_s, True, start_by_s)

    def _prefetch_target(self) -> WorkerRecord | None:
        """The BUSY pipeline that may take a request ahead (see the module docstring), or None.

        Of several, the one with the fewest staged, then the one whose current call
        started first (likely to finish first).
        """
        return self._prefetch_candidate(self.stage_limit()) if self._may_prefetch() else None

    def _may_prefetch(self) -> bool:
        """The pool-wide conditions of prefetch (staging a request changes none of them)."""
        pool = self._config.pool
        if not pool.prefetch or self._load_state is not HEALTHY:
            return False
        mean_s = self._mean_run_time_s
        if mean_s is None or mean_s >= self._prefetch_max_run_s:
            return False
        workers = self._workers
        # Below ceil rule 3 starts pipelines instead; a STARTING one takes the queue head.
        return workers.allocated() >= pool.ceil and not workers.any_in(STARTING)

    def stage_limit(self) -> int:
        """How many requests one pipeline may hold staged now (callers checked _may_prefetch)."""
        mean_s = self._mean_run_time_s
        assert mean_s is not None
        if mean_s * self._max_staged <= self._prefetch_budget_s:
            return self._max_staged
        return max(1, int(self._prefetch_budget_s / mean_s))

    def _prefetch_candidate(self, limit: int) -> WorkerRecord | None:
        """The per-pipeline part of _prefetch_target(); `limit` is stage_limit()."""
        max_requests = self._config.limits.max_requests
        best: WorkerRecord | None = None
        best_staged = limit
        for worker in self._workers.busy_view():
            staged = len(worker.staged)
            if staged > best_staged or worker.stop_when_free or worker.retiring or worker.overdue:
                continue
            if staged == best_staged and (best is None or worker.dispatched_s >= best.dispatched_s):
                continue  # full, or no better than the best so far
            if max_requests and worker.served + 1 + staged >= max_requests:
                continue  # retires after the calls it holds
            best, best_staged = worker, staged
        return best

    def _prefetch_waiting(self, now: float, out: list[Command]) -> None:
        """Stage waiting requests, oldest first, on pipelines that may take one ahead."""
        waiting = self._waiting
        if not waiting or not self._may_prefetch():
            return
        queue = self._queue
        limit = self.stage_limit()
        while waiting:
            worker = self._prefetch_candidate(limit)
            if worker is None:
                return
            item = queue.pop_oldest()
            out.append(self._stage_call(worker, item.request_id, now, item.arrived_s, item.deadline_s))

    def _unstage(self, worker: WorkerRecord, now: float, out: list[Command]) -> None:
        """`worker` stops without having started its staged requests: they wait again (or time out)."""
        staged = worker.staged
        while staged:
            item = staged.popleft()
            del self._running[item.request_id]
            self._requeue(item.request_id, item.arrived_s, item.deadline_s, item.cancelled, now, out)

    def _withdraw_staged(self, worker: WorkerRecord, now: float, out: list[Command]) -> None:
        """Take back every request staged on `worker` (it will start none of them)."""
        for item in worker.staged:
            out.append(Withdraw(item.request_id, worker.worker_id))
        self._unstage(worker, now, out)

    def _requeue(
        self, request_id: int, arrived_s: float, deadline_s: float, cancelled: bool, now: float,
        out: list[Command],
    ) -> None:  # fmt: skip
        """A request that left the queue but never ran waits again, with its arrival time."""
        if cancelled:
            return  # rule 9: it leaves silently
        if self._load_state is FAILED:  # as the queue was when the endpoint failed
            error = self._last_load_error or UNKNOWN_LOAD_ERROR
            self._reject(out, request_id, "EndpointUnavailable", error)
            return
        if deadline_s <= now:
            self._reject(out, request_id, "QueueTimeout", QUEUE_TIMEOUT_MESSAGE, self._retry_after())
            return
        self._queue.reinsert(QueuedRequest(request_id, arrived_s, deadline_s))
        self._queue_bound_relaxed = True  # it was admitted once; it may exceed the bound

    def _take_back(self, worker_ids: tuple[int, ...], read_s: float, now: float, out: list[Command]) -> None:
        """AnswersRead: staged requests whose start-by passed by `read_s` wait again.

        See "Taking a staged request back" in the module docstring for why the pipeline
        cannot have started them: every request still in `worker.staged` has a
        predecessor that was unanswered when the scheduler read the pipe at `read_s`.
        """
        for worker_id in worker_ids:
            worker = self._workers.get(worker_id)
            if worker is None or not worker.staged:
                continue
            if all(item.start_by_s > read_s for item in worker.staged):
                continue
            kept: deque[StagedRequest] = deque()
            for item in worker.staged:
                if item.start_by_s > read_s:
                    kept.append(item)
                    continue
                del self._running[item.request_id]
                out.append(Withdraw(item.request_id, worker_id))
                self._requeue(item.request_id, item.arrived_s, item.deadline_s, item.cancelled, now, out)
            worker.staged = kept
            worker.overdue = True  # no more staged onto it until its current call is answered

    def next_start_by(self) -> float | None:
        """The earliest start-by of a staged request, None if none is staged."""
        earliest: float | None = None
        if len(self._running) == self._workers.count(BUSY):
            return None  # nothing staged (the usual case: no scan)
        for worker in self._workers:
            for item in worker.staged:
                if earliest is None or item.start_by_s < earliest:
                    earliest = item.start_by_s
        return earliest

    def overdue_pipelines(self, now: float) -> list[int]:
        """The pipelines holding a staged request whose start-by is <= now (to read, then AnswersRead)."""
        return [
            worker.worker_id
            for worker in self._workers
            if any(item.start_by_s <= now for item in worker.staged)
        ]

    def starts_held_until(self) -> float | None:
        """While a failed start beside a serving pipeline holds starts back (HEALTHY):
        the time from which pipelines may start again; None otherwise."""
        return self._retry_at_s if self._held() else None

    def serving(self) -> int:
        """Pipelines that run requests now (IDLE + BUSY)."""
        return self._workers.serving()

    def waits_for_answers(self) -> bool:
        """Requests wait and no pipeline starts for them: only an answer of a busy
        pipeline lets the next one run (the scheduler then reads the answer pipes sooner)."""
        return bool(self._waiting) and not self._workers.any_in(STARTING)

    def answers_due(self, now: float, read_late: set[int]) -> list[int]:
        """While `waits_for_answers()`: the busy pipelines whose answer may be in their
        pipe, unread: those whose call has run at least the endpoint's mean run time
        (any, before a first call has ended), and those in `read_late`, whose last
        answer was found there before the loop read it (the scheduler keeps that set).
        A call that started since, the usual case while the loop keeps up (its pipe was
        read when the previous answer came), has none yet: reading its pipe would be a
        system call that finds nothing. Where the loop is late, the mean run time
        (measured to when an answer is read) and a prefetched call's start (the read
        of the answer before it) are late too; `read_late` does not depend on either."""
        if not self.waits_for_answers():
            return []
        mean_s = self._mean_run_time_s
        started_by = now - (mean_s if mean_s is not None else 0.0)
        return [
            w.worker_id
            for w in self._workers.busy_view()
            if w.dispatched_s <= started_by or w.worker_id in read_late
        ]

    def queue_deadline(self) -> float | None:
        """The earliest deadline of a waiting request (see `only_queue_deadline_moved`)."""
        return self._queue.next_deadline()

    def next_deadline(self) -> float | None:
        """Earliest time at which a Tick has work to do, None if no timer is pending."""
        deadlines: list[float] = []
        queue_deadline = self._queue.next_deadline()
        if queue_deadline is not None:
            deadlines.append(queue_deadline)
        for worker in self._workers.busy_view():
            if worker.exec_deadline_s is not None:
                deadlines.append(worker.exec_deadline_s)
        if self._load_state is not DRAINING:
            delay_s = self._config.pool.scale_down_delay / 1000
            deadlines.extend(w.idle_since_s + delay_s for w in self._shrink_candidates())
        if self._probe_wanted() or self._held():
            assert self._retry_at_s is not None
            deadlines.append(self._retry_at_s)
        return min(deadlines, default=None)

    def check_invariants(self) -> None:
        """Raise InternalError if a pool invariant is broken (see `invariants.py`).

        Plus one of the prefetch rule: while a request waits, no pipeline may take one ahead.
        """
        if self._queue and self._prefetch_target() is not None:
            raise InternalError("pool invariant 9 broken: a request waits while a pipeline could take it ahead")
        if self._calm != self._is_calm():
            raise InternalError("the kept steady-state flag disagrees with the pool")
        check_pool_invariants(
            config=self._config,
            workers=self._workers,
            queue=self._queue,
            running=self._running,
            load_state=self._load_state,
            loaded=self._loaded,
            starts_held=self._held(),
            queue_bound_relaxed=self._queue_bound_relaxed,
            drained_sent=self._drained_sent,
            max_staged=self._max_staged,
        )

    def snapshot(self, now: float) -> PoolSnapshot:
        counts = {s.value: self._workers.count(s) for s in WorkerState if s is not GONE}
        oldest = self._queue.oldest()
        c = self._counters
        return PoolSnapshot(
            pipelines=counts,
            allocated=self._workers.allocated(),
            queue_length=len(self._queue),
            staged=sum(len(worker.staged) for worker in self._workers),
            oldest_wait_s=max(0.0, now - oldest.arrived_s) if oldest is not None else 0.0,
            load_state=self._load_state.value,
            last_load_error=self._last_load_error,
            mean_run_time_s=self._mean_run_time_s,
            served_total=c.served_total,
            prefetched_total=c.prefetched_total,
            starts_total=c.starts_total,
            crashes_total=c.crashes_total,
            retirements_total=c.retirements_total,
            start_failures_total=c.start_failures_total,
            rejections_total=dict(c.rejections_total),
            config=self._config,
        )

    def is_busy(self, worker_id: int) -> bool:
        """The pipeline runs a request (the scheduler's check before it starts a staged one)."""
        worker = self._workers.get(worker_id)
        return worker is not None and worker.state is BUSY

    def worker_state(self, worker_id: int) -> WorkerState:
        """State of a pipeline this machine started; GONE once it exited.

        Raises:
            KeyError: the machine never started `worker_id`.
        """
        return self._workers.state_of(worker_id)

    # -- events ---------------------------------------------------------------

    def _check_event(self, event: Event) -> None:
        if isinstance(event, RequestArrived):
            rid = event.request_id
            if rid in self._queue or rid in self._running:
                raise InternalError(f"request {rid} arrived twice")
            return
        worker_id = getattr(event, "worker_id", None)
        if not isinstance(worker_id, int):
            return
        if not self._workers.ever_started(worker_id):
            raise InternalError(f"{type(event).__name__} for unknown worker {worker_id}")
        expected = _EXPECTED_STATE.get(type(event))
        state = self.worker_state(worker_id)
        if expected is not None and state is not expected and state not in _STALE:
            raise InternalError(
                f"{type(event).__name__} for worker {worker_id} in state {state.value}"
            )

    def _apply(self, event: Event, now: float, out: list[Command]) -> None:
        match event:
            case RequestArrived(request_id=rid):
                self._on_request(rid, now, out)
            case RequestCancelled(request_id=rid):
                self._on_cancelled(rid)
            case AnswersRead(worker_ids=worker_ids, read_s=read_s):
                self._take_back(worker_ids, read_s, now, out)
            case Loaded():
                if self._load_state is not DRAINING:
                    self._loaded = True
            case Tick():
                pass  # timers run in _expire_queue and _reconcile
            case LimitsChanged(config=config):
                self._on_limits_changed(config)
            case DrainRequested():
                self._on_drain()
            case _:
                self._apply_worker_event(event, now, out)

    def _apply_worker_event(self, event: Event, now: float, out: list[Command]) -> None:
        worker = self._workers.get(getattr(event, "worker_id", None))
        if worker is None:
            return  # gone
        if worker.state in _STALE and not isinstance(event, WorkerExited):
            if worker.killed_answer_due or worker.staged:  # killed, its calls still attached
                if isinstance(event, WorkerFinished):
                    self._on_killed_answer(worker, False, False, now, out)
                elif isinstance(event, WorkerNotStarted):
                    self._on_killed_answer(worker, True, event.stopping, now, out)
            return  # else stale: the pipeline was already stopped
        match event:
            case WorkerReady():
                self._on_ready(worker, now)
            case WorkerStartFailed(error=error):
                worker.set_state(STOPPING)  # STARTING -> STOPPING: init failed
                self._start_failure(worker, error, now, out)
            case WorkerFinished():
                self._on_finished(worker, now, out)
            case WorkerNotStarted(stopping=stopping):
                self._on_not_started(worker, stopping, now, out)
            case WorkerExited(detail=detail):
                self._on_exited(worker, detail, now, out)
            case WorkerOverLimit():
                if worker.state in SERVING:
                    self._mark_retiring(worker)
                # A STARTING pipeline over the limit is ignored: the scheduler
                # reports it again once it serves, and a model that is larger
                # than the limit must not make every start a retirement loop.
            case _:
                raise InternalError(f"unhandled event {event!r}")

    def _on_request(self, request_id: int, now: float, out: list[Command]) -> None:
        if self._load_state is DRAINING:
            self._reject(out, request_id, "ShuttingDown", SHUTTING_DOWN_MESSAGE)
            return
        self._loaded = True  # a request before Loaded means the endpoint is loaded
        if self._load_state is FAILED:
            error = self._last_load_error or UNKNOWN_LOAD_ERROR
            self._reject(out, request_id, "EndpointUnavailable", error)
            return
        pool = self._config.pool
        allocated = self._workers.allocated()
        if self._held():
            allocated = max(allocated, pool.ceil)  # the pool cannot grow: rule 4 as at ceil
        if not self._workers.any_in(IDLE) and not sizing.admits(
            pool,
            allocated=allocated,
            starting=self._workers.count(STARTING),
            waiting=len(self._queue),
        ):
            retry = self._retry_after()
            self._reject(out, request_id, "QueueFull", QUEUE_FULL_MESSAGE, retry)
            return
        deadline_s = now + self._config.pool.timeout / 1000
        self._queue.push(QueuedRequest(request_id, now, deadline_s))

    def _on_cancelled(self, request_id: int) -> None:
        if self._queue.remove(request_id) is not None:
            return  # rule 9: leaves the queue silently
        worker = self._workers.get(self._running.get(request_id))
        if worker is None:
            return
        if worker.request_id == request_id:
            worker.request_cancelled = True
            return
        for item in worker.staged:
            if item.request_id == request_id:
                item.cancelled = True

    def _on_limits_changed(self, config: EndpointConfig) -> None:
        old, new = self._config.pool, config.pool
        if self._queue and (new.queue < old.queue or new.ceil < old.ceil):
            self._queue_bound_relaxed = True
        self._config = config

    def _on_drain(self) -> None:
        if self._load_state is DRAINING:
            return
        self._load_state = DRAINING
        self._retry_at_s = None
        self._probe_id = None

    def _on_ready(self, worker: WorkerRecord, now: float) -> None:
        worker.set_state(IDLE)  # STARTING -> IDLE: init code done
        self._workers.mark_idle(worker, now)
        if self._load_state in (LOADING, FAILED):
            self._load_state = HEALTHY
        # The code loads: the failure count resets, and a hold on starts ends.
        self._failures = 0
        self._retry_at_s = None
        self._probe_id = None

    def _on_finished(self, worker: WorkerRecord, now: float, out: list[Command]) -> None:
        assert worker.request_id is not None
        del self._running[worker.request_id]
        self._counters.served_total += 1
        worker.served += 1
        self._mean_run_time_s = sizing.update_mean(self._mean_run_time_s, now - worker.dispatched_s)
        worker.clear_request()
        max_requests = self._config.limits.max_requests
        if worker.staged:
            self._promote(worker, now)  # stays BUSY: its prefetched request starts now
            if max_requests > 0 and worker.served >= max_requests:
                self._mark_retiring(worker)
            return
        self._free(worker, now, out)

    def _free(self, worker: WorkerRecord, now: float, out: list[Command]) -> None:
        """`worker` (BUSY, nothing staged) has no call any more: stop it or make it IDLE."""
        max_requests = self._config.limits.max_requests
        if worker.stop_when_free and worker.replace_on_stop and self._held():
            # Rule 10 at ceil, but no successor may start now: the old pipeline
            # serves on, and retires after the hold (_advance_retirements).
            worker.stop_when_free = False
            worker.replace_on_stop = False
        if worker.stop_when_free:
            worker.set_state(STOPPING)  # BUSY -> STOPPING: told to stop after this call
            out.append(StopWorker(worker.worker_id))
            if worker.replace_on_stop and self._load_state in _SPAWNING and self._has_room():
                self._spawn(out)  # rule 10 at ceil: the successor starts now
            return
        worker.set_state(IDLE)  # BUSY -> IDLE: result received
        self._workers.mark_idle(worker, now)
        if max_requests > 0 and worker.served >= max_requests:
            self._mark_retiring(worker)

    def _on_not_started(self, worker: WorkerRecord, stopping: bool, now: float, out: list[Command]) -> None:
        """The pipeline did not run its current request (a start-by passed, or it is being
        stopped): the request waits again with its arrival time; the pipeline goes on."""
        request_id = worker.request_id
        assert request_id is not None
        del self._running[request_id]
        arrived_s, deadline_s = worker.request_arrived_s, worker.request_deadline_s
        cancelled = worker.request_cancelled
        worker.clear_request()
        self._requeue(request_id, arrived_s, deadline_s, cancelled, now, out)
        if stopping:  # it starts nothing more and exits: what it holds goes elsewhere
            self._withdraw_staged(worker, now, out)
            worker.set_state(STOPPING)  # BUSY -> STOPPING: it stops of itself
            out.append(StopWorker(worker.worker_id))
        elif worker.staged:
            self._promote(worker, now)
        else:
            self._free(worker, now, out)

    def _on_killed_answer(
        self, worker: WorkerRecord, not_started: bool, stopping: bool, now: float, out: list[Command]
    ) -> None:
        """An answer of a pipeline killed for an exec timeout, in the order of its calls:
        first the killed call's (dropped), then those of its staged requests."""
        if worker.killed_answer_due:
            worker.killed_answer_due = False  # answered 504 already
        elif worker.staged:
            item = worker.staged.popleft()
            del self._running[item.request_id]
            if not_started:
                self._requeue(item.request_id, item.arrived_s, item.deadline_s, item.cancelled, now, out)
            else:
                self._counters.served_total += 1  # it ran: the scheduler delivers its answer
        if stopping:
            self._withdraw_staged(worker, now, out)

    def _promote(self, worker: WorkerRecord, now: float) -> None:
        """The first staged request of `worker` becomes its running one (it starts now)."""
        item = worker.staged.popleft()
        worker.request_id = item.request_id
        worker.request_cancelled = item.cancelled
        worker.dispatched_s = now
        worker.request_arrived_s = item.arrived_s
        worker.request_deadline_s = item.deadline_s
        exec_timeout_ms = self._config.limits.exec_timeout
        worker.exec_timeout_ms = exec_timeout_ms
        worker.exec_deadline_s = now + exec_timeout_ms / 1000 if exec_timeout_ms > 0 else None

    def _on_exited(self, worker: WorkerRecord, detail: str, now: float, out: list[Command]) -> None:
        if worker.state is STARTING:
            self._start_failure(worker, detail, now, out)
        elif worker.state is IDLE:
            self._counters.crashes_total += 1
        elif worker.state is BUSY:
            self._counters.crashes_total += 1
            assert worker.request_id is not None
            del self._running[worker.request_id]
            if not worker.request_cancelled:
                message = f"The pipeline died while running the request ({detail})"
                self._reject(out, worker.request_id, "WorkerCrashed", message)
            worker.clear_request()
            self._unstage(worker, now, out)
        elif worker.staged:  # killed for an exec timeout; every answer it wrote has been read
            if not worker.killed_answer_due:
                # The killed call was answered: the first staged request may have started.
                item = worker.staged.popleft()
                del self._running[item.request_id]
                if not item.cancelled:
                    message = (
                        "The pipeline was killed for the execution timeout of an earlier request"
                        f" and may have started this one ({detail})"
                    )
                    self._reject(out, item.request_id, "WorkerCrashed", message)
            self._unstage(worker, now, out)  # never started
        worker.set_state(GONE)  # any -> GONE: the process exited
        self._workers.drop(worker)

    def _start_failure(
        self, worker: WorkerRecord, error: str, now: float, out: list[Command]
    ) -> None:
        """A pipeline could not load the code: back off further starts (see the module
        docstring); FAILED, failing every waiting request, unless a pipeline serves."""
        self._counters.start_failures_total += 1
        self._last_load_error = error
        if worker.worker_id == self._probe_id:
            self._probe_id = None
        if self._load_state is DRAINING:
            self._reject_waiting(error, out)
            return
        if self._failures == 0 or worker.worker_id >= self._retry_from_id:
            # A retry failed (or a first start): the delay doubles. Pipelines
            # that were already starting then do not double it when they fail.
            self._failures += 1
            self._retry_from_id = self._workers.next_id()
            self._retry_at_s = now + sizing.backoff_s(self._failures)
        elif self._retry_at_s is None:  # HEALTHY, the hold over: hold again, same delay
            self._retry_at_s = now + sizing.backoff_s(self._failures)
        if self._workers.serving():
            # It loaded in another pipeline: that one serves the queue (HEALTHY stays).
            if self._queue:
                self._queue_bound_relaxed = True  # admitted for the start that failed
            return
        self._load_state = FAILED
        self._reject_waiting(error, out)

    def _reject_waiting(self, error: str, out: list[Command]) -> None:
        for item in self._queue.clear():
            self._reject(out, item.request_id, "EndpointUnavailable", error)

    def _end_hold(self, now: float) -> None:
        """HEALTHY: starts held back after a failed start may start again once due."""
        if self._load_state is HEALTHY and self._retry_at_s is not None and self._retry_at_s <= now:
            self._retry_at_s = None

    def _held(self) -> bool:
        """HEALTHY, but a failed start holds every start back (until `_retry_at_s`)."""
        return self._load_state is HEALTHY and self._retry_at_s is not None

    # -- rules ----------------------------------------------------------------

    def _expire_queue(self, now: float, out: list[Command]) -> None:
        """Rule 6: a request past its deadline leaves the queue with QueueTimeout."""
        for item in self._queue.pop_expired(now):
            retry = self._retry_after()
            self._reject(out, item.request_id, "QueueTimeout", QUEUE_TIMEOUT_MESSAGE, retry)

    def _reconcile(self, now: float, out: list[Command]) -> None:
        self._expire_exec(now, out)
        self._enforce_ceil(out)
        self._advance_retirements(out)
        self._dispatch_waiting(now, out)
        if self._load_state is DRAINING:
            self._stop_for_drain(out)
        self._grow(out)
        self._maybe_probe(now, out)
        if self._load_state is not DRAINING:
            self._shrink(now, out)  # last: every start above counts against cruise
        if self._load_state is DRAINING and not self._drained_sent:
            if not self._queue and not self._workers:
                self._drained_sent = True
                out.append(Drained())
        if not self._queue:
            self._queue_bound_relaxed = False

    def _expire_exec(self, now: float, out: list[Command]) -> None:
        """limits.exec_timeout: kill a pipeline whose call ran too long; 504 its request."""
        for worker in self._workers:
            deadline_s = worker.exec_deadline_s
            if worker.state is not BUSY or deadline_s is None or deadline_s > now:
                continue
            assert worker.request_id is not None
            limit_ms = worker.exec_timeout_ms
            out.append(KillWorker(worker.worker_id, f"execution timeout ({limit_ms} ms)"))
            del self._running[worker.request_id]
            if not worker.request_cancelled:
                message = f"The function ran past the execution timeout of {limit_ms} ms"
                self._reject(out, worker.request_id, "ExecutionTimeout", message)
            worker.clear_request()
            # Its staged requests stay attached until it has exited (see the module docstring).
            worker.killed_answer_due = True
            worker.set_state(STOPPING)  # BUSY -> STOPPING: killed

    def _enforce_ceil(self, out: list[Command]) -> None:
        """After a ceil decrease: stop idle excess, then starting, then busy when free."""
        pool = self._config.pool
        allocated = self._workers.allocated() - self._workers.leaving()
        excess = sizing.ceil_excess(pool, allocated=allocated)
        if excess == 0:
            return
        idle = self._workers.idle_lru()
        starting = sorted(self._workers.in_state(STARTING), key=lambda w: -w.worker_id)
        busy = [w for w in self._workers.in_state(BUSY) if not w.stop_when_free]
        busy.sort(key=lambda w: (not w.retiring, -w.dispatched_s))
        for worker in [*idle, *starting, *busy][:excess]:
            if worker.state is BUSY:
                worker.stop_when_free = True
            else:
                self._stop(worker, out)

    def _advance_retirements(self, out: list[Command]) -> None:
        """Rule 10: replace retiring pipelines without a cold gap where there is room."""
        for worker in self._workers.retiring():
            if not worker.retiring or worker.state not in SERVING or worker.stop_when_free:
                continue
            successor = self._workers.get(worker.successor_id)
            if successor is not None and successor.state in SERVING:
                worker.successor_id = None  # successor ready: the old one leaves
                self._stop_when_free(worker, out)
                continue
            if successor is not None and successor.state is STARTING:
                continue
            worker.successor_id = None
            if self._load_state not in _SPAWNING or self._held():
                # No starts while FAILED or held back (it serves on meanwhile);
                # DRAINING stops it when free.
                continue
            pool = self._config.pool
            allocated = self._workers.allocated()
            surplus = sizing.surplus(pool, allocated=self._workers.staying())
            if worker.state is IDLE and not self._queue and surplus > 0:
                self._stop(worker, out)  # surplus anyway (rule 7): no successor needed
            elif allocated < pool.ceil:
                worker.successor_id = self._spawn(out).worker_id
            elif worker.state is IDLE:
                self._stop(worker, out)  # at ceil: stop first, then start the successor
                if self._has_room():  # not above ceil after a decrease
                    self._spawn(out)
            else:
                worker.stop_when_free = True
                worker.replace_on_stop = True

    def _dispatch_waiting(self, now: float, out: list[Command]) -> None:
        """Rules 2 and 5: the oldest waiting request goes to the most recently used IDLE pipeline."""
        while self._queue:
            idle = self._workers.idle_lru()
            if not idle:
                break
            item = self._queue.pop_oldest()
            out.append(self._start_call(idle[-1], item.request_id, now, item.arrived_s, item.deadline_s))
        self._prefetch_waiting(now, out)

    def _stop_for_drain(self, out: list[Command]) -> None:
        """DRAINING: stop every free pipeline and every start no waiting request needs."""
        for worker in self._workers.idle_lru():
            self._stop(worker, out)  # IDLE only exists when nothing waits
        starting = sorted(self._workers.in_state(STARTING), key=lambda w: w.worker_id)
        for worker in starting[len(self._queue) :]:
            self._stop(worker, out)

    def _grow(self, out: list[Command]) -> None:
        """Rules 1 and 3 (rule 3 only while DRAINING; neither while FAILED or held back)."""
        if self._load_state is FAILED or self._held():
            return
        count = sizing.spawns_wanted(
            self._config.pool,
            allocated=self._workers.allocated(),
            starting=self._workers.count(STARTING),
            waiting=len(self._queue),
            keep_floor=self._loaded and self._load_state in _SPAWNING,
        )
        for _ in range(count):
            self._spawn(out)

    def _maybe_probe(self, now: float, out: list[Command]) -> None:
        """FAILED: after the backoff delay, start one pipeline to retry the load.

        FAILED has no serving pipeline, so only starts that began before the
        failure can leave no room (after a ceil decrease): the probe then waits
        for them.
        """
        if not self._probe_wanted() or self._retry_at_s is None or now < self._retry_at_s:
            return
        self._probe_id = self._spawn(out).worker_id

    def _probe_wanted(self) -> bool:
        """A retry is pending and can start once due (there is room)."""
        if self._load_state is not FAILED or self._retry_at_s is None:
            return False
        probe = self._workers.get(self._probe_id)
        if probe is not None and probe.state is STARTING:
            return False  # one attempt at a time
        return self._has_room()

    def _shrink(self, now: float, out: list[Command]) -> None:
        """Rule 7: stop surplus IDLE pipelines, least recently used first, after the delay."""
        delay_s = self._config.pool.scale_down_delay / 1000
        for worker in self._shrink_candidates():
            # Same arithmetic as next_deadline(), so a Tick at that time acts.
            if worker.idle_since_s + delay_s <= now:
                self._stop(worker, out)

    def _shrink_candidates(self) -> list[WorkerRecord]:
        """The IDLE pipelines rule 7 will stop (once idle long enough), LRU first.

        A retiring pipeline whose successor is starting counts with it as one
        slot, and is left to rule 10; a BUSY pipeline told to stop when free
        is already leaving and does not count.
        """
        pool = self._config.pool
        if self._workers.allocated() <= max(pool.cruise, pool.floor):
            return []  # staying <= allocated: no surplus (and no scan of the records)
        count = sizing.surplus(pool, allocated=self._workers.staying())
        if count == 0:
            return []
        return [w for w in self._workers.idle_lru() if not self._workers.paired(w)][:count]

    # -- helpers ----------------------------------------------------------------

    def _spawn(self, out: list[Command]) -> WorkerRecord:
        if not self._has_room():
            raise InternalError("a pipeline start would exceed ceil")
        worker = self._workers.new()
        self._counters.starts_total += 1
        out.append(SpawnWorker(worker.worker_id))
        return worker

    def _stop(self, worker: WorkerRecord, out: list[Command]) -> None:
        worker.set_state(STOPPING)  # IDLE/STARTING -> STOPPING: not needed
        out.append(StopWorker(worker.worker_id))

    def _stop_when_free(self, worker: WorkerRecord, out: list[Command]) -> None:
        if worker.state is IDLE:
            self._stop(worker, out)
        else:
            worker.stop_when_free = True

    def _mark_retiring(self, worker: WorkerRecord) -> None:
        if not worker.retiring:
            self._workers.mark_retiring(worker)
            self._counters.retirements_total += 1

    def _reject(
        self,
        out: list[Command],
        request_id: int,
        error_type: str,
        message: str,
        retry_after_s: int | None = None,
    ) -> None:
        self._counters.count_rejection(error_type)
        out.append(Reject(request_id, error_type, message, retry_after_s))

    def _retry_after(self) -> int:
        serving = self._workers.serving()
        return sizing.retry_after_s(len(self._queue), self._mean_run_time_s, serving)

    def _has_room(self) -> bool:
        return self._workers.allocated() < self._config.pool.ceil
