"""The node applies each change the config watcher reports on its own (daemon.Node._config_changed),
and hands server.json's observability settings to the app and the query log (Node._install_observers)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from lightnode.config.model import EndpointConfig, LoggingSettings, MetricsSettings, ServerSettings
from lightnode.config.watch import ServiceFilesChanged, TuningChanged
from lightnode.daemon import DaemonOptions, Node
from lightnode.observe.querylog import QueryLog


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

    def all_pools(self) -> list[Any]:
        return []


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


def test_server_json_observability_settings_reach_the_app(tmp_path: Path) -> None:
    """metrics.public false must reach the app (a loopback test cannot see it: loopback is
    always let in), and the query log gets logging's settings; query_log false means none."""
    (tmp_path / "logs").mkdir()
    private = ServerSettings(
        metrics=MetricsSettings(public=False),
        logging=LoggingSettings(log_params=True, query_log_max_bytes=4096, query_log_backups=2),
    )

    async def scenario(settings: ServerSettings) -> tuple[bool, QueryLog | None]:
        node = Node(DaemonOptions(data_dir=tmp_path), settings)
        registry: Any = _Registry()
        node.registry = registry
        node._install_observers()
        assert node.metrics is not None
        node.metrics.close()
        if node.query_log is not None:
            node.query_log.close()
        return node.app.metrics_public, node.query_log

    public, query_log = asyncio.run(scenario(private))
    assert public is False
    assert query_log is not None and query_log.path == tmp_path / "logs" / "queries.log"
    assert (query_log.log_params, query_log.max_bytes, query_log.backups) == (True, 4096, 2)
    public, query_log = asyncio.run(scenario(ServerSettings(logging=LoggingSettings(query_log=False))))
    assert public is True and query_log is None
