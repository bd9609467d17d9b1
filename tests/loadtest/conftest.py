"""Fixtures for the load-test harness tests: a tiny lightnode-like server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lt_tiny_server import TinyServer


@pytest.fixture
def tiny_server() -> Iterator[TinyServer]:
    """Answers the success envelope; every 10th /run request gets 503 QueueFull."""
    server = TinyServer(reject_every=10)
    server.start()
    yield server
    server.stop()
