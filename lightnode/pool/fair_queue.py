"""FairQueue: the single FIFO of requests waiting for a pipeline (SPEC §4 rules 5, 6, 9).

Owns: arrival order and absolute deadlines of waiting requests. Deciding
whether a request may enter (rule 4) is `sizing.admits`, because the bound
depends on the pool, not on the queue alone.
PURE: imports only the standard library.
"""

from __future__ import annotations

import heapq
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

    The FIFO is a list read from a head index, of (seq, request) entries: every
    operation of the hot path (push, pop the head, read its deadline) is a native
    list operation in the compiled build. A removed request's entry stays in the
    list, stale, until the head passes it; the list is compacted when the head
    has passed half of it, and rebuilt when stale entries outnumber live ones.
    The head entry is always live (its request waits, and the entry is its latest).
    """

    def __init__(self) -> None:
        # id -> (seq, request), its entry in the FIFO: membership, removal, staleness.
        self._items: dict[int, tuple[int, QueuedRequest]] = {}
        # The ids of waiting requests: a live read-only view for the pool's hot path,
        # where `if queue.waiting` and `rid in queue.waiting` cost no Python call.
        self.waiting = self._items.keys()
        self._fifo: list[tuple[int, QueuedRequest]] = []
        self._head = 0  # index of the head entry in _fifo (== len(_fifo) when empty)
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
        return iter(self._live())

    def _live(self) -> list[QueuedRequest]:
        return [entry[1] for entry in self._live_entries()]

    def _live_entries(self) -> list[tuple[int, QueuedRequest]]:
        """The FIFO's entries from the head on, without the stale ones."""
        return [entry for entry in self._fifo[self._head :] if self._is_live(entry)]

    def _is_live(self, entry: tuple[int, QueuedRequest]) -> bool:
        """Whether `entry` is its request's current one (not removed, not re-queued).

        Compared by sequence number, not identity: compiled, a tuple is a C struct
        and boxed anew each time it is stored or read.
        """
        current = self._items.get(entry[1].request_id)
        return current is not None and current[0] == entry[0]

    def push(self, item: QueuedRequest) -> None:
        """Append a request at the tail.

        Raises:
            ValueError: the request id is already waiting.
        """
        request_id = item.request_id
        if request_id in self._items:
            raise ValueError(f"request {request_id} is already queued")
        self._seq += 1
        entry = (self._seq, item)
        self._items[request_id] = entry
        self._fifo.append(entry)
        heap = self._heap
        if heap is not None:
            heapq.heappush(heap, (item.deadline_s, self._seq, request_id))
        elif item.deadline_s >= self._tail_deadline_s:
            self._tail_deadline_s = item.deadline_s
            if len(self._items) == 1:
                self._head_deadline_s = item.deadline_s
        else:  # out of order: a heap until the queue empties
            self._heap = [
                (queued.deadline_s, seq, queued_id)
                for queued_id, (seq, queued) in self._items.items()
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
        items = self._live()
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
        if self._items:
            return self._fifo[self._head][1]
        return None

    def pop_oldest(self) -> QueuedRequest:
        """Remove and return the head (rule 5). Raises IndexError when empty."""
        if not self._items:
            raise IndexError("pop from an empty FairQueue")
        item = self._fifo[self._head][1]
        del self._items[item.request_id]
        self._head += 1
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
        heap = self._heap
        items = self._items
        if heap is None:
            expired_in_order: list[QueuedRequest] = []
            fifo = self._fifo
            while items:
                head = fifo[self._head][1]
                if head.deadline_s > now:
                    break
                del items[head.request_id]
                expired_in_order.append(head)
                self._head += 1
                self._skip_stale()
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
        items = self._live()
        self._items.clear()
        self._compact()
        return items

    def _skip_stale(self) -> None:
        """Move the head past removed requests' entries, so that it is live again."""
        fifo = self._fifo
        head = self._head
        while head < len(fifo) and not self._is_live(fifo[head]):
            head += 1
        self._head = head

    def _compact(self) -> None:
        """After removals: the head made live again, the passed part of the FIFO dropped,
        stale entries pruned, the heap dropped when empty or rebuilt when stale."""
        items = self._items
        if not items:
            self._fifo.clear()
            self._head = 0
            self._heap = None  # empty: in order again
            self._tail_deadline_s = float("-inf")
            self._head_deadline_s = None
            return
        self._skip_stale()
        fifo = self._fifo
        if len(fifo) - self._head > _HEAP_SLACK_FACTOR * len(items) + 8:
            self._fifo = self._live_entries()
            self._head = 0
        elif self._head > 32 and self._head * 2 > len(fifo):
            del fifo[: self._head]
            self._head = 0
        heap = self._heap
        if heap is None:
            self._head_deadline_s = self._fifo[self._head][1].deadline_s
        elif len(heap) > _HEAP_SLACK_FACTOR * len(items) + 8:
            self._heap = [
                (item.deadline_s, seq, request_id)
                for request_id, (seq, item) in items.items()
            ]
            heapq.heapify(self._heap)
