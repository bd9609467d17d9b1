"""The node's start gate: at most N pipelines boot at once, node-wide (start_gate.py)."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lightnode.config.model import EndpointConfig, ExecLimits, PoolLimits
from lightnode.pool.states import WorkerState
from lightnode.scheduler import start_gate
from lightnode.scheduler.scheduler import EndpointPool
from lightnode.scheduler.start_gate import (
    StartGate,
    cgroup_cpu_limit,
    default_slots,
    process_runnable_s,
)
from lightnode.scheduler.worker_handle import WorkerSpec
from tests.unit.scheduler.test_scheduler import FakeWorker, Sink


class Timer:
    def __init__(self, at: float, callback: Any, args: tuple[Any, ...]) -> None:
        self.at, self.callback, self.args, self.cancelled = at, callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


class ManualLoop:
    """call_later() only, run by the test: the gate's checks at the test's pace."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[Timer] = []

    def call_later(self, delay: float, callback: Any, *args: Any) -> Timer:
        timer = Timer(self.now + delay, callback, args)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.timers if t.at <= self.now and not t.cancelled]
        self.timers = [t for t in self.timers if t not in due]
        for timer in due:
            timer.callback(*timer.args)


class Gate:
    """A gate on a ManualLoop whose processes are runnable as long as the test says (`runnable[pid]`)."""

    def __init__(self, slots: int | None) -> None:
        self.loop = ManualLoop()
        self.runnable: dict[int, float] = {}
        self.gate = StartGate(self.loop, slots, runnable_s=self.runnable.get, clock=lambda: self.loop.now)  # type: ignore[arg-type]
        self.launched: list[str] = []

    def ask(self, name: str, pid: int = 0, spawns: bool = True) -> str:
        name = sys.intern(name)  # the gate knows its keys by identity (the test's literals are interned)

        def launch() -> bool:
            self.launched.append(name)
            return spawns

        self.gate.ask(name, launch, lambda: pid)
        return name


def test_at_most_slots_start_and_the_others_follow_in_order() -> None:
    g = Gate(2)
    for name in "abcde":
        g.ask(name)
    assert g.launched == ["a", "b"] and g.gate.waiting == 3
    g.gate.release("b")
    assert g.launched == ["a", "b", "c"]
    g.gate.release("b")  # twice: nothing more
    g.gate.release("zz")  # never held
    assert g.launched == ["a", "b", "c"]
    g.gate.release("a")
    g.gate.release("c")
    assert g.launched == ["a", "b", "c", "d", "e"] and g.gate.holding == 2 and g.gate.waiting == 0


def test_a_start_withdrawn_while_it_waits_never_launches() -> None:
    g = Gate(1)
    g.ask("a")
    g.ask("b")
    g.ask("c")
    assert g.gate.withdraw("b") is True
    assert g.gate.withdraw("b") is False and g.gate.withdraw("a") is False  # not waiting
    g.gate.release("a")
    assert g.launched == ["a", "c"]


def test_a_launch_that_spawned_nothing_holds_no_slot() -> None:
    g = Gate(1)
    g.ask("a", spawns=False)  # stopped meanwhile, or the spawn failed
    g.ask("b")
    assert g.launched == ["a", "b"] and g.gate.holding == 1


def test_a_start_keeps_its_slot_while_it_keeps_a_core_busy() -> None:
    g = Gate(1)
    g.runnable[10] = 0.0
    g.ask("a", pid=10)
    g.ask("b", pid=11)
    for step in range(1, 10):  # a CPU-bound import: runnable 0.18 s each 0.2 s
        g.runnable[10] = 0.18 * step
        g.loop.advance(start_gate.CHECK_S)
        assert g.launched == ["a"], step
    g.runnable[10] += 0.01  # now it waits (a download, a lock): its slot goes to the next
    g.loop.advance(start_gate.CHECK_S)
    assert g.launched == ["a", "b"]


def test_a_start_waiting_on_io_leaves_its_slot_at_the_first_check() -> None:
    g = Gate(1)
    g.runnable[10] = 0.05
    g.ask("a", pid=10)
    g.ask("b", pid=11)
    g.runnable[10] = 0.08  # runnable 0.03 s in 0.2 s
    g.loop.advance(start_gate.CHECK_S)
    assert g.launched == ["a", "b"]


def test_a_start_whose_runnable_time_cannot_be_read_leaves_its_slot_at_the_first_check() -> None:
    g = Gate(1)
    g.ask("a", pid=10)  # no /proc entry for it (another OS, or it exited)
    g.ask("b", pid=11)
    g.loop.advance(start_gate.CHECK_S / 2)
    assert g.launched == ["a"]
    g.loop.advance(start_gate.CHECK_S)
    assert g.launched == ["a", "b"]


def test_a_start_holds_its_slot_at_most_max_hold_s_however_busy() -> None:
    g = Gate(1)
    g.runnable[10] = 0.0
    g.ask("a", pid=10)
    g.ask("b", pid=11)
    elapsed = 0.0
    while g.launched == ["a"]:
        g.runnable[10] += start_gate.CHECK_S  # a full core
        g.loop.advance(start_gate.CHECK_S)
        elapsed += start_gate.CHECK_S
        assert elapsed < start_gate.MAX_HOLD_S + 2 * start_gate.CHECK_S
    assert elapsed >= start_gate.MAX_HOLD_S - 1e-9


def test_no_limit_starts_everything_at_once_and_arms_no_check() -> None:
    g = Gate(None)
    for name in "abcdefgh":
        g.ask(name)
    assert g.launched == list("abcdefgh") and g.loop.timers == []


def test_default_slots_is_two_per_usable_core_at_least_four() -> None:
    cores = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    assert default_slots() == 2 * max(2, cores)


def _cgroup(tmp_path: Path, membership: str, files: dict[str, str]) -> float | None:
    (tmp_path / "cgroup").write_text(membership)
    for name, text in files.items():
        (tmp_path / "fs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / name).write_text(text)
    return cgroup_cpu_limit(tmp_path / "fs", tmp_path / "cgroup")


def test_cgroup_v2_quota_is_the_tightest_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    membership = "0::/kubepods/pod1/ctr\n"
    assert _cgroup(tmp_path, membership, {"kubepods/pod1/ctr/cpu.max": "max 100000\n"}) is None
    assert _cgroup(tmp_path, membership, {"kubepods/pod1/cpu.max": "250000 100000\n"}) == 2.5
    assert _cgroup(tmp_path, membership, {"kubepods/cpu.max": "150000 100000\n"}) == 1.5


def test_cgroup_v1_quota_of_the_cpu_hierarchy(tmp_path: Path) -> None:
    membership = "4:memory:/m\n2:cpu,cpuacct:/docker/abc\n1:cpuacct:/x\n"
    files = {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"}
    assert _cgroup(tmp_path, membership, files) is None  # -1: no quota
    files["cpu,cpuacct/docker/abc/cpu.cfs_quota_us"] = "200000\n"
    assert _cgroup(tmp_path, membership, files) == 2.0


def test_no_cgroup_information_is_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path, tmp_path / "absent") is None
    assert _cgroup(tmp_path, "garbage\n0::/a\n", {"a/cpu.max": "not numbers\n"}) is None


def test_process_runnable_s_reads_a_busy_child_and_none_for_no_process() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
         "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )  # fmt: skip
    try:
        used = 0.0
        for _ in range(600):  # up to 60 s on a loaded machine
            used = process_runnable_s(child.pid) or 0.0
            if used >= 0.3:
                break
            time.sleep(0.1)
        assert used >= 0.3
    finally:
        child.communicate(b"")
    assert process_runnable_s(child.pid) is None  # reaped: no /proc entry


BUSY_IN_A_THREAD = (
    "import sys, threading\n"
    "done = False\n"
    "def work():\n"
    "    while not done: pass\n"
    "threading.Thread(target=work).start()\n"
    "sys.stdin.read()  # the main thread waits, as one joining a loader thread would\n"
    "done = True\n"
)


def test_process_runnable_s_counts_every_thread_not_the_main_one_only() -> None:
    child = subprocess.Popen([sys.executable, "-c", BUSY_IN_A_THREAD], stdin=subprocess.PIPE)
    try:
        time.sleep(0.3)  # booted, its thread spinning
        before, began = process_runnable_s(child.pid), time.monotonic()
        time.sleep(0.5)
        after, elapsed = process_runnable_s(child.pid), time.monotonic() - began
        assert before is not None and after is not None
        # Runnable all along (on a core or waiting for one), however loaded the machine.
        assert after - before >= 0.5 * elapsed, (before, after, elapsed)
    finally:
        child.communicate(b"")


def test_process_runnable_s_hardly_grows_for_a_sleeping_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        until_quiet = time.monotonic() + 60
        before = process_runnable_s(child.pid)
        while time.monotonic() < until_quiet:  # its interpreter boots first
            time.sleep(0.5)
            now = process_runnable_s(child.pid)
            assert before is not None and now is not None
            if now - before < 0.1:  # blocked reading stdin: neither on a core nor waiting for one
                break
            before = now
        else:
            pytest.fail("a child blocked on a read stayed runnable")
    finally:
        child.communicate(b"")


# ------------------------------------------------------------ with a pool


class Booting(FakeWorker):
    """A fake pipeline that records when its process was spawned."""

    def __init__(self, loop: Any, worker_id: int, spec: WorkerSpec, listener: Any) -> None:
        super().__init__(loop, worker_id, spec, listener)
        self.spawned = False
        self.pid = 0

    def spawn(self) -> None:
        super().spawn()
        self.spawned = True
        self.pid = 1000 + self.worker_id


SPEC = WorkerSpec("svc", "ep", "v1", Path("/tmp"), "ep.py", "f")


@pytest.fixture
def gated() -> Any:
    FakeWorker.instances = []
    loop = asyncio.new_event_loop()
    gate = StartGate(loop, 1, runnable_s=lambda pid: None)

    def make(**pool: int) -> EndpointPool:
        config = EndpointConfig(pool=PoolLimits(**pool), limits=ExecLimits())
        endpoint = EndpointPool(loop, SPEC, config, Sink(), worker_factory=Booting, start_gate=gate)
        endpoint.start()
        return endpoint

    yield make, loop
    loop.close()


def _run_soon(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(asyncio.sleep(0))


def test_pools_share_the_gate_and_a_pipeline_boots_when_the_one_before_is_ready(gated: Any) -> None:
    make, loop = gated
    first = make(floor=2, cruise=2, ceil=2)
    second = make(floor=1, cruise=1, ceil=1)
    workers: list[Booting] = FakeWorker.instances  # type: ignore[assignment]
    assert [w.spawned for w in workers] == [True, False, False]
    assert [p["pid"] for p in first.pipelines()] == [1001, None]  # None: waits for a slot
    assert [p["state"] for p in first.pipelines()] == ["starting", "starting"]
    workers[0].ready()
    assert [w.spawned for w in workers] == [True, True, False]
    workers[1].exit("exit code 1")  # its init failed: the slot goes on all the same
    assert [w.spawned for w in workers] == [True, True, True]
    assert second.pipelines()[0]["pid"] == 1001


def test_a_pipeline_stopped_before_its_turn_never_starts_and_exits(gated: Any) -> None:
    make, loop = gated
    first = make(floor=1, cruise=1, ceil=1)
    second = make(floor=1, cruise=1, ceil=1)
    workers: list[Booting] = FakeWorker.instances  # type: ignore[assignment]
    task = loop.create_task(second.drain())
    _run_soon(loop)
    assert task.done() and second.pipelines() == []  # drained: its pipeline exited unstarted
    assert not workers[1].spawned and not workers[1].stopped
    workers[0].ready()
    _run_soon(loop)
    assert not workers[1].spawned  # its turn never comes
    assert first.machine.worker_state(1) is WorkerState.IDLE


def test_kill_all_drops_a_pipeline_waiting_for_its_turn(gated: Any) -> None:
    make, loop = gated
    make(floor=1, cruise=1, ceil=1)
    second = make(floor=1, cruise=1, ceil=1)
    workers: list[Booting] = FakeWorker.instances  # type: ignore[assignment]
    second.kill_all()
    _run_soon(loop)
    assert not workers[1].killed and second.pipelines() == []
    workers[0].ready()
    assert not workers[1].spawned


class BrokenSpawn(Booting):
    """A pipeline whose spawn fails with something other than OSError."""

    def spawn(self) -> None:
        raise RuntimeError("spawn failed oddly")


def test_a_launch_failing_inside_another_pools_callback_is_that_pipelines_failure_only(gated: Any) -> None:
    make, loop = gated
    first = make(floor=1, cruise=1, ceil=1)
    config = EndpointConfig(pool=PoolLimits(floor=1, cruise=1, ceil=1), limits=ExecLimits())
    broken = EndpointPool(loop, SPEC, config, Sink(), worker_factory=BrokenSpawn, start_gate=first.start_gate)
    broken.start()  # waits for the slot
    third = make(floor=1, cruise=1, ceil=1)  # waits behind it
    workers: list[Booting] = FakeWorker.instances  # type: ignore[assignment]
    workers[0].ready()  # frees the slot: the gate launches `broken`'s pipeline from in here
    assert first.machine.worker_state(1) is WorkerState.IDLE  # that READY was not lost
    assert workers[2].spawned  # the next in line started
    _run_soon(loop)
    assert "spawn failed oddly" in (broken.last_load_error or "")
    assert third.pipelines()[0]["pid"] == 1001


def test_hurry_puts_a_waiting_start_first_in_line() -> None:
    g = Gate(1)
    for name in "abcd":
        g.ask(name)
    g.gate.hurry("d")
    g.gate.hurry("a")  # holding, not waiting: nothing to do
    g.gate.hurry("zz")
    g.gate.release("a")
    assert g.launched == ["a", "d"]


def test_a_serving_pool_grows_at_once_whatever_the_gate_holds(gated: Any) -> None:
    make, loop = gated
    pool = make(floor=1, cruise=1, ceil=3)
    others = make(floor=1, cruise=1, ceil=1)  # waits for the one slot, held by pool's first
    workers: list[Booting] = FakeWorker.instances  # type: ignore[assignment]
    workers[0].ready()  # the slot goes to `others`, which now holds it
    assert workers[1].spawned and others.start_gate.holding == 1
    pool.submit(b"{}", exchange=None)  # runs on the warm pipeline
    pool.submit(b"{}", exchange=None)  # waits: rule 3 starts a pipeline for it
    grown = [w for w in FakeWorker.instances[2:]]
    assert grown and all(w.spawned for w in grown)  # at once: a gated start would be
    # counted by the machine as a pipeline to come, and rule 7 would stop the warm one
    assert [p["pid"] is not None for p in pool.pipelines()] == [True] * len(pool.pipelines())


def test_a_request_for_a_pool_that_serves_nothing_puts_its_starts_first(gated: Any) -> None:
    make, loop = gated
    make(floor=1, cruise=1, ceil=1)  # holds the one slot
    idle_pools = [make(floor=1, cruise=1, ceil=1) for _ in range(3)]  # wait in line
    wanted = idle_pools[2]
    workers: list[Booting] = FakeWorker.instances  # type: ignore[assignment]
    wanted.submit(b"{}", exchange=None)  # a client waits for this one
    workers[0].ready()
    assert workers[3].spawned and not workers[1].spawned and not workers[2].spawned
