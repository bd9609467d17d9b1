"""EndpointPool (the I/O shell) with fake workers: commands carried out, answers spliced."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from lightnode.config.model import EndpointConfig, ExecLimits, PoolLimits
from lightnode.errors import LightnodeError
from lightnode.pool.machine import MAX_STAGED
from lightnode.pool.states import WorkerState
from lightnode.scheduler.scheduler import Call, EndpointPool
from lightnode.scheduler.worker_handle import WorkerSpec
from lightnode.worker import runtime


class FakeWorker:
    instances: list[FakeWorker] = []

    def __init__(self, loop: Any, worker_id: int, spec: WorkerSpec, listener: Any) -> None:
        self.worker_id = worker_id
        self.listener = listener
        self.pid = 1000 + worker_id
        self.started_at = 0.0
        self.sent: list[bytes] = []
        self.start_by_ns: list[int] = []
        self.stopped = False
        self.killed = False
        self.fail_spawn = False
        self.rss = 0  # what rss_bytes() answers
        FakeWorker.instances.append(self)

    def spawn(self) -> None:
        if self.fail_spawn:
            raise OSError("no interpreter")

    def send_call(self, body: bytes, start_by_ns: int = 0, tag: bytes = b"") -> None:
        self.sent.append(body)
        self.start_by_ns.append(start_by_ns)

    def read_answers(self) -> None:
        pass  # the test delivers answers itself

    def stop(self) -> None:
        self.stopped = True

    def kill(self, *, dump_stack: bool = True) -> None:
        self.killed = True

    def rss_bytes(self) -> int:
        return self.rss

    # test drivers
    def ready(self) -> None:
        self.listener.worker_ready(self.worker_id, {"signature": "f()"})

    def answer(self, kind: int, body: bytes, fn_us: int = 5) -> None:
        self.listener.worker_answered(self.worker_id, kind, fn_us, body)

    def exit(self, detail: str = "killed by signal SIGKILL") -> None:
        self.listener.worker_exited(self.worker_id, detail)


class Sink:
    def __init__(self) -> None:
        self.ok: list[tuple[Call, bytes]] = []
        self.failed: list[tuple[Call, LightnodeError]] = []
        self.on_failed: Any = None  # called with the call, as the app may close its connection

    def call_succeeded(self, pool: Any, call: Call, body: bytes, exec_us: int, function_us: int) -> None:
        self.ok.append((call, body))

    def call_failed(self, pool: Any, call: Call, error: LightnodeError, exec_us: int, function_us: int) -> None:
        self.failed.append((call, error))
        if self.on_failed is not None:
            self.on_failed(call)


SPEC = WorkerSpec("svc", "ep", "v1", Path("/tmp"), "ep.py", "f")


@pytest.fixture
def setup() -> Any:
    FakeWorker.instances = []
    loop = asyncio.new_event_loop()
    sink = Sink()

    def make(exec_timeout: int = 0, **pool: int) -> EndpointPool:
        config = EndpointConfig(pool=PoolLimits(**pool), limits=ExecLimits(exec_timeout=exec_timeout))
        endpoint = EndpointPool(loop, SPEC, config, sink, worker_factory=FakeWorker)
        endpoint.start()
        return endpoint

    yield make, sink, loop
    loop.close()


def test_dispatch_and_envelope(setup: Any) -> None:
    make, sink, _ = setup
    pool = make(floor=1, cruise=1, ceil=1)
    worker = FakeWorker.instances[0]
    worker.ready()
    call = pool.submit(b'{"a": 1}', exchange=None)
    assert worker.sent == [b'{"a": 1}']
    worker.answer(runtime.RESULT, b'{"sum":1}', fn_us=7)
    (done, body), = sink.ok
    assert done is call
    envelope = json.loads(body)
    assert envelope["response"] == {"sum": 1}
    assert envelope["timing"]["functionInternal"] == 7
    assert envelope["apiContext"] == {"serviceId": "svc", "endpointId": "ep", "serviceGeneration": "v1"}


def test_none_result_sets_response_is_empty(setup: Any) -> None:
    make, sink, _ = setup
    pool = make(floor=1, cruise=1, ceil=1)
    FakeWorker.instances[0].ready()
    pool.submit(b"{}", exchange=None)
    FakeWorker.instances[0].answer(runtime.RESULT, b"")
    envelope = json.loads(sink.ok[0][1])
    assert envelope["responseIsEmpty"] is True and "response" not in envelope


def test_error_frame_keeps_status_and_type(setup: Any) -> None:
    make, sink, _ = setup
    pool = make(floor=1, cruise=1, ceil=1)
    FakeWorker.instances[0].ready()
    pool.submit(b"{}", exchange=None)
    frame = {"errorType": "FunctionError", "message": "m", "detailedMessage": "d", "status": 418}
    FakeWorker.instances[0].answer(runtime.ERROR, json.dumps(frame).encode())
    error = sink.failed[0][1]
    assert (error.status, error.error_type, error.message, error.detailed_message) == (418, "FunctionError", "m", "d")


def test_crash_answers_worker_crashed_and_replaces(setup: Any) -> None:
    make, sink, _ = setup
    pool = make(floor=1, cruise=1, ceil=1)
    FakeWorker.instances[0].ready()
    pool.submit(b"{}", exchange=None)
    FakeWorker.instances[0].exit("exit code 9")
    error = sink.failed[0][1]
    assert error.error_type == "WorkerCrashed" and "exit code 9" in error.message
    assert len(FakeWorker.instances) == 2  # replacement started off the request path
    assert pool.calls == {}


def test_an_answer_with_no_call_in_flight_kills_the_pipeline(setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    # What a process forked by user code does when it answers too: never taken for a call's answer.
    make, sink, _ = setup
    pool = make(floor=1, cruise=1, ceil=1)
    worker = FakeWorker.instances[0]
    worker.ready()
    worker.answer(runtime.RESULT, b'{"stray":1}')
    assert worker.killed and not sink.ok and not sink.failed
    assert "answered with no call in flight" in caplog.text
    worker.exit()  # the kill lands: a fresh pipeline takes the next call
    FakeWorker.instances[1].ready()
    call = pool.submit(b"{}", exchange=None)
    FakeWorker.instances[1].answer(runtime.RESULT, b"1")
    assert [done for done, _ in sink.ok] == [call] and not sink.failed


def test_a_second_ready_kills_the_pipeline_and_fails_its_call(setup: Any) -> None:
    make, sink, _ = setup
    pool = make(floor=1, cruise=1, ceil=1)
    worker = FakeWorker.instances[0]
    worker.ready()
    pool.submit(b"{}", exchange=None)
    worker.ready()
    assert worker.killed
    worker.exit("killed by signal SIGKILL")
    assert [error.error_type for _, error in sink.failed] == ["WorkerCrashed"]


def test_an_exit_during_initialization_is_a_load_failure(setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    make, sink, _ = setup
    pool = make(floor=1, cruise=1, ceil=1)
    pool.submit(b"{}", exchange=None)
    FakeWorker.instances[0].exit("exit code 0")
    error = sink.failed[0][1]
    expected = "Failed to load endpoint: the pipeline exited during initialization (exit code 0)"
    assert (error.error_type, error.message) == ("EndpointUnavailable", expected)
    assert pool.last_load_error == expected
    logged = "svc/ep@v1: endpoint failed to load: pipeline pid 1001: the pipeline exited during initialization (exit code 0)"
    assert logged in caplog.text


def test_a_failed_start_beside_a_serving_pipeline_says_the_endpoint_serves_on(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The endpoint did not fail to load: it serves on with what it has, and only its
    # next starts wait (the machine's hold); the log line must say that.
    make, sink, _ = setup
    pool = make(floor=1, cruise=2, ceil=3)
    FakeWorker.instances[0].ready()
    pool.apply_config(EndpointConfig(pool=PoolLimits(floor=3, cruise=3, ceil=3)))
    second, third = FakeWorker.instances[1:3]
    caplog.clear()
    pool.worker_init_failed(second.worker_id, "MemoryError: model too big", "Traceback (most recent call last): ...")
    text = caplog.text
    assert "failed to load" not in text
    assert "svc/ep@v1: pipeline pid 1002 failed to start: MemoryError: model too big;" in text
    assert re.search(r"the endpoint still serves with 1 pipeline; its next pipeline start is held back for 0\.[0-5] s", text)
    assert "Traceback (most recent call last): ..." in text
    caplog.clear()
    third.exit("killed by signal SIGKILL")
    text = caplog.text
    assert "failed to load" not in text
    assert "pipeline pid 1003 failed to start: the pipeline exited during initialization (killed by signal SIGKILL);" in text
    assert "the endpoint still serves with 1 pipeline;" in text
    call = pool.submit(b"{}", exchange=None)
    FakeWorker.instances[0].answer(runtime.RESULT, b"1")
    assert [done for done, _ in sink.ok] == [call] and not sink.failed


def test_a_pipeline_that_keeps_starting_is_logged_until_it_is_ready(setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Initialization code that never returns shows nowhere else than as queue timeouts.
    _, sink, loop = setup
    pool = EndpointPool(loop, SPEC, EndpointConfig(pool=PoolLimits(floor=1, cruise=1, ceil=1)), sink,
                        worker_factory=FakeWorker)  # fmt: skip
    pool.start_warning_s = 0.05
    pool.start()

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "has been starting" in r.getMessage()]

    deadline = time.monotonic() + 10
    while len(warnings()) < 2 and time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.01))
    tail = (": its initialization code has not returned; no pipeline of the endpoint serves:"
            " its requests wait in the queue up to the queue timeout")  # fmt: skip
    assert warnings()[:2] == [  # the wait doubles between two lines
        f"svc/ep@v1: pipeline pid 1001 has been starting for {waited} s{tail}" for waited in ("0.05", "0.1")
    ]
    FakeWorker.instances[0].ready()
    assert pool._start_timers == {}  # cancelled at READY: none kept per pipeline started
    caplog.clear()
    loop.run_until_complete(asyncio.sleep(0.3))
    assert not warnings()


def test_a_pipeline_dying_while_idle_is_logged(setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    make, _, _ = setup
    make(floor=1, cruise=1, ceil=1)
    FakeWorker.instances[0].ready()
    FakeWorker.instances[0].exit("exit code 7")
    assert "pipeline pid 1001 died while idle (exit code 7)" in caplog.text
    assert len(FakeWorker.instances) == 2  # replaced


def _rss_pool(make: Any, ready_rss_mb: int) -> tuple[EndpointPool, FakeWorker]:
    """A pool with limits.max_rss_mb 40, and its pipeline ready at `ready_rss_mb`."""
    config = EndpointConfig(pool=PoolLimits(floor=1, cruise=1, ceil=2), limits=ExecLimits(max_rss_mb=40))
    pool: EndpointPool = make(floor=1, cruise=1, ceil=2)
    pool.apply_config(config)
    worker = FakeWorker.instances[0]
    worker.rss = ready_rss_mb << 20
    worker.ready()
    return pool, worker


def test_a_pipeline_over_max_rss_once_loaded_is_not_retired_in_a_loop(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Code that needs more than limits.max_rss_mb just to load: every successor would
    # be over the limit too, and retiring each would start a model load a second forever.
    caplog.set_level(logging.INFO, logger="lightnode")
    make, sink, _ = setup
    pool, worker = _rss_pool(make, ready_rss_mb=80)
    for _ in range(3):
        pool._check_rss()
    assert len(FakeWorker.instances) == 1  # no successor
    assert pool.snapshot().retirements_total == 0
    assert caplog.text.count("over limits.max_rss_mb (40 MB) as soon as it loaded") == 1
    assert "retiring" not in caplog.text
    pool.submit(b"{}", exchange=None)
    worker.answer(runtime.RESULT, b"1")
    assert len(sink.ok) == 1 and not worker.stopped  # it serves on


def test_a_pipeline_that_grew_over_max_rss_is_retired_and_said_once(
    setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lightnode")
    make, _, _ = setup
    pool, worker = _rss_pool(make, ready_rss_mb=10)
    pool._check_rss()
    assert len(FakeWorker.instances) == 1
    worker.rss = 80 << 20  # it grew while serving
    for _ in range(3):
        pool._check_rss()
    assert len(FakeWorker.instances) == 2  # its successor starts first (room below ceil)
    assert pool.snapshot().retirements_total == 1
    assert caplog.text.count("over 40 MB RSS: retiring") == 1
    successor = FakeWorker.instances[1]
    successor.rss = 80 << 20  # starting: not checked (the machine would ignore it)
    pool._check_rss()
    assert caplog.text.count("RSS") == 1
    successor.ready()
    assert worker.stopped and not successor.stopped


def test_init_failure_rejects_waiting_with_endpoint_unavailable(setup: Any) -> None:
    make, sink, _ = setup
    pool = make(floor=1, cruise=1, ceil=1)
    pool.submit(b"{}", exchange=None)
    pool.worker_init_failed(FakeWorker.instances[0].worker_id, "ImportError: no numpy", "Traceback...")
    error = sink.failed[0][1]
    assert error.error_type == "EndpointUnavailable" and "no numpy" in error.message
    assert pool.last_load_traceback == "Traceback..."


def test_spawn_oserror_becomes_load_failure(setup: Any) -> None:
    make, sink, loop = setup

    class Broken(FakeWorker):
        def spawn(self) -> None:
            raise OSError("No such file: /venv/bin/python")

    pool = EndpointPool(loop, SPEC, EndpointConfig(), sink, worker_factory=Broken)
    pool.start()
    pool.submit(b"{}", exchange=None)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert sink.failed and "No such file" in sink.failed[0][1].message


def test_cancel_queued_call_frees_it_without_answer(setup: Any) -> None:
    make, sink, _ = setup
    pool = make(floor=1, cruise=1, ceil=1, queue=4)
    worker = FakeWorker.instances[0]
    worker.ready()
    pool.submit(b"1", exchange=None)
    queued = pool.submit(b"2", exchange=None)
    pool.cancel(queued)
    worker.answer(runtime.RESULT, b"1")
    assert worker.sent == [b"1"] and len(sink.ok) == 1 and not sink.failed
    assert pool.calls == {}


def test_queue_full_carries_retry_after(setup: Any) -> None:
    make, sink, _ = setup
    pool = make(floor=1, cruise=1, ceil=1, queue=0)
    FakeWorker.instances[0].ready()
    pool.submit(b"1", exchange=None)
    pool.submit(b"2", exchange=None)
    error = sink.failed[0][1]
    assert error.error_type == "QueueFull"
    assert dict(error.headers)["Retry-After"] >= "1"


def test_queue_timeout_fires_from_the_timer(setup: Any) -> None:
    make, sink, loop = setup
    pool = make(floor=1, cruise=1, ceil=1, queue=4, timeout=30)
    FakeWorker.instances[0].ready()
    pool.submit(b"1", exchange=None)
    pool.submit(b"2", exchange=None)
    loop.run_until_complete(asyncio.sleep(0.1))
    assert [e.error_type for _, e in sink.failed] == ["QueueTimeout"]


def test_drain_waits_for_running_call_then_stops_workers(setup: Any) -> None:
    make, sink, loop = setup
    pool = make(floor=1, cruise=1, ceil=1)
    worker = FakeWorker.instances[0]
    worker.ready()
    pool.submit(b"1", exchange=None)
    drain = loop.create_task(pool.drain())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert not drain.done() and not worker.stopped
    pool.submit(b"late", exchange=None)
    assert sink.failed[-1][1].error_type == "ShuttingDown"
    worker.answer(runtime.RESULT, b"1")
    assert worker.stopped
    worker.exit("exit code 0")
    loop.run_until_complete(asyncio.wait_for(drain, 1))


def _fast_pool(make: Any, **pool: int) -> tuple[EndpointPool, FakeWorker]:
    """ceil 1, calls answered at once: the mean run time allows MAX_STAGED staged calls.

    The run time is measured on the real clock, so it is this test's own pace: on a busy
    machine one warm call can look slow, and more warm calls bring the mean down."""
    endpoint = make(floor=1, cruise=1, ceil=1, **pool)
    worker = FakeWorker.instances[0]
    worker.ready()
    for _ in range(200):
        endpoint.submit(b"warm", exchange=None)
        worker.answer(runtime.RESULT, b'"warm"')
        if endpoint.machine.stage_limit() == MAX_STAGED:
            break
    assert endpoint.machine.stage_limit() == MAX_STAGED
    del endpoint.sink.ok[1:]  # the tests read their answers after one warm answer
    worker.sent.clear()
    worker.start_by_ns.clear()
    return endpoint, worker


def test_several_staged_calls_start_and_answer_in_order(setup: Any) -> None:
    make, sink, _ = setup
    pool, worker = _fast_pool(make, queue=8)
    calls = [pool.submit(b"%d" % i, exchange=None) for i in range(MAX_STAGED + 3)]
    # One running, MAX_STAGED sent ahead into its pipe, the rest wait in the queue.
    assert worker.sent == [b"%d" % i for i in range(MAX_STAGED + 1)]
    assert pool.snapshot().queue_length == 2
    for i in range(len(calls)):
        worker.answer(runtime.RESULT, b"%d" % i)
    assert [call for call, _ in sink.ok[1:]] == calls
    assert [json.loads(body)["response"] for _, body in sink.ok[1:]] == list(range(len(calls)))
    assert worker.sent == [b"%d" % i for i in range(len(calls))]
    assert pool.calls == {} and pool._staged == {} and pool._running == {}


def test_a_staged_calls_execution_is_never_shorter_than_its_function(setup: Any) -> None:
    # SPEC §3.3: execution is the round trip to the pipeline, so it holds functionInternal.
    # A staged call's start is taken when the answer before it is read; when answers are
    # read in a batch, the staged call has already run by then.
    make, sink, _ = setup
    pool, worker = _fast_pool(make, queue=8)
    first = pool.submit(b"1", exchange=None)
    second = pool.submit(b"2", exchange=None)  # staged behind the first
    time.sleep(0.05)  # both wait 50 ms, then their answers are read together
    worker.answer(runtime.RESULT, b"1", fn_us=20_000)
    worker.answer(runtime.RESULT, b"2", fn_us=30_000)  # ran 30 ms before the node read it
    timings = {call: json.loads(body)["timing"] for call, body in sink.ok[1:]}
    assert timings[first]["execution"] >= 20_000
    late = timings[second]
    assert late["execution"] == 30_000 and late["functionInternal"] == 30_000
    assert late["wait"] <= 50_000 + 5_000 - 30_000  # the 30 ms moved from its wait
    assert second.wait_us == late["wait"]  # what the query log and the queue-wait histogram read


def test_staged_calls_of_a_dead_pipeline_go_to_its_replacement(setup: Any) -> None:
    make, sink, _ = setup
    pool, worker = _fast_pool(make, queue=8)
    calls = [pool.submit(b"%d" % i, exchange=None) for i in range(4)]
    assert worker.sent == [b"0", b"1", b"2", b"3"]  # 0 runs, 1-3 staged
    pool.cancel(calls[2])  # its client leaves while it is staged
    worker.exit("killed by signal SIGKILL")
    assert [(call, error.error_type) for call, error in sink.failed] == [(calls[0], "WorkerCrashed")]
    replacement = FakeWorker.instances[1]
    replacement.ready()
    assert replacement.sent == [b"1", b"3"]  # never ran on the dead one: in order, 2 left
    replacement.answer(runtime.RESULT, b"1")
    replacement.answer(runtime.RESULT, b"3")
    assert [call for call, _ in sink.ok[1:]] == [calls[1], calls[3]]
    assert pool.calls == {} and pool._staged == {} and pool._running == {}


def test_a_cancel_made_while_commands_run_waits_for_them(setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Rejecting X closes the connection that also carried Y, which the same list of
    # commands dispatches: Y must still reach the pipeline, which must not stay BUSY.
    make, sink, _ = setup
    pool = make(floor=1, cruise=1, ceil=1, queue=10, timeout=1000)
    worker = FakeWorker.instances[0]
    worker.ready()
    pool.submit(b"A", exchange=None)
    x = pool.submit(b"X", exchange=None)
    time.sleep(0.6)
    y = pool.submit(b"Y", exchange=None)
    sink.on_failed = lambda call: pool.cancel(y) if call is x else None
    time.sleep(0.5)  # X is past its deadline, Y is not; the loop's timer has not run
    worker.answer(runtime.RESULT, b"1")  # A done: [Reject(X, QueueTimeout), Dispatch(Y)]
    assert [(call, error.error_type) for call, error in sink.failed] == [(x, "QueueTimeout")]
    assert worker.sent == [b"A", b"Y"] and "failed" not in caplog.text
    worker.answer(runtime.RESULT, b"2")  # Y's answer: dropped by the app (its client left)
    assert pool.machine.worker_state(worker.worker_id) is WorkerState.IDLE
    assert pool.calls == {} and pool._running == {} and pool._staged == {}


def _killed_holding_two(make: Any) -> tuple[EndpointPool, FakeWorker, list[Call]]:
    """ceil 1: `slow` runs, `first` and `second` are staged, and the exec timeout kills it."""
    pool, worker = _fast_pool(make, queue=8, exec_timeout=5)
    calls = [pool.submit(name, exchange=None) for name in (b"slow", b"first", b"second")]
    assert worker.sent == [b"slow", b"first", b"second"]
    time.sleep(0.02)
    pool._tick()  # the exec timeout (the start-by check, also due, is left to the loop)
    assert worker.killed
    assert [(call, error.error_type) for call, error in pool.sink.failed] == [(calls[0], "ExecutionTimeout")]
    FakeWorker.instances[1].ready()  # the replacement
    return pool, worker, calls


def test_an_exec_timeout_kill_delivers_what_the_killed_pipeline_answered(setup: Any) -> None:
    make, sink, _ = setup
    pool, worker, (_, first, second) = _killed_holding_two(make)
    # It had finished the killed call and run `first` (their answers were unread).
    worker.answer(runtime.RESULT, b'"slow"')  # dropped: answered 504 already
    worker.answer(runtime.RESULT, b'"first"')
    worker.exit("killed by signal SIGKILL")
    assert [call for call, _ in sink.ok[1:]] == [first]
    # `second` may have started after `first` was answered: it ran at most once, there.
    assert [(call, error.error_type) for call, error in sink.failed[1:]] == [(second, "WorkerCrashed")]
    assert FakeWorker.instances[1].sent == []
    assert pool.calls == {} and pool._running == {} and pool._staged == {}


def test_an_exec_timeout_kill_fails_the_call_that_may_have_been_running(setup: Any) -> None:
    make, sink, _ = setup
    pool, worker, (_, first, second) = _killed_holding_two(make)
    worker.answer(runtime.RESULT, b'"slow"')  # then `first` started, and the kill came
    worker.exit("killed by signal SIGKILL")
    assert [(call, error.error_type) for call, error in sink.failed[1:]] == [(first, "WorkerCrashed")]
    replacement = FakeWorker.instances[1]
    assert replacement.sent == [b"second"]
    replacement.answer(runtime.RESULT, b'"second"')
    assert [call for call, _ in sink.ok[1:]] == [second]
    assert pool.calls == {} and pool._running == {} and pool._staged == {}


def test_a_staged_call_behind_a_hung_one_is_taken_back_at_its_start_by(setup: Any) -> None:
    make, sink, loop = setup
    pool = make(floor=2, cruise=2, ceil=2, queue=8)
    for worker in FakeWorker.instances:
        worker.ready()
    warm = pool.submit(b"warm", exchange=None)  # a fast endpoint: prefetch allowed
    (warmed,) = [w for w in FakeWorker.instances if w.sent]
    warmed.answer(runtime.RESULT, b"0")
    hung_call = pool.submit(b"hung", exchange=None)
    busy_call = pool.submit(b"busy", exchange=None)
    hung, busy = sorted(FakeWorker.instances, key=lambda w: w.sent[-1] != b"hung")
    staged_call = pool.submit(b"staged", exchange=None)
    assert hung.sent[-1] == b"staged" and hung.start_by_ns[-1] > 0  # behind the older call
    # Its start-by passes with no answer from `hung`: taken back, staged on `busy`.
    time.sleep(0.05)
    pool._check_start_by()  # what its timer runs (run here, once: the next start-by is not due)
    assert busy.sent[-2:] == [b"busy", b"staged"]
    busy.answer(runtime.RESULT, b'"busy"')
    busy.answer(runtime.RESULT, b'"staged"')
    assert [call for call, _ in sink.ok] == [warm, busy_call, staged_call]
    # The hung call ends; the pipeline refuses the call taken back from it (dropped).
    hung.answer(runtime.RESULT, b'"hung"')
    hung.answer(runtime.NOT_STARTED, b"")
    assert [call for call, _ in sink.ok] == [warm, busy_call, staged_call, hung_call]
    assert not sink.failed and not hung.killed
    assert pool.machine.worker_state(hung.worker_id) is WorkerState.IDLE
    assert pool.calls == {} and pool._running == {} and pool._staged == {}


class GoneClient:
    """The exchange of a call whose client closed its connection while a pipeline held it
    (app.client_closed tells the pool). give_up() is what the app's exchange does then:
    cancelled, as a call that leaves its pool (app._client_gone)."""

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.call: Call | None = None
        self.given_up = 0

    def give_up(self) -> None:
        assert self.call is not None
        self.given_up += 1
        self.pool.cancel(self.call)


def _gone_client_call(pool: EndpointPool, body: bytes) -> tuple[Call, GoneClient]:
    exchange = GoneClient(pool)
    call = exchange.call = pool.submit(body, exchange=exchange)
    pool.client_closed(call)  # its client closed while the call sat in a pipeline's pipe
    return call, exchange


def test_a_staged_call_taken_back_leaves_the_queue_if_its_client_closed(setup: Any) -> None:
    # SPEC §4 rule 9: taken back at its start-by, it would wait in the queue, then run,
    # for a client that had gone (it was logged 200).
    make, sink, _ = setup
    pool, worker = _fast_pool(make, queue=8)
    pool.submit(b"hung", exchange=None)
    call, exchange = _gone_client_call(pool, b"gone")
    assert worker.sent == [b"hung", b"gone"]  # staged behind the hung call
    time.sleep(0.05)
    pool._check_start_by()  # its start-by passed: taken back, and it leaves
    assert exchange.given_up == 1
    assert pool.snapshot().queue_length == 0
    worker.answer(runtime.RESULT, b'"hung"')
    worker.answer(runtime.NOT_STARTED, b"")  # the pipeline did not start the call taken back
    assert worker.sent == [b"hung", b"gone"]  # never sent again
    assert call not in [c for c, _ in sink.ok] and not sink.failed
    assert pool.calls == {} and pool._running == {} and pool._staged == {}
    assert pool.machine.worker_state(worker.worker_id) is WorkerState.IDLE


def test_a_staged_call_of_a_dead_pipeline_leaves_if_its_client_closed(setup: Any) -> None:
    make, sink, _ = setup
    pool, worker = _fast_pool(make, queue=8)
    running = pool.submit(b"0", exchange=None)
    call, exchange = _gone_client_call(pool, b"gone")
    kept = pool.submit(b"2", exchange=None)
    worker.exit("killed by signal SIGKILL")
    assert exchange.given_up == 1
    assert [(c, error.error_type) for c, error in sink.failed] == [(running, "WorkerCrashed")]
    replacement = FakeWorker.instances[1]
    replacement.ready()
    assert replacement.sent == [b"2"]
    replacement.answer(runtime.RESULT, b"2")
    assert [c for c, _ in sink.ok[1:]] == [kept]
    assert pool.calls == {} and pool._staged == {} and pool._running == {}


def _gone_client_call_behind_another(setup: Any, body: bytes) -> tuple[Any, ...]:
    """A fast pool of one pipeline running a first call, a gone client's call staged behind."""
    make, sink, _ = setup
    pool, worker = _fast_pool(make, queue=8)
    first = pool.submit(b"first", exchange=None)
    call, exchange = _gone_client_call(pool, body)
    return pool, worker, sink, first, call, exchange


def test_a_call_not_started_leaves_if_its_client_closed(setup: Any) -> None:
    pool, worker, sink, first, call, exchange = _gone_client_call_behind_another(setup, b"late")
    worker.answer(runtime.RESULT, b"1")
    worker.answer(runtime.NOT_STARTED, b"")  # its start-by passed in the pipeline
    assert exchange.given_up == 1
    assert worker.sent == [b"first", b"late"]  # not sent again
    assert [c for c, _ in sink.ok[1:]] == [first] and not sink.failed
    assert pool.calls == {} and pool._running == {} and pool._staged == {}


def test_a_staged_call_whose_client_closed_runs_if_its_pipeline_reaches_it(setup: Any) -> None:
    pool, worker, sink, first, call, exchange = _gone_client_call_behind_another(setup, b"second")
    worker.answer(runtime.RESULT, b"1")
    worker.answer(runtime.RESULT, b"2")  # it ran: answered as any call, written if it can be
    assert [c for c, _ in sink.ok[1:]] == [first, call] and exchange.given_up == 0
    assert pool.calls == {} and pool._running == {} and pool._staged == {}


def test_a_call_whose_client_closed_is_given_up_if_its_pipeline_dies_running_it(setup: Any) -> None:
    pool, worker, sink, _, _, exchange = _gone_client_call_behind_another(setup, b"second")
    worker.answer(runtime.RESULT, b"1")  # the second starts
    worker.exit("killed by signal SIGKILL")
    assert exchange.given_up == 1 and not sink.failed  # no answer owed to a gone client
    assert pool.calls == {} and pool._running == {} and pool._staged == {}


def test_a_call_its_pipeline_did_not_start_is_dispatched_again(setup: Any) -> None:
    make, sink, _ = setup
    pool, worker = _fast_pool(make, queue=8)
    first = pool.submit(b"first", exchange=None)
    late = pool.submit(b"late", exchange=None)
    assert worker.sent == [b"first", b"late"]
    worker.answer(runtime.RESULT, b"1")
    worker.answer(runtime.NOT_STARTED, b"")  # its start-by passed before the node took it back
    assert worker.sent == [b"first", b"late", b"late"] and worker.start_by_ns[-1] == 0
    worker.answer(runtime.RESULT, b"2")
    assert [call for call, _ in sink.ok[1:]] == [first, late] and not sink.failed
    assert pool.calls == {} and pool._running == {} and pool._staged == {}


def test_an_answer_that_fails_to_be_delivered_leaves_the_pipeline_serving(setup: Any) -> None:
    """A bug in answering one call (the sink raises) is logged and answered InternalError;
    the pipeline goes on to its next call instead of staying BUSY for good."""
    make, sink, _ = setup
    pool = make(floor=1, cruise=1, ceil=1, queue=4)
    worker = FakeWorker.instances[0]
    worker.ready()
    first = pool.submit(b"1", exchange=None)
    pool.submit(b"2", exchange=None)

    def broken(pool: Any, call: Call, body: bytes, exec_us: int, function_us: int) -> None:
        raise UnicodeEncodeError("utf-8", "\udfff", 0, 1, "surrogates not allowed")

    sink.call_succeeded = broken  # type: ignore[method-assign]
    worker.answer(runtime.RESULT, b"1")
    assert [(call, error.error_type) for call, error in sink.failed] == [(first, "InternalError")]
    assert worker.sent == [b"1", b"2"]  # the next call went to the pipeline
