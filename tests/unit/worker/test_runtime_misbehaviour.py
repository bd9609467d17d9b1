"""User code that misbehaves, seen by the worker runtime: odd exceptions, odd results, forks.

The rule (SPEC §3.4): a user exception never kills its pipeline, a result that is not
JSON gives ResultNotSerializable, and every call gets exactly one answer.
"""

from __future__ import annotations

import json
import select
import sys
from pathlib import Path

import pytest

from lightnode.worker import runtime
from lightnode.worker.runtime import CALL, ERROR, READY, RESULT, Binder, read_frame, write_frame
from tests.unit.worker._runtime_calls import call as _call
from tests.unit.worker._runtime_calls import start_runtime as _start
from tests.unit.worker._runtime_calls import stop_runtime as _stop

# ------------------------------------------------------- exceptions that are not Exception


@pytest.mark.parametrize(
    "raised, shown",
    [
        ("SystemExit(5)", "<class 'SystemExit'> : 5"),
        ("SystemExit", "<class 'SystemExit'> : "),
        ("KeyboardInterrupt()", "<class 'KeyboardInterrupt'> : "),
        ("GeneratorExit('g')", "<class 'GeneratorExit'> : g"),
    ],
)
def test_a_base_exception_from_the_function_is_a_function_error(raised: str, shown: str) -> None:
    kind, error = _call(f"def f():\n    raise {raised}\n")
    assert kind == ERROR
    assert error == {
        "errorType": "FunctionError",
        "message": f"Failed to run function : {shown}",
        "detailedMessage": f"Failed to run function : {shown}",
        "status": 500,
    }


def test_an_exception_whose_str_raises_is_still_answered() -> None:
    source = (
        "class Odd(Exception):\n    def __str__(self):\n        raise RuntimeError('no text')\n"
        "def f():\n    raise Odd()\n"
    )
    for dev in (False, True):
        kind, error = _call(source, dev=dev)
        assert kind == ERROR and isinstance(error, dict)
        assert error["status"] == 500
        assert (
            error["message"]
            == "Failed to run function : <class 'Odd'> : <str() of the exception raised RuntimeError>"
        )


def test_an_http_status_code_property_that_raises_gives_500() -> None:
    source = (
        "class Odd(Exception):\n    @property\n    def http_status_code(self):\n        raise KeyError('x')\n"
        "def f():\n    raise Odd('boom')\n"
    )
    kind, error = _call(source)
    assert kind == ERROR and isinstance(error, dict)
    assert (error["status"], error["message"]) == (
        500,
        "Failed to run function : <class 'Odd'> : boom",
    )


def test_http_status_code_503_is_answered_as_500() -> None:
    # A 503 from lightnode means the function did not run (SPEC §3.4, §12); this one ran.
    source = (
        "class Busy(Exception):\n    http_status_code = 503\ndef f():\n    raise Busy('later')\n"
    )
    kind, error = _call(source)
    assert kind == ERROR and isinstance(error, dict)
    assert error["status"] == 500
    assert error["message"] == "Failed to run function : <class 'Busy'> : later"
    assert "http_status_code 503 is answered as 500" in str(error["detailedMessage"])
    assert _call(source.replace("503", "502"))[1]["status"] == 502  # type: ignore[index]


# ------------------------------------------------------------------- results


@pytest.mark.parametrize("method, text", [("__json__", "'1}, \"injected\": true, \"x\": {\"y\": 2'"),
                                          ("__json__", "''"), ("toDict", "{'a': 1}")])  # fmt: skip
def test_objects_that_ujson_would_write_its_own_way_are_not_serializable(
    method: str, text: str
) -> None:
    source = f"class Raw:\n    def {method}(self):\n        return {text}\ndef f():\n    return {{'a': Raw()}}\n"
    kind, error = _call(source)
    assert kind == ERROR and isinstance(error, dict)
    assert error["errorType"] == "ResultNotSerializable"
    assert error["message"] == "Result is not JSON-serializable: Raw at $.a"


@pytest.mark.parametrize(
    "expression, reason",
    [
        ("x = []; x.append(x)", "list at $ (nested too deeply, or contains itself)"),
        ("x = {}; x['k'] = x", "dict at $ (nested too deeply, or contains itself)"),
        (
            "x = []\n    for _ in range(100000): x = [x]",
            "list at $ (nested too deeply, or contains itself)",
        ),
    ],
)
def test_results_nested_too_deeply_are_not_serializable(expression: str, reason: str) -> None:
    kind, error = _call(f"def f():\n    {expression}\n    return x\n")
    assert kind == ERROR and isinstance(error, dict)
    assert error["errorType"] == "ResultNotSerializable"
    assert error["message"] == f"Result is not JSON-serializable: {reason}"


@pytest.mark.parametrize("expression", ["[x]", "{'k': x}", "(x,)"])
def test_results_nested_deeper_than_the_recursion_limit_but_within_ujsons_are_written(expression: str) -> None:
    # ujson writes up to 1024 levels; Python's recursion limit (1000) must not refuse fewer.
    ujson = pytest.importorskip("ujson")
    namespace: dict[str, object] = {}
    exec(f"def f():\n    x = 1\n    for _ in range(1020): x = {expression}\n    return x\n", namespace)
    kind, body, _ = runtime.call_once(Binder(namespace["f"]), b"{}", False)  # type: ignore[arg-type]
    assert kind == RESULT
    answer, depth = ujson.loads(body), 0  # json.loads stops at its recursion limit
    while isinstance(answer, (list, dict)):
        answer = answer[0] if isinstance(answer, list) else answer["k"]
        depth += 1
    assert (depth, answer) == (1020, 1)


@pytest.mark.skipif(
    not hasattr(sys, "get_int_max_str_digits"), reason="no limit on int -> text here"
)
def test_an_integer_with_too_many_digits_is_not_serializable() -> None:
    kind, error = _call("def f():\n    return {'n': [1, 10 ** 5000]}\n")
    assert kind == ERROR and isinstance(error, dict)
    assert (
        error["message"]
        == "Result is not JSON-serializable: int at $.n[1] (an integer with too many digits)"
    )
    assert _call("def f():\n    return {'n': 10 ** 300}\n") == (RESULT, {"n": 10**300})


def test_a_lone_surrogate_is_written_as_its_json_escape() -> None:
    namespace: dict[str, object] = {}
    exec("def f():\n    return {'s': 'a\\ud800b', 'k': ['\\udfff']}\n", namespace)
    kind, answer, _ = runtime.call_once(Binder(namespace["f"]), b"{}", False)  # type: ignore[arg-type]
    assert kind == RESULT
    assert answer == b'{"s":"a\\ud800b","k":["\\udfff"]}'
    assert json.loads(answer) == {"s": "a\ud800b", "k": ["\udfff"]}


def test_a_lone_surrogate_escape_in_the_request_comes_back_escaped() -> None:
    namespace: dict[str, object] = {}
    exec("def f(x):\n    return {'x': x}\n", namespace)
    kind, answer, _ = runtime.call_once(Binder(namespace["f"]), b'{"x": "\\ud800"}', False)  # type: ignore[arg-type]
    assert (kind, answer) == (RESULT, b'{"x":"\\ud800"}')


def test_plain_results_take_ujsons_path_and_others_are_converted() -> None:
    assert runtime._plain({"a": [1, 2.5, "x", None, True, (1, 2)], "b": {"c": list(range(100))}})
    assert not runtime._plain({"a": {1, 2}})
    assert not runtime._plain({1: "int key"})
    assert not runtime._plain([0] * 100 + [object()])

    class Text(str):
        def __json__(self) -> str:
            return "raw"

    assert not runtime._plain({"a": Text("x")})  # subclasses are converted, never trusted


# ------------------------------------------------------------------- forks


def _nothing_more(fd: int) -> bool:
    """No further frame within half a second (a forked child would have written by then)."""
    return not select.select([fd], [], [], 0.5)[0]


def test_a_child_forked_by_the_function_does_not_answer(tmp_path: Path) -> None:
    source = "import os\ndef f(i):\n    if i == 0:\n        os.fork()\n    return {'i': i}\n"
    proc, call_w, ans_r = _start(tmp_path, source)
    try:
        assert read_frame(ans_r)[0] == READY  # type: ignore[index]
        answers = []
        for i in range(3):
            write_frame(call_w, CALL, json.dumps({"i": i}).encode())
            kind, _, body = read_frame(ans_r)  # type: ignore[misc]
            answers.append((kind, json.loads(body)))
        assert answers == [(RESULT, {"i": 0}), (RESULT, {"i": 1}), (RESULT, {"i": 2})]
        assert _nothing_more(ans_r)
    finally:
        stderr = _stop(proc, call_w, ans_r)
    assert proc.returncode == 0
    assert b"a process forked by user code returned to the pipeline's loop: it exits" in stderr


def test_a_child_forked_by_the_initialization_code_does_not_say_ready(tmp_path: Path) -> None:
    source = "import os\nos.fork()\ndef f():\n    return os.getpid()\n"
    proc, call_w, ans_r = _start(tmp_path, source)
    try:
        kind, _, body = read_frame(ans_r)  # type: ignore[misc]
        assert kind == READY and json.loads(body)["pid"] == proc.pid
        write_frame(call_w, CALL, b"{}")
        kind, _, body = read_frame(ans_r)  # type: ignore[misc]
        assert (kind, json.loads(body)) == (RESULT, proc.pid)
        assert _nothing_more(ans_r)
    finally:
        _stop(proc, call_w, ans_r)
    assert proc.returncode == 0
