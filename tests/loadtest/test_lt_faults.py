"""Fault injection helpers: pipeline choice, atomic tuning writes, clear failures."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from lt_tiny_server import TinyServer

from loadtest import node
from loadtest.faults import NodeAccess, fire, is_local, pick_pipeline
from loadtest.plan import Fault, Target

STATS = {
    "serviceId": "bench",
    "endpoints": [
        {"endpointId": "spin", "pipelines": [{"workerId": 1, "pid": 11, "state": "busy"}]},
        {
            "endpointId": "add",
            "generation": "v1",
            "queueLength": 0,
            "pipelines": [
                {"workerId": 1, "pid": 21, "state": "idle"},
                {"workerId": 2, "pid": 22, "state": "BUSY"},
                {"workerId": 3, "pid": None, "state": "starting"},
            ],
        },
    ],
}


def test_pick_pipeline_prefers_a_busy_one_of_the_endpoint() -> None:
    assert pick_pipeline(STATS, "add") == (22, "busy")
    idle_only = {"endpoints": [{"endpointId": "add", "pipelines": [{"pid": 5, "state": "idle"}]}]}
    assert pick_pipeline(idle_only, "add") == (5, "idle")
    assert pick_pipeline(STATS, "sleep") is None
    assert pick_pipeline({"unexpected": True}, "add") is None
    assert pick_pipeline([], "add") is None


def test_write_tuning_is_atomic_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = node.write_tuning(tmp_path, "bench", "add", {"pool": {"ceil": 3}})
    assert path == tmp_path / "config" / "services" / "bench" / "add.json"
    inode = path.stat().st_ino
    node.write_tuning(tmp_path, "bench", "add", {"pool": {"ceil": 5}})
    assert json.loads(path.read_text()) == {"pool": {"ceil": 5}}
    assert path.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert [p.name for p in path.parent.iterdir()] == ["add.json"]


def test_retune_writes_the_file_when_the_harness_owns_the_data_dir(tmp_path: Path) -> None:
    access = NodeAccess(Target.parse("http://127.0.0.1:1"), "bench", "add", data_dir=tmp_path)
    outcome = asyncio.run(fire(Fault(1.0, "retune", {"pool": {"ceil": 2}}), access, 0.0))
    assert outcome["ok"] is True and "wrote" in outcome["detail"]
    assert json.loads(node.tuning_path(tmp_path, "bench", "add").read_text()) == {
        "pool": {"ceil": 2}
    }


def test_faults_fail_clearly_without_the_admin_api() -> None:
    server = TinyServer()
    url = server.start()
    try:
        access = NodeAccess(Target.parse(url), "bench", "add")
        switch = asyncio.run(fire(Fault(4.0, "switch-generation"), access, 0.0))
        retune = asyncio.run(fire(Fault(5.0, "retune", {"pool": {}}), access, 0.0))
        kill = asyncio.run(fire(Fault(6.0, "kill-pipeline"), access, 0.0))
        via_file = asyncio.run(fire(Fault(7.0, "retune", {}, via="file"), access, 0.0))
    finally:
        server.stop()
    assert switch["ok"] is False
    assert switch["detail"] == (
        "POST /admin/api/services/bench/actions/switchToNewest "
        "answered 404 NotFound: /admin/api/services/bench/actions/"
        "switchToNewest"
    )
    assert retune["ok"] is False and "/endpoints/add/settings answered 404" in retune["detail"]
    assert kill["ok"] is False and "stats answered 404" in kill["detail"]
    assert via_file["ok"] is False and "needs a node the harness started" in via_file["detail"]


def test_kill_pipeline_kills_the_busy_pid_from_the_stats() -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    stats = json.dumps(
        {"endpoints": [{"endpointId": "add", "pipelines": [{"pid": victim.pid, "state": "busy"}]}]}
    ).encode()
    server = TinyServer()
    original = server.answer
    server.answer = lambda path: (  # type: ignore[method-assign]
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(stats), stats)
        if path.endswith("/stats")
        else original(path)
    )
    url = server.start()
    try:
        outcome = asyncio.run(
            fire(Fault(3.0, "kill-pipeline"), NodeAccess(Target.parse(url), "bench", "add"), 0.0)
        )
        code = victim.wait(timeout=5)
    finally:
        server.stop()
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert outcome == {
        "at": 3.0,
        "action": "kill-pipeline",
        "ok": True,
        "fired_at_s": outcome["fired_at_s"],
        "detail": f"killed pipeline pid {victim.pid} (busy)",
    }
    assert code == -signal.SIGKILL


def test_is_local() -> None:
    assert is_local("127.0.0.1") and is_local("localhost")
    assert not is_local("192.0.2.1")
