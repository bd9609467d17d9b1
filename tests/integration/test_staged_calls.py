"""Prefetch with real pipelines: a request staged behind a call that hangs is taken back.

pool/machine.py, "Taking a staged request back": a staged request carries a start-by;
past it, with the call before it still unanswered, it waits again and another pipeline
serves it (SPEC §4 rules 2, 5 and 6), instead of waiting for the hang to end.
"""

from __future__ import annotations

import http.client
import json
import socket
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


def test_a_staged_request_whose_client_closed_never_runs_when_taken_back(
    node_factory: Any, tmp_path: Path
) -> None:
    # SPEC §4 rule 9: a request whose client disconnected leaves the queue. One staged
    # behind a long call, its client closing at once (FIN), was taken back at its
    # start-by, waited in the queue for a client long gone, ran, and was logged 200.
    root = tmp_path / "data"
    marks = tmp_path / "ran.txt"
    code = (
        "import time\n"
        f"MARKS = open({str(marks)!r}, 'a', buffering=1)\n"
        "def f(tag='', t=0.0):\n    MARKS.write(tag + '\\n')\n    time.sleep(t)\n    return tag\n"
    )
    write_service(root, "s", {"f": code})
    write_tuning(root, "s", "f", {"pool": {"floor": 1, "cruise": 1, "ceil": 1, "queue": 64, "timeout": 20000}})
    node = node_factory(root)
    for i in range(50):  # a mean run time of about 1 ms: the next request is staged
        assert node.run("s", "f", {"tag": f"warm{i}"})[0] == 200
    address = urlsplit(node.url)
    long_call = socket.create_connection((address.hostname, address.port))
    gone = [f"gone{k}" for k in range(5)]
    try:
        long_call.sendall(_post(b'{"tag": "long", "t": 1.0}', "long"))
        time.sleep(0.05)
        for tag in gone:
            with socket.create_connection((address.hostname, address.port)) as client:
                client.sendall(_post(json.dumps({"tag": tag}).encode(), tag))
                client.shutdown(socket.SHUT_WR)
        answer = b""
        while b'"response":"long"' not in answer:
            chunk = long_call.recv(65536)
            assert chunk, answer
            answer += chunk
    finally:
        long_call.close()
    time.sleep(1.0)
    assert [tag for tag in marks.read_text().split() if tag in gone] == []
    log = root / "logs" / "queries.log"
    lines = {}
    for _ in range(50):
        lines = {r["requestId"]: r for r in map(json.loads, log.read_text().splitlines()) if r["requestId"] in gone}
        if len(lines) == len(gone):
            break
        time.sleep(0.1)
    assert sorted((r["requestId"], r["status"], r["errorType"]) for r in lines.values()) == [
        (tag, 499, "ClientGone") for tag in gone
    ]


def _post(body: bytes, request_id: str) -> bytes:
    return (
        b"POST /public/api/v1/s/f/run HTTP/1.1\r\nHost: x\r\nX-Request-Id: %s\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (request_id.encode(), len(body), body)
    )
