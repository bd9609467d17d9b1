"""Table-driven checks of the pipeline lifecycle (states.WORKER_TRANSITIONS)."""

from __future__ import annotations

import itertools

import pytest

from lightnode.pool.states import ALLOCATED, WORKER_TRANSITIONS, IllegalTransition, WorkerState
from lightnode.pool.worker_record import WorkerRecord, check_transition

S = WorkerState
ALL_PAIRS = list(itertools.product(S, S))
LEGAL = [(old, new) for old, new in ALL_PAIRS if new in WORKER_TRANSITIONS[old]]
ILLEGAL = [(old, new) for old, new in ALL_PAIRS if new not in WORKER_TRANSITIONS[old]]

# The lifecycle the spec draws (SPEC §4): STARTING -> IDLE <-> BUSY, any -> STOPPING -> GONE.
EXPECTED_EDGES = {
    (S.STARTING, S.IDLE),
    (S.IDLE, S.BUSY),
    (S.BUSY, S.IDLE),
    (S.STARTING, S.STOPPING),
    (S.IDLE, S.STOPPING),
    (S.BUSY, S.STOPPING),
    (S.STOPPING, S.GONE),
    # A process may die in any state; the machine then skips STOPPING.
    (S.STARTING, S.GONE),
    (S.IDLE, S.GONE),
    (S.BUSY, S.GONE),
}


def test_table_is_exactly_the_spec_lifecycle() -> None:
    assert set(LEGAL) == EXPECTED_EDGES
    assert set(WORKER_TRANSITIONS) == set(S)


def test_allocated_states() -> None:
    assert ALLOCATED == {S.STARTING, S.IDLE, S.BUSY}


@pytest.mark.parametrize(("old", "new"), LEGAL, ids=lambda s: s.value)
def test_legal_transition_moves(old: WorkerState, new: WorkerState) -> None:
    record = WorkerRecord(7, state=old)
    record.set_state(new)
    assert record.state is new


@pytest.mark.parametrize(("old", "new"), ILLEGAL, ids=lambda s: s.value)
def test_illegal_transition_raises_and_keeps_state(old: WorkerState, new: WorkerState) -> None:
    record = WorkerRecord(7, state=old)
    with pytest.raises(IllegalTransition) as info:
        record.set_state(new)
    assert record.state is old
    assert (info.value.old, info.value.new, info.value.worker_id) == (old, new, 7)
    assert f"{old.value} -> {new.value}" in str(info.value)
    with pytest.raises(IllegalTransition):
        check_transition(old, new, 7)


def test_gone_is_terminal_and_nothing_returns_to_starting() -> None:
    assert WORKER_TRANSITIONS[S.GONE] == frozenset()
    assert all(S.STARTING not in targets for targets in WORKER_TRANSITIONS.values())
