"""FairQueue: the single FIFO of requests waiting for a pipeline (SPEC §4 rules 5, 6, 9).

Owns: arrival order and absolute deadlines of waiting requests. Deciding
whether a request may enter (rule 4) is `sizing.admits`, because the bound
depends on the pool, not on the queue alone.
PURE: imports only the standard library.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

# The deadline heap drops stale entries lazily; it is rebuilt when stale
# entries outnumber live ones by this factor, so cancellations cannot grow it
# without bound while the common path stays O(log n).
_HEAP_SLACK_FACTOR: Final = 2


# Not frozen: one per queued request, and a frozen __init__ costs 3x.
# init=False: the __init__ dataclass writes is interpreted even in the compiled build
# (4x the cost of this one, which mypyc compiles); eq and repr still come from dataclass.
@dataclass(slots=True, init=False)
class QueuedRequest:
    request_id: int
    arrived_s: float  # monotonic time of arrival
    deadline_s: float  # monotonic time at which it gets QueueTimeout (fixed at arrival)

    def __init__(self, request_id: int, arrived_s: float, deadline_s: float) -> None:
        self.request_id = request_id
        self.arrived_s = arrived_s
        self.deadline_s = deadline_s


class FairQueue:
    """FIFO of waiting requests with absolute deadlines.

    Deadlines usually follow arrival order (one timeout for all), and then the
    head holds the earliest one. A hot reload may shorten the timeout of later
    arrivals: from the first push whose deadline is earlier than the tail's
    until the queue is empty again, expiry uses a heap beside the FIFO.
    """

    def __init__(self) -> None:
        self._items: OrderedDict[int, tuple[int, QueuedRequest]] = OrderedDict()
        # The ids of waiting requests, oldest first: a live read-only view for the pool's
        # hot path, where `if queue.waiting` and `rid in queue.waiting` cost no Python call.
        self.waiting = self._items.keys()
        # None while deadlines are in FIFO order, else (deadline_s, seq, request_id).
        self._heap: list[tuple[float, int, int]] | None = None
        self._tail_deadline_s = float("-inf")
        # In FIFO order: the head's deadline (None when empty), kept so that
        # next_deadline(), asked several times per request, is an attribute read.
        self._head_deadline_s: float | None = None
        self._seq = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._items

    def __iter__(self) -> Iterator[QueuedRequest]:
        """Waiting requests, oldest first."""
        return (item for _, item in self._items.values())

    def push(self, item: QueuedRequest) -> None:
        """Append a request at the tail.

        Raises:
            ValueError: the request id is already waiting.
        """
        if item.request_id in self._items:
            raise ValueError(f"request {item.request_id} is already queued")
        self._seq += 1
        self._items[item.request_id] = (self._seq, item)
        heap = self._heap
        if heap is not None:
            heapq.heappush(heap, (item.deadline_s, self._seq, item.request_id))
        elif item.deadline_s >= self._tail_deadline_s:
            self._tail_deadline_s = item.deadline_s
            if len(self._items) == 1:
                self._head_deadline_s = item.deadline_s
        else:  # out of order: a heap until the queue empties
            self._heap = [
                (queued.deadline_s, seq, request_id)
                for request_id, (seq, queued) in self._items.items()
            ]
            heapq.heapify(self._heap)

    def reinsert(self, item: QueuedRequest) -> None:
        """Put back a request that left the queue but never ran (a prefetched call
        whose pipeline died first), in arrival order. O(n): it happens only on a death.

        Raises:
            ValueError: the request id is already waiting.
        """
        if item.request_id in self._items:
            raise ValueError(f"request {item.request_id} is already queued")
        items = [queued for _, queued in self._items.values()]
        key = (item.arrived_s, item.request_id)  # ids are issued in arrival order
        position = 0
        while position < len(items) and (items[position].arrived_s, items[position].request_id) < key:
            position += 1
        items.insert(position, item)
        self._items.clear()
        self._compact()
        for queued in items:
            self.push(queued)

    def oldest(self) -> QueuedRequest | None:
        for _, item in self._items.values():
            return item
        return None

    def pop_oldest(self) -> QueuedRequest:
        """Remove and return the head (rule 5). Raises IndexError when empty."""
        if not self._items:
            raise IndexError("pop from an empty FairQueue")
        _, (_, item) = self._items.popitem(last=False)
        self._compact()
        return item

    def remove(self, request_id: int) -> QueuedRequest | None:
        """Remove a request wherever it is (rule 9); None if it is not waiting."""
        entry = self._items.pop(request_id, None)
        if entry is None:
            return None
        self._compact()
        return entry[1]

    def _peek_head(self) -> None:
        """FIFO order: keep `_head_deadline_s` after the head left."""
        for _, head in self._items.values():
            self._head_deadline_s = head.deadline_s
            return
        self._head_deadline_s = None

    def pop_expired(self, now: float) -> list[QueuedRequest]:
        """Remove and return every request whose deadline is <= now, oldest first."""
        heap = self._heap
        items = self._items
        if heap is None:
            expired_in_order: list[QueuedRequest] = []
            while items:
                _, head = next(iter(items.values()))
                if head.deadline_s > now:
                    break
                items.popitem(last=False)
                expired_in_order.append(head)
            self._compact()
            return expired_in_order
        expired: list[tuple[int, QueuedRequest]] = []
        while heap and heap[0][0] <= now:
            _, seq, request_id = heapq.heappop(heap)
            entry = items.get(request_id)
            if entry is not None and entry[0] == seq:
                del items[request_id]
                expired.append(entry)
        expired.sort(key=lambda entry: entry[0])
        self._compact()
        return [item for _, item in expired]

    def next_deadline(self) -> float | None:
        """Earliest deadline among waiting requests, None when empty."""
        heap = self._heap
        if heap is None:
            return self._head_deadline_s
        while heap:
            deadline_s, seq, request_id = heap[0]
            entry = self._items.get(request_id)
            if entry is not None and entry[0] == seq:
                return deadline_s
            heapq.heappop(heap)
        return None

    def clear(self) -> list[QueuedRequest]:
        """Remove and return every waiting request, oldest first."""
        items = [item for _, item in self._items.values()]
        self._items.clear()
        self._compact()
        return items

    def _compact(self) -> None:
        """After removals: the heap dropped when empty or rebuilt when stale, the FIFO head kept."""
        if not self._items:
            self._heap = None  # empty: in order again
            self._tail_deadline_s = float("-inf")
            self._head_deadline_s = None
        elif self._heap is None:
            self._peek_head()
        elif len(self._heap) > _HEAP_SLACK_FACTOR * len(self._items) + 8:
            self._heap = [
                (item.deadline_s, seq, request_id)
                for request_id, (seq, item) in self._items.items()
            ]
            heapq.heapify(self._heap)
