"""Prometheus metrics of the node (SPEC §10): per-request series and pool series.

Two sources feed `/metrics`:
- `RequestMetrics` is a request observer (`NodeApp.observers`): for each /run
  request it counts the status and records the latency and the queue wait in
  fixed-bucket histograms. This is the hot path: a dict lookup, two list
  increments and a bucket search per histogram, no lock (the node is one event loop).
- `MetricsCollector` reads every pool's `PoolSnapshot` at scrape time for the
  gauges (queue length, pipelines by state) and the pool counters (starts,
  crashes, retirements, rejections). Pools come and go with generation switches,
  so the collector remembers every pool (told of each as it is made, `note`; a
  sweep each `SWEEP_INTERVAL_S` and at each scrape) and, once a pool has drained and left
  the registry, folds its final counters into per-(service, endpoint) carried
  totals: counters never go backwards. Hot reload keeps the same pools (their
  counters survive LimitsChanged), so it resets nothing.
- The series of an endpoint the node no longer has (its service deleted, or no
  generation of its service defines it any more) are dropped once its last pool
  has drained: services deployed and deleted by the thousand (one per branch,
  per customer) would otherwise grow /metrics without bound. Should the
  endpoint come back, its counters start again from 0 (a counter reset, which
  Prometheus' rate() expects).

The text exposition of the node's own series is written here, in the format
prometheus_client's `generate_latest` writes (labels sorted by name, `le`, `+Inf`,
`_count`/`_sum`, integer values as "12.0"), at a small part of its cost per line
(see `MetricsCollector.render`); prometheus_client writes the process_* series. Its
metric objects are not used on the hot path because each `labels(...).observe()`
takes a lock and costs several microseconds.

Imports: standard library, prometheus_client; `pool.snapshot` and `http.app`
for types only. Never the scheduler or the registry themselves: pools and
endpoint lookups come in as callables.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector

if TYPE_CHECKING:  # pragma: no cover
    from lightnode.http.app import RequestRecord
    from lightnode.pool.snapshot import PoolSnapshot

log: Final = logging.getLogger("lightnode.metrics")

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Upper bounds (seconds) of the histogram buckets. Fixed for the node's life: a
# finer grid costs one more line per endpoint per scrape, not more per request.
DURATION_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
WAIT_BUCKETS_S = (
    0.0001,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# How often the collector looks for pools that drained between scrapes (it is told
# of each new pool: a refused switch's pool may be gone within a second); the
# sweep itself is a walk over a few dozen objects.
SWEEP_INTERVAL_S: Final = 1.0
# A request whose client left before it reached a pool (held behind the pipelining
# window) is no rejection by the node, as one that left a queue is not: counted by its
# status (499) only.
CLIENT_GONE: Final = "ClientGone"
# Requests whose (service, endpoint) the node does not know are counted under
# these labels: ids from the URL never become label values unless they name a
# real endpoint, so garbage URLs cannot grow the series without bound. The
# leading underscore is not allowed in ids (SPEC §2): no real endpoint clashes.
OTHER: Final = "_other"
PIPELINE_STATES = ("starting", "idle", "busy", "stopping")

Key = tuple[str, str]


def bucket_index(bounds_us: list[int], value_us: int) -> int:
    """bisect.bisect_left(bounds_us, value_us): the first bound >= the value, or len.

    A loop over the dozen bounds, from the smallest: most requests stop at the first
    few, and compiled it is a native loop over small ints (bisect_left is a call into
    C that compares Python objects), once or twice per request.
    """
    index = 0
    for bound in bounds_us:
        if value_us <= bound:
            return index
        index += 1
    return index


class Histogram:
    """Fixed buckets over integer microseconds; cumulative counts are built at scrape."""

    __slots__ = ("bounds_s", "bounds_us", "counts", "sum_us")

    def __init__(self, bounds_s: tuple[float, ...]) -> None:
        self.bounds_s = bounds_s
        self.bounds_us = [round(b * 1e6) for b in bounds_s]
        self.counts = [0] * (len(bounds_s) + 1)  # last slot: +Inf
        self.sum_us = 0

    def observe(self, value_us: int) -> None:
        # RequestMetrics.observe() does the same inline.
        self.counts[bucket_index(self.bounds_us, value_us)] += 1
        self.sum_us += value_us

    def buckets(self) -> list[tuple[str, int]]:
        """[(le, cumulative count)], ending with ("+Inf", count)."""
        out = []
        total = 0
        for bound, count in zip(self.bounds_s, self.counts, strict=False):
            total += count
            out.append((repr(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


@dataclass(slots=True)
class EndpointSeries:
    """The per-request series of one (service, endpoint)."""

    requests: dict[int, int] = field(default_factory=dict)  # HTTP status -> count
    duration: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS_S))
    wait: Histogram = field(default_factory=lambda: Histogram(WAIT_BUCKETS_S))
    # Requests the node refused itself before any pool saw them (errorType -> count).
    rejections: dict[str, int] = field(default_factory=dict)


class RequestMetrics:
    """The request observer: counts and times each /run request.

    Args:
        known_endpoint: tells whether (service, endpoint) names an endpoint the
            node serves; asked only for requests that reached no pool and whose
            key has no series yet.
    """

    def __init__(self, known_endpoint: Callable[[str, str], bool]) -> None:
        self._known_endpoint = known_endpoint
        self._other = EndpointSeries()  # requests/status only, no histograms
        self.series: dict[Key, EndpointSeries] = {(OTHER, OTHER): self._other}

    def observe(self, record: RequestRecord) -> None:
        series = self.series.get((record.service_id, record.endpoint_id))
        if series is None:
            series = self._series_for(record)
            if series is None:
                return
        requests = series.requests
        status = record.status
        requests[status] = requests.get(status, 0) + 1
        # Histogram.observe(), inlined: this runs once per request.
        histogram = series.duration
        value_us = record.total_us
        histogram.counts[bucket_index(histogram.bounds_us, value_us)] += 1
        histogram.sum_us += value_us
        if record.generation:  # reached a pool: it waited in its queue (or not)
            histogram = series.wait
            value_us = record.wait_us
            histogram.counts[bucket_index(histogram.bounds_us, value_us)] += 1
            histogram.sum_us += value_us
        elif record.error_type is not None and record.error_type != CLIENT_GONE:
            rejections = series.rejections
            rejections[record.error_type] = rejections.get(record.error_type, 0) + 1

    def knows(self, key: Key) -> bool:
        """Whether `key` names an endpoint the node serves now (a label guard)."""
        return self._known_endpoint(key[0], key[1])

    def _series_for(self, record: RequestRecord) -> EndpointSeries | None:
        """A new series for a real endpoint; None (counted under OTHER) for anything else."""
        key = (record.service_id, record.endpoint_id)
        if record.generation or self._known_endpoint(*key):
            series = self.series[key] = EndpointSeries()
            return series
        requests = self._other.requests
        requests[record.status] = requests.get(record.status, 0) + 1
        return None


class PoolLike(Protocol):
    """What the collector reads from a scheduler pool."""

    @property
    def drained(self) -> bool: ...

    def snapshot(self) -> PoolSnapshot: ...


@dataclass(slots=True)
class PoolTotals:
    """Counters of one (service, endpoint), summed over pools."""

    starts: int = 0
    crashes: int = 0
    retirements: int = 0
    rejections: dict[str, int] = field(default_factory=dict)

    def add(self, snap: PoolSnapshot) -> None:
        self.starts += snap.starts_total
        self.crashes += snap.crashes_total
        self.retirements += snap.retirements_total
        for reason, count in snap.rejections_total.items():
            self.rejections[reason] = self.rejections.get(reason, 0) + count

    def copy(self) -> PoolTotals:
        return PoolTotals(self.starts, self.crashes, self.retirements, dict(self.rejections))


@dataclass(slots=True)
class _Gauges:
    queue_length: int = 0
    staged: int = 0
    pipelines: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PIPELINE_STATES, 0))

    def add(self, snap: PoolSnapshot) -> None:
        self.queue_length += snap.queue_length
        self.staged += snap.staged
        for state, count in snap.pipelines.items():
            self.pipelines[state] = self.pipelines.get(state, 0) + count


def pool_key(pool: Any) -> Key:
    spec = pool.spec
    return (spec.service_id, spec.endpoint_id)


class MetricsCollector:
    """Builds the /metrics text from the request series and the pools.

    Args:
        requests: the request observer whose series are exposed.
        pools: returns every pool the registry holds now (live and draining).
        config_errors: returns the node-wide count of refused configuration files.
        query_log_dropped: returns the query log's dropped lines (None: no such series).
        process: also expose prometheus_client's process_* series (RSS, CPU, fds).
    """

    def __init__(
        self,
        requests: RequestMetrics,
        pools: Callable[[], Iterable[PoolLike]],
        config_errors: Callable[[], int],
        *,
        query_log_dropped: Callable[[], int] | None = None,
        process: bool = True,
    ) -> None:
        self.requests = requests
        self._pools = pools
        self._config_errors = config_errors
        self._query_log_dropped = query_log_dropped
        self._known: dict[PoolLike, Key] = {}  # every pool seen and not folded yet
        self.carried: dict[Key, PoolTotals] = {}  # final counters of folded pools
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # prometheus_client writes the process_* series only (render() says why).
        self._process: CollectorRegistry | None = None
        if process:
            self._process = CollectorRegistry(auto_describe=False)
            ProcessCollector(registry=self._process)

    # -------------------------------------------------------------- lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sweep the pools every SWEEP_INTERVAL_S until close()."""
        self._loop = loop
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    def _arm(self) -> None:
        if self._loop is not None:
            self._timer = self._loop.call_later(SWEEP_INTERVAL_S, self._on_timer)

    def _on_timer(self) -> None:
        try:
            self.sweep()
        except Exception:  # boundary: metrics must never take the node down
            log.exception("metrics sweep failed")
        self._arm()

    # --------------------------------------------------------------- reading

    def note(self, pool: PoolLike) -> None:
        """A pool is made (the registry tells): known from now on, so that its counters
        count even if it drains and leaves between two sweeps (a refused switch's pool
        that fails to start and is gone within a second)."""
        if pool not in self._known:
            self._known[pool] = pool_key(pool)

    def sweep(self) -> list[PoolLike]:
        """Note new pools, fold drained pools that left the registry; return the live ones."""
        live = list(self._pools())
        present = set(live)
        for pool in live:
            if pool not in self._known:
                self._known[pool] = pool_key(pool)
        for pool, key in list(self._known.items()):
            if pool not in present and pool.drained:
                self.carried.setdefault(key, PoolTotals()).add(pool.snapshot())
                del self._known[pool]
        self._forget_gone()
        return live

    def _forget_gone(self) -> None:
        """Drop the series of endpoints that left the node (see the module docstring).

        A key stays while a pool of it is known (live, warming up or draining) or
        the node still has the endpoint; the (OTHER, OTHER) series always stays.
        """
        pooled = set(self._known.values())
        requests = self.requests
        series = requests.series
        for key in [k for k in series if k not in pooled and k[0] != OTHER]:
            if not requests.knows(key):
                del series[key]
        for key in [k for k in self.carried if k not in pooled]:
            if not requests.knows(key):
                del self.carried[key]

    def pool_totals(self) -> tuple[dict[Key, PoolTotals], dict[Key, _Gauges]]:
        """Counters (carried + every known pool) and gauges (pools in the registry) per key."""
        live = set(self.sweep())
        totals = {key: carried.copy() for key, carried in self.carried.items()}
        gauges: dict[Key, _Gauges] = {}
        for pool, key in self._known.items():
            snap = pool.snapshot()
            totals.setdefault(key, PoolTotals()).add(snap)
            if pool in live:
                gauges.setdefault(key, _Gauges()).add(snap)
        return totals, gauges

    def render(self) -> bytes:
        """The /metrics body (Prometheus text format 0.0.4).

        Written here, line by line, rather than by prometheus_client's
        `generate_latest`: that validates and escapes every label of every sample,
        about 20 µs a line, and a node of 200 endpoints has some 10,000 lines (two
        histograms each), so each scrape stalled every request of the node (it runs
        on the event loop) for 150-200 ms, growing with the endpoints. The process_*
        series still come from prometheus_client (a dozen lines).
        """
        out: list[str] = []
        totals, gauges = self.pool_totals()
        self._write_requests(out)
        _write_gauges(out, gauges)
        self._write_counters(out, totals)
        _write_header(
            out, "lightnode_config_errors_total", "counter",
            "Configuration files refused since the node started (the last good values stayed in force)",
        )  # fmt: skip
        out.append(f"lightnode_config_errors_total {_number(self._config_errors())}\n")
        if self._query_log_dropped is not None:
            _write_header(
                out, "lightnode_query_log_dropped_lines_total", "counter",
                "Query log lines dropped because the file could not be written (a full disk)",
            )  # fmt: skip
            out.append(f"lightnode_query_log_dropped_lines_total {_number(self._query_log_dropped())}\n")
        text = "".join(out).encode()
        if self._process is not None:
            text += generate_latest(self._process)
        return text

    def _write_requests(self, out: list[str]) -> None:
        items = sorted(self.requests.series.items())
        _write_header(
            out, "lightnode_requests_total", "counter",
            "/run requests, by HTTP status (499: the client went away before its answer)",
        )  # fmt: skip
        for (service, endpoint), series in items:
            head = f'lightnode_requests_total{{endpoint="{_label(endpoint)}",service="{_label(service)}",status="'
            for status, count in sorted(series.requests.items()):
                out.append(f'{head}{status}"}} {_number(count)}\n')
        for name, doc, wait in (
            ("lightnode_request_duration_seconds", "Time from a complete request to its answer", False),
            ("lightnode_queue_wait_seconds", "Time a request waited for a pipeline", True),
        ):
            _write_header(out, name, "histogram", doc)
            for (service, endpoint), series in items:
                if service != OTHER:
                    _write_histogram(out, name, service, endpoint, series.wait if wait else series.duration)

    def _write_counters(self, out: list[str], totals: dict[Key, PoolTotals]) -> None:
        keys = sorted(set(totals) | {k for k, s in self.requests.series.items() if s.rejections})
        pools = [(key, totals.get(key) or PoolTotals()) for key in keys]
        for name, doc in (
            ("starts", "Pipelines started"),
            ("crashes", "Pipelines that died while idle or busy"),
            ("retirements", "Pipelines retired for replacement (max_requests, max_rss_mb)"),
        ):
            metric = f"lightnode_pipeline_{name}_total"
            _write_header(out, metric, "counter", doc)
            for (service, endpoint), pool in pools:
                count = pool.starts if name == "starts" else pool.crashes if name == "crashes" else pool.retirements
                out.append(f'{metric}{{endpoint="{_label(endpoint)}",service="{_label(service)}"}} {_number(count)}\n')
        _write_header(
            out, "lightnode_rejections_total", "counter",
            "Requests refused or failed by the node itself, by errorType",
        )  # fmt: skip
        for key, pool in pools:
            reasons = dict(pool.rejections)
            series = self.requests.series.get(key)
            if series is not None:
                for reason, count in series.rejections.items():
                    reasons[reason] = reasons.get(reason, 0) + count
            endpoint, service = _label(key[1]), _label(key[0])
            for reason, count in sorted(reasons.items()):
                out.append(
                    f'lightnode_rejections_total{{endpoint="{endpoint}",reason="{_label(reason)}",'
                    f'service="{service}"}} {_number(count)}\n'
                )


def _write_header(out: list[str], name: str, kind: str, doc: str) -> None:
    out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")


def _write_histogram(out: list[str], name: str, service: str, endpoint: str, histogram: Histogram) -> None:
    """The _bucket lines (cumulative, `le` sorted between the labels as prometheus_client
    sorts them), then _count and _sum."""
    endpoint_label = f'{name}_bucket{{endpoint="{_label(endpoint)}",le="'
    service_label = f'",service="{_label(service)}"}} '
    total = 0
    counts = histogram.counts
    for index, bound in enumerate(histogram.bounds_s):
        total += counts[index]
        out.append(f"{endpoint_label}{bound!r}{service_label}{_number(total)}\n")
    total += counts[-1]
    labels = f'{{endpoint="{_label(endpoint)}",service="{_label(service)}"}}'
    out.append(f"{endpoint_label}+Inf{service_label}{_number(total)}\n")
    out.append(f"{name}_count{labels} {_number(total)}\n")
    out.append(f"{name}_sum{labels} {_float(histogram.sum_us / 1e6)}\n")


def _write_gauges(out: list[str], gauges: dict[Key, _Gauges]) -> None:
    items = sorted(gauges.items())
    for name, doc, staged in (
        ("lightnode_queue_length", "Requests waiting for a pipeline", False),
        ("lightnode_staged_requests", "Requests sent ahead into busy pipelines' pipes (prefetch), not yet started", True),
    ):
        _write_header(out, name, "gauge", doc)
        for (service, endpoint), gauge in items:
            count = gauge.staged if staged else gauge.queue_length
            out.append(f'{name}{{endpoint="{_label(endpoint)}",service="{_label(service)}"}} {_number(count)}\n')
    _write_header(out, "lightnode_pipelines", "gauge", "Pipelines by state")
    for (service, endpoint), gauge in items:
        head = f'lightnode_pipelines{{endpoint="{_label(endpoint)}",service="{_label(service)}",state="'
        for state, count in gauge.pipelines.items():
            out.append(f'{head}{_label(state)}"}} {_number(count)}\n')


def _label(value: str) -> str:
    """A label value escaped as the text format wants (ids never need it; a reason might)."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _number(value: int) -> str:
    """An integer sample value as prometheus_client writes it ("12.0", "1.234567e+06")."""
    if 0 <= value < 1_000_000:
        return f"{value}.0"
    return _float(float(value))


def _float(value: float) -> str:
    """A finite sample value as prometheus_client writes it: Go's exponent form from 1e6 up."""
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text
