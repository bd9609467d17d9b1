"""A node of many endpoints (journey N: 40 services x 5 endpoints): costs that grow with them.

Both run on the node's one event loop, so their time is a stall of every request:
- a `/metrics` scrape: with 200 endpoints prometheus_client's `generate_latest` took
  130-210 ms per scrape (about 20 µs per sample line), a latency spike on every
  endpoint at each Prometheus interval, growing with the endpoints;
- the config watcher's periodic scan (each second, events or not): it read and
  hashed every tuning file, 15-17 ms each second with 200 files, idle or not.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from lightnode.config import watch as watch_module
from lightnode.config.load import load_endpoint_config
from lightnode.config.model import EndpointConfig
from lightnode.config.watch import ConfigWatcher, TuningChanged
from lightnode.observe.metrics import (
    DURATION_BUCKETS_S,
    WAIT_BUCKETS_S,
    EndpointSeries,
    MetricsCollector,
    RequestMetrics,
)
from lightnode.pool.snapshot import PoolSnapshot


def _snapshot(starts: int) -> PoolSnapshot:
    return PoolSnapshot(
        pipelines={"starting": 0, "idle": 1, "busy": 2, "stopping": 0},
        allocated=3, queue_length=4, staged=1, oldest_wait_s=0.0, load_state="healthy",
        last_load_error=None, mean_run_time_s=None, served_total=0, prefetched_total=0,
        starts_total=starts, crashes_total=1, retirements_total=2, start_failures_total=0,
        rejections_total={"QueueFull": 3}, config=EndpointConfig(),
    )  # fmt: skip


class _Pool:
    def __init__(self, service: str, endpoint: str, starts: int) -> None:
        self.spec = SimpleNamespace(service_id=service, endpoint_id=endpoint)
        self.drained = False
        self._snap = _snapshot(starts)

    def snapshot(self) -> PoolSnapshot:
        return self._snap


def _collector(services: int, endpoints: int = 5) -> MetricsCollector:
    """Every endpoint with traffic: statuses, both histograms filled, a pool, a rejection."""
    requests = RequestMetrics(lambda s, e: True)
    pools = []
    for i in range(services):
        for e in range(endpoints):
            key = (f"svc{i:03d}", f"ep{e}")
            series = requests.series[key] = EndpointSeries()
            series.requests.update({200: 1000 + i, 503: 7, 499: 1_234_567})
            series.rejections["ServiceNotActive"] = 2
            for histogram in (series.duration, series.wait):
                histogram.counts[:] = range(1, len(histogram.counts) + 1)
                histogram.sum_us = 1_234_567 + e
            pools.append(_Pool(*key, starts=i))
    return MetricsCollector(requests, lambda: pools, lambda: 5, query_log_dropped=lambda: 0, process=False)


def test_metrics_text_is_complete_and_parses() -> None:
    text = _collector(2, 2).render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    labels = (("endpoint", "ep1"), ("service", "svc001"))
    assert samples[("lightnode_requests_total", (*labels, ("status", "200")))] == 1001
    assert samples[("lightnode_requests_total", (*labels, ("status", "499")))] == 1_234_567
    for name, bounds in (
        ("lightnode_request_duration_seconds", DURATION_BUCKETS_S),
        ("lightnode_queue_wait_seconds", WAIT_BUCKETS_S),
    ):
        assert families[name].type == "histogram"
        cumulative = 0
        for index, bound in enumerate(bounds):
            cumulative += index + 1
            assert samples[(f"{name}_bucket", (labels[0], ("le", repr(bound)), labels[1]))] == cumulative
        count = cumulative + len(bounds) + 1
        assert samples[(f"{name}_bucket", (labels[0], ("le", "+Inf"), labels[1]))] == count
        assert samples[(f"{name}_count", labels)] == count
        assert samples[(f"{name}_sum", labels)] == 1.234568
    assert samples[("lightnode_pipelines", (*labels, ("state", "busy")))] == 2
    assert samples[("lightnode_queue_length", labels)] == 4
    assert samples[("lightnode_staged_requests", labels)] == 1
    assert samples[("lightnode_pipeline_starts_total", labels)] == 1
    assert samples[("lightnode_pipeline_crashes_total", labels)] == 1
    assert samples[("lightnode_pipeline_retirements_total", labels)] == 2
    reason = (labels[0], ("reason", "QueueFull"), labels[1])
    assert samples[("lightnode_rejections_total", reason)] == 3
    reason = (labels[0], ("reason", "ServiceNotActive"), labels[1])
    assert samples[("lightnode_rejections_total", reason)] == 2
    assert samples[("lightnode_config_errors_total", ())] == 5
    assert "# TYPE lightnode_requests_total counter\n" in text
    assert "# TYPE lightnode_pipelines gauge\n" in text


def _reference_text(collector: MetricsCollector) -> bytes:
    """The node's series as prometheus_client's generate_latest writes them (the writer
    of /metrics before it was replaced for its cost): the oracle of the format."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    from lightnode.observe.metrics import OTHER, PoolTotals

    totals, gauges = collector.pool_totals()
    labels = ["service", "endpoint"]
    requests = CounterMetricFamily("lightnode_requests_total", "/run requests, by HTTP status (499: the client went away before its answer)", labels=[*labels, "status"])  # fmt: skip
    duration = HistogramMetricFamily("lightnode_request_duration_seconds", "Time from a complete request to its answer", labels=labels)  # fmt: skip
    wait = HistogramMetricFamily("lightnode_queue_wait_seconds", "Time a request waited for a pipeline", labels=labels)  # fmt: skip
    for (service, endpoint), series in sorted(collector.requests.series.items()):
        for status, count in sorted(series.requests.items()):
            requests.add_metric([service, endpoint, str(status)], count)
        if service != OTHER:
            for family, histogram in ((duration, series.duration), (wait, series.wait)):
                family.add_metric([service, endpoint], histogram.buckets(), sum_value=histogram.sum_us / 1e6)
    queue = GaugeMetricFamily("lightnode_queue_length", "Requests waiting for a pipeline", labels=labels)  # fmt: skip
    staged = GaugeMetricFamily("lightnode_staged_requests", "Requests sent ahead into busy pipelines' pipes (prefetch), not yet started", labels=labels)  # fmt: skip
    pipelines = GaugeMetricFamily("lightnode_pipelines", "Pipelines by state", labels=[*labels, "state"])
    for key, gauge in sorted(gauges.items()):
        queue.add_metric(list(key), gauge.queue_length)
        staged.add_metric(list(key), gauge.staged)
        for state, count in gauge.pipelines.items():
            pipelines.add_metric([*key, state], count)
    counters = {
        name: CounterMetricFamily(f"lightnode_pipeline_{name}_total", doc, labels=labels)
        for name, doc in (
            ("starts", "Pipelines started"),
            ("crashes", "Pipelines that died while idle or busy"),
            ("retirements", "Pipelines retired for replacement (max_requests, max_rss_mb)"),
        )
    }
    rejections = CounterMetricFamily("lightnode_rejections_total", "Requests refused or failed by the node itself, by errorType", labels=[*labels, "reason"])  # fmt: skip
    for key in sorted(set(totals) | {k for k, s in collector.requests.series.items() if s.rejections}):
        pool = totals.get(key, PoolTotals())
        counters["starts"].add_metric(list(key), pool.starts)
        counters["crashes"].add_metric(list(key), pool.crashes)
        counters["retirements"].add_metric(list(key), pool.retirements)
        reasons = dict(pool.rejections)
        series = collector.requests.series.get(key)
        for reason, count in (series.rejections.items() if series is not None else ()):
            reasons[reason] = reasons.get(reason, 0) + count
        for reason, count in sorted(reasons.items()):
            rejections.add_metric([*key, reason], count)
    errors = CounterMetricFamily("lightnode_config_errors_total", "Configuration files refused since the node started (the last good values stayed in force)", value=5)  # fmt: skip
    dropped = CounterMetricFamily("lightnode_query_log_dropped_lines_total", "Query log lines dropped because the file could not be written (a full disk)", value=3)  # fmt: skip
    families = [requests, duration, wait, queue, staged, pipelines, *counters.values(), rejections, errors, dropped]

    class Families:
        def collect(self) -> list[object]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families())  # type: ignore[arg-type]
    return generate_latest(registry)


def test_metrics_text_is_what_prometheus_client_would_write() -> None:
    """The node writes its series itself (prometheus_client's writer cost ~20 µs a line:
    a scrape of 200 endpoints stalled the node 130-210 ms): byte for byte the same text,
    with large values, escaped labels and the catch-all series."""
    from lightnode.observe.metrics import OTHER

    requests = RequestMetrics(lambda s, e: True)
    pools = []
    for i in range(3):
        for e in range(2):
            key = (f"s{i}", f"e{e}")
            series = requests.series[key] = EndpointSeries()
            series.requests.update({200: 10**i * 999_999 + e, 503: 7, 499: 12_345_678_901_234_567})
            series.rejections["ServiceNotActive"] = 2 + i
            for histogram in (series.duration, series.wait):
                histogram.counts[:] = [k * 10**i for k in range(len(histogram.counts))]
                histogram.sum_us = 1_234_567 * 10 ** (3 * i) + e
            if i != 1:
                pools.append(_Pool(*key, starts=i * 1_000_000))
    requests.series[(OTHER, OTHER)].requests[404] = 5
    requests.series[("x", 'we"ird\\\n')] = odd = EndpointSeries()
    odd.requests[200] = 1
    collector = MetricsCollector(requests, lambda: pools, lambda: 5, query_log_dropped=lambda: 3, process=False)
    assert collector.render() == _reference_text(collector)


def _tuning_tree(root: Path, services: int, endpoints: int) -> None:
    for i in range(services):
        directory = root / "config" / "services" / f"svc{i:03d}"
        directory.mkdir(parents=True)
        for e in range(endpoints):
            (directory / f"ep{e}.json").write_text('{"pool": {"floor": 0}}')


def test_the_idle_periodic_scan_reads_no_file_and_lists_no_directory(tmp_path: Path, monkeypatch) -> None:
    _tuning_tree(tmp_path, 40, 5)
    watcher = ConfigWatcher(tmp_path, lambda changes: None)
    assert len([c for c in watcher.scan() if isinstance(c, TuningChanged)]) == 200
    reads: list[Path] = []
    real = watch_module.read_config_bytes

    def counting(path: Path, *args: object) -> bytes | None:
        reads.append(path)
        return real(path)

    listed: list[str] = []
    real_scandir = watch_module.os.scandir

    def counting_scandir(path: str | Path) -> object:
        listed.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(watch_module, "read_config_bytes", counting)
    monkeypatch.setattr(watch_module.os, "scandir", counting_scandir)
    _a_minute_later(monkeypatch)
    assert watcher.scan() == []  # the files have settled since they were read
    reads.clear()
    listed.clear()
    for _ in range(3):  # the periodic scans of an idle node
        assert watcher.scan() == []
    assert [path for path in reads if path.parent.parent.name == "services"] == []  # keys.json, server.json: 2 a scan
    assert listed == []


def test_the_periodic_scan_still_sees_every_kind_of_change(tmp_path: Path, monkeypatch) -> None:
    _tuning_tree(tmp_path, 3, 2)
    watcher = ConfigWatcher(tmp_path, lambda changes: None)
    watcher.scan()
    root = tmp_path / "config" / "services"
    # An in-place rewrite of the same size, within the same clock tick as the last read:
    # the stat signature may not change, so a recent file is read again.
    (root / "svc000" / "ep0.json").write_text('{"pool": {"floor": 1}}')
    assert watcher.scan() == [TuningChanged("svc000", "ep0", _config(root / "svc000" / "ep0.json", 1))]
    # An atomic rename over the file.
    fresh = root / "svc001" / ".ep1.tmp"
    fresh.write_text('{"pool": {"floor": 1, "ceil": 3}}')
    fresh.rename(root / "svc001" / "ep1.json")
    changes = watcher.scan()
    assert [(c.service_id, c.endpoint_id) for c in changes] == [("svc001", "ep1")]
    # Once the files are old, a scan reads none, and a later write is still seen.
    _a_minute_later(monkeypatch)
    assert watcher.scan() == []
    (root / "svc002" / "ep1.json").write_text('{"pool": {"floor": 2}}')  # the same size
    monkeypatch.undo()
    changes = watcher.scan()
    assert [(c.service_id, c.endpoint_id) for c in changes] == [("svc002", "ep1")]
    # Files and directories that come and go in settled directories.
    _a_minute_later(monkeypatch)
    assert watcher.scan() == []
    (root / "svc000" / "ep9.json").write_text('{"pool": {"floor": 0}}')
    (root / "svc001" / "ep0.json").unlink()
    (root / "svc003").mkdir()
    (root / "svc003" / "ep0.json").write_text('{"pool": {"floor": 0}}')
    (tmp_path / "services" / "svc003").mkdir(parents=True)
    monkeypatch.undo()
    changes = watcher.scan()
    assert {(type(c).__name__, getattr(c, "service_id", None), getattr(c, "endpoint_id", None)) for c in changes} == {
        ("TuningChanged", "svc000", "ep9"),
        ("TuningRemoved", "svc001", "ep0"),
        ("TuningChanged", "svc003", "ep0"),
        ("ServiceFilesChanged", "svc003", None),
    }


def _a_minute_later(monkeypatch) -> None:
    """The files were last written long ago: past the window where a read is not trusted."""
    now_ns = time.time_ns
    monkeypatch.setattr(watch_module.time, "time_ns", lambda: now_ns() + 60 * 10**9)


def _config(path: Path, floor: int) -> EndpointConfig:
    config = load_endpoint_config(path)
    assert config.pool.floor == floor
    return config
