"""Journey Q (goodput under overload): a request's arrival reads the answers its pool's
pipelines have written, so that a flood the event loop is busy refusing does not leave
the pipelines idle until the loop's turn comes for their answer pipes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from lightnode.config.model import EndpointConfig, ExecLimits, PoolLimits
from lightnode.errors import LightnodeError
from lightnode.scheduler.scheduler import Call, EndpointPool
from lightnode.scheduler.worker_handle import WorkerSpec
from lightnode.worker import runtime
from tests.unit.scheduler.test_scheduler import FakeWorker

SPEC = WorkerSpec("svc", "ep", "v1", Path("/tmp"), "ep.py", "f")


class PipeWorker(FakeWorker):
    """A pipeline whose answers wait in its pipe (`written`) until the node reads them."""

    instances: list[PipeWorker] = []  # type: ignore[assignment]  # its own list, of its own kind

    def __init__(self, loop: Any, worker_id: int, spec: WorkerSpec, listener: Any) -> None:
        super().__init__(loop, worker_id, spec, listener)
        self.written: list[bytes] = []  # answers in the pipe, not read by the node yet
        self.reads = 0
        PipeWorker.instances.append(self)

    def read_answers(self) -> None:
        self.reads += 1
        while self.written:
            self.listener.worker_answered(self.worker_id, runtime.RESULT, 50_000, self.written.pop(0))


class Sink:
    def __init__(self) -> None:
        self.ok: list[Call] = []
        self.failed: list[tuple[Call, LightnodeError]] = []

    def call_succeeded(self, pool: Any, call: Call, body: bytes, exec_us: int, function_us: int) -> None:
        self.ok.append(call)

    def call_failed(self, pool: Any, call: Call, error: LightnodeError, exec_us: int, function_us: int) -> None:
        self.failed.append((call, error))


@pytest.fixture
def pool_and_sink() -> Any:
    PipeWorker.instances = []
    loop = asyncio.new_event_loop()
    sink = Sink()
    config = EndpointConfig(pool=PoolLimits(floor=1, cruise=1, ceil=1, queue=1), limits=ExecLimits())
    pool = EndpointPool(loop, SPEC, config, sink, worker_factory=PipeWorker)
    pool.start()
    pool.answer_poll_s = 0.0  # every arrival reads (a loaded machine may take 1 ms between two)
    PipeWorker.instances[0].listener.worker_ready(1, {"signature": "f()"})
    yield pool, sink
    loop.close()


def test_an_arrival_reads_the_answer_waiting_in_a_busy_pipelines_pipe(pool_and_sink: Any) -> None:
    """The pipeline has answered but the loop has not read its pipe yet (under a flood the
    pass over thousands of connections takes tens of ms): the next request must not be
    refused QueueFull nor queued behind that unread answer; it goes to the pipeline."""
    pool, sink = pool_and_sink
    worker = PipeWorker.instances[0]
    first = pool.submit(b'{"n": 1}', exchange=None)
    queued = pool.submit(b'{"n": 2}', exchange=None)  # ceil 1, queue 1: it waits
    assert worker.sent == [b'{"n": 1}']
    worker.written.append(b'{"r": 1}')  # the first call is done, its answer in the pipe
    third = pool.submit(b'{"n": 3}', exchange=None)
    assert sink.ok == [first]  # answered at once, not a loop pass later
    assert worker.sent[:2] == [b'{"n": 1}', b'{"n": 2}']  # the pipeline runs the next call at once
    assert not sink.failed  # the third finds the room the answer made: no QueueFull
    worker.written.append(b'{"r": 2}')
    worker.read_answers()  # the loop's own read
    assert sink.ok == [first, queued]
    assert worker.sent == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']  # sent ahead (a fast call) or now
    assert third.worker_id == worker.worker_id


def test_an_arrival_reads_no_pipe_while_no_call_runs(pool_and_sink: Any) -> None:
    """Nothing to read while the pool runs nothing: an idle pool pays no system call."""
    pool, sink = pool_and_sink
    worker = PipeWorker.instances[0]
    pool.submit(b"{}", exchange=None)
    assert worker.reads == 0


def test_an_arrival_reads_no_pipe_while_no_request_waits(pool_and_sink: Any) -> None:
    """A call runs but nothing waits: an answer read early would only free a pipeline
    nothing needs yet (which a pool above cruise stops, to start another for this very
    request); the loop's own read of the pipe comes soon enough."""
    pool, sink = pool_and_sink
    worker = PipeWorker.instances[0]
    pool.submit(b'{"n": 1}', exchange=None)
    worker.written.append(b'{"r": 1}')
    pool.submit(b'{"n": 2}', exchange=None)
    assert worker.reads == 0 and not sink.ok


def test_an_arrival_reads_no_pipe_while_the_waiting_request_waits_for_a_starting_pipeline() -> None:
    """Below ceil a waiting request waits for the pipeline started for it: taking it to a
    busy pipeline's early-read answer instead would leave that start surplus (a pool
    above cruise stops it at once, and starts another for the next request: churn)."""
    PipeWorker.instances = []
    loop = asyncio.new_event_loop()
    try:
        sink = Sink()
        config = EndpointConfig(pool=PoolLimits(floor=1, cruise=1, ceil=2, queue=4), limits=ExecLimits())
        pool = EndpointPool(loop, SPEC, config, sink, worker_factory=PipeWorker)
        pool.answer_poll_s = 0.0
        pool.start()
        first = PipeWorker.instances[0]
        first.listener.worker_ready(first.worker_id, {"signature": "f()"})
        pool.submit(b'{"n": 1}', exchange=None)
        pool.submit(b'{"n": 2}', exchange=None)  # rule 3 starts a second pipeline for it
        assert len(PipeWorker.instances) == 2
        first.written.append(b'{"r": 1}')
        pool.submit(b'{"n": 3}', exchange=None)
        assert first.reads == 0 and not sink.ok
    finally:
        loop.close()


def test_an_arrival_reads_no_pipe_whose_call_has_not_run_the_mean_run_time(pool_and_sink: Any) -> None:
    """While the loop keeps up, a pipeline's pipe was read when its previous answer came,
    and its new call has no answer yet until about the mean run time has passed: an
    arrival meanwhile reads nothing (a read would be a system call finding nothing: half
    a read per request on a 1 ms function at c=8, before). Once the call has run
    that long, its answer may be waiting unread, and an arrival reads it; and while the
    arrivals' reads find the answers before the loop does, every arrival reads."""
    pool, sink = pool_and_sink
    worker = PipeWorker.instances[0]
    first = pool.submit(b'{"n": 1}', exchange=None)
    time.sleep(0.3)  # the first call runs 0.3 s: the mean run time
    worker.written.append(b'{"r": 1}')
    worker.read_answers()  # the loop's own read
    assert sink.ok == [first]
    reads = worker.reads
    pool.submit(b'{"n": 2}', exchange=None)  # runs now
    pool.submit(b'{"n": 3}', exchange=None)  # waits (ceil 1, queue 1)
    pool.submit(b'{"n": 4}', exchange=None)  # the queue is full: refused
    assert worker.reads == reads  # the running call started < 0.3 s ago: not read
    assert [error.error_type for _, error in sink.failed] == ["QueueFull"]
    time.sleep(0.5)  # past the mean, whatever either sleep overran by (a loaded machine)
    worker.written.append(b'{"r": 2}')
    pool.submit(b'{"n": 5}', exchange=None)  # it has run the mean: its pipe is read
    assert worker.reads == reads + 1
    assert len(sink.ok) == 2  # the second call's answer, read by the arrival
    assert worker.sent[-1] == b'{"n": 3}' and len(sink.failed) == 1  # the fifth waits
    # That answer was found before the loop's read: the loop is late for this pipe, and
    # the next arrival reads it again though its call (the third) has only just started.
    worker.written.append(b'{"r": 3}')
    pool.submit(b'{"n": 6}', exchange=None)
    assert worker.reads == reads + 2 and len(sink.ok) == 3
    # The loop's own read finds the next answer first: back to the mean run time.
    worker.written.append(b'{"r": 4}')
    worker.read_answers()  # as the loop's read (not from an arrival)
    reads = worker.reads
    assert len(sink.ok) == 4
    pool.submit(b'{"n": 7}', exchange=None)
    assert worker.reads == reads  # the sixth started < 0.3 s ago: not read
