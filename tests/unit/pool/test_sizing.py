"""Pure sizing functions: backoff, mean, Retry-After, admission, starts, surplus."""

from __future__ import annotations

import pytest

from lightnode.config.model import PoolLimits
from lightnode.pool import sizing


def test_backoff_doubles_from_half_a_second_and_caps_at_thirty() -> None:
    assert [sizing.backoff_s(n) for n in range(0, 10)] == [
        0.0,
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
        30.0,
    ]
    assert sizing.backoff_s(10_000) == 30.0


def test_update_mean() -> None:
    assert sizing.update_mean(None, 3.0) == 3.0
    assert sizing.update_mean(1.0, 2.0) == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("queue_length", "mean", "serving", "expected"),
    [
        (0, None, 0, 1),
        (3, 4.0, 1, 12),
        (3, 4.0, 2, 6),
        (5, 0.1, 2, 1),  # at least one second
        (7, 1.0, 2, 4),  # rounded up
        (2, None, 0, 2),  # unknown mean: 1 s; no pipeline counts as one
    ],
)
def test_retry_after(queue_length: int, mean: float | None, serving: int, expected: int) -> None:
    assert sizing.retry_after_s(queue_length, mean, serving) == expected


def test_admits() -> None:
    pool = PoolLimits(floor=0, cruise=1, ceil=2, queue=1)
    assert sizing.admits(pool, allocated=1, starting=0, waiting=5)  # below ceil
    assert sizing.admits(pool, allocated=2, starting=1, waiting=1)
    assert not sizing.admits(pool, allocated=2, starting=1, waiting=2)
    zero = PoolLimits(floor=0, cruise=1, ceil=2, queue=0)
    assert sizing.admits(zero, allocated=2, starting=1, waiting=0)
    assert not sizing.admits(zero, allocated=2, starting=0, waiting=0)
    assert not sizing.admits(zero, allocated=3, starting=0, waiting=0)  # above ceil


@pytest.mark.parametrize(
    ("allocated", "starting", "waiting", "keep_floor", "expected"),
    [
        (0, 0, 0, True, 2),  # rule 1
        (0, 0, 0, False, 0),
        (0, 0, 1, True, 2),  # one floor start serves the waiting request
        (0, 0, 3, True, 3),
        (2, 0, 9, True, 2),  # rule 3 stops at ceil
        (2, 2, 2, True, 0),
        (4, 0, 5, True, 0),
        (5, 0, 5, True, 0),  # above ceil after a decrease
    ],
)
def test_spawns_wanted(
    allocated: int, starting: int, waiting: int, keep_floor: bool, expected: int
) -> None:
    pool = PoolLimits(floor=2, cruise=3, ceil=4)
    got = sizing.spawns_wanted(
        pool, allocated=allocated, starting=starting, waiting=waiting, keep_floor=keep_floor
    )
    assert got == expected


def test_surplus_and_ceil_excess() -> None:
    pool = PoolLimits(floor=1, cruise=2, ceil=4)
    assert [sizing.surplus(pool, allocated=n) for n in range(5)] == [0, 0, 0, 1, 2]
    assert [sizing.ceil_excess(pool, allocated=n) for n in (3, 4, 6)] == [0, 0, 2]
