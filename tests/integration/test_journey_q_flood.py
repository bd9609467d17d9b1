"""Journey Q (goodput under overload), with a real node: a flood of keep-alive connections
on a pool at ceil, where each arrival may read the pipelines' answers before it is
admitted (EndpointPool.submit): every request is answered once, 200 or 503 QueueFull,
and the node's count of served calls is the client's count of 200s.

A guard of the answer-reading path under load, not a measure of goodput (timing on a
busy 2-core machine proves nothing in a test): see tests/unit/test_journey_q_answer_poll.py.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import until, write_service, write_tuning

pytestmark = pytest.mark.integration

SLEEP = "import time\ndef f(ms=20):\n    time.sleep(ms / 1000)\n    return ms\n"
CONNECTIONS = 100
FLOOD_S = 2.0


async def _flood(host: str, port: int) -> collections.Counter[tuple[int, str | None]]:
    counts: collections.Counter[tuple[int, str | None]] = collections.Counter()
    end = time.monotonic() + FLOOD_S

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.monotonic() < end:
                writer.write(b"POST /public/api/v1/q/f/run HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = json.loads(await reader.readexactly(length))
                status = int(head.split(b" ", 2)[1])
                counts[(status, None if status == 200 else body.get("errorType"))] += 1
                if status != 200:
                    await asyncio.sleep(0.01)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return counts


def test_a_flood_on_a_pool_at_ceil_is_answered_once_each_and_counted(node_factory: Any, tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_service(root, "q", {"f": SLEEP})
    tuning = {"pool": {"floor": 2, "cruise": 2, "ceil": 2, "queue": 4, "timeout": 5000}}
    write_tuning(root, "q", "f", tuning)
    node = node_factory(root)
    address = urlsplit(node.url)
    counts = asyncio.run(_flood(address.hostname or "127.0.0.1", address.port or 0))
    assert set(counts) <= {(200, None), (503, "QueueFull")}, counts
    assert counts[(200, None)] > 0 and counts[(503, "QueueFull")] > 0, counts

    def endpoint() -> dict[str, Any]:
        return next(e for e in node.stats("q")["endpoints"] if e["endpointId"] == "f")

    # Every 200 the client got is a call the node served, and no call ran unanswered.
    served = counts[(200, None)]
    until(lambda: endpoint()["counters"]["served"] == served, 10.0, f"served == {served}")
    stats = endpoint()
    assert stats["stagedRequests"] == 0 and stats["counters"]["crashes"] == 0, stats
    assert stats["counters"]["rejections"].get("QueueFull") == counts[(503, "QueueFull")], stats
