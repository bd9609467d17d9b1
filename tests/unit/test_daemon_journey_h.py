"""The node's pid file over an operator's stop and start (journey H)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lightnode.daemon import PidLock, StartupError


def test_a_stopped_node_leaves_no_pid_in_its_pid_file(tmp_path: Path) -> None:
    """After a stop, a pid file still naming the node's pid would have `kill $(cat ...)`
    (an operator's script, a monitoring check) signal whatever process has reused it."""
    lock = PidLock(tmp_path / "run" / "lightnode.pid")
    lock.acquire()
    assert lock.path.read_text() == f"{os.getpid()}\n"
    lock.release()
    assert lock.path.read_text() == ""


def test_the_pid_file_stays_a_lock_after_a_stop(tmp_path: Path) -> None:
    """Emptied, not removed: a node starting meanwhile may have it open already, and a
    removed file would let a third one lock a new file beside it."""
    first = PidLock(tmp_path / "lightnode.pid")
    first.acquire()
    second = PidLock(tmp_path / "lightnode.pid")
    with pytest.raises(StartupError, match=rf"another lightnode \(pid {os.getpid()}\)"):
        second.acquire()
    first.release()
    second.acquire()
    assert second.path.read_text() == f"{os.getpid()}\n"
    second.release()
