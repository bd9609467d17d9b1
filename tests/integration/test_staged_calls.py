"""Prefetch with real pipelines: a request staged behind a call that hangs is taken back.

pool/machine.py, "Taking a staged request back": a staged request carries a start-by;
past it, with the call before it still unanswered, it waits again and another pipeline
serves it (SPEC §4 rules 2, 5 and 6), instead of waiting for the hang to end.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import write_service, write_tuning

pytestmark = pytest.mark.integration

HANG = "import os, time\ndef f(hang=0):\n    time.sleep(hang)\n    return os.getpid()\n"
HANG_S = 5


def test_requests_staged_behind_a_hung_call_are_served_by_the_free_pipeline(
    node_factory: Any, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    write_service(root, "s", {"f": HANG})
    tuning = {"pool": {"floor": 2, "cruise": 2, "ceil": 2, "queue": 100, "timeout": 2000}}
    write_tuning(root, "s", "f", tuning)
    node = node_factory(root)
    address = urlsplit(node.url)
    stop = threading.Event()
    hang_sent = threading.Event()
    lock = threading.Lock()
    during_hang: list[tuple[float, int]] = []  # (seconds taken, status) of calls sent during the hang

    def client() -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        try:
            while not stop.is_set():
                started = time.monotonic()
                connection.request("POST", "/public/api/v1/s/f/run", b"{}")
                answer = connection.getresponse()
                answer.read()
                if hang_sent.is_set():
                    with lock:
                        during_hang.append((time.monotonic() - started, answer.status))
        finally:
            connection.close()

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    hung: dict[str, Any] = {}

    def hang() -> None:
        hung["answer"] = node.run("s", "f", {"hang": HANG_S}, timeout=30)

    try:
        time.sleep(1.0)  # the mean run time is known: calls are staged
        hanging = threading.Thread(target=hang)
        hanging.start()
        hang_sent.set()
        time.sleep(2.5)  # half the hang
    finally:
        stop.set()
        for thread in clients:
            thread.join(30)
    hanging.join(30)
    assert hung["answer"][0] == 200
    assert len(during_hang) > 20, "the free pipeline served the clients meanwhile"
    assert {status for _, status in during_hang} == {200}
    # Before the fix, each request staged behind the hung call waited for it (5 s; a
    # request that waited 2 s in the queue would have got 503 QueueTimeout instead).
    slowest = max(seconds for seconds, _ in during_hang)
    assert slowest < 1.5, f"a request waited {slowest:.2f} s behind the hung call"
    # No request is still staged on the hung pipeline: none will wait for its end.
    stats = json.loads(node.get("/admin/api/services/s/stats")[1])
    endpoint = next(e for e in stats["endpoints"] if e["endpointId"] == "f")
    assert endpoint["stagedRequests"] == 0 and endpoint["counters"]["prefetched"] > 0
