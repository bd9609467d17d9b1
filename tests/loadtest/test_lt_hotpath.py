"""loadtest.hotpath: the in-process measure of the node's Python per request.

Both modes must drive real requests through the real protocol, app and pool:
every request answered, and in the saturated mode the pool really queues and
prefetches (else the number would measure an idle pool).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lightnode.pool.machine import MAX_STAGED
from loadtest import hotpath


def test_one_connection_answers_every_request(capsys: pytest.CaptureFixture[str]) -> None:
    assert hotpath.main(["--requests", "300"]) == 0
    assert "1 connection(s), 300 requests" in capsys.readouterr().out


def test_saturated_mode_queues_and_prefetches(tmp_path: Path) -> None:
    in_pipes = 2 * (1 + MAX_STAGED)  # two pipelines, each running one and holding MAX_STAGED
    saturated = hotpath.Saturated(tmp_path, observers=True, connections=2 * in_pipes)
    try:
        saturated.run(400)
        assert saturated.written >= 400
        pool = saturated.protocols[0]._app.registry.resolve("bench", "add")  # type: ignore[attr-defined]
        snapshot = pool.snapshot()
    finally:
        saturated.loop.close()
    assert snapshot.allocated == 2
    assert snapshot.queue_length > 0  # more clients than the pipes hold: some wait in the queue
    assert snapshot.prefetched_total > 0
    assert snapshot.served_total >= 400


def test_saturated_main_prints_the_measure(capsys: pytest.CaptureFixture[str]) -> None:
    assert hotpath.main(["--requests", "300", "--connections", "8"]) == 0
    assert "8 connection(s), 300 requests" in capsys.readouterr().out
