"""SPEC §3.2 requirements of the worker runtime that an audit found unmet: user code's
logging at INFO reaches the node's log; a parameter that cannot be passed by name gives
400 InvalidParameters, not a FunctionError; numpy/pandas datetimes, NaT and numpy keys
convert as the Python values they stand for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightnode.worker import runtime
from lightnode.worker.runtime import (
    CALL,
    ERROR,
    READY,
    RESULT,
    Binder,
    encode_result,
    read_frame,
    write_frame,
)
from tests.unit.worker._runtime_calls import start_runtime


def _stderr_after_one_call(tmp_path: Path, source: str) -> str:
    """Start the runtime on `source` as the node does, run `f` once, close its pipe: its stderr."""
    proc, call_w, ans_r = start_runtime(tmp_path, source)
    try:
        assert read_frame(ans_r)[0] == READY
        write_frame(call_w, CALL, b"{}")
        kind, _, body = read_frame(ans_r)  # type: ignore[misc]
        assert kind == RESULT, body
    finally:
        runtime.os.close(call_w)
        runtime.os.close(ans_r)
    _, err = proc.communicate(timeout=30)
    return err.decode()


def test_user_logging_at_info_reaches_the_log_at_init_and_in_calls(tmp_path: Path) -> None:
    # SPEC §3.2: "print() and logging from user code go to the node's log". Python drops
    # INFO records by default (the root logger is at WARNING), so an operator's
    # `logging.info("model loaded")` would vanish; DSS function code logs at INFO.
    source = (
        "import logging\n"
        "log = logging.getLogger('model')\n"
        "log.info('init info from a named logger')\n"
        "logging.info('init info from the root logger')\n"
        "def f():\n"
        "    log.info('call info')\n"
        "    log.debug('call debug')\n"
        "    return 1\n"
    )
    err = _stderr_after_one_call(tmp_path, source)
    assert "INFO:model:init info from a named logger" in err
    assert "INFO:root:init info from the root logger" in err
    assert "INFO:model:call info" in err
    assert "call debug" not in err  # INFO and above, as DSS does


def test_logging_imported_only_in_a_call_still_reaches_the_log(tmp_path: Path) -> None:
    source = "def f():\n    import logging\n    logging.getLogger('late').info('late info')\n    return 1\n"
    assert "INFO:late:late info" in _stderr_after_one_call(tmp_path, source)


def test_a_positional_only_required_parameter_is_invalid_parameters() -> None:
    # `a` cannot be passed by name: the call can never bind. With **kw the attribute `a`
    # would land in kw and Python's TypeError would come back as a 500 FunctionError
    # ("may have run"), not the 400 of SPEC §3.2.
    def f(a, /, **kw):  # type: ignore[no-untyped-def]
        return a

    def g(a, /, b):  # type: ignore[no-untyped-def]
        return a

    for function, params in ((f, {"a": 1}), (f, {}), (g, {"a": 1, "b": 2})):
        message = Binder(function).problems(params)
        assert message is not None, (function, params)
        assert "missing: 'a'" in message and "positional-only" in message, message
    kind, answer, _ = runtime.call_once(Binder(f), b'{"a": 1}', False)
    assert kind == ERROR
    error = json.loads(answer)
    assert (error["errorType"], error["status"]) == ("InvalidParameters", 400)


def test_user_code_that_configures_logging_itself_still_does(tmp_path: Path) -> None:
    # The runtime's INFO handler must not turn a user's basicConfig() into a no-op.
    source = (
        "import logging\n"
        "logging.basicConfig(level=logging.DEBUG, format='custom %(levelname)s %(message)s')\n"
        "def f():\n"
        "    logging.getLogger('m').debug('debug wanted')\n"
        "    return 1\n"
    )
    err = _stderr_after_one_call(tmp_path, source)
    assert "custom DEBUG debug wanted" in err
    assert "DEBUG:m:debug wanted" not in err  # one handler: the line is not written twice


def test_numpy_datetimes_in_nanoseconds_are_iso_strings_like_other_units() -> None:
    # SPEC §3.2: datetimes become ISO 8601 strings, numpy values included. numpy's
    # tolist() gives a datetime for units down to µs, but an int for ns: pandas' own
    # unit (`df["when"].values`), which was answered as 1767323045123456789.
    np = pytest.importorskip("numpy")
    nanos = np.datetime64("2026-01-02T03:04:05.123456789")
    assert json.loads(encode_result(nanos)) == "2026-01-02T03:04:05.123456"
    array = np.array(["2026-01-02T03:04:05", "NaT"], dtype="datetime64[ns]")
    assert json.loads(encode_result({"when": array})) == {"when": ["2026-01-02T03:04:05", None]}
    assert json.loads(encode_result(np.datetime64("2026-01-02"))) == "2026-01-02"  # as before


def test_pandas_missing_datetime_is_null_not_the_text_nat() -> None:
    # pd.NaT is a datetime subclass whose isoformat() is "NaT", not ISO 8601: a client
    # that parses the dates of a DataFrame with a gap would fail on it. NaN is null too.
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"when": pd.to_datetime(["2026-01-02", None])})
    assert json.loads(encode_result(frame)) == [{"when": "2026-01-02T00:00:00"}, {"when": None}]
    assert json.loads(encode_result({"t": pd.NaT})) == {"t": None}
    assert encode_result(pd.NaT) == b"null"


def test_a_service_module_named_logging_still_loads(tmp_path: Path) -> None:
    # The generation's root comes first on sys.path: its own `logging.py` is what
    # `import logging` finds there, and it is not configured as the standard one is.
    (tmp_path / "logging.py").write_text("VALUE = 7\n")
    proc, call_w, ans_r = start_runtime(tmp_path, "import logging\ndef f():\n    return logging.VALUE\n")
    try:
        kind, _, body = read_frame(ans_r)  # type: ignore[misc]
        assert kind == READY, body
        write_frame(call_w, CALL, b"{}")
        kind, _, body = read_frame(ans_r)  # type: ignore[misc]
        assert (kind, body) == (RESULT, b"7")
    finally:
        runtime.os.close(call_w)
        runtime.os.close(ans_r)
    proc.communicate(timeout=30)


def test_numpy_scalars_as_keys_are_converted_like_python_ones() -> None:
    # SPEC §3.2: numpy scalars are converted wherever they sit. A Python int key is
    # written "3"; numpy's (np.unique(labels), a groupby's index) gave 500 ResultNotSerializable.
    np = pytest.importorskip("numpy")
    labels, counts = np.unique(np.array([3, 3, 5]), return_counts=True)
    result = {"counts": dict(zip(labels, counts, strict=True)), "flags": {np.bool_(True): 1}}
    result["days"] = {np.datetime64("2026-01-02"): 1}
    assert json.loads(encode_result(result)) == {
        "counts": {"3": 2, "5": 1}, "flags": {"true": 1}, "days": {"2026-01-02": 1}
    }
    assert json.loads(encode_result({3: 1, True: 2})) == {"3": 1, "true": 2}  # as Python's own
