"""Test queries written by a first-time user (journey I): the verdict must say how to fix them."""

from __future__ import annotations

import time
from pathlib import Path

from lightnode.devtools import report as rp
from lightnode.devtools.session import judge
from lightnode.services.model import TestQuery

ANSWER = {
    "response": {"churn_score": 22.0, "extra_keys": []},
    "timing": {"wait": 0, "execution": 200, "functionInternal": 30},
    "apiContext": {"serviceId": "churn", "endpointId": "score", "serviceGeneration": "dev-1"},
}


def test_an_expect_naming_the_result_s_keys_at_the_top_says_to_put_them_under_response() -> None:
    """`"expect": {"churn_score": 22.0}` reads as "missing" while the RESULT column shows
    churn_score = 22.0: the diff must say the expect is matched against the whole answer."""
    outcome = judge("score", TestQuery("typical", {"tenure": 2}, {"churn_score": 22.0}), 200, ANSWER, 1.0)
    assert not outcome.passed
    (mismatch,) = outcome.mismatches
    text = mismatch.describe()
    assert text.startswith("$.churn_score: missing (expected 22.0)")
    assert '"response"' in text and "whole answer" in text
    assert '{"response": {"churn_score": 22.0}}' in rp.render_queries([outcome])


def test_a_key_of_the_answer_gets_no_hint() -> None:
    """A real envelope key that differs is an ordinary mismatch."""
    expect = {"response": {"churn_score": 21.0}, "apiContext": {"serviceId": "other"}}
    outcome = judge("score", TestQuery("typical", {"tenure": 2}, expect), 200, ANSWER, 1.0)
    assert [m.describe() for m in outcome.mismatches] == [
        "$.response.churn_score: expected 21.0, got 22.0",
        '$.apiContext.serviceId: expected "other", got "churn"',
    ]


def test_an_error_case_missing_its_keys_gets_no_hint() -> None:
    """`errorType` is a key of an error answer: a 200 where an error was expected is plain."""
    outcome = judge("score", TestQuery("bad", {}, {"errorType": "FunctionError"}), 200, ANSWER, 1.0)
    assert [m.describe() for m in outcome.mismatches] == ['$.errorType: missing (expected "FunctionError")']


def _session_with_pool(load_state: str):  # type: ignore[no-untyped-def]
    """A DevSession whose node holds one pool of `churn/score@dev-1` in `load_state`."""
    from types import SimpleNamespace

    from lightnode.devtools.session import DevSession

    snapshot = SimpleNamespace(load_state=load_state, last_load_error=None)
    pool = SimpleNamespace(snapshot=lambda: snapshot, last_load_error=None, last_load_traceback=None,
                           last_start_s=None if load_state == "loading" else 0.4)
    generation = SimpleNamespace(pools={"score": pool}, load_error=None)
    registry = SimpleNamespace(services={"churn": SimpleNamespace(generations={"dev-1": generation})})
    session = DevSession(Path("/src"))
    session.node = SimpleNamespace(registry=registry)  # type: ignore[assignment]
    return session


def test_an_endpoint_whose_init_never_returned_does_not_load() -> None:
    """Initialization code that hangs (a download, a lock): the registry switches to the
    new generation after its warm-up timeout with the pipeline still starting. `lightnode
    test` said "ok" then, played the queries into a 503 QueueTimeout and exited 1 (a query
    failed): the endpoint did not load, exit 3, and the reason is its init code."""
    from lightnode.devtools.session import EndpointDef, LoadReport, ServiceDef

    session = _session_with_pool("loading")
    endpoint = EndpointDef(id="score", type="python-function", code="predict.py", function="score",
                           folders=(), code_env=None, env={}, test_queries=())
    definition = ServiceDef(id="churn", root=Path("/src"), public=True, endpoints=(endpoint,))
    session._load_started_s = time.monotonic() - 125.2
    status = session._status(definition, "dev-1", endpoint, {})
    assert not status.loaded
    assert status.error == "still starting after 125 s: its initialization code has not returned"
    report = LoadReport(Path("/src"), "churn", "dev-1", definition, (status,))
    assert rp.exit_code(report, []) == rp.EXIT_LOAD_FAILED

    healthy = _session_with_pool("healthy")._status(definition, "dev-1", endpoint, {})
    assert healthy.loaded and healthy.start_ms == 400.0


def test_a_load_failure_without_traceback_prints_no_blank_line() -> None:
    """A failure with no traceback (a hung init, a missing interpreter) is one row, not a row
    and an empty line."""
    from lightnode.devtools.session import EndpointStatus, LoadReport

    status = EndpointStatus("score", False, "still starting after 120 s: its initialization code has not returned")
    text = rp.render_load(LoadReport(Path("/src"), "churn", "dev-1", None, (status,)))
    assert "" not in text.split("\n")


def test_an_error_case_gets_no_hint_to_use_response() -> None:
    """An error answer has no "response": an unknown key of an error case is a plain mismatch."""
    error = {"errorType": "FunctionError", "message": "m", "detailedMessage": "m"}
    outcome = judge("score", TestQuery("bad", {}, {"errorType": "FunctionError", "status": 422}), 422, error, 1.0)
    assert [m.describe() for m in outcome.mismatches] == ["$.status: missing (expected 422)"]
