"""The node's side of one pipeline process: spawn, pipes, frames, stop, kill.

A worker is started by exec of `worker/runtime.py` with the endpoint's
interpreter (never a fork of the node). Two dedicated pipes carry frames;
the worker's stdout and stderr share a third pipe whose lines go to the
node's log tagged with service, endpoint and pid. Exit is observed through a
pidfd where the kernel has one, else through EOF on the answer pipe.

Imports: standard library, `lightnode.worker.runtime` (stdlib-only) and
`lightnode.config.model`. Nothing here knows about pools or HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol, cast

import ujson

from lightnode.observe.logsetup import one_line
from lightnode.worker import runtime
from lightnode.worker.runtime import HEADER

log: Final = logging.getLogger("lightnode.worker")
user_log: Final = logging.getLogger("lightnode.user")

RUNTIME_PATH: Final = str(Path(runtime.__file__).resolve())

# The frame header of runtime.py's wire, packed and unpacked here rather than by its
# encode_frame() and FrameDecoder: this module is compiled with the hot path and
# those stay interpreted (runtime.py runs under the endpoint's own interpreter).
# Final names: the compiled build reads them from C variables, not from the module's dict.
CALL: Final[int] = runtime.CALL
CALL_TAGGED: Final[int] = runtime.CALL_TAGGED
RESULT: Final[int] = runtime.RESULT
ERROR: Final[int] = runtime.ERROR
NOT_STARTED: Final[int] = runtime.NOT_STARTED
NOT_STARTED_STOPPING: Final[int] = runtime.NOT_STARTED_STOPPING
READY: Final[int] = runtime.READY
INIT_ERROR: Final[int] = runtime.INIT_ERROR
_HEADER_SIZE: Final = HEADER.size
_pack_header: Final = HEADER.pack
_unpack_header: Final = HEADER.unpack_from

# How long a stopped worker may take to exit after its pipe closed before SIGTERM,
# and SIGTERM before SIGKILL. Short: an idle worker exits at once on EOF.
# Environment variables of the node that pipelines do not inherit (see _environment).
NODE_SECRETS: Final = ("LIGHTNODE_ADMIN_KEY",)
STOP_TERM_AFTER_S: Final = 5.0
STOP_KILL_AFTER_S: Final = 3.0
# After SIGUSR1 (stack dump) the worker gets this long to write it before SIGKILL.
STACK_DUMP_GRACE_S: Final = 0.2
# How long one pipeline's output may be logged for in one pass of the event loop (a line
# takes 30-60 µs through the two handlers: some ten lines). Measured with a flood of
# 100,000 lines next to a 1 ms endpoint on one keep-alive connection: that endpoint
# answers ~400 calls/s (p50 2 ms) at 0.5 ms, ~300/s at 1 ms, ~150/s at 2 ms, and the
# flood is logged no slower than at once; at 0.2 ms the flood takes a third longer.
LOG_BUDGET_S: Final = 0.0005
# A line without end longer than this is logged in pieces.
LONGEST_LINE: Final = 65536


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything needed to start one endpoint's pipelines."""

    service_id: str
    endpoint_id: str
    generation: str
    root: Path
    code: str
    function: str | None
    folders: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    python: str = sys.executable
    port: int = 0
    dev: bool = False

    @property
    def tag(self) -> str:
        return f"{self.service_id}/{self.endpoint_id}@{self.generation}"


class WorkerListener(Protocol):
    """What a WorkerHandle reports to (the scheduler implements it)."""

    def worker_ready(self, worker_id: int, info: dict[str, object]) -> None: ...
    def worker_init_failed(self, worker_id: int, message: str, traceback: str) -> None: ...
    def worker_answered(self, worker_id: int, kind: int, value: int, body: bytes) -> None: ...
    def worker_exited(self, worker_id: int, detail: str) -> None: ...


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    return f"exit code {returncode}"


class _FrameReader(asyncio.Protocol):
    """The answer pipe: frames to WorkerHandle._frame(), in order.

    A read usually holds whole frames (a pipe takes a write of up to 64 KiB at
    once), which are cut out of it directly. A frame cut across reads waits in
    `_partial`, which grows by appending so that a large answer costs linear time.
    """

    def __init__(self, handle: WorkerHandle) -> None:
        self._handle = handle
        self._partial = bytearray()

    def data_received(self, data: bytes) -> None:
        handle = self._handle
        # The calls sent while these answers are settled (the pool's next ones for this
        # pipeline) go out in one write at the end of the read, not of the loop's pass:
        # under load a pass is long, and the pipeline would wait for them.
        handle._settling = True
        try:
            partial = self._partial
            if partial:
                partial += data
                if len(partial) < _HEADER_SIZE:
                    return
                if len(partial) < _HEADER_SIZE + _unpack_header(partial)[0]:
                    return  # its first frame is still incomplete
                data = bytes(partial)
                self._partial = bytearray()
            self._settle(data)
        finally:
            handle._settling = False
            if handle._outbox:
                handle._flush_calls()

    def _settle(self, data: bytes) -> None:
        """Hand over the whole frames of `data`; keep the rest in `_partial`.

        Should a frame's handling raise, the frames after it stay too: the next read
        hands them over, and the stream stays in step.
        """
        handle = self._handle
        size = len(data)
        offset = 0
        try:
            while size - offset >= _HEADER_SIZE:
                length, kind, value = _unpack_header(data, offset)
                start = offset + _HEADER_SIZE
                end = start + length
                if end > size:
                    break
                offset = end
                handle._frame(kind, value, data[start:end])
        finally:
            if offset < size:
                self._partial += data[offset:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._handle._answers_closed()


class _LogReader(asyncio.Protocol):
    """Worker stdout/stderr -> the node's log, one record per line, a bounded share per pass.

    A line costs tens of microseconds through the log's handlers, and one read of the
    pipe holds thousands: logged at once, a print flood in one endpoint would hold the
    event loop, and every endpoint, for seconds. So a read is logged for `budget_s` at
    most (one line at least) in a pass of the loop; the rest waits, and the pipe is not
    read, until later passes have logged it. The flooding pipeline then waits on its
    full pipe, not the node. Nothing is lost or reordered: the lines left over, and the
    end of a line cut across reads, stay in `_pending` from `_offset` on; the pipe is
    read to its EOF, so the output of a pipeline that exited is logged to the end. The
    node never waits for the pipeline: it only stops reading, for a pass or so.
    """

    def __init__(
        self, prefix: str, loop: asyncio.AbstractEventLoop | None = None, budget_s: float = LOG_BUDGET_S
    ) -> None:
        self._prefix = prefix
        self._loop = loop  # None: no deferring, every read is logged at once
        self._budget_s = budget_s
        self._transport: asyncio.ReadTransport | None = None
        self._pending = b""  # read, not logged yet from _offset on (ends with a line's start)
        self._offset = 0
        self._paused = False  # reading stopped until the pending lines are logged
        self._draining = False  # a later pass logs more of _pending
        self._closed = False  # EOF (or the transport closed): _pending is all there is

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self._transport = cast(asyncio.ReadTransport, transport)
        _UNFINISHED_LOGS.add(self)

    def finish_unbounded(self) -> None:
        """At shutdown: log the rest at once, budget off, and read on to the pipe's end."""
        self._budget_s = float("inf")
        if not self._draining and (self._paused or self._closed):
            self._drain()

    def data_received(self, data: bytes) -> None:
        offset = self._offset
        self._pending = self._pending[offset:] + data if offset < len(self._pending) else data
        self._offset = 0
        if self._draining:
            return  # a read that came before the pause took hold: logged in its turn
        if not self._log_lines():
            transport = self._transport
            if transport is not None and not self._paused:
                self._paused = True
                transport.pause_reading()
            self._drain_later()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self._draining:
            self._log_rest()

    def _drain_later(self) -> None:
        self._draining = True
        assert self._loop is not None
        self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """A later pass: log the next share; read again once the whole lines are logged."""
        self._draining = False
        if not self._log_lines():
            self._drain_later()
        elif self._closed:
            self._log_rest()
        elif self._paused:
            self._paused = False
            transport = self._transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    def _log_lines(self) -> bool:
        """Log the whole lines of `_pending` within the budget; False if some are left.

        Without a loop to come back in, the budget is not kept.
        """
        pending = self._pending
        offset = self._offset
        prefix = self._prefix
        timed = self._loop is not None and self._transport is not None
        deadline = time.monotonic() + self._budget_s
        end = pending.find(b"\n", offset)
        while end >= 0:
            self._offset = end + 1  # first: a handler that raises does not log it twice
            _log_user_line(prefix, pending[offset:end].rstrip(b"\r"))
            offset = end + 1
            end = pending.find(b"\n", offset)
            if end >= 0 and timed and time.monotonic() >= deadline:
                return False
        if len(pending) - offset > LONGEST_LINE:  # a line without end: log it in pieces
            self._offset = len(pending)
            _log_user_line(prefix, pending[offset:].rstrip(b"\r"))
            offset = len(pending)
        self._pending = pending[offset:] if offset < len(pending) else b""
        self._offset = 0
        return True

    def _log_rest(self) -> None:
        """At EOF: the last line, without its end."""
        _UNFINISHED_LOGS.discard(self)
        offset = self._offset
        if offset < len(self._pending):
            rest = self._pending[offset:]
            self._pending = b""
            self._offset = 0
            _log_user_line(self._prefix, rest)


# The log pipes not read to their end yet, with what they hold (see flush_user_output).
_UNFINISHED_LOGS: Final[set[_LogReader]] = set()


async def flush_user_output(timeout_s: float) -> None:
    """At shutdown, after the pipelines exited: log all they wrote that is not logged yet.

    A reader behind a flood logs a bounded share per pass of the loop (see _LogReader);
    the loop is about to close, so the rest is logged at once, up to each pipe's end.
    A pipe whose end never comes (a process forked by user code still holds it) is
    given up after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    for reader in list(_UNFINISHED_LOGS):
        reader.finish_unbounded()
    while _UNFINISHED_LOGS and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def _printable(line: bytes) -> str:
    """A line of user output for the node's log: no NULs or terminal escapes (one_line)."""
    return one_line(line.decode("utf-8", "replace"))


# A line written while a call ran begins with the call's request id between these marks
# (runtime.TaggedLines); the id is at most 128 characters (protocol.client_request_id).
_TAG_START: Final = runtime.TAG_START.encode("ascii")
_TAG_END: Final = runtime.TAG_END.encode("ascii")
_TAG_SEARCH_END: Final = 2 + 128


def _log_user_line(prefix: str, line: bytes) -> None:
    """Log one line of a pipeline's output, with its request id when it carries one."""
    if line[:1] == _TAG_START:
        end = line.find(_TAG_END, 1, _TAG_SEARCH_END)
        if end > 1:
            request_id = _printable(line[1:end])
            user_log.info("%s %s", prefix, _printable(line[end + 1 :]), extra={"request_id": request_id})
            return
    user_log.info("%s %s", prefix, _printable(line))


class WorkerHandle:
    """One pipeline process, seen from the node."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        worker_id: int,
        spec: WorkerSpec,
        listener: WorkerListener,
    ) -> None:
        self._loop = loop
        self.worker_id = worker_id
        self.spec = spec
        self._listener = listener
        self._proc: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._pidfd: int | None = None
        self._exited = False
        self._reaped = False  # the process is gone
        self._answers_eof = False  # every frame it wrote has been read
        self._stopping = False
        self._timers: list[asyncio.TimerHandle] = []
        # Call frames not yet written: those of new requests wait for the end of this pass
        # of the event loop, those sent while answers are settled for the end of the read.
        self._outbox: list[bytes] = []
        self._settling = False  # answers of one read being settled (see _FrameReader)
        self._answers = _FrameReader(self)
        # A duplicate of the answer pipe's read end, for read_answers(): owned here, so it
        # cannot name another file once the transport has closed its own.
        self._answer_fd: int | None = None
        self.started_at = time.monotonic()
        self.pid = 0

    # -------------------------------------------------------------- lifecycle

    def spawn(self) -> None:
        """Start the process. Raises OSError if it cannot be started."""
        self.started_at = time.monotonic()  # a start may have waited for the node's start gate
        spec = self.spec
        call_r, call_w = os.pipe()
        answer_r, answer_w = os.pipe()
        out_r, out_w = os.pipe()
        payload = {
            "root": str(spec.root),
            "code": spec.code,
            "function": spec.function,
            "folders": list(spec.folders),
            "dev": spec.dev,
            "parent_pid": os.getpid(),
        }
        try:
            self._proc = subprocess.Popen(
                [spec.python, RUNTIME_PATH, str(call_r), str(answer_w), ujson.dumps(payload)],
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=out_w,
                pass_fds=(call_r, answer_w),
                cwd=str(spec.root),
                env=self._environment(),
                # A session of its own: the terminal's Ctrl-C reaches the node only, which
                # drains before it stops its pipelines (SPEC §11).
                start_new_session=True,
            )
        except OSError:
            for fd in (call_r, call_w, answer_r, answer_w, out_r, out_w):
                os.close(fd)
            raise
        for fd in (call_r, answer_w, out_w):
            os.close(fd)
        self.pid = self._proc.pid
        self._answer_fd = os.dup(answer_r)
        os.set_blocking(self._answer_fd, False)  # the transport makes it so too (one file)
        self._connect(call_w, answer_r, out_r)

    def _environment(self) -> dict[str, str]:
        spec = self.spec
        env = dict(os.environ)
        # The node's own secrets are not user code's: the README's production setup
        # exports the admin key in the shell that starts the node.
        for name in NODE_SECRETS:
            env.pop(name, None)
        env.update(spec.env)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "LIGHTNODE_SERVICE": spec.service_id,
                "LIGHTNODE_ENDPOINT": spec.endpoint_id,
                "LIGHTNODE_GENERATION": spec.generation,
                "LIGHTNODE_PORT": str(spec.port),
                "DKU_CURRENT_APISERVICE": spec.service_id,
                "DKU_CURRENT_APISERVICE_GENERATION": spec.generation,
                "DKU_APIMAIN_PORT": str(spec.port),
            }
        )
        return env

    def _connect(self, call_w: int, answer_r: int, out_r: int) -> None:
        loop = self._loop
        # uvloop's pipe transports close the fd themselves; a file object that owned it
        # would close it a second time, possibly closing a descriptor reused meanwhile.
        write_pipe = os.fdopen(call_w, "wb", buffering=0, closefd=False)
        read_pipe = os.fdopen(answer_r, "rb", buffering=0, closefd=False)
        log_pipe = os.fdopen(out_r, "rb", buffering=0, closefd=False)
        prefix = f"[{self.spec.service_id}/{self.spec.endpoint_id} pid={self.pid}]"

        async def connect() -> None:
            self._writer, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, write_pipe)
            await loop.connect_read_pipe(lambda: self._answers, read_pipe)
            await loop.connect_read_pipe(lambda: _LogReader(prefix, loop), log_pipe)

        task = loop.create_task(connect())
        task.add_done_callback(self._connected)
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self._reap)

    def _connected(self, task: asyncio.Task[None]) -> None:
        if task.exception() is not None:
            log.error("%s: cannot connect worker pipes: %s", self.spec.tag, task.exception())
            self.kill(dump_stack=False)

    def send_call(self, body: bytes, start_by_ns: int = 0, tag: bytes = b"") -> None:
        """Send one request to the worker (idle, or busy for a prefetched call).

        `start_by_ns`: CLOCK_MONOTONIC ns after which the worker must not start it (0: none).
        `tag`: the request id followed by b"\\n", for the output lines the call writes
        (b"": none; a CALL_TAGGED frame otherwise).
        """
        writer = self._writer
        if writer is None:
            # Pipes not connected yet can only happen before READY, which precedes any call.
            raise RuntimeError(f"worker {self.worker_id} has no open pipe")
        if writer.is_closing():
            # The process died and the pipe broke before its exit was reported: the
            # exit, reported next, settles the call (WorkerCrashed, or back in the
            # queue if it was prefetched).
            return
        outbox = self._outbox
        if not outbox and not self._settling:
            self._loop.call_soon(self._flush_calls)
        if tag:
            outbox.append(_pack_header(len(tag) + len(body), CALL_TAGGED, start_by_ns) + tag + body)
        else:
            outbox.append(_pack_header(len(body), CALL, start_by_ns) + body)

    def _flush_calls(self) -> None:
        """Write the calls sent since the last flush, in order, with one system call.

        The requests that one pass of the event loop admits (every connection that
        was readable) reach a pipeline together: one write, and one wake-up of a
        sleeping pipeline instead of one per call.
        """
        outbox = self._outbox
        if not outbox:
            return  # flushed by stop() already
        self._outbox = []
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(b"".join(outbox) if len(outbox) > 1 else outbox[0])

    def stop(self) -> None:
        """Close the call pipe: an idle worker exits at once; escalate if it lingers."""
        if self._exited or self._stopping:
            return
        self._stopping = True
        if self._writer is not None:
            self._flush_calls()  # calls sent before the stop are delivered before the EOF
            self._writer.close()
        else:
            self._signal(signal.SIGTERM)
        self._later(STOP_TERM_AFTER_S, self._signal, signal.SIGTERM)
        self._later(STOP_TERM_AFTER_S + STOP_KILL_AFTER_S, self._signal, signal.SIGKILL)

    def kill(self, *, dump_stack: bool = True) -> None:
        """Kill now; with dump_stack, the worker first writes its Python stack to the log."""
        if self._exited:
            return
        self._stopping = True
        if dump_stack:
            self._signal(signal.SIGUSR1)
            self._later(STACK_DUMP_GRACE_S, self._signal, signal.SIGKILL)
        else:
            self._signal(signal.SIGKILL)

    def read_answers(self) -> None:
        """Read now, without waiting, every answer the worker has written, and report them.

        Every answer written before this call starts is reported before it returns
        (the scheduler relies on it to take back a staged call: see the pool machine's
        "Taking a staged request back"), unless it is called while this pipe's answers
        are being settled: then it reads nothing (see below). The pipe is non-blocking;
        the transport that reads it otherwise then finds it empty, which it takes in its
        stride.
        """
        fd = self._answer_fd
        if fd is None or self._settling:
            # Called from inside the handling of an answer of this pipe (an answer frees a
            # connection's window, whose next request reaches the pool's submit): the read
            # being settled reports its frames first, and the bytes after them stay in the
            # pipe for the next read. Read now, they would reach the reader before the rest
            # of the read it is settling, and the stream would go out of step for good.
            return
        while True:
            try:
                data = os.read(fd, runtime.READ_CHUNK_BYTES)
            except OSError:  # BlockingIOError: all read; any other: nothing more to read
                return
            if not data:
                return  # EOF: the worker has exited
            self._answers.data_received(data)

    def rss_bytes(self) -> int:
        """Resident set size of the worker, 0 when unknown."""
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    # --------------------------------------------------------------- internals

    def _later(self, delay: float, callback: object, *args: object) -> None:
        self._timers.append(self._loop.call_later(delay, callback, *args))  # type: ignore[arg-type]

    def _signal(self, signum: int) -> None:
        if self._exited or self._proc is None:
            return
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def _frame(self, kind: int, value: int, body: bytes) -> None:
        if kind == RESULT or kind == ERROR or kind == NOT_STARTED:  # every answer: checked first
            self._listener.worker_answered(self.worker_id, kind, value, body)
        elif kind == READY:
            self._listener.worker_ready(self.worker_id, ujson.loads(body))
        elif kind == INIT_ERROR:
            info = ujson.loads(body)
            self._listener.worker_init_failed(
                self.worker_id, str(info.get("message")), str(info.get("traceback"))
            )
        else:
            log.error("%s: worker %d sent unknown frame kind %d", self.spec.tag, self.pid, kind)
            self.kill(dump_stack=False)

    def _answers_closed(self) -> None:
        self._answers_eof = True
        if self._reaped:
            self._finish()
        elif self._pidfd is None:
            # No pidfd: EOF on the answer pipe means the process is exiting; poll for its status.
            self._poll_exit(0.0)

    def _poll_exit(self, waited_s: float) -> None:
        if self._proc is None or self._exited:
            return
        self._kill_leftovers()
        if self._proc.poll() is None:
            if waited_s > 2.0:
                self._signal(signal.SIGKILL)
            self._loop.call_later(0.01, self._poll_exit, waited_s + 0.01)
            return
        self._reaped = True
        self._finish()

    def _reap(self) -> None:
        if self._proc is None:
            return
        self._kill_leftovers()
        if self._proc.poll() is None:
            return
        self._reaped = True
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._answers_eof:
            self._finish()
        else:
            # Read the frames it wrote before dying (an INIT_ERROR, say) before reporting
            # the exit; a grandchild holding the pipe open must not delay it for long.
            self._loop.call_later(0.2, self._finish)

    def _kill_leftovers(self) -> None:
        """Once the pipeline has exited, kill what is left of its process group.

        The pipeline leads a session and a process group of its own (spawn()). A process
        its user code started and left running (a fork, a pool) would outlive it, holding
        its pipes open. The group is named by the pipeline's pid, which cannot name any
        other group while the exited pipeline is not yet reaped: hence WNOWAIT.
        """
        try:
            if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                return  # still running
            os.killpg(self.pid, signal.SIGKILL)
        except (OSError, AttributeError):  # reaped already, or no waitid on this platform
            pass

    def _finish(self) -> None:
        if self._exited:
            return
        self._exited = True
        for timer in self._timers:
            timer.cancel()
        if self._writer is not None:
            self._writer.close()
        # Every answer it wrote is reported before its exit (the scheduler settles its
        # staged calls by what was answered), even if a grandchild holds the pipe open.
        self.read_answers()
        if self._answer_fd is not None:
            os.close(self._answer_fd)
            self._answer_fd = None
        assert self._proc is not None
        self._listener.worker_exited(self.worker_id, describe_exit(self._proc.returncode))
