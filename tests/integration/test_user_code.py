"""User code that misbehaves, against a live node: forks, exceptions that are not Exception,
results ujson would write its own way or that change or raise while converted, a callable
without a name, a default value of 100,000 entries, a module named like one the runtime
imported (SPEC §3.2, §3.4: every call gets its own answer, a user exception never kills
its pipeline)."""

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
    # Returns a dict that a thread of its own keeps changing (for a moment after each call),
    # or one whose items() raises.
    "changing": (
        "import os, threading, time\nSHARED = {}\nUNTIL = [0.0]\nTHREAD = []\n"
        "def _change():\n    i = 0\n    while time.monotonic() < UNTIL[0]:\n"
        "        SHARED[str(i % 2000)] = [i, {'k': i}]\n"
        "        if i % 2000 == 1999:\n            SHARED.clear()\n        i += 1\n"
        "class Broken(dict):\n    def items(self):\n        raise KeyError('gone')\n"
        "def changing(broken=False):\n"
        "    if broken:\n        return {'b': Broken(a=1)}\n"
        "    UNTIL[0] = time.monotonic() + 0.2\n"
        "    if not THREAD or not THREAD[-1].is_alive():\n"
        "        THREAD.append(threading.Thread(target=_change, daemon=True))\n        THREAD[-1].start()\n"
        "    return {'pid': os.getpid(), 'shared': SHARED, 'k': {1: SHARED}}\n"
    ),
    # The function is a functools.partial, or an instance of a class with __call__.
    "partial": "import functools\ndef _scale(factor, x):\n    return factor * x\nscaled = functools.partial(_scale, 3)\n",
    "instance": "class Model:\n    def __call__(self, x):\n        return x + 1\nmodel = Model()\n",
    # A lookup table as a default value.
    "table": "TABLE = {str(i): i for i in range(100000)}\ndef table(key, table=TABLE):\n    return table.get(key)\n",
}
FUNCTIONS = {"partial": "scaled", "instance": "model"}
# Endpoint modules named like a module that the runtime imported before them.
SHADOWING = {
    name: "import logging, datetime\nlogging.getLogger(__name__).info('loaded')\n"
    "def ep():\n    return {'name': __name__, 'day': datetime.date(2020, 1, 2)}\n"
    for name in ("time", "re", "collections")
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("usercode") / "data"
    write_service(root, "svc", FUNCS, endpoint_extra={e: {"function": f} for e, f in FUNCTIONS.items()})
    for endpoint in FUNCS:
        write_tuning(root, "svc", endpoint, {"pool": {"floor": 1, "cruise": 1, "ceil": 1, "timeout": 10000}})
    for name, source in SHADOWING.items():  # a service each: one's module would shadow another's
        write_service(root, f"shadow-{name}", {name: source}, endpoint_extra={name: {"function": "ep"}})
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


def test_a_result_changed_or_broken_while_converted_is_answered_and_the_pipeline_stays(node: Node) -> None:
    """User code that runs while the result is converted, or a thread changing it meanwhile,
    once ended the pipeline: 500 WorkerCrashed, and a cold start for the next request."""
    pids = set()
    for _ in range(40):
        status, body = node.run("svc", "changing", {})
        if status == 200:
            pids.add(body["response"]["pid"])
        else:  # the dict changed while read: named, not a crash
            assert (status, body["errorType"]) == (500, "ResultNotSerializable"), body
            assert "during iteration" in body["message"]  # "changed size", or "keys changed"
    status, body = node.run("svc", "changing", {"broken": True})
    assert (status, body["errorType"]) == (500, "ResultNotSerializable")
    assert body["message"] == (
        "Result is not JSON-serializable: changing.Broken at $.b (converting it raised KeyError: 'gone')"
    )
    for _ in range(100):  # the thread may be changing the dict again: a later call reads it
        status, body = node.run("svc", "changing", {})
        if status == 200:
            pids.add(body["response"]["pid"])
            break
    assert len(pids) == 1  # one pipeline served them all
    endpoints = node.stats("svc")["endpoints"]
    assert next(e["counters"] for e in endpoints if e["endpointId"] == "changing")["crashes"] == 0


def test_a_partial_or_a_callable_instance_serves_as_the_function(node: Node) -> None:
    assert node.run("svc", "partial", {"x": 14})[1]["response"] == 42
    assert node.run("svc", "instance", {"x": 41})[1]["response"] == 42
    status, body = node.run("svc", "instance", {"y": 1})
    assert (status, body["message"]) == (400, "Invalid parameters for Model(x): missing: 'x'; unexpected: 'y'")


def test_a_large_default_value_is_cut_short_in_the_signature(node: Node) -> None:
    assert node.run("svc", "table", {"key": "7"})[1]["response"] == 7
    status, body = node.run("svc", "table", {"x": 1})
    assert status == 400
    assert body["message"] == (
        "Invalid parameters for table(key, table={'0': 0, '1': 1, '10': 10, '100': 100, ...}):"
        " missing: 'key'; unexpected: 'x'"
    )


@pytest.mark.parametrize("name", sorted(SHADOWING))
def test_an_endpoint_module_named_like_a_module_the_runtime_imported_serves(node: Node, name: str) -> None:
    status, body = node.run(f"shadow-{name}", name, {})
    assert (status, body.get("response")) == (200, {"name": name, "day": "2020-01-02"}), body
