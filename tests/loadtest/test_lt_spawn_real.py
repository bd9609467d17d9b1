"""A short real run in the default test run (issue "Done when"): `run --spawn`
starts a real lightnode on the shipped bench service, loads it for two seconds,
scrapes its /metrics and stops it. Every other default test stands a fake node
or a tiny server in for lightnode; this one fails when the two disagree (the
request path, the envelope, the gauge names, the start and stop)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest import node
from loadtest.cli import main

BENCH = Path(__file__).resolve().parents[2] / "loadtest" / "services" / "bench"


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_run_spawn_against_a_real_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    node.deploy(BENCH, data)
    node.write_tuning(data, "bench", "add", {"pool": {"floor": 1, "cruise": 1, "ceil": 1}})
    out = tmp_path / "out"
    argv = ["run", "--spawn", str(data), "--service", "bench", "--endpoint", "add"]
    argv += ["--body", '{"a": 1, "b": 2}', "--connections", "2", "--duration", "2"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["requests"] > 0 and report["errors"] == 0
    assert report["status_counts"] == {"200": report["requests"]}
    assert report["node_exit_code"] == 0 and "node_died" not in report
    # The node's own gauges were read: one pipeline (the tuning file was applied).
    assert report["scrape"]["ok"] >= 1, report["scrape"]
    assert report["pool"]["max_allocated"] == 1
    assert any(entry.get("pipelines") for entry in report["timeline"])
    for name in ("latency.png", "throughput.png", "pool.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert "lightnode stopped" in (out / "node.log").read_text()
    assert "status     200:" in capsys.readouterr().out


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_spawned_node_that_cannot_start_exits_3_with_its_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: exit 3 when the node did not start, with the node's own last line,
    at once (not after the 60 s start-up wait) and with no report."""
    data = tmp_path / "data"
    (data / "config").mkdir(parents=True)
    (data / "config" / "server.json").write_text("{bad")
    out = tmp_path / "out"
    argv = ["run", "--spawn", str(data), "--service", "bench", "--endpoint", "add"]
    assert main([*argv, "--duration", "1", "--out", str(out), "--quiet"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "lightnode-loadtest: error: the node exited with code 1 during start-up: "
    )
    assert "server.json" in err and "invalid JSON" in err
    assert not (out / "report.json").exists() and (out / "node.log").exists()
