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

# The deadline heap drops stale entries lazily; it is rebuilt when stale
# entries outnumber live ones by this factor, so cancellations cannot grow it
# without bound while the common path stays O(log n).
_HEAP_SLACK_FACTOR = 2


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    request_id: int
    arrived_s: float  # monotonic time of arrival
    deadline_s: float  # monotonic time at which it gets QueueTimeout (fixed at arrival)


class FairQueue:
    """FIFO of waiting requests with absolute deadlines.

    Deadlines need not follow arrival order (a hot reload may shorten the
    timeout of later arrivals), so expiry uses a heap beside the FIFO.
    """

    def __init__(self) -> None:
        self._items: OrderedDict[int, tuple[int, QueuedRequest]] = OrderedDict()
        self._heap: list[tuple[float, int, int]] = []  # (deadline_s, seq, request_id)
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
        heapq.heappush(self._heap, (item.deadline_s, self._seq, item.request_id))

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
        self._heap.clear()
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

    def pop_expired(self, now: float) -> list[QueuedRequest]:
        """Remove and return every request whose deadline is <= now, oldest first."""
        expired: list[tuple[int, QueuedRequest]] = []
        while self._heap and self._heap[0][0] <= now:
            _, seq, request_id = heapq.heappop(self._heap)
            entry = self._items.get(request_id)
            if entry is not None and entry[0] == seq:
                del self._items[request_id]
                expired.append(entry)
        expired.sort(key=lambda entry: entry[0])
        return [item for _, item in expired]

    def next_deadline(self) -> float | None:
        """Earliest deadline among waiting requests, None when empty."""
        while self._heap:
            deadline_s, seq, request_id = self._heap[0]
            entry = self._items.get(request_id)
            if entry is not None and entry[0] == seq:
                return deadline_s
            heapq.heappop(self._heap)
        return None

    def clear(self) -> list[QueuedRequest]:
        """Remove and return every waiting request, oldest first."""
        items = [item for _, item in self._items.values()]
        self._items.clear()
        self._heap.clear()
        return items

    def _compact(self) -> None:
        if not self._items:
            self._heap.clear()
        elif len(self._heap) > _HEAP_SLACK_FACTOR * len(self._items) + 8:
            self._heap = [
                (item.deadline_s, seq, request_id)
                for request_id, (seq, item) in self._items.items()
            ]
            heapq.heapify(self._heap)
