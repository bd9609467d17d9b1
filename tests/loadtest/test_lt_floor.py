"""The floor reference server (loadtest/peers/floor.py), started for real on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest import node
from loadtest.peers.running import http_status

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def floor_port(tmp_path: Path) -> Iterator[int]:
    port = node.free_port()
    log_path = tmp_path / "floor.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "loadtest.peers.floor", "--port", str(port)], cwd=REPO,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while http_status(port, "POST", "/public/api/v1/bench/add/run", b"{}") != 200:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the floor server did not answer"
            time.sleep(0.1)
        yield port
    finally:
        process.kill()
        process.wait(10)


def _post(port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_the_floor_answers_the_lightnode_envelope(floor_port: int) -> None:
    status, headers, body = _post(floor_port, "/public/api/v1/bench/add/run", b'{"a": 2, "b": 5}')
    assert status == 200
    answer = json.loads(body)
    assert answer["response"] == {"sum": 7}
    assert answer["apiContext"] == {
        "serviceId": "bench",
        "endpointId": "add",
        "serviceGeneration": "peer",
    }
    assert headers["dss-apinode-api-version"] == "1" and headers["x-request-id"]
    assert _post(floor_port, "/public/api/v1/bench/nope/run", b"{}")[0] == 404


def test_the_floor_survives_a_client_that_leaves_before_its_answer(floor_port: int) -> None:
    request = (
        b"POST /public/api/v1/bench/spin/run HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    )
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", floor_port)) as sock:
            sock.sendall(request)  # and gone before the answer
    for _ in range(4):  # the same endpoint's pipelines still answer, each its own client
        status, _, body = _post(floor_port, "/public/api/v1/bench/spin/run", b'{"iterations": 10}')
        assert status == 200 and json.loads(body)["response"] == {"iterations": 10, "total": 285}
