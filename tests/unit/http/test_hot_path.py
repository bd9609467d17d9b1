"""The per-request shortcuts of the HTTP side answer exactly as the general code does:
the /run route cache, the precomputed JSON answer head, the exchange's cancel callback with its token,
and the app wiring a pool's cancel without a closure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from http_fakes import RecordingSinkTransport, connect_beside

from lightnode.http import routing
from lightnode.http.app import NodeApp
from lightnode.http.exchange import Exchange
from lightnode.http.protocol import HttpProtocol
from lightnode.http.responses import STATUS_LINES, render_response
from lightnode.http.routing import BadId, Route, RouteKind, known_route, parse_path
from lightnode.scheduler.scheduler import EndpointPool
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


_CALL = b"POST /public/api/v1/bench/add/run HTTP/1.1\r\nHost: n\r\nContent-Length: %d\r\n\r\n%s"


def _one_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[HttpProtocol, RecordingSinkTransport, Any, EndpointPool]:
    """A real app and pool of one QueueingWorker pipeline, one connection on a recording transport."""
    monkeypatch.setattr(hotpath.QueueingWorker, "instances", [])
    first, _, loop = hotpath.build(tmp_path, observers=False, worker=hotpath.QueueingWorker, pool_size=1)
    protocol, transport = connect_beside(first)
    app = protocol._app
    assert isinstance(app, NodeApp) and app.registry is not None
    return protocol, transport, loop, app.registry.resolve("bench", "add")


def test_client_eof_takes_its_queued_calls_out_and_answers_the_running_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §4 rule 9 for a FIN: a call not yet handed to a pipeline leaves the queue at
    once; the running one finishes and is answered (the socket may still take it),
    with `connection: close`, and the connection closes."""
    protocol, transport, loop, pool = _one_pipeline(tmp_path, monkeypatch)
    try:
        protocol.data_received(b"".join(_CALL % (len(b), b) for b in (b"{}", b"1", b"2", b"3")))
        calls = list(pool.calls.values())
        assert [bool(call.worker_id) for call in calls] == [True, False, False, False]
        assert pool.snapshot().queue_length == 3
        assert protocol.eof_received() is True  # open for the running call's answer
        assert pool.snapshot().queue_length == 0
        assert [call.cancelled for call in calls] == [False, True, True, True]
        assert list(pool.calls.values()) == calls[:1]
        assert not transport.closed
        (worker,) = hotpath.QueueingWorker.instances
        assert worker.answer_one() and not worker.answer_one()  # nothing else was sent to it
        (answer,) = transport.answers()
        assert answer.startswith(b"HTTP/1.1 200") and b"\r\nconnection: close\r\n" in answer
        assert transport.closed and pool.calls == {}
    finally:
        loop.close()


def test_client_eof_with_only_queued_calls_closes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    protocol, transport, loop, pool = _one_pipeline(tmp_path, monkeypatch)
    try:
        other, other_transport = connect_beside(protocol)
        other.data_received(_CALL % (2, b"{}"))  # another client's call holds the pipeline
        protocol.data_received(_CALL % (1, b"1") + _CALL % (1, b"2"))
        assert pool.snapshot().queue_length == 2
        assert protocol.eof_received() is False
        assert transport.closed and transport.data == b""
        assert pool.snapshot().queue_length == 0
        (worker,) = hotpath.QueueingWorker.instances
        assert worker.answer_one() and not worker.answer_one()
        assert other_transport.answers()[0].startswith(b"HTTP/1.1 200")
    finally:
        loop.close()


def test_a_failed_call_while_draining_leaves_the_calls_behind_it_to_be_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §11: accepted requests are answered. A call that fails while the node drains
    does not close its connection while calls pipelined behind it are pending; the last
    answer says `connection: close`."""
    protocol, transport, loop, pool = _one_pipeline(tmp_path, monkeypatch)
    try:
        protocol.data_received(_CALL % (2, b"{}") + _CALL % (1, b"1"))
        app = protocol._app
        assert isinstance(app, NodeApp)
        app.draining = True
        protocol._state.draining = True
        protocol._state.close_idle_connections()
        (worker,) = hotpath.QueueingWorker.instances
        worker.calls.popleft()
        error = b'{"errorType": "FunctionError", "message": "Failed to run function : boom"}'
        frame = hotpath.runtime.encode_frame(hotpath.runtime.ERROR, error, 0)
        for kind, value, body in worker.decoder.feed(frame):
            worker.listener.worker_answered(worker.worker_id, kind, value, body)
        (failed,) = transport.answers()
        assert failed.startswith(b"HTTP/1.1 500") and b"connection: close" not in failed
        assert not transport.closed
        (behind,) = pool.calls.values()
        assert not behind.cancelled
        assert worker.answer_one()
        answers = transport.answers()
        assert len(answers) == 2 and answers[1].startswith(b"HTTP/1.1 200")
        assert b"\r\nconnection: close\r\n" in answers[1]
        assert transport.closed
    finally:
        loop.close()
