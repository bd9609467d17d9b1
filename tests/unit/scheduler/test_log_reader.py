"""The log pipe's reader: user output logged a bounded share per pass of the event loop.

A read of a pipeline's stdout/stderr holds thousands of lines; logged at once they
would hold the event loop. The reader logs for its budget, stops reading the pipe,
and logs the rest over later passes (fake transport, budget 0: one line a pass).
Nothing is lost or reordered, a line cut across reads stays whole, and the pipe is
read to its EOF: the output of a pipeline that exited is logged to its end, and a
pipeline blocked on its full pipe neither blocks the node nor keeps it from
stopping or killing it (a real pipe under both event loops; real pipelines under
uvloop, the node's loop).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from lightnode.scheduler.worker_handle import _UNFINISHED_LOGS, WorkerHandle, WorkerSpec, _LogReader

PREFIX = "[svc/ep pid=1]"

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


class Records(logging.Handler):
    """The messages of lightnode.user, each costing `cost_s` (a slow log: a file, a disk)."""

    def __init__(self, cost_s: float = 0.0) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.cost_s = cost_s

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if self.cost_s:
            until = time.perf_counter() + self.cost_s
            while time.perf_counter() < until:
                pass


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    user_log = logging.getLogger("lightnode.user")
    level = user_log.level
    user_log.addHandler(handler)
    user_log.setLevel(logging.INFO)
    yield handler
    user_log.removeHandler(handler)
    user_log.setLevel(level)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class FakeTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closing = False

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def is_closing(self) -> bool:
        return self.closing


def _one_pass(loop: asyncio.AbstractEventLoop) -> None:
    """Run the callbacks due now (the reader's next share), then return."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def _lines(*texts: str) -> list[str]:
    return [f"{PREFIX} {text}" for text in texts]


def _reader(loop: asyncio.AbstractEventLoop) -> tuple[_LogReader, FakeTransport]:
    reader = _LogReader(PREFIX, loop, budget_s=0.0)  # one line a pass
    transport = FakeTransport()
    reader.connection_made(transport)  # type: ignore[arg-type]
    return reader, transport


def test_a_read_over_the_budget_is_logged_over_later_passes_without_reading_meanwhile(
    loop: asyncio.AbstractEventLoop, records: Records
) -> None:
    reader, transport = _reader(loop)
    reader.data_received(b"one\r\ntwo\nthree\nfo")
    assert records.messages == _lines("one")
    assert transport.calls == ["pause"]
    _one_pass(loop)
    assert records.messages == _lines("one", "two")
    _one_pass(loop)
    assert records.messages == _lines("one", "two", "three")
    assert transport.calls == ["pause", "resume"]  # the whole lines are logged: read on
    _one_pass(loop)
    assert transport.calls == ["pause", "resume"]
    reader.data_received(b"ur\n")  # the line cut across reads is whole
    assert records.messages == _lines("one", "two", "three", "four")
    assert transport.calls == ["pause", "resume"]  # within the budget: no pause
    reader.data_received(b"five")
    reader.connection_lost(None)
    assert records.messages == _lines("one", "two", "three", "four", "five")


def test_a_read_arriving_before_the_pause_took_hold_waits_its_turn(
    loop: asyncio.AbstractEventLoop, records: Records
) -> None:
    reader, transport = _reader(loop)
    reader.data_received(b"a\nb\nc")
    reader.data_received(b"d\ne\n")
    assert records.messages == _lines("a")
    for _ in range(5):
        _one_pass(loop)
    assert records.messages == _lines("a", "b", "cd", "e")
    assert transport.calls == ["pause", "resume"]


def test_the_lines_waiting_at_eof_are_logged_then_the_last_one_without_its_end(
    loop: asyncio.AbstractEventLoop, records: Records
) -> None:
    reader, transport = _reader(loop)
    reader.data_received(b"a\nb\nc\nno end")
    reader.connection_lost(None)  # the pipeline exited; its output is not all logged yet
    assert records.messages == _lines("a")
    for _ in range(5):
        _one_pass(loop)
    assert records.messages == _lines("a", "b", "c", "no end")
    assert transport.calls == ["pause"]  # nothing to resume once closed


def test_a_line_without_end_is_logged_in_pieces(loop: asyncio.AbstractEventLoop, records: Records) -> None:
    reader, transport = _reader(loop)
    reader.data_received(b"x" * 40000)
    reader.data_received(b"x" * 40000 + b"\nafter")
    assert records.messages == _lines("x" * 80000)
    reader.data_received(b"y" * 70000)
    assert records.messages == _lines("x" * 80000, "after" + "y" * 70000)
    reader.connection_lost(None)
    assert transport.calls == []


def test_without_a_loop_every_read_is_logged_at_once(records: Records) -> None:
    reader = _LogReader(PREFIX, budget_s=0.0)
    reader.data_received(b"a\nb\nc\n")
    assert records.messages == _lines("a", "b", "c")


# -- real pipes and processes --------------------------------------------------------

FLOOD = 20_000


@pytest.mark.parametrize("make_loop", LOOPS.values(), ids=list(LOOPS))
def test_a_flood_leaves_the_loop_free_and_is_logged_to_the_end_after_its_writer_exits(
    make_loop: Callable[[], asyncio.AbstractEventLoop], records: Records
) -> None:
    """A process prints FLOOD lines and exits, most of them read after it wrote them."""
    records.cost_s = 20e-6
    # The lines logged by the time of each pass: a pass logs a budget's worth, not a read.
    logged_at_pass: list[int] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        # (Not a subclass watching connection_lost: the compiled build's classes cannot
        # be subclassed from Python.) A reader leaves _UNFINISHED_LOGS once it logged
        # its pipe's last line.
        readers: list[_LogReader] = []

        def reader() -> _LogReader:
            readers.append(_LogReader(PREFIX, loop))
            return readers[-1]

        def finished() -> bool:
            return bool(readers) and readers[0] not in _UNFINISHED_LOGS

        def tick() -> None:
            logged_at_pass.append(len(records.messages))
            if not finished():
                loop.call_soon(tick)

        writer = subprocess.Popen(
            [sys.executable, "-c", f"for i in range({FLOOD}):\n    print('line', i)"],
            stdout=subprocess.PIPE,
        )
        assert writer.stdout is not None
        tick()
        await loop.connect_read_pipe(reader, writer.stdout)
        assert await asyncio.to_thread(writer.wait, 30) == 0
        # (Whether lines were still unlogged when its exit was seen depends on the
        # machine's speed: the checks below hold either way.)
        deadline = time.monotonic() + 30
        while not finished():  # the pipe is read to its EOF
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

    loop = make_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert records.messages == _lines(*(f"line {i}" for i in range(FLOOD)))
    # A pass logs its budget's worth (tens of lines here), never a whole read (thousands:
    # 64 KiB), even when a read and the rest of an earlier one share a pass.
    most = max(after - before for before, after in itertools.pairwise(logged_at_pass))
    assert most < 1000, f"{most} lines logged in one pass"


class Loop(uvloop.Loop):
    """The node's event loop, keeping the transports of the pipes it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.read_pipes: list[Any] = []  # their transports

    async def connect_read_pipe(self, *args: Any, **kwargs: Any) -> Any:
        transport, protocol = await super().connect_read_pipe(*args, **kwargs)
        self.read_pipes.append(transport)
        return transport, protocol


def _run(scenario: Callable[[Loop], Any]) -> None:
    """Run scenario(loop), then until every pipe it read reached its EOF."""

    async def main(loop: Loop) -> None:
        await scenario(loop)
        deadline = time.monotonic() + 30
        while not all(pipe.is_closing() for pipe in loop.read_pipes):
            assert time.monotonic() < deadline, "a log pipe was not read to its EOF"
            await asyncio.sleep(0.01)

    loop = Loop()
    try:
        loop.run_until_complete(main(loop))
    finally:
        loop.close()


def _flooding_pipeline(tmp_path: Path, source: str) -> WorkerSpec:
    (tmp_path / "flood.py").write_text(source)
    return WorkerSpec("svc", "flood", "v1", tmp_path, "flood.py", None)


class Listener:
    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.answered = asyncio.Event()
        self.exited = asyncio.Event()
        self.events: list[tuple[str, Any]] = []

    def worker_ready(self, worker_id: int, info: dict[str, object]) -> None:
        self.ready.set()

    def worker_init_failed(self, worker_id: int, message: str, traceback: str) -> None:
        self.events.append(("init_failed", message))

    def worker_answered(self, worker_id: int, kind: int, value: int, body: bytes) -> None:
        self.events.append(("answered", body))
        self.answered.set()

    def worker_exited(self, worker_id: int, detail: str) -> None:
        self.events.append(("exited", detail))
        self.exited.set()


async def _logged(records: Records, done: Callable[[list[str]], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done(records.messages):
        assert time.monotonic() < deadline, f"{len(records.messages)} lines logged"
        await asyncio.sleep(0.01)


def test_a_pipeline_blocked_on_its_full_log_pipe_answers_and_stops(tmp_path: Path, records: Records) -> None:
    """Its call ends, its output is logged whole, and at the stop it exits on EOF."""
    records.cost_s = 20e-6
    spec = _flooding_pipeline(
        tmp_path, f"def flood():\n    for i in range({FLOOD}):\n        print('line', i)\n    return 1\n"
    )

    async def scenario(loop: Loop) -> None:
        listener = Listener()
        handle = WorkerHandle(loop, 1, spec, listener)
        handle.spawn()
        await asyncio.wait_for(listener.ready.wait(), 10)
        handle.send_call(b"{}")
        handle.stop()  # the call goes first; the pipeline then finds EOF
        await asyncio.wait_for(listener.exited.wait(), 10)
        assert listener.events == [("answered", b"1"), ("exited", "exit code 0")]
        prefix = f"[svc/flood pid={handle.pid}]"
        await _logged(records, lambda messages: len(messages) >= FLOOD, 30)
        assert records.messages == [f"{prefix} line {i}" for i in range(FLOOD)]

    _run(scenario)


def test_a_pipeline_flooding_without_end_is_killed_and_its_stack_still_logged(
    tmp_path: Path, records: Records
) -> None:
    """Killed while blocked on its full pipe: the exit is seen, the pipe read to its EOF."""
    records.cost_s = 20e-6
    spec = _flooding_pipeline(tmp_path, "def flood():\n    while True:\n        print('x' * 100)\n")

    async def scenario(loop: Loop) -> None:
        listener = Listener()
        handle = WorkerHandle(loop, 1, spec, listener)
        handle.spawn()
        await asyncio.wait_for(listener.ready.wait(), 10)
        handle.send_call(b"{}")
        await _logged(records, lambda messages: len(messages) >= 5000, 30)
        handle.kill()  # SIGUSR1: its stack to the log, then SIGKILL
        await asyncio.wait_for(listener.exited.wait(), 10)
        assert listener.events == [("exited", "killed by signal SIGKILL")]
        # The stack dump, written behind a pipe full of lines, is logged once they are.
        await _logged(records, lambda messages: any('flood.py", line 3' in m for m in messages), 30)

    _run(scenario)


def test_a_line_a_call_wrote_is_logged_with_its_request_id(records: Records) -> None:
    # runtime.TaggedLines begins each line written during a call with \x01 ID \x02.
    ids: list[object] = []

    class Ids(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            ids.append(getattr(record, "request_id", None))

    handler = Ids(logging.INFO)
    logging.getLogger("lightnode.user").addHandler(handler)
    try:
        reader = _LogReader(PREFIX)  # no loop: every read logged at once
        reader.data_received(b"\x01abc-1\x02hello\nplain\n\x01\x02no id\n\x01no end mark\n")
        reader.data_received(b"\x01" + b"x" * 200 + b"\x02too long for an id\n\x01a\x1b[2Jb\x02escaped\n")
        reader.connection_lost(None)
    finally:
        logging.getLogger("lightnode.user").removeHandler(handler)
    assert records.messages[:2] == _lines("hello", "plain")
    assert ids[:2] == ["abc-1", None]
    assert ids[2:5] == [None, None, None]  # marks without an id between them: logged as they are
    assert all("\x01" not in m and "\x02" not in m for m in records.messages)  # escaped (one_line)
    assert records.messages[5] == f"{PREFIX} escaped" and ids[5] == "a\\x1b[2Jb"
