"""The node applies each change the config watcher reports on its own (daemon.Node._config_changed)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from lightnode.config.model import EndpointConfig, ServerSettings
from lightnode.config.watch import ServiceFilesChanged, TuningChanged
from lightnode.daemon import DaemonOptions, Node


class _Registry:
    """Records what the node applies; the tuning of endpoint "bad" raises."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, ...]] = []

    def apply_tuning(self, service_id: str, endpoint_id: str, config: EndpointConfig) -> None:
        if endpoint_id == "bad":
            raise RuntimeError("a fault while applying")
        self.applied.append(("tuning", service_id, endpoint_id))

    def service_changed(self, service_id: str) -> None:
        self.applied.append(("service", service_id))


def test_a_change_that_fails_to_apply_does_not_skip_the_others_of_its_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher has moved past the whole batch: a change skipped would wait for the
    next edit of its file, or a SIGHUP."""

    async def scenario() -> tuple[list[tuple[str, ...]], int]:
        node = Node(DaemonOptions(data_dir=tmp_path), ServerSettings())
        registry: Any = _Registry()
        node.registry = registry
        changes = [
            ServiceFilesChanged("s"),
            TuningChanged("s", "bad", EndpointConfig()),
            TuningChanged("s", "good", EndpointConfig()),
        ]
        node._config_changed(changes)
        return registry.applied, node.config_errors_total

    with caplog.at_level(logging.ERROR, logger="lightnode"):
        applied, errors = asyncio.run(scenario())
    # Tuning first (a service reloaded in the same batch starts with it), then the service.
    assert applied == [("tuning", "s", "good"), ("service", "s")]
    assert errors == 1
    assert "applying TuningChanged(service_id='s', endpoint_id='bad'" in caplog.text
