"""An operator's stop and start on the same data directory (journey H)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import Node


def test_a_stopped_node_leaves_no_pid_and_a_new_one_starts_on_the_same_data_dir(
    node_factory: Callable[..., Node],
) -> None:
    """After SIGTERM, run/lightnode.pid names no process (a script's `kill $(cat ...)`
    must not reach a reused pid) and run/lightnode.addr is gone; the next node takes both."""
    first = node_factory()
    pid_file = first.data_dir / "run" / "lightnode.pid"
    assert first.proc is not None
    assert pid_file.read_text() == f"{first.proc.pid}\n"
    assert first.stop() == 0
    assert pid_file.read_text() == ""
    assert not (first.data_dir / "run" / "lightnode.addr").exists()
    second: Any = node_factory(first.data_dir)
    assert pid_file.read_text() == f"{second.proc.pid}\n"
