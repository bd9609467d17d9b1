"""A node that runs for a long time: what clients and operators do to it many times over
must not grow its memory or its /metrics without bound."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lightnode.services.package import build_package
from tests.conftest import Node, write_service, write_tuning

pytestmark = pytest.mark.integration

BIG = "ANSWER = 'y' * 262144\ndef big():\n    return ANSWER\n"
ECHO = "def echo(x=0):\n    return x\n"


def served(node: Node, service: str, endpoint: str, status: str = "200") -> float:
    _, body = node.get("/metrics")
    labels = f'endpoint="{re.escape(endpoint)}",service="{re.escape(service)}",status="{status}"'
    pattern = r"^lightnode_requests_total\{" + labels + r"\} (\S+)$"
    found = re.search(pattern, body.decode(), re.M)
    return float(found.group(1)) if found else 0.0


def test_a_client_that_pipelines_and_never_reads_runs_a_bounded_number_of_calls(
    node_factory: Callable[..., Node], tmp_path: Path
) -> None:
    # Every request of one read used to go to the pools: a client sending 400 pipelined
    # requests for a 256 KB answer and reading none made the node run all 400 and hold
    # 100 MB of answers for it (five such clients took 2.5 GB with 1 MB answers).
    root = tmp_path / "data"
    write_service(root, "svc", {"big": BIG})
    write_tuning(root, "svc", "big", {"pool": {"floor": 2, "cruise": 2, "ceil": 2, "queue": 1000}})
    node = node_factory(root)
    host, port = node.url.split("//")[1].split(":")
    request = b"POST /public/api/v1/svc/big/run HTTP/1.1\r\nHost: n\r\nContent-Length: 2\r\n\r\n{}"
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.sendall(request * 400)  # one read on the node's side, or a few
        deadline = time.monotonic() + 20
        last, steady_since = -1.0, time.monotonic()
        while time.monotonic() < deadline:  # until the count holds still for 1.5 s
            count = served(node, "svc", "big")
            if count != last:
                last, steady_since = count, time.monotonic()
            elif count > 0 and time.monotonic() - steady_since > 1.5:
                break
            time.sleep(0.1)
        # The window (64) plus what the socket buffers took before the node saw the client stall.
        assert 0 < last < 150, last
    finally:
        sock.close()
    status, answer = node.run("svc", "big")
    assert status == 200 and len(answer["response"]) == 262144


def test_services_deployed_and_deleted_leave_no_series_in_metrics(
    node_factory: Callable[..., Node], tmp_path: Path
) -> None:
    root = tmp_path / "data"
    write_service(root, "keep", {"echo": ECHO})
    node = node_factory(root)
    assert node.run("keep", "echo", {"x": 1})[0] == 200

    def series() -> int:
        _, body = node.get("/metrics")
        return sum(1 for line in body.decode().splitlines() if line.startswith("lightnode_"))

    src = tmp_path / "src"
    src.mkdir()
    (src / "echo.py").write_text(ECHO)
    for i in range(6):
        service_id = f"branch{i}"
        (src / "service.json").write_text(json.dumps({
            "id": service_id,
            "endpoints": [{"id": "echo", "type": "python-function", "code": "echo.py"}],
        }))  # fmt: skip
        package = build_package(src, output=tmp_path / f"{service_id}.zip", generation="v1")
        assert node.request("POST", "/admin/api/services/", json.dumps({"serviceId": service_id}).encode())[0] == 200
        path = f"/admin/api/services/{service_id}/generations/actions/importFromArchive?filePath={package.path}"
        assert node.request("POST", path)[0] == 200
        assert node.request("POST", f"/admin/api/services/{service_id}/actions/switchToNewest")[0] == 200
        for _ in range(2):
            status, answer = node.run(service_id, "echo", {"x": i})
            assert (status, answer["response"]) == (200, i)
        if i == 0:
            with_one = series()
            assert served(node, service_id, "echo") == 2
        assert node.request("DELETE", f"/admin/api/services/{service_id}")[0] == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # its pools drain, then the sweep (1 s) forgets it
        _, body = node.get("/metrics")
        if "branch" not in body.decode():
            break
        time.sleep(0.2)
    _, body = node.get("/metrics")
    assert "branch" not in body.decode()
    assert series() < with_one
    assert served(node, "keep", "echo") == 1  # the service that stays keeps its counters
