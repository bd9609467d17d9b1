"""Header and keep-alive timeouts (SPEC §3.4, §8) on a loop whose clock the test moves."""

from __future__ import annotations

from http_fakes import Connection, FakeApp, answer, connect

from lightnode.config.model import ServerLimits
from lightnode.http.protocol import ServerState

LIMITS = ServerLimits(header_timeout_ms=2000, keepalive_timeout_ms=5000)
REQUEST = b"GET /p HTTP/1.1\r\nHost: n\r\n\r\n"


def conn(auto: bool = True) -> Connection:
    return connect(FakeApp(auto=auto), limits=LIMITS)


def test_idle_keep_alive_connection_closes_after_the_timeout() -> None:
    c = conn()
    c.feed(REQUEST)
    c.loop.advance(4.999)
    assert not c.transport.closed
    c.loop.advance(0.002)
    assert c.transport.closed
    assert c.protocol not in c.state.connections


def test_new_data_cancels_the_keep_alive_timer() -> None:
    c = conn()
    c.feed(REQUEST)
    c.loop.advance(4)
    c.feed(REQUEST)
    c.loop.advance(4)
    assert not c.transport.closed
    assert len(c.loop.active_timers()) == 1  # the old timer is cancelled, one runs
    c.loop.advance(1.01)
    assert c.transport.closed


def test_bare_crlfs_do_not_keep_an_idle_connection_open() -> None:
    # llhttp skips CRLFs between messages without starting one: they are no request,
    # and the keep-alive clock runs on from the last answer.
    c = conn()
    c.feed(REQUEST)
    for _ in range(4):
        c.loop.advance(1)
        c.feed(b"\r\n")
    assert not c.transport.closed
    c.loop.advance(1.01)
    assert c.transport.closed
    assert [r.status for r in c.responses()] == [200]


def test_a_request_after_crlfs_restarts_the_keep_alive_clock() -> None:
    c = conn()
    c.feed(REQUEST)
    c.loop.advance(4)
    c.feed(b"\r\n" + REQUEST)
    c.loop.advance(4)
    assert not c.transport.closed
    assert [r.status for r in c.responses()] == [200, 200]
    c.loop.advance(1.01)
    assert c.transport.closed


def test_crlfs_then_a_partial_head_are_held_to_the_header_timeout() -> None:
    c = conn()
    c.feed(REQUEST)
    c.loop.advance(4)
    c.feed(b"\r\nGET /2 HT")  # a request has begun: the header timeout governs
    c.loop.advance(1.5)
    assert not c.transport.closed
    c.loop.advance(0.51)
    assert c.transport.closed


def test_no_keep_alive_timeout_while_an_answer_is_pending() -> None:
    c = conn(auto=False)
    c.feed(REQUEST)
    c.loop.advance(60)
    assert not c.transport.closed
    answer(c.app.exchanges[0])
    c.loop.advance(5.01)
    assert c.transport.closed


def test_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    c = conn()
    c.loop.advance(1.99)
    assert not c.transport.closed
    c.loop.advance(0.02)
    assert c.transport.closed
    assert c.transport.writes == []  # disconnected without an answer


def test_slow_headers_are_disconnected_even_if_bytes_trickle() -> None:
    c = conn()
    c.feed(REQUEST)
    c.loop.advance(1)
    for byte in b"GET /slow HTTP/1.1\r\nHost:":
        c.feed(bytes([byte]))
        c.loop.advance(0.1)  # 25 bytes: 2.5 s in all
    assert c.transport.closed
    assert [r.status for r in c.responses()] == [200]  # the first request was answered


def test_a_request_stalled_behind_a_complete_one_lets_that_one_be_answered_then_closes() -> None:
    # The complete request may have run: its answer is written, the stalled one dropped.
    c = conn(auto=False)
    c.feed(REQUEST + b"GET /2 HT")
    c.loop.advance(2.01)
    assert not c.transport.closed and not c.app.exchanges[0].cancelled
    c.feed(b"TP/1.1\r\n\r\n")  # too late: not read any more
    answer(c.app.exchanges[0])
    (response,) = c.responses()
    assert response.status == 200 and response.header("connection") == "close"
    assert c.transport.closed
    assert [e.path for e in c.app.exchanges] == [b"/p"]


def test_a_body_stalled_behind_a_complete_request_lets_that_one_be_answered_then_closes() -> None:
    c = conn(auto=False)
    c.feed(REQUEST + b"POST /2 HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
    c.loop.advance(LIMITS.header_timeout_ms / 1000 + 0.01)
    assert not c.transport.closed
    answer(c.app.exchanges[0])
    assert [r.status for r in c.responses()] == [200]
    assert c.transport.closed


def test_a_slow_body_that_keeps_coming_is_not_cut() -> None:
    c = conn()
    limit_s = LIMITS.header_timeout_ms / 1000
    c.feed(b"POST /p HTTP/1.1\r\nContent-Length: 4000\r\n\r\n" + b"a" * 1000)
    for _ in range(2):
        c.loop.advance(limit_s * 0.6)
        c.feed(b"b" * 1000)  # over 500 bytes/s
    c.loop.advance(limit_s * 0.6)  # 1.8 x the limit since the head, but bytes keep coming
    assert not c.transport.closed
    c.feed(b"c" * 1000)
    assert len(c.app.exchanges[0].body) == 4000


def test_a_body_dripping_under_the_minimum_rate_is_cut_after_the_header_timeout() -> None:
    """A byte a second would hold the connection for as long as its Content-Length
    allows: 12 days for 1 MB (40 such clients took every slot of max_connections=40)."""
    c = conn()
    limit_s = LIMITS.header_timeout_ms / 1000
    c.feed(b"POST /p HTTP/1.1\r\nContent-Length: 1000000\r\n\r\nx")
    seconds = 0
    while not c.transport.closed and seconds < 10:
        c.feed(b"x")  # progress: the stall limit alone would never cut it
        c.loop.advance(1.0)
        seconds += 1
    assert c.transport.closed and limit_s <= seconds <= limit_s + 1
    assert c.app.exchanges == [] and c.responses() == []  # disconnected, SPEC §3.4


def test_a_body_that_stalls_for_the_header_timeout_is_disconnected() -> None:
    c = conn()
    c.feed(b"POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
    c.loop.advance(LIMITS.header_timeout_ms / 1000 + 0.01)
    assert c.transport.closed
    assert c.app.exchanges == []


def test_whole_requests_arm_no_header_timer() -> None:
    c = conn(auto=False)
    c.feed(REQUEST)
    assert c.loop.active_timers() == []  # connect-time timer cancelled, none armed
    answer(c.app.exchanges[0])
    assert len(c.loop.active_timers()) == 1  # keep-alive only


def test_header_timer_stops_while_we_do_not_read() -> None:
    state = ServerState(LIMITS)
    state.max_pipelined = 1
    c = connect(FakeApp(auto=False), state=state)
    c.feed(REQUEST + b"GET /2 HTTP/1.1\r\n")  # second head partial; reading paused
    assert not c.transport.reading
    c.loop.advance(10)
    assert not c.transport.closed
    answer(c.app.exchanges[0])  # reading resumes: the client gets a fresh header delay
    assert c.transport.reading
    c.loop.advance(1.9)
    assert not c.transport.closed
    c.loop.advance(0.2)
    assert c.transport.closed


def test_draining_idle_connection_closes_without_waiting() -> None:
    c = conn()
    c.state.draining = True
    c.feed(REQUEST)
    assert c.transport.closed


def test_one_keep_alive_timer_serves_many_requests() -> None:
    c = conn()
    for _ in range(20):
        c.feed(REQUEST)
        c.loop.advance(0.5)
    assert len(c.loop.timers) <= 2  # the connect-time header timer and one keep-alive timer
    assert not c.transport.closed


def test_a_client_that_reads_no_answer_for_the_send_timeout_is_disconnected() -> None:
    c = conn()
    c.protocol.pause_writing()  # the kernel's buffer and the transport's are full
    c.loop.advance(c.state.send_timeout_s - 1)
    assert not c.transport.aborted
    c.loop.advance(1.01)
    assert c.transport.aborted and c.transport.closed


def test_a_client_that_reads_slowly_is_not_cut() -> None:
    c = conn()
    for _ in range(5):  # each stall shorter than the limit, five of them longer in all
        c.protocol.pause_writing()
        c.loop.advance(c.state.send_timeout_s * 0.6)
        c.protocol.resume_writing()
    assert not c.transport.aborted and not c.transport.closed


def test_the_send_timeout_holds_after_a_close_with_unsent_data() -> None:
    c = conn(auto=False)
    c.feed(b"GET /p HTTP/1.1\r\nConnection: close\r\n\r\n")
    c.protocol.pause_writing()  # the client reads nothing more
    closes: list[bool] = []
    c.transport.close = lambda: closes.append(True)  # type: ignore[method-assign]  # unsent data: it waits
    answer(c.app.exchanges[0])  # written, then closed
    assert closes and not c.transport.aborted
    c.loop.advance(c.state.send_timeout_s + 0.01)
    assert c.transport.aborted
