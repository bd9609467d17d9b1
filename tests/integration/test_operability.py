"""Operating a live node: health, metrics, query log, server log, drain and lifecycle (SPEC §10, §11)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Node, write_service, write_tuning
from tests.conftest import until as wait_for

pytestmark = pytest.mark.integration

ADD = "def add(a=0, b=0):\n    return {'sum': a + b}\n"
SLOW = "import time\ndef slow(ms=200):\n    time.sleep(ms / 1000)\n    return {'slept': ms}\n"
CRASH = "import os\ndef crash():\n    os._exit(3)\n"
RUN = "/public/api/v1/{}/{}/run"


def write_server(root: Path, settings: dict[str, Any]) -> None:
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "server.json").write_text(json.dumps(settings))


def metric_samples(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = node.get("/metrics")
    assert status == 200, body
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(node: Node, name: str, **labels: str) -> float | None:
    return metric_samples(node).get((name, tuple(sorted(labels.items()))))


def pids_of(node: Node, service: str) -> list[int]:
    return [
        p["pid"] for ep in node.stats(service)["endpoints"] for p in ep["pipelines"] if p["pid"]
    ]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def raw_http(port: int, data: bytes, timeout_s: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def post(service: str, endpoint: str, body: bytes, *, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s" % (
        RUN.format(service, endpoint).encode(),
        len(body),
        extra,
        body,
    )


# ------------------------------------------------------------------ health


def test_health_endpoints_and_the_not_alive_file(node_factory: Any, tmp_path: Path) -> None:
    root = tmp_path / "health"
    write_service(root, "svc", {"add": ADD})
    node = node_factory(root)
    for path in ("/isAlive", "/healthz", "/readyz"):
        assert node.get(path)[0] == 200, path
    (root / "not-alive").touch()
    # One source (the node's poll of the file): once /isAlive says drained, /readyz and
    # /run say so too, at once; and the other way round once the file is gone.
    wait_for(lambda: node.get("/isAlive")[0] == 503, what="/isAlive 503 with not-alive")
    assert node.get("/readyz") == (503, b'{"ready":false,"reason":"not-alive file present"}')
    status, body = node.run("svc", "add", {"a": 1})
    assert (status, body["errorType"]) == (503, "ShuttingDown")  # a 503: the function did not run
    assert node.get("/isAlive") == (503, b'{"alive":false,"reason":"not-alive file present"}')
    assert node.get("/healthz")[0] == 503
    (root / "not-alive").unlink()
    wait_for(lambda: node.get("/isAlive")[0] == 200, what="/isAlive back to 200")
    assert node.get("/readyz")[0] == 200
    assert node.run("svc", "add", {"a": 1})[0] == 200
    assert node.get("/healthz")[0] == 200


def test_isalive_readyz_and_run_never_disagree_on_the_drain_file(node_factory: Any, tmp_path: Path) -> None:
    """Probes right after each change of the file: whatever /isAlive answers, /readyz and /run agree."""
    root = tmp_path / "onesource"
    write_service(root, "svc", {"add": ADD})
    node = node_factory(root)
    for _ in range(3):
        (root / "not-alive").touch()
        while node.get("/isAlive")[0] == 200:  # the poll has not seen it yet: all serve
            assert node.get("/readyz")[0] == 200 or node.get("/isAlive")[0] == 503
        assert node.get("/readyz")[0] == 503
        assert node.run("svc", "add", {"a": 1})[0] == 503
        (root / "not-alive").unlink()
        while node.get("/isAlive")[0] == 503:
            assert node.get("/readyz")[0] == 503 or node.get("/isAlive")[0] == 200
        assert node.get("/readyz")[0] == 200
        assert node.run("svc", "add", {"a": 1})[0] == 200


def test_a_live_change_of_server_json_is_checked_and_said_to_wait_for_a_restart(
    node_factory: Any, tmp_path: Path
) -> None:
    root = tmp_path / "serverjson"
    write_service(root, "svc", {"add": ADD})
    write_server(root, {"limits": {"max_body_bytes": 4096}})
    node = node_factory(root)
    errors = metric(node, "lightnode_config_errors_total") or 0.0
    (root / "config" / "server.json").write_text('{"limits": {"max_body_bytes": "big"}}')
    wait_for(lambda: "refused: the next start would fail" in node.log(), what="the refusal logged")
    wait_for(lambda: (metric(node, "lightnode_config_errors_total") or 0.0) == errors + 1, what="counted")
    write_server(root, {"limits": {"max_body_bytes": 100}})
    wait_for(lambda: "changed: its settings apply at the next start" in node.log(), what="the change logged")
    assert node.run("svc", "add", {"a": 1, "b": 10**150})[0] == 200  # 170 bytes: still max_body_bytes 4096


def test_readyz_waits_for_floor_and_counts_load_failures_as_settled(
    node_factory: Any, tmp_path: Path
) -> None:
    root = tmp_path / "ready"
    slow_load = "import time\ntime.sleep(1.5)\ndef f():\n    return 1\n"
    write_service(root, "svc", {"f": slow_load, "broken": "raise ImportError('nope')\n"})
    write_tuning(root, "svc", "f", {"pool": {"floor": 2, "cruise": 2, "ceil": 2}})
    node = node_factory(root, start=False)
    node.start(wait_ready=False)
    assert node.get("/isAlive")[0] == 200
    assert node.get("/readyz") == (503, b'{"ready":false,"reason":"pools starting"}')
    wait_for(lambda: node.get("/readyz")[0] == 200, what="ready after the slow load")
    assert node.stats("svc")["endpoints"][0]["pipelinesByState"]["idle"] == 2


def test_readyz_stays_ready_when_a_pipeline_dies_or_the_floor_rises(
    node_factory: Any, tmp_path: Path
) -> None:
    """SPEC §10: 200 *once* every endpoint reached its floor. Below the floor later (a
    pipeline replaced, a floor raised by one ConfigMap on every pod) /run still answers:
    a 503 would take every node out of its load balancer at once."""
    root = tmp_path / "ready-after"
    slow_load = "import time\ntime.sleep(1.5)\ndef f():\n    return 1\n"
    write_service(root, "svc", {"f": slow_load})
    write_tuning(root, "svc", "f", {"pool": {"floor": 1, "cruise": 1, "ceil": 4}})
    node = node_factory(root)
    assert node.get("/readyz")[0] == 200
    os.kill(pids_of(node, "svc")[0], signal.SIGKILL)
    write_tuning(root, "svc", "f", {"pool": {"floor": 3, "cruise": 3, "ceil": 4}})
    wait_for(lambda: node.stats("svc")["endpoints"][0]["pipelinesByState"].get("starting", 0) >= 2,
             what="the successor and the raised floor loading")
    assert node.get("/readyz") == (200, b'{"ready":true}')
    assert node.run("svc", "f", {})[0] == 200


# ----------------------------------------------------------------- metrics


def test_metrics_series_and_counters_across_reload_and_switch(
    node_factory: Any, tmp_path: Path
) -> None:
    root = tmp_path / "metrics"
    write_service(root, "svc", {"add": ADD, "crash": CRASH})
    node = node_factory(root)
    for _ in range(3):
        assert node.run("svc", "add", {"a": 1})[0] == 200
    assert node.run("svc", "add", {"zzz": 1})[0] == 400
    assert node.run("svc", "crash")[0] == 500
    assert node.run("nope", "add")[0] == 404
    (root / "config" / "services" / "svc").mkdir(parents=True, exist_ok=True)
    (root / "config" / "services" / "svc" / "add.json").write_text("{not json")
    wait_for(
        lambda: metric(node, "lightnode_config_errors_total") == 1, what="config error counted"
    )
    assert metric(node, "lightnode_query_log_dropped_lines_total") == 0.0
    labels = {"service": "svc", "endpoint": "add"}
    samples = metric_samples(node)
    names = {name for name, _ in samples}
    for name in (
        "lightnode_requests_total",
        "lightnode_request_duration_seconds_bucket",
        "lightnode_queue_wait_seconds_bucket",
        "lightnode_queue_length",
        "lightnode_staged_requests",
        "lightnode_pipelines",
        "lightnode_pipeline_starts_total",
        "lightnode_pipeline_crashes_total",
        "lightnode_pipeline_retirements_total",
        "lightnode_config_errors_total",
    ):
        assert name in names, name
    assert metric(node, "lightnode_requests_total", status="200", **labels) == 3
    assert metric(node, "lightnode_requests_total", status="400", **labels) == 1
    assert metric(node, "lightnode_request_duration_seconds_count", **labels) == 4
    assert metric(node, "lightnode_pipelines", state="idle", **labels) == 1
    assert metric(node, "lightnode_pipeline_crashes_total", service="svc", endpoint="crash") == 1
    assert (
        metric(
            node,
            "lightnode_rejections_total",
            service="svc",
            endpoint="crash",
            reason="WorkerCrashed",
        )
        == 1
    )
    assert (
        metric(node, "lightnode_requests_total", service="_other", endpoint="_other", status="404")
        == 1
    )

    # Hot reload: new limits, same pool, nothing resets.
    write_tuning(root, "svc", "add", {"pool": {"floor": 2, "cruise": 2, "ceil": 3}})
    wait_for(
        lambda: metric(node, "lightnode_pipelines", state="idle", **labels) == 2, what="floor 2"
    )
    assert metric(node, "lightnode_pipeline_starts_total", **labels) == 2
    assert metric(node, "lightnode_requests_total", status="200", **labels) == 3

    # Generation switch: v1's pools drain and leave; their counts stay.
    starts_before = metric(node, "lightnode_pipeline_starts_total", **labels)
    write_service(root, "svc", {"add": ADD, "crash": CRASH}, generation="v2")
    wait_for(
        lambda: {e["generation"] for e in node.stats("svc")["endpoints"]} == {"v2"},
        what="switch to v2",
    )
    wait_for(
        lambda: metric(node, "lightnode_pipelines", state="stopping", **labels) == 0, what="v1 gone"
    )
    time.sleep(1.2)  # one sweep after v1 has left the registry
    assert (
        metric(node, "lightnode_pipeline_starts_total", **labels) == starts_before + 2
    )  # v1 + v2's floor
    assert metric(node, "lightnode_pipeline_crashes_total", service="svc", endpoint="crash") == 1
    assert metric(node, "lightnode_requests_total", status="200", **labels) == 3
    assert node.run("svc", "add", {"a": 1})[0] == 200
    assert metric(node, "lightnode_requests_total", status="200", **labels) == 4
    assert metric(node, "lightnode_pipelines", state="idle", **labels) == 2  # only v2's pipelines
    # /metrics and the query log saw the same requests, across the switch.
    assert assert_log_matches_metrics(node, root, "svc", "add") == {200: 4, 400: 1}
    assert assert_log_matches_metrics(node, root, "svc", "crash") == {500: 1}


def test_metrics_public_false_still_answers_loopback(node_factory: Any, tmp_path: Path) -> None:
    root = tmp_path / "private"
    write_service(root, "svc", {"add": ADD})
    write_server(root, {"metrics": {"public": False}})
    node = node_factory(root)
    status, headers, body = node.request("GET", "/metrics")
    assert status == 200 and b"lightnode_config_errors_total" in body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")


# --------------------------------------------------------------- query log


def read_query_log(root: Path, count: int) -> list[dict[str, Any]]:
    path = root / "logs" / "queries.log"
    return wait_for(
        lambda: (
            path.exists()
            and len(lines := path.read_text().splitlines()) >= count
            and [json.loads(line) for line in lines]
        ),
        what=f"{count} query log lines",
    )


def test_query_log_lines_and_params(node_factory: Any, tmp_path: Path) -> None:
    root = tmp_path / "qlog"
    write_service(root, "svc", {"add": ADD})
    write_service(root, "priv", {"add": ADD}, extra={"auth": {"public": False}})
    write_server(root, {"logging": {"log_params": True}})
    node = node_factory(root)
    node.run("svc", "add", {"a": 2, "b": 3}, headers={"X-Request-Id": "client-id-1"})
    node.request("POST", RUN.format("svc", "add"), b"not json")
    node.request("PUT", RUN.format("svc", "add"), b"{}")
    node.request("GET", RUN.format("svc", "add") + "?a=4&b=6")
    node.request("GET", RUN.format("priv", "add") + "?a=5&b=y")  # 401: the params it carried
    first, second, third, fourth, fifth = read_query_log(root, 5)
    assert (fourth["status"], fourth["params"]) == (200, {"a": 4, "b": 6})
    assert (fifth["status"], fifth["errorType"], fifth["params"]) == (401, "Unauthorized", {"a": 5, "b": "y"})
    assert first["requestId"] == "client-id-1" and first["params"] == {"a": 2, "b": 3}
    assert (first["serviceId"], first["endpointId"], first["generation"], first["status"]) == (
        "svc",
        "add",
        "v1",
        200,
    )
    assert first["errorType"] is None and first["client"] == "127.0.0.1"
    assert first["total"] >= first["execution"] >= first["functionInternal"] > 0
    assert (second["status"], second["errorType"], second["params"]) == (
        400,
        "BadRequest",
        "not json",
    )
    assert (third["status"], third["errorType"], third["generation"]) == (
        405,
        "MethodNotAllowed",
        "",
    )


def test_query_log_off_and_params_off(node_factory: Any, tmp_path: Path) -> None:
    off = tmp_path / "off"
    write_service(off, "svc", {"add": ADD})
    write_server(off, {"logging": {"query_log": False}})
    plain = tmp_path / "plain"
    write_service(plain, "svc", {"add": ADD})
    n1, n2 = node_factory(off), node_factory(plain)
    for n in (n1, n2):
        assert n.run("svc", "add", {"secret": 1})[0] == 400
    (entry,) = read_query_log(plain, 1)
    assert "params" not in entry
    n1.stop()
    assert not (off / "logs" / "queries.log").exists()


def test_query_log_is_flushed_at_shutdown_and_rotated(node_factory: Any, tmp_path: Path) -> None:
    root = tmp_path / "rotate"
    write_service(root, "svc", {"add": ADD})
    write_server(root, {"logging": {"query_log_max_bytes": 3000, "query_log_backups": 2}})
    write_tuning(root, "svc", "add", {"pool": {"queue": 100}})  # the 60 pipelined requests all wait
    node = node_factory(root)
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        for i in range(60):
            sock.sendall(post("svc", "add", b'{"a": %d}' % i, close=i == 59))
        answers = read_all(sock)
    assert answers.count(b"HTTP/1.1 200") == 60
    assert node.stop() == 0
    logs = root / "logs"
    assert sorted(p.name for p in logs.glob("queries.log*")) == [
        "queries.log",
        "queries.log.1",
        "queries.log.2",
    ]
    assert all(p.stat().st_size <= 3000 for p in logs.glob("queries.log*"))
    last = json.loads((logs / "queries.log").read_text().splitlines()[-1])
    assert last["status"] == 200  # the last answer before SIGTERM made it to disk


def log_by_id(root: Path, ids: set[str]) -> dict[str, dict[str, Any]]:
    """The query log's lines of these request ids, once they are all written."""
    path = root / "logs" / "queries.log"

    def found() -> dict[str, dict[str, Any]] | None:
        if not path.exists():
            return None
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        by_id = {line["requestId"]: line for line in lines if line["requestId"] in ids}
        return by_id if set(by_id) == ids else None

    return wait_for(found, what=f"query log lines of {sorted(ids)}")  # type: ignore[no-any-return]


def assert_log_matches_metrics(node: Node, root: Path, service: str, endpoint: str) -> dict[int, int]:
    """lightnode_requests_total of an endpoint, by status, is its query log's count: one each.

    Both are fed the same record; the log reaches the disk up to a flush interval later.
    """

    def both() -> tuple[dict[int, int], dict[int, int]]:
        path = root / "logs" / "queries.log"
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        logged: dict[int, int] = {}
        for line in lines:
            if (line["serviceId"], line["endpointId"]) == (service, endpoint):
                logged[line["status"]] = logged.get(line["status"], 0) + 1
        counted = {
            int(dict(labels)["status"]): int(value)
            for (name, labels), value in metric_samples(node).items()
            if name == "lightnode_requests_total"
            and dict(labels)["service"] == service and dict(labels)["endpoint"] == endpoint
        }  # fmt: skip
        return logged, counted

    try:
        wait_for(lambda: (pair := both())[0] == pair[1], 3, what="the query log to catch up")
    except AssertionError:
        pass  # the comparison below says how they differ
    logged, counted = both()
    assert counted == logged
    labels = {"service": service, "endpoint": endpoint}
    assert metric(node, "lightnode_request_duration_seconds_count", **labels) == sum(logged.values())
    return logged


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a killed client or a proxy's abort does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_every_run_request_is_logged_and_counted_even_when_no_answer_is_sent(
    node_factory: Any, tmp_path: Path
) -> None:
    """SPEC §10: one line per /run request. A client gone before its answer (a reset, or
    a close while queued) is 499 ClientGone, with its wait and execution so far; a body
    over max_body_bytes is 413 PayloadTooLarge, refused before the app. /metrics counts
    the same, and the stats' `served` counts the calls that ran."""
    root = tmp_path / "gone"
    write_service(root, "svc", {"slow": SLOW})
    write_tuning(root, "svc", "slow", {"pool": {"floor": 1, "cruise": 1, "ceil": 1, "queue": 8, "timeout": 20000}})
    write_server(root, {"limits": {"max_body_bytes": 1000}, "logging": {"log_params": True}})
    node = node_factory(root)

    def send(request_id: str, body: bytes) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\nX-Request-Id: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (RUN.format("svc", "slow").encode(), request_id.encode(), len(body), body)
        )
        return sock

    def endpoint() -> dict[str, Any]:
        return node.stats("svc")["endpoints"][0]  # type: ignore[no-any-return]

    running = send("gone-running", b'{"ms": 1500}')
    wait_for(lambda: endpoint()["pipelinesByState"]["busy"] == 1, what="busy")
    closed = send("gone-closed", b'{"ms": 1}')
    reset_queued = send("gone-reset", b'{"ms": 2}')
    wait_for(lambda: endpoint()["queueLength"] == 2, what="two queued")
    time.sleep(0.1)  # they have waited a while
    closed.shutdown(socket.SHUT_WR)  # a normal close while queued: it leaves the queue
    assert read_all(closed) == b""
    closed.close()
    reset(reset_queued)
    wait_for(lambda: endpoint()["queueLength"] == 0, what="queue emptied")
    time.sleep(0.2)  # it has run a while
    reset(running)  # while it runs: it finishes, unanswered
    wait_for(lambda: endpoint()["pipelinesByState"]["idle"] == 1, 5, what="the pipeline idle again")
    assert node.run("svc", "slow", {"ms": 1}, headers={"X-Request-Id": "served"})[0] == 200
    status, _, raw = node.request(
        "POST", RUN.format("svc", "slow"), b'{"x": "' + b"y" * 2000 + b'"}', headers={"X-Request-Id": "too-big"}
    )
    assert (status, json.loads(raw)["errorType"]) == (413, "PayloadTooLarge")

    lines = log_by_id(root, {"gone-running", "gone-closed", "gone-reset", "served", "too-big"})
    for request_id in ("gone-running", "gone-closed", "gone-reset"):
        line = lines[request_id]
        assert (line["status"], line["errorType"]) == (499, "ClientGone"), line
        assert (line["serviceId"], line["endpointId"], line["generation"]) == ("svc", "slow", "v1")
        assert line["total"] >= line["wait"] + line["execution"]
    assert lines["gone-running"]["execution"] >= 150_000 and lines["gone-running"]["params"] == {"ms": 1500}
    for request_id in ("gone-closed", "gone-reset"):
        assert lines[request_id]["execution"] == 0 and lines[request_id]["wait"] >= 50_000
    assert (lines["served"]["status"], lines["served"]["errorType"]) == (200, None)
    big = lines["too-big"]
    assert (big["status"], big["errorType"], big["serviceId"], big["endpointId"]) == (
        413, "PayloadTooLarge", "svc", "slow",
    )  # fmt: skip

    assert assert_log_matches_metrics(node, root, "svc", "slow") == {499: 3, 200: 1, 413: 1}
    reasons = {"service": "svc", "endpoint": "slow"}
    assert metric(node, "lightnode_rejections_total", reason="PayloadTooLarge", **reasons) == 1
    assert metric(node, "lightnode_rejections_total", reason="ClientGone", **reasons) is None  # not the node's
    counters = endpoint()["counters"]
    ran = sum(1 for line in lines.values() if line["execution"] > 0)
    assert counters["served"] == ran == 2  # the running one finished; the queued ones never ran
    assert "ClientGone" not in counters["rejections"]


# -------------------------------------------------------------- server log


def test_json_server_log_carries_request_ids(node_factory: Any, tmp_path: Path) -> None:
    root = tmp_path / "jsonlog"
    write_service(root, "svc", {"crash": CRASH})
    write_server(root, {"logging": {"format": "json"}})
    node = node_factory(root)
    status, body = node.run("svc", "crash", headers={"X-Request-Id": "crash-req-7"})
    assert (status, body["errorType"]) == (500, "WorkerCrashed")
    path = root / "logs" / "lightnode.log"
    entries = wait_for(
        lambda: [
            json.loads(line) for line in path.read_text().splitlines() if "crash-req-7" in line
        ],
        what="the crash's log line",
    )
    assert entries[0]["requestId"] == "crash-req-7" and entries[0]["level"] == "WARNING"
    assert "WorkerCrashed" in entries[0]["message"]
    for line in path.read_text().splitlines():  # every line is one JSON object
        json.loads(line)


# --------------------------------------------------------------- lifecycle


def open_partial(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    return sock


def test_sigterm_drains_running_and_queued_then_exits(node_factory: Any, tmp_path: Path) -> None:
    root = tmp_path / "drain"
    write_service(root, "svc", {"slow": SLOW})
    write_tuning(
        root,
        "svc",
        "slow",
        {"pool": {"floor": 1, "cruise": 1, "ceil": 1, "queue": 16, "timeout": 20000}},
    )
    node = node_factory(root)
    pid = pids_of(node, "svc")[0]
    results: list[tuple[int, Any]] = []
    threads = [
        threading.Thread(target=lambda: results.append(node.run("svc", "slow", {"ms": 400})))
        for _ in range(3)
    ]  # one runs, two wait in the queue
    for thread in threads:
        thread.start()
    wait_for(lambda: node.stats("svc")["endpoints"][0]["queueLength"] == 2, what="two queued")
    # Connections open before SIGTERM: one mid-request, one with a request running.
    ready_probe = open_partial(node.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
    run_late = open_partial(node.port, b"POST /public/api/v1/svc/slow/run HTTP/1.1\r\nHost: x\r\n")
    busy = open_partial(node.port, post("svc", "slow", b'{"ms": 300}'))
    time.sleep(0.2)
    started = time.monotonic()
    node.signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", node.port), timeout=2).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(refused, what="the listening socket to close")
    ready_probe.sendall(b"\r\n")
    answer = read_all(ready_probe)
    assert answer.startswith(b"HTTP/1.1 503") and b"draining" in answer
    run_late.sendall(b"Content-Length: 2\r\n\r\n{}")
    answer = read_all(run_late)
    assert answer.startswith(b"HTTP/1.1 503") and b'"errorType":"ShuttingDown"' in answer
    assert b"\r\nconnection: close\r\n" in answer.lower()
    busy.sendall(post("svc", "slow", b"{}"))  # a new request on a connection already open
    answer = read_all(busy)
    assert answer.startswith(b"HTTP/1.1 200") and b'"slept":300' in answer
    second = answer.split(b"HTTP/1.1 ")[2]
    assert (
        second.startswith(b"503")
        and b"ShuttingDown" in second
        and b"connection: close" in second.lower()
    )
    for thread in threads:
        thread.join(10)
    assert [status for status, _ in results] == [200, 200, 200]  # running and queued both finished
    assert node.proc is not None and node.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    assert not alive(pid)
    for sock in (ready_probe, run_late, busy):
        sock.close()


def test_grace_period_over_kills_pipelines_and_exits_zero(
    node_factory: Any, tmp_path: Path
) -> None:
    root = tmp_path / "grace"
    stuck_exit = (
        "import atexit, time\natexit.register(time.sleep, 60)\ndef stuck():\n    return 1\n"
    )
    write_service(root, "svc", {"slow": SLOW, "stuck": stuck_exit})
    write_server(root, {"shutdown": {"grace_ms": 800}})
    node = node_factory(root)
    pids = pids_of(node, "svc")
    assert len(pids) == 2
    assert node.run("svc", "stuck")[0] == 200
    results: list[tuple[int, Any]] = []
    thread = threading.Thread(target=lambda: results.append(node.run("svc", "slow", {"ms": 10000})))
    thread.start()
    wait_for(
        lambda: any(e["pipelinesByState"]["busy"] for e in node.stats("svc")["endpoints"]),
        what="busy",
    )
    started = time.monotonic()
    node.signal(signal.SIGTERM)
    assert node.proc is not None and node.proc.wait(10) == 0
    assert time.monotonic() - started < 3
    thread.join(5)
    assert results and results[0][0] == 500 and results[0][1]["errorType"] == "WorkerCrashed"
    wait_for(lambda: not any(alive(p) for p in pids), 2, what="no pipeline left")


def test_sigkill_of_the_node_leaves_no_worker(node_factory: Any, tmp_path: Path) -> None:
    root = tmp_path / "orphans"
    write_service(root, "svc", {"add": ADD, "slow": SLOW})
    write_tuning(root, "svc", "add", {"pool": {"floor": 2, "cruise": 2, "ceil": 2}})
    node = node_factory(root)
    pids = pids_of(node, "svc")
    assert len(pids) == 3 and all(alive(p) for p in pids)

    def call_slow() -> None:
        try:
            node.request("POST", RUN.format("svc", "slow"), b'{"ms": 5000}', timeout=10)
        except OSError:
            pass  # the node died under it: expected

    thread = threading.Thread(target=call_slow)
    thread.start()
    time.sleep(0.3)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGKILL)  # the node only, not its group
    node.proc.wait(5)
    wait_for(
        lambda: not any(alive(p) for p in pids), 2, what="workers gone after SIGKILL of the node"
    )
    thread.join(10)


def test_ctrl_c_drains_before_workers_stop(node_factory: Any, tmp_path: Path) -> None:
    root = tmp_path / "ctrlc"
    write_service(root, "svc", {"slow": SLOW})
    node = node_factory(root)
    (pid,) = pids_of(node, "svc")
    assert os.getsid(pid) != os.getsid(node.proc.pid)  # type: ignore[union-attr]
    os.kill(pid, signal.SIGINT)  # a stray SIGINT does not kill a pipeline either
    time.sleep(0.2)
    assert alive(pid)
    results: list[tuple[int, Any]] = []
    thread = threading.Thread(target=lambda: results.append(node.run("svc", "slow", {"ms": 700})))
    thread.start()
    wait_for(
        lambda: node.stats("svc")["endpoints"][0]["pipelinesByState"]["busy"] == 1, what="busy"
    )
    assert node.proc is not None
    os.killpg(node.proc.pid, signal.SIGINT)  # what the terminal sends to its foreground group
    thread.join(10)
    assert results and results[0][0] == 200 and results[0][1]["response"] == {"slept": 700}
    assert node.proc.wait(10) == 0
    assert not alive(pid)
