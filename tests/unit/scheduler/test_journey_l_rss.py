"""limits.max_rss_mb on a pipeline that was over the limit as soon as it loaded: kept (its
successor would be as large), but not without bound: a leak on top of the load retires it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lightnode.config.model import EndpointConfig, ExecLimits, PoolLimits
from lightnode.scheduler.scheduler import EndpointPool
from lightnode.scheduler.worker_handle import WorkerSpec
from lightnode.worker import runtime
from tests.unit.scheduler.test_scheduler import FakeWorker, Sink

SPEC = WorkerSpec("svc", "ep", "v1", Path("/tmp"), "ep.py", "f")


@pytest.fixture
def pool() -> Iterator[EndpointPool]:
    FakeWorker.instances = []
    loop = asyncio.new_event_loop()
    config = EndpointConfig(pool=PoolLimits(floor=1, cruise=1, ceil=2), limits=ExecLimits(max_rss_mb=40))
    endpoint = EndpointPool(loop, SPEC, config, Sink(), worker_factory=FakeWorker)
    endpoint.start()
    yield endpoint
    loop.close()


def test_a_pipeline_over_max_rss_once_loaded_is_retired_when_it_leaks_the_limit_again(
    pool: EndpointPool, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="lightnode")
    worker = FakeWorker.instances[0]
    worker.rss = 80 << 20  # the code needs 80 MB to load, the limit is 40 MB
    worker.ready()
    pool._check_rss()
    worker.rss = 120 << 20  # grew by the limit: still kept
    pool._check_rss()
    assert len(FakeWorker.instances) == 1 and pool.snapshot().retirements_total == 0
    assert caplog.text.count("as soon as it loaded") == 1
    worker.rss = 500 << 20  # a leak on top of the load
    for _ in range(3):
        pool._check_rss()
    assert pool.snapshot().retirements_total == 1
    assert len(FakeWorker.instances) == 2  # its successor starts first (room below ceil)
    assert caplog.text.count("grew by over 40 MB RSS since it loaded (80 MB, now 500 MB): retiring") == 1
    successor = FakeWorker.instances[1]
    successor.rss = 80 << 20
    successor.ready()
    assert worker.stopped and not successor.stopped
    pool.submit(b"{}", exchange=None)
    successor.answer(runtime.RESULT, b"1")
    pool._check_rss()  # the successor, as large once loaded, is kept: no retirement loop
    assert pool.snapshot().retirements_total == 1 and not successor.stopped
