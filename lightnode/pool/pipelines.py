"""Pipelines: the set of WorkerRecords of one pool, and the counts the rules ask for.

Owns: worker id allocation (1, 2, 3, ...), the records of pipelines that are
not GONE (a GONE one is dropped; its id stays known), and the idle order
(most / least recently used). It makes no decision: the rules live in
`machine.py` and `sizing.py`.
PURE: imports only the standard library and `lightnode.pool`.
"""

from __future__ import annotations

from collections.abc import Iterator, ValuesView
from typing import Final

from lightnode.errors import InternalError
from lightnode.pool.states import BUSY, GONE, IDLE, STARTING, WorkerState
from lightnode.pool.worker_record import WorkerRecord

SERVING: Final = frozenset({IDLE, BUSY})


class Pipelines:
    """Counts per state and the IDLE set are kept up to date on every state change
    (WorkerRecord.on_move), so the rules, which ask for them many times per event,
    never scan the records: this is the request hot path."""

    def __init__(self) -> None:
        self._by_id: dict[int, WorkerRecord] = {}
        self._next_id = 1
        self._idle_seq = 0
        self._counts: dict[WorkerState, int] = {state: 0 for state in WorkerState}
        self._idle: dict[int, WorkerRecord] = {}
        self._busy: dict[int, WorkerRecord] = {}
        self._retiring: dict[int, WorkerRecord] = {}

    def _moved(self, worker: WorkerRecord, old: WorkerState, new: WorkerState) -> None:
        counts = self._counts
        counts[old] -= 1
        counts[new] += 1
        for state, members in ((old, None), (new, worker)):
            if state is IDLE:
                table = self._idle
            elif state is BUSY:
                table = self._busy
            else:
                continue
            if members is None:
                del table[worker.worker_id]
            else:
                table[worker.worker_id] = worker

    def __iter__(self) -> Iterator[WorkerRecord]:
        return iter(list(self._by_id.values()))  # a copy: callers change states

    def __len__(self) -> int:
        return len(self._by_id)

    def new(self) -> WorkerRecord:
        """Record a pipeline about to be started (STARTING) under the next id."""
        worker = WorkerRecord(self._next_id, on_move=self._moved)
        self._next_id += 1
        self._by_id[worker.worker_id] = worker
        self._counts[worker.state] += 1
        return worker

    def get(self, worker_id: int | None) -> WorkerRecord | None:
        return self._by_id.get(worker_id or 0)

    def drop(self, worker: WorkerRecord) -> None:
        """Forget a GONE pipeline (a long-lived pool retires many)."""
        del self._by_id[worker.worker_id]
        self._counts[worker.state] -= 1
        self._retiring.pop(worker.worker_id, None)

    def mark_retiring(self, worker: WorkerRecord) -> None:
        """Rule 10: `worker` is to be replaced (kept in a set so checks skip the rest)."""
        worker.retiring = True
        self._retiring[worker.worker_id] = worker

    def check_counts(self) -> None:
        """Raise InternalError if the kept counts or sets disagree with the records."""
        for state in WorkerState:
            actual = sum(1 for w in self._by_id.values() if w.state is state)
            if self._counts[state] != actual:
                raise InternalError(f"{state.value}: counted {self._counts[state]}, actual {actual}")
        for state, table in ((IDLE, self._idle), (BUSY, self._busy)):
            if set(table) != {w.worker_id for w in self._by_id.values() if w.state is state}:
                raise InternalError(f"the {state.value} set disagrees with the records")

    def has_retiring(self) -> bool:
        return bool(self._retiring)

    def retiring(self) -> list[WorkerRecord]:
        return list(self._retiring.values())

    def next_id(self) -> int:
        """The id the next pipeline started will get (every id below it was started)."""
        return self._next_id

    def ever_started(self, worker_id: int) -> bool:
        return 1 <= worker_id < self._next_id

    def state_of(self, worker_id: int) -> WorkerState:
        """Raises KeyError for an id never started."""
        worker = self._by_id.get(worker_id)
        if worker is not None:
            return worker.state
        if self.ever_started(worker_id):
            return GONE
        raise KeyError(worker_id)

    def in_state(self, state: WorkerState) -> list[WorkerRecord]:
        if not self._counts[state]:
            return []
        return [w for w in self._by_id.values() if w.state is state]

    def busy_view(self) -> ValuesView[WorkerRecord]:
        """The BUSY pipelines (kept as a set), without a copy: for loops that change no state."""
        return self._busy.values()

    def count(self, state: WorkerState) -> int:
        return self._counts[state]

    def any_in(self, state: WorkerState) -> bool:
        return self._counts[state] > 0

    def allocated(self) -> int:
        """STARTING + IDLE + BUSY (SPEC §4)."""
        counts = self._counts
        return counts[STARTING] + counts[IDLE] + counts[BUSY]

    def leaving(self) -> int:
        """BUSY pipelines told to stop after their current request."""
        return sum(1 for w in self._busy.values() if w.stop_when_free)

    def serving(self) -> int:
        """IDLE + BUSY: pipelines that can run requests now (rule 11)."""
        return self._counts[IDLE] + self._counts[BUSY]

    def idle_lru(self) -> list[WorkerRecord]:
        """IDLE pipelines, least recently used first (the last one is the MRU)."""
        idle = self._idle
        if len(idle) < 2:
            return list(idle.values())
        return sorted(idle.values(), key=lambda w: w.idle_seq)

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
        return successor is not None and successor.state is STARTING

    def staying(self) -> int:
        """Allocated pipelines that rule 7 weighs against cruise.

        Not counted: BUSY pipelines already leaving, and retiring pipelines
        whose successor is starting (the successor takes their slot).
        """
        paired = sum(1 for w in self._retiring.values() if not w.leaving and self.paired(w))
        return self.allocated() - self.leaving() - paired
