"""The pool invariants, checked after every event in tests (STYLE §4).

Owns: `check_pool_invariants`, the precise statement of what must hold
whenever `PoolMachine.handle()` has returned:

1. Records: every kept pipeline is not GONE; a pipeline holds a request
   exactly when BUSY, and staged (prefetched) ones only when BUSY or, killed
   for an exec timeout, STOPPING; only a STOPPING pipeline awaits a killed
   call's answer; "stop when free" never marks a STARTING or IDLE one.
2. Requests: no request is both waiting and running; each running or
   staged request belongs to exactly one pipeline (BUSY, or STOPPING after
   a kill), each BUSY pipeline runs one and stages at most `max_staged`,
   each request once.
3. Dispatch: no IDLE pipeline while a request waits.
4. Ceil: allocated minus the BUSY pipelines already told to stop when free
   is <= ceil. (Starts happen only below ceil, so allocated exceeds ceil
   only after a ceil decrease, by busy pipelines that stop when they finish.)
5. Queue: waiting <= queue + STARTING, the bound of rule 4, except after a
   hot reload lowered queue or ceil while requests waited (they stay
   queued, SPEC §5), or after requests admitted for a start that failed
   stayed queued for a serving pipeline; the exception ends when the queue
   empties.
6. Floor: once loaded and while LOADING or HEALTHY, allocated >= floor
   (replacements are started in the same handle() call that lost a
   pipeline, since STOPPING is not allocated). Not checked while FAILED
   or while starts are held back after a failed start (starts wait for the
   backoff), nor while DRAINING.
7. FAILED: nothing waits and no pipeline serves (IDLE or BUSY): a start
   that fails beside a serving pipeline leaves the endpoint HEALTHY.
8. After Drained: nothing waits and no pipeline is left.

PURE: imports only the standard library, `lightnode.errors`,
`lightnode.config.model` and `lightnode.pool`.
"""

from __future__ import annotations

from collections.abc import Mapping

from lightnode.config.model import EndpointConfig
from lightnode.errors import InternalError
from lightnode.pool.fair_queue import FairQueue
from lightnode.pool.pipelines import Pipelines
from lightnode.pool.states import LoadState, WorkerState


def check_pool_invariants(
    *,
    config: EndpointConfig,
    workers: Pipelines,
    queue: FairQueue,
    running: Mapping[int, int],
    load_state: LoadState,
    loaded: bool,
    starts_held: bool,
    queue_bound_relaxed: bool,
    drained_sent: bool,
    max_staged: int,
) -> None:
    """Raise InternalError naming the first broken invariant (numbered as above)."""
    workers.check_counts()  # the hot path reads kept counts: they must match the records
    _check_records(workers)
    _check_requests(workers, queue, running, max_staged)
    pool = config.pool
    allocated = workers.allocated()
    starting = workers.count(WorkerState.STARTING)
    leaving = workers.leaving()
    if queue and workers.any_in(WorkerState.IDLE):
        _fail(3, "an IDLE pipeline coexists with waiting requests")
    if allocated - leaving > pool.ceil:
        _fail(4, f"allocated {allocated} - leaving {leaving} > ceil {pool.ceil}")
    if not queue_bound_relaxed and len(queue) > pool.queue + starting:
        _fail(5, f"{len(queue)} waiting > queue {pool.queue} + starting {starting}")
    spawning = load_state in (LoadState.LOADING, LoadState.HEALTHY)
    if loaded and spawning and not starts_held and allocated < pool.floor:
        _fail(6, f"allocated {allocated} < floor {pool.floor} while {load_state.value}")
    if load_state is LoadState.FAILED and queue:
        _fail(7, "requests wait while the endpoint is FAILED")
    if load_state is LoadState.FAILED and workers.serving():
        _fail(7, f"{workers.serving()} pipelines serve while the endpoint is FAILED")
    if drained_sent and (queue or workers):
        _fail(8, "Drained was sent but requests or pipelines remain")


def _check_records(workers: Pipelines) -> None:
    for worker in workers:
        worker_id = worker.worker_id
        if workers.get(worker_id) is not worker or worker.state is WorkerState.GONE:
            _fail(1, f"bad record for worker {worker_id}: {worker.state.value}")
        if (worker.state is WorkerState.BUSY) != (worker.request_id is not None):
            _fail(1, f"worker {worker_id} is {worker.state.value} with request {worker.request_id}")
        staged_ids = [item.request_id for item in worker.staged]
        holds = (WorkerState.BUSY, WorkerState.STOPPING)
        if staged_ids and (worker.state not in holds or worker.request_id in staged_ids):
            _fail(1, f"worker {worker_id} is {worker.state.value} with staged {staged_ids}")
        if worker.killed_answer_due and worker.state is not WorkerState.STOPPING:
            _fail(1, f"worker {worker_id} is {worker.state.value} awaiting a killed call's answer")
        if worker.stop_when_free and worker.state in (WorkerState.STARTING, WorkerState.IDLE):
            _fail(1, f"worker {worker_id} is {worker.state.value} but marked stop-when-free")


def _check_requests(
    workers: Pipelines, queue: FairQueue, running: Mapping[int, int], max_staged: int
) -> None:
    busy = workers.count(WorkerState.BUSY)
    staged = 0
    for record in workers:
        if len(record.staged) > max_staged:
            _fail(2, f"worker {record.worker_id} stages {len(record.staged)} (at most {max_staged})")
        staged += len(record.staged)
    if busy + staged != len(running):
        _fail(2, f"{busy} BUSY pipelines and {staged} staged but {len(running)} running requests")
    for request_id, worker_id in running.items():
        worker = workers.get(worker_id)
        if worker is None or (
            request_id != worker.request_id and all(i.request_id != request_id for i in worker.staged)
        ):
            _fail(2, f"request {request_id} is not on worker {worker_id}")
        if request_id in queue:
            _fail(2, f"request {request_id} is both waiting and running")


def _fail(number: int, message: str) -> None:
    raise InternalError(f"pool invariant {number} broken: {message}")
