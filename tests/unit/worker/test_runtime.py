"""The worker runtime in-process: framing, binding, conversions, the serve loop over os.pipe."""

from __future__ import annotations

import datetime
import decimal
import json
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightnode.worker import runtime
from lightnode.worker.runtime import (
    CALL,
    ERROR,
    INIT_ERROR,
    READY,
    RESULT,
    Binder,
    FrameDecoder,
    NotSerializable,
    encode_frame,
    encode_result,
    read_frame,
    to_jsonable,
    write_frame,
)

# ------------------------------------------------------------------- framing


@pytest.mark.parametrize("body", [b"", b"{}", b'{"a":1}', bytes(range(256)) * 1000])
def test_frame_round_trip_through_a_pipe(body: bytes) -> None:
    r, w = os.pipe()
    try:
        writer = threading.Thread(target=write_frame, args=(w, RESULT, body, 1234))
        writer.start()
        assert read_frame(r) == (RESULT, 1234, body)
        writer.join()
    finally:
        os.close(r)
        os.close(w)


def test_read_frame_returns_none_at_eof() -> None:
    r, w = os.pipe()
    os.close(w)
    assert read_frame(r) is None
    os.close(r)


def test_truncated_frame_is_eof() -> None:
    r, w = os.pipe()
    os.write(w, encode_frame(CALL, b"0123456789")[:-3])
    os.close(w)
    assert read_frame(r) is None
    os.close(r)


def test_decoder_handles_any_split() -> None:
    stream = encode_frame(READY, b'{"pid":1}') + encode_frame(RESULT, b"[1,2]", 7) + encode_frame(ERROR)
    for step in (1, 2, 5, 13, len(stream)):
        decoder = FrameDecoder()
        frames = []
        for i in range(0, len(stream), step):
            frames.extend(decoder.feed(stream[i : i + step]))
        assert frames == [(READY, 0, b'{"pid":1}'), (RESULT, 7, b"[1,2]"), (ERROR, 0, b"")]


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.sampled_from([CALL, RESULT, ERROR]), st.binary(max_size=40)), max_size=6),
    st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=8),
)
def test_decoder_matches_the_frames_for_any_cut(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    """Whole frames one per read (the decoder's fast path), and every other cut, give the same frames."""
    encoded = [encode_frame(kind, body, 5) for kind, body in frames]
    expected = [(kind, 5, body) for kind, body in frames]
    decoder = FrameDecoder()
    assert [frame for data in encoded for frame in decoder.feed(data)] == expected
    stream = b"".join(encoded)
    decoder, got, position, turn = FrameDecoder(), [], 0, 0
    while position < len(stream):
        step = cuts[turn % len(cuts)]
        got.extend(decoder.feed(stream[position : position + step]))
        position, turn = position + step, turn + 1
    assert got == expected
    assert all(type(body) is bytes for _, _, body in got)


# ------------------------------------------------------------------- binding


def test_binder_reports_missing_and_unexpected_with_signature() -> None:
    def my_api_function(age, days, price=1):  # type: ignore[no-untyped-def]
        return None

    binder = Binder(my_api_function)
    assert binder.problems({"age": 1, "days": 2}) is None
    message = binder.problems({"age": 1, "foo": 2, "bar": 3})
    assert message is not None
    assert "missing: 'days'" in message
    assert "unexpected: 'bar', 'foo'" in message
    assert "my_api_function(age, days, price=1)" in message


def test_binder_var_keyword_accepts_extras() -> None:
    def api_py_function(z=0, **data):  # type: ignore[no-untyped-def]
        return data

    assert Binder(api_py_function).problems({"a": 1, "z": 2}) is None


def test_binder_keyword_only_required() -> None:
    def f(*, a):  # type: ignore[no-untyped-def]
        return a

    assert "missing: 'a'" in (Binder(f).problems({}) or "")


# --------------------------------------------------------------- conversions


def test_conversions() -> None:
    import numpy as np

    value = {
        "when": datetime.datetime(2026, 11, 27, 4, 15),
        "day": datetime.date(2026, 11, 27),
        "price": decimal.Decimal("12.50"),
        "whole": decimal.Decimal("3"),
        "tags": {"b", "a"},
        "pair": (1, 2),
        "np_int": np.int64(7),
        "np_float": np.float32(0.5),
        "array": np.arange(3),
        "nan": float("nan"),
        1: "int key",
    }
    out = json.loads(encode_result(value))
    assert out == {
        "when": "2026-11-27T04:15:00",
        "day": "2026-11-27",
        "price": 12.5,
        "whole": 3,
        "tags": ["a", "b"],
        "pair": [1, 2],
        "np_int": 7,
        "np_float": 0.5,
        "array": [0, 1, 2],
        "nan": None,
        "1": "int key",
    }


@pytest.mark.parametrize("encoder", ["ujson", "stdlib"])
def test_a_fractional_decimal_keeps_its_digits(encoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # SPEC §3.2: a Decimal is a JSON number; through a float 99999999999999999.99 became 1e+17.
    if encoder == "stdlib":
        monkeypatch.setattr(
            runtime, "_dumps", lambda obj: json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        )
    D = decimal.Decimal
    value = {
        "big": D("99999999999999999.99"),
        "long": [D("1234567890123456789.01"), D("-0.001"), D("1E-7"), D("12.50")],
        "whole": D("3.0"),
        "nan": D("NaN"),
        D("2.5"): "a key",
        "text": runtime._DECIMAL_MARK[:-1] + "x",  # almost the mark: a string stays a string
    }
    text = encode_result(value)
    assert json.loads(text, parse_float=D) == {
        "big": D("99999999999999999.99"),
        "long": [D("1234567890123456789.01"), D("-0.001"), D("1E-7"), D("12.50")],
        "whole": 3,
        "nan": None,
        "2.5": "a key",
        "text": runtime._DECIMAL_MARK[:-1] + "x",
    }
    assert b'"big":99999999999999999.99' in text
    assert encode_result(D("0.1")) == b"0.1"


def test_numpy_values_with_no_json_form_are_named_by_their_own_type() -> None:
    # numpy.longdouble's tolist() is itself: it was "nested too deeply, or contains
    # itself"; a timedelta64 was named as the datetime.timedelta it became.
    np = pytest.importorskip("numpy")
    cases = {
        "numpy.longdouble at $.x (it has no Python equivalent)": {"x": np.longdouble(1.5)},
        "numpy.longdouble at $[0] (it has no Python equivalent)": np.array([np.longdouble(1)]),
        "numpy.timedelta64 at $.t": {"t": np.timedelta64(5, "s")},
        "numpy.complex128 at $": np.complex128(1 + 2j),
    }
    for described, value in cases.items():
        with pytest.raises(runtime.NotSerializable) as caught:
            encode_result(value)
        assert caught.value.describe() == described


def test_pandas_like_values_convert_when_pandas_present() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert json.loads(encode_result({"df": frame, "s": frame["a"]})) == {
        "df": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}],
        "s": [1, 2],
    }


def test_not_serializable_names_type_and_path() -> None:
    class Thing:
        pass

    with pytest.raises(NotSerializable) as info:
        to_jsonable({"a": {"b": [1, 2, Thing()]}})
    assert info.value.path == "$.a.b[2]"
    assert "Thing" in info.value.type_name


def test_none_result_is_empty_body() -> None:
    assert encode_result(None) == b""


# ------------------------------------------------------------- call_once


def _binder(source: str, name: str = "f") -> Binder:
    namespace: dict[str, object] = {}
    exec(source, namespace)
    return Binder(namespace[name])


def test_a_function_name_the_module_lacks_names_its_public_functions() -> None:
    # A typo in service.json's "function" ('scroe'): the error lists what it could mean.
    import types

    module = types.ModuleType("m")
    exec("import json\ndef score(x): return x\ndef score_batch(xs): return xs\ndef _helper(): pass\n",
         module.__dict__)
    with pytest.raises(AttributeError) as info:
        runtime._pick_function(module, "scroe", "/src/m.py")
    assert str(info.value) == "/src/m.py defines no function named 'scroe' (its public functions: score, score_batch)"


def test_call_once_takes_nan_and_infinities_as_pythons_json_writes_them() -> None:
    # README: json.dumps (so the official client) writes a pandas missing value as NaN.
    binder = _binder("def f(a, b, c): return {'a': repr(a), 'b': repr(b), 'c': repr(c)}")
    kind, body, _ = runtime.call_once(binder, b'{"a": NaN, "b": Infinity, "c": -Infinity}', False)
    assert kind == runtime.RESULT
    assert json.loads(body) == {"a": "nan", "b": "inf", "c": "-inf"}


def test_call_once_result_and_timing() -> None:
    kind, body, elapsed = runtime.call_once(_binder("def f(a, b): return {'sum': a + b}"), b'{"a":1,"b":2}', False)
    assert (kind, json.loads(body)) == (RESULT, {"sum": 3})
    assert elapsed >= 0


@pytest.mark.parametrize("body", [b"[1]", b"not json", b'"x"', b"{"])
def test_call_once_bad_json(body: bytes) -> None:
    kind, answer, _ = runtime.call_once(_binder("def f(**k): return k"), body, False)
    error = json.loads(answer)
    assert kind == ERROR
    assert error["errorType"] == "BadRequest"
    assert error["message"] == "Could not parse a JsonObject from request body"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"x": 1,}', "Expecting property name enclosed in double quotes: line 1 column 9 (char 8)"),
        (b"{'x': 1}", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (b'{"x": 1} {"y": 2}', "Extra data: line 1 column 10 (char 9)"),
        (b'{\n  "x": 1 // a comment\n}', "Expecting ',' delimiter: line 2 column 10 (char 11)"),
    ],
)
def test_call_once_says_where_a_body_that_begins_as_an_object_stops_parsing(body: bytes, where: str) -> None:
    """A trailing comma, single quotes, a comment: the message stays DSS's, and the
    detailedMessage says why and where, as the standard library's parser does."""
    kind, answer, _ = runtime.call_once(_binder("def f(**k): return k"), body, False)
    error = json.loads(answer)
    assert (kind, error["message"]) == (ERROR, "Could not parse a JsonObject from request body")
    assert error["detailedMessage"] == f"Could not parse a JsonObject from request body: {where}"


def test_call_once_body_nested_too_deep_says_so() -> None:
    depth = runtime.UJSON_MAX_DEPTH + 1
    body = b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    kind, answer, _ = runtime.call_once(_binder("def f(**k): return k"), body, False)
    error = json.loads(answer)
    assert (kind, error["errorType"]) == (ERROR, "BadRequest")
    assert error["message"] == (
        "Could not parse a JsonObject from request body: nested too deep: more than 1024 levels"
    )
    ok = b'{"a":' + b"[" * (depth - 2) + b"]" * (depth - 2) + b"}"  # 1024 levels: parsed
    assert runtime.call_once(_binder("def f(a): return 1"), ok, False)[:2] == (RESULT, b"1")


@pytest.mark.parametrize("body", [b"", b"  ", b"\r\n\t "])
def test_call_once_empty_body_is_empty_object(body: bytes) -> None:
    kind, answer, _ = runtime.call_once(_binder("def f(z=0): return z"), body, False)
    assert (kind, answer) == (RESULT, b"0")


# ----------------------------------------------------- ujson's positional arguments


ujson = pytest.importorskip("ujson")


def test_results_are_written_with_ujsons_positional_form_here() -> None:
    # The ujson the tests install takes the fast form; its text is the keyword form's.
    assert runtime._dumps is not runtime._dumps_by_name
    for value in ({"url": "a/b", "name": "é✓", "html": "<&>"}, [0.1 + 0.2, 1e22, -0.0], "x", None):
        assert runtime._dumps(value) == runtime._dumps_by_name(value)
    with pytest.raises((OverflowError, ValueError)):
        runtime._dumps({"x": float("nan")})


def _slash_escaping_dumps(obj: object, *args: object, **kwargs: object) -> str:
    """A ujson in whose order escape_forward_slashes comes later: positionally it keeps its default."""
    if args:
        return str(ujson.dumps(obj, ensure_ascii=False, allow_nan=False))
    return str(ujson.dumps(obj, **kwargs))


def _nan_writing_dumps(obj: object, *args: object, **kwargs: object) -> str:
    """A ujson that takes the positional arguments but ignores allow_nan in them."""
    if args:
        return str(ujson.dumps(obj, *args[:-1], True))
    return str(ujson.dumps(obj, **kwargs))


def _fewer_arguments_dumps(obj: object, *args: object, **kwargs: object) -> str:
    """An older ujson with fewer parameters."""
    if len(args) > 3:
        raise TypeError("function takes at most 4 arguments")
    return str(ujson.dumps(obj, *args, **kwargs))


@pytest.mark.parametrize("dumps", [_slash_escaping_dumps, _nan_writing_dumps, _fewer_arguments_dumps])
def test_a_ujson_whose_positional_arguments_differ_keeps_the_keywords(
    monkeypatch: pytest.MonkeyPatch, dumps: object
) -> None:
    class OtherUjson:
        pass

    other = OtherUjson()
    other.dumps = dumps  # type: ignore[attr-defined]
    monkeypatch.setattr(runtime, "_json", other)
    assert runtime._positional_dumps_agrees() is False
    monkeypatch.undo()
    assert runtime._positional_dumps_agrees() is True


def test_function_error_wording_and_http_status() -> None:
    source = (
        "class Custom(Exception):\n    http_status_code = 418\n"
        "def f(x):\n    if x: raise Custom('teapot')\n    raise ValueError('bad x')\n"
    )
    binder = _binder(source)
    kind, body, _ = runtime.call_once(binder, b'{"x": 0}', False)
    error = json.loads(body)
    assert kind == ERROR and error["status"] == 500 and error["errorType"] == "FunctionError"
    assert error["message"] == "Failed to run function : <class 'ValueError'> : bad x"
    assert "Traceback" not in error["detailedMessage"]
    _, body, _ = runtime.call_once(binder, b'{"x": 1}', True)
    error = json.loads(body)
    assert error["status"] == 418
    assert "Traceback" in error["detailedMessage"]


def test_a_call_that_raised_logs_its_traceback_at_most_once_per_interval(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Outside dev mode the answer has no traceback (SPEC §3.4): the node's log has it, or
    # an operator could not find the failing line. A function that always raises: one
    # per TRACEBACK_LOG_INTERVAL_S, then a count of those not shown.
    monkeypatch.setattr(runtime, "_traceback_log", [float("-inf"), 0])
    clock = [1000.0]
    monkeypatch.setattr(runtime.time, "monotonic", lambda: clock[0])
    binder = _binder("def f(x):\n    return {}[x]\n")
    for _ in range(3):
        assert runtime.call_once(binder, b'{"x": "missing"}', False)[0] == ERROR
    first = capfd.readouterr().err
    assert first.count("Traceback (most recent call last)") == 1
    assert "a call raised; its traceback follows:" in first
    assert 'File "<string>", line 2, in f' in first and "KeyError: 'missing'" in first
    assert "runtime.py" not in first  # the user's frames only
    clock[0] += runtime.TRACEBACK_LOG_INTERVAL_S
    runtime.call_once(binder, b'{"x": "again"}', False)
    second = capfd.readouterr().err
    assert "(2 more raised since the last traceback, not shown)" in second
    assert "KeyError: 'again'" in second
    runtime.call_once(binder, b'{"x": 1}', True)  # dev mode: the answer carries it instead
    assert capfd.readouterr().err == ""


def test_result_not_serializable_is_an_error_frame() -> None:
    kind, body, _ = runtime.call_once(_binder("def f(): return {'x': object()}"), b"{}", False)
    error = json.loads(body)
    assert kind == ERROR and error["errorType"] == "ResultNotSerializable" and error["status"] == 500
    assert "$.x" in error["message"] and "object" in error["message"]


# ---------------------------------------------------------------- serve loop


def _serve(tmp_path: Path, source: str, function: str | None) -> tuple[threading.Thread, int, int, list]:
    (tmp_path / "ep.py").write_text(source)
    call_r, call_w = os.pipe()
    ans_r, ans_w = os.pipe()
    result: list = []
    spec = {"root": str(tmp_path), "code": "ep.py", "function": function, "folders": ["/data/model"]}
    cwd = os.getcwd()

    def target() -> None:
        try:
            result.append(runtime.serve(call_r, ans_w, spec))
        finally:
            os.chdir(cwd)
            os.close(call_r)
            os.close(ans_w)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, call_w, ans_r, result


def test_serve_ready_call_and_eof(tmp_path: Path) -> None:
    source = "import os\nSEEN = list(folders)\ndef handler(a):\n    return {'a': a, 'folders': SEEN, 'cwd': os.getcwd()}\n"
    thread, call_w, ans_r, result = _serve(tmp_path, source, None)
    kind, _, body = read_frame(ans_r)
    assert kind == READY and json.loads(body)["function"] == "handler"
    write_frame(call_w, CALL, b'{"a": 5}')
    kind, _, body = read_frame(ans_r)
    assert kind == RESULT
    assert json.loads(body) == {"a": 5, "folders": ["/data/model"], "cwd": str(tmp_path)}
    os.close(call_w)
    thread.join(5)
    os.close(ans_r)
    assert result == [0]


def test_serve_refuses_a_call_whose_start_by_passed_and_runs_the_next(tmp_path: Path) -> None:
    thread, call_w, ans_r, result = _serve(tmp_path, "def f(n):\n    return n\n", "f")
    assert read_frame(ans_r)[0] == READY
    now_ns = time.monotonic_ns()
    write_frame(call_w, CALL, b'{"n": 1}', now_ns - 1)  # start-by passed: not run
    write_frame(call_w, CALL, b'{"n": 2}', now_ns + 60 * 10**9)  # start-by to come: run
    write_frame(call_w, CALL, b'{"n": 3}', 0)  # no start-by: run
    assert read_frame(ans_r) == (runtime.NOT_STARTED, 0, b"")
    for expected in (b"2", b"3"):
        kind, _, body = read_frame(ans_r)
        assert (kind, body) == (RESULT, expected)
    os.close(call_w)
    thread.join(5)
    os.close(ans_r)
    assert result == [0]


def test_serve_being_killed_starts_nothing_and_says_so(tmp_path: Path) -> None:
    thread, call_w, ans_r, result = _serve(tmp_path, "def f(n):\n    return n\n", "f")
    assert read_frame(ans_r)[0] == READY
    runtime._KILL_NOTICE[0] = True  # what SIGUSR1 sets before an exec-timeout kill
    try:
        # Both calls in one write: the worker exits after reading the first, so a second
        # write could meet a closed pipe (EPIPE).
        os.write(call_w, encode_frame(CALL, b'{"n": 1}') + encode_frame(CALL, b'{"n": 2}'))
        assert read_frame(ans_r) == (runtime.NOT_STARTED, runtime.NOT_STARTED_STOPPING, b"")
        thread.join(5)
        assert result == [0] and read_frame(ans_r) is None  # exited: nothing else answered
    finally:
        runtime._KILL_NOTICE[0] = False
        os.close(call_w)
        os.close(ans_r)


def test_serve_init_error(tmp_path: Path) -> None:
    thread, call_w, ans_r, result = _serve(tmp_path, "raise RuntimeError('no model')\n", "f")
    kind, _, body = read_frame(ans_r)
    info = json.loads(body)
    assert kind == INIT_ERROR
    assert info["message"] == "RuntimeError: no model"
    assert "Traceback" in info["traceback"]
    thread.join(5)
    os.close(call_w)
    os.close(ans_r)
    assert result == [runtime.EXIT_INIT_FAILED]


def test_single_public_function_fallback_needs_exactly_one(tmp_path: Path) -> None:
    source = "from os.path import join\ndef a(): pass\ndef b(): pass\n"
    thread, call_w, ans_r, _ = _serve(tmp_path, source, None)
    kind, _, body = read_frame(ans_r)
    assert kind == INIT_ERROR and "found: a, b" in json.loads(body)["message"]
    thread.join(5)
    os.close(call_w)
    os.close(ans_r)
