"""Open-loop schedules: intended send times, their split over processes, ramps."""

from __future__ import annotations

import math

import pytest

from loadtest.plan import Stage, split_connections
from loadtest.schedule import expected_count, offset_of, stage_offsets, stage_starts


def test_constant_rate_is_evenly_spaced_from_the_stage_start() -> None:
    offsets = [offset for offset, _ in stage_offsets(Stage(1.0, rate_rps=100))]
    assert len(offsets) == 100
    assert offsets[0] == 0.0
    assert offsets[1] == pytest.approx(0.01)
    gaps = {round(b - a, 9) for a, b in zip(offsets, offsets[1:], strict=False)}
    assert gaps == {0.01}
    assert max(offsets) < 1.0


def test_procs_interleave_into_exactly_the_single_process_schedule() -> None:
    stage = Stage(2.0, rate_rps=333)
    single = list(stage_offsets(stage))
    merged = sorted(item for k in range(3) for item in stage_offsets(stage, k, 3))
    assert merged == single
    shares = [len(list(stage_offsets(stage, k, 3))) for k in range(3)]
    assert sum(shares) == 666 and max(shares) - min(shares) <= 1
    assert [index for _, index in stage_offsets(stage, 1, 3)][:3] == [1, 4, 7]


def test_linear_ramp_sends_the_area_under_the_rate() -> None:
    stage = Stage(4.0, rate_rps=0, rate_to_rps=100)
    offsets = [offset for offset, _ in stage_offsets(stage)]
    assert len(offsets) == pytest.approx(expected_count(stage), abs=1) == 200
    first_half = sum(1 for offset in offsets if offset < 2.0)
    assert first_half == pytest.approx(50, abs=1)  # a quarter of the area
    assert offsets == sorted(offsets)


def test_ramp_down_and_idle_stage() -> None:
    down = Stage(2.0, rate_rps=100, rate_to_rps=0)
    assert len(list(stage_offsets(down))) == pytest.approx(100, abs=1)
    assert list(stage_offsets(Stage(3.0, rate_rps=0))) == []
    assert list(stage_offsets(Stage(3.0, connections=4))) == []
    assert offset_of(10**9, 100, 0, 2.0) == math.inf


def test_stage_starts_are_back_to_back() -> None:
    stages = [Stage(3, rate_rps=1), Stage(2.5, connections=2), Stage(1, rate_rps=0)]
    assert stage_starts(stages) == [0.0, 3.0, 5.5]


def test_connections_split_as_evenly_as_possible() -> None:
    assert [split_connections(10, 3, k) for k in range(3)] == [4, 3, 3]
    assert [split_connections(2, 4, k) for k in range(4)] == [1, 1, 0, 0]
