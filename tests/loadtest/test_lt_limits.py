"""Connection caps and the open-files limit of the generator processes."""

from __future__ import annotations

import pytest

from loadtest.plan import RunPlan, Stage, Target
from loadtest.procs import FD_HEADROOM, fd_limit_problem, usable_connections
from loadtest.runner import make_jobs


def _plan(*stages: Stage, procs: int = 1, max_connections: int = 2048) -> RunPlan:
    return RunPlan(
        Target.parse("http://127.0.0.1:1"),
        "s",
        "e",
        (b"{}",),
        stages,
        procs=procs,
        max_connections=max_connections,
    )


def test_closed_loop_connections_are_not_capped_by_the_open_loop_pool_cap() -> None:
    """--max-connections caps the open loop's pool; a closed-loop stage of 3000
    connections gets its 3000 (it silently ran with 2048)."""
    jobs = make_jobs(_plan(Stage(1, rate_rps=10), Stage(1, connections=3000)))
    assert [job.max_connections for job in jobs] == [3000]
    jobs = make_jobs(_plan(Stage(1, connections=3001), procs=2, max_connections=100))
    assert [job.max_connections for job in jobs] == [1501, 1501]
    jobs = make_jobs(_plan(Stage(1, rate_rps=10), procs=4, max_connections=100))
    assert [job.max_connections for job in jobs] == [25] * 4


def test_fd_limit_problem_counts_the_largest_share_of_one_process() -> None:
    stages = (Stage(1, rate_rps=5000), Stage(1, connections=301))
    assert fd_limit_problem(stages, procs=1, limit=1000) is None
    assert fd_limit_problem(stages, procs=3, limit=101 + FD_HEADROOM) is None
    problem = fd_limit_problem(stages, procs=3, limit=100 + FD_HEADROOM)
    assert problem is not None and problem.startswith("101 connections in one generator")


@pytest.mark.parametrize(("wanted", "limit", "usable"), [(100, 1024, 100), (2048, 1024, 960)])
def test_open_loop_pool_stays_within_the_open_files_limit(
    wanted: int, limit: int, usable: int
) -> None:
    """Past the limit a connect fails with EMFILE and would count as the target's
    connect error; the pool stops below it and requests wait for a connection."""
    assert usable_connections(wanted, limit) == usable
