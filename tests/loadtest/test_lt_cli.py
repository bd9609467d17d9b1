"""The command line: usage errors, unreachable targets, compare, and real short runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from lt_tiny_server import TinyServer

from loadtest.cli import main


def _run_args(url: str, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        url,
        "--service",
        "bench",
        "--endpoint",
        "add",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["run", "--service", "s", "--endpoint", "e"],  # no URL, no --spawn
        ["run", "http://127.0.0.1:1", "--spawn", "d", "--service", "s", "--endpoint", "e"],
        ["run", "http://127.0.0.1:1", "--service", "s"],  # no --endpoint
        [
            "run",
            "http://127.0.0.1:1",
            "--service",
            "s",
            "--endpoint",
            "e",
            "--rate",
            "5",
            "--connections",
            "2",
        ],
        ["run", "http://127.0.0.1:1", "--service", "s", "--endpoint", "e", "--rate", "-1"],
        ["run", "http://127.0.0.1:1", "--service", "s", "--endpoint", "e", "--body", "[1]"],
        ["run", "http://127.0.0.1:1", "--service", "s", "--endpoint", "e", "--body", "{bad"],
        ["run", "ftp://127.0.0.1:1", "--service", "s", "--endpoint", "e"],
        ["run", "http://[::1", "--service", "s", "--endpoint", "e"],  # no closing bracket
        ["run", "http://127.0.0.1:1", "--service", "s", "--endpoint", "e", "--rate", "inf"],
        ["run", "http://127.0.0.1:1", "--service", "s", "--endpoint", "e", "--duration", "inf"],
        ["run", "http://127.0.0.1:1", "--service", "s", "--endpoint", "e", "--timeout", "1e999"],
        ["run", "http://127.0.0.1:1", "--service", "s", "--endpoint", "e", "--warmup", "inf"],
        ["scenario", "s.json", "--warmup", "nan"],
        ["compare", "only-one.json"],
    ],
)
def test_usage_errors_exit_2_with_one_clear_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lightnode-loadtest") and "error:" in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_unreachable_target_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(_run_args("http://127.0.0.1:1", tmp_path / "out", "--duration", "1"))
    assert code == 3
    err = capsys.readouterr().err.strip()
    assert err == ("lightnode-loadtest: error: cannot reach http://127.0.0.1:1: Connection refused")
    assert not (tmp_path / "out").exists()


def test_bad_scenario_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"endpoint": "e", "stages": []}')
    assert main(["scenario", str(path)]) == 2
    assert "$.stages: required, a non-empty list" in capsys.readouterr().err


def test_scenario_target_that_is_no_url_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"serviceId": "s", "endpoint": "e", "stages": [{"duration": 1, "rate": 1}]}')
    code = main(["scenario", str(path), "--target", "http://[::1", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == "lightnode-loadtest: error: target 'http://[::1': Invalid IPv6 URL"


def test_compare_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, rps in (("a", 100.0), ("b", 250.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(
            json.dumps({"target": name, "throughput_rps": rps, "status_counts": {"200": int(rps)}})
        )
    code = main(
        ["compare", str(tmp_path / "a" / "report.json"), str(tmp_path / "b" / "report.json")]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["a", "b", "B/A"]
    assert next(line for line in lines if line.startswith("throughput_rps")).split() == [
        "throughput_rps",
        "100",
        "250",
        "2.50x",
    ]
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["compare", str(tmp_path / "bad.json"), str(tmp_path / "a" / "report.json")]) == 2


def _check_common(
    report: dict[str, Any], out: Path, server: TinyServer, warmup_runs: int = 0
) -> None:
    assert report["duration_s"] == 2.0
    assert report["requests"] == report["responses"] == server.counters.runs - warmup_runs
    if not warmup_runs:
        assert report["status_counts"]["503"] == server.counters.rejected
    assert report["status_counts"]["200"] + report["status_counts"]["503"] == report["requests"]
    assert report["error_types"] == {"QueueFull": report["status_counts"]["503"]}
    assert report["client_errors"] == {"connect": 0, "invalid": 0, "reset": 0, "timeout": 0}
    assert report["throughput_rps"] == pytest.approx(report["responses"] / 2.0, abs=0.01)
    assert set(report["latency_ms"]) >= {"p50", "p90", "p99", "p999", "max"}
    assert (
        0
        < report["latency_ms"]["p50"]
        <= report["latency_ms"]["p99"]
        <= report["latency_ms"]["max"]
    )
    assert report["generator"]["procs"] == 1 and report["generator"]["cpu_pct"] > 0
    assert report["generator"]["saturated"] in (True, False)
    timeline = report["timeline"]
    assert [entry["t"] for entry in timeline[:2]] == [0, 1]
    assert sum(entry["sent"] for entry in timeline) == report["requests"]
    assert sum(entry["ok"] for entry in timeline) == report["status_counts"]["200"]
    assert timeline[0]["pipelines"] == {"idle": 1, "busy": 2, "starting": 0}
    assert timeline[0]["queue"] == 3
    assert report["pool"]["max_allocated"] == 3 and report["pool"]["final_allocated"] == 3
    for name in ("latency.png", "throughput.png", "pool.png"):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_closed_loop_run_writes_report_and_plots(
    tiny_server: TinyServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "closed"
    url = f"http://127.0.0.1:{tiny_server.port}"
    assert main(_run_args(url, out, "--connections", "4", "--duration", "2")) == 0
    report = json.loads((out / "report.json").read_text())
    _check_common(report, out, tiny_server)
    assert report["mode"] == "closed" and report["connections"] == 4
    assert report["generator"]["peak_connections"] == 4
    assert report["requests"] > 500
    summary = capsys.readouterr().out
    assert "closed loop 4 conns" in summary and "QueueFull" in summary
    assert str(out / "report.json") in summary


def test_open_loop_run_sends_on_schedule(tiny_server: TinyServer, tmp_path: Path) -> None:
    out = tmp_path / "open"
    url = f"http://127.0.0.1:{tiny_server.port}"
    assert (
        main(
            _run_args(
                url,
                out,
                "--rate",
                "300",
                "--duration",
                "2",
                "--warmup",
                "0.5",
                "--body",
                '{"a": 1, "b": 2}',
            )
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    _check_common(report, out, tiny_server, warmup_runs=150)  # warm-up not in the report
    assert report["mode"] == "open" and report["rate"] == 300 and report["warmup_s"] == 0.5
    assert report["requests"] == 600
    assert report["status_counts"] == {"200": 540, "503": 60}
    sent = [entry["sent"] for entry in report["timeline"]]
    assert sent[:2] == [300, 300] and sum(sent) == 600  # by intended time
    assert report["stages"][0]["sent"] == 600
    assert report["throughput_rps"] == 300.0


def test_scenario_against_a_target_checks_expectations(
    tiny_server: TinyServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "s.json"
    scenario.write_text(
        json.dumps(
            {
                "service": None,
                "serviceId": "bench",
                "endpoint": "add",
                "body": {"a": 1},
                "stages": [{"duration": 0.5, "rate": 100}, {"duration": 0.5, "connections": 2}],
                "expect": [
                    {"metric": "status_counts", "except": ["200", "503"], "op": "==", "value": 0},
                    {"metric": "error_types.QueueFull", "op": ">", "value": 0},
                    {"metric": "status_counts.500", "op": "==", "value": 0},
                    {"metric": "stages.0.sent", "op": "==", "value": 50},
                    {"metric": "status_counts.503", "op": "==", "value": 0, "why": "meant to fail"},
                ],
            }
        )
    )
    out = tmp_path / "out"
    code = main(
        [
            "scenario",
            str(scenario),
            "--target",
            f"http://127.0.0.1:{tiny_server.port}",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    assert [e["passed"] for e in report["expectations"]] == [True, True, True, True, False]
    assert report["passed"] is False and report["scenario"]["name"] == "s"
    text = capsys.readouterr().out
    assert "FAIL status_counts.503 == 0: got" in text and "(meant to fail)" in text
    assert text.rstrip().splitlines()[-2] == "FAILED (1 failed)"


FAKE_NODE = Path(__file__).with_name("lt_fake_node.py")


def test_scenario_on_a_spawned_node_with_faults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole `scenario` path without a real node: deploy, tuning file, start,
    three faults, expectations, stop (lt_fake_node.py stands in for lightnode)."""
    from loadtest import node

    monkeypatch.setattr(
        node, "lightnode_command", lambda *args: [sys.executable, str(FAKE_NODE), *args]
    )
    service = tmp_path / "svc"
    service.mkdir()
    (service / "service.json").write_text('{"id": "bench", "endpoints": []}')
    scenario = tmp_path / "faulty.json"
    scenario.write_text(
        json.dumps(
            {
                "service": "svc",
                "endpoint": "add",
                "tuning": {"pool": {"ceil": 2}},
                "stages": [{"duration": 1.2, "rate": 50}],
                "faults": [
                    {"at": 0.2, "action": "retune", "tuning": {"pool": {"ceil": 3}}},
                    {"at": 0.4, "action": "kill-pipeline"},
                    {"at": 0.6, "action": "switch-generation"},
                    {"at": 0.8, "action": "retune", "via": "api", "tuning": {"pool": {}}},
                ],
                "expect": [
                    {"metric": "status_counts", "except": ["200", "503"], "op": "==", "value": 0},
                    {"metric": "pool.max_allocated", "op": ">=", "value": 1},
                ],
            }
        )
    )
    out = tmp_path / "out"
    assert main(["scenario", str(scenario), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True and report["node_exit_code"] == 0
    faults = {(f["at"], f["action"]): f for f in report["faults"]}
    assert all(f["ok"] for f in faults.values()), faults
    assert faults[(0.2, "retune")]["detail"].startswith("wrote ")
    assert faults[(0.2, "retune")]["detail"].endswith("config/services/bench/add.json")
    assert faults[(0.4, "kill-pipeline")]["detail"].startswith("killed pipeline pid ")
    assert faults[(0.6, "switch-generation")]["detail"] == "switched to generation v2"
    assert (
        faults[(0.8, "retune")]["detail"] == "POST /admin/api/services/bench/endpoints/add/settings"
    )
    assert report["requests"] == 60 and report["status_counts"]["200"] > 0


def test_scenario_against_a_target_deploys_over_the_admin_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lt_fake_node import FakeNode

    from loadtest import node

    monkeypatch.setattr(
        node, "lightnode_command", lambda *args: [sys.executable, str(FAKE_NODE), *args]
    )
    service = tmp_path / "svc"
    service.mkdir()
    (service / "service.json").write_text('{"id": "bench", "endpoints": []}')
    scenario = tmp_path / "deploy.json"
    scenario.write_text(
        json.dumps(
            {
                "service": "svc",
                "endpoint": "add",
                "tuning": {"pool": {"ceil": 2}},
                "stages": [{"duration": 0.3, "connections": 1}],
            }
        )
    )
    fake = FakeNode(tmp_path)
    url = fake.start()
    try:
        code = main(
            ["scenario", str(scenario), "--target", url, "--out", str(tmp_path / "out"), "--quiet"]
        )
    finally:
        fake.stop()
        fake.close()
    assert code == 0
    calls = (tmp_path / "admin-calls.log").read_text().splitlines()
    assert [call.split("?")[0] for call in calls] == [
        "/admin/api/services",
        "/admin/api/services/",
        "/admin/api/services/bench/generations/actions/importFromArchive",
        "/admin/api/services/bench/actions/switchToNewest",
        "/admin/api/services/bench/endpoints/add/settings",
    ]
    assert "filePath=%2F" in calls[2] and calls[2].endswith("deploy.zip")


def test_more_connections_than_open_files_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closed-loop connections past the open-files limit would fail to connect
    (EMFILE) and be counted as the target's connect errors: refused up front."""
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _which: (256, 256))
    argv = _run_args("http://127.0.0.1:1", tmp_path / "out", "--connections", "1000")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "lightnode-loadtest: error: 1000 connections in one generator process need about "
        "1064 open files, above its limit of 256 (ulimit -n): raise the limit, "
        "or spread the connections over more --procs"
    )
    # Spread over 8 processes they fit (the target is then found unreachable).
    assert main([*argv, "--procs", "8"]) == 3


DYING_NODE = """
import os, sys, time
sys.path.insert(0, {here!r})
from lt_tiny_server import TinyServer
port = int(sys.argv[sys.argv.index("--port") + 1])
TinyServer().start(port)
time.sleep(1.5)
os._exit(7)
"""


def test_a_spawned_node_that_dies_during_the_run_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--spawn: the node exiting mid-run is said in the summary and the report,
    and the run exits 3 (it could not be carried out), not 0 with only errors."""
    from loadtest import node

    code = DYING_NODE.format(here=str(Path(__file__).parent))
    monkeypatch.setattr(
        node, "lightnode_command", lambda *args: [sys.executable, "-c", code, *args]
    )
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "out"
    argv = ["run", "--spawn", str(data), "--service", "bench", "--endpoint", "add"]
    argv += [
        "--connections",
        "2",
        "--duration",
        "3",
        "--timeout",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 3
    captured = capsys.readouterr()
    assert "the node exited during the run with code 7" in captured.out
    assert "the node exited during the run with code 7" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["node_exit_code"] == 7 and report["node_died"] is True
    assert report["status_counts"]["200"] > 0


def test_compare_refuses_json_that_is_no_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A peer benchmark's peers.json (or any other object) was shown as a table of
    dashes, exit 0, as if two runs had measured nothing."""
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"requests": 10, "throughput_rps": 5.0, "latency_ms": {}}))
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"version": 1, "runs": [], "summary": []}))
    assert main(["compare", str(report), str(peers)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"lightnode-loadtest: error: {peers}: not a lightnode-loadtest report "
        "(none of requests, throughput_rps, latency_ms); a peer benchmark's file? "
        "read those with python -m loadtest.peers.tally"
    )
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}')
    assert main(["compare", str(other), str(report)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"lightnode-loadtest: error: {other}: not a lightnode-loadtest report "
        "(none of requests, throughput_rps, latency_ms)"
    )


def test_compare_reports_of_other_shapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Groups of another type (a list, a number) or keys of mixed types read as
    absent instead of a traceback; a report of another version is noted."""
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"requests": 10, "status_counts": {"200": 10}, "pool": 5}))
    b = tmp_path / "b.json"
    b.write_text(
        json.dumps({"version": 99, "requests": 20, "status_counts": [1, 2], "pool": {"x": 1}})
    )
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert next(line for line in out.splitlines() if line.startswith("requests")).split() == [
        "requests",
        "10",
        "20",
        "2.00x",
    ]
    assert "status_counts.200" in out and "pool.x" in out
    assert out.rstrip().splitlines()[-1] == (
        "note: b.json is a version 99 report (this harness writes version 1); rows it lacks show -"
    )


def test_spawn_into_a_missing_data_dir_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped --spawn path started a node on a new empty data dir (created at
    the typo) and measured its 404s; now it is a usage error, before any node."""
    from loadtest import node

    started: list[tuple[str, ...]] = []

    def command(*args: str) -> list[str]:
        started.append(args)
        return [sys.executable, "-c", "raise SystemExit(5)"]

    monkeypatch.setattr(node, "lightnode_command", command)
    missing = tmp_path / "no-such-dir"
    argv = ["run", "--spawn", str(missing), "--service", "s", "--endpoint", "e"]
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--out", str(tmp_path / "out"), "--quiet"])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"lightnode-loadtest: error: --spawn {missing}: no such directory "
        "(a data dir with the service deployed)"
    )
    assert not started and not missing.exists()


def test_a_scenario_stopped_by_ctrl_c_is_not_passed(
    tiny_server: TinyServer, tmp_path: Path
) -> None:
    """The first Ctrl-C writes the report of the part that ran; its expectations
    were read on that part only, so the verdict is not PASSED and the exit is 130."""
    import os
    import signal
    import subprocess

    scenario = tmp_path / "long.json"
    scenario.write_text(
        json.dumps(
            {
                "serviceId": "bench",
                "endpoint": "add",
                "stages": [{"duration": 60, "rate": 20}],
                "expect": [{"metric": "requests", "op": ">=", "value": 0}],
            }
        )
    )
    url = f"http://127.0.0.1:{tiny_server.port}"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    process = subprocess.Popen(
        [sys.executable, "-m", "loadtest", "scenario", str(scenario), "--target", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # the progress lines: the run has started
            if "/60 s" in line:
                break
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "INTERRUPTED" in stdout and "PASSED" not in stdout
    reports = list(tmp_path.glob("loadtest-out/*/report.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["interrupted"] is True and report["passed"] is False


@pytest.mark.parametrize("mode", [["--connections", "2"], ["--rate", "100", "--procs", "2"]])
def test_bodies_from_a_file_or_json_lines_and_the_key_reach_the_wire(
    tmp_path: Path, mode: list[str]
) -> None:
    """SPEC §13: bodies inline, from a JSON file, or a JSON-lines file cycled, in
    both loops and over several processes; --key is sent as a bearer token."""
    server = TinyServer(record=True)
    url = server.start()
    try:
        lines = tmp_path / "bodies.jsonl"
        lines.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3}\n')
        argv = _run_args(url, tmp_path / "jsonl", "--bodies-jsonl", str(lines), "--duration", "1")
        assert main([*argv, *mode, "--key", "k-123"]) == 0
        bodies = list(server.counters.bodies)
        assert len(bodies) >= 30
        assert {body.count(b'"a":') for body in bodies} == {1}
        counts = {body: bodies.count(body) for body in set(bodies)}
        assert sorted(counts) == [b'{"a":1}', b'{"a":2}', b'{"a":3}']
        assert max(counts.values()) - min(counts.values()) <= 4  # cycled, not one body
        assert set(server.counters.authorizations) == {b"Bearer k-123"}
        server.counters.bodies.clear()
        server.counters.authorizations.clear()
        single = tmp_path / "body.json"
        single.write_text('{\n  "b": [1, 2]\n}\n')
        argv = _run_args(url, tmp_path / "file", "--body-file", str(single), "--duration", "1")
        assert main([*argv, *mode]) == 0
        assert set(server.counters.bodies) == {b'{"b":[1,2]}'}
        assert set(server.counters.authorizations) == {None}
    finally:
        server.stop()


def test_a_fault_that_failed_fails_the_scenario(
    tiny_server: TinyServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every expectation held, but the fault did not happen (no admin API here):
    the scenario did not show what it is for, so it is FAILED and exits 1."""
    scenario = tmp_path / "s.json"
    scenario.write_text(
        json.dumps(
            {
                "serviceId": "bench",
                "endpoint": "add",
                "stages": [{"duration": 0.6, "rate": 20}],
                "faults": [{"at": 0.1, "action": "kill-pipeline"}],
                "expect": [{"metric": "requests", "op": ">=", "value": 0}],
            }
        )
    )
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{tiny_server.port}"
    assert main(["scenario", str(scenario), "--target", url, "--out", str(out), "--quiet"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert [e["passed"] for e in report["expectations"]] == [True]
    assert report["faults"][0]["ok"] is False and report["passed"] is False
    text = capsys.readouterr().out
    assert "FAIL fault kill-pipeline at 0.1 s: " in text
    assert text.rstrip().splitlines()[-2] == "FAILED (1 failed)"


def test_a_scenario_whose_node_died_is_not_passed(tmp_path: Path) -> None:
    """A node the scenario started exited during the run: the verdict is FAILED
    (exit 1) even when the part that ran met every expectation."""
    from loadtest.plan import Stage
    from loadtest.scenario import Expectation, Scenario
    from loadtest.scenario_run import _with_checks, verdict_text

    scenario = Scenario(
        source=tmp_path / "s.json",
        name="s",
        endpoint="add",
        stages=(Stage(1.0, rate_rps=1),),
        bodies=(b"{}",),
        expectations=(Expectation("requests", ">=", 0),),
    )
    result, checks = _with_checks(scenario, {"requests": 5, "faults": []})
    assert result["passed"] is True and verdict_text(result, checks).endswith("PASSED")
    died = {"requests": 5, "faults": [], "node_died": True, "node_exit_code": 9}
    result, checks = _with_checks(scenario, died)
    assert result["passed"] is False
    lines = verdict_text(result, checks).splitlines()
    assert lines[-2:] == ["  FAIL the node exited during the run with code 9", "FAILED (1 failed)"]


@pytest.mark.parametrize(
    ("scenario", "target", "message"),
    [
        (
            {"endpoint": "add"},
            "http://127.0.0.1:1",
            'a scenario with "service": null needs "serviceId"',
        ),
        (
            {"serviceId": "bench", "endpoint": "add"},
            None,
            ('without --target the scenario needs a "service" directory'),
        ),
        (
            {"service": "svc", "serviceId": "other", "endpoint": "add"},
            None,
            "serviceId 'other' does not match {svc}/service.json id 'bench'",
        ),
    ],
)
def test_a_scenario_that_cannot_name_its_service_is_a_usage_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    scenario: dict[str, Any],
    target: str | None,
    message: str,
) -> None:
    """The file (with the command line) does not say what to load: exit 2, a usage
    error, before any node or connection; exit 3 said "could not run", as for an
    unreachable target, a condition worth retrying."""
    service = tmp_path / "svc"
    service.mkdir()
    (service / "service.json").write_text('{"id": "bench", "endpoints": []}')
    path = tmp_path / "s.json"
    path.write_text(json.dumps({**scenario, "stages": [{"duration": 1, "rate": 1}]}))
    argv = ["scenario", str(path), "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*argv, *(["--target", target] if target else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"lightnode-loadtest: error: scenario s: {message.format(svc=service)}"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "http://127.0.0.1:1", "--service", "s", "--endpoint", "e", "--key", "k\u201cy"],
        ["run", "http://127.0.0.1:1", "--service", "s", "--endpoint", "e", "--key", "k\r\nX: y"],
        ["run", "http://127.0.0.1:1", "--service", "s", "--endpoint", "e", "--key", ""],
        ["scenario", "s.json", "--target", "http://127.0.0.1:1", "--admin-key", "\u00e9t\u00e9"],
    ],
)
def test_a_key_that_cannot_be_a_header_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A key pasted with a typographic quote crashed the run with a
    UnicodeEncodeError traceback; one with a line break would have split the
    request's head. Refused up front: a key is printable ASCII."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("lightnode-loadtest ") and "error: argument --" in err[-1]
    assert "key: must be printable ASCII without spaces" in err[-1]
