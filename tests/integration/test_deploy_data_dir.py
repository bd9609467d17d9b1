"""`deploy`, `switch` and `set-mapping` with --data-dir beside a running node (SPEC §6, §8):
the command says whether the node applied the change, never "deployed" over a refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_service_src

pytestmark = pytest.mark.integration

GOOD = "def e():\n    return {generation!r}\n"
BROKEN = "raise RuntimeError('boom at init')\ndef e():\n    return 0\n"


def lightnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lightnode", *args], capture_output=True, text=True, timeout=200)


def deploy(src: Path, data: Path, generation: str) -> subprocess.CompletedProcess[str]:
    return lightnode("deploy", str(src), "--data-dir", str(data), "--generation", generation)


def test_a_deploy_the_running_node_refuses_is_reported_as_failed(tmp_path: Path, node_factory: Any) -> None:
    # Was: exit 0 and "deployed svc generation g2", while the node refused the switch
    # (g2 fails at init) and kept serving g1: a CI pipeline believed g2 was live.
    data = tmp_path / "data"
    node = node_factory(data)
    src = write_service_src(tmp_path / "src", "svc", {"e": GOOD.format(generation="g1")})
    first = deploy(src, data, "g1")
    assert first.returncode == 0, first.stderr
    assert "deployed svc generation g1" in first.stdout
    assert "no node runs on" not in first.stderr  # the running node loaded it
    status, body = node.run("svc", "e")  # served as soon as deploy returns
    assert (status, body.get("response")) == (200, "g1"), body

    (src / "e.py").write_text(BROKEN)
    second = deploy(src, data, "g2")
    assert second.returncode == 1, second.stdout + second.stderr
    assert "deployed" not in second.stdout
    assert "switch not applied: generation g2 failed to load (RuntimeError: boom at init)" in second.stderr
    assert "Traceback" not in second.stderr
    assert node.run("svc", "e")[1]["response"] == "g1"  # the node kept serving

    # `switch --data-dir` says the same; a switch back is confirmed
    switch = lightnode("admin", "switch", "svc", "g2", "--data-dir", str(data))
    assert switch.returncode == 1 and "boom at init" in switch.stderr, switch.stderr
    back = lightnode("admin", "switch", "svc", "g1", "--data-dir", str(data))
    assert back.returncode == 0, back.stderr
    mapping = lightnode("admin", "set-mapping", "svc", "g1=0.5", "g2=0.5", "--data-dir", str(data))
    assert mapping.returncode == 1 and "boom at init" in mapping.stderr, mapping.stderr

    (src / "e.py").write_text(GOOD.format(generation="g3"))
    third = deploy(src, data, "g3")
    assert third.returncode == 0, third.stderr
    assert node.run("svc", "e")[1]["response"] == "g3"


def test_a_first_deploy_that_cannot_load_is_reported_as_failed(tmp_path: Path, node_factory: Any) -> None:
    # Was: exit 0 and "deployed svc generation g1" while every request got 503: with no
    # generation serving before, the node applies the switch (nothing to keep).
    data = tmp_path / "data"
    node = node_factory(data)
    src = write_service_src(tmp_path / "src", "svc", {"e": BROKEN})
    first = deploy(src, data, "g1")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "deployed" not in first.stdout
    assert "svc is switched to generation g1, but it does not serve:" in first.stderr
    assert "endpoint e: Failed to load endpoint: RuntimeError: boom at init" in first.stderr, first.stderr
    assert node.run("svc", "e")[0] == 503
    switch = lightnode("admin", "switch", "svc", "g1", "--url", node.url)  # the same through --url
    assert switch.returncode == 1 and "endpoint e: Failed to load endpoint: RuntimeError: boom at init" in switch.stderr, switch.stderr
    (src / "e.py").write_text(GOOD.format(generation="g2"))
    fixed = deploy(src, data, "g2")
    assert fixed.returncode == 0, fixed.stderr
    assert node.run("svc", "e")[1]["response"] == "g2"


def test_without_a_running_node_deploy_only_writes_the_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert lightnode("init", str(data)).returncode == 0
    src = write_service_src(tmp_path / "src", "svc", {"e": BROKEN})
    done = deploy(src, data, "g1")
    assert done.returncode == 0, done.stderr  # nothing to ask: the node applies it when it starts
    assert "deployed svc generation g1" in done.stdout
    # ... and says that no node has loaded the code (it fails at init here).
    assert f"no node runs on {data}: its files are changed, and the code loads when a node starts there" in done.stderr
    state = json.loads((data / "services" / "svc" / "state.json").read_text())
    assert state["mapping"]["entries"] == [{"generation": "g1", "proba": 1.0}]
