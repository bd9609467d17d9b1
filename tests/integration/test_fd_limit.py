"""A node started with a low open-files limit (`ulimit -n 256`, a container's default
1024) raises it toward what limits.max_connections needs, or says so at start.

Found by the security review: with `ulimit -n 128` and 300 connections, clients
were reset with nothing logged, and the config watcher reported a server.json it
could not read (EMFILE) as refused.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Node, until, write_service

pytestmark = pytest.mark.integration


@pytest.fixture
def low_soft_limit() -> Iterator[int]:
    """This process's soft limit lowered to 256 while nodes start (they inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def soft_limit_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open files line")


def test_the_node_raises_its_soft_limit_for_max_connections(
    node_factory: Callable[..., Node], tmp_path: Path, low_soft_limit: int
) -> None:
    if low_soft_limit != resource.RLIM_INFINITY and low_soft_limit < 2000 + 1024:
        pytest.skip(f"hard open files limit {low_soft_limit} too low to raise to")
    data = tmp_path / "data"
    write_service(data, "s", {"e": "def e():\n    return 1\n"})
    (data / "config").mkdir(parents=True, exist_ok=True)
    (data / "config" / "server.json").write_text(json.dumps({"limits": {"max_connections": 2000}}))
    node = node_factory(data)
    assert node.proc is not None
    assert soft_limit_of(node.proc.pid) == 2000 + 1024
    assert node.run("s", "e")[0] == 200
    assert "open files limit" not in node.log()


def test_a_hard_limit_below_max_connections_is_said_at_start(
    node_factory: Callable[..., Node], tmp_path: Path, low_soft_limit: int
) -> None:
    data = tmp_path / "data"
    write_service(data, "s", {"e": "def e():\n    return 1\n"})
    (data / "config").mkdir(parents=True, exist_ok=True)
    wanted = (low_soft_limit if low_soft_limit != resource.RLIM_INFINITY else 1 << 20) * 2
    (data / "config" / "server.json").write_text(json.dumps({"limits": {"max_connections": wanted}}))
    node = node_factory(data)
    until(lambda: "open files limit is" in node.log(), what="the open files warning")
    assert node.run("s", "e")[0] == 200
