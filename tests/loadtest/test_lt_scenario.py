"""Scenario files: parsing, relative paths, every problem listed, expectations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest.plan import Stage
from loadtest.scenario import (
    Expectation,
    ScenarioError,
    check_expectations,
    load_scenario,
    metric_value,
    parse_scenario,
)

SCENARIOS = Path(__file__).resolve().parents[2] / "loadtest" / "scenarios"


def _write(tmp_path: Path, value: Any, name: str = "s.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return path


def _service(tmp_path: Path) -> Path:
    service = tmp_path / "svc"
    service.mkdir()
    (service / "service.json").write_text('{"id": "svc", "endpoints": []}')
    return service


def test_full_scenario_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    _service(tmp_path)
    nested = tmp_path / "scenarios"
    nested.mkdir()
    (nested / "bodies.jsonl").write_text('{"a": 1}\n\n{"a": 2}\n')
    path = _write(
        nested,
        {
            "name": "demo",
            "service": "../svc",
            "endpoint": "add",
            "bodies_jsonl": "bodies.jsonl",
            "tuning": {"pool": {"ceil": 2}},
            "stages": [
                {"duration": 2, "rate": 50},
                {"duration": 1, "connections": 4},
                {"duration": 3, "rate": 0},
                {"duration": 4, "rate": 10, "rate_to": 90},
            ],
            "faults": [
                {"at": 2, "action": "retune", "tuning": {"pool": {"ceil": 4}}},
                {"at": 1, "action": "kill-pipeline"},
            ],
            "expect": [{"metric": "status_counts.500", "op": "==", "value": 0}],
            "procs": 2,
            "timeout": 5,
            "warmup": 1,
        },
    )
    scenario = load_scenario(path)
    assert scenario.service_dir == (tmp_path / "svc").resolve()
    assert scenario.bodies == (b'{"a":1}', b'{"a":2}')
    assert scenario.stages == (
        Stage(2, rate_rps=50),
        Stage(1, connections=4),
        Stage(3, rate_rps=0),
        Stage(4, rate_rps=10, rate_to_rps=90),
    )
    assert [f.action for f in scenario.faults] == ["kill-pipeline", "retune"]  # by time
    assert scenario.faults[1].tuning == {"pool": {"ceil": 4}}
    assert scenario.expectations == (Expectation("status_counts.500", "==", 0.0),)
    assert (scenario.procs, scenario.timeout_s, scenario.warmup_s) == (2, 5.0, 1.0)


def test_body_file_relative_and_default_body(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text('{"x": [1, 2]}')
    base = {"serviceId": "s", "endpoint": "e", "stages": [{"duration": 1, "rate": 1}]}
    with_file = parse_scenario({**base, "body_file": "b.json"}, source=tmp_path / "s.json")
    assert with_file.bodies == (b'{"x":[1,2]}',)
    assert parse_scenario(base, source=tmp_path / "s.json").bodies == (b"{}",)


def test_every_problem_is_listed_with_its_path(tmp_path: Path) -> None:
    raw = {
        "service": "missing-dir",
        "endpoint": 3,
        "extra": 1,
        "body": [1],
        "stages": [
            {"duration": 1},
            {"duration": 0, "rate": 1},
            {"duration": 1, "rate": 1, "connections": 2},
            {"duration": 1, "connections": 0},
        ],
        "faults": [{"at": 1, "action": "explode"}, {"action": "retune", "at": 2}],
        "expect": [{"metric": "x", "op": "=~", "value": "1"}],
        "procs": 0,
    }
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(raw, source=tmp_path / "bad.json")
    problems = "\n".join(caught.value.problems)
    for fragment in [
        "$.extra: unknown key",
        "$.service:",
        "has no service.json",
        "$.endpoint: required",
        "$.body: a body must be a JSON object",
        "$.stages[0]: needs exactly one of rate, connections",
        "$.stages[1].duration: must be >= 0.001",
        "$.stages[2]: needs exactly one of rate, connections",
        "$.stages[3].connections: must be >= 1",
        "$.faults[0].action: must be one of",
        "$.faults[1].tuning: retune needs",
        "$.expect[0].op: must be one of",
        "$.expect[0].value: required, a number",
        "$.procs: must be >= 1",
    ]:
        assert fragment in problems
    assert str(tmp_path / "bad.json") in str(caught.value)


def test_unreadable_and_invalid_json_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="No such file"):
        load_scenario(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{nope")
    with pytest.raises(ScenarioError, match="not valid JSON"):
        load_scenario(tmp_path / "x.json")


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.json")), ids=lambda p: p.stem)
def test_shipped_scenarios_parse(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.service_dir is not None and scenario.expectations
    assert (scenario.service_dir / "service.json").is_file()


def test_shipped_scenarios_cover_the_spec_list() -> None:
    names = {path.stem for path in SCENARIOS.glob("*.json")}
    assert names >= {"steady", "overload", "scale", "retune", "switch", "crash"}


POOL_KEYS = ("max_allocated", "min_allocated", "final_allocated", "max_queue", "final_queue")


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.json")), ids=lambda p: p.stem)
def test_shipped_pool_expectations_do_not_pass_without_a_scrape(path: Path) -> None:
    """A missing key counts as 0, so "stages.2.final_allocated <= 2" (back to
    cruise) held when /metrics was not scraped in that stage: each scope (the
    run's pool, a stage) with a pool expectation must fail on a report without
    its pool values, e.g. by also expecting "stages.2.samples >= 1"."""
    scenario = load_scenario(path)
    scopes: dict[str, list[Any]] = {}
    for expectation in scenario.expectations:
        scope, _, key = expectation.metric.rpartition(".")
        if key in POOL_KEYS:
            scopes.setdefault(scope, [])
    for expectation in scenario.expectations:
        scope = expectation.metric.rpartition(".")[0]
        if scope in scopes:
            scopes[scope].append(expectation)
    unscraped = {"stages": [{} for _ in scenario.stages]}
    for scope, expectations in scopes.items():
        checks = check_expectations(unscraped, expectations)
        assert not all(check.passed for check in checks), f"{scope}: passes unscraped"


REPORT = {
    "status_counts": {"200": 95, "503": 5},
    "latency_ms": {"p99": 12.5},
    "pool": None,
    "stages": [{"final_allocated": 2}, {"final_allocated": 4}],
    "generator": {"saturated": False},
    "faults": [{}, {}],
    "name": "x",
}


@pytest.mark.parametrize(
    ("op", "value", "passed"),
    [
        ("==", 5, True),
        ("==", 4, False),
        ("!=", 4, True),
        ("!=", 5, False),
        ("<", 6, True),
        ("<", 5, False),
        ("<=", 5, True),
        ("<=", 4, False),
        (">", 4, True),
        (">", 5, False),
        (">=", 5, True),
        (">=", 6, False),
    ],
)
def test_each_operator(op: str, value: float, passed: bool) -> None:
    [result] = check_expectations(REPORT, [Expectation("status_counts.503", op, value)])
    assert result.passed is passed and result.actual == 5


def test_metric_paths() -> None:
    assert metric_value(REPORT, "latency_ms.p99") == (12.5, "")
    assert metric_value(REPORT, "status_counts.500")[0] == 0.0  # missing = 0
    assert metric_value(REPORT, "nothing.at.all") == (0.0, "missing, counted as 0")
    assert metric_value(REPORT, "pool.max_allocated")[0] == 0.0  # null parent
    assert metric_value(REPORT, "stages.1.final_allocated")[0] == 4.0
    assert metric_value(REPORT, "stages.7.final_allocated")[0] == 0.0
    assert metric_value(REPORT, "status_counts")[0] == 100.0  # object: sum
    assert metric_value(REPORT, "status_counts", ("200",))[0] == 5.0
    assert metric_value(REPORT, "status_counts", ("200", "503"))[0] == 0.0
    assert metric_value(REPORT, "faults")[0] == 2.0  # list: length
    assert metric_value(REPORT, "generator.saturated")[0] == 0.0
    assert metric_value(REPORT, "name")[0] is None


def test_failed_expectations_are_listed_clearly() -> None:
    results = check_expectations(
        REPORT,
        [
            Expectation("status_counts", "==", 0, ("200",), why="only 200"),
            Expectation("status_counts.500", "==", 0),
            Expectation("name", "==", 0),
        ],
    )
    assert [r.passed for r in results] == [False, True, False]
    assert results[0].describe() == (
        "FAIL status_counts (except 200) == 0: got 5 [sum of 1 entries]  (only 200)"
    )
    assert results[1].describe().startswith("ok   status_counts.500 == 0: got 0")
    assert "not a number" in results[2].describe()


def test_numbers_must_be_finite(tmp_path: Path) -> None:
    """JSON as Python reads it allows NaN and Infinity: a NaN duration crashed the
    run and an Infinity rate sent one request; both are problems of the file."""
    path = tmp_path / "s.json"
    path.write_text(
        '{"serviceId": "s", "endpoint": "e", "timeout": Infinity, "stages": ['
        '{"duration": NaN, "rate": 1}, {"duration": 1, "rate": Infinity},'
        '{"duration": 1, "rate": 1, "rate_to": -Infinity}],'
        '"faults": [{"at": NaN, "action": "kill-pipeline"}],'
        '"expect": [{"metric": "errors", "op": "<", "value": NaN}]}'
    )
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert caught.value.problems == [
        "$.stages[0].duration: must be a finite number (got nan)",
        "$.stages[1].rate: must be a finite number (got inf)",
        "$.stages[2].rate_to: must be a finite number (got -inf)",
        "$.faults[0].at: must be a finite number (got nan)",
        "$.expect[0].value: must be a finite number (got nan)",
        "$.timeout: must be a finite number (got inf)",
    ]
