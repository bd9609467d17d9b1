"""GET /metrics through the app: content type, and loopback only when metrics.public is false."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightnode.http.app import METRICS_CONTENT_TYPE, NodeApp
from lightnode.http.exchange import Exchange


class Responder:
    def __init__(self) -> None:
        self.done: list[Exchange] = []

    def exchange_done(self, exchange: Exchange) -> None:
        self.done.append(exchange)


def get_metrics(app: NodeApp, client: str) -> Exchange:
    exchange = Exchange(Responder(), b"GET", b"/metrics", b"", [], b"", client, "rid", True, 0.0)
    app.handle(exchange)
    assert exchange.done
    return exchange


@pytest.mark.parametrize(
    ("public", "client", "status"),
    [
        (True, "203.0.113.9", 200),
        (False, "127.0.0.1", 200),
        (False, "::1", 200),
        (False, "203.0.113.9", 403),
        (False, "", 403),
    ],
)
def test_metrics_access(tmp_path: Path, public: bool, client: str, status: int) -> None:
    app = NodeApp(tmp_path)
    app.metrics_text = lambda: b"lightnode_config_errors_total 0.0\n"
    app.metrics_public = public
    exchange = get_metrics(app, client)
    assert exchange.status == status
    if status == 200:
        assert exchange.content_type == METRICS_CONTENT_TYPE
        assert exchange.response_body.startswith(b"lightnode_")
    else:
        assert json.loads(exchange.response_body)["errorType"] == "Forbidden"


def test_no_metrics_hook_is_404(tmp_path: Path) -> None:
    assert get_metrics(NodeApp(tmp_path), "127.0.0.1").status == 404
