"""Server log formats: text and JSON lines, with the request id where one applies."""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightnode.config.model import LoggingSettings
from lightnode.observe.logsetup import request_extra, setup_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    root, library = logging.getLogger(), logging.getLogger("watchfiles")
    handlers, level, library_level = list(root.handlers), root.level, library.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    library.setLevel(library_level)


def emit(log_format: str, logs_dir: Path | None = None) -> str:
    stream = io.StringIO()
    setup_logging(LoggingSettings(format=log_format, level="info"), logs_dir, stream=stream)
    log = logging.getLogger("lightnode.test")
    log.info("plain line")
    log.warning("about a request", extra=request_extra("abc-1"))
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("failed", extra=request_extra("abc-2"))
    log.debug("hidden at info")
    return stream.getvalue()


def test_text_lines_carry_the_request_id(restore_root: None, tmp_path: Path) -> None:
    out = emit("text", tmp_path)
    first, second = out.splitlines()[:2]
    assert first.endswith("INFO lightnode.test: plain line")
    assert second.endswith("WARNING lightnode.test [req abc-1]: about a request")
    assert "[req abc-2]: failed" in out and "Traceback" in out
    assert "hidden" not in out
    assert (tmp_path / "lightnode.log").read_text() == out


def test_json_lines_are_one_object_each(restore_root: None) -> None:
    out = emit("json")
    entries = [json.loads(line) for line in out.splitlines()]
    assert len(entries) == 3
    assert entries[0]["message"] == "plain line" and "requestId" not in entries[0]
    assert entries[0]["level"] == "INFO" and entries[0]["logger"] == "lightnode.test"
    assert entries[0]["time"].endswith("Z") and "T" in entries[0]["time"]
    assert entries[1]["requestId"] == "abc-1"
    assert entries[2]["requestId"] == "abc-2"
    assert "ValueError: boom\nsecond line" in entries[2]["exception"]


def test_json_survives_odd_text(restore_root: None) -> None:
    stream = io.StringIO()
    setup_logging(LoggingSettings(format="json"), None, stream=stream)
    logging.getLogger("x").warning("lone \ud800 surrogate / é")
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "lone \ud800 surrogate / é"


def test_a_removed_or_moved_server_log_is_reopened(restore_root: None, tmp_path: Path) -> None:
    """Like the query log: after `rm logs/lightnode.log` (or logrotate's move) the next
    lines go to a new lightnode.log, not to the old file until the next size rotation,
    which a quiet server log may never reach."""
    setup_logging(LoggingSettings(format="text", level="info"), tmp_path, stream=io.StringIO())
    log = logging.getLogger("lightnode.test")
    path = tmp_path / "lightnode.log"
    log.info("before")
    path.unlink()
    log.info("after rm")
    assert path.exists() and path.read_text().endswith("lightnode.test: after rm\n")
    path.rename(tmp_path / "lightnode.log.old")
    log.info("after mv")
    assert "after mv" in path.read_text() and "after mv" not in (tmp_path / "lightnode.log.old").read_text()
    assert "before" not in path.read_text()


def test_a_removed_logs_directory_is_made_again(restore_root: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`rm -rf logs`: the next line makes it again, and no "--- Logging error ---" per line on stderr."""
    logs = tmp_path / "logs"
    logs.mkdir()
    setup_logging(LoggingSettings(format="text", level="info"), logs, stream=io.StringIO())
    log = logging.getLogger("lightnode.test")
    log.info("before")
    shutil.rmtree(logs)
    log.info("after rm -rf")
    assert (logs / "lightnode.log").read_text().endswith("lightnode.test: after rm -rf\n")
    assert "Logging error" not in capsys.readouterr().err


def test_file_event_batches_are_not_logged_at_info(restore_root: None) -> None:
    """watchfiles logs "N changes detected" at INFO for every batch of file events: a
    line per deploy step and per tuning write (167 in journey N's 40 deploys), saying
    nothing the node's own line about the change does not say better."""
    stream = io.StringIO()
    setup_logging(LoggingSettings(level="info"), None, stream=stream)
    logging.getLogger("watchfiles.main").info("4 changes detected")
    logging.getLogger("watchfiles.main").warning("a watch failed")
    logging.getLogger("lightnode.registry").info("svc25/ep2: tuning applied")
    text = stream.getvalue()
    assert "changes detected" not in text
    assert "a watch failed" in text and "tuning applied" in text


def test_debug_level_shows_them(restore_root: None) -> None:
    stream = io.StringIO()
    setup_logging(LoggingSettings(level="info"), None, stream=stream)
    setup_logging(LoggingSettings(level="debug"), None, stream=stream)
    logging.getLogger("watchfiles.main").info("4 changes detected")
    assert "changes detected" in stream.getvalue()
