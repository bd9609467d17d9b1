"""The pipes between the harness and its generator processes (loadtest/procs.py)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from multiprocessing import Pipe
from typing import Any

import uvloop

from loadtest.procs import ProcGroup, watch_pipe


class _Running:
    exitcode = None  # what a generator process that has not exited reports


def test_a_message_larger_than_the_socket_buffer_reaches_the_parent_whole() -> None:
    """A busy second's buckets, or a 1,000-connection run's totals, are megabytes: the
    parent must read such a message to its end, not take its second piece's delay for
    the generator process gone (it did, in about one flood run of three: uvloop's
    add_reader had made the pipe non-blocking, and recv broke off with EAGAIN)."""
    parent_end, child_end = Pipe()
    got: list[tuple[int, Any, Any]] = []
    group = ProcGroup([], lambda index, buckets, info: got.append((index, buckets, info)))
    group.processes = [_Running()]  # type: ignore[list-item]
    group.pipes = [parent_end]
    buckets = [{"second": i, "latency": "x" * 1000} for i in range(4096)]  # about 4 MB
    message = ("seconds", buckets, {"cpu_pct": 12.5})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        group._ready, group._done = loop.create_future(), loop.create_future()
        watch_pipe(loop, parent_end, group._readable, 0)
        assert os.get_blocking(parent_end.fileno())
        sender = threading.Thread(target=child_end.send, args=(message,))
        sender.start()
        deadline = time.monotonic() + 10
        while not got and not group._ready.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        sender.join(10)
        loop.remove_reader(parent_end.fileno())
        if group._ready.done():
            raise AssertionError(f"the parent gave up on the message: {group._ready.exception()}")

    try:
        uvloop.run(main())
    finally:
        parent_end.close()
        child_end.close()
    assert got == [(0, buckets, {"cpu_pct": 12.5})]
