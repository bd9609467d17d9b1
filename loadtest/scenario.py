"""Scenario files (SPEC §13): parsing, and checking expectations against a report.

    {"name": "...", "description": "...",
     "service": SRC_DIR or null, "serviceId": S, "endpoint": E,
     "tuning": {endpoint tuning (SPEC §5)},
     "body": {...} | "body_file": F | "bodies_jsonl": F,
     "stages": [{"duration": s, "rate": r[, "rate_to": r2]} | {"duration": s, "connections": n}],
     "faults": [{"at": s, "action": "kill-pipeline" | "retune" | "switch-generation",
                 "tuning": {...} (retune), "via": "api" | "file" (retune)}],
     "expect": [{"metric": "status_counts.500", "op": "==", "value": 0,
                 "except": ["200", "503"] (optional), "why": "..." (optional)}],
     "procs": n, "timeout": s, "warmup": s}

A stage `{"duration": s, "rate": 0}` is idle. Paths are resolved from the
scenario file's directory. An expectation's `metric` is a dotted path into
report.json (list items by index: `stages.2.final_allocated`); a missing key
counts as 0. When the path names an object, its numbers are summed, leaving
out the keys listed in `except`, so `{"metric": "status_counts", "except":
["200", "503"], "op": "==", "value": 0}` reads "no status but 200 and 503".
Pure apart from reading the scenario and body files. Must not import `lightnode`.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.plan import FAULT_ACTIONS, Fault, PlanError, Stage, encode_body, parse_bodies_jsonl

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
KNOWN_KEYS = frozenset(
    {
        "name",
        "description",
        "service",
        "serviceId",
        "endpoint",
        "tuning",
        "body",
        "body_file",
        "bodies_jsonl",
        "stages",
        "faults",
        "expect",
        "procs",
        "timeout",
        "warmup",
    }
)


class ScenarioError(ValueError):
    """A scenario file that cannot be run; lists every problem with its JSON path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class Expectation:
    metric: str
    op: str
    value: float
    except_keys: tuple[str, ...] = ()
    why: str | None = None

    def describe(self) -> str:
        text = f"{self.metric} {self.op} {self.value:g}"
        if self.except_keys:
            text = f"{self.metric} (except {', '.join(self.except_keys)}) {self.op} {self.value:g}"
        return text


@dataclass(frozen=True)
class ExpectationResult:
    expectation: Expectation
    actual: float | None
    passed: bool
    note: str = ""

    def describe(self) -> str:
        state = "ok  " if self.passed else "FAIL"
        actual = "n/a" if self.actual is None else f"{self.actual:g}"
        why = f"  ({self.expectation.why})" if self.expectation.why else ""
        note = f" [{self.note}]" if self.note else ""
        return f"{state} {self.expectation.describe()}: got {actual}{note}{why}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.expectation.metric,
            "op": self.expectation.op,
            "value": self.expectation.value,
            "except": list(self.expectation.except_keys),
            "actual": self.actual,
            "passed": self.passed,
            "note": self.note,
        }


@dataclass(frozen=True)
class Scenario:
    source: Path
    name: str
    endpoint: str
    stages: tuple[Stage, ...]
    bodies: tuple[bytes, ...]
    service_dir: Path | None = None
    service_id: str | None = None
    description: str = ""
    tuning: Mapping[str, Any] | None = None
    faults: tuple[Fault, ...] = ()
    expectations: tuple[Expectation, ...] = ()
    procs: int | None = None
    timeout_s: float | None = None
    warmup_s: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def load_scenario(path: str | Path) -> Scenario:
    """Read and parse a scenario file.

    Raises:
        ScenarioError: unreadable file, bad JSON, or any invalid field (all listed).
    """
    source = Path(path)
    try:
        raw = json.loads(source.read_text())
    except OSError as exc:
        raise ScenarioError(str(source), [exc.strerror or str(exc)]) from None
    except ValueError as exc:
        raise ScenarioError(str(source), [f"not valid JSON: {exc}"]) from None
    return parse_scenario(raw, source=source)


def parse_scenario(raw: Any, *, source: Path) -> Scenario:
    """Validate a scenario's JSON value; relative paths are taken from `source`'s directory."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ScenarioError(str(source), ["$: must be a JSON object"])
    base = source.parent
    for key in sorted(set(raw) - KNOWN_KEYS):
        problems.append(f"$.{key}: unknown key")
    service_dir = _service_dir(raw.get("service"), base, problems)
    service_id = raw.get("serviceId")
    if service_id is not None and not isinstance(service_id, str):
        problems.append("$.serviceId: must be a string")
        service_id = None
    endpoint = raw.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        problems.append("$.endpoint: required, a string")
    tuning = raw.get("tuning")
    if tuning is not None and not isinstance(tuning, dict):
        problems.append("$.tuning: must be an object")
    stages = _stages(raw.get("stages"), problems)
    bodies = _bodies(raw, base, problems)
    faults = _faults(raw.get("faults", []), problems)
    expectations = _expectations(raw.get("expect", []), problems)
    procs = _number(raw, "procs", problems, integer=True, minimum=1)
    timeout_s = _number(raw, "timeout", problems, minimum=0.001)
    warmup_s = _number(raw, "warmup", problems, minimum=0.0)
    if problems:
        raise ScenarioError(str(source), problems)
    return Scenario(
        source=source,
        name=str(raw.get("name") or source.stem),
        endpoint=str(endpoint),
        stages=stages,
        bodies=bodies,
        service_dir=service_dir,
        service_id=service_id,
        description=str(raw.get("description") or ""),
        tuning=tuning,
        faults=faults,
        expectations=expectations,
        procs=None if procs is None else int(procs),
        timeout_s=timeout_s,
        warmup_s=warmup_s,
    )


def _service_dir(value: Any, base: Path, problems: list[str]) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        problems.append("$.service: must be a directory path or null")
        return None
    path = (base / value).resolve()
    if not (path / "service.json").is_file():
        problems.append(f"$.service: {path} has no service.json")
    return path


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(
    raw: Mapping[str, Any],
    key: str,
    problems: list[str],
    *,
    where: str = "$",
    integer: bool = False,
    minimum: float | None = None,
) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if not _is_number(value) or (integer and not isinstance(value, int)):
        problems.append(f"{where}.{key}: must be {'an integer' if integer else 'a number'}")
        return None
    if not math.isfinite(value):  # Python's JSON reads NaN and Infinity
        problems.append(f"{where}.{key}: must be a finite number (got {value})")
        return None
    if minimum is not None and value < minimum:
        problems.append(f"{where}.{key}: must be >= {minimum:g} (got {value})")
        return None
    return float(value)


def _stages(value: Any, problems: list[str]) -> tuple[Stage, ...]:
    if not isinstance(value, list) or not value:
        problems.append("$.stages: required, a non-empty list")
        return ()
    stages = []
    for index, item in enumerate(value):
        where = f"$.stages[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be an object")
            continue
        for key in sorted(set(item) - {"duration", "rate", "rate_to", "connections", "name"}):
            problems.append(f"{where}.{key}: unknown key")
        duration = _number(item, "duration", problems, where=where, minimum=0.001)
        if "duration" not in item:
            problems.append(f"{where}.duration: required")
        has_rate, has_conns = "rate" in item, "connections" in item
        if has_rate == has_conns:
            problems.append(f"{where}: needs exactly one of rate, connections")
            continue
        rate = _number(item, "rate", problems, where=where, minimum=0.0)
        rate_to = _number(item, "rate_to", problems, where=where, minimum=0.0)
        conns = _number(item, "connections", problems, where=where, integer=True, minimum=1)
        if has_conns and "rate_to" in item:
            problems.append(f"{where}.rate_to: only with rate")
        if duration is not None:
            stages.append(
                Stage(
                    duration,
                    rate_rps=rate if has_rate else None,
                    connections=int(conns) if conns is not None else None,
                    rate_to_rps=rate_to,
                )
            )
    return tuple(stages)


def _bodies(raw: Mapping[str, Any], base: Path, problems: list[str]) -> tuple[bytes, ...]:
    given = [key for key in ("body", "body_file", "bodies_jsonl") if key in raw]
    if len(given) > 1:
        problems.append(f"$: only one of {', '.join(given)}")
        return ()
    try:
        if not given:
            return (b"{}",)
        if given[0] == "body":
            return (encode_body(raw["body"]),)
        path = base / str(raw[given[0]])
        text = path.read_text()
        if given[0] == "body_file":
            return (encode_body(json.loads(text)),)
        return parse_bodies_jsonl(text, source=str(path))
    except OSError as exc:
        problems.append(f"$.{given[0]}: {exc.strerror or exc}: {exc.filename}")
    except (ValueError, PlanError) as exc:
        problems.append(f"$.{given[0]}: {exc}")
    return ()


def _faults(value: Any, problems: list[str]) -> tuple[Fault, ...]:
    if not isinstance(value, list):
        problems.append("$.faults: must be a list")
        return ()
    faults = []
    for index, item in enumerate(value):
        where = f"$.faults[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be an object")
            continue
        for key in sorted(set(item) - {"at", "action", "tuning", "via"}):
            problems.append(f"{where}.{key}: unknown key")
        at_s = _number(item, "at", problems, where=where, minimum=0.0)
        action = item.get("action")
        if at_s is None:
            if "at" not in item:
                problems.append(f"{where}.at: required, seconds from the start")
            continue
        if action not in FAULT_ACTIONS:
            problems.append(f"{where}.action: must be one of {', '.join(FAULT_ACTIONS)}")
            continue
        tuning = item.get("tuning")
        if action == "retune" and not isinstance(tuning, dict):
            problems.append(f"{where}.tuning: retune needs a tuning object")
            continue
        via = item.get("via")
        if via not in (None, "api", "file"):
            problems.append(f'{where}.via: must be "api" or "file"')
            continue
        faults.append(Fault(at_s, action, tuning, via))
    return tuple(sorted(faults, key=lambda fault: fault.at_s))


def _expectations(value: Any, problems: list[str]) -> tuple[Expectation, ...]:
    if not isinstance(value, list):
        problems.append("$.expect: must be a list")
        return ()
    result = []
    for index, item in enumerate(value):
        where = f"$.expect[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be an object")
            continue
        for key in sorted(set(item) - {"metric", "op", "value", "except", "why"}):
            problems.append(f"{where}.{key}: unknown key")
        metric, op, target = item.get("metric"), item.get("op"), item.get("value")
        excepted = item.get("except", [])
        bad = []
        if not isinstance(metric, str) or not metric:
            bad.append(f"{where}.metric: required, a dotted path into report.json")
        if op not in OPS:
            bad.append(f"{where}.op: must be one of {' '.join(OPS)}")
        if not isinstance(target, (int, float)) or isinstance(target, bool):
            bad.append(f"{where}.value: required, a number")
        elif not math.isfinite(target):
            bad.append(f"{where}.value: must be a finite number (got {target})")
        if not isinstance(excepted, list) or not all(isinstance(k, str) for k in excepted):
            bad.append(f"{where}.except: must be a list of keys")
        problems.extend(bad)
        if not bad:
            value = float(target) if isinstance(target, (int, float)) else 0.0
            result.append(
                Expectation(str(metric), str(op), value, tuple(excepted), item.get("why"))
            )
    return tuple(result)


# -------------------------------------------------------------- expectations


def metric_value(
    report: Mapping[str, Any], path: str, except_keys: tuple[str, ...] = ()
) -> tuple[float | None, str]:
    """The number at a dotted path of a report, and a note on how it was read.

    A missing key (or null) counts as 0; an object counts as the sum of its
    numbers, minus the `except_keys`; a list counts as its length. Returns
    (None, reason) for a value that is not a number (a string).
    """
    value: Any = report
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return 0.0, "missing, counted as 0"
    if value is None:
        return 0.0, "null, counted as 0"
    if isinstance(value, bool):
        return float(value), ""
    if _is_number(value):
        return float(value), ""
    if isinstance(value, Mapping):
        kept = [v for k, v in value.items() if k not in except_keys and _is_number(v)]
        return float(sum(kept)), f"sum of {len(kept)} entries"
    if isinstance(value, list):
        return float(len(value)), "list length"
    return None, f"not a number: {value!r}"


def check_expectations(
    report: Mapping[str, Any], expectations: tuple[Expectation, ...] | list[Expectation]
) -> list[ExpectationResult]:
    """Evaluate every expectation against a report (none stops at the first failure)."""
    results = []
    for expectation in expectations:
        actual, note = metric_value(report, expectation.metric, expectation.except_keys)
        passed = actual is not None and OPS[expectation.op](actual, expectation.value)
        results.append(ExpectationResult(expectation, actual, passed, note))
    return results
