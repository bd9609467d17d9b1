"""Pipelines: the set of WorkerRecords of one pool, and the counts the rules ask for.

Owns: worker id allocation (1, 2, 3, ...), the records of pipelines that are
not GONE (a GONE one is dropped; its id stays known), and the idle order
(most / least recently used). It makes no decision: the rules live in
`machine.py` and `sizing.py`.
PURE: imports only the standard library and `lightnode.pool`.
"""

from __future__ import annotations

from collections.abc import Iterator

from lightnode.pool.states import ALLOCATED, WorkerState
from lightnode.pool.worker_record import WorkerRecord

SERVING = frozenset({WorkerState.IDLE, WorkerState.BUSY})


class Pipelines:
    def __init__(self) -> None:
        self._by_id: dict[int, WorkerRecord] = {}
        self._next_id = 1
        self._idle_seq = 0

    def __iter__(self) -> Iterator[WorkerRecord]:
        return iter(list(self._by_id.values()))  # a copy: callers change states

    def __len__(self) -> int:
        return len(self._by_id)

    def new(self) -> WorkerRecord:
        """Record a pipeline about to be started (STARTING) under the next id."""
        worker = WorkerRecord(self._next_id)
        self._next_id += 1
        self._by_id[worker.worker_id] = worker
        return worker

    def get(self, worker_id: int | None) -> WorkerRecord | None:
        return self._by_id.get(worker_id or 0)

    def drop(self, worker: WorkerRecord) -> None:
        """Forget a GONE pipeline (a long-lived pool retires many)."""
        del self._by_id[worker.worker_id]

    def ever_started(self, worker_id: int) -> bool:
        return 1 <= worker_id < self._next_id

    def state_of(self, worker_id: int) -> WorkerState:
        """Raises KeyError for an id never started."""
        worker = self._by_id.get(worker_id)
        if worker is not None:
            return worker.state
        if self.ever_started(worker_id):
            return WorkerState.GONE
        raise KeyError(worker_id)

    def in_state(self, state: WorkerState) -> list[WorkerRecord]:
        return [w for w in self._by_id.values() if w.state is state]

    def count(self, state: WorkerState) -> int:
        return sum(1 for w in self._by_id.values() if w.state is state)

    def any_in(self, state: WorkerState) -> bool:
        return any(w.state is state for w in self._by_id.values())

    def allocated(self) -> int:
        """STARTING + IDLE + BUSY (SPEC §4)."""
        return sum(1 for w in self._by_id.values() if w.state in ALLOCATED)

    def leaving(self) -> int:
        """BUSY pipelines told to stop after their current request."""
        return sum(1 for w in self._by_id.values() if w.leaving)

    def serving(self) -> int:
        """IDLE + BUSY: pipelines that can run requests now (rule 11)."""
        return sum(1 for w in self._by_id.values() if w.state in SERVING)

    def idle_lru(self) -> list[WorkerRecord]:
        """IDLE pipelines, least recently used first (the last one is the MRU)."""
        return sorted(self.in_state(WorkerState.IDLE), key=lambda w: w.idle_seq)

    def mark_idle(self, worker: WorkerRecord, now: float) -> None:
        """Record that `worker` just became IDLE (it is now the most recently used)."""
        self._idle_seq += 1
        worker.idle_seq = self._idle_seq
        worker.idle_since_s = now

    def paired(self, worker: WorkerRecord) -> bool:
        """A retiring pipeline whose successor is starting: the two count as one slot."""
        if not worker.retiring or worker.state not in SERVING:
            return False
        successor = self.get(worker.successor_id)
        return successor is not None and successor.state is WorkerState.STARTING

    def staying(self) -> int:
        """Allocated pipelines that rule 7 weighs against cruise.

        Not counted: BUSY pipelines already leaving, and retiring pipelines
        whose successor is starting (the successor takes their slot).
        """
        return sum(
            1
            for w in self._by_id.values()
            if w.state in ALLOCATED and not w.leaving and not self.paired(w)
        )
