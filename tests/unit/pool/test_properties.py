"""Random event sequences against PoolMachine, checked by an independent model of the world.

The model plays the scheduler and the worker processes: it delivers only
events a real scheduler could deliver, carries out every command, and checks:
- the machine's invariants after every event;
- every admitted request gets exactly one terminal outcome (Reject, a finished
  call, or silence after its client left), and nothing names it afterwards;
- queued requests are dispatched in arrival order, only to IDLE pipelines,
  or staged (prefetch) on a BUSY one that holds fewer than the machine's
  stage limit; staged requests start in the order they were staged as that
  pipeline finishes, or wait again if it dies first (once it has exited, if
  it was killed for an exec timeout);
- timers are honoured on time (no waiting request past its deadline, no call
  past its exec timeout once handle() returns);
- a failed pipeline start beside a serving pipeline fails no request and
  leaves the endpoint HEALTHY; with none serving, the endpoint is FAILED;
  EndpointUnavailable only while no pipeline serves (or for a drain);
- after a failed start, no pipeline starts for the first backoff delay
  (0.5 s) unless a start loads meanwhile (no start storm);
- the machine's view of each pipeline matches the commands it gave;
- after DrainRequested, Drained comes exactly once, when nothing is left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lightnode.config.model import EndpointConfig
from lightnode.pool.commands import (
    Command,
    Dispatch,
    Drained,
    KillWorker,
    Reject,
    SpawnWorker,
    StopWorker,
)
from lightnode.pool.events import (
    DrainRequested,
    Event,
    LimitsChanged,
    Loaded,
    RequestArrived,
    RequestCancelled,
    Tick,
    WorkerExited,
    WorkerFinished,
    WorkerOverLimit,
    WorkerReady,
    WorkerStartFailed,
)
from lightnode.pool.machine import PoolMachine
from lightnode.pool.states import LoadState, WorkerState

from ._script import make_config

ARRIVAL_REJECTS = {"QueueFull", "ShuttingDown", "EndpointUnavailable"}
WAITING_REJECTS = {"QueueTimeout", "EndpointUnavailable"}


@st.composite
def configs(draw: st.DrawFn) -> EndpointConfig:
    ceil = draw(st.integers(1, 4))
    if draw(st.booleans()):
        # A fixed pool at ceil: where prefetch happens (and most production pools run).
        cruise = floor = ceil
    else:
        cruise = draw(st.integers(0, ceil))
        floor = draw(st.integers(0, cruise))
    return make_config(
        floor=floor,
        cruise=cruise,
        ceil=ceil,
        queue=draw(st.integers(0, 3)),
        timeout=draw(st.sampled_from([1, 200, 1000, 5000, 10000])),
        scale_down_delay=draw(st.sampled_from([0, 0, 300, 2000])),
        exec_timeout=draw(st.sampled_from([0, 0, 500, 3000])),
        max_requests=draw(st.sampled_from([0, 0, 1, 2])),
        prefetch=draw(st.sampled_from([0, 1, 1])),
    )


@dataclass
class Req:
    seq: int
    deadline_s: float = 0.0
    arrived_s: float = 0.0
    state: str = "new"  # new, waiting, staged, running, done
    worker: int | None = None
    cancelled: bool = False


@dataclass
class Proc:
    """A worker process as the scheduler sees it."""

    proc: str = "starting"  # starting, ready, failing, exited
    busy_with: int | None = None
    staged: list[int] = field(default_factory=list)  # prefetched behind busy_with, in order
    exec_deadline_s: float | None = None
    told_stop: bool = False  # StopWorker or KillWorker received

    def expected_state(self) -> WorkerState:
        if self.proc == "exited":
            return WorkerState.GONE
        if self.told_stop or self.proc == "failing":
            return WorkerState.STOPPING
        if self.proc == "starting":
            return WorkerState.STARTING
        return WorkerState.BUSY if self.busy_with is not None else WorkerState.IDLE


@dataclass
class World:
    machine: PoolMachine
    now: float = 0.0
    reqs: dict[int, Req] = field(default_factory=dict)
    procs: dict[int, Proc] = field(default_factory=dict)
    drain_requested: bool = False
    drained: int = 0
    # The timer a scheduler following `only_queue_deadline_moved` would hold.
    armed: float | None = None
    # The last failed start that doubles the backoff (None after a start that
    # loaded), and the first pipeline id started after it.
    failed_at: float | None = None
    failed_from_id: int = 0

    # -- delivering events ---------------------------------------------------

    def deliver(self, event: Event) -> list[Command]:
        crashed: int | None = None
        if isinstance(event, WorkerExited):
            proc = self.procs[event.worker_id]
            crashed = proc.busy_with
        failed_before = self.machine.load_state is LoadState.FAILED
        start = self._start_outcome(event)
        serving_before = bool(_live(self, proc="ready"))
        # The scheduler's entry points: the two per-request events have their own.
        if isinstance(event, RequestArrived):
            commands = self.machine.request_arrived(event.request_id, self.now)
        elif isinstance(event, WorkerFinished):
            commands = self.machine.worker_finished(event.worker_id, self.now)
        else:
            commands = self.machine.handle(event, self.now)
        self.machine.check_invariants()
        self._check_timer()
        self._before_commands(event)
        killed: list[int] = []
        for command in commands:
            self._apply(command, killed)
        self._after_commands(event, commands, crashed, killed)
        if failed_before and self.machine.load_state is LoadState.FAILED:
            # While FAILED only the single retry probe may start.
            assert sum(isinstance(c, SpawnWorker) for c in commands) <= 1
        self._check_start_failures(event, commands, start, serving_before)
        self._check_agreement()
        return commands

    def _start_outcome(self, event: Event) -> str | None:
        """"loaded" or "failed" if `event` ends a pipeline start the machine waits for."""
        if not isinstance(event, (WorkerReady, WorkerStartFailed, WorkerExited)):
            return None
        proc = self.procs[event.worker_id]
        if proc.proc != "starting" or proc.told_stop:
            return None  # not a start (or one that raced a stop: ignored)
        return "loaded" if isinstance(event, WorkerReady) else "failed"

    def _check_start_failures(
        self, event: Event, commands: list[Command], start: str | None, serving_before: bool
    ) -> None:
        """SPEC §4 start failures (see the machine's docstring): no storm, no needless 503."""
        unavailable = [c for c in commands if isinstance(c, Reject) and c.error_type == "EndpointUnavailable"]
        if isinstance(event, DrainRequested):
            self.failed_at = None  # DRAINING starts for waiting requests only, never retries
        elif start == "loaded":
            self.failed_at = None  # the code loads: the backoff starts over
        if self.drain_requested:
            return
        if unavailable:
            assert not _live(self, proc="ready"), "EndpointUnavailable while a pipeline serves"
        if any(isinstance(c, SpawnWorker) for c in commands) and self.failed_at is not None:
            assert self.now >= self.failed_at + 0.5, "a pipeline started within the backoff delay"
        if start != "failed":
            return
        assert isinstance(event, (WorkerStartFailed, WorkerExited))
        if serving_before:
            assert self.machine.load_state is LoadState.HEALTHY
            assert not unavailable
        else:
            assert self.machine.load_state is LoadState.FAILED
        if self.failed_at is None or event.worker_id >= self.failed_from_id:
            self.failed_at = self.now
            self.failed_from_id = max(self.procs) + 1

    def _check_timer(self) -> None:
        """The scheduler's shortcut never holds a timer later than the true next deadline."""
        if self.machine.only_queue_deadline_moved:
            queue = self.machine.queue_deadline()
            if queue is not None and (self.armed is None or queue < self.armed):
                self.armed = queue
        else:
            self.armed = self.machine.next_deadline()
        true = self.machine.next_deadline()
        if true is not None:
            assert self.armed is not None and self.armed <= true, (self.armed, true)
        if self.armed is not None and self.armed <= self.now:
            # Due: the real timer fires and its Tick re-arms from next_deadline().
            self.armed = self.machine.next_deadline()

    def _before_commands(self, event: Event) -> None:
        if isinstance(event, WorkerFinished):
            proc = self.procs[event.worker_id]
            if proc.busy_with is not None and not proc.told_stop:
                req = self.reqs[proc.busy_with]
                req.state, req.worker = "done", None
                proc.busy_with, proc.exec_deadline_s = None, None
                if proc.staged:  # the first prefetched request starts now
                    proc.busy_with = proc.staged.pop(0)
                    self.reqs[proc.busy_with].state = "running"
                    exec_ms = self.machine.config.limits.exec_timeout
                    proc.exec_deadline_s = self.now + exec_ms / 1000 if exec_ms else None
        elif isinstance(event, WorkerExited):
            proc = self.procs[event.worker_id]
            proc.proc = "exited"
            if proc.busy_with is not None:
                req = self.reqs[proc.busy_with]
                req.state = "done" if req.cancelled else "crashed"
                proc.busy_with, proc.exec_deadline_s = None, None
            self._unstage(proc)
        elif isinstance(event, WorkerReady):
            proc = self.procs[event.worker_id]
            proc.proc = "ready"
        elif isinstance(event, WorkerStartFailed):
            self.procs[event.worker_id].proc = "failing"

    def _unstage(self, proc: Proc) -> None:
        """The pipeline stopped before its staged requests started: they wait again."""
        for request_id in proc.staged:
            req = self.reqs[request_id]
            req.state, req.worker = ("done" if req.cancelled else "waiting"), None
        proc.staged = []

    def _apply(self, command: Command, killed: list[int]) -> None:
        if isinstance(command, SpawnWorker):
            assert command.worker_id == max(self.procs, default=0) + 1
            self.procs[command.worker_id] = Proc()
        elif isinstance(command, Dispatch):
            self._on_dispatch(command)
        elif isinstance(command, StopWorker):
            proc = self.procs[command.worker_id]
            assert proc.proc in ("starting", "ready") and proc.busy_with is None
            assert not proc.told_stop
            proc.told_stop = True
        elif isinstance(command, KillWorker):
            proc = self.procs[command.worker_id]
            assert proc.busy_with is not None and not proc.told_stop
            assert proc.exec_deadline_s is not None and self.now >= proc.exec_deadline_s
            killed.append(proc.busy_with)
            req = self.reqs[proc.busy_with]
            req.state = "done" if req.cancelled else "killed"
            proc.told_stop, proc.busy_with, proc.exec_deadline_s = True, None, None
            # Its staged requests stay with it until it has exited (the killed call's
            # answer, never delivered here, may come first): then they wait again.
        elif isinstance(command, Reject):
            self._on_reject(command)
        else:
            assert isinstance(command, Drained)
            assert self.drain_requested and self.drained == 0
            self.drained += 1
            assert all(p.proc == "exited" for p in self.procs.values())
            assert all(r.state == "done" for r in self.reqs.values())

    def _on_dispatch(self, command: Dispatch) -> None:
        req = self.reqs[command.request_id]
        proc = self.procs[command.worker_id]
        assert req.state in ("new", "waiting") and not req.cancelled
        # FIFO: nobody who arrived earlier still waits.
        assert not [r for r in self.reqs.values() if r.state == "waiting" and r.seq < req.seq]
        assert abs(command.wait_s - (self.now - req.arrived_s)) < 1e-9
        if command.staged:
            assert proc.proc == "ready" and not proc.told_stop
            assert proc.busy_with is not None
            assert len(proc.staged) < self.machine.stage_limit()
            assert self.machine.config.pool.prefetch
            # Prefetch only when no pipeline is free and the pool cannot grow.
            assert not _live(self, proc="ready", busy=False)
            req.state, req.worker = "staged", command.worker_id
            proc.staged.append(command.request_id)
            return
        assert proc.proc == "ready" and proc.busy_with is None and not proc.told_stop
        req.state, req.worker = "running", command.worker_id
        proc.busy_with = command.request_id
        exec_ms = self.machine.config.limits.exec_timeout
        proc.exec_deadline_s = self.now + exec_ms / 1000 if exec_ms else None

    def _on_reject(self, command: Reject) -> None:
        req = self.reqs[command.request_id]
        assert not req.cancelled, "a command named a request whose client left"
        retry = command.retry_after_s
        if command.error_type in ("QueueFull", "QueueTimeout"):
            assert retry is not None and retry >= 1
        else:
            assert retry is None
        if req.state == "new":
            assert command.error_type in ARRIVAL_REJECTS
        elif req.state == "waiting":
            assert command.error_type in WAITING_REJECTS
            if command.error_type == "QueueTimeout":
                assert self.now >= req.deadline_s
        elif req.state == "killed":
            assert command.error_type == "ExecutionTimeout"
        else:
            assert req.state == "crashed" and command.error_type == "WorkerCrashed"
        req.state = "done"

    def _after_commands(
        self, event: Event, commands: list[Command], crashed: int | None, killed: list[int]
    ) -> None:
        if crashed is not None:
            rejected = [c for c in commands if isinstance(c, Reject) and c.request_id == crashed]
            if self.reqs[crashed].cancelled:
                assert not rejected
            else:
                assert [c.error_type for c in rejected] == ["WorkerCrashed"]
                assert "The pipeline died while running the request" in rejected[0].message
            assert self.reqs[crashed].state == "done"
        for rid in killed:
            assert self.reqs[rid].state == "done", f"killed request {rid} got no answer"
        if isinstance(event, RequestArrived):
            req = self.reqs[event.request_id]
            if req.state == "new":
                req.state = "waiting"
        for req in self.reqs.values():
            if req.state == "waiting":
                assert req.deadline_s > self.now, "a request waited past its deadline"
        for proc in self.procs.values():
            if proc.exec_deadline_s is not None:
                assert proc.exec_deadline_s > self.now, "a call ran past its exec timeout"

    def _check_agreement(self) -> None:
        deadline = self.machine.next_deadline()
        assert deadline is None or deadline > self.now, "a due timer was left undone"
        for worker_id, proc in self.procs.items():
            assert self.machine.worker_state(worker_id) is proc.expected_state(), worker_id
        snap = self.machine.snapshot(self.now)
        waiting = sum(1 for r in self.reqs.values() if r.state == "waiting")
        assert snap.queue_length == waiting


def _live(world: World | None, *, proc: str, busy: bool | None = None) -> list[int]:
    if world is None:
        return []
    return sorted(
        wid
        for wid, p in world.procs.items()
        if p.proc == proc
        and not p.told_stop
        and (busy is None or (p.busy_with is not None) == busy)
    )


def _leaving(world: World | None) -> list[int]:
    if world is None:
        return []
    return sorted(
        wid
        for wid, p in world.procs.items()
        if p.proc != "exited" and (p.told_stop or p.proc == "failing")
    )


# Rule weights: hypothesis picks enabled rules uniformly, so rare outcomes
# (start failure, crash) are drawn inside the common rules instead.
START_OUTCOMES = ["ready"] * 5 + ["failed", "died"]
CALL_OUTCOMES = ["finished"] * 6 + ["crashed", "over_limit"]
# Drain ends the interesting part of a run, so it is allowed only late.
DRAIN_AFTER_STEPS = 30


class PoolWorld(RuleBasedStateMachine):
    # The machine's prefetch settings (keyword arguments; empty: its defaults).
    machine_options: dict[str, float] = {}

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None
        self.next_request = 1
        self.steps = 0
        self.loaded_sent = False

    @property
    def w(self) -> World:
        assert self.world is not None
        return self.world

    @initialize(config=configs())
    def start(self, config: EndpointConfig) -> None:
        self.world = World(PoolMachine(config, **self.machine_options))  # type: ignore[arg-type]

    @precondition(lambda self: not self.loaded_sent)
    @rule()
    def loaded(self) -> None:
        self.loaded_sent = True
        self.w.deliver(Loaded())

    @rule(count=st.integers(1, 3))
    def arrive(self, count: int) -> None:
        for _ in range(count):
            rid = self.next_request
            self.next_request += 1
            timeout_ms = self.w.machine.config.pool.timeout
            self.w.reqs[rid] = Req(
                seq=rid, arrived_s=self.w.now, deadline_s=self.w.now + timeout_ms / 1000
            )
            self.w.deliver(RequestArrived(rid))

    @precondition(
        lambda self: (
            self.world is not None
            and any(r.state in ("waiting", "staged", "running") for r in self.world.reqs.values())
        )
    )
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.w.reqs)))  # finished ones too
        req = self.w.reqs[rid]
        # From now on no command may name it. A waiting one leaves the queue
        # silently; a running one ends silently when its pipeline is done.
        req.cancelled = True
        if req.state == "waiting":
            req.state = "done"
        self.w.deliver(RequestCancelled(rid))

    @rule(dt=st.sampled_from([0.0, 0.001, 0.1, 0.3, 0.5, 1.0, 2.5, 10.0, 40.0]))
    def tick(self, dt: float) -> None:
        self.w.now += dt
        self.w.deliver(Tick())

    @precondition(lambda self: self.world is not None and self.world.machine.next_deadline())
    @rule()
    def tick_at_deadline(self) -> None:
        deadline = self.w.machine.next_deadline()
        assert deadline is not None
        self.w.now = deadline
        self.w.deliver(Tick())

    @precondition(lambda self: bool(_live(self.world, proc="starting")))
    @rule(data=st.data(), outcome=st.sampled_from(START_OUTCOMES))
    def start_outcome(self, data: st.DataObject, outcome: str) -> None:
        wid = data.draw(st.sampled_from(_live(self.w, proc="starting")))
        if outcome == "ready":
            self.w.deliver(WorkerReady(wid))
        elif outcome == "failed":
            self.w.deliver(WorkerStartFailed(wid, "ImportError: boom"))
        else:
            self.w.deliver(WorkerExited(wid, "killed by signal 9"))

    @precondition(lambda self: bool(_live(self.world, proc="ready")))
    @rule(
        data=st.data(),
        outcome=st.sampled_from(CALL_OUTCOMES),
        dt=st.sampled_from([0.0, 0.005, 0.2, 1.0]),
    )
    def serving_outcome(self, data: st.DataObject, outcome: str, dt: float) -> None:
        busy = _live(self.w, proc="ready", busy=True)
        self.w.now += dt
        if outcome == "finished" and busy:
            self.w.deliver(WorkerFinished(data.draw(st.sampled_from(busy))))
        elif outcome == "over_limit":
            ready = _live(self.w, proc="ready")
            self.w.deliver(WorkerOverLimit(data.draw(st.sampled_from(ready))))
        else:
            ready = _live(self.w, proc="ready")
            self.w.deliver(WorkerExited(data.draw(st.sampled_from(ready)), "exit code 1"))

    @precondition(lambda self: bool(_leaving(self.world)))
    @rule(data=st.data(), late_event=st.booleans())
    def stopped_exit(self, data: st.DataObject, late_event: bool) -> None:
        wid = data.draw(st.sampled_from(_leaving(self.w)))
        proc = self.w.procs[wid]
        if late_event and proc.proc == "starting":
            self.w.deliver(WorkerReady(wid))  # raced the stop: the machine ignores it
        else:
            self.w.deliver(WorkerExited(wid, "exit code 0"))

    # A hot reload every step would hide the steady-state rules.
    @precondition(lambda self: self.steps % 4 == 0)
    @rule(config=configs())
    def limits_changed(self, config: EndpointConfig) -> None:
        self.w.deliver(LimitsChanged(config))

    @precondition(
        lambda self: (
            self.world is not None
            and not self.world.drain_requested
            and self.steps >= DRAIN_AFTER_STEPS
        )
    )
    @rule()
    def drain(self) -> None:
        self.w.drain_requested = True
        self.w.deliver(DrainRequested())

    @invariant()
    def invariants_hold(self) -> None:
        self.steps += 1
        if self.world is not None:
            self.world.machine.check_invariants()

    def teardown(self) -> None:
        if self.world is None:
            return
        world = self.world
        if not world.drain_requested:
            world.drain_requested = True
            world.deliver(DrainRequested())
        for _ in range(500):
            if world.drained:
                break
            self._settle_step(world)
        assert world.drained == 1, "drain never completed"
        assert all(r.state == "done" for r in world.reqs.values())

    def _settle_step(self, world: World) -> None:
        starting = _live(world, proc="starting")
        busy = _live(world, proc="ready", busy=True)
        leaving = _leaving(world)
        if starting:
            world.deliver(WorkerReady(starting[0]))
        elif busy:
            world.now += 0.1
            world.deliver(WorkerFinished(busy[0]))
        elif leaving:
            world.deliver(WorkerExited(leaving[0], "exit code 0"))
        else:
            deadline = world.machine.next_deadline()
            world.now = max(world.now + 0.1, deadline or 0.0)
            world.deliver(Tick())


# About 3 s of CPU; the soak below (marked slow) runs about 13 times as many examples.
PoolWorld.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
)  # no deadline, no too_slow check: the suite's profile (tests/conftest.py)
TestPoolWorld = PoolWorld.TestCase


class PoolWorldEagerPrefetch(PoolWorld):
    """Prefetch whatever the run time: staged requests, their crashes, kills and cancels."""

    machine_options = {"prefetch_max_run_s": float("inf")}


PoolWorldEagerPrefetch.TestCase.settings = PoolWorld.TestCase.settings
TestPoolWorldEagerPrefetch = PoolWorldEagerPrefetch.TestCase


class PoolWorldDeepPrefetch(PoolWorld):
    """Several staged requests per pipeline whatever the run time (up to 3 here)."""

    machine_options = {
        "prefetch_max_run_s": float("inf"),
        "prefetch_budget_s": float("inf"),
        "max_staged": 3,
    }


PoolWorldDeepPrefetch.TestCase.settings = PoolWorld.TestCase.settings
TestPoolWorldDeepPrefetch = PoolWorldDeepPrefetch.TestCase


class PoolWorldVaryingPrefetch(PoolWorld):
    """The stage limit follows the mean run time: here between 1 and 3 as calls take 0-40 s."""

    machine_options = {"prefetch_max_run_s": float("inf"), "prefetch_budget_s": 0.5, "max_staged": 3}


PoolWorldVaryingPrefetch.TestCase.settings = PoolWorld.TestCase.settings
TestPoolWorldVaryingPrefetch = PoolWorldVaryingPrefetch.TestCase


class PoolWorldSoak(PoolWorld):
    pass


PoolWorldSoak.TestCase.settings = settings(
    PoolWorld.TestCase.settings, max_examples=2000, database=None
)
TestPoolWorldSoak = pytest.mark.timeout(900)(pytest.mark.slow(PoolWorldSoak.TestCase))
