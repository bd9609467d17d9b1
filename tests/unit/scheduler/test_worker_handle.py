"""WorkerHandle: a call sent to a pipeline that just died, and calls batched per loop pass.

Between a pipeline's death and the report of its exit the node may still send it
a call (a prefetched one, typically). The broken pipe must not raise out of the
dispatch: the exit, reported next, settles the call (real pipeline process).

The calls of new requests sent to one pipeline during one pass of the event loop
(several connections readable at once) go out in one write at the end of the pass;
those sent while the answers of one read are settled, in one write at the end of
that read (fake pipe). The answer pipe's reader cuts frames out of reads cut
anywhere (fake pipe).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lightnode.scheduler.worker_handle import WorkerHandle, WorkerSpec, _FrameReader, _LogReader
from lightnode.worker import runtime
from lightnode.worker.runtime import encode_frame
from tests.conftest import process_gone


class Listener:
    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.exited = asyncio.Event()
        self.events: list[tuple[str, Any]] = []

    def worker_ready(self, worker_id: int, info: dict[str, object]) -> None:
        self.events.append(("ready", info))
        self.ready.set()

    def worker_init_failed(self, worker_id: int, message: str, traceback: str) -> None:
        self.events.append(("init_failed", message))

    def worker_answered(self, worker_id: int, kind: int, value: int, body: bytes) -> None:
        self.events.append(("answered", body))

    def worker_exited(self, worker_id: int, detail: str) -> None:
        self.events.append(("exited", detail))
        self.exited.set()


def test_a_call_sent_to_a_dead_pipeline_is_settled_by_its_exit(tmp_path: Path) -> None:
    (tmp_path / "add.py").write_text("def add(a=0, b=0):\n    return {'sum': a + b}\n")
    spec = WorkerSpec("svc", "add", "v1", tmp_path, "add.py", None)

    async def scenario() -> None:
        listener = Listener()
        handle = WorkerHandle(asyncio.get_running_loop(), 1, spec, listener)
        handle.spawn()
        await asyncio.wait_for(listener.ready.wait(), 10)
        os.kill(handle.pid, signal.SIGKILL)
        # Write until the node's side of the pipe notices the broken pipe; no write raises.
        for _ in range(200):
            handle.send_call(b'{"a": 1, "b": 2}')
            if listener.exited.is_set():
                break
            await asyncio.sleep(0.005)
        await asyncio.wait_for(listener.exited.wait(), 10)
        assert listener.events[-1] == ("exited", "killed by signal SIGKILL")
        handle.send_call(b"{}")  # after the exit too: nothing to write to, nothing raised

    asyncio.run(scenario())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_processes_left_by_user_code_die_with_their_pipeline(tmp_path: Path) -> None:
    source = (
        "import os, time\n"
        "def spawn():\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        time.sleep(600)\n"
        "        os._exit(0)\n"
        "    return child\n"
    )
    (tmp_path / "spawn.py").write_text(source)
    spec = WorkerSpec("svc", "spawn", "v1", tmp_path, "spawn.py", None)

    class Answers(Listener):
        def __init__(self) -> None:
            super().__init__()
            self.answered = asyncio.Event()

        def worker_answered(self, worker_id: int, kind: int, value: int, body: bytes) -> None:
            super().worker_answered(worker_id, kind, value, body)
            self.answered.set()

    async def scenario() -> None:
        listener = Answers()
        handle = WorkerHandle(asyncio.get_running_loop(), 1, spec, listener)
        handle.spawn()
        await asyncio.wait_for(listener.ready.wait(), 10)
        handle.send_call(b"{}")
        await asyncio.wait_for(listener.answered.wait(), 10)
        child = int(listener.events[-1][1])
        assert not process_gone(child)
        handle.stop()  # the pipeline exits at EOF; its child would sleep on
        await asyncio.wait_for(listener.exited.wait(), 10)
        for _ in range(100):
            if process_gone(child):
                break
            await asyncio.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            raise AssertionError(f"pid {child}, forked by the function, outlived its pipeline")
        await asyncio.sleep(0.1)  # the log pipe's EOF (the child held it too) closes its transport

    asyncio.run(scenario())


def test_user_output_reaches_the_log_without_control_characters(caplog: pytest.LogCaptureFixture) -> None:
    reader = _LogReader("[svc/ep pid=1]")
    with caplog.at_level(logging.INFO, logger="lightnode.user"):
        reader.data_received(b"plain \xc3\xa9\tline\nnul\x00 and \x1b[31mred\r\nno end\x7f")
        reader.connection_lost(None)
    assert [record.getMessage() for record in caplog.records] == [
        "[svc/ep pid=1] plain \u00e9\tline",
        "[svc/ep pid=1] nul\\x00 and \\x1b[31mred",
        "[svc/ep pid=1] no end\\x7f",
    ]


# -- calls sent during one pass of the event loop go out in one write -------------


class FakeWriter:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class Resender(Listener):
    """Sends a call back to the pipeline for each answer, as the pool does under load."""

    def __init__(self, stop_after: int = 0) -> None:
        super().__init__()
        self.handle: WorkerHandle | None = None
        self.stop_after = stop_after

    def worker_answered(self, worker_id: int, kind: int, value: int, body: bytes) -> None:
        super().worker_answered(worker_id, kind, value, body)
        assert self.handle is not None
        answered = sum(1 for event in self.events if event[0] == "answered")
        self.handle.send_call(b"next-" + body)
        if answered == self.stop_after:
            self.handle.stop()


@dataclass
class FakePipe:
    """A WorkerHandle whose call pipe is a FakeWriter, fed answers through its reader."""

    listener: Resender
    handle: WorkerHandle
    reader: _FrameReader
    writer: FakeWriter


def _reader(loop: asyncio.AbstractEventLoop, listener: Listener) -> tuple[WorkerHandle, _FrameReader]:
    """A WorkerHandle without a process, and the reader of its answer pipe."""
    handle = WorkerHandle(loop, 1, WorkerSpec("svc", "add", "v1", Path("."), "add.py", None), listener)
    return handle, _FrameReader(handle)


def _fake_pipe(loop: asyncio.AbstractEventLoop, stop_after: int = 0) -> FakePipe:
    listener = Resender(stop_after)
    handle, reader = _reader(loop, listener)
    writer = FakeWriter()
    handle._writer = writer  # type: ignore[assignment]
    listener.handle = handle
    return FakePipe(listener, handle, reader, writer)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _one_pass(loop: asyncio.AbstractEventLoop) -> None:
    """Run the callbacks due now (the flush the handle scheduled), then return."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def _calls(*bodies: bytes) -> bytes:
    return b"".join(encode_frame(runtime.CALL, body) for body in bodies)


def test_calls_sent_while_settling_several_answers_share_one_write_at_the_end_of_the_read(
    loop: asyncio.AbstractEventLoop,
) -> None:
    pipe = _fake_pipe(loop)
    answers = b"".join(encode_frame(runtime.RESULT, body, 3) for body in (b"1", b"2", b"3"))
    pipe.reader.data_received(answers)
    assert [body for kind, body in pipe.listener.events] == [b"1", b"2", b"3"]
    # Written before the read returns (the pipeline waits for them), in one write, in order.
    assert pipe.writer.writes == [_calls(b"next-1", b"next-2", b"next-3")]
    pipe.reader.data_received(encode_frame(runtime.RESULT, b"4", 3))  # a lone answer: at once too
    assert pipe.writer.writes[-1] == _calls(b"next-4")
    _one_pass(loop)
    _one_pass(loop)
    assert len(pipe.writer.writes) == 2  # no flush was left scheduled


def test_calls_of_new_requests_in_one_pass_share_one_write_at_its_end(
    loop: asyncio.AbstractEventLoop,
) -> None:
    pipe = _fake_pipe(loop)
    # Two readable connections: two callbacks of one pass, one write after them.
    loop.call_soon(pipe.handle.send_call, b"a")
    loop.call_soon(pipe.handle.send_call, b"b")
    _one_pass(loop)
    assert pipe.writer.writes == []
    _one_pass(loop)
    assert pipe.writer.writes == [_calls(b"a", b"b")]
    pipe.handle.send_call(b"later")  # a lone call of a later pass: a write of its own
    _one_pass(loop)
    assert pipe.writer.writes[-1] == _calls(b"later")
    assert len(pipe.writer.writes) == 2


def test_an_answer_read_in_the_pass_writes_the_waiting_calls_first_in_order(
    loop: asyncio.AbstractEventLoop,
) -> None:
    pipe = _fake_pipe(loop)
    pipe.handle.send_call(b"a")  # a new request's call, waiting for the end of the pass
    pipe.reader.data_received(encode_frame(runtime.RESULT, b"1", 3))
    assert pipe.writer.writes == [_calls(b"a", b"next-1")]
    _one_pass(loop)  # the flush scheduled for "a" finds nothing left
    assert pipe.writer.writes == [_calls(b"a", b"next-1")]


def test_a_stop_in_a_batch_delivers_the_calls_held_before_it(loop: asyncio.AbstractEventLoop) -> None:
    pipe = _fake_pipe(loop, stop_after=1)
    pipe.handle._proc = None  # no process: stop() only closes the pipe and arms its timers
    pipe.reader.data_received(encode_frame(runtime.RESULT, b"1") + encode_frame(runtime.RESULT, b"2"))
    # The call sent before stop() precedes the EOF; the one after finds the pipe closing.
    assert pipe.writer.writes == [_calls(b"next-1")]
    assert pipe.writer.closed
    _one_pass(loop)  # the flush scheduled by the first call finds nothing left to write
    assert pipe.writer.writes == [_calls(b"next-1")]


# -- the answer pipe's reader: frames cut across reads anywhere --------------------


class Recorder(Listener):
    def worker_answered(self, worker_id: int, kind: int, value: int, body: bytes) -> None:
        self.events.append(("answered", (kind, value, body)))


ANSWERS = [
    (runtime.RESULT, 3, b'{"sum":3}'),
    (runtime.RESULT, 0, b""),  # None
    (runtime.ERROR, -1, b'{"errorType":"X"}'),
    (runtime.RESULT, 1 << 40, bytes(range(256)) * 800),  # 200 KiB: more than a pipe holds
    (runtime.RESULT, 7, b"[1]"),
]
STREAM = b"".join(encode_frame(kind, body, value) for kind, value, body in ANSWERS)


def _read_in(loop: asyncio.AbstractEventLoop, cuts: list[int]) -> list[tuple[int, int, bytes]]:
    """Feed STREAM to a reader in reads that end at `cuts`; return the answers it gave."""
    listener = Recorder()
    _, reader = _reader(loop, listener)
    start = 0
    for end in [*cuts, len(STREAM)]:
        reader.data_received(STREAM[start:end])
        start = end
    return [answer for _, answer in listener.events]


def test_answers_in_one_read_or_cut_at_every_byte_of_headers_and_bodies(
    loop: asyncio.AbstractEventLoop,
) -> None:
    assert _read_in(loop, []) == ANSWERS
    header = runtime.HEADER.size
    second = header + len(ANSWERS[0][2])
    # Each cut alone: inside the first header, at a boundary, inside a body, inside the
    # big body, one byte before the end.
    for cut in [*range(1, second + header + 2), len(STREAM) // 2, len(STREAM) - 1]:
        assert _read_in(loop, [cut]) == ANSWERS, cut
    assert _read_in(loop, list(range(1, len(STREAM), 4093))) == ANSWERS  # pipe-sized reads


def test_a_byte_at_a_time(loop: asyncio.AbstractEventLoop) -> None:
    stream_end = len(STREAM) - len(ANSWERS[-1][2]) - runtime.HEADER.size
    small = [*range(1, 300), *range(stream_end, len(STREAM))]  # bytewise where frames are small
    assert _read_in(loop, small) == ANSWERS


class FailsOnce(Recorder):
    def worker_answered(self, worker_id: int, kind: int, value: int, body: bytes) -> None:
        super().worker_answered(worker_id, kind, value, body)
        if len(self.events) == 1:
            raise RuntimeError("the first answer's handling failed")


def test_an_answer_whose_handling_raises_leaves_the_stream_in_step(
    loop: asyncio.AbstractEventLoop,
) -> None:
    listener = FailsOnce()
    _, reader = _reader(loop, listener)
    with pytest.raises(RuntimeError):
        reader.data_received(STREAM[:-2])  # the last frame incomplete too
    assert [answer for _, answer in listener.events] == ANSWERS[:1]
    reader.data_received(STREAM[-2:] + encode_frame(runtime.RESULT, b"[2]", 8))
    assert [answer for _, answer in listener.events] == [*ANSWERS, (runtime.RESULT, 8, b"[2]")]


class ReadsAgainWhileAnswered(Recorder):
    """Reads the pipe again from inside an answer's handling, as the node does: an answer
    frees room in a connection's window, the connection hands its next request over, and
    the pool's submit reads the busy pipelines' answers (this pipeline's among them)."""

    handle: WorkerHandle

    def worker_answered(self, worker_id: int, kind: int, value: int, body: bytes) -> None:
        super().worker_answered(worker_id, kind, value, body)
        self.handle.read_answers()


@pytest.mark.parametrize("cut", [1, runtime.HEADER.size + 3, len(STREAM) // 2, len(STREAM) - 1])
def test_a_read_from_inside_an_answers_handling_keeps_the_frames_in_order(
    loop: asyncio.AbstractEventLoop, cut: int
) -> None:
    # The nested read used to hand the reader the bytes after those of the read being
    # settled before these were: the big answer's body was taken for a frame header, the
    # stream went out of step, and the pipeline stayed busy for good (a client pipelining
    # requests for a 256 KB answer stalled its endpoint one run in five, compiled).
    listener = ReadsAgainWhileAnswered()
    handle, reader = _reader(loop, listener)
    listener.handle = handle
    handle._answers = reader
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)  # the rest of STREAM fits in the pipe
    handle._answer_fd = read_end
    try:
        os.write(write_end, STREAM[cut:])  # written after the transport's read, not read yet
        reader.data_received(STREAM[:cut])  # the transport's read; the rest waits in the pipe
        handle.read_answers()
        assert [answer for _, answer in listener.events] == ANSWERS
    finally:
        os.close(read_end)
        os.close(write_end)
