"""The node raises its soft open-files limit toward what max_connections needs (daemon.raise_fd_limit)."""

from __future__ import annotations

import logging
import resource

import pytest

from lightnode import daemon


def limits(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    state = [soft, hard]

    def setrlimit(which: int, value: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if value[1] != state[1] or (value[0] > value[1] and value[1] != resource.RLIM_INFINITY):
            raise ValueError("not allowed")
        calls.append(value)
        state[0] = value[0]

    monkeypatch.setattr(daemon.resource, "getrlimit", lambda which: (state[0], state[1]))
    monkeypatch.setattr(daemon.resource, "setrlimit", setrlimit)
    return calls


def test_the_soft_limit_is_raised_for_max_connections(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    calls = limits(monkeypatch, 1024, 524288)
    with caplog.at_level(logging.WARNING):
        daemon.raise_fd_limit(10000)
    assert calls == [(10000 + daemon.FD_RESERVE, 524288)]
    assert not caplog.records


def test_a_hard_limit_too_low_is_raised_to_and_said(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    calls = limits(monkeypatch, 128, 4096)
    with caplog.at_level(logging.WARNING):
        daemon.raise_fd_limit(10000)
    assert calls == [(4096, 4096)]
    (record,) = caplog.records
    assert "open files limit is 4096" in record.getMessage() and "LimitNOFILE" in record.getMessage()


def test_a_limit_high_enough_is_left_alone(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    calls = limits(monkeypatch, 65536, 65536)
    daemon.raise_fd_limit(10000)
    calls_infinite = limits(monkeypatch, resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    daemon.raise_fd_limit(10000)
    assert calls == [] and calls_infinite == [] and not caplog.records
