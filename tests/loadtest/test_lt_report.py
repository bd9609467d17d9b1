"""report.json building (pure), the text summary and `compare`."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest import histo, report
from loadtest.plan import RunPlan, Stage, Target


def _plan(stages: tuple[Stage, ...] = (Stage(2.0, rate_rps=100),), procs: int = 2) -> RunPlan:
    return RunPlan(
        Target.parse("http://127.0.0.1:9"), "bench", "add", (b"{}",), stages, procs=procs
    )


def _proc(
    latencies_us: list[int],
    statuses: dict[str, int],
    cpu_s: float = 0.5,
    errors: dict[str, int] | None = None,
) -> dict[str, Any]:
    histogram = histo.new_histogram()
    for value in latencies_us:
        histo.record_us(histogram, value)
    return {
        "sent": sum(statuses.values()),
        "status_counts": statuses,
        "error_types": errors or {},
        "latency": histo.encode(histogram),
        "client_errors": {"connect": 0, "reset": 0, "timeout": 0},
        "send_lag": None,
        "cpu_s": cpu_s,
        "wall_s": 2.0,
        "peak_connections": 3,
        "connect_attempts": 3,
    }


def _bucket(t: int, sent: int, ok: int, errors: int, latency_us: int) -> dict[str, Any]:
    histogram = histo.new_histogram(histo.SECOND_DIGITS)
    for _ in range(ok + errors):
        histo.record_us(histogram, latency_us)
    return {"t": t, "sent": sent, "ok": ok, "errors": errors, "latency": histo.encode(histogram)}


def _report(**kwargs: Any) -> dict[str, Any]:
    results = [
        _proc([1000] * 90 + [9000] * 10, {"200": 95, "503": 5}, errors={"QueueFull": 5}),
        _proc([2000] * 100, {"200": 100}, cpu_s=1.9),
    ]
    buckets = [
        _bucket(0, 50, 48, 2, 1000),
        _bucket(0, 50, 50, 0, 2000),
        _bucket(1, 50, 47, 3, 9000),
        _bucket(1, 50, 50, 0, 2000),
    ]
    return report.build_report(_plan(), results, buckets, **kwargs)


def test_totals_percentiles_and_rates_merge_every_process() -> None:
    result = _report()
    assert result["requests"] == 200 and result["responses"] == 200
    assert result["duration_s"] == 2.0
    assert result["throughput_rps"] == 100.0 and result["ok_rps"] == 97.5
    assert result["status_counts"] == {"200": 195, "503": 5}
    assert result["error_types"] == {"QueueFull": 5}
    assert result["errors"] == 5
    latency = result["latency_ms"]
    assert latency["p50"] == pytest.approx(2.0, rel=0.001)
    assert latency["p90"] == pytest.approx(2.0, rel=0.001)
    assert latency["p99"] == pytest.approx(9.0, rel=0.001)
    assert latency["max"] == pytest.approx(9.0, rel=0.001)
    assert set(latency) >= {"p50", "p90", "p99", "p999", "max"}


def test_generator_cpu_and_saturation() -> None:
    gen = _report()["generator"]
    assert gen["procs"] == 2
    assert gen["cpu_pct_per_proc"] == [25.0, 95.0]
    assert gen["cpu_pct"] == 120.0
    assert gen["saturated"] is True
    assert "WARNING" in report.summary_text(_report())
    calm = report.generator_values([_proc([1], {"200": 1}, cpu_s=0.2)])
    assert calm["saturated"] is False


def test_timeline_merges_processes_per_second_and_fills_gaps() -> None:
    timeline = report.merge_timeline([_bucket(0, 5, 5, 0, 1000), _bucket(2, 1, 0, 1, 4000)], 4.0)
    assert [e["t"] for e in timeline] == [0, 1, 2, 3]
    assert [(e["sent"], e["ok"], e["errors"]) for e in timeline] == [
        (5, 5, 0),
        (0, 0, 0),
        (1, 0, 1),
        (0, 0, 0),
    ]
    assert timeline[2]["p99_ms"] == pytest.approx(4.0, rel=0.01)
    result = _report()
    assert [(e["t"], e["sent"], e["ok"], e["errors"]) for e in result["timeline"]] == [
        (0, 100, 98, 2),
        (1, 100, 97, 3),
    ]


def test_scraped_pool_goes_into_timeline_pool_and_stages() -> None:
    samples = [
        {"t": 0.01, "pipelines": {"idle": 2}, "allocated": 2, "queue": 0},
        {"t": 1.02, "pipelines": {"busy": 4}, "allocated": 4, "queue": 6},
        {"t": 2.01, "pipelines": {"idle": 2, "stopping": 2}, "allocated": 2, "queue": 0},
    ]
    stages = (Stage(1.0, rate_rps=100), Stage(1.0, rate_rps=0))
    result = report.build_report(
        _plan(stages),
        [_proc([1000], {"200": 1})],
        [],
        samples,
        {"ok": 3, "failed": 0, "last_error": None},
    )
    assert result["pool"] == {
        "samples": 3,
        "max_allocated": 4,
        "min_allocated": 2,
        "final_allocated": 2,
        "max_queue": 6,
        "final_queue": 0,
    }
    assert result["timeline"][1]["pipelines"] == {"busy": 4}
    assert result["timeline"][1]["queue"] == 6
    first, idle = result["stages"]
    assert first["max_allocated"] == 4 and first["final_allocated"] == 4
    assert idle["start_s"] == 1.0 and idle["final_allocated"] == 2
    assert result["scrape"]["ok"] == 3


def test_no_pool_section_without_scraped_samples() -> None:
    result = _report(scrape_status={"ok": 0, "failed": 2, "last_error": "/metrics answered 404"})
    assert "pool" not in result
    assert "not scraped: /metrics answered 404" in report.summary_text(result)


def test_config_echo() -> None:
    result = _report()
    assert result["target"] == "http://127.0.0.1:9"
    assert (result["service"], result["endpoint"]) == ("bench", "add")
    assert result["mode"] == "open" and result["rate"] == 100
    assert result["connections"] is None


def test_summary_fits_one_screen() -> None:
    text = report.summary_text(_report())
    lines = text.splitlines()
    assert len(lines) <= 20 and max(len(line) for line in lines) < 160
    assert "p99.9" in text and "503: 5" in text and "QueueFull: 5" in text


def test_compare_side_by_side_with_ratios() -> None:
    a = {
        "target": "http://a",
        "rate": 100,
        "requests": 1000,
        "duration_s": 10,
        "throughput_rps": 100.0,
        "ok_rps": 100.0,
        "errors": 0,
        "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 4.0, "p999": 5.0, "max": 8.0},
        "status_counts": {"200": 1000},
        "generator": {"cpu_pct": 20.0},
    }
    b = {
        "target": "http://b",
        "connections": 8,
        "requests": 3000,
        "duration_s": 10,
        "throughput_rps": 300.0,
        "ok_rps": 290.0,
        "errors": 10,
        "latency_ms": {"p50": 0.5, "p90": 1.0, "p99": 6.0, "p999": 9.0, "max": 12.0},
        "status_counts": {"200": 2990, "503": 10},
        "error_types": {"QueueFull": 10},
        "generator": {"cpu_pct": 40.0},
    }
    text = report.compare_text(a, b, names=("run-a", "run-b"))
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert text.splitlines()[0].split() == ["run-a", "run-b", "B/A"]
    assert rows["throughput_rps"] == ["100", "300", "3.00x"]
    assert rows["status_counts.503"] == ["0", "10", "-"]
    assert rows["status_counts.200"] == ["1,000", "2,990", "2.99x"]
    assert rows["error_types.QueueFull"] == ["0", "10", "-"]
    assert "open loop 100/s" in text and "closed loop 8 conns" in text
    p99 = next(line for line in text.splitlines() if line.startswith("latency p99 ms"))
    assert p99.split()[-1] == "1.50x"


def test_stage_counts_are_merged_across_processes() -> None:
    stages = (Stage(1.0, rate_rps=10), Stage(2.0, connections=2))
    one = dict(
        _proc([1000], {"200": 1}),
        stages=[{"sent": 5, "ok": 5, "errors": 0}, {"sent": 7, "ok": 6, "errors": 1}],
    )
    two = dict(_proc([1000], {"200": 1}), stages=[{"sent": 5, "ok": 4, "errors": 1}])
    result = report.build_report(_plan(stages), [one, two], [])
    assert [(s["sent"], s["ok"], s["errors"], s["ok_rps"]) for s in result["stages"]] == [
        (10, 9, 1, 9.0),
        (7, 6, 1, 3.0),
    ]
    assert [(s["start_s"], s["connections"]) for s in result["stages"]] == [(0.0, None), (1.0, 2)]


def test_interrupted_run_rates_over_the_time_it_ran() -> None:
    results = [
        dict(_proc([1000] * 50, {"200": 50}), stopped=True, measured_s=0.5),
        dict(_proc([1000] * 50, {"200": 50}), stopped=True, measured_s=0.49),
    ]
    result = report.build_report(_plan((Stage(10.0, rate_rps=200),)), results, [])
    assert result["duration_s"] == 0.5
    assert result["throughput_rps"] == 200.0


def test_latency_by_status_and_error_type_merge_every_process() -> None:
    """The 200s' and the rejections' latencies are in the report apart, merged
    across processes, so a scenario can expect "admitted p99 <= queue timeout"
    and "rejections fast" (issue 8, overload)."""

    def blob(*values_us: int) -> bytes | None:
        histogram = histo.new_histogram()
        for value in values_us:
            histo.record_us(histogram, value)
        return histo.encode(histogram)

    first = _proc([1000, 1500], {"200": 1, "503": 1}, errors={"QueueFull": 1})
    first["latency_by_status"] = {"200": blob(1000), "503": blob(1500)}
    first["latency_by_error_type"] = {"QueueFull": blob(1500)}
    second = _proc([1200, 1900], {"200": 1, "503": 1}, errors={"QueueFull": 1})
    second["latency_by_status"] = {"200": blob(1200), "503": blob(1900)}
    second["latency_by_error_type"] = {"QueueFull": blob(1900)}
    result = report.build_report(_plan(), [first, second], [])
    by_status = result["latency_ms_by_status"]
    assert sorted(by_status) == ["200", "503"]
    assert (by_status["200"]["min"], by_status["200"]["max"]) == (1.0, 1.2)
    assert (by_status["503"]["min"], by_status["503"]["max"]) == (1.5, 1.9)
    assert result["latency_ms_by_error_type"]["QueueFull"]["max"] == 1.9
    assert set(by_status["200"]) >= {"p50", "p90", "p99", "p999", "max"}
    text = report.summary_text(result)
    assert "by status  200: p99 1.2 max 1.2  503: p99 1.9 max 1.9" in text
    # Older processes' payloads (no such keys) give empty groups, not an error.
    assert report.build_report(_plan(), [_proc([1], {"200": 1})], [])["latency_ms_by_status"] == {}
