"""Output written while a call runs carries the call's request id (CALL_TAGGED frames).

The node logs each such line with `[req ID]` (scheduler.worker_handle._log_user_line),
so that an operator can tie a function's print(), logging record or traceback to the
request that caused it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightnode.worker import runtime
from lightnode.worker.runtime import (
    CALL,
    CALL_TAGGED,
    ERROR,
    READY,
    RESULT,
    TAG_END,
    TAG_START,
    TaggedLines,
    read_frame,
    write_frame,
)
from tests.unit.worker._runtime_calls import start_runtime, stop_runtime

T = TAG_START + "req-7" + TAG_END


@pytest.fixture
def running() -> Iterator[None]:
    runtime._CALL_TAG[0] = b"req-7"
    yield
    runtime._CALL_TAG[0] = None


def test_each_line_begun_during_a_call_carries_its_id(running: None) -> None:
    out = io.StringIO()
    stream = TaggedLines(out)
    assert stream.write("one\ntwo\n") == len("one\ntwo\n")
    print("a", "b", file=stream)  # four writes: "a", " ", "b", "\n"
    stream.write("no end yet")
    stream.write(" ... ended\nnext")
    assert out.getvalue() == f"{T}one\n{T}two\n{T}a b\n{T}no end yet ... ended\n{T}next"


def test_lines_between_calls_go_as_they_are() -> None:
    out = io.StringIO()
    stream = TaggedLines(out)
    stream.write("init\n")
    runtime._CALL_TAG[0] = b"r1"
    try:
        stream.write("in call\n")
    finally:
        runtime._CALL_TAG[0] = None
    stream.write("after\n")
    assert out.getvalue() == f"init\n{TAG_START}r1{TAG_END}in call\nafter\n"


def test_everything_else_is_the_wrapped_streams() -> None:
    out = io.StringIO()
    stream = TaggedLines(out)
    stream.writelines(["x\n", "y"])
    assert stream.getvalue() == "x\ny"  # type: ignore[attr-defined]  # delegated
    assert stream.write("") == 0 and not stream.isatty()


def test_a_pipeline_tags_its_calls_output_and_traceback(tmp_path: Path) -> None:
    source = (
        "import logging, sys\n"
        "print('at init', file=sys.stderr)\n"
        "def f(fail=False):\n"
        "    print('printed', file=sys.stderr)\n"
        "    logging.getLogger('model').warning('logged')\n"
        "    if fail:\n"
        "        raise ValueError('bad input')\n"
        "    return 1\n"
    )
    proc, call_w, ans_r = start_runtime(tmp_path, source)
    try:
        assert read_frame(ans_r)[0] == READY
        write_frame(call_w, CALL_TAGGED, b"first-id\n{}")
        assert read_frame(ans_r)[0] == RESULT
        write_frame(call_w, CALL_TAGGED, b"second-id\n" + b'{"fail": true}')
        assert read_frame(ans_r)[0] == ERROR
        write_frame(call_w, CALL, b"{}")  # untagged, as before tags existed
        assert read_frame(ans_r)[0] == RESULT
    finally:
        err = stop_runtime(proc, call_w, ans_r).decode()
    first = TAG_START + "first-id" + TAG_END
    second = TAG_START + "second-id" + TAG_END
    lines = err.split("\n")
    assert "at init" in lines
    assert f"{first}printed" in lines and f"{first}WARNING:model:logged" in lines
    assert f"{second}printed" in lines
    traceback_lines = [line for line in lines if "bad input" in line or "Traceback" in line]
    assert traceback_lines and all(line.startswith(second) for line in traceback_lines)
    assert lines.count("printed") == 1  # the untagged call's line
