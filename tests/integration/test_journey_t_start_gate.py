"""Journey T: an operator with many endpoints, through the node-wide start gate.

A few CPU-bound endpoint inits hold every start slot of the gate (scheduler/start_gate.py)
for a couple of seconds, so the pipelines behind them wait for their turn as "starting"
with "pid": null. The tests check what the operator sees meanwhile: requests waiting or
timing out precisely, a prompt clean SIGTERM, a served endpoint that keeps serving,
/readyz, failing or I/O-bound inits that do not block the others, and a floor scaled under traffic.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lightnode.scheduler.start_gate import default_slots
from tests.conftest import Node, process_gone, until, write_service, write_tuning

pytestmark = pytest.mark.integration

# Keeps a core busy for `s` s of CPU, so that its start holds a slot of the gate
# (runnable, and under the gate's 5 s hold limit on a 2-core machine).
HOG = """\
import time
_c = time.process_time()
while time.process_time() - _c < {s}:
    pass

def {name}():
    return 1
"""

PLAIN = "import os\ndef {name}(x=0):\n    return {{'pid': os.getpid(), 'x': x}}\n"


def _hogs(count: int, cpu_s: float) -> dict[str, str]:
    return {f"hog{i}": HOG.format(s=cpu_s, name=f"hog{i}") for i in range(count)}


def _endpoint(node: Node, service: str, endpoint: str) -> dict[str, Any]:
    return next(e for e in node.stats(service)["endpoints"] if e["endpointId"] == endpoint)


def _pipeline_pids(data_dir: Path) -> set[int]:
    """Pids of pipeline processes (runtime.py) whose command line names `data_dir`
    (the runtime's JSON argument escapes its slashes)."""
    needles = (str(data_dir).encode(), str(data_dir).replace("/", "\\/").encode())
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"runtime.py" in cmdline and any(n in cmdline for n in needles) and not process_gone(int(entry)):
            pids.add(int(entry))
    return pids


def _timed_run(node: Node, service: str, endpoint: str, timeout: float = 60) -> tuple[int, dict[str, Any], float]:
    began = time.monotonic()
    status, _, raw = node.request("POST", f"/public/api/v1/{service}/{endpoint}/run", b"{}", timeout=timeout)
    return status, json.loads(raw), time.monotonic() - began


def test_while_the_gate_is_full_requests_wait_or_time_out_precisely_and_sigterm_stops_cleanly(
    node_factory: Any, tmp_path: Path
) -> None:
    slots = default_slots()
    root = tmp_path / "data"
    # Sorted service ids: "hogs" load (and ask the gate) before "wait".
    write_service(root, "hogs", _hogs(slots, 1.0))
    write_service(root, "wait", {f"w{i}": PLAIN.format(name=f"w{i}") for i in range(8)})
    write_tuning(root, "wait", "w7", {"pool": {"timeout": 300}})
    write_tuning(root, "wait", "w6", {"pool": {"timeout": 60000}})
    node = node_factory(root, start=False)
    node.start(timeout_s=30, wait_ready=False)

    answers: dict[str, tuple[int, dict[str, Any], float]] = {}
    patient = threading.Thread(target=lambda: answers.update(w6=_timed_run(node, "wait", "w6")))
    patient.start()
    status, body, took = _timed_run(node, "wait", "w7")
    # Its pipeline waits behind the hogs: the request leaves the queue at its timeout.
    assert status == 503 and body["errorType"] == "QueueTimeout", body
    assert 0.25 <= took < 10, took
    # The admin API lists the pipelines still waiting for a slot, without a pid.
    listed = [p for e in node.stats("wait")["endpoints"] for p in e["pipelines"]]
    assert any(p["pid"] is None and p["state"] == "starting" for p in listed), listed
    status, _ = node.get("/readyz")
    assert status == 503
    patient.join(60)
    assert answers["w6"][0] == 200, answers  # waited for its turn, then answered

    # SIGTERM while starts still wait (w0..w5 may not have started yet): a prompt,
    # clean exit, and no pipeline process left, started or not.
    node.signal(signal.SIGTERM)
    assert node.proc is not None
    assert node.proc.wait(30) == 0, node.log()
    assert "lightnode stopped" in node.log()
    until(lambda: not _pipeline_pids(root), 10, "every pipeline process gone")


# A serving pool's starts launch at once (scheduler.EndpointPool._spawn): waiting behind
# the other endpoints' boots, its machine counted them as pipelines to come, and rule 7
# stopped the warm pipeline in their place; the endpoint then served with none until the
# gate let them boot.
def test_a_served_endpoint_keeps_a_warm_pipeline_while_its_extra_starts_wait_for_the_gate(
    node_factory: Any, tmp_path: Path
) -> None:
    slots = default_slots()
    root = tmp_path / "data"
    slow = "import os, time\ndef a(x=0):\n    time.sleep(0.3)\n    return os.getpid()\n"
    # "a" is first in line; the hogs take every other slot and hold them ~2-3 s.
    write_service(root, "svc", {"a": slow, **_hogs(slots, 1.5)})
    write_tuning(root, "svc", "a", {"pool": {"timeout": 20000}})
    node = node_factory(root, start=False)
    node.start(timeout_s=30, wait_ready=False)
    until(lambda: _endpoint(node, "svc", "a")["pipelinesByState"]["idle"] == 1, 20, "a's first pipeline ready")

    # Three at once on one pipeline: two wait, so rule 3 starts two more (behind the hogs).
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(node.run("svc", "a")[0])) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [200, 200, 200]
    a = _endpoint(node, "svc", "a")
    assert all(p["pid"] is not None for p in a["pipelines"]), a["pipelines"]  # none behind the hogs
    until(lambda: _endpoint(node, "svc", "a")["pipelinesByState"]["idle"] >= 1, 10, "a serving")
    assert node.run("svc", "a")[0] == 200


# /readyz waits for enabled endpoints only: a service disabled before the node's first
# ready keeps its drained pools (serving none) and must not hold it at 503.
def test_disabling_a_service_before_the_node_is_ready_does_not_hold_readyz(
    node_factory: Any, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    write_service(root, "aslow", {"a": "import time\ntime.sleep(1.5)\ndef a():\n    return 1\n"})
    write_service(root, "dis", {"d": PLAIN.format(name="d")})
    node = node_factory(root, start=False)
    node.start(timeout_s=30, wait_ready=False)
    status, _, body = node.request("POST", "/admin/api/services/dis/actions/disable", b"")
    assert status == 200, body
    until(lambda: _endpoint(node, "aslow", "a")["pipelinesByState"]["idle"] == 1, 20, "aslow ready")
    until(lambda: node.get("/readyz")[0] == 200, 5, "/readyz 200 with every enabled endpoint at its floor")
    assert node.run("dis", "d")[1]["errorType"] == "ServiceNotActive"


def test_failing_and_slow_io_inits_do_not_hold_back_the_other_endpoints(node_factory: Any, tmp_path: Path) -> None:
    root = tmp_path / "data"
    bad = {
        "raises": "raise RuntimeError('init boom')\ndef raises():\n    return 1\n",
        "exits": "import os\nos._exit(3)\ndef exits():\n    return 1\n",
        "io": "import time\ntime.sleep(2)\ndef io():\n    return 1\n",
    }
    # "a_bad" sorts first: its starts ask the gate before the light endpoints.
    write_service(root, "a_bad", bad)
    write_service(root, "light", {f"l{i}": PLAIN.format(name=f"l{i}") for i in range(12)})
    node = node_factory(root, start=False)
    node.start(timeout_s=30, wait_ready=False)

    def light_ready() -> bool:
        return all(e["pipelinesByState"]["idle"] == 1 for e in node.stats("light")["endpoints"])

    until(light_ready, 30, "every light endpoint ready")
    until(lambda: _endpoint(node, "a_bad", "io")["pipelinesByState"]["idle"] == 1, 20, "the 2 s I/O init ready")
    for endpoint, error in [("raises", "RuntimeError: init boom"), ("exits", "exited during initialization")]:
        entry = _endpoint(node, "a_bad", endpoint)
        assert entry["loadState"] == "failed" and error in (entry["lastLoadError"] or ""), entry
        status, body = node.run("a_bad", endpoint)
        assert status == 503 and body["errorType"] == "EndpointUnavailable" and error in body["message"], body
    assert node.run("light", "l11")[0] == 200
    # "ready in N ms" counts from the spawn: about the 2 s of the I/O init.
    line = next(x for x in node.log().splitlines() if "a_bad/io@v1: pipeline pid" in x and "ready in" in x)
    ms = float(line.split("ready in ")[1].split(" ms")[0])
    assert 1900 <= ms < 30000, line


def test_scaling_a_floor_up_to_8_and_back_under_traffic_on_another_endpoint(
    node_factory: Any, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    write_service(root, "svc", {"a": PLAIN.format(name="a"), "b": PLAIN.format(name="b")})
    node = node_factory(root)
    stop = threading.Event()
    statuses: list[int] = []

    def traffic() -> None:
        while not stop.is_set():
            req = urllib.request.Request(node.url + "/public/api/v1/svc/a/run", data=b"{}", method="POST")
            try:
                with urllib.request.urlopen(req, timeout=30) as answer:
                    statuses.append(answer.status)
            except Exception as exc:  # counted as a failure below
                statuses.append(getattr(exc, "code", -1))
            time.sleep(0.01)

    loop = threading.Thread(target=traffic)
    loop.start()
    try:
        write_tuning(root, "svc", "b", {"pool": {"floor": 8, "cruise": 8, "ceil": 8}})
        until(lambda: _endpoint(node, "svc", "b")["pipelinesByState"]["idle"] == 8, 30, "b at 8 pipelines")
        assert all(p["pid"] for p in _endpoint(node, "svc", "b")["pipelines"])
        write_tuning(root, "svc", "b", {"pool": {"floor": 1, "cruise": 2, "ceil": 8}})
        until(lambda: _endpoint(node, "svc", "b")["pipelinesByState"] == {"starting": 0, "idle": 2, "busy": 0, "stopping": 0},
              15, "b back to cruise")
    finally:
        stop.set()
        loop.join(30)
    assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
    assert node.run("svc", "b")[0] == 200
    # Every listed pipeline is a live process, and nothing else runs.
    listed = {p["pid"] for s in ("svc",) for e in node.stats(s)["endpoints"] for p in e["pipelines"]}
    until(lambda: _pipeline_pids(root) == listed, 10, "processes == listed pipelines")
