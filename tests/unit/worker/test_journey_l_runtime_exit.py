"""A pipeline asked to stop (its call pipe closed) exits by itself even when user code
left a thread running: it must not linger until the node's SIGTERM, 5 s later, holding
its memory while the pool already started its successor."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from lightnode.worker.runtime import CALL, READY, RESULT, read_frame, write_frame
from tests.unit.worker._runtime_calls import start_runtime

# A function that leaves a non-daemon thread running forever (a heartbeat, a metrics
# pusher, a library's monitor thread): the interpreter's normal exit would wait for it.
_THREAD_LEFT_RUNNING = (
    "import threading, time\n"
    "def _beat():\n"
    "    while True:\n"
    "        time.sleep(0.01)\n"
    "def f():\n"
    "    threading.Thread(target=_beat, daemon=False).start()\n"
    "    return {'threads': threading.active_count()}\n"
)


def test_a_stopped_pipeline_exits_although_a_user_thread_still_runs(tmp_path: Path) -> None:
    proc, call_w, ans_r = start_runtime(tmp_path, _THREAD_LEFT_RUNNING)
    try:
        ready = read_frame(ans_r)
        assert ready is not None and ready[0] == READY
        write_frame(call_w, CALL, b"{}")
        answer = read_frame(ans_r)
        assert answer is not None and answer[0] == RESULT
        started = time.monotonic()
        os.close(call_w)
        call_w = -1
        # Generous: the runtime's own grace is about 1 s; the node escalates at 5 s.
        _, stderr = proc.communicate(timeout=4.5)
        assert proc.returncode == 0, stderr.decode()
        assert time.monotonic() - started < 4.5
    except subprocess.TimeoutExpired:
        raise AssertionError("the pipeline was still running 4.5 s after its call pipe closed") from None
    finally:
        _end(proc, call_w, ans_r)


def _end(proc: subprocess.Popen[bytes], call_w: int, ans_r: int) -> None:
    """Kill the runtime if still running and close the test's ends of its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=5)
    if call_w >= 0:
        os.close(call_w)
    os.close(ans_r)


def test_atexit_handlers_of_user_code_still_run_to_their_end(tmp_path: Path) -> None:
    # Without a thread left running the exit is the interpreter's own: a handler that
    # takes longer than the runtime's grace (a flush of telemetry) is not cut short.
    marker = tmp_path / "flushed"
    source = (
        "import atexit, time\n"
        "def _flush():\n"
        "    time.sleep(1.5)\n"
        f"    open({str(marker)!r}, 'w').write('done')\n"
        "atexit.register(_flush)\n"
        "def f():\n"
        "    return 1\n"
    )
    proc, call_w, ans_r = start_runtime(tmp_path, source)
    try:
        ready = read_frame(ans_r)
        assert ready is not None and ready[0] == READY
        os.close(call_w)
        call_w = -1
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 0, stderr.decode()
        assert marker.read_text() == "done"
    finally:
        _end(proc, call_w, ans_r)
