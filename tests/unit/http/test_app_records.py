"""What the app records for the observers (SPEC §10: one query-log line per /run request),
and the answers it gives without a pool: a client gone before its answer (499
ClientGone), a 413 the protocol refused, a GET's params, the drain flag, DSS verbs.

A real NodeApp, Registry and EndpointPool over in-process pipelines (loadtest.hotpath),
with an observer that keeps every RequestRecord.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from http_fakes import RecordingSinkTransport, connect_beside

from lightnode.http.app import NodeApp, RequestRecord
from lightnode.http.exchange import Exchange
from lightnode.http.protocol import HttpProtocol
from lightnode.scheduler.scheduler import EndpointPool
from loadtest import hotpath

_CALL = b"POST /public/api/v1/bench/add/run HTTP/1.1\r\nHost: n\r\nContent-Length: %d\r\n\r\n%s"


class Records:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def observe(self, record: RequestRecord) -> None:
        self.records.append(record)

    def statuses(self) -> list[tuple[int, str | None]]:
        return [(r.status, r.error_type) for r in self.records]


class Setup:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(hotpath.QueueingWorker, "instances", [])
        first, _, self.loop = hotpath.build(tmp_path, observers=False, worker=hotpath.QueueingWorker, pool_size=1)
        app = first._app
        assert isinstance(app, NodeApp) and app.registry is not None
        self.app = app
        self.records = Records()
        app.observers.append(self.records)
        self.pool: EndpointPool = app.registry.resolve("bench", "add")
        (self.worker,) = hotpath.QueueingWorker.instances
        self._first = first

    def connect(self) -> tuple[HttpProtocol, RecordingSinkTransport]:
        return connect_beside(self._first)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    built = Setup(tmp_path, monkeypatch)
    yield built
    built.loop.close()


def test_a_call_cancelled_while_queued_by_a_reset_is_recorded_as_client_gone(setup: Setup) -> None:
    holder, _ = setup.connect()
    holder.data_received(_CALL % (2, b"{}"))  # holds the one pipeline
    protocol, transport = setup.connect()
    protocol.data_received(_CALL % (7, b'{"a":1}'))
    assert setup.pool.snapshot().queue_length == 1
    protocol.connection_lost(ConnectionResetError())
    assert setup.pool.snapshot().queue_length == 0
    (record,) = setup.records.records
    assert (record.status, record.error_type) == (499, "ClientGone")
    assert (record.service_id, record.endpoint_id, record.generation) == ("bench", "add", "v1")
    assert record.execution_us == 0 and record.function_us == 0
    assert record.total_us >= record.wait_us >= 0 and record.params == b'{"a":1}'
    assert transport.data == b""
    assert setup.worker.answer_one()  # the holder's call: recorded as itself, nothing more
    assert setup.records.statuses() == [(499, "ClientGone"), (200, None)]


def test_a_call_cancelled_while_queued_by_a_close_is_recorded_as_client_gone(setup: Setup) -> None:
    holder, _ = setup.connect()
    holder.data_received(_CALL % (2, b"{}"))
    protocol, transport = setup.connect()
    protocol.data_received(_CALL % (1, b"1") + _CALL % (1, b"2"))
    assert protocol.eof_received() is False
    assert setup.records.statuses() == [(499, "ClientGone"), (499, "ClientGone")]
    assert [r.params for r in setup.records.records] == [b"1", b"2"]
    assert transport.data == b"" and transport.closed


def test_a_call_whose_client_reset_while_it_ran_is_recorded_once_as_client_gone(setup: Setup) -> None:
    protocol, transport = setup.connect()
    protocol.data_received(_CALL % (2, b"{}"))
    (call,) = setup.pool.calls.values()
    assert call.worker_id  # running
    protocol.connection_lost(ConnectionResetError())
    assert setup.records.statuses() == [(499, "ClientGone")]
    assert setup.worker.answer_one()  # it finishes: no answer, no second record
    assert setup.records.statuses() == [(499, "ClientGone")]
    assert transport.data == b""
    assert setup.pool.snapshot().served_total == 1  # the pipeline did run it


def test_a_call_whose_client_half_closed_while_it_ran_is_answered_and_recorded_200(setup: Setup) -> None:
    protocol, transport = setup.connect()
    protocol.data_received(_CALL % (2, b"{}"))
    assert protocol.eof_received() is True
    assert setup.records.records == []
    assert setup.worker.answer_one()
    assert transport.data.startswith(b"HTTP/1.1 200")
    assert setup.records.statuses() == [(200, None)]


def test_pipelined_calls_held_back_are_recorded_once_when_the_client_resets(setup: Setup) -> None:
    # Beyond the pipelining window the protocol holds requests back, unseen by the app:
    # a reset still leaves one record per /run request, each as 499 ClientGone.
    protocol, transport = setup.connect()
    protocol._state.max_pipelined = 2
    protocol.data_received(b"".join(_CALL % (1, b"%d" % n) for n in range(5)))
    assert len(setup.pool.calls) == 2  # one runs, one waits; three held back
    protocol.connection_lost(ConnectionResetError())
    assert setup.records.statuses() == [(499, "ClientGone")] * 5
    assert sorted(r.params for r in setup.records.records) == [b"0", b"1", b"2", b"3", b"4"]
    assert {(r.service_id, r.endpoint_id) for r in setup.records.records} == {("bench", "add")}
    assert setup.worker.answer_one()  # the call that ran: no answer, no second record
    assert len(setup.records.records) == 5 and transport.data == b""


def test_a_413_on_a_run_path_is_recorded_with_its_ids(setup: Setup) -> None:
    protocol, transport = setup.connect()
    big = protocol._max_body + 1
    protocol.data_received(
        b"POST /public/api/v1/bench/add/run HTTP/1.1\r\nHost: n\r\nX-Request-Id: big-1\r\n"
        b"Content-Length: %d\r\n\r\n{" % big
    )
    assert transport.data.startswith(b"HTTP/1.1 413")
    (record,) = setup.records.records
    assert (record.status, record.error_type) == (413, "PayloadTooLarge")
    assert (record.service_id, record.endpoint_id, record.generation) == ("bench", "add", "")
    assert record.request_id == "big-1" and record.params == b""


def test_a_chunked_413_on_a_run_path_is_recorded(setup: Setup) -> None:
    protocol, transport = setup.connect()
    size = protocol._max_body + 1
    protocol.data_received(
        b"POST /public/api/v1/bench/add/run HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % size + b"x" * size + b"\r\n0\r\n\r\n"
    )
    assert transport.data.startswith(b"HTTP/1.1 413")
    assert setup.records.statuses() == [(413, "PayloadTooLarge")]


@pytest.mark.parametrize("path", [b"/admin/api/services", b"/nowhere", b"/public/api/v1/../add/run"])
def test_a_413_elsewhere_is_not_a_run_request(setup: Setup, path: bytes) -> None:
    protocol, transport = setup.connect()
    protocol.data_received(
        b"POST %s HTTP/1.1\r\nHost: n\r\nContent-Length: %d\r\n\r\n" % (path, protocol._max_body + 1)
    )
    assert transport.data.startswith(b"HTTP/1.1 413")
    assert setup.records.records == []


def test_a_refused_get_run_logs_the_params_of_its_query(setup: Setup) -> None:
    protocol, transport = setup.connect()
    setup.app.registry.services["bench"].public = False  # type: ignore[union-attr]
    protocol.data_received(b"GET /public/api/v1/bench/add/run?a=1&b=x HTTP/1.1\r\nHost: n\r\n\r\n")
    assert transport.data.startswith(b"HTTP/1.1 401")
    (record,) = setup.records.records
    assert (record.status, record.error_type) == (401, "Unauthorized")
    assert record.params == b'{"a":1,"b":"x"}'


# -------------------------------------------------------------- the drain flag


class Responder:
    def exchange_done(self, exchange: Exchange) -> None: ...


def _ask(app: NodeApp, path: bytes, method: bytes = b"GET") -> Exchange:
    exchange = Exchange(Responder(), method, path, b"", [], b"{}", "127.0.0.1", "r", True, 0.0)
    app.handle(exchange)
    return exchange


def test_isalive_readyz_and_run_read_one_drain_flag(setup: Setup, tmp_path: Path) -> None:
    app = setup.app
    run = b"/public/api/v1/bench/add/run"
    (tmp_path / "not-alive").touch()  # not seen by the node's poll yet: nothing changes
    assert [_ask(app, p).status for p in (b"/isAlive", b"/healthz", b"/readyz")] == [200, 200, 200]
    assert _ask(app, run, b"POST").cancel_token is not None  # accepted: queued behind nothing
    app.not_alive = True  # the poll saw it: everything says so at once
    assert [_ask(app, p).status for p in (b"/isAlive", b"/healthz", b"/readyz")] == [503, 503, 503]
    refused = _ask(app, run, b"POST")
    assert refused.status == 503 and b"ShuttingDown" in refused.response_body
    (tmp_path / "not-alive").unlink()  # not seen yet either
    assert _ask(app, b"/isAlive").status == 503
    app.not_alive = False
    assert [_ask(app, p).status for p in (b"/isAlive", b"/readyz")] == [200, 200]


# ------------------------------------------------------------------- DSS verbs


def test_a_dss_verb_on_a_known_endpoint_says_to_call_run(setup: Setup) -> None:
    answer = _ask(setup.app, b"/public/api/v1/bench/add/predict", b"POST")
    assert answer.status == 404
    assert b'"errorType":"NotFound"' in answer.response_body
    assert b"Endpoint add of service bench is a python-function endpoint:" in answer.response_body
    assert b"call /public/api/v1/bench/add/run" in answer.response_body
    unknown = _ask(setup.app, b"/public/api/v1/bench/nope/query", b"POST")
    assert unknown.status == 404 and b"Not found: /public/api/v1/bench/nope/query" in unknown.response_body
    assert setup.records.records == []  # not /run requests: no query-log line
