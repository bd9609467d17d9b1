"""Hostile or unusual user code, seen by the worker runtime (SPEC §3.2, §3.4).

Each case once took a pipeline down, kept an endpoint from loading or answered wrongly:
user code run while the result is converted (a container whose iteration raises, a
result another thread changes), an exception whose text, class or status raises even
SystemExit, a callable without `__name__` as the function, a default value whose text
is huge or cannot be made, two keys written as the same text, an endpoint module named
like a module the runtime had already imported, a ujson before 3.0 in the code environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightnode.worker import runtime
from lightnode.worker.runtime import CALL, ERROR, READY, RESULT, Binder, read_frame, write_frame
from tests.unit.worker._runtime_calls import call as _call
from tests.unit.worker._runtime_calls import start_runtime, stop_runtime

# ------------------------------------------------- user code run while the result is converted

_CONTAINERS = (
    "class BadDict(dict):\n    def items(self):\n        raise RuntimeError('no items')\n"
    "class BadList(list):\n    def __iter__(self):\n        raise KeyError('no iteration')\n"
    "class Exits(list):\n    def __iter__(self):\n        raise SystemExit(4)\n"
    "class BadDate(__import__('datetime').date):\n    def isoformat(self):\n        raise OSError('no text')\n"
)


@pytest.mark.parametrize(
    "result, message",
    [
        ("{'a': [1, BadDict(x=1)]}", "BadDict at $.a[1] (converting it raised RuntimeError: no items)"),
        ("{'l': BadList([1])}", "BadList at $.l (converting it raised KeyError: 'no iteration')"),
        ("[Exits([1])]", "Exits at $[0] (converting it raised SystemExit: 4)"),
        ("{'d': BadDate(2020, 1, 1)}", "BadDate at $.d (converting it raised OSError: no text)"),
    ],
)
def test_user_code_that_raises_while_the_result_is_converted_gives_result_not_serializable(
    result: str, message: str
) -> None:
    kind, error = _call(_CONTAINERS + f"def f():\n    return {result}\n")
    assert kind == ERROR
    assert error == {
        "errorType": "ResultNotSerializable",
        "message": f"Result is not JSON-serializable: {message}",
        "detailedMessage": f"Result is not JSON-serializable: {message}",
        "status": 500,
    }


def test_a_set_whose_items_cannot_be_ordered_is_written_unordered() -> None:
    source = (
        "class Text(str):\n    def __lt__(self, other):\n        raise LookupError('no order')\n"
        "def f():\n    return {'s': {Text('a'), Text('b')}}\n"
    )
    kind, result = _call(source)
    assert kind == RESULT and sorted(result["s"]) == ["a", "b"]  # type: ignore[index]


def test_a_dict_changed_by_another_thread_while_looked_at_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_plain()` iterating a dict that another thread changes raises RuntimeError: the
    result is then converted by to_jsonable(), which reads it again (or names it)."""

    def changed(obj: object) -> bool:
        raise RuntimeError("dictionary changed size during iteration")

    monkeypatch.setattr(runtime, "_plain", changed)
    assert runtime.encode_result({"a": [1, {"b": None}]}) == b'{"a":[1,{"b":null}]}'


def test_a_dict_whose_items_raise_while_converted_is_named() -> None:
    with pytest.raises(runtime.NotSerializable) as caught:
        runtime.encode_result({"d": _Changing(a=1), "k": {1: 2}})
    assert caught.value.describe().endswith(
        "._Changing at $.d (converting it raised RuntimeError: dictionary changed size during iteration)"
    )


class _Changing(dict):  # type: ignore[type-arg]
    def items(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("dictionary changed size during iteration")


def test_two_keys_written_as_the_same_text_are_refused_not_one_dropped() -> None:
    kind, error = _call("def f():\n    return {'x': {1: 'int', '1': 'str'}}\n")
    assert kind == ERROR
    assert error["message"] == (  # type: ignore[index]
        "Result is not JSON-serializable: str at $.x (the key '1' is written '1', as is another key)"
    )
    assert _call("def f():\n    return {1: 'a', None: 'b', 2.5: 'c'}\n") == (
        RESULT, {"1": "a", "null": "b", "2.5": "c"},
    )  # fmt: skip


# ------------------------------------------------------------- the function and its signature


def test_a_default_with_a_huge_text_is_shown_cut_short() -> None:
    source = "TABLE = {str(i): i for i in range(100000)}\ndef f(x, table=TABLE, n=3):\n    return table[x]\n"
    namespace: dict[str, object] = {}
    exec(source, namespace)
    binder = Binder(namespace["f"])  # type: ignore[arg-type]
    assert len(binder.signature_text) < 200
    assert binder.signature_text == "f(x, table={'0': 0, '1': 1, '10': 10, '100': 100, ...}, n=3)"
    kind, error = _call(source, b'{"y": 1}')
    assert kind == ERROR and len(error["message"]) < 300  # type: ignore[index]


def test_a_default_whose_repr_raises_does_not_keep_the_endpoint_from_loading() -> None:
    source = (
        "class Model:\n    def __repr__(self):\n        raise RuntimeError('closed')\n"
        "def f(x, model=Model()):\n    return x\n"
    )
    namespace: dict[str, object] = {}
    exec(source, namespace)
    binder = Binder(namespace["f"])  # type: ignore[arg-type]
    assert binder.signature_text.startswith("f(x, model=<Model instance at 0x")
    assert binder.signature_text.endswith(">)")
    assert _call(source, b'{"x": 2}') == (RESULT, 2)


def _one_call(tmp_path: Path, source: str, function: str, body: bytes, code: str = "ep.py") -> tuple[object, object]:
    proc, call_w, ans_r = start_runtime(tmp_path, source, function, code)
    try:
        frame = read_frame(ans_r)
        assert frame is not None and frame[0] == READY, proc.communicate(timeout=10)[1].decode()
        write_frame(call_w, CALL, body)
        answer = read_frame(ans_r)
        assert answer is not None
        return json.loads(frame[2]), (answer[0], json.loads(answer[2]))
    finally:
        stop_runtime(proc, call_w, ans_r)


@pytest.mark.parametrize(
    "source, function, name, signature",
    [
        (
            "import functools\ndef _add(a, b):\n    return a + b\nf = functools.partial(_add, 40)\n",
            "f", "_add", "_add(b)",
        ),
        (
            "class Model:\n    def __call__(self, b):\n        return b + 40\nf = Model()\n",
            "f", "Model", "Model(b)",
        ),
    ],
)  # fmt: skip
def test_a_callable_without_a_name_serves(tmp_path: Path, source: str, function: str, name: str, signature: str) -> None:
    ready, answer = _one_call(tmp_path, source, function, b'{"b": 2}')
    assert ready["function"] == name and ready["signature"] == signature  # type: ignore[index]
    assert answer == (RESULT, 42)


@pytest.mark.parametrize("module", ["time", "os", "re", "collections", "types"])
def test_an_endpoint_module_named_like_a_module_already_imported_does_not_replace_it(
    tmp_path: Path, module: str
) -> None:
    """A plain interpreter never lets a file shadow a module it has imported already: the
    runtime (which imported these before the endpoint's code) must not either."""
    source = (
        "import logging, decimal, datetime\n"
        "logging.getLogger('x').warning('fine')\n"
        "def f():\n"
        "    return {'d': decimal.Decimal('1.5'), 't': datetime.date(2020, 1, 2), 'n': __name__}\n"
    )
    _, answer = _one_call(tmp_path, source, "f", b"{}", code=f"{module}.py")
    assert answer == (RESULT, {"d": 1.5, "t": "2020-01-02", "n": module})


# ------------------------------------------------------------- exceptions that fight back


@pytest.mark.parametrize("dev", [False, True])
def test_an_exception_whose_str_raises_a_base_exception_is_still_answered(dev: bool) -> None:
    source = (
        "class Odd(Exception):\n    def __str__(self):\n        raise SystemExit('no text')\n"
        "def f():\n    raise Odd()\n"
    )
    namespace: dict[str, object] = {}
    exec(source, namespace)
    kind, answer, _ = runtime.call_once(Binder(namespace["f"]), b"{}", dev)  # type: ignore[arg-type]
    error = json.loads(answer)
    assert kind == ERROR and error["errorType"] == "FunctionError"
    assert error["message"] == "Failed to run function : <class 'Odd'> : <str() of the exception raised SystemExit>"


def test_an_http_status_code_that_raises_a_base_exception_gives_500() -> None:
    source = (
        "class Odd(Exception):\n    @property\n    def http_status_code(self):\n        raise SystemExit(2)\n"
        "def f():\n    raise Odd('x')\n"
    )
    kind, error = _call(source)
    assert kind == ERROR and error["status"] == 500  # type: ignore[index]
    assert error["message"] == "Failed to run function : <class 'Odd'> : x"  # type: ignore[index]


def test_an_exception_whose_class_cannot_be_shown_is_still_answered() -> None:
    source = (
        "class Meta(type):\n    def __repr__(cls):\n        raise RuntimeError('no class text')\n"
        "class Odd(Exception, metaclass=Meta):\n    pass\n"
        "def f():\n    raise Odd('x')\n"
    )
    kind, error = _call(source)
    assert kind == ERROR
    assert error["message"] == "Failed to run function : <class 'Odd'> : x"  # type: ignore[index]


# ----------------------------------------------------------- the code environment's own ujson

# ujson before 3.0 (1.35 and 2.0 were current for years and are still pinned in old
# environments): dumps() knows no allow_nan, and loads() parses floats imprecisely unless
# asked. A stand-in with that signature, put ahead of any real ujson.
_OLD_UJSON = '''
import json
__version__ = "1.35"
def dumps(obj, ensure_ascii=True, double_precision=9, encode_html_chars=False,
          escape_forward_slashes=True, sort_keys=False, indent=0):
    return json.dumps(obj, ensure_ascii=ensure_ascii, sort_keys=sort_keys, separators=(",", ":"))
def loads(s, precise_float=False):
    return json.loads(s)
'''


def test_a_ujson_without_allow_nan_in_the_code_environment_leaves_the_standard_library_to_serve(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "ujson.py").write_text(_OLD_UJSON)
    code = tmp_path / "code"
    code.mkdir()
    (code / "ep.py").write_text("def f(x):\n    return {'x': x, 'nan': float('nan'), 'u': '\\u00e9/'}\n")
    call_r, call_w = os.pipe()
    ans_r, ans_w = os.pipe()
    spec = {"root": str(code), "code": "ep.py", "function": "f", "folders": []}
    proc = subprocess.Popen(
        [sys.executable, runtime.__file__, str(call_r), str(ans_w), json.dumps(spec)],
        pass_fds=(call_r, ans_w), cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(site)),
    )  # fmt: skip
    os.close(call_r)
    os.close(ans_w)
    try:
        frame = read_frame(ans_r)
        assert frame is not None and frame[0] == READY, proc.communicate(timeout=10)[1].decode()
        write_frame(call_w, CALL, b'{"x": 0.1}')
        answer = read_frame(ans_r)
        assert answer is not None
        assert (answer[0], json.loads(answer[2])) == (RESULT, {"x": 0.1, "nan": None, "u": "\u00e9/"})
    finally:
        stop_runtime(proc, call_w, ans_r)
