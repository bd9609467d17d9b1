"""The registry's live changes of state.json (SPEC §6), with in-process fake pipelines.

A generation named `b*` fails to load (its pipelines report an ImportError at
start); in one named `h*` no pipeline ever finishes its initialization; in one
named `p*` only the first pipeline of each pool does; every other generation loads. No process, socket or watcher: the tests
call `service_changed` as the watcher would.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lightnode.errors import LightnodeError
from lightnode.scheduler.registry import Registry
from lightnode.scheduler.start_gate import CHECK_S, StartGate
from lightnode.scheduler.worker_handle import WorkerSpec
from lightnode.services.store import DataDir
from tests.conftest import write_service, write_tuning

SOURCE = "def e():\n    return 1\n"


class FakeWorker:
    """Ready at once, or (generation b*) an ImportError at start, or (h*, and p* but its
    first pipeline) an initialization that never returns; exits when stopped."""

    started: set[str] = set()  # p* generations whose first pipeline started
    spawned: list[str] = []  # the generation of every pipeline started, in order

    def __init__(self, loop: asyncio.AbstractEventLoop, worker_id: int, spec: WorkerSpec, listener: Any) -> None:
        self.loop = loop
        self.worker_id = worker_id
        self.spec = spec
        self.listener = listener
        self.pid = 4000 + worker_id
        self.started_at = loop.time()

    def spawn(self) -> None:
        FakeWorker.spawned.append(self.spec.generation)
        if self.spec.generation.startswith("b"):
            self.loop.call_soon(self.listener.worker_init_failed, self.worker_id, "ImportError: No module named 'nope'", "")
            self.loop.call_soon(self.listener.worker_exited, self.worker_id, "exit code 1")
        elif self.spec.generation.startswith("h"):
            pass
        elif self.spec.generation.startswith("p") and self.spec.generation in FakeWorker.started:
            pass
        else:
            FakeWorker.started.add(self.spec.generation)
            self.loop.call_soon(self.listener.worker_ready, self.worker_id, {"signature": "e()"})

    def send_call(self, body: bytes, start_by_ns: int = 0, tag: bytes = b"") -> None:
        pass

    def stop(self) -> None:
        self.loop.call_soon(self.listener.worker_exited, self.worker_id, "stopped")

    def kill(self, *, dump_stack: bool = True) -> None:
        self.stop()

    def rss_bytes(self) -> int:
        return 0


class Sink:
    def call_succeeded(self, *args: Any) -> None:
        pass

    def call_failed(self, *args: Any) -> None:
        pass


class Node:
    def __init__(self, root: Path, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.state = root / "services" / "demo" / "state.json"
        self.registry = Registry(self.loop, DataDir(root), Sink(), worker_factory=FakeWorker, **options)
        self.registry.load_all()
        self.settle()

    def settle(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0.05))

    def changed(self) -> str | None:
        """The watcher saw a change of services/demo/: apply it; why it was not applied, or None."""
        applied = self.registry.service_changed("demo")
        assert applied is not None
        result = self.loop.run_until_complete(applied)
        self.settle()  # the old pools finish draining
        return result

    def write(self, *mapping: tuple[str, float], enabled: bool = True) -> None:
        entries = [{"generation": g, "proba": p} for g, p in mapping]
        self.state.write_text(json.dumps({"enabled": enabled, "mapping": {"entries": entries}}))

    def serving(self) -> str:
        return self.registry.resolve("demo", "e").spec.generation

    @property
    def runtime(self) -> Any:
        return self.registry.services["demo"]

    def close(self) -> None:
        self.loop.run_until_complete(self.registry.drain_all())
        self.loop.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    root = tmp_path / "data"
    write_service(root, "demo", {"e": SOURCE}, generation="b3")  # fails to load (FakeWorker)
    write_service(root, "demo", {"e": SOURCE}, generation="v2")
    write_service(root, "demo", {"e": SOURCE}, generation="v1")  # state.json: v1
    node = Node(root)
    assert node.serving() == "v1"
    yield node
    node.close()


def test_a_switch_to_a_generation_that_cannot_load_is_refused(node: Node) -> None:
    node.write(("b3", 1.0))
    failure = node.changed()
    assert failure is not None and failure.startswith("switch not applied: generation b3 failed to load")
    assert node.serving() == "v1" and node.runtime.switch_error == failure


def test_every_pool_made_is_told_even_one_a_refused_switch_drops_at_once(node: Node) -> None:
    # The metrics collector is told of each pool as it is made: the refused switch's
    # pool fails, drains and leaves before the collector's next sweep would see it.
    made: list[Any] = []
    node.registry.pool_made = made.append
    node.write(("b3", 1.0))
    assert node.changed() is not None  # refused
    assert [pool.spec.generation for pool in made] == ["b3"]
    assert all(pool not in node.registry.all_pools() for pool in made)  # already gone


def test_a_refused_switch_is_tried_once_per_write_and_again_after_forget_refusals(node: Node) -> None:
    # The admin API applies the state.json it wrote, then the watcher reports that write.
    FakeWorker.spawned.clear()
    node.write(("b3", 1.0))
    failure = node.changed()
    assert failure is not None and FakeWorker.spawned == ["b3"]
    assert node.changed() == failure  # the same write, read again: not tried again
    assert FakeWorker.spawned == ["b3"] and node.serving() == "v1"
    node.write(("b3", 1.0))  # the same switch asked again: a new write
    assert node.changed() == failure and FakeWorker.spawned == ["b3", "b3"]
    node.registry.forget_refusals()  # SIGHUP
    assert node.changed() == failure and FakeWorker.spawned == ["b3", "b3", "b3"]
    assert node.changed() == failure and len(FakeWorker.spawned) == 3


def test_a_refused_switch_to_a_missing_generation_is_tried_again_once_it_is_imported(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_service(root, "demo", {"e": SOURCE}, generation="v1")
    node = Node(root)
    try:
        node.write(("v9", 1.0))
        failure = node.changed()
        assert failure is not None and "generation v9 does not exist" in failure
        assert node.changed() == failure
        generations = root / "services" / "demo" / "generations"
        shutil.copytree(generations / "v1", generations / "v9")  # state.json as it was
        assert node.changed() is None and node.serving() == "v9"
    finally:
        node.close()


def _with_v1(tmp_path: Path, other: str) -> Path:
    """A data dir whose service demo has generations `other` and v1 (state.json: v1)."""
    root = tmp_path / "data"
    write_service(root, "demo", {"e": SOURCE}, generation=other)
    write_service(root, "demo", {"e": SOURCE}, generation="v1")
    return root


def test_a_switch_to_a_generation_with_no_pipeline_ready_in_time_is_refused(tmp_path: Path) -> None:
    """An initialization that never returns (a hang, a load slower than the warm-up time):
    past `switch_warmup_s` the switch is refused while the previous generation serves,
    and the pipelines still initializing are stopped."""
    root = _with_v1(tmp_path, "h2")
    node = Node(root, switch_warmup_s=0.2)
    try:
        node.write(("h2", 1.0))
        failure = node.changed()
        assert failure == (
            "switch not applied: generation h2 not ready after 0.2 s (endpoint e: no pipeline has"
            " finished initializing; see server.json switch.warmup_timeout_ms); v1 stays in service"
        )
        assert node.serving() == "v1" and node.runtime.switch_error == failure
        assert [p.spec.generation for p in node.registry.all_pools()] == ["v1"]  # h2's stopped
    finally:
        node.close()


def test_a_switch_refused_while_its_pipeline_waits_for_a_start_slot_says_so(tmp_path: Path) -> None:
    """Was: "no pipeline has finished initializing", of a pipeline that had not started."""
    root = _with_v1(tmp_path, "v2")
    node = Node(root, switch_warmup_s=0.1)
    try:
        gate = StartGate(node.loop, 1)
        node.registry.start_gate = gate
        # Another boot holds the only slot: the gate looks at it again only after its
        # CHECK_S (0.2 s), past the warm-up of 0.1 s.
        assert CHECK_S > 0.1
        gate.ask("other boot", lambda: True, os.getpid)
        node.write(("v2", 1.0))
        failure = node.changed()
        assert failure == (
            "switch not applied: generation v2 not ready after 0.1 s (endpoint e: no pipeline has"
            " finished initializing, 1 still waiting for a start slot behind other pipelines'"
            " starts; see server.json switch.warmup_timeout_ms); v1 stays in service"
        )
        gate.release("other boot")
    finally:
        node.close()


def test_past_the_warm_up_time_one_ready_pipeline_is_enough_to_switch(tmp_path: Path) -> None:
    """A pool below its floor but serving takes the traffic: the rest join as they finish."""
    root = _with_v1(tmp_path, "p2")
    write_tuning(root, "demo", "e", {"pool": {"floor": 2, "cruise": 2}})
    node = Node(root, switch_warmup_s=0.2)
    try:
        node.write(("p2", 1.0))
        assert node.changed() is None and node.serving() == "p2"
        pipelines = node.registry.resolve("demo", "e").snapshot().pipelines
        assert {state: n for state, n in pipelines.items() if n} == {"idle": 1, "starting": 1}
    finally:
        node.close()


def test_with_nothing_serving_a_switch_waits_no_more_than_the_warm_up_time(tmp_path: Path) -> None:
    """No previous generation serves (a first switch): nothing to keep, the switch goes ahead."""
    root = _with_v1(tmp_path, "h2")
    node = Node(root, switch_warmup_s=0.2)
    try:
        node.write(("v1", 1.0), enabled=False)
        assert node.changed() is None
        node.write(("h2", 1.0))
        assert node.changed() is None and node.serving() == "h2"
    finally:
        node.close()


def test_after_a_briefly_unreadable_state_json_the_switch_is_still_refused(node: Node) -> None:
    """A refused read leaves the old state serving: it still counts as serving for the next switch."""
    node.state.write_text("")
    assert node.changed() is None
    assert node.serving() == "v1" and "state.json" in (node.runtime.error or "")
    node.write(("b3", 1.0))
    failure = node.changed()
    assert failure is not None and "generation b3 failed to load" in failure
    assert node.serving() == "v1"
    assert node.runtime.error is None  # state.json parses again: its read error is gone


def test_the_read_error_clears_once_state_json_parses_again(node: Node) -> None:
    node.state.write_text('{"enabled": tr')
    node.changed()
    assert node.runtime.error is not None
    node.write(("v1", 1.0))  # the same state as the one in force
    assert node.changed() is None
    assert node.runtime.error is None and node.serving() == "v1"
    node.state.write_text("")
    node.changed()
    node.write(("v2", 1.0))  # a new state: switched, with no error left
    assert node.changed() is None
    assert node.runtime.error is None and node.serving() == "v2"


def test_switching_back_to_the_serving_generation_clears_the_switch_error(node: Node) -> None:
    node.write(("b3", 1.0))
    assert node.changed() is not None
    assert node.runtime.switch_error is not None
    node.write(("v1", 1.0))  # back to what serves: state.json and the node agree again
    assert node.changed() is None
    assert node.runtime.switch_error is None and node.serving() == "v1"


def test_the_public_error_of_a_refused_state_shows_no_path(tmp_path: Path) -> None:
    """/run is public: the details (path, parse error) are for the log and admin status only."""
    root = tmp_path / "data"
    write_service(root, "demo", {"e": SOURCE})
    (root / "services" / "demo" / "state.json").write_text("")
    node = Node(root)  # a start on a refused state.json: the service is a disabled stand-in
    try:
        assert node.runtime.state_refused and "invalid JSON" in (node.runtime.error or "")
        with pytest.raises(LightnodeError) as info:
            node.registry.resolve("demo", "e")
        assert info.value.error_type == "ServiceNotActive" and info.value.status == 503
        assert str(tmp_path) not in info.value.message and "invalid JSON" not in info.value.message
        assert info.value.message.startswith("Service demo is not active")
    finally:
        node.close()


def test_services_that_come_and_go_leave_nothing_behind(tmp_path: Path) -> None:
    """Deploy/delete churn: a deleted service's reload task and tuning are not kept."""
    root = tmp_path / "data"
    write_service(root, "demo", {"e": SOURCE})
    node = Node(root)
    registry = node.registry
    try:
        for i in range(20):
            service_id = f"churn{i}"
            write_service(root, service_id, {"e": SOURCE})
            applied = registry.service_changed(service_id)
            assert applied is not None and node.loop.run_until_complete(applied) is None
            assert registry.resolve(service_id, "e").spec.service_id == service_id
            shutil.rmtree(root / "services" / service_id)
            applied = registry.service_changed(service_id)
            assert applied is not None
            node.loop.run_until_complete(applied)
            node.settle()
            assert service_id not in registry.services
        assert registry._reloads == {}
        assert {key[0] for key in registry.tuning} == {"demo"}
        assert {p.spec.service_id for p in registry.all_pools()} == {"demo"}
    finally:
        node.close()


def test_a_change_queued_behind_another_keeps_its_place(node: Node) -> None:
    """The reload chain of a service: the first one finishing does not forget the second."""
    node.write(("v2", 1.0))
    first = node.registry.service_changed("demo")
    assert first is not None
    first_task = node.registry._reloads["demo"]
    while "demo" not in node.registry._pending:  # the first reload warms v2 up
        node.loop.run_until_complete(asyncio.sleep(0.001))
    node.write(("v1", 1.0))
    second = node.registry.service_changed("demo")  # chained behind the first
    assert second is not None and not first_task.done()
    node.loop.run_until_complete(first_task)
    assert node.serving() == "v2"
    assert not second.done() and "demo" in node.registry._reloads  # the second is still to run
    node.loop.run_until_complete(second)
    node.settle()
    assert node.serving() == "v1" and node.registry._reloads == {}


def test_a_call_that_never_ends_in_an_old_generation_does_not_hold_back_the_next_switch(node: Node) -> None:
    """With no exec_timeout a call may run for ever; the old generation's drain waits for it,
    the next switch of the service must not."""
    hung = node.registry.resolve("demo", "e")
    hung.submit(b"{}", exchange=None)  # the fake pipeline never answers it
    node.write(("v2", 1.0))
    assert node.changed() is None and node.serving() == "v2"
    assert hung in node.registry.all_pools() and not hung.drained  # v1 still drains
    node.write(("v1", 1.0))
    applied = node.registry.service_changed("demo")
    assert applied is not None
    node.loop.run_until_complete(asyncio.wait_for(applied, 5))
    assert node.serving() == "v1" and node.registry.resolve("demo", "e") is not hung
    hung.kill_all()  # the hung call ends (WorkerCrashed): its pool drains and is forgotten
    node.settle()
    assert hung.drained and hung not in node.registry.all_pools()


def test_each_endpoint_that_cannot_load_gives_its_own_reason(tmp_path: Path) -> None:
    """Two endpoints of one generation whose code envs cannot be resolved: each names its own."""
    root = tmp_path / "data"
    envs = {"a": {"code_env": "/nonexistent/a"}, "b": {"code_env": "/nonexistent/b"}}
    write_service(root, "demo", {"a": SOURCE, "b": SOURCE}, endpoint_extra=envs)
    node = Node(root)
    try:
        for endpoint_id in ("a", "b"):
            with pytest.raises(LightnodeError) as info:
                node.registry.resolve("demo", endpoint_id)
            assert info.value.error_type == "EndpointUnavailable"
            assert f"/nonexistent/{endpoint_id}" in info.value.message
            assert f"/nonexistent/{'b' if endpoint_id == 'a' else 'a'}" not in info.value.message
    finally:
        node.close()


def test_a_tuning_file_refused_with_no_good_values_before_says_defaults_are_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file refused at start (or before its endpoint ever had good values) leaves the
    defaults in force, and the log says so once; only after good values does a refusal
    keep "the last good values"."""
    from lightnode.config.model import EndpointConfig, PoolLimits
    from lightnode.errors import ConfigError

    loop = asyncio.new_event_loop()
    try:
        registry = Registry(loop, DataDir(tmp_path), Sink(), worker_factory=FakeWorker)
        path = tmp_path / "config" / "services" / "demo" / "e.json"
        path.parent.mkdir(parents=True)
        path.write_text('{"pool": {"ceil": 0}}')
        error = ConfigError(str(path), ["pool.ceil: must be an integer >= 1 (got 0)"])
        registry.tuning_refused("demo", "e", error)  # the watcher's first scan
        assert registry.endpoint_config("demo", "e") == EndpointConfig()  # a pool starts
        assert caplog.text.count("tuning refused") == 1
        assert "defaults in force" in caplog.text and "last good" not in caplog.text
        assert registry.tuning_errors[("demo", "e")] == str(error)
        good = EndpointConfig(pool=PoolLimits(ceil=3), source=str(path))
        registry.apply_tuning("demo", "e", good)
        caplog.clear()
        registry.tuning_refused("demo", "e", error)
        assert "last good values stay in force" in caplog.text
        assert registry.endpoint_config("demo", "e") == good
    finally:
        loop.close()


def test_a_state_json_naming_a_generation_that_does_not_exist_says_so(tmp_path: Path) -> None:
    """Was: ".../generations/gone/service.json: file does not exist", as if a file were missing."""
    root = tmp_path / "data"
    write_service(root, "demo", {"e": SOURCE}, generation="v1")
    (root / "services" / "demo" / "state.json").write_text(
        json.dumps({"enabled": True, "mapping": {"entries": [{"generation": "gone", "proba": 1.0}]}}))
    node = Node(root)
    try:
        assert node.runtime.generations["gone"].load_error == (
            "generation gone does not exist (state.json names it; see `lightnode admin generations demo`)"
        )
    finally:
        node.close()
