"""Dev/test reporting: verdicts, exit codes, tables, tracebacks, JSON report."""

from __future__ import annotations

import json
from pathlib import Path

from lightnode.devtools import report as rp
from lightnode.devtools.session import EndpointStatus, LoadReport, QueryOutcome, judge
from lightnode.services.model import TestQuery

SRC = Path("/src/pricing")
OK_ENVELOPE = {"response": {"quote": 64.1}, "timing": {"wait": 1}, "apiContext": {"endpointId": "quote"}}


def _report(*statuses: EndpointStatus, problem: str | None = None) -> LoadReport:
    return LoadReport(SRC, "pricing", "dev-1", None, tuple(statuses), problem)


def test_judge_200_without_expect_passes() -> None:
    outcome = judge("quote", TestQuery("q", {}, None), 200, OK_ENVELOPE, 1.0)
    assert outcome.passed and outcome.error is None


def test_judge_expect_mismatch_fails_with_the_differences() -> None:
    outcome = judge("quote", TestQuery("q", {}, {"response": {"quote": 1}}), 200, OK_ENVELOPE, 1.0)
    assert not outcome.passed
    assert [m.path for m in outcome.mismatches] == ["$.response.quote"]


def test_judge_an_error_answer_fails_unless_expect_names_that_error() -> None:
    error = {"errorType": "FunctionError", "message": "boom", "detailedMessage": "boom"}
    plain = judge("quote", TestQuery("q", {}, {"response": {}}), 500, error, 1.0)
    assert not plain.passed and plain.error == "FunctionError: boom"
    wanted = judge("quote", TestQuery("q", {}, {"errorType": "FunctionError"}), 500, error, 1.0)
    assert wanted.passed
    wrong = judge("quote", TestQuery("q", {}, {"errorType": "InvalidParameters"}), 500, error, 1.0)
    assert not wrong.passed
    # expecting an error and getting a 200 is a failure
    assert not judge("quote", TestQuery("q", {}, {"errorType": "X"}), 200, OK_ENVELOPE, 1.0).passed


def test_exit_codes() -> None:
    ok = EndpointStatus("quote", True, start_ms=10)
    failed = EndpointStatus("broken", False, "RuntimeError: x", "Traceback ...")
    good = QueryOutcome("quote", "q", 200, 1.0, OK_ENVELOPE, passed=True)
    bad = QueryOutcome("quote", "q", 500, 1.0, {}, passed=False, error="FunctionError: x")
    assert rp.exit_code(_report(ok), [good]) == rp.EXIT_OK
    assert rp.exit_code(_report(ok), []) == rp.EXIT_OK
    assert rp.exit_code(_report(ok), [good, bad]) == rp.EXIT_QUERY_FAILED
    assert rp.exit_code(_report(ok, failed), [good]) == rp.EXIT_LOAD_FAILED
    assert rp.exit_code(_report(problem="service.json: bad"), []) == rp.EXIT_LOAD_FAILED


def test_load_table_shows_the_error_and_the_users_own_frames() -> None:
    traceback = (
        "Traceback (most recent call last):\n"
        f'  File "{rp.RUNTIME_FILE}", line 382, in serve\n'
        "    function = load_function(spec)\n"
        "               ^^^^^^^^^^^^^^^^^^^\n"
        '  File "<frozen importlib._bootstrap>", line 241, in _call_with_frames_removed\n'
        '  File "/src/pricing/broken.py", line 2, in <module>\n'
        "    raise RuntimeError('model file missing')\n"
        "RuntimeError: model file missing\n"
    )
    text = rp.render_load(_report(EndpointStatus("quote", True, start_ms=12.3),
                                  EndpointStatus("broken", False, "RuntimeError: model file missing", traceback)))
    lines = text.splitlines()
    assert lines[0] == "service pricing from /src/pricing (generation dev-1)"
    assert lines[1].split() == ["ENDPOINT", "LOADS", "DETAIL"]
    assert lines[2].split() == ["quote", "ok", "started", "in", "12", "ms"]
    assert lines[3].split()[:3] == ["broken", "FAILED", "RuntimeError:"]
    assert 'File "/src/pricing/broken.py", line 2' in text
    assert "load_function" not in text and "<frozen" not in text


def test_query_table_columns_diff_and_traceback() -> None:
    mismatch = judge("quote", TestQuery("typical", {}, {"response": {"quote": 1}}), 200, OK_ENVELOPE, 2.25)
    error_body = {"errorType": "FunctionError", "message": "Failed to run function : ValueError : no",
                  "detailedMessage": "Failed to run function : ValueError : no\nTraceback (most recent call last):\n"
                                     '  File "/src/pricing/quote.py", line 3, in quote\nValueError: no'}
    failed = judge("quote", TestQuery("boom", {}, None), 500, error_body, 1.0)
    skipped = QueryOutcome("broken", "q", skipped=True, error="endpoint does not load")
    text = rp.render_queries([mismatch, failed, skipped])
    lines = text.splitlines()
    assert lines[0].split() == ["ENDPOINT", "QUERY", "STATUS", "LATENCY", "VERDICT", "RESULT"]
    assert lines[1].split() == ["quote", "typical", "200", "2.2", "ms", "MISMATCH", '{"quote":64.1}']
    assert "$.response.quote: expected 1, got 64.1" in text
    assert 'File "/src/pricing/quote.py", line 3' in text
    assert lines[-1].split()[:5] == ["broken", "q", "-", "-", "skipped"]


def test_summary_line() -> None:
    ok = EndpointStatus("quote", True)
    good = QueryOutcome("quote", "q", 200, 1.0, OK_ENVELOPE, passed=True)
    assert rp.render_summary(_report(ok), [good]).startswith("OK: 1 endpoint(s)")
    assert rp.render_summary(_report(problem="x"), []).startswith("FAILED")


def test_json_report_is_json_and_complete() -> None:
    ok = EndpointStatus("quote", True, start_ms=3.0)
    failed = EndpointStatus("broken", False, "RuntimeError: x", "tb")
    mismatch = judge("quote", TestQuery("typical", {}, {"response": {"quote": 1, "x": 2}}), 200, OK_ENVELOPE, 2.0)
    payload = json.loads(json.dumps(rp.json_report(_report(ok, failed), [mismatch])))
    assert payload["ok"] is False and payload["exitCode"] == rp.EXIT_LOAD_FAILED
    assert payload["endpoints"][1] == {"id": "broken", "loaded": False, "error": "RuntimeError: x",
                                       "traceback": "tb", "startMs": None, "queries": []}
    query = payload["endpoints"][0]["queries"][0]
    assert query["status"] == 200 and query["passed"] is False
    assert query["mismatches"][0] == {"path": "$.response.quote", "expected": 1, "actual": 64.1,
                                      "description": "$.response.quote: expected 1, got 64.1"}
    assert "actual" not in query["mismatches"][1]


def test_invalid_service_json_is_shown_with_what_still_serves() -> None:
    text = rp.render_load(_report(problem="/src/service.json: endpoints[0].code: missing"))
    assert text.splitlines()[0] == "service.json is invalid (still serving dev-1):"
    assert "endpoints[0].code: missing" in text
