"""The server log on a full disk, and after space is freed (journey H)."""

from __future__ import annotations

import errno
import io
import logging
from pathlib import Path

import pytest

from lightnode.observe import logsetup
from lightnode.observe.logsetup import ServerLogHandler, TextFormatter


class _Disk:
    """Makes the handler's file fail as a full disk does, until `full` is set False."""

    def __init__(self, handler: ServerLogHandler, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = True
        real_open = handler._open
        disk = self

        class FullStream(io.StringIO):
            def write(self, text: str) -> int:
                raise OSError(errno.ENOSPC, "No space left on device")

        def opened() -> io.TextIOWrapper:
            if disk.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open()

        monkeypatch.setattr(handler, "_open", opened)
        if handler.stream is not None:
            handler.stream.close()
        handler.stream = FullStream()


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("lightnode.test", logging.WARNING, __file__, 1, message, (), None)


def _handler(tmp_path: Path) -> ServerLogHandler:
    handler = ServerLogHandler(tmp_path / "lightnode.log", maxBytes=1 << 20, backupCount=2)
    handler.setFormatter(TextFormatter())
    return handler


def test_a_full_disk_says_so_once_not_a_traceback_per_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """logging's own report is a traceback of some 40 lines on stderr for every record
    (an auth failure per bad request: the journal grew eight times faster than the log)."""
    handler = _handler(tmp_path)
    handler.emit(_record("before"))
    _Disk(handler, monkeypatch)
    for index in range(100):
        handler.emit(_record(f"lost {index}"))
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    assert err.count("\n") == 1, err
    assert f"cannot write {tmp_path / 'lightnode.log'}: No space left on device" in err
    handler.close()


def test_the_log_says_how_many_lines_it_missed_once_space_is_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = _handler(tmp_path)
    handler.emit(_record("before"))
    disk = _Disk(handler, monkeypatch)
    for index in range(7):
        handler.emit(_record(f"lost {index}"))
    disk.full = False
    handler.emit(_record("after"))
    handler.emit(_record("later"))
    handler.close()
    lines = (tmp_path / "lightnode.log").read_text().splitlines()
    assert len(lines) == 4
    assert lines[0].endswith("before") and lines[2].endswith("after") and lines[3].endswith("later")
    assert "7 lines were not written (No space left on device)" in lines[1]
    assert "WARNING" in lines[1]


def test_a_formatting_fault_is_still_reported_by_logging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the file's OSErrors are summed up: a bad format string is a bug to see."""
    handler = _handler(tmp_path)
    handler.emit(
        logging.LogRecord("lightnode.test", logging.WARNING, __file__, 1, "%d", ("x",), None)
    )
    handler.close()
    assert "Logging error" in capsys.readouterr().err
    assert logsetup.SERVER_LOG == "lightnode.log"


def test_a_line_cut_by_the_full_disk_is_ended_before_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk filled in the middle of a line: the first line once space was freed was
    glued to its beginning ("2026-11-282026-11-28 20:08:16,954 WARNING ...")."""
    handler = _handler(tmp_path)
    handler.emit(_record("before"))
    disk = _Disk(handler, monkeypatch)
    handler.emit(_record("lost"))
    with open(tmp_path / "lightnode.log", "a") as cut:
        cut.write("2026-11-28")  # the part of a line the disk took
    disk.full = False
    handler.emit(_record("after"))
    handler.close()
    lines = (tmp_path / "lightnode.log").read_text().splitlines()
    assert lines[1] == "2026-11-28"
    assert "1 lines were not written" in lines[2] and lines[3].endswith("after")
