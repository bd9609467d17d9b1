"""Full load runs, out of the default test run (`pytest -m load tests/loadtest`).

* every shipped scenario against a real node started by the harness;
* the generator's own ceiling: one process, closed loop, against the tiny server
  in a process of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.cli import main

SCENARIOS = Path(__file__).resolve().parents[2] / "loadtest" / "scenarios"
TINY_SERVER = Path(__file__).with_name("lt_tiny_server.py")


@pytest.mark.load
@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.json")), ids=lambda p: p.stem)
def test_shipped_scenario_passes_on_a_real_node(path: Path, tmp_path: Path) -> None:
    assert main(["scenario", str(path), "--out", str(tmp_path), "--quiet"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is True and report["generator"]["saturated"] is False


@pytest.mark.load
@pytest.mark.timeout(120)
def test_generator_ceiling_one_process(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, str(TINY_SERVER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        code = main(
            [
                "run",
                url,
                "--service",
                "bench",
                "--endpoint",
                "add",
                "--connections",
                "16",
                "--duration",
                "5",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
    finally:
        _, served = server.communicate("", timeout=10)
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    generator = report["generator"]
    cpu_us_per_request = (
        generator["cpu_pct"] / 100 * report["duration_s"] / report["requests"] * 1e6
    )
    print(
        f"\n{report['throughput_rps']:.0f} req/s, generator cpu {generator['cpu_pct']}% "
        f"({cpu_us_per_request:.1f} us per request); tiny server: {served.strip()}"
    )
    assert report["errors"] == 0
    assert report["throughput_rps"] > 5000
    assert cpu_us_per_request < 50
