"""SPEC §5 on a real node: what a tuning change does to a running pool, a deleted file, SIGHUP.

Each test checks one sentence of §5 that the unit tests of the pool machine and the
watcher cover piecewise, end to end: watcher -> daemon -> registry -> pool -> pipelines.
"""

from __future__ import annotations

import json
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Node, until, write_service, write_tuning
from tests.integration.test_pool_live import SLEEP, _pool_node
from tests.integration.test_pool_live import _endpoint as endpoint_stats

pytestmark = pytest.mark.integration


def _endpoint(node: Node) -> dict[str, Any]:
    return endpoint_stats(node, "p", "sleep")


def _call(node: Node, payload: dict[str, Any]) -> tuple[int, Any]:
    status, _, raw = node.request(
        "POST", "/public/api/v1/p/sleep/run", json.dumps(payload).encode(), timeout=60
    )
    return status, json.loads(raw)


def _config_errors(node: Node) -> float:
    _, body = node.get("/metrics")
    found = re.search(rb"^lightnode_config_errors_total ([0-9.e+]+)$", body, re.MULTILINE)
    assert found, body[:2000]
    return float(found.group(1))


def test_a_deleted_tuning_file_means_defaults(node_factory: Any, tmp_path: Path) -> None:
    node = _pool_node(node_factory, tmp_path, {"pool": {"floor": 1, "cruise": 1, "ceil": 2, "queue": 3}})
    path = node.data_dir / "config" / "services" / "p" / "sleep.json"
    assert _endpoint(node)["config"]["pool"]["ceil"] == 2
    path.unlink()
    ep = until(lambda: (e := _endpoint(node)) and e["configSource"] == "defaults" and e, what="defaults")
    assert ep["config"] == {
        "pool": {"floor": 1, "ceil": 8, "cruise": 2, "queue": 16, "timeout": 10000,
                 "scale_down_delay": 0, "prefetch": 1},
        "limits": {"exec_timeout": 0, "max_requests": 0, "max_rss_mb": 0},
    }  # fmt: skip
    # In force, not only shown: 4 concurrent calls grow the pool to 4 (ceil 2 would stop at 2).
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_call, node, {"ms": 2000, "tag": i}) for i in range(4)]
        until(lambda: _endpoint(node)["allocated"] == 4, timeout_s=20, what="4 pipelines")
        assert {f.result()[0] for f in futures} == {200}


def test_sighup_rereads_every_tuning_file(node_factory: Any, tmp_path: Path) -> None:
    """SIGHUP re-reads the files even when none changed: a good one is applied again,
    a refused one is refused (and counted) again."""
    root = tmp_path / "hup"
    write_service(root, "p", {"sleep": SLEEP, "other": SLEEP.replace("def sleep", "def other")})
    write_tuning(root, "p", "sleep", {"pool": {"ceil": 3}})
    node = node_factory(root)
    bad = root / "config" / "services" / "p" / "other.json"
    bad.write_text('{"pool": {"ceil": 0}}')
    until(lambda: _config_errors(node) == 1.0, what="the refused file counted")
    applied = node.log().count("p/sleep: tuning applied from")
    assert applied >= 1
    node.signal(signal.SIGHUP)
    until(lambda: _config_errors(node) == 2.0, what="the refused file refused again")
    until(lambda: node.log().count("p/sleep: tuning applied from") == applied + 1,
          what="the good file applied again")  # fmt: skip
    assert _endpoint(node)["config"]["pool"]["ceil"] == 3
    assert node.proc is not None and node.proc.poll() is None
    assert node.run("p", "sleep", {"ms": 1})[0] == 200


def test_a_lower_ceil_stops_busy_excess_when_done_and_keeps_the_queue(
    node_factory: Any, tmp_path: Path
) -> None:
    """§5: "a lower ceil stops idle excess pipelines now and busy ones when they finish
    ... queued requests stay queued" (also when the new ceil leaves less room than they
    take): nothing fails, nothing is cut short."""
    node = _pool_node(node_factory, tmp_path, {"pool": {"floor": 1, "cruise": 1, "ceil": 3, "queue": 4}})
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(_call, node, {"ms": 3000, "tag": i}) for i in range(3)]
        until(lambda: _endpoint(node)["pipelinesByState"].get("busy") == 3, timeout_s=20, what="3 busy")
        futures += [pool.submit(_call, node, {"ms": 10, "tag": i}) for i in (3, 4)]
        until(lambda: _endpoint(node)["queueLength"] == 2, what="2 queued")
        write_tuning(node.data_dir, "p", "sleep", {"pool": {"floor": 1, "cruise": 1, "ceil": 1, "queue": 0}})
        ep = until(lambda: (e := _endpoint(node)) and e["config"]["pool"]["ceil"] == 1 and e, what="ceil 1")
        # The running calls go on and the queued ones stay, though queue is now 0.
        assert ep["pipelinesByState"]["busy"] == 3 and ep["queueLength"] == 2, ep
        results = [f.result() for f in futures]
    assert [status for status, _ in results] == [200] * 5, results
    assert sorted(body["response"]["tag"] for _, body in results) == [0, 1, 2, 3, 4]
    until(lambda: _endpoint(node)["allocated"] == 1, what="down to the new ceil")


def test_a_lower_ceil_stops_idle_excess_now_and_a_higher_floor_starts_pipelines(
    node_factory: Any, tmp_path: Path
) -> None:
    node = _pool_node(node_factory, tmp_path, {"pool": {"floor": 1, "cruise": 1, "ceil": 4}})
    assert _endpoint(node)["allocated"] == 1
    # A higher floor starts pipelines at once, with no request.
    write_tuning(node.data_dir, "p", "sleep", {"pool": {"floor": 3, "cruise": 3, "ceil": 4}})
    until(lambda: _endpoint(node)["pipelinesByState"].get("idle") == 3, what="3 idle pipelines")
    # A lower ceil stops idle excess at once (floor and cruise lowered with it).
    write_tuning(node.data_dir, "p", "sleep", {"pool": {"floor": 1, "cruise": 1, "ceil": 1}})
    until(lambda: _endpoint(node)["allocated"] == 1, what="idle excess stopped")
    stop = threading.Event()
    statuses: list[int] = []

    def load() -> None:
        while not stop.is_set():
            statuses.append(_call(node, {"ms": 5})[0])

    thread = threading.Thread(target=load)
    thread.start()
    try:
        until(lambda: len(statuses) >= 5, what="calls served")
    finally:
        stop.set()
        thread.join(30)
    assert set(statuses) == {200}
    assert _endpoint(node)["allocated"] == 1


def test_scale_down_delay_keeps_surplus_pipelines_idle_then_stops_them_unprompted(
    node_factory: Any, tmp_path: Path
) -> None:
    """§4 rule 7 / §5 `pool.scale_down_delay`: a surplus pipeline stops after that many ms
    idle, on the pool's own timer (no request comes to trigger it)."""
    node = _pool_node(node_factory, tmp_path,
                 {"pool": {"floor": 1, "cruise": 1, "ceil": 3, "scale_down_delay": 5000}})  # fmt: skip
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_call, node, {"ms": 1000, "tag": i}) for i in range(3)]
        until(lambda: _endpoint(node)["allocated"] == 3, timeout_s=20, what="grown to 3")
        assert [f.result()[0] for f in futures] == [200] * 3
    ep = _endpoint(node)
    # Every pipeline freed within about a second of the others: seconds to go.
    assert ep["allocated"] == 3 and ep["pipelinesByState"]["idle"] == 3, ep
    until(lambda: _endpoint(node)["allocated"] == 1, timeout_s=20, what="the surplus stopped")


def test_code_over_max_rss_as_soon_as_it_loads_is_not_restarted_in_a_loop(
    node_factory: Any, tmp_path: Path
) -> None:
    """limits.max_rss_mb below what the code needs to load: retiring its pipeline would
    start a successor just as large, once a second, forever. It serves on, and the log
    says why it is not retired."""
    big = (
        "import os\nblob = bytearray(80 * 1024 * 1024)\n"
        "for i in range(0, len(blob), 4096):\n    blob[i] = 1\n"
        "def sleep(ms=0, tag=None):\n    return {'tag': tag, 'pid': os.getpid()}\n"
    )
    root = tmp_path / "big"
    write_service(root, "p", {"sleep": big})
    write_tuning(root, "p", "sleep", {"pool": {"floor": 1, "cruise": 1, "ceil": 2}, "limits": {"max_rss_mb": 40}})
    node = node_factory(root)
    until(lambda: "as soon as it loaded" in node.log(), what="the warning")
    status, body = _call(node, {"tag": 1})
    assert status == 200
    pid = body["response"]["pid"]
    threading.Event().wait(3.5)  # three more RSS checks (one a second)
    ep = _endpoint(node)
    assert ep["counters"]["starts"] == 1 and ep["counters"]["retirements"] == 0, ep["counters"]
    assert _call(node, {"tag": 2})[1]["response"]["pid"] == pid
