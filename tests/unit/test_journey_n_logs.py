"""Journey N: the server log of a node whose config/ and services/ change often (deploys, tuning)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from lightnode.config.model import LoggingSettings
from lightnode.observe.logsetup import setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
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


def test_file_event_batches_are_not_logged_at_info(restore_logging: None) -> None:
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


def test_debug_level_shows_them(restore_logging: None) -> None:
    stream = io.StringIO()
    setup_logging(LoggingSettings(level="info"), None, stream=stream)
    setup_logging(LoggingSettings(level="debug"), None, stream=stream)
    logging.getLogger("watchfiles.main").info("4 changes detected")
    assert "changes detected" in stream.getvalue()
