"""The real daemon end to end: SPEC §3 calling convention, envelope and error rows."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Node, until, write_service, write_tuning

pytestmark = pytest.mark.integration

FUNCS = {
    "add": "def add(a, b=0):\n    return {'sum': a + b}\n",
    "kw": "def api_py_function(z=0, **data):\n    return {'z': z, 'data': data}\n",
    "boom": (
        "class Teapot(Exception):\n    http_status_code = 418\n"
        "def boom(kind='value'):\n"
        "    if kind == 'teapot':\n        raise Teapot('short and stout')\n"
        "    raise ValueError('bad value')\n"
    ),
    "weird": "def weird(what):\n    import datetime, decimal\n"
             "    if what == 'none':\n        return None\n"
             "    if what == 'object':\n        return {'a': {'b': [1, 2, object()]}}\n"
             "    return {'d': datetime.date(2026, 1, 2), 'x': decimal.Decimal('1.5'), 's': {3}, 't': (1, 2)}\n",
    "crash": "import os\ndef crash(code=7):\n    os._exit(code)\n",
    "env": (
        "import os, sys\nimport helper\n"
        "def env():\n"
        "    print('hello from user code', flush=True)\n"
        "    keys = ['LIGHTNODE_SERVICE', 'LIGHTNODE_ENDPOINT', 'LIGHTNODE_GENERATION', 'DKU_CURRENT_APISERVICE',\n"
        "            'DKU_CURRENT_APISERVICE_GENERATION', 'MODEL_NAME']\n"
        "    return {'env': {k: os.environ.get(k) for k in keys}, 'port': os.environ.get('DKU_APIMAIN_PORT'),\n"
        "            'cwd': os.getcwd(), 'folders': folders, 'helper': helper.VALUE}\n"
    ),
    "broken": "raise RuntimeError('model file missing')\ndef broken():\n    return 1\n",
    "slow": "import time\ndef slow(ms=200):\n    time.sleep(ms / 1000)\n    return {'slept': ms}\n",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Node:
    root = tmp_path_factory.mktemp("serving") / "data"
    gen = write_service(
        root,
        "svc",
        FUNCS,
        endpoint_extra={
            "env": {"env": {"MODEL_NAME": "v2"}, "folders": ["model"]},
            "kw": {"function": "api_py_function"},
        },
    )
    (gen / "helper.py").write_text("VALUE = 42\n")
    (gen / "model").mkdir()
    write_service(root, "off", {"add": FUNCS["add"]}, enabled=False)
    n = Node(root)
    n.start()
    yield n
    n.stop()


def test_sample_service_answers_on_a_fresh_data_dir(node_factory) -> None:  # type: ignore[no-untyped-def]
    fresh = node_factory()
    status, headers, raw = fresh.request(
        "POST", "/public/api/v1/demo/quote/run", json.dumps({"age": 35, "days": 344, "price": 600}).encode()
    )
    body = json.loads(raw)
    assert status == 200, body
    assert body["response"]["quote"] == 64.1
    assert set(body["timing"]) == {"wait", "execution", "functionInternal"}
    assert body["apiContext"] == {"serviceId": "demo", "endpointId": "quote", "serviceGeneration": "v1"}
    assert headers["Content-Type"] == "application/json"
    assert headers["DSS-APINode-API-Version"] == "1"
    assert headers["X-Request-Id"]


def test_keyword_binding_and_defaults(node: Node) -> None:
    status, body = node.run("svc", "add", {"a": 2, "b": 3})
    assert (status, body["response"]) == (200, {"sum": 5})
    status, body = node.run("svc", "add", {"a": 2})
    assert (status, body["response"]) == (200, {"sum": 2})


def test_invalid_parameters_names_missing_unexpected_and_signature(node: Node) -> None:
    status, body = node.run("svc", "add", {"b": 1, "c": 2})
    assert status == 400 and body["errorType"] == "InvalidParameters"
    assert "missing: 'a'" in body["message"] and "unexpected: 'c'" in body["message"]
    assert "add(a, b=0)" in body["message"]


def test_var_keyword_receives_extras(node: Node) -> None:
    status, body = node.run("svc", "kw", {"z": 1, "x": 2})
    assert (status, body["response"]) == (200, {"z": 1, "data": {"x": 2}})


def test_function_error_wording_and_custom_status(node: Node) -> None:
    status, body = node.run("svc", "boom", {})
    assert status == 500
    assert body["errorType"] == "FunctionError"
    assert body["message"] == "Failed to run function : <class 'ValueError'> : bad value"
    assert "Traceback" not in body["detailedMessage"]
    status, body = node.run("svc", "boom", {"kind": "teapot"})
    assert (status, body["errorType"]) == (418, "FunctionError")
    # The traceback the answer leaves out is in the node's log, tagged with the endpoint.
    until(lambda: "raise ValueError('bad value')" in node.log(), what="the traceback in the log")
    line = next(line for line in node.log().splitlines() if "a call raised; its traceback follows" in line)
    assert "svc/boom" in line


def test_conversions_and_empty_response(node: Node) -> None:
    status, body = node.run("svc", "weird", {"what": "convert"})
    assert (status, body["response"]) == (200, {"d": "2026-01-02", "x": 1.5, "s": [3], "t": [1, 2]})
    status, body = node.run("svc", "weird", {"what": "none"})
    assert status == 200 and body["responseIsEmpty"] is True and "response" not in body
    status, body = node.run("svc", "weird", {"what": "object"})
    assert (status, body["errorType"]) == (500, "ResultNotSerializable")
    assert "$.a.b[2]" in body["message"]


def test_bad_json_bodies(node: Node) -> None:
    for raw in (b"[1, 2]", b"{not json", b'"text"'):
        status, _, answer = node.request("POST", "/public/api/v1/svc/add/run", raw)
        body = json.loads(answer)
        assert (status, body["errorType"]) == (400, "BadRequest")
        assert body["message"] == "Could not parse a JsonObject from request body"


def test_empty_body_is_empty_object(node: Node) -> None:
    status, _, raw = node.request("POST", "/public/api/v1/svc/kw/run", b"")
    assert (status, json.loads(raw)["response"]) == (200, {"z": 0, "data": {}})


def test_get_with_query_parameters(node: Node) -> None:
    status, raw = node.get("/public/api/v1/svc/kw/run?z=3&flag=true&name=x&n=null")
    assert (status, json.loads(raw)["response"]) == (200, {"z": 3, "data": {"flag": True, "name": "x", "n": None}})


def test_get_query_types_json_number_literals_only(node: Node) -> None:
    status, raw = node.get("/public/api/v1/svc/kw/run?zip=01234&u=1_000&sp=%2042%20&f=-2.5e1&full=%EF%BC%91")
    assert (status, json.loads(raw)["response"]["data"]) == (
        200, {"zip": "01234", "u": "1_000", "sp": " 42 ", "f": -25.0, "full": "\uff11"}
    )


def test_not_found_rows(node: Node) -> None:
    cases = [
        ("/public/api/v1/nope/add/run", "Service nope does not exist"),
        ("/public/api/v1/svc/nope/run", "Endpoint does not exist: nope"),
        ("/public/api/v1/..%2f..%2fetc/add/run", None),
        ("/nothing/here", None),
    ]
    for path, message in cases:
        status, _, raw = node.request("POST", path, b"{}")
        body = json.loads(raw)
        assert (status, body["errorType"]) == (404, "NotFound"), path
        if message:
            assert body["message"] == message


def test_method_not_allowed_has_allow(node: Node) -> None:
    status, headers, raw = node.request("PUT", "/public/api/v1/svc/add/run", b"{}")
    assert (status, json.loads(raw)["errorType"]) == (405, "MethodNotAllowed")
    assert headers["Allow"] == "GET, POST"


def test_disabled_service_is_not_active(node: Node) -> None:
    status, body = node.run("off", "add", {"a": 1})
    assert (status, body["errorType"]) == (503, "ServiceNotActive")


def test_load_failure_is_endpoint_unavailable(node: Node) -> None:
    status, body = node.run("svc", "broken", {})
    assert (status, body["errorType"]) == (503, "EndpointUnavailable")
    assert "model file missing" in body["message"]


def test_worker_crash_answers_500_and_is_replaced(node: Node) -> None:
    status, body = node.run("svc", "crash", {"code": 7})
    assert (status, body["errorType"]) == (500, "WorkerCrashed")
    assert "exit code 7" in body["message"]
    status, body = node.run("svc", "add", {"a": 1})
    assert status == 200


def test_environment_folders_cwd_and_print(node: Node) -> None:
    status, body = node.run("svc", "env", {})
    assert status == 200, body
    result = body["response"]
    assert result["env"] == {
        "LIGHTNODE_SERVICE": "svc", "LIGHTNODE_ENDPOINT": "env", "LIGHTNODE_GENERATION": "v1",
        "DKU_CURRENT_APISERVICE": "svc", "DKU_CURRENT_APISERVICE_GENERATION": "v1", "MODEL_NAME": "v2",
    }
    assert result["port"] == str(node.port)
    assert result["cwd"].endswith("services/svc/generations/v1")
    assert result["folders"] == [result["cwd"] + "/model"]
    assert result["helper"] == 42
    deadline = time.monotonic() + 5
    while "hello from user code" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(line for line in node.log().splitlines() if "hello from user code" in line)
    assert "svc/env" in line and "pid=" in line


def test_user_output_is_logged_with_the_request_id_of_the_call_that_wrote_it(node: Node) -> None:
    status, _, _ = node.request(
        "POST", "/public/api/v1/svc/env/run", b"{}", headers={"X-Request-Id": "trace-print-42"}
    )
    assert status == 200
    deadline = time.monotonic() + 5
    while "[req trace-print-42]" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    tagged = [line for line in node.log().splitlines() if "[req trace-print-42]" in line]
    assert len(tagged) == 1 and "hello from user code" in tagged[0], tagged
    assert "svc/env" in tagged[0] and "\\x01" not in tagged[0]


def test_request_id_echoed_or_generated(node: Node) -> None:
    _, headers, _ = node.request("POST", "/public/api/v1/svc/add/run", b'{"a":1}', headers={"X-Request-Id": "abc-123"})
    assert headers["X-Request-Id"] == "abc-123"
    _, h1, _ = node.request("POST", "/public/api/v1/svc/add/run", b'{"a":1}')
    _, h2, _ = node.request("POST", "/public/api/v1/svc/add/run", b'{"a":1}')
    assert h1["X-Request-Id"] != h2["X-Request-Id"]


def test_ping_and_is_alive(node: Node) -> None:
    assert node.get("/public/api/v1/ping") == (200, b"{}")
    assert node.get("/isAlive")[0] == 200
    assert node.get("/healthz")[0] == 200


def _raw(node: Node, data: bytes, *, read_until_close: bool = True, expect: int = 1) -> bytes:
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks += chunk
            if not read_until_close and chunks.count(b"HTTP/1.1 ") >= expect and chunks.endswith(b"}"):
                break
        return chunks


def test_keep_alive_and_pipelining_answer_in_order(node: Node) -> None:
    requests = b"".join(
        b"POST /public/api/v1/svc/%s/run HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (ep, len(body), body)
        for ep, body in [(b"slow", b'{"ms": 300}'), (b"add", b'{"a": 1}'), (b"add", b'{"a": 2}')]
    )
    data = _raw(node, requests + b"GET /public/api/v1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 4
    assert b'"slept":300' in answers[0]
    assert b'"sum":1' in answers[1] and b'"sum":2' in answers[2]
    assert answers[3].endswith(b"{}")


def test_chunked_request_body(node: Node) -> None:
    data = _raw(
        node,
        b"POST /public/api/v1/svc/add/run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"4\r\n{\"a\"\r\n5\r\n: 40}\r\n0\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 200") and b'"sum":40' in data


def test_malformed_http_gets_400_and_close_and_node_keeps_serving(node: Node) -> None:
    data = _raw(node, b"GARBAGE\x00 / HTTP/1.1\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400")
    assert node.run("svc", "add", {"a": 1})[0] == 200


def test_oversized_body_and_headers(node: Node) -> None:
    data = _raw(node, b"POST /public/api/v1/svc/add/run HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 413")
    data = _raw(node, b"GET /isAlive HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 431")


def test_official_client_run_function_and_exception(node: Node) -> None:
    dataikuapi = pytest.importorskip("dataikuapi")
    from dataikuapi.utils import DataikuException

    client = dataikuapi.APINodeClient(node.url, "svc")
    answer = client.run_function("add", a=20, b=22)
    assert answer["response"] == {"sum": 42}
    with pytest.raises(DataikuException, match="FunctionError: Failed to run function"):
        client.run_function("boom")
    with pytest.raises(DataikuException, match="InvalidParameters"):
        client.run_function("add", nope=1)


def test_sigterm_finishes_running_requests_and_exits_zero(node_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "drain"
    write_service(root, "svc", {"slow": FUNCS["slow"]})
    n = node_factory(root)
    results: list[tuple[int, object]] = []
    thread = threading.Thread(target=lambda: results.append(n.run("svc", "slow", {"ms": 800})))
    thread.start()
    # Running, not merely sent: a request that reaches a draining node is refused.
    until(lambda: n.stats("svc")["endpoints"][0]["pipelinesByState"].get("busy") == 1, what="busy")
    n.signal(signal.SIGTERM)
    thread.join(10)
    assert results and results[0][0] == 200
    assert n.proc is not None and n.proc.wait(10) == 0
    assert not (root / "run" / "lightnode.addr").exists()


# -------------------------------------------- clients that leave, drain (SPEC §4 rule 9, §11)

# Appends its tag to RUNS_FILE when it starts, so a test knows what ran and when.
RECORD = (
    "import os, time\n"
    "def record(tag='', ms=0, fail=False):\n"
    "    with open(os.environ['RUNS_FILE'], 'a') as runs:\n"
    "        runs.write(tag + '\\n')\n"
    "    time.sleep(ms / 1000)\n"
    "    if fail:\n"
    "        raise ValueError('failed ' + tag)\n"
    "    return {'tag': tag}\n"
)


def _record_node(node_factory, tmp_path: Path, queue: int) -> tuple[Node, Path]:  # type: ignore[no-untyped-def]
    """A node whose endpoint svc/record runs one call at a time and records each run."""
    root = tmp_path / "data"
    runs = tmp_path / "runs.log"
    write_service(root, "svc", {"record": RECORD}, endpoint_extra={"record": {"env": {"RUNS_FILE": str(runs)}}})
    pool = {"floor": 1, "cruise": 1, "ceil": 1, "queue": queue, "timeout": 30000}
    write_tuning(root, "svc", "record", {"pool": pool})
    return node_factory(root), runs


def _call(payload: dict[str, object]) -> bytes:
    body = json.dumps(payload).encode()
    return b"POST /public/api/v1/svc/record/run HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body
    )


def _runs(runs: Path) -> list[str]:
    return runs.read_text().split() if runs.exists() else []


def _wait_for(what: str, condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _queue_length(node: Node) -> int:
    (endpoint,) = node.stats("svc")["endpoints"]
    return int(endpoint["queueLength"])


def _answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The (status, headers, body) of each answer in `data` (Content-Length framed)."""
    answers = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        answers.append((int(lines[0].split()[1]), headers, data[:length]))
        data = data[length:]
    return answers


def _read_to_close(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_client_that_closes_its_connection_takes_its_queued_calls_out(node_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A plain close() (FIN, what any HTTP client or nginx does on abort) is a client
    # gone like a reset: its queued calls leave the queue and never run.
    node, runs = _record_node(node_factory, tmp_path, queue=4)
    with socket.create_connection(("127.0.0.1", node.port), timeout=20) as blocker:
        blocker.sendall(_call({"tag": "blocker", "ms": 3000}))
        _wait_for("the blocker to run", lambda: _runs(runs) == ["blocker"])
        gone = [socket.create_connection(("127.0.0.1", node.port), timeout=10) for _ in range(4)]
        for index, sock in enumerate(gone):
            sock.sendall(_call({"tag": f"gone{index}"}))
        _wait_for("a full queue", lambda: _queue_length(node) == 4)
        for sock in gone:
            sock.close()
        _wait_for("the queue to empty", lambda: _queue_length(node) == 0)
        # The blocker's client half-closes too, but its call runs: it is not cancelled,
        # and its answer is written while the socket takes it.
        blocker.shutdown(socket.SHUT_WR)
        status, body = node.run("svc", "record", {"tag": "after"})  # the queue has room again
        assert (status, body["response"]) == (200, {"tag": "after"})
        ((status, headers, raw),) = _answers(_read_to_close(blocker))
        assert (status, json.loads(raw)["response"]) == (200, {"tag": "blocker"})
        assert headers["connection"] == "close"
    assert _runs(runs) == ["blocker", "after"]
    assert "Traceback" not in node.log()


def test_sigterm_answers_a_call_pipelined_behind_a_failing_one(node_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node, runs = _record_node(node_factory, tmp_path, queue=10)
    with socket.create_connection(("127.0.0.1", node.port), timeout=20) as sock:
        sock.sendall(_call({"tag": "X", "ms": 1000, "fail": True}) + _call({"tag": "Y", "ms": 100}))
        _wait_for("X to run", lambda: _runs(runs) == ["X"])
        node.signal(signal.SIGTERM)  # X runs, Y waits behind it
        answers = _answers(_read_to_close(sock))
    assert [(status, json.loads(raw).get("errorType")) for status, _, raw in answers] == [
        (500, "FunctionError"), (200, None)
    ]
    assert [headers.get("connection") for _, headers, _ in answers] == [None, "close"]
    assert _runs(runs) == ["X", "Y"]
    assert node.proc is not None and node.proc.wait(15) == 0


def test_sigterm_last_answer_of_a_keep_alive_connection_says_close(node_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A keep-alive client reuses its connection unless told: the answer that the node
    # closes after carries `Connection: close`.
    import http.client

    node, runs = _record_node(node_factory, tmp_path, queue=10)
    client = http.client.HTTPConnection("127.0.0.1", node.port, timeout=20)
    try:
        client.request("POST", "/public/api/v1/svc/record/run", json.dumps({"tag": "A", "ms": 800}))
        _wait_for("A to run", lambda: _runs(runs) == ["A"])
        node.signal(signal.SIGTERM)
        answer = client.getresponse()
        assert (answer.status, json.loads(answer.read())["response"]) == (200, {"tag": "A"})
        assert answer.getheader("connection") == "close" and answer.will_close
    finally:
        client.close()
    assert node.proc is not None and node.proc.wait(15) == 0
