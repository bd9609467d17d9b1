"""SPEC §10/§11 on a live node: the health probes while draining, and SIGHUP."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import until, write_service, write_tuning
from tests.integration.test_operability import SLOW, metric, open_partial, pids_of, read_all

pytestmark = pytest.mark.integration

ADD = "def add(a=0, b=0):\n    return {'sum': a + b}\n"


def test_isalive_and_healthz_answer_503_while_draining(node_factory: Any, tmp_path: Path) -> None:
    """SPEC §10: /isAlive and /healthz are 503 "while draining", not only while not-alive exists."""
    root = tmp_path / "drainprobe"
    write_service(root, "svc", {"slow": SLOW})
    node = node_factory(root)
    results: list[tuple[int, Any]] = []
    running = threading.Thread(target=lambda: results.append(node.run("svc", "slow", {"ms": 1500})))
    running.start()
    until(lambda: node.stats("svc")["endpoints"][0]["pipelinesByState"]["busy"] == 1, what="busy")
    probes = {  # open before SIGTERM: the listening socket closes then
        path: open_partial(node.port, b"GET %s HTTP/1.1\r\nHost: x\r\n" % path) for path in (b"/isAlive", b"/healthz")
    }
    node.signal(signal.SIGTERM)
    until(lambda: "shutting down" in node.log(), what="the drain started")
    answers = {}
    for path, sock in probes.items():
        with sock:
            sock.sendall(b"\r\n")
            answers[path] = read_all(sock)
    for path, answer in answers.items():
        assert answer.startswith(b"HTTP/1.1 503") and b'"reason":"draining"' in answer, (path, answer)
    running.join(10)
    assert results and results[0][0] == 200  # the request running at SIGTERM still finished
    assert node.proc is not None and node.proc.wait(10) == 0


def test_sighup_rereads_the_configuration_and_the_node_keeps_serving(node_factory: Any, tmp_path: Path) -> None:
    """SIGHUP (README: re-reads tuning, keys.json and the services' states) never stops the node,
    and with nothing changed it restarts no pipeline and resets no counter."""
    root = tmp_path / "hup"
    write_service(root, "svc", {"add": ADD})
    node = node_factory(root)
    assert node.run("svc", "add", {"a": 1})[0] == 200
    (pid,) = pids_of(node, "svc")
    for count in (1, 2):
        node.signal(signal.SIGHUP)
        until(lambda n=count: node.log().count("SIGHUP: re-reading configuration") == n, what=f"SIGHUP {count} read")
        assert node.proc is not None and node.proc.poll() is None, node.log()
        status, body = node.run("svc", "add", {"a": 1, "b": 2})
        assert (status, body["response"]) == (200, {"sum": 3})
    assert pids_of(node, "svc") == [pid]
    labels = {"service": "svc", "endpoint": "add"}
    assert metric(node, "lightnode_pipeline_starts_total", **labels) == 1
    assert metric(node, "lightnode_requests_total", status="200", **labels) == 3
    write_tuning(root, "svc", "add", {"pool": {"floor": 2, "cruise": 2}})
    node.signal(signal.SIGHUP)
    until(lambda: node.stats("svc")["endpoints"][0]["pipelinesByState"]["idle"] == 2, what="floor 2 in force")
    with socket.create_connection(("127.0.0.1", node.port), timeout=5):
        pass  # still listening
    assert node.stop() == 0
