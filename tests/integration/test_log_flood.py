"""A print flood in one endpoint, against a live node: the others keep being served.

User output goes to the node's log (SPEC §3.5, §10), and the node serves every
endpoint meanwhile: it logs a bounded share of a pipeline's output per pass of its
event loop and stops reading that pipeline's log pipe until the share is written,
so the flooding pipeline waits on its full pipe, not the node. No line is lost.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Node, write_service, write_tuning

pytestmark = pytest.mark.integration

# Lines the flood prints: seconds of logging for the node (tens of microseconds a line
# through its two handlers), read 64 KiB (thousands of lines) at a time.
FLOOD_LINES = 50_000

FUNCS = {
    "flood": "def flood(n=0):\n    for i in range(n):\n        print('line', i)\n    return n\n",
    "fast": "def fast():\n    return 1\n",
}


def _flood_lines(log: Path) -> list[int]:
    """The numbers of the flood's lines in the server log, in the order logged."""
    pattern = re.compile(r"\[svc/flood pid=\d+\] line (\d+)$")
    numbers = []
    with open(log, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            found = pattern.search(line.rstrip("\n"))
            if found:
                numbers.append(int(found.group(1)))
    return numbers


def test_a_print_flood_neither_stalls_other_endpoints_nor_loses_a_line(node_factory: Any, tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_service(root, "svc", FUNCS)
    for endpoint in FUNCS:
        write_tuning(root, "svc", endpoint, {"pool": {"floor": 1, "cruise": 1, "ceil": 1, "timeout": 30000}})
    node: Node = node_factory(root)

    latencies: list[float] = []
    failures: list[object] = []
    stop = threading.Event()

    def ping() -> None:
        """`fast`, one call after the other on one keep-alive connection."""
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
        try:
            while not stop.is_set():
                started = time.monotonic()
                conn.request("POST", "/public/api/v1/svc/fast/run", b"{}")
                answer = conn.getresponse()
                body = answer.read()
                if answer.status != 200:
                    failures.append((answer.status, body))
                    return
                latencies.append(time.monotonic() - started)
        except OSError as exc:
            failures.append(exc)
        finally:
            conn.close()

    pinger = threading.Thread(target=ping)
    pinger.start()
    try:
        deadline = time.monotonic() + 10
        while len(latencies) < 20 and not failures and time.monotonic() < deadline:
            time.sleep(0.01)  # the pinger is under way
        during = len(latencies)
        flood_started = time.monotonic()
        status, body = node.run("svc", "flood", {"n": FLOOD_LINES}, timeout=60)
        flood_s = time.monotonic() - flood_started
        during = len(latencies) - during
        flood_latencies = latencies[-during:] if during else []
    finally:
        stop.set()
        pinger.join(35)
    assert not failures, failures
    assert status == 200 and body["response"] == FLOOD_LINES, body
    # Calls of `fast` went on during the flood, each answered within a second (they
    # take a millisecond or so; a node busy writing the flood made them wait seconds).
    assert during >= 20, f"{during} calls of fast in the {flood_s:.1f} s of the flood"
    slowest = max(flood_latencies)
    assert slowest < 1.0, f"a call of fast took {slowest:.2f} s during the flood"

    # Every line of the flood reaches the log, once, in order (the last ones may still
    # be on their way when the call returns).
    log = root / "logs" / "lightnode.log"
    deadline = time.monotonic() + 30
    numbers = _flood_lines(log)
    while len(numbers) < FLOOD_LINES and time.monotonic() < deadline:
        time.sleep(0.2)
        numbers = _flood_lines(log)
    assert numbers == list(range(FLOOD_LINES))


def test_a_flood_still_on_its_way_at_shutdown_is_logged_to_the_end(node_factory: Any, tmp_path: Path) -> None:
    """SIGTERM the moment a flood's call is answered: its last lines wait in the node
    (a bounded share logged per pass) and in the pipe; the shutdown logs them all."""
    root = tmp_path / "data"
    write_service(root, "svc", FUNCS)
    write_tuning(root, "svc", "flood", {"pool": {"floor": 1, "cruise": 1, "ceil": 1, "timeout": 30000}})
    node: Node = node_factory(root)
    status, body = node.run("svc", "flood", {"n": FLOOD_LINES}, timeout=60)
    assert status == 200 and body["response"] == FLOOD_LINES, body
    assert node.stop() == 0
    assert _flood_lines(root / "logs" / "lightnode.log") == list(range(FLOOD_LINES))
