"""A served request leaves no reference cycle behind (the garbage collector has nothing to do).

The real node answers a call later, from the worker's pipe, so the exchange
meanwhile holds what cancels the call and the call holds the exchange. Those
links must be dropped when the answer is given: with thousands of requests a
second, cycles would make the collector run (and cost) all the time.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from pathlib import Path

import pytest

from lightnode.worker import runtime
from loadtest import hotpath


class LaterWorker(hotpath.InstantWorker):
    """Answers on the next loop iteration, like a pipeline behind a pipe."""

    loop: asyncio.AbstractEventLoop

    def send_call(self, body: bytes, start_by_ns: int = 0, tag: bytes = b"") -> None:
        LaterWorker.loop.call_soon(self.listener.worker_answered, self.worker_id, runtime.RESULT, 3, b'{"sum":3}')


def test_served_requests_leave_no_reference_cycles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hotpath, "InstantWorker", LaterWorker)
    protocol, transport, loop = hotpath.build(tmp_path, observers=True)
    LaterWorker.loop = loop
    try:

        def serve(count: int) -> None:
            for _ in range(count):
                protocol.data_received(hotpath.REQUEST)
                loop.run_until_complete(asyncio.sleep(0))

        serve(50)  # warm up: caches and lazily built objects
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            written = transport.written
            serve(200)
            assert transport.written >= written + 200  # the calls were answered later
            gc.collect()
            leftovers = Counter(type(obj).__name__ for obj in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert not leftovers, f"reference cycles per request: {leftovers.most_common(8)}"
    finally:
        loop.close()
