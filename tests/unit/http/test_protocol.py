"""HttpProtocol with a fake transport and app: requests, keep-alive, pipelining,
cancellation, app failures, flow control and draining (SPEC §3.3, §4 rule 9, §11)."""

from __future__ import annotations

import asyncio
import time

import pytest
from http_fakes import FakeApp, answer, connect

from lightnode.config.model import ServerLimits
from lightnode.http.exchange import Exchange
from lightnode.http.protocol import (
    _ORDINARY,
    _SPECIAL_HEADERS,
    _SPECIAL_LENGTHS,
    ServerState,
    _decimal,
    client_request_id,
    new_request_id,
)

GET = b"GET /public/api/v1/ping?a=1&b=x HTTP/1.1\r\nHost: node\r\nUser-Agent: t\r\n\r\n"


def req(path: str = "/p", extra: bytes = b"", method: bytes = b"GET", body: bytes = b"") -> bytes:
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return (
        method
        + b" "
        + path.encode()
        + b" HTTP/1.1\r\nHost: n\r\n"
        + length
        + extra
        + b"\r\n"
        + body
    )


def test_simple_get_builds_the_exchange() -> None:
    c = connect()
    before = time.monotonic()
    c.feed(GET)
    after = time.monotonic()
    (ex,) = c.app.exchanges
    assert ex.method == b"GET"
    assert ex.path == b"/public/api/v1/ping"
    assert ex.query == b"a=1&b=x"
    assert ex.headers == [(b"Host", b"node"), (b"User-Agent", b"t")]  # as received
    assert (ex.header(b"host"), ex.header(b"user-agent"), ex.header(b"accept")) == (b"node", b"t", None)
    assert ex.body == b""
    assert ex.client == "127.0.0.1"
    assert ex.keep_alive is True
    assert before <= ex.started <= after  # stamped with time.monotonic() on completion
    (response,) = c.responses()
    assert response.status == 200
    assert response.header("x-request-id") == ex.request_id
    assert response.header("connection") is None
    assert not c.transport.closed


def test_post_with_content_length_body() -> None:
    c = connect()
    c.feed(b'POST /run HTTP/1.1\r\nContent-Length: 7\r\n\r\n{"a":1}')
    (ex,) = c.app.exchanges
    assert (ex.method, ex.body) == (b"POST", b'{"a":1}')
    assert c.responses()[0].json()["body"] == '{"a":1}'


def test_chunked_body_is_joined() -> None:
    c = connect()
    c.feed(
        b"POST /run HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3\r\n{"a\r\n4\r\n":1}\r\n0\r\nX-Checksum: 1\r\n\r\n'
    )
    (ex,) = c.app.exchanges
    assert ex.body == b'{"a":1}'
    assert (b"x-checksum", b"1") not in ex.headers  # trailers are not headers


def test_fragment_and_absolute_target() -> None:
    c = connect()
    c.feed(req("/a/b?q=1#frag") + req("http://example.com:80/x/y?z=2") + req("http://example.com"))
    assert [(e.path, e.query) for e in c.app.exchanges] == [
        (b"/a/b", b"q=1"),
        (b"/x/y", b"z=2"),
        (b"/", b""),
    ]


def test_keep_alive_serves_several_requests() -> None:
    c = connect()
    for i in range(3):
        c.feed(req(f"/r{i}"))
    assert [r.json()["path"] for r in c.responses()] == ["/r0", "/r1", "/r2"]
    assert not c.transport.closed


def test_client_request_id_is_echoed_only_when_sane() -> None:
    c = connect()
    c.feed(req(extra=b"X-Request-Id: abc-123_XYZ\r\n"))
    c.feed(req(extra=b"X-Request-Id: has space\r\n"))
    c.feed(req(extra=b"X-Request-Id: " + b"a" * 129 + b"\r\n"))
    c.feed(req(extra=b"X-Request-Id: " + b"a" * 128 + b"\r\n"))
    c.feed(req(extra=b"X-Request-Id: caf\xc3\xa9\r\n"))
    ids = [r.header("x-request-id") for r in c.responses()]
    assert ids[0] == "abc-123_XYZ"
    assert ids[3] == "a" * 128
    generated = [ids[1], ids[2], ids[4]]
    assert len(set(generated)) == 3
    assert all(i and " " not in i and len(i) <= 128 for i in generated)


def test_request_id_helpers() -> None:
    assert client_request_id(b"x") == "x"
    assert client_request_id(b"") is None
    assert client_request_id(b"a\tb") is None
    assert client_request_id(b"a\x7fb") is None
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000


def test_pipelined_answers_are_written_in_request_order() -> None:
    c = connect(FakeApp(auto=False))
    c.feed(req("/1") + req("/2") + req("/3"))
    first, second, third = c.app.exchanges
    answer(third)
    assert c.transport.writes == []  # held until the ones before are answered
    answer(first)
    assert len(c.transport.writes) == 1
    answer(second)
    assert len(c.transport.writes) == 2  # /2 and the held /3 in one write
    assert [r.json()["path"] for r in c.responses()] == ["/1", "/2", "/3"]


def test_pipelined_synchronous_answers_use_one_write() -> None:
    c = connect()
    c.feed(req("/1") + req("/2") + req("/3") + req("/4"))
    assert len(c.transport.writes) == 1
    assert [r.json()["path"] for r in c.responses()] == ["/1", "/2", "/3", "/4"]


def test_connection_close_request_closes_and_ignores_later_bytes() -> None:
    c = connect()
    c.feed(req("/1", b"Connection: close\r\n") + req("/2"))
    assert [e.path for e in c.app.exchanges] == [b"/1"]
    (response,) = c.responses()
    assert response.header("connection") == "close"
    assert c.transport.closed


def test_answer_with_close_cancels_later_pending_requests() -> None:
    c = connect(FakeApp(auto=False))
    c.feed(req("/1") + req("/2") + req("/3"))
    cancelled: list[bytes] = []
    for ex in c.app.exchanges:
        ex.on_cancel = lambda _token, ex=ex: cancelled.append(ex.path)
    answer(c.app.exchanges[2])
    answer(c.app.exchanges[0], close=True)
    assert c.transport.closed
    assert cancelled == [b"/2"]  # /3 was answered already, /1 is the closing one
    assert [r.status for r in c.responses()] == [200]
    answer(c.app.exchanges[1])  # too late: ignored
    c.loop.run_soon()
    assert len(c.responses()) == 1
    assert c.protocol not in c.state.connections


def test_http10_without_keep_alive_closes() -> None:
    c = connect()
    c.feed(b"GET /old HTTP/1.0\r\n\r\n")
    (ex,) = c.app.exchanges
    assert ex.keep_alive is False
    assert c.responses()[0].header("connection") == "close"
    assert c.transport.closed


def test_http10_keep_alive_says_so() -> None:
    c = connect()
    c.feed(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    c.feed(b"GET /old2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    responses = c.responses()
    assert [r.header("connection") for r in responses] == ["keep-alive", "keep-alive"]
    assert not c.transport.closed


def test_head_answer_has_no_body() -> None:
    c = connect()
    c.feed(req("/h", method=b"HEAD") + req("/g"))
    data = c.transport.data
    first, _, rest = data.partition(b"\r\n\r\n")
    assert b"content-length: " in first and rest.startswith(b"HTTP/1.1 200")


def test_client_gone_cancels_pending_exchanges() -> None:
    c = connect(FakeApp(auto=False))
    c.feed(req("/1") + req("/2"))
    fired: list[bytes] = []
    for ex in c.app.exchanges:
        ex.on_cancel = lambda _token, ex=ex: fired.append(ex.path)
    answer(c.app.exchanges[1])  # answered but not yet written (waits for /1)
    c.lose()
    assert all(ex.cancelled or ex.done for ex in c.app.exchanges)
    assert c.app.exchanges[0].cancelled
    assert fired == [b"/1"]
    answer(c.app.exchanges[0])  # ignored after cancel
    assert c.transport.writes == []
    assert c.protocol not in c.state.connections


def test_on_cancel_raising_does_not_stop_other_cancels() -> None:
    c = connect(FakeApp(auto=False))
    c.feed(req("/1") + req("/2"))

    def boom(_token: object) -> None:
        raise RuntimeError("bad callback")

    c.app.exchanges[0].on_cancel = boom
    c.lose()
    assert c.app.exchanges[1].cancelled


def test_app_raising_gives_500_and_keeps_the_connection() -> None:
    c = connect(FakeApp(auto=False, raises=True))
    c.feed(req("/1"))
    (response,) = c.responses()
    assert response.status == 500
    assert response.json()["errorType"] == "InternalError"
    assert not c.transport.closed
    c.app.raises = False
    c.app.auto = True
    c.feed(req("/2"))
    assert [r.status for r in c.responses()] == [500, 200]


def test_app_raising_after_answering_keeps_its_answer() -> None:
    c = connect(FakeApp(auto=True, raises=True))
    c.feed(req("/1"))
    assert [r.status for r in c.responses()] == [200]


def test_bad_answer_header_becomes_500() -> None:
    c = connect(FakeApp(auto=False))
    c.feed(req("/1"))
    c.app.exchanges[0].respond(200, b"{}", [("x-bad", "a\r\nInjected: 1")])
    (response,) = c.responses()
    assert response.status == 500 and response.header("injected") is None


def test_pipelining_limit_pauses_and_resumes_reading() -> None:
    state = ServerState(ServerLimits())
    state.max_pipelined = 3
    c = connect(FakeApp(auto=False), state=state)
    c.feed(req("/1") + req("/2"))
    assert c.transport.reading
    c.feed(req("/3"))
    assert not c.transport.reading
    answer(c.app.exchanges[0])
    assert c.transport.reading
    assert (c.transport.pause_calls, c.transport.resume_calls) == (1, 1)


def test_write_flow_control_pauses_reading_idempotently() -> None:
    c = connect()
    c.protocol.pause_writing()
    c.protocol.pause_reading()  # already paused: no second transport call
    assert c.transport.pause_calls == 1 and not c.transport.reading
    c.protocol.resume_writing()
    c.protocol.resume_reading()
    assert c.transport.resume_calls == 1 and c.transport.reading


def test_write_pause_holds_reading_even_when_pipeline_drains() -> None:
    state = ServerState(ServerLimits())
    state.max_pipelined = 1
    c = connect(FakeApp(auto=False), state=state)
    c.feed(req("/1"))
    c.protocol.pause_writing()
    answer(c.app.exchanges[0])
    assert not c.transport.reading
    c.protocol.resume_writing()
    assert c.transport.reading


def test_client_eof_cancels_waiting_requests_and_answers_running_ones() -> None:
    # SPEC §4 rule 9: a client whose connection is closed is gone, FIN as RST. What
    # still waits is cancelled (a queued call leaves the queue); what the app handed on
    # (a running call) is answered if the socket takes it, and the last answer closes.
    c = connect(FakeApp(auto=False))
    c.feed(req("/1") + req("/2") + req("/3") + req("/4"))
    c.app.running.add(b"/2")
    fired: list[bytes] = []
    for ex in c.app.exchanges:
        ex.on_cancel = lambda _token, ex=ex: fired.append(ex.path)
    answer(c.app.exchanges[3])  # answered, not yet written (waits for /1.. /3)
    assert c.protocol.eof_received() is True
    assert c.app.closed_before_answer == [b"/1", b"/2", b"/3"]  # /4 was answered already
    assert fired == [b"/1", b"/3"]
    assert [ex.cancelled for ex in c.app.exchanges] == [True, False, True, False]
    assert not c.transport.closed and c.responses() == []
    answer(c.app.exchanges[2])  # too late: ignored
    answer(c.app.exchanges[1])
    responses = c.responses()
    assert [r.json()["path"] for r in responses] == ["/2", "/4"]
    assert [r.header("connection") for r in responses] == [None, "close"]
    assert c.transport.closed


def test_client_eof_with_only_waiting_requests_closes_at_once() -> None:
    c = connect(FakeApp(auto=False))
    c.feed(req("/1") + req("/2"))
    c.eof()
    assert [ex.cancelled for ex in c.app.exchanges] == [True, True]
    assert c.transport.closed and c.responses() == []
    assert c.protocol not in c.state.connections


def test_client_eof_writes_an_answer_done_behind_a_cancelled_one_and_closes() -> None:
    c = connect(FakeApp(auto=False))
    c.feed(req("/1") + req("/2"))
    answer(c.app.exchanges[1])
    c.eof()
    assert [ex.cancelled for ex in c.app.exchanges] == [True, False]
    assert [(r.json()["path"], r.header("connection")) for r in c.responses()] == [("/2", "close")]
    assert c.transport.closed


def test_client_eof_writes_answers_already_done() -> None:
    c = connect(FakeApp(auto=False))
    c.feed(req("/1") + req("/2"))
    c.app.running.add(b"/1")
    answer(c.app.exchanges[1])
    c.eof()
    assert not c.transport.closed and c.app.exchanges[1].done
    answer(c.app.exchanges[0])
    assert [(r.json()["path"], r.header("connection")) for r in c.responses()] == [
        ("/1", None), ("/2", "close")
    ]
    assert c.transport.closed


def test_an_exchange_given_up_after_the_eof_no_longer_holds_the_answers_behind_it() -> None:
    # A staged call of a client that closed its side, taken back from its pipeline: the
    # app gives it up (never answered); the answer behind it is written, and the last closes.
    c = connect(FakeApp(auto=False))
    c.feed(req("/1") + req("/2") + req("/3"))
    c.app.running.update({b"/1", b"/2", b"/3"})  # all handed on: none cancelled at the EOF
    c.eof()
    answer(c.app.exchanges[1])
    assert c.responses() == [] and not c.transport.closed
    c.app.exchanges[0].give_up()
    assert c.app.exchanges[0].cancelled
    assert [r.json()["path"] for r in c.responses()] == ["/2"] and not c.transport.closed
    c.app.exchanges[2].give_up()  # the last: nothing pending, the connection closes
    assert c.transport.closed


class ClosingApp(FakeApp):
    """Answers every request as a draining node does: 503 ShuttingDown, Connection: close."""

    def handle(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)
        exchange.respond(503, b'{"errorType":"ShuttingDown"}', close=True)


@pytest.mark.parametrize("count", [5, 200])  # 200: beyond the pipelining window, some held
def test_requests_pipelined_behind_an_answer_that_closes_are_not_taken(count: int) -> None:
    # SPEC §11: a new request on an open connection gets 503 ShuttingDown and
    # `Connection: close`. What was pipelined behind it was handed to the app too, each
    # answered and recorded 503 (never sent), and those held back recorded 499 ClientGone.
    c = connect(ClosingApp())
    c.feed(b"".join(req(f"/{i}") for i in range(count)))
    assert [ex.path for ex in c.app.exchanges] == [b"/0"]
    assert [(r.status, r.header("connection")) for r in c.responses()] == [(503, "close")]
    assert c.transport.closed
    assert c.app.refusals == []  # none recorded as gone: the node closed, not the client


def test_half_close_when_idle_closes() -> None:
    c = connect()
    c.feed(req("/1"))
    c.eof()
    assert c.transport.closed


def test_max_connections() -> None:
    state = ServerState(ServerLimits(max_connections=2))
    first = connect(state=state)
    second = connect(state=state)
    third = connect(state=state)
    (refused,) = third.responses()
    assert refused.status == 503
    assert refused.json()["errorType"] == "TooManyConnections"
    assert refused.header("connection") == "close"
    assert third.transport.closed
    third.loop.run_soon()
    assert state.connections == {first.protocol, second.protocol}
    first.feed(req("/still"))
    assert first.responses()[0].status == 200
    first.transport.close()
    first.loop.run_soon()
    assert connect(state=state).transport.writes == []  # room again


def test_draining_closes_idle_connections_now_and_busy_ones_after_their_answer() -> None:
    state = ServerState(ServerLimits())
    idle = connect(state=state)
    idle.feed(req("/1"))
    busy = connect(FakeApp(auto=False), state=state)
    busy.feed(req("/2"))
    partial = connect(state=state)
    partial.feed(b"GET /3 HTTP/1.1\r\nHo")
    state.draining = True
    state.close_idle_connections()
    assert idle.transport.closed
    assert not busy.transport.closed and not partial.transport.closed
    answer(busy.app.exchanges[0])  # a keep-alive answer, but the node drains
    assert busy.transport.closed
    assert [(r.status, r.header("connection")) for r in busy.responses()] == [(200, "close")]
    partial.feed(b"st: n\r\n\r\n")
    assert partial.transport.closed
    assert partial.responses()[-1].header("connection") == "close"


def test_draining_keeps_the_connection_until_pipelined_requests_are_answered() -> None:
    # SPEC §11: accepted requests are answered; the last answer says it closes, so a
    # keep-alive client does not send its next request on a connection about to close.
    state = ServerState(ServerLimits())
    c = connect(FakeApp(auto=False), state=state)
    c.feed(req("/1") + req("/2") + req("/3"))
    state.draining = True
    state.close_idle_connections()
    answer(c.app.exchanges[0])
    answer(c.app.exchanges[2])
    assert not c.transport.closed
    assert [r.header("connection") for r in c.responses()] == [None]
    answer(c.app.exchanges[1])
    responses = c.responses()
    assert [r.json()["path"] for r in responses] == ["/1", "/2", "/3"]
    assert [r.header("connection") for r in responses] == [None, None, "close"]
    assert c.transport.closed


def test_draining_answer_with_a_request_being_read_keeps_the_connection() -> None:
    state = ServerState(ServerLimits())
    c = connect(FakeApp(auto=False), state=state)
    c.feed(req("/1") + b"GET /2 HTTP/1.1\r\nHo")
    state.draining = True
    answer(c.app.exchanges[0])
    assert not c.transport.closed
    assert c.responses()[0].header("connection") is None
    c.feed(b"st: n\r\n\r\n")  # answered by the app (a real node: 503 ShuttingDown)
    answer(c.app.exchanges[1])
    assert c.responses()[-1].header("connection") == "close"
    assert c.transport.closed


def test_wait_closed_and_abort_all() -> None:
    async def scenario() -> None:
        state = ServerState(ServerLimits())
        c = connect(FakeApp(auto=False), state=state)
        c.feed(req("/1"))
        waiter = asyncio.ensure_future(state.wait_closed())
        await asyncio.sleep(0)
        assert not waiter.done()
        state.abort_all()
        assert c.transport.aborted
        c.loop.run_soon()
        await asyncio.wait_for(waiter, 1)
        assert c.app.exchanges[0].cancelled

    asyncio.run(scenario())


@pytest.mark.parametrize("peer", [None, "/tmp/sock", ()])
def test_unknown_peer_gives_empty_client(peer: object) -> None:
    c = connect(peer=peer)
    c.feed(req("/x"))
    assert c.app.exchanges[-1].client == ""


def test_header_values_lose_trailing_whitespace() -> None:
    c = connect()
    c.feed(req(extra=b"X-Request-Id: rid-7 \t \r\nX-Other:   v  \r\n"))
    (ex,) = c.app.exchanges
    assert ex.request_id == "rid-7"
    assert ex.header(b"x-other") == b"v"


def test_http10_keep_alive_request_answered_with_close() -> None:
    c = connect(FakeApp(auto=False))
    c.feed(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    answer(c.app.exchanges[0], close=True)
    (response,) = c.responses()
    assert response.headers.count(("connection", "close")) == 1
    assert response.header("connection") == "close"
    assert c.transport.closed


def test_special_headers_are_found_in_any_spelling_and_values_lose_trailing_space() -> None:
    c = connect()
    body = b'{"a": 1}'
    c.feed(
        b"POST /p HTTP/1.1\r\nhOsT: node\r\ncOnTeNt-LeNgTh: %d  \r\nx-REQUEST-id: my-id \t\r\n"
        b"Authorization: Basic abc  \r\n\r\n" % len(body) + body
    )
    (ex,) = c.app.exchanges
    assert ex.body == body  # Content-Length read whatever its spelling
    assert ex.request_id == "my-id"
    assert ex.header(b"authorization") == b"Basic abc"
    c.feed(b"GET /p HTTP/1.1\r\nHOST: a\r\nhost: b\r\n\r\n")
    assert c.responses()[-1].status == 400  # a second Host, whatever the spelling


@pytest.mark.parametrize(
    "value",
    [b"0", b"7", b"16", b"0016", b"123456789012345678", b"1234567890123456789", b"99999999999999999999",
     b"12 ", b" 12", b"1_000", b"+5", b"-5", b"", b"1a", b"\xd9\xa3"],
)  # fmt: skip
def test_content_length_digits_read_as_int_does(value: bytes) -> None:
    try:
        expected: int | type[ValueError] = int(value)
    except ValueError:
        expected = ValueError
    try:
        got: int | type[ValueError] = _decimal(value)
    except ValueError:
        got = ValueError
    assert got == expected


@pytest.mark.parametrize(
    ("raw", "http10", "keep_alive"),
    [
        (b"GET /v HTTP/1.1\r\n\r\n", False, True),
        (b"GET /v HTTP/1.1\r\nConnection: close\r\n\r\n", False, False),
        (b"GET /v HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", False, True),
        (b"GET /v HTTP/1.0\r\n\r\n", True, False),
        (b"GET /v HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True, True),
        # llhttp reads Proxy-Connection as Connection: still HTTP/1.0
        (b"GET /v HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n", True, True),
        (b"GET /v HTTP/1.0\r\nPROXY-CONNECTION: Keep-Alive\r\n\r\n", True, True),
    ],
)
def test_http_version_is_read_right_with_and_without_connection_headers(
    raw: bytes, http10: bool, keep_alive: bool
) -> None:
    c = connect()
    c.feed(raw)
    (ex,) = c.app.exchanges
    assert ex.keep_alive is keep_alive
    assert ex.http10_keep_alive is (http10 and keep_alive)
    (response,) = c.responses()
    if http10 and keep_alive:
        assert response.header("connection") == "keep-alive"  # only said to HTTP/1.0
    elif not keep_alive:
        assert response.header("connection") == "close"
    else:
        assert response.header("connection") is None


ORDINARY_HEAD = (
    b"User-Agent: agent-1\r\nAccept: */*\r\nContent-Type: application/json\r\n"
    b"Keep-Alive: timeout=5\r\nCookie: c=1\r\nOrigin: http://o\r\n"
    b"Content-Encoding: identity\r\nuser-agent: agent-2\r\nUSER-AGENT: agent-3\r\n"
)


def test_ordinary_headers_of_a_special_length_are_kept_and_read_as_nothing_else() -> None:
    c = connect()
    body = b'{"a": 1}'
    c.feed(b"POST /p HTTP/1.1\r\nHost: h\r\n" + ORDINARY_HEAD
           + b"Content-Length: %d\r\n\r\n" % len(body) + body)  # fmt: skip
    (ex,) = c.app.exchanges
    assert ex.body == body
    assert ex.keep_alive is True and ex.http10_keep_alive is False
    assert "agent" not in ex.request_id  # none of them was taken for X-Request-ID
    assert ex.header(b"user-agent") == b"agent-1"
    assert ex.header(b"content-type") == b"application/json"
    assert len(ex.headers) == 11


def test_the_ordinary_entries_collide_in_length_with_a_special_header_and_hide_none() -> None:
    ordinary = {name for name, kind in _SPECIAL_HEADERS.items() if kind == _ORDINARY}
    assert ordinary
    for name in ordinary:
        assert len(name) in _SPECIAL_LENGTHS  # otherwise the length test alone skips it
    special = {name.lower() for name, kind in _SPECIAL_HEADERS.items() if kind != _ORDINARY}
    assert not {name.lower() for name in ordinary} & special

