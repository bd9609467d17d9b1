"""Metrics: request series, pool series carried across generations, the text exposition."""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lightnode.config.model import EndpointConfig
from lightnode.http.app import RequestRecord
from lightnode.observe.metrics import (
    DURATION_BUCKETS_S,
    OTHER,
    WAIT_BUCKETS_S,
    Histogram,
    MetricsCollector,
    RequestMetrics,
    bucket_index,
)
from lightnode.pool.snapshot import PoolSnapshot


def record(
    service: str = "svc",
    endpoint: str = "ep",
    *,
    generation: str = "v1",
    status: int = 200,
    error_type: str | None = None,
    wait_us: int = 100,
    total_us: int = 2000,
) -> RequestRecord:
    return RequestRecord(
        time=time.time(),
        request_id="r-1",
        service_id=service,
        endpoint_id=endpoint,
        generation=generation,
        status=status,
        error_type=error_type,
        wait_us=wait_us,
        execution_us=1000,
        function_us=500,
        total_us=total_us,
        client="127.0.0.1",
        params=b"{}",
    )


def snapshot(**kw: object) -> PoolSnapshot:
    base = dict(
        pipelines={"starting": 0, "idle": 1, "busy": 0, "stopping": 0},
        allocated=1,
        queue_length=0,
        staged=0,
        oldest_wait_s=0.0,
        load_state="healthy",
        last_load_error=None,
        mean_run_time_s=None,
        served_total=0,
        prefetched_total=0,
        starts_total=0,
        crashes_total=0,
        retirements_total=0,
        start_failures_total=0,
        rejections_total={},
        config=EndpointConfig(),
    )
    base.update(kw)
    return PoolSnapshot(**base)  # type: ignore[arg-type]


@dataclass(eq=False)
class FakePool:
    service: str
    endpoint: str
    snap: PoolSnapshot = field(default_factory=snapshot)
    drained: bool = False

    @property
    def spec(self) -> SimpleNamespace:
        return SimpleNamespace(service_id=self.service, endpoint_id=self.endpoint)

    def snapshot(self) -> PoolSnapshot:
        return self.snap

    def bump(self, **kw: int) -> None:
        self.snap = replace(self.snap, **{k: getattr(self.snap, k) + v for k, v in kw.items()})


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels); parsing validates the format."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: bytes, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


class World:
    def __init__(self) -> None:
        self.pools: list[FakePool] = []
        self.config_errors = 0
        self.known = {("svc", "ep")}
        self.requests = RequestMetrics(lambda s, e: (s, e) in self.known)
        self.collector = MetricsCollector(
            self.requests, lambda: list(self.pools), lambda: self.config_errors
        )

    def text(self) -> bytes:
        return self.collector.render()


def test_the_query_logs_dropped_lines_are_a_counter() -> None:
    dropped = [0]
    collector = MetricsCollector(RequestMetrics(lambda s, e: True), list, lambda: 0,
                                 query_log_dropped=lambda: dropped[0], process=False)
    assert value(collector.render(), "lightnode_query_log_dropped_lines_total") == 0
    dropped[0] = 7
    assert value(collector.render(), "lightnode_query_log_dropped_lines_total") == 7
    assert b"query_log_dropped" not in MetricsCollector(RequestMetrics(lambda s, e: True), list, lambda: 0,
                                                         process=False).render()


# ---------------------------------------------------------------- histogram


@pytest.mark.parametrize("bounds", [[], [5], [1, 2, 3], [round(b * 1e6) for b in DURATION_BUCKETS_S]])
def test_bucket_index_is_bisect_left(bounds: list[int]) -> None:
    values = [-1, 0, 1, 2, 3, 4, 5, 6, 10**12, *bounds, *(b - 1 for b in bounds), *(b + 1 for b in bounds)]
    for value in values:
        assert bucket_index(bounds, value) == bisect.bisect_left(bounds, value), (bounds, value)


def test_histogram_bucket_bounds_are_inclusive_and_cumulative() -> None:
    h = Histogram((0.001, 0.01))
    for us in (1, 1000, 1001, 10_000, 10_001, 5_000_000):
        h.observe(us)
    assert h.buckets() == [("0.001", 2), ("0.01", 4), ("+Inf", 6)]
    assert h.sum_us == 1 + 1000 + 1001 + 10_000 + 10_001 + 5_000_000


# ----------------------------------------------------------- request series


def test_requests_by_status_and_histograms() -> None:
    w = World()
    for status in (200, 200, 500):
        w.requests.observe(record(status=status, total_us=2_000, wait_us=50))
    text = w.text()
    assert value(text, "lightnode_requests_total", service="svc", endpoint="ep", status="200") == 2
    assert value(text, "lightnode_requests_total", service="svc", endpoint="ep", status="500") == 1
    assert (
        value(text, "lightnode_request_duration_seconds_count", service="svc", endpoint="ep") == 3
    )
    assert value(
        text, "lightnode_request_duration_seconds_sum", service="svc", endpoint="ep"
    ) == pytest.approx(0.006)
    assert (
        value(
            text,
            "lightnode_request_duration_seconds_bucket",
            service="svc",
            endpoint="ep",
            le="0.001",
        )
        == 0
    )
    assert (
        value(
            text,
            "lightnode_request_duration_seconds_bucket",
            service="svc",
            endpoint="ep",
            le="0.0025",
        )
        == 3
    )
    assert (
        value(
            text, "lightnode_queue_wait_seconds_bucket", service="svc", endpoint="ep", le="0.0001"
        )
        == 3
    )
    buckets = [k for k in samples(text) if k[0] == "lightnode_request_duration_seconds_bucket"]
    assert len(buckets) == len(DURATION_BUCKETS_S) + 1


def test_unknown_endpoints_do_not_become_labels() -> None:
    w = World()
    for i in range(1000):  # a scanner walking random ids
        w.requests.observe(record(f"s{i}", "x", generation="", status=404, error_type="NotFound"))
    assert set(w.requests.series) == {(OTHER, OTHER)}
    text = w.text()
    assert (
        value(text, "lightnode_requests_total", service=OTHER, endpoint=OTHER, status="404") == 1000
    )
    assert not any(k[0].startswith("lightnode_request_duration") for k in samples(text))


def test_a_client_gone_before_any_pool_is_no_rejection() -> None:
    # 499 ClientGone of a request held behind the pipelining window came with no
    # generation, and so counted as a rejection; one that left a queue did not.
    w = World()
    w.requests.observe(record(generation="", status=499, error_type="ClientGone"))
    w.requests.observe(record(generation="v1", status=499, error_type="ClientGone"))
    text = w.text()
    assert value(text, "lightnode_rejections_total", service="svc", endpoint="ep", reason="ClientGone") is None
    assert value(text, "lightnode_requests_total", service="svc", endpoint="ep", status="499") == 2


def test_refusals_before_any_pool_are_rejections_of_known_endpoints() -> None:
    w = World()
    w.requests.observe(record(generation="", status=503, error_type="ShuttingDown"))
    w.requests.observe(record(generation="", status=401, error_type="Unauthorized"))
    w.pools.append(FakePool("svc", "ep", snapshot(rejections_total={"QueueFull": 2})))
    text = w.text()
    assert (
        value(
            text, "lightnode_rejections_total", service="svc", endpoint="ep", reason="ShuttingDown"
        )
        == 1
    )
    assert (
        value(
            text, "lightnode_rejections_total", service="svc", endpoint="ep", reason="Unauthorized"
        )
        == 1
    )
    assert (
        value(text, "lightnode_rejections_total", service="svc", endpoint="ep", reason="QueueFull")
        == 2
    )
    # They never reached a queue: no queue-wait sample for them.
    assert value(text, "lightnode_queue_wait_seconds_count", service="svc", endpoint="ep") == 0
    assert value(text, "lightnode_requests_total", service="svc", endpoint="ep", status="503") == 1


# -------------------------------------------------------------- pool series


def test_gauges_sum_the_generations_of_an_endpoint() -> None:
    w = World()
    w.pools += [
        FakePool(
            "svc",
            "ep",
            snapshot(
                queue_length=3,
                staged=5,
                pipelines={"starting": 1, "idle": 0, "busy": 2, "stopping": 0},
            ),
        ),
        FakePool(
            "svc",
            "ep",
            snapshot(
                queue_length=1,
                staged=2,
                pipelines={"starting": 0, "idle": 1, "busy": 1, "stopping": 1},
            ),
        ),
    ]
    text = w.text()
    assert value(text, "lightnode_queue_length", service="svc", endpoint="ep") == 4
    assert value(text, "lightnode_staged_requests", service="svc", endpoint="ep") == 7
    got = {
        s: value(text, "lightnode_pipelines", service="svc", endpoint="ep", state=s)
        for s in ("starting", "idle", "busy", "stopping")
    }
    assert got == {"starting": 1, "idle": 1, "busy": 3, "stopping": 1}


def test_a_pool_gone_between_two_sweeps_still_counts() -> None:
    # A refused switch's pool: made, failing to start, drained and gone within a second,
    # before any sweep saw it. Its starts were lost (1-2 counted of 4).
    w = World()
    w.collector.sweep()
    short = FakePool("svc", "ep", snapshot(starts_total=0))
    w.collector.note(short)  # the registry tells as it makes the pool
    short.bump(starts_total=2, crashes_total=1)
    short.drained = True  # never in w.pools when a sweep ran
    text = w.text()
    assert value(text, "lightnode_pipeline_starts_total", service="svc", endpoint="ep") == 2
    assert value(text, "lightnode_pipeline_crashes_total", service="svc", endpoint="ep") == 1
    assert short not in w.collector._known  # folded
    assert value(w.text(), "lightnode_pipeline_starts_total", service="svc", endpoint="ep") == 2  # once


def test_counters_survive_a_generation_switch() -> None:
    w = World()
    old = FakePool(
        "svc",
        "ep",
        snapshot(
            starts_total=3, crashes_total=1, retirements_total=2, rejections_total={"QueueFull": 5}
        ),
    )
    w.pools.append(old)
    w.collector.sweep()  # the periodic sweep sees the old generation's pool
    new = FakePool("svc", "ep", snapshot(starts_total=1))
    w.pools.append(new)
    old.bump(starts_total=1)  # last events while it drains
    w.pools.remove(old)  # the switch: the registry forgets the old pool...
    before = w.text()  # ...which has not drained yet: still counted
    assert value(before, "lightnode_pipeline_starts_total", service="svc", endpoint="ep") == 5
    old.drained = True
    after = w.text()
    assert value(after, "lightnode_pipeline_starts_total", service="svc", endpoint="ep") == 5
    assert value(after, "lightnode_pipeline_crashes_total", service="svc", endpoint="ep") == 1
    assert value(after, "lightnode_pipeline_retirements_total", service="svc", endpoint="ep") == 2
    assert (
        value(after, "lightnode_rejections_total", service="svc", endpoint="ep", reason="QueueFull")
        == 5
    )
    assert old not in w.collector._known  # folded: the collector holds no reference any more
    new.bump(starts_total=2)
    assert value(w.text(), "lightnode_pipeline_starts_total", service="svc", endpoint="ep") == 7


def test_many_switches_never_decrease_any_counter() -> None:
    w = World()
    previous: dict[object, float] = {}
    for generation in range(20):
        pool = FakePool(
            "svc",
            "ep",
            snapshot(
                starts_total=generation % 3 + 1,
                crashes_total=generation % 2,
                rejections_total={"QueueTimeout": generation % 4},
            ),
        )
        w.pools.append(pool)
        w.collector.sweep()
        for other in w.pools[:-1]:
            other.drained = True
        w.pools[:-1] = []
        current = {k: v for k, v in samples(w.text()).items() if k[0].endswith("_total")}
        for key, old_value in previous.items():
            assert current.get(key, 0) >= old_value, key
        previous = current


def test_deleted_services_leave_no_series_behind() -> None:
    # Services deployed and deleted by the hundred (one per branch): each one's series
    # go once it is gone and its pools drained; /metrics does not grow with their number.
    w = World()
    w.pools.append(FakePool("svc", "ep", snapshot(starts_total=1)))
    w.requests.observe(record())
    steady = len(samples(w.text()))
    for i in range(300):
        key = (f"gone{i}", "ep")
        w.known.add(key)
        pool = FakePool(*key, snapshot(starts_total=2, rejections_total={"QueueFull": 1}))
        w.pools.append(pool)
        w.requests.observe(record(*key))
        w.requests.observe(record(*key, generation="", status=503, error_type="ShuttingDown"))
        w.collector.sweep()
        w.known.discard(key)  # DELETE services/<S>: the registry forgets it...
        w.pools.remove(pool)
        if i == 0:  # ...while its pool drains, its series stay
            text = w.text()
            assert value(text, "lightnode_pipeline_starts_total", service=key[0], endpoint="ep") == 2
            assert value(text, "lightnode_requests_total", service=key[0], endpoint="ep", status="200") == 1
        pool.drained = True
        w.collector.sweep()
    text = w.text()
    assert not any(dict(labels).get("service", "").startswith("gone") for _, labels in samples(text))
    assert len(samples(text)) == steady
    assert set(w.requests.series) == {(OTHER, OTHER), ("svc", "ep")}
    assert set(w.collector.carried) <= {("svc", "ep")}


def test_an_endpoint_still_served_keeps_its_series_between_pools() -> None:
    # A known endpoint whose pools all drained (a disabled service, floor 0 between
    # generations) keeps its counters: they never go backwards while it exists.
    w = World()
    pool = FakePool("svc", "ep", snapshot(starts_total=4))
    w.pools.append(pool)
    w.requests.observe(record())
    w.collector.sweep()
    w.pools.remove(pool)
    pool.drained = True
    text = w.text()
    assert value(text, "lightnode_pipeline_starts_total", service="svc", endpoint="ep") == 4
    assert value(text, "lightnode_requests_total", service="svc", endpoint="ep", status="200") == 1


def test_limits_changed_keeps_the_pool_and_its_counters() -> None:
    w = World()
    pool = FakePool("svc", "ep", snapshot(starts_total=2))
    w.pools.append(pool)
    assert value(w.text(), "lightnode_pipeline_starts_total", service="svc", endpoint="ep") == 2
    pool.snap = replace(pool.snap, config=EndpointConfig(source="tuning.json"), starts_total=3)
    assert value(w.text(), "lightnode_pipeline_starts_total", service="svc", endpoint="ep") == 3


def test_config_errors_and_label_escaping() -> None:
    w = World()
    w.config_errors = 4
    w.known.add(("a", "b"))
    w.pools.append(FakePool('we"ird\\', "e\nq"))
    text = w.text()
    assert value(text, "lightnode_config_errors_total") == 4
    assert value(text, "lightnode_queue_length", service='we"ird\\', endpoint="e\nq") == 0


def test_process_series_and_timer_lifecycle() -> None:
    import asyncio

    w = World()
    assert any(k[0] == "process_resident_memory_bytes" for k in samples(w.text()))

    async def run() -> None:
        w.collector.start(asyncio.get_running_loop())
        pool = FakePool("svc", "ep", snapshot(starts_total=9))
        w.pools.append(pool)
        w.collector.sweep()
        w.collector.close()

    asyncio.run(run())
    assert w.collector._timer is None


def test_observe_cost_is_small() -> None:
    """The hot path: one observe() per request. Loose bound; the report has the exact figure."""
    w = World()
    rec = record()
    n = 50_000
    started = time.perf_counter()
    for _ in range(n):
        w.requests.observe(rec)
    per_call_ns = (time.perf_counter() - started) / n * 1e9
    assert per_call_ns < 20_000, per_call_ns


def test_request_histograms_match_histogram_observe() -> None:
    requests = RequestMetrics(lambda service, endpoint: True)
    duration, wait = Histogram(DURATION_BUCKETS_S), Histogram(WAIT_BUCKETS_S)
    for us in (0, 1, 100, 500, 501, 1000, 2_500_000, 60_000_000, 61_000_000):
        requests.observe(record(total_us=us, wait_us=us // 2))
        duration.observe(us)
        wait.observe(us // 2)
    requests.observe(record(generation="", error_type="QueueFull", total_us=7, wait_us=999))
    duration.observe(7)  # refused before any pool: no queue wait
    series = requests.series[("svc", "ep")]
    assert (series.duration.counts, series.duration.sum_us) == (duration.counts, duration.sum_us)
    assert (series.wait.counts, series.wait.sum_us) == (wait.counts, wait.sum_us)
