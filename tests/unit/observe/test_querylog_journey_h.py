"""The query log under an operator's logrotate (journey H)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from lightnode.observe.querylog import QueryLog
from tests.unit.observe.test_querylog import record


def test_copytruncate_does_not_make_the_next_lines_rotate_early(tmp_path: Path) -> None:
    """logrotate's copytruncate empties queries.log in place: the node's size count must
    follow the file, not rotate the next few lines into queries.log.1 as if it were full
    (shifting the operator's own rotated files and dropping the oldest early)."""
    path = tmp_path / "queries.log"
    qlog = QueryLog(path, loop=None, max_bytes=4000, backups=3)
    for _ in range(10):
        qlog.observe(record())
    qlog.flush()
    assert 2000 < path.stat().st_size < 4000
    shutil.copyfile(path, tmp_path / "queries.log-20261128")  # logrotate's copytruncate
    os.truncate(path, 0)
    for _ in range(10):
        qlog.observe(record())
    qlog.flush()
    qlog.close()
    assert not (tmp_path / "queries.log.1").exists()
    assert len(path.read_bytes().splitlines()) == 10


def test_rotation_by_size_still_happens_after_a_copytruncate(tmp_path: Path) -> None:
    path = tmp_path / "queries.log"
    qlog = QueryLog(path, loop=None, max_bytes=4000, backups=3)
    qlog.observe(record())
    qlog.flush()
    os.truncate(path, 0)
    for _ in range(30):
        qlog.observe(record())
        qlog.flush()
    qlog.close()
    lines = len(path.read_bytes().splitlines()) + len(
        (tmp_path / "queries.log.1").read_bytes().splitlines()
    )
    assert lines == 30
    assert path.stat().st_size <= 4000 and (tmp_path / "queries.log.1").stat().st_size <= 4000


def test_the_server_log_says_how_many_lines_were_dropped_once_the_query_log_writes_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk: the error is logged when lines are first dropped (on the same full
    disk the server log may not take it either); once space is freed, the gap in
    queries.log must be explained in the server log, not left silent."""
    path = tmp_path / "queries.log"
    qlog = QueryLog(path, loop=None, max_bytes=1 << 20, backups=1)
    os.close(qlog._fd)
    qlog._fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    for _ in range(3):
        qlog.observe(record())
        qlog.flush()
    os.close(qlog._fd)
    qlog._fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # space freed
    caplog.clear()
    qlog.observe(record())
    qlog.flush()
    qlog.observe(record())
    qlog.flush()
    qlog.close()
    notes = [r for r in caplog.records if "query log" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.WARNING
    assert f"query log {path}: writing again; 3 lines were dropped" in notes[0].getMessage()
    assert len(path.read_bytes().splitlines()) == 2


def _disk_fills_after(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """os.write takes `room` more bytes, then fails as a full disk does."""
    real_write = os.write
    left = [room]

    def write(fd: int, data: bytes | memoryview) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        taken = real_write(fd, bytes(data[: left[0]]))
        left[0] -= taken
        return taken

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("whole_lines", [0, 1])
def test_a_line_cut_by_a_full_disk_is_not_left_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole_lines: int
) -> None:
    """The disk filled in the middle of a line: its beginning stayed in queries.log and
    the first line written once space was freed was glued to it (one line not JSON)."""
    path = tmp_path / "queries.log"
    qlog = QueryLog(path, loop=None, max_bytes=1 << 20, backups=1)
    qlog.observe(record())
    qlog.flush()
    line_size = path.stat().st_size
    for _ in range(3):
        qlog.observe(record())
    with monkeypatch.context() as patch:
        _disk_fills_after(patch, whole_lines * line_size + 50)
        qlog.flush()
    assert qlog.dropped_lines == 3 - whole_lines
    qlog.observe(record(request_id="after"))
    qlog.flush()
    qlog.close()
    lines = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert len(lines) == 2 + whole_lines
    assert lines[-1]["requestId"] == "after"
