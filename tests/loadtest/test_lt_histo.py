"""HdrHistogram handling: merge across processes, percentiles, per-second buckets."""

from __future__ import annotations

import random

import pytest

from loadtest import histo
from loadtest.recorder import Recorder


def test_merge_of_encoded_histograms_equals_one_histogram_of_everything() -> None:
    rng = random.Random(7)
    values = [rng.expovariate(1 / 2000) + 50 for _ in range(30_000)]
    whole = histo.new_histogram()
    parts = [histo.new_histogram() for _ in range(3)]
    for index, value in enumerate(values):
        histo.record_us(whole, value)
        histo.record_us(parts[index % 3], value)
    merged = histo.merge([histo.encode(p) for p in parts] + [None])
    assert merged.get_total_count() == 30_000
    assert histo.summary_ms(merged) == histo.summary_ms(whole)


def test_percentiles_in_ms_within_histogram_precision() -> None:
    histogram = histo.new_histogram()
    for value_us in range(1, 10_001):  # 1 us .. 10 ms, uniform
        histo.record_us(histogram, value_us)
    summary = histo.summary_ms(histogram)
    assert summary["p50"] == pytest.approx(5.0, rel=0.002)
    assert summary["p90"] == pytest.approx(9.0, rel=0.002)
    assert summary["p99"] == pytest.approx(9.9, rel=0.002)
    assert summary["p999"] == pytest.approx(9.99, rel=0.002)
    assert summary["max"] == pytest.approx(10.0, rel=0.002)


def test_empty_histogram_and_clamping() -> None:
    assert histo.encode(histo.new_histogram()) is None
    assert histo.summary_ms(histo.merge([]))["p99"] == 0.0
    histogram = histo.new_histogram()
    histo.record_us(histogram, -5)
    histo.record_us(histogram, 10**12)
    assert histogram.get_total_count() == 2
    assert histo.summary_ms(histogram)["max"] == pytest.approx(histo.HIGHEST_US / 1000, rel=0.001)


def _sent(recorder: Recorder, origin: float, now: float) -> None:
    recorder.issued(origin)
    recorder.wrote(origin, origin, now)


def test_recorder_buckets_by_second_and_skips_warmup() -> None:
    recorder = Recorder(measure_start=100.0)
    _sent(recorder, 99.5, 99.5)  # warm-up: not counted
    recorder.answered(99.5, 99.5, 100.2, 200, None)
    _sent(recorder, 100.1, 100.1)
    recorder.answered(100.1, 100.1, 100.15, 200, None)
    _sent(recorder, 100.9, 100.9)
    recorder.answered(100.9, 100.9, 101.4, 503, "QueueFull")
    _sent(recorder, 101.5, 101.6)
    recorder.failed(101.5, 102.2, "reset")
    assert recorder.close_seconds(100.5) == []  # second 0 still open
    shipped = recorder.close_seconds(102.01)
    assert [(b["t"], b["sent"], b["ok"], b["errors"]) for b in shipped] == [
        (0, 2, 1, 0),
        (1, 1, 0, 1),
    ]
    rest = recorder.close_all()
    assert [(b["t"], b["errors"]) for b in rest] == [(2, 1)]
    totals = recorder.totals()
    assert totals["sent"] == 3
    assert totals["status_counts"] == {"200": 1, "503": 1}
    assert totals["error_types"] == {"QueueFull": 1}
    assert totals["client_errors"] == {"connect": 0, "reset": 1, "timeout": 0, "invalid": 0}
    latency = histo.summary_ms(histo.merge([totals["latency"]]))
    assert latency["max"] == pytest.approx(500, rel=0.001)  # 100.9 -> 101.4
    assert histo.summary_ms(histo.merge([totals["send_lag"]]))["max"] == pytest.approx(
        100, rel=0.001
    )


def test_recorder_late_event_lands_in_the_oldest_open_second() -> None:
    recorder = Recorder(measure_start=0.0)
    recorder.close_seconds(3.5)  # seconds 0..2 shipped
    _sent(recorder, 1.2, 3.6)  # sent late, for a second already shipped
    assert [b["t"] for b in recorder.close_all()] == [3]


def test_recorder_counts_each_request_in_the_stage_it_was_sent_in() -> None:
    recorder = Recorder(measure_start=10.0, stage_starts=(0.0, 0.5, 2.0))
    for origin, status in ((10.1, 200), (10.49, 503), (10.5, 200), (11.9, 200), (12.5, 200)):
        _sent(recorder, origin, origin)
        recorder.answered(origin, origin, origin + 0.8, status, None)  # answered in a later stage
    _sent(recorder, 12.6, 12.6)
    recorder.failed(12.6, 13.0, "timeout")
    assert recorder.totals()["stages"] == [
        {"sent": 2, "ok": 1, "errors": 1},
        {"sent": 2, "ok": 2, "errors": 0},
        {"sent": 2, "ok": 1, "errors": 1},
    ]


def test_intended_time_decides_warmup_second_and_stage_latency_runs_from_origin() -> None:
    recorder = Recorder(measure_start=10.0, stage_starts=(0.0, 1.0))
    recorder.issued(9.9995)  # due in the warm-up, issued late: not counted
    recorder.answered(10.0005, 9.9995, 10.01, 200, None)
    recorder.issued(10.9995)  # due at the end of stage 0 and second 0
    recorder.wrote(11.0005, 10.9995, 11.0005)
    recorder.answered(11.0005, 10.9995, 11.0105, 200, None)
    buckets = recorder.close_all()
    assert recorder.sent_total == 1
    assert [(b["t"], b["sent"], b["ok"]) for b in buckets] == [(0, 1, 0), (1, 0, 1)]
    assert [s["ok"] for s in recorder.totals()["stages"]] == [1, 0]
    assert histo.summary_ms(recorder.latency)["max"] == pytest.approx(10.0, rel=0.01)


def test_recorder_keeps_latency_apart_by_status_and_error_type() -> None:
    """Issue 8, overload: "admitted p99 <= queue timeout, rejections fast" needs the
    latency of the 200s apart from that of the 503s; one histogram of all answers
    hid a slow rejection (or a slow admitted request) among the others."""
    recorder = Recorder(measure_start=0.0)
    for index in range(90):
        _sent(recorder, 0.01 * index, 0.01 * index)
        recorder.answered(0.01 * index, 0.01 * index, 0.01 * index + 0.2, 200, None)
    for index in range(10):
        origin = 1.0 + 0.01 * index
        _sent(recorder, origin, origin)
        recorder.answered(origin, origin, origin + 0.002, 503, "QueueFull")
    _sent(recorder, 1.5, 1.5)
    recorder.answered(1.5, 1.5, 3.5, 503, "QueueTimeout")
    recorder.close_all()
    totals = recorder.totals()
    by_status = {
        k: histo.summary_ms(histo.merge([v])) for k, v in totals["latency_by_status"].items()
    }
    assert set(by_status) == {"200", "503"}
    assert by_status["200"]["min"] == pytest.approx(200, rel=0.001)
    assert by_status["200"]["max"] == pytest.approx(200, rel=0.001)
    assert by_status["503"]["p50"] == pytest.approx(2, rel=0.001)
    assert by_status["503"]["max"] == pytest.approx(2000, rel=0.001)
    by_type = {
        k: histo.summary_ms(histo.merge([v])) for k, v in totals["latency_by_error_type"].items()
    }
    assert set(by_type) == {"QueueFull", "QueueTimeout"}
    assert by_type["QueueFull"]["max"] == pytest.approx(2, rel=0.001)
    assert by_type["QueueTimeout"]["min"] == pytest.approx(2000, rel=0.001)
    # The run's histogram still holds every answer.
    assert histo.merge([totals["latency"]]).get_total_count() == 101
