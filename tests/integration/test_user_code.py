"""User code that misbehaves, against a live node: forks, exceptions that are not Exception,
results ujson would write its own way (SPEC §3.2, §3.4: every call gets its own answer,
a user exception never kills its pipeline)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Node, process_gone, write_service, write_tuning

pytestmark = pytest.mark.integration

FUNCS = {
    # Forks on its first call; parent and child both return.
    "forkret": (
        "import os\nFORKED = []\n"
        "def forkret(i):\n"
        "    if not FORKED:\n        FORKED.append(os.fork())\n"
        "    return {'i': i, 'pid': os.getpid()}\n"
    ),
    # Forks in its initialization code; parent and child both go on.
    "impfork": "import os\nos.fork()\ndef impfork():\n    return os.getpid()\n",
    # Leaves a sleeping child behind.
    "leak": (
        "import os, time\n"
        "def leak():\n"
        "    child = os.fork()\n"
        "    if child == 0:\n        time.sleep(600)\n        os._exit(0)\n"
        "    return child\n"
    ),
    "exits": "import os, sys\ndef exits(code=0):\n    if code >= 0:\n        sys.exit(code)\n    return os.getpid()\n",
    "raw": (
        "class Raw:\n    def __json__(self):\n        return '1}, \"injected\": true, \"x\": {\"y\": 2'\n"
        "def raw():\n    return {'a': Raw()}\n"
    ),
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("usercode") / "data"
    write_service(root, "svc", FUNCS)
    for endpoint in FUNCS:
        write_tuning(root, "svc", endpoint, {"pool": {"floor": 1, "cruise": 1, "ceil": 1, "timeout": 10000}})
    n = Node(root)
    n.start()
    yield n
    n.stop()


def _pipelined(node: Node, bodies: list[bytes], path: str) -> list[tuple[int, dict[str, object]]]:
    """Send every request at once on one keep-alive connection; read the answers in order."""
    request = b"".join(
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
        for body in bodies
    )
    answers = []
    with socket.create_connection(("127.0.0.1", node.port), timeout=20) as sock:
        sock.sendall(request)
        stream = sock.makefile("rb")
        for _ in bodies:
            status = int(stream.readline().split()[1])
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answers.append((status, json.loads(stream.read(length))))
    return answers


def test_a_function_that_forks_answers_each_call_once_with_its_own_result(node: Node) -> None:
    bodies = [json.dumps({"i": i}).encode() for i in range(8)]
    answers = _pipelined(node, bodies, "/public/api/v1/svc/forkret/run")
    assert [status for status, _ in answers] == [200] * 8
    assert [body["response"]["i"] for _, body in answers] == list(range(8))  # type: ignore[index]
    assert len({body["response"]["pid"] for _, body in answers}) == 1  # type: ignore[index]
    status, body = node.run("svc", "forkret", {"i": 99})  # and the endpoint goes on serving
    assert (status, body["response"]["i"]) == (200, 99)


def test_initialization_code_that_forks_gives_a_serving_endpoint(node: Node) -> None:
    for _ in range(3):
        status, body = node.run("svc", "impfork", {}, timeout=10)
        assert status == 200 and isinstance(body["response"], int)
    log = node.log()
    assert "a process forked by user code returned to the pipeline's loop: it exits" in log
    assert "said READY a second time" not in log and "InternalError" not in log


def test_a_child_left_running_by_the_function_dies_with_its_pipeline(node_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "data"
    write_service(root, "svc", {"leak": FUNCS["leak"]})
    n = node_factory(root)
    status, body = n.run("svc", "leak", {})
    assert status == 200
    child = body["response"]
    os.kill(child, 0)  # alive while its pipeline runs
    assert n.stop() == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if process_gone(child):
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        raise AssertionError(f"pid {child}, forked by the function, outlived the node")


def test_sys_exit_in_the_function_is_a_function_error_and_the_pipeline_stays(node: Node) -> None:
    _, body = node.run("svc", "exits", {"code": -1})
    pid = body["response"]
    status, body = node.run("svc", "exits", {"code": 3})
    assert (status, body["errorType"]) == (500, "FunctionError")
    assert body["message"] == "Failed to run function : <class 'SystemExit'> : 3"
    assert node.run("svc", "exits", {"code": -1})[1]["response"] == pid  # the same pipeline


def test_an_object_with_a_json_method_is_not_pasted_into_the_answer(node: Node) -> None:
    status, body = node.run("svc", "raw", {})
    assert (status, body["errorType"]) == (500, "ResultNotSerializable")
    assert body["message"] == "Result is not JSON-serializable: raw.Raw at $.a"
