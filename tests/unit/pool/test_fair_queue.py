"""FairQueue: FIFO order, removal, absolute deadlines."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from lightnode.pool.fair_queue import FairQueue, QueuedRequest


def item(rid: int, arrived: float, deadline: float) -> QueuedRequest:
    return QueuedRequest(rid, arrived, deadline)


def test_fifo_order() -> None:
    q = FairQueue()
    for rid in (3, 1, 2):
        q.push(item(rid, float(rid), 10.0))
    assert [i.request_id for i in q] == [3, 1, 2]
    assert q.oldest() == item(3, 3.0, 10.0)
    assert [q.pop_oldest().request_id for _ in range(3)] == [3, 1, 2]
    assert not q and len(q) == 0 and q.oldest() is None
    with pytest.raises(IndexError):
        q.pop_oldest()


def test_duplicate_push_is_refused() -> None:
    q = FairQueue()
    q.push(item(1, 0.0, 1.0))
    with pytest.raises(ValueError):
        q.push(item(1, 0.5, 1.5))
    assert len(q) == 1


def test_remove_anywhere() -> None:
    q = FairQueue()
    for rid in range(5):
        q.push(item(rid, 0.0, 10.0 + rid))
    assert q.remove(2) == item(2, 0.0, 12.0)
    assert q.remove(2) is None
    assert 2 not in q and 3 in q
    assert [i.request_id for i in q] == [0, 1, 3, 4]


def test_expiry_with_deadlines_out_of_arrival_order() -> None:
    q = FairQueue()
    q.push(item(1, 0.0, 10.0))
    q.push(item(2, 1.0, 3.0))  # a shorter timeout after a hot reload
    q.push(item(3, 2.0, 5.0))
    assert q.next_deadline() == 3.0
    assert q.pop_expired(2.9) == []
    assert q.pop_expired(3.0) == [item(2, 1.0, 3.0)]
    assert q.next_deadline() == 5.0
    assert q.pop_expired(20.0) == [item(1, 0.0, 10.0), item(3, 2.0, 5.0)]  # oldest first
    assert q.next_deadline() is None


def test_removed_requests_do_not_expire_or_set_deadlines() -> None:
    q = FairQueue()
    q.push(item(1, 0.0, 1.0))
    q.push(item(2, 0.0, 2.0))
    q.remove(1)
    assert q.next_deadline() == 2.0
    q.pop_oldest()
    assert q.next_deadline() is None
    q.push(item(1, 3.0, 9.0))  # an id may come back after it left
    assert q.pop_expired(5.0) == []
    assert q.next_deadline() == 9.0


def test_heap_stays_bounded_under_churn() -> None:
    q = FairQueue()
    q.push(item(0, 0.0, 2000.0))
    for rid in range(1, 500):
        q.push(item(rid, 0.0, 1000.0 + rid))  # earlier than the tail's: heap mode
        q.remove(rid)
    assert len(q) == 1
    assert q._heap is not None and len(q._heap) <= 16  # compaction dropped the stale entries


def test_deadlines_in_order_need_no_heap_until_one_is_out_of_order() -> None:
    q = FairQueue()
    for rid in range(3):
        q.push(item(rid, float(rid), 10.0 + rid))
    assert q._heap is None and q.next_deadline() == 10.0
    q.push(item(3, 3.0, 5.0))  # a shorter timeout after a hot reload
    assert q._heap is not None and q.next_deadline() == 5.0
    q.clear()
    q.push(item(4, 4.0, 1.0))  # empty again: in order again, whatever came before
    assert q._heap is None and q.next_deadline() == 1.0


class _Model:
    """The queue's contract in the plainest terms: a list in FIFO order."""

    def __init__(self) -> None:
        self.items: list[QueuedRequest] = []

    def next_deadline(self) -> float | None:
        return min((i.deadline_s for i in self.items), default=None)

    def pop_expired(self, now: float) -> list[QueuedRequest]:
        expired = [i for i in self.items if i.deadline_s <= now]
        self.items = [i for i in self.items if i.deadline_s > now]
        return expired


@given(st.lists(st.tuples(st.sampled_from(["push", "pop", "remove", "expire", "reinsert"]),
                          st.integers(0, 6), st.integers(0, 20)), max_size=60))  # fmt: skip
def test_matches_a_plain_list(ops: list[tuple[str, int, int]]) -> None:
    q, model, clock, gone = FairQueue(), _Model(), 0.0, []
    next_id = 0
    for op, a, b in ops:
        clock += 0.5
        if op == "push":
            next_id += 1
            queued = item(next_id, clock, clock + b / 2)
            q.push(queued)
            model.items.append(queued)
        elif op == "pop" and model.items:
            assert q.pop_oldest() == model.items.pop(0)
            gone.append(None)
        elif op == "remove" and model.items:
            victim = model.items[a % len(model.items)]
            model.items.remove(victim)
            assert q.remove(victim.request_id) == victim
            gone.append(victim)
        elif op == "expire":
            assert q.pop_expired(clock + a) == model.pop_expired(clock + a)
        elif op == "reinsert" and gone and gone[-1] is not None:
            back = gone.pop()
            assert back is not None
            q.reinsert(back)
            model.items.append(back)
            model.items.sort(key=lambda i: (i.arrived_s, i.request_id))
        assert list(q) == model.items
        assert list(q.waiting) == [i.request_id for i in model.items]
        assert q.next_deadline() == model.next_deadline()
        assert len(q) == len(model.items)


def test_clear_returns_everything_in_order() -> None:
    q = FairQueue()
    for rid in (5, 4):
        q.push(item(rid, 0.0, 1.0))
    assert [i.request_id for i in q.clear()] == [5, 4]
    assert q.next_deadline() is None and len(q) == 0


def test_reinsert_puts_a_request_back_in_arrival_order() -> None:
    q = FairQueue()
    q.push(item(7, 3.0, 13.0))
    q.push(item(8, 4.0, 14.0))
    q.reinsert(item(5, 1.0, 11.0))  # older than everything waiting: the head
    q.reinsert(item(6, 3.0, 12.0))  # same arrival as 7, earlier id: before it
    assert [i.request_id for i in q] == [5, 6, 7, 8]
    assert q.next_deadline() == 11.0
    assert [i.request_id for i in q.pop_expired(12.0)] == [5, 6]
    assert q.pop_oldest().request_id == 7
    q.push(item(9, 5.0, 15.0))
    assert [i.request_id for i in q] == [8, 9]
    with pytest.raises(ValueError):
        q.reinsert(item(9, 5.0, 15.0))


def test_a_queue_that_streams_or_loses_requests_keeps_its_fifo_small() -> None:
    """Removed and popped entries leave the FIFO list: its length follows the live
    requests, not the requests ever queued."""
    q = FairQueue()
    rid = 0
    for _ in range(5_000):  # steady state: five waiting, one in, one out
        q.push(item(rid, float(rid), float(rid) + 10.0))
        rid += 1
        if len(q) > 5:
            q.pop_oldest()
    assert len(q) == 5 and len(q._fifo) <= 2 * 5 + 8 + 40
    for _ in range(1_000):  # cancellations anywhere but the head
        q.push(item(rid, float(rid), float(rid) + 10.0))
        rid += 1
        q.remove(rid - 3)
    assert len(q._fifo) <= 2 * len(q) + 8 + 1
    live = [i.request_id for i in q]
    assert live == sorted(live) and len(live) == len(q)
    assert q.next_deadline() == q.oldest().deadline_s  # type: ignore[union-attr]
    while q:
        q.pop_oldest()
    assert q._fifo == [] and q.next_deadline() is None
