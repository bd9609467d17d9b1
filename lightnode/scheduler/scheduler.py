"""The I/O shell around one endpoint's pool machine.

    HTTP exchange ─submit()─▶ EndpointPool ──RequestArrived──▶ PoolMachine (pure, pool/)
                                   ▲   ◀──── commands ──────────┘
                                   │   SpawnWorker / Dispatch / StopWorker / KillWorker / Reject
                                   │                      │
                 worker_ready /    │                      ▼
                 worker_answered / └──────────── WorkerHandle ══ pipes ══ worker/runtime.py
                 worker_exited                            (one process per pipeline)

All pool state lives in the machine; this module carries out its commands,
feeds it events (with the loop's monotonic clock), and arms one timer at
`machine.next_deadline()`. Successful answers are spliced from the worker's
result bytes without re-parsing them.

Imports: pool/, scheduler.worker_handle, config.model, errors. Never http/.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

import ujson

from lightnode.config.model import EndpointConfig
from lightnode.errors import LightnodeError
from lightnode.pool import commands as cmd
from lightnode.pool import events as ev
from lightnode.pool.machine import PoolMachine
from lightnode.pool.snapshot import PoolSnapshot
from lightnode.pool.states import WorkerState
from lightnode.scheduler.start_gate import StartGate
from lightnode.scheduler.worker_handle import (
    NOT_STARTED,
    NOT_STARTED_STOPPING,
    RESULT,
    WorkerHandle,
    WorkerListener,
    WorkerSpec,
)

log: Final = logging.getLogger("lightnode.scheduler")
# A Final name: the compiled build reads it from a C variable, not the module dict.
monotonic: Final = time.monotonic

# A pipeline in these states has said READY.
_SERVING: Final = frozenset({WorkerState.IDLE, WorkerState.BUSY})

# How often pipelines' RSS is checked against limits.max_rss_mb.
RSS_CHECK_INTERVAL_S: Final = 1.0
# A pipeline still starting after this long is logged, then again at each doubling of
# the wait: initialization code that never returns (a hung download, a lock) would
# otherwise only show as requests timing out in the queue and /readyz saying "starting".
START_WARNING_S: Final = 60.0
# A staged call's start-by goes into its CALL frame this much earlier than the machine's
# (in ns): the float seconds of time.monotonic() round the clock's ns by up to ~1 ns at
# any realistic uptime, and the worker must refuse a call whenever the machine may take
# it back (refusing one it will not take back costs a round trip, nothing else).
START_BY_MARGIN_NS: Final = 1000
# A request's arrival reads the answers its pool's pipelines have written, at most once
# in this time (see submit). Under a flood the event loop's pass over a thousand readable
# connections, each refused QueueFull, takes tens of ms, and a pipeline's answer pipe
# waits its turn in it: the pipeline idled that long between calls (half the time on a
# 50 ms function). Measured with 1,000 keep-alive connections re-sending 50 ms after each
# 503 (~7,000-10,000 req/s on 2 pipelines; pure Python, medians of alternating runs): 22
# calls/s of 40 on a 50 ms function and 70 of ~1,500 on a 1 ms one; reading here, 39.5/s
# and 1,350/s. Only the pipes where an answer may wait are read (PoolMachine.answers_due:
# calls that have run the mean run time, and pipelines the loop was late for): while
# the loop keeps up, a pipe was read when its previous answer came, and a read now finds
# nothing (EAGAIN). Reading every busy pipe made 2.63 read calls per request on a 1 ms
# function at c=8 (wrk -t1, two pipelines, ~2,300 req/s; the floor makes 1.88); now
# 2.09-2.12, and the node spends a few µs less CPU per request.
ANSWER_POLL_S: Final = 0.001


class Call:
    """One accepted /run request, from submit() to its single answer."""

    __slots__ = (
        "request_id", "body", "arrived", "worker_id", "wait_us", "dispatched", "exchange", "cancelled",
        "tag", "client_closed",
    )  # fmt: skip

    def __init__(self, request_id: int, body: bytes, arrived: float, exchange: Any, tag: bytes = b"") -> None:
        self.request_id = request_id
        self.body = body
        self.tag = tag  # the client's request id + b"\n" for the pipeline's output lines (b"": none)
        self.arrived = arrived
        self.exchange = exchange
        self.worker_id = 0
        self.wait_us = 0
        self.dispatched = 0.0
        self.cancelled = False
        # Its client closed its connection while a pipeline held it (see client_closed()).
        self.client_closed = False


# Placeholders in a pipeline's sequence of calls (`_running` and `_staged`), whose
# answers come in the order the calls were sent: a call the machine took back (its
# answer must be NOT_STARTED), and a call already answered by the machine (an exec
# timeout's 504; its answer, should it come, is dropped). Never in `calls`: id 0.
_WITHDRAWN: Final = Call(0, b"", 0.0, None)
_DROPPED: Final = Call(0, b"", 0.0, None)


class CallSink(Protocol):
    """Receives each call's outcome (the app answers the client, counts, logs)."""

    def call_succeeded(
        self, pool: EndpointPool, call: Call, body: bytes, exec_us: int, function_us: int
    ) -> None: ...

    def call_failed(
        self, pool: EndpointPool, call: Call, error: LightnodeError, exec_us: int, function_us: int
    ) -> None: ...


WorkerFactory = Callable[[asyncio.AbstractEventLoop, int, WorkerSpec, WorkerListener], Any]


class EndpointPool:
    """The pipelines of one endpoint of one service generation (a WorkerListener).

    It implements WorkerListener without naming it as a base: the compiled build
    makes a class native only if all its bases are compiled too.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        spec: WorkerSpec,
        config: EndpointConfig,
        sink: CallSink,
        *,
        worker_factory: WorkerFactory = WorkerHandle,
        start_gate: StartGate | None = None,
    ) -> None:
        self.loop = loop
        self.spec = spec
        self.sink = sink
        self.machine = PoolMachine(config)
        self._factory = worker_factory
        self.workers: dict[int, Any] = {}
        # The node's gate on pipelines booting at once (start_gate.py); a pool built on
        # its own starts its pipelines at once. The pipelines the machine started that
        # still wait for a slot have a handle here but no process yet.
        self.start_gate = start_gate if start_gate is not None else StartGate(loop, None)
        self._unlaunched: set[int] = set()
        self.start_warning_s: float = START_WARNING_S  # tests shorten it
        # The START_WARNING_S timer of each pipeline starting (cancelled at READY or exit).
        self._start_timers: dict[int, asyncio.TimerHandle] = {}
        self.calls: dict[int, Call] = {}
        # A pipeline's calls in the order it answers them: the first not answered yet
        # (worker id -> call), and those sent behind it (prefetched, or sent to a pipeline
        # IDLE for the machine that still owes a NOT_STARTED); either may be a placeholder.
        self._running: dict[int, Call] = {}
        self._staged: dict[int, deque[Call]] = {}
        self._next_request_id = 1
        self.answer_poll_s: float = ANSWER_POLL_S  # tests set 0 (every arrival reads)
        self._poll_at = 0.0  # no arrival reads the pipes before this time (see submit)
        self._polling = False  # submit is reading answer pipes (see worker_answered)
        # Pipelines whose last answer an arrival's read found before the loop did: the
        # loop is late for their pipes (a flood), and each arrival reads them (see submit).
        self._read_late: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._feeding = False
        self._backlog: list[ev.Event] = []
        # The timer of the earliest start-by of a staged call (see _check_start_by).
        self._start_by_timer: asyncio.TimerHandle | None = None
        self._start_by_at: float | None = None
        self._drained = loop.create_future()
        self._rss_timer: asyncio.TimerHandle | None = None
        # limits.max_rss_mb: each pipeline's RSS once loaded (read at READY while a limit
        # is set), the pipelines already retired for it, and those said to be over it as
        # soon as they loaded (see _check_rss).
        self._ready_rss: dict[int, int] = {}
        self._rss_reported: set[int] = set()
        self._rss_warned: set[int] = set()
        self.last_start_s: float | None = None  # duration of the last successful start
        self.last_start_at: float | None = None
        self.last_load_error: str | None = None
        self.last_load_traceback: str | None = None
        # apiContext is the same for every answer of this pool: render it once.
        self._api_context = ujson.dumps(
            {
                "serviceId": spec.service_id,
                "endpointId": spec.endpoint_id,
                "serviceGeneration": spec.generation,
            }
        ).encode()

    # ------------------------------------------------------------------ public

    def start(self) -> None:
        self._feed(ev.Loaded())
        self._arm_rss_check()

    def _read_answers_of(self, worker_ids: list[int]) -> None:
        """Read now the answers these pipelines have written (those still alive)."""
        workers = self.workers
        for worker_id in worker_ids:
            worker = workers.get(worker_id)
            if worker is not None:
                worker.read_answers()

    def submit(self, body: bytes, exchange: Any, tag: bytes = b"") -> Call:
        """Accept a request; exactly one of the sink's methods will be called for it.

        `tag`: the request id and b"\\n"; the output lines its call writes carry it.

        First, while requests wait for a busy pipeline (none starts for them) and at most
        once per `answer_poll_s`, the answers that may wait unread in busy pipelines' pipes
        are read (see ANSWER_POLL_S; PoolMachine.answers_due names the pipes: calls that
        have run the mean run time, and pipelines the loop was late for): a pipeline
        done with its call gets the next waiting one
        now rather than after the loop's pass, and this request finds the room that
        answer made in the queue. Only then: an answer read early otherwise frees a
        pipeline that nothing needs, or takes a request from a pipeline starting for it,
        which is then surplus (with cruise < ceil and no scale_down_delay, a pool that
        starts and stops pipelines all the time served a fifth fewer requests so). The
        app calls submit from a connection's read; answers given meanwhile to requests of
        that connection are written after it (the protocol's dispatch holds them), those
        of other connections at once, as from the pipe's own read. It also calls submit
        from inside an answer's handling (the answer reopened its connection's window);
        the pipe whose answers are being settled is then not read again (see
        WorkerHandle.read_answers).
        """
        request_id = self._next_request_id
        self._next_request_id += 1
        now = monotonic()
        if self._running and now >= self._poll_at and not self._feeding:
            due = self.machine.answers_due(now, self._read_late)
            if due:
                self._poll_at = now + self.answer_poll_s
                self._polling = True
                try:
                    self._read_answers_of(due)
                finally:
                    self._polling = False
                now = monotonic()
        call = Call(request_id, body, now, exchange, tag)
        self.calls[request_id] = call
        if self._feeding:
            self._backlog.append(ev.RequestArrived(request_id))
        else:
            self._carry_out(self.machine.request_arrived(request_id, now))
        if self._unlaunched and not self.machine.serving():
            self._hurry_starts()  # requests wait for them: they boot before idle pools'
        return call

    def cancel(self, call: Call) -> None:
        """The client went away (SPEC §4 rule 9).

        A cancel made while commands are carried out (a Reject whose answer closes the
        connection that carried another request, say) waits until they are: a command
        of the same list may still name the request, and must find it.
        """
        if call.request_id in self.calls and not call.cancelled:
            call.cancelled = True
            if self._feeding:
                self._backlog.append(ev.RequestCancelled(call.request_id))
                return
            self._feed(ev.RequestCancelled(call.request_id))
            self._forget_if_queued(call.request_id)

    def client_closed(self, call: Call) -> None:
        """Its client closed its connection while a pipeline holds `call` (app.client_closed).

        A running call finishes and is answered as any call. A staged one runs too if its
        pipeline reaches it; should it be taken back instead (its start-by passed, it was
        not started, its pipeline died), it leaves rather than wait in the queue again
        (SPEC §4 rule 9): the machine forgets it, and so does _forget_cancelled.
        """
        call.client_closed = True
        if call.worker_id and self._running.get(call.worker_id) is not call:
            self.cancel(call)

    def _forget_cancelled(self, call: Call) -> None:
        """A cancelled call the machine names no more leaves `calls`, unanswered. One that
        client_closed() cancelled has its exchange given up (recorded 499 ClientGone; the
        connection no longer waits for it)."""
        if self.calls.pop(call.request_id, None) is not None and call.client_closed and call.exchange is not None:
            call.exchange.give_up()

    def refuse_waiting(self, error: LightnodeError) -> None:
        """Answer every call still waiting in the queue with `error`: none of them runs.

        For the end of a shutdown's grace period (daemon.py), when a queued call must
        neither start on a pipeline started anew for it nor be cut off unanswered.
        """
        now = monotonic()
        for call in [c for c in self.calls.values() if not c.worker_id and not c.cancelled]:
            self.cancel(call)  # leaves the machine's queue silently (SPEC §4 rule 9)
            call.wait_us = int((now - call.arrived) * 1e6)
            self.sink.call_failed(self, call, error, 0, 0)

    def _forget_if_queued(self, request_id: int) -> None:
        """After RequestCancelled: a queued call leaves now; a running or staged one when answered."""
        call = self.calls.get(request_id)
        if call is not None and not call.worker_id:
            del self.calls[request_id]

    def apply_config(self, config: EndpointConfig) -> None:
        if config.limits.max_rss_mb != self.machine.config.limits.max_rss_mb:
            self._rss_reported.clear()  # a new limit: every pipeline is checked against it
            self._rss_warned.clear()
        self._feed(ev.LimitsChanged(config))
        self._arm_rss_check()

    async def drain(self) -> None:
        """Finish running and queued requests, refuse new ones, stop every pipeline."""
        self._feed(ev.DrainRequested())
        await asyncio.shield(self._drained)

    def kill_all(self) -> None:
        """Last resort at shutdown: SIGKILL whatever still runs."""
        for worker_id, worker in list(self.workers.items()):
            if not self._never_launched(worker_id):
                worker.kill(dump_stack=False)

    def snapshot(self) -> PoolSnapshot:
        return self.machine.snapshot(monotonic())

    @property
    def waiting_for_start_slot(self) -> int:
        """Pipelines of this pool not started yet: they wait for the node's start gate."""
        return len(self._unlaunched)

    def pipelines(self) -> list[dict[str, object]]:
        return [
            {
                "workerId": wid,
                "pid": None if wid in self._unlaunched else w.pid,  # None: waits for a start slot
                "state": self.machine.worker_state(wid).value,
            }
            for wid, w in sorted(self.workers.items())
        ]

    @property
    def drained(self) -> bool:
        return self._drained.done()

    # ------------------------------------------------------- machine plumbing

    def _feed(self, event: ev.Event) -> None:
        if self._feeding:  # a command's side effect produced an event: run it after
            self._backlog.append(event)
            return
        self._carry_out(self.machine.handle(event, monotonic()))

    def _carry_out(self, commands: list[cmd.Command]) -> None:
        """Run the commands of one event, then the events they caused, then arm the timer."""
        machine = self.machine
        only_queue = machine.only_queue_deadline_moved
        if not commands and only_queue:  # a request queued under load: nothing to run
            self._arm_for_queue_head()
            return
        self._feeding = True
        try:
            for command in commands:
                self._run(command)
            while self._backlog:
                event = self._backlog.pop(0)
                commands = machine.handle(event, monotonic())
                only_queue = only_queue and machine.only_queue_deadline_moved
                for command in commands:
                    self._run(command)
                if isinstance(event, ev.RequestCancelled):
                    self._forget_if_queued(event.request_id)
        finally:
            self._feeding = False
        if only_queue:
            self._arm_for_queue_head()
        else:
            self._arm_timer(machine.next_deadline())

    def _arm_for_queue_head(self) -> None:
        """Hot path: the armed timer (if any) is still due no later than every deadline
        but the queue's; arm for the queue head if that comes first."""
        deadline = self.machine.queue_deadline()
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            self._arm_timer(deadline)

    def _run(self, command: cmd.Command) -> None:
        try:
            if isinstance(command, cmd.Dispatch):
                self._dispatch(command)
            elif isinstance(command, cmd.Withdraw):
                self._withdraw(command)
            elif isinstance(command, cmd.Reject):
                self._reject(command)
            elif isinstance(command, cmd.SpawnWorker):
                self._spawn(command.worker_id)
            elif isinstance(command, cmd.StopWorker):
                worker = self.workers.get(command.worker_id)
                if worker is not None and not self._never_launched(command.worker_id):
                    worker.stop()
            elif isinstance(command, cmd.KillWorker):
                worker = self.workers.get(command.worker_id)
                if worker is not None and not self._never_launched(command.worker_id):
                    log.warning("%s: killing pipeline pid %s: %s", self.spec.tag, worker.pid, command.reason)
                    worker.kill(dump_stack=True)
            elif isinstance(command, cmd.Drained):
                if not self._drained.done():
                    self._drained.set_result(None)
        except Exception:  # boundary: one command must not take the node down
            log.exception("%s: command %r failed", self.spec.tag, command)

    def _arm_timer(self, deadline: float | None) -> None:
        if deadline == self._timer_at:
            return
        if deadline is not None and self._timer_at is not None and self._timer_at < deadline:
            # An earlier timer is armed: keep it. It fires, the Tick finds nothing due and
            # arms the later deadline then; under load (the queue head's deadline moves on
            # every dispatch) this saves a cancel and a new loop timer per request.
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            # `now` is time.monotonic() (µs resolution); the loop's own clock is coarser.
            self._timer = self.loop.call_later(max(0.0, deadline - monotonic()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = None
        self._feed(ev.Tick())

    def _arm_start_by(self, at: float) -> None:
        """Have _check_start_by run at `at`, unless it is due sooner already."""
        if self._start_by_at is not None and self._start_by_at <= at:
            return  # the usual case under load: one comparison per staged call
        if self._start_by_timer is not None:
            self._start_by_timer.cancel()
        self._start_by_at = at
        self._start_by_timer = self.loop.call_later(max(0.0, at - monotonic()), self._check_start_by)

    def _check_start_by(self) -> None:
        """Staged calls past their start-by: read their pipelines' answers, then let the
        machine take back those still staged (see "Taking a staged request back" in
        pool/machine.py). `read_s` is taken before the reads: every answer written
        before it is reported first, so a call still staged had an unanswered
        predecessor at read_s, and its pipeline will not start it."""
        self._start_by_timer = None
        self._start_by_at = None
        read_s = monotonic()
        overdue = self.machine.overdue_pipelines(read_s)
        if overdue:
            self._read_answers_of(overdue)
            self._feed(ev.AnswersRead(tuple(overdue), read_s))
        earliest = self.machine.next_start_by()
        if earliest is not None:
            self._arm_start_by(earliest)

    # ---------------------------------------------------------------- commands

    def _spawn(self, worker_id: int) -> None:
        """Start pipeline `worker_id`: at once if the pool serves (it grows for load now
        waiting, or replaces a pipeline), else when the node's start gate lets it.

        The gate orders the boots of pools that serve nothing yet (a node's start, a
        deploy's new generation, an endpoint whose pipelines all died). A serving pool's
        starts waiting behind them would be counted by its machine as pipelines to come
        (rule 7 then stops its warm pipeline in their place), for as long as others boot.
        """
        worker = self._factory(self.loop, worker_id, self.spec, self)
        self.workers[worker_id] = worker
        self._unlaunched.add(worker_id)
        if self.machine.serving():
            self._launch(worker_id, worker)
            return
        self.start_gate.ask(worker, lambda: self._launch(worker_id, worker), lambda: worker.pid)

    def _hurry_starts(self) -> None:
        """Requests wait for this pool's pipelines that wait for a start slot: first in line."""
        for worker_id in sorted(self._unlaunched, reverse=True):
            self.start_gate.hurry(self.workers[worker_id])

    def _launch(self, worker_id: int, worker: Any) -> bool:
        """The gate's turn for `worker`: spawn its process; False if none was spawned."""
        if worker_id not in self._unlaunched:
            return False  # stopped while it waited (never: _never_launched withdrew it)
        self._unlaunched.discard(worker_id)
        try:
            worker.spawn()
        except Exception as exc:  # its own start failure only: the gate may launch it from
            # another pool's callback (a READY that freed the slot), which must go on
            if not isinstance(exc, OSError):
                log.exception("%s: starting a pipeline failed", self.spec.tag)
            message = f"cannot start {self.spec.python}: {exc}"
            self.loop.call_soon(self.worker_init_failed, worker_id, message, "")
            self.loop.call_soon(self.worker_exited, worker_id, "not started")
            return False
        self._start_timers[worker_id] = self.loop.call_later(
            self.start_warning_s, self._still_starting, worker_id, worker, self.start_warning_s
        )
        return True

    def _never_launched(self, worker_id: int) -> bool:
        """Stopped while it waited for a start slot: it never starts, and has exited."""
        if worker_id not in self._unlaunched:
            return False
        self._unlaunched.discard(worker_id)
        self.start_gate.withdraw(self.workers[worker_id])
        self.loop.call_soon(self.worker_exited, worker_id, "stopped before it started")
        return True

    def _still_starting(self, worker_id: int, worker: object, waited_s: float) -> None:
        """Say so if pipeline `worker` has still not said READY after `waited_s` (see START_WARNING_S)."""
        if self.workers.get(worker_id) is not worker or self._state_of(worker_id) is not WorkerState.STARTING:
            self._start_timers.pop(worker_id, None)
            return
        serving = self.machine.serving()
        meanwhile = (
            f"the endpoint serves with {serving} other {'pipeline' if serving == 1 else 'pipelines'} meanwhile"
            if serving
            else "no pipeline of the endpoint serves: its requests wait in the queue up to the queue timeout"
        )
        log.warning(
            "%s: pipeline pid %s has been starting for %g s: its initialization code has not returned; %s",
            self.spec.tag, self.workers[worker_id].pid, waited_s, meanwhile,
        )  # fmt: skip
        self._start_timers[worker_id] = self.loop.call_later(
            waited_s, self._still_starting, worker_id, worker, waited_s * 2
        )

    def _started(self, worker_id: int) -> None:
        """Pipeline `worker_id` is no longer starting (READY, failed, or gone): no warning
        for it, and its start slot goes to the next."""
        timer = self._start_timers.pop(worker_id, None)
        if timer is not None:
            timer.cancel()
        worker = self.workers.get(worker_id)
        if worker is not None:
            self.start_gate.release(worker)

    def _dispatch(self, command: cmd.Dispatch) -> None:
        call = self.calls[command.request_id]
        worker_id = command.worker_id
        if call.worker_id:  # never: the machine withdraws a call before it sends it again
            self._replace(call, _WITHDRAWN)
        call.worker_id = worker_id
        start_by_ns = 0
        if command.staged:
            start_by_ns = int(command.start_by_s * 1e9) - START_BY_MARGIN_NS
            self._arm_start_by(command.start_by_s)
        if command.staged or worker_id in self._running:
            # Behind the call it runs, or behind a NOT_STARTED it still owes: its wait
            # ends when the answers before it are in.
            staged = self._staged.get(worker_id)
            if staged is None:
                self._staged[worker_id] = deque((call,))
            else:
                staged.append(call)
        else:
            call.wait_us = int(command.wait_s * 1e6)
            call.dispatched = monotonic()
            self._running[worker_id] = call
        self.workers[worker_id].send_call(call.body, start_by_ns, call.tag)

    def _withdraw(self, command: cmd.Withdraw) -> None:
        """The machine took a staged call back: its place in the pipe becomes a placeholder."""
        call = self.calls.get(command.request_id)
        if call is None or call.worker_id != command.worker_id:
            return
        self._replace(call, _WITHDRAWN)
        call.worker_id = 0
        if call.cancelled:
            self._forget_cancelled(call)

    def _reject(self, command: cmd.Reject) -> None:
        call = self.calls.pop(command.request_id, None)
        if call is None:
            return
        exec_us = 0
        worker_id = call.worker_id
        if worker_id and self._running.get(worker_id) is call:
            self._running[worker_id] = _DROPPED  # its answer, should it still come
            exec_us = int((monotonic() - call.dispatched) * 1e6)
        else:  # it waited, or had not started here yet
            if worker_id:
                self._replace(call, _DROPPED)
            call.wait_us = int((monotonic() - call.arrived) * 1e6)
        headers: tuple[tuple[str, str], ...] = ()
        if command.retry_after_s is not None:
            headers = (("Retry-After", str(command.retry_after_s)),)
        detailed = None
        if self.spec.dev and command.error_type == "EndpointUnavailable" and self.last_load_traceback:
            detailed = f"{command.message}\n{self.last_load_traceback}"  # dev mode: show the traceback
        error = LightnodeError(command.error_type, command.message, detailed, headers=headers)
        self.sink.call_failed(self, call, error, exec_us, 0)

    def _replace(self, call: Call, placeholder: Call) -> None:
        """Put `placeholder` in the place of `call` in its pipeline's sequence of calls."""
        worker_id = call.worker_id
        if self._running.get(worker_id) is call:
            self._running[worker_id] = placeholder
            return
        staged = self._staged.get(worker_id)
        if staged is not None:
            for index, sent in enumerate(staged):
                if sent is call:
                    staged[index] = placeholder
                    return

    # ---------------------------------------------------- worker notifications

    def worker_ready(self, worker_id: int, info: dict[str, object]) -> None:
        self._started(worker_id)
        if self._state_of(worker_id) in _SERVING:
            self._broken(worker_id, "said READY a second time")
            return
        worker = self.workers.get(worker_id)
        if worker is not None:
            if self.machine.config.limits.max_rss_mb > 0:
                self._ready_rss[worker_id] = worker.rss_bytes()
            self.last_start_at = worker.started_at
            self.last_start_s = monotonic() - worker.started_at
            log.info(
                "%s: pipeline pid %s ready in %.0f ms (%s)",
                self.spec.tag, worker.pid, self.last_start_s * 1000, info.get("signature"),
            )
        self.last_load_error = None
        self.last_load_traceback = None
        self._feed(ev.WorkerReady(worker_id))

    def worker_init_failed(self, worker_id: int, message: str, traceback: str) -> None:
        self._started(worker_id)
        self.last_load_error = message
        self.last_load_traceback = traceback
        worker = self.workers.get(worker_id)
        pid = worker.pid if worker is not None else "?"
        self._feed(ev.WorkerStartFailed(worker_id, f"Failed to load endpoint: {message}"))
        self._log_start_failure(pid, message, traceback)

    def _log_start_failure(self, pid: object, message: str, traceback: str) -> None:
        """Log a failed pipeline start as the machine took it (after the event).

        Beside a serving pipeline the endpoint did not fail to load: it serves on and
        only its next starts wait (pool/machine.py), and the log says so. The "failed
        to load" wording is kept for the endpoint that cannot load (the dev tools
        hide that line, as their report shows the error).
        """
        if self._feeding:  # the event waits in the backlog: log once the machine took it
            self.loop.call_soon(self._log_start_failure, pid, message, traceback)
            return
        tail = f"\n{traceback}" if traceback else ""
        held_until = self.machine.starts_held_until()
        if held_until is None:
            log.error("%s: endpoint failed to load: pipeline pid %s: %s%s", self.spec.tag, pid, message, tail)
            return
        serving = self.machine.serving()
        log.error(
            "%s: pipeline pid %s failed to start: %s; the endpoint still serves with %d %s;"
            " its next pipeline start is held back for %.1f s%s",
            self.spec.tag, pid, message, serving, "pipeline" if serving == 1 else "pipelines",
            max(0.0, held_until - monotonic()), tail,
        )  # fmt: skip

    def _note_reader(self, worker_id: int) -> None:
        """Who read this answer: an arrival (submit), before the loop's turn came for the
        pipe, or the loop itself, in time (see `_read_late`)."""
        if self._polling:
            self._read_late.add(worker_id)
        elif self._read_late:
            self._read_late.discard(worker_id)

    def worker_answered(self, worker_id: int, kind: int, value: int, body: bytes) -> None:
        now = monotonic()
        self._note_reader(worker_id)
        call = self._running.pop(worker_id, None)
        if call is None:
            self._broken(worker_id, "answered with no call in flight")
            return
        # The answers come in the order of the calls: the next one it holds starts now.
        queue = self._staged.get(worker_id)
        if queue is not None:
            staged = queue.popleft()
            if not queue:
                del self._staged[worker_id]
            staged.dispatched = now
            staged.wait_us = int((now - staged.arrived) * 1e6)
            self._running[worker_id] = staged
        if call is _WITHDRAWN:  # taken back at its start-by: the machine expects nothing
            if kind != NOT_STARTED:  # never (see pool/machine.py): the clocks would disagree
                log.error("%s: pipeline %d ran a call taken back from it; its answer is dropped",
                          self.spec.tag, worker_id)  # fmt: skip
            return
        if kind == NOT_STARTED:
            self._not_started(worker_id, call, value == NOT_STARTED_STOPPING)
            return
        if self.calls.pop(call.request_id, None) is not None:
            exec_us = int((now - call.dispatched) * 1e6)
            if exec_us < value:
                # A staged call's start is taken when the answer before it is read; read
                # late (answers read in a batch), it had run already. It began at the latest
                # `value` (µs in its function) before now: that time was no wait.
                call.wait_us = max(0, call.wait_us - (value - exec_us))
                exec_us = value
            try:
                if kind == RESULT:
                    self.sink.call_succeeded(self, call, self._envelope(call, body, exec_us, value), exec_us, value)
                else:
                    self.sink.call_failed(self, call, _error_from_frame(body), exec_us, value)
            except Exception:  # a bug answering one call must not take the pipeline with it
                self._answer_failed(call, exec_us, value)
        if self._feeding:
            self._backlog.append(ev.WorkerFinished(worker_id))
        else:
            self._carry_out(self.machine.worker_finished(worker_id, now))

    def _not_started(self, worker_id: int, call: Call, stopping: bool) -> None:
        """`call` never ran (NOT_STARTED): the machine makes it wait again, or forgets it."""
        if call is not _DROPPED:
            call.worker_id = 0
        event = ev.WorkerNotStarted(worker_id, stopping)
        if self._feeding:
            self._backlog.append(event)
        else:
            self._feed(event)
        if call.cancelled:
            self._forget_cancelled(call)

    def _answer_failed(self, call: Call, exec_us: int, function_us: int) -> None:
        """Answering `call` raised: log it, and answer InternalError if that still can be.

        The pipeline's answer reader must not see the exception: the pipe would be
        closed with the pipeline still BUSY for the machine, and every later call of
        the endpoint would wait for it.
        """
        log.exception("%s: answering request %d failed", self.spec.tag, call.request_id)
        error = LightnodeError("InternalError", "The node failed to answer this request; see the node's log")
        try:
            self.sink.call_failed(self, call, error, exec_us, function_us)
        except Exception:
            log.exception("%s: answering request %d with InternalError failed too", self.spec.tag, call.request_id)

    def worker_exited(self, worker_id: int, detail: str) -> None:
        self._started(worker_id)
        worker = self.workers.pop(worker_id, None)
        self._ready_rss.pop(worker_id, None)
        self._rss_reported.discard(worker_id)
        self._rss_warned.discard(worker_id)
        self._read_late.discard(worker_id)
        state = self._state_of(worker_id)
        pid = worker.pid if worker is not None else "?"
        start_failure = ""
        if state is WorkerState.STARTING:  # it died before READY or INIT_ERROR
            start_failure = f"the pipeline exited during initialization ({detail})"
            detail = f"Failed to load endpoint: {start_failure}"
            self.last_load_error = detail
            self.last_load_traceback = None
        elif state is WorkerState.IDLE:
            log.warning("%s: pipeline pid %s died while idle (%s)", self.spec.tag, pid, detail)
        elif state is WorkerState.BUSY:
            log.warning("%s: pipeline pid %s died while running a request (%s)", self.spec.tag, pid, detail)
        # The calls it held but never answered: the machine decides what becomes of each
        # (WorkerCrashed for the one that may have run; the others wait again).
        staged = self._staged.pop(worker_id, ())
        for call in staged:
            if call.worker_id == worker_id:
                call.worker_id = 0
        self._feed(ev.WorkerExited(worker_id, detail))
        if start_failure:
            self._log_start_failure(pid, start_failure, "")
        # A call still listed here was cancelled by its client: the machine names it no more.
        running = self._running.pop(worker_id, None)
        if running is not None and running.worker_id == worker_id:
            self._forget_cancelled(running)
        for call in staged:
            if call.cancelled and not call.worker_id:
                self._forget_cancelled(call)

    def _state_of(self, worker_id: int) -> WorkerState | None:
        try:
            return self.machine.worker_state(worker_id)
        except KeyError:
            return None

    def _broken(self, worker_id: int, what: str) -> None:
        """A pipeline sent a frame that its state rules out: it is killed, never believed.

        Its call in flight, if any, then fails with WorkerCrashed; a frame taken for
        another call's answer would give one client another's result.
        """
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        log.error(
            "%s: pipeline pid %s %s: its pipes are not used as the runtime uses them"
            " (a process forked by user code?): killing it",
            self.spec.tag, worker.pid, what,
        )  # fmt: skip
        worker.kill(dump_stack=False)

    def _envelope(self, call: Call, result: bytes, exec_us: int, function_us: int) -> bytes:
        timing = b'"timing":{"wait":%d,"execution":%d,"functionInternal":%d},"apiContext":' % (
            call.wait_us,
            exec_us,
            function_us,
        )
        head = b'{"response":' + result + b"," if result else b'{"responseIsEmpty":true,'
        return head + timing + self._api_context + b"}"

    # --------------------------------------------------------------- RSS limit

    def _arm_rss_check(self) -> None:
        if self._rss_timer is None and self.machine.config.limits.max_rss_mb > 0:
            self._rss_timer = self.loop.call_later(RSS_CHECK_INTERVAL_S, self._check_rss)

    def _check_rss(self) -> None:
        self._rss_timer = None
        limit_mb = self.machine.config.limits.max_rss_mb
        if limit_mb <= 0 or self.drained:
            return
        limit = limit_mb * 1024 * 1024
        for worker_id, worker in list(self.workers.items()):
            # Only serving pipelines: a STARTING one is not retired (pool/machine.py), a
            # STOPPING one leaves anyway. One found over the limit is acted on once.
            if worker_id in self._rss_reported or self._state_of(worker_id) not in _SERVING:
                continue
            rss = worker.rss_bytes()
            if rss <= limit:
                continue
            loaded = self._ready_rss.get(worker_id, 0)
            if loaded > limit:
                # The code needs more than the limit just to load: its successor would be
                # over it too, and retiring each would load the code again every second.
                # It is kept while it grows by less than the limit past its loaded size; a
                # leak beyond that retires it all the same (its successor starts below that
                # bound), else the limit would stop bounding anything on this endpoint.
                if worker_id not in self._rss_warned:
                    self._rss_warned.add(worker_id)
                    log.warning(
                        "%s: pipeline pid %s was over limits.max_rss_mb (%d MB) as soon as it loaded"
                        " (%d MB): not retired, as a successor would be too, unless it grows by"
                        " %d MB more; raise the limit",
                        self.spec.tag, worker.pid, limit_mb, loaded >> 20, limit_mb,
                    )  # fmt: skip
                if rss <= loaded + limit:
                    continue
                log.info(
                    "%s: pipeline pid %s grew by over %d MB RSS since it loaded (%d MB, now %d MB): retiring",
                    self.spec.tag, worker.pid, limit_mb, loaded >> 20, rss >> 20,
                )  # fmt: skip
            else:
                log.info("%s: pipeline pid %s over %d MB RSS: retiring", self.spec.tag, worker.pid, limit_mb)
            self._rss_reported.add(worker_id)
            self._feed(ev.WorkerOverLimit(worker_id))
        self._arm_rss_check()


def _error_from_frame(body: bytes) -> LightnodeError:
    info = ujson.loads(body)
    return LightnodeError(
        str(info.get("errorType", "FunctionError")),
        str(info.get("message", "")),
        str(info.get("detailedMessage", "")),
        status=int(info.get("status", 500)),
    )
