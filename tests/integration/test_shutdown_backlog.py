"""SIGTERM with connections waiting in the listening socket's backlog: each gets an answer.

The node is stopped (SIGSTOP) while clients connect and send their requests, so that
the kernel holds the connections in the backlog; SIGTERM is then handled before the
loop accepts them. Closing the listening socket used to reset them (18 of 20 here):
requests their clients had sent were lost, and a load balancer answers those 502.
Now each is accepted and answered 503 ShuttingDown (the function did not run: safe
to send again), or served if it was accepted before the signal.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_service

pytestmark = pytest.mark.integration

REQUEST = b"POST /public/api/v1/svc/add/run HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n{\"a\": 1}"


def _answer(client: socket.socket) -> tuple[int, dict[str, Any]] | str:
    data = b""
    try:
        while chunk := client.recv(65536):
            data += chunk
    except ConnectionResetError:
        return "reset"
    if not data:
        return "closed without an answer"
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_sigterm_answers_the_connections_waiting_in_the_backlog(node_factory: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_service(data, "svc", {"add": "def add(a=0, b=0):\n    return {'sum': a + b}\n"})
    node = node_factory(data)
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGSTOP)
    clients = []
    try:
        for _ in range(20):
            client = socket.create_connection(("127.0.0.1", node.port), timeout=20)
            client.sendall(REQUEST)
            clients.append(client)
        os.kill(node.proc.pid, signal.SIGTERM)
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)
    answers = [_answer(client) for client in clients]
    for client in clients:
        client.close()
    assert all(isinstance(answer, tuple) for answer in answers), answers
    for status, body in answers:  # type: ignore[misc]
        assert (status, body.get("errorType")) in {(200, None), (503, "ShuttingDown")}, body
    assert node.proc.wait(timeout=30) == 0
    assert "connection(s) of the listening backlog answered, not reset" in node.log()


def test_a_request_on_a_connection_idle_at_sigterm_gets_503_shutting_down(
    node_factory: Any, tmp_path: Path
) -> None:
    # SPEC §11: new requests on already-open connections get 503 ShuttingDown with
    # `Connection: close`. An idle keep-alive connection was closed at the signal, so a
    # request sent on it during the drain got no answer at all (the official client
    # raised ConnectionError, not ShuttingDown).
    data = tmp_path / "data"
    slow = "import time\ndef slow(s=0):\n    time.sleep(s)\n    return {'slept': s}\n"
    write_service(data, "svc", {"add": "def add(a=0, b=0):\n    return {'sum': a + b}\n", "slow": slow})
    node = node_factory(data)
    idle = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    idle.sendall(REQUEST)
    first = idle.recv(65536)
    assert first.startswith(b"HTTP/1.1 200"), first  # a keep-alive answer: now idle
    running = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    body = b'{"s": 1.5}'
    running.sendall(b"POST /public/api/v1/svc/slow/run HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    try:
        time.sleep(0.3)  # the slow call runs: the drain lasts
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        idle.sendall(REQUEST)
        answer = _answer(idle)
        assert isinstance(answer, tuple), answer
        assert answer[0] == 503 and answer[1]["errorType"] == "ShuttingDown"
        drained = _answer(running)
        assert isinstance(drained, tuple) and drained[0] == 200  # the running call finished
        assert node.proc.wait(10) == 0
    finally:
        idle.close()
        running.close()
