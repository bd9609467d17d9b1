"""The per-request shortcuts of the HTTP side answer exactly as the general code does:
the /run route cache, the precomputed JSON answer head, the exchange's cancel callback with its token,
and the app wiring a pool's cancel without a closure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lightnode.http import routing
from lightnode.http.app import NodeApp
from lightnode.http.exchange import Exchange
from lightnode.http.responses import STATUS_LINES, render_response
from lightnode.http.routing import BadId, Route, RouteKind, known_route, parse_path
from loadtest import hotpath

# ------------------------------------------------------------------ routing


def test_run_routes_are_remembered_once_parsed() -> None:
    path = b"/public/api/v1/hot%2Dsvc/ep/run"
    first = parse_path(path)
    assert first == Route(RouteKind.RUN, "hot-svc", "ep")
    assert known_route(path) is first
    assert parse_path(path) is first
    assert known_route(b"/metrics") == Route(RouteKind.METRICS)


def test_refused_and_unknown_paths_are_never_remembered() -> None:
    for _ in range(2):
        with pytest.raises(BadId):
            parse_path(b"/public/api/v1/../ep/run")
        assert parse_path(b"/public/api/v1/x/ep") is None
    assert known_route(b"/public/api/v1/../ep/run") is None
    assert known_route(b"/public/api/v1/x/ep") is None
    parse_path(b"/admin/api/services")
    assert known_route(b"/admin/api/services") is None


@pytest.mark.parametrize(
    "path", [b"/public/api/v1/run", b"/public/api/v1//run", b"/public/api/v1/x/run", b"/public/api/v1/a/b/c/run"]
)
def test_run_paths_without_two_ids_are_refused(path: bytes) -> None:
    # The first: prefix and suffix overlap (a slice that would start past its end).
    with pytest.raises(BadId, match="expected /public/api/v1/<service>/<endpoint>/run"):
        parse_path(path)


def test_route_cache_is_bounded_and_keeps_the_fixed_routes() -> None:
    fixed = len(routing._FIXED)
    for i in range(routing.RUN_ROUTES_CACHED + 10):
        path = b"/public/api/v1/s%d/ep/run" % i
        assert parse_path(path) == Route(RouteKind.RUN, f"s{i}", "ep")
        assert len(routing._KNOWN) <= fixed + routing.RUN_ROUTES_CACHED
    for path, route in routing._FIXED.items():
        assert known_route(path) is route
    assert parse_path(b"/public/api/v1/s0/ep/run") == Route(RouteKind.RUN, "s0", "ep")


# ---------------------------------------------------------------- responses


def _general(status: int, body: bytes, request_id: str) -> bytes:
    """What render_response wrote before its JSON shortcut (SPEC §3.3 headers)."""
    return (
        STATUS_LINES[status]
        + b"content-type: application/json\r\ndss-apinode-api-version: 1\r\n"
        + b"content-length: %d\r\nx-request-id: %s\r\n\r\n" % (len(body), request_id.encode())
        + body
    )


@pytest.mark.parametrize(
    "status", sorted(s for s in STATUS_LINES if s >= 200 and s not in (204, 304))
)
def test_json_answer_bytes_for_every_status(status: int) -> None:
    body = b'{"result":{"sum":3}}'
    assert render_response(status, body, "rid-7") == _general(status, body, "rid-7")
    assert render_response(status, b"", "r") == _general(status, b"", "r")


def test_positional_and_keyword_calls_render_the_same() -> None:
    for args in (
        (200, b"{}", "r", "application/json", (), False),
        (503, b"{}", "r", "application/json", (("Retry-After", "1"),), True),
        (200, b"x", "r", "text/plain", (), False),
        (204, b"x", "r", "application/json", (), False),
    ):
        status, body, rid, ctype, headers, close = args
        keywords = render_response(
            status, body, request_id=rid, content_type=ctype, headers=headers, close=close
        )
        assert render_response(*args) == keywords


def test_non_ascii_request_id_is_still_refused() -> None:
    with pytest.raises(ValueError):
        render_response(200, b"{}", "r\u00e9")


# ----------------------------------------------------------------- exchange


class Responder:
    def exchange_done(self, exchange: Exchange) -> None: ...


def _exchange() -> Exchange:
    return Exchange(Responder(), b"POST", b"/p", b"", [], b"", "", "r", True, 0.0)


def test_on_cancel_gets_its_token_once() -> None:
    log: list[Any] = []
    exchange = _exchange()
    exchange.on_cancel, exchange.cancel_token = log.append, 42
    exchange.cancel()
    exchange.cancel()
    assert log == [42]
    assert exchange.on_cancel is None and exchange.cancel_token is None


def test_on_cancel_is_not_called_after_the_answer() -> None:
    log: list[Any] = []
    exchange = _exchange()
    exchange.on_cancel, exchange.cancel_token = log.append, 1
    exchange.respond(200, b"{}")
    exchange.cancel()
    assert log == [] and not exchange.cancelled
    assert exchange.on_cancel is None and exchange.cancel_token is None  # no reference kept


# ---------------------------------------------------------------------- app


def test_client_gone_cancels_its_pool_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real pool over pipelines that hold their calls: the app hands the pool's
    cancel to each exchange, so a client that leaves cancels its running and staged calls."""
    monkeypatch.setattr(hotpath.QueueingWorker, "instances", [])
    protocol, transport, loop = hotpath.build(
        tmp_path, observers=False, worker=hotpath.QueueingWorker, pool_size=1
    )
    try:
        protocol.data_received(
            b"POST /public/api/v1/bench/add/run HTTP/1.1\r\nHost: n\r\nContent-Length: 2\r\n\r\n{}"
            b"POST /public/api/v1/bench/add/run HTTP/1.1\r\nHost: n\r\nContent-Length: 1\r\n\r\n1"
        )
        app = protocol._app
        assert isinstance(app, NodeApp) and app.registry is not None
        pool = app.registry.resolve("bench", "add")
        calls = list(pool.calls.values())
        assert [(call.body, call.cancelled) for call in calls] == [(b"{}", False), (b"1", False)]
        protocol.connection_lost(None)
        assert [call.cancelled for call in calls] == [True, True]
        protocol.connection_lost(None)  # a second loss finds nothing left to cancel
        (worker,) = hotpath.QueueingWorker.instances
        written = transport.written
        while worker.answer_one():  # the pipeline finishes them: nobody is answered
            pass
        assert transport.written == written
        assert pool.calls == {}
    finally:
        loop.close()
