"""Refused requests: body and header limits (SPEC §8), malformed HTTP (SPEC §3.4),
Expect: 100-continue, and the order of refusals behind pipelined requests."""

from __future__ import annotations

import pytest
from http_fakes import Connection, FakeApp, answer, connect

from lightnode.config.model import ServerLimits

LIMITS = ServerLimits(max_body_bytes=100, max_header_bytes=1000)


def small() -> Connection:
    return connect(limits=LIMITS)


def refused_with(c: Connection, status: int, error_type: str) -> None:
    responses = c.responses()
    assert responses, "no answer written"
    last = responses[-1]
    assert last.status == status
    assert last.json()["errorType"] == error_type
    assert last.header("connection") == "close"
    assert c.transport.eof_written or c.transport.closed


def test_content_length_over_limit_is_refused_before_the_body() -> None:
    c = small()
    c.feed(b"POST /run HTTP/1.1\r\nContent-Length: 101\r\n\r\n")
    assert c.app.exchanges == []
    refused_with(c, 413, "PayloadTooLarge")
    c.feed(b"x" * 101)  # the body that follows is discarded, not parsed
    assert c.app.exchanges == [] and len(c.responses()) == 1


def test_content_length_at_limit_is_accepted() -> None:
    c = small()
    c.feed(b"POST /run HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
    assert len(c.app.exchanges[0].body) == 100


@pytest.mark.parametrize("mode", ["whole", "bytes"])
def test_chunked_body_growing_past_the_limit_is_refused(mode: str) -> None:
    c = small()
    chunk = b"32\r\n" + b"y" * 50 + b"\r\n"
    c.feed(b"POST /run HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2, mode)
    assert not c.responses()  # exactly at the limit so far
    c.feed(b"1\r\nz\r\n", mode)
    refused_with(c, 413, "PayloadTooLarge")
    assert c.app.exchanges == []


def test_refusal_lingers_then_closes() -> None:
    c = small()
    c.feed(b"POST /run HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
    assert c.transport.eof_written and not c.transport.closed
    c.feed(b"z" * 1000)
    c.loop.advance(c.state.linger_s)
    assert c.transport.closed


def test_refusal_linger_ends_at_client_eof() -> None:
    c = small()
    c.feed(b"POST /run HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
    c.eof()
    assert c.transport.closed
    assert c.protocol not in c.state.connections


@pytest.mark.parametrize("mode", ["whole", "lines", "bytes"])
def test_many_headers_over_limit_get_431(mode: str) -> None:
    c = small()
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 40) for i in range(30))
    c.feed(b"GET / HTTP/1.1\r\n" + headers + b"\r\n", mode)
    refused_with(c, 431, "HeadersTooLarge")
    assert c.app.exchanges == []


@pytest.mark.parametrize("mode", ["whole", "bytes"])
def test_one_endless_header_gets_431_before_it_ends(mode: str) -> None:
    c = small()
    c.feed(b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 1500, mode)  # no end of line yet
    assert not c.responses()  # raw bytes are refused from twice the limit...
    c.feed(b"b" * 600, mode)
    refused_with(c, 431, "HeadersTooLarge")  # ...before the header ends


@pytest.mark.parametrize("mode", ["whole", "lines", "bytes"])
def test_head_limit_counts_url_and_fields_whatever_the_reads(mode: str) -> None:
    at_limit = small()  # url (1) + name (5) + value (990) + 4 == 1000
    at_limit.feed(b"GET / HTTP/1.1\r\nX-Big:    " + b"b" * 990 + b"\r\n\r\n", mode)
    assert len(at_limit.app.exchanges) == 1  # leading whitespace is not part of the value
    trailing = small()  # the value as received: trailing whitespace counts
    trailing.feed(b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 989 + b"  \r\n\r\n", mode)
    refused_with(trailing, 431, "HeadersTooLarge")
    over = small()
    over.feed(b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 991 + b"\r\n\r\n", mode)
    refused_with(over, 431, "HeadersTooLarge")


def test_long_url_gets_431() -> None:
    c = small()
    c.feed(b"GET /" + b"u" * 1000 + b" HTTP/1.1\r\n\r\n")
    refused_with(c, 431, "HeadersTooLarge")


def test_headers_at_limit_pass() -> None:
    c = small()
    # url (1) + name (5) + value + 4 == 1000
    c.feed(b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 990 + b"\r\n\r\n")
    assert len(c.app.exchanges) == 1


def test_header_limit_is_per_request() -> None:
    c = small()
    one = b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 600 + b"\r\n\r\n"
    c.feed(one * 4)
    c.feed(one[:300])
    c.feed(one[300:])
    assert len(c.app.exchanges) == 5


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET * HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nHost: evil\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_requests_get_400_and_close(raw: bytes) -> None:
    c = connect()
    c.feed(raw)
    refused_with(c, 400, "BadRequest")
    assert c.app.exchanges == []



@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # Asking to be kept alive: the version is read and refused (on_headers_complete).
        (b"GET / HTTP/2.0\r\nConnection: keep-alive\r\n\r\n", b"Unsupported HTTP version 2.0"),
        (b"GET / HTTP/0.9\r\nConnection: keep-alive\r\n\r\n", b"Unsupported HTTP version 0.9"),
        (b"GET / HTTP/2.0\r\nProxy-Connection: keep-alive\r\n\r\n", b"Unsupported HTTP version 2.0"),
        (b"GET / HTTP/0.9\r\n\r\n", b"Unsupported HTTP version 0.9"),
        # on_headers_complete takes a kept-alive request without a Connection header for
        # HTTP/1.1 because llhttp parses no other version that it would keep alive: were
        # a newer llhttp to accept HTTP/1.2, say, these fail instead of serving it as 1.1.
        *((b"GET / HTTP/" + v + b"\r\nHost: h\r\n\r\n", b"HTTP version")
          for v in (b"1.2", b"1.9", b"2.1", b"3.0", b"3.1", b"9.9", b"0.1")),
    ],
)  # fmt: skip
def test_versions_other_than_1_0_and_1_1_are_refused(raw: bytes, message: bytes) -> None:
    c = connect()
    c.feed(raw)
    refused_with(c, 400, "BadRequest")
    assert message in c.responses()[-1].body
    assert c.app.exchanges == []

def test_asterisk_target_is_fine_for_options() -> None:
    c = connect()
    c.feed(b"OPTIONS * HTTP/1.1\r\n\r\n")
    assert c.app.exchanges[0].path == b"*"


def test_requests_before_bad_bytes_are_answered_first() -> None:
    c = connect(FakeApp(auto=False))
    c.feed(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nBROKEN STUFF\r\n\r\n")
    assert [e.path for e in c.app.exchanges] == [b"/1", b"/2"]
    assert c.transport.writes == []
    answer(c.app.exchanges[1])
    answer(c.app.exchanges[0])
    assert [r.status for r in c.responses()] == [200, 200, 400]
    refused_with(c, 400, "BadRequest")


def test_refusal_reuses_the_client_request_id() -> None:
    c = small()
    c.feed(b"POST / HTTP/1.1\r\nX-Request-Id: mine\r\nContent-Length: 999\r\n\r\n")
    assert c.responses()[0].header("x-request-id") == "mine"


def test_upgrade_is_answered_as_a_plain_request_then_closed() -> None:
    c = connect()
    c.feed(b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
    (ex,) = c.app.exchanges
    assert ex.keep_alive is False
    (response,) = c.responses()
    assert response.status == 200 and response.header("connection") == "close"
    assert c.transport.closed


def test_an_upgrade_request_with_a_chunked_body_is_run_with_it() -> None:
    # httptools ends an upgrade request at its head: the protocol reads the body, a
    # chunked one with a fresh parser (test_journey_k_upgrade.py).
    c = connect()
    body = b'd\r\n{"x": "sent"}\r\n0\r\n\r\n'
    c.feed(b"GET /0 HTTP/1.1\r\n\r\nPOST /run HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n" + body)  # fmt: skip
    assert [(e.path, e.body) for e in c.app.exchanges] == [(b"/0", b""), (b"/run", b'{"x": "sent"}')]
    assert [r.status for r in c.responses()] == [200, 200]


def test_trailer_fields_without_end_are_bounded_like_headers() -> None:
    # httptools buffers a trailer field whole; max_body_bytes does not see it.
    c = small()
    c.feed(b"POST /run HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: ")
    sent = 0
    while not c.responses() and sent < 100 * LIMITS.max_header_bytes:
        c.feed(b"a" * 100)
        sent += 100
    refused_with(c, 431, "HeadersTooLarge")
    assert sent <= 2 * LIMITS.max_header_bytes + 100
    assert not c.app.exchanges


def test_a_large_read_that_begins_a_chunked_request_is_not_counted_as_trailers() -> None:
    # A read with the head and a first chunk as long as the previous request's body: no
    # body progress by count, but a new request began in it.
    c = small()
    head = b"POST /run HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    chunked = b"POST /run HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Pad: " + b"p" * 900 + b"\r\n\r\n"
    c.feed(head)
    c.feed(chunked + b"2\r\n{}\r\n" + b"1;" + b"e" * (2 * LIMITS.max_header_bytes) + b"\r\n")
    c.feed(b"x\r\n0\r\n\r\n")
    assert [e.body for e in c.app.exchanges] == [b"{}", b"{}x"]


def test_trailer_fields_within_the_limit_are_accepted() -> None:
    c = small()
    c.feed(b"POST /run HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n")
    for _ in range(10):
        c.feed(b"X-T: " + b"a" * 20 + b"\r\n")
    c.feed(b"\r\n")
    assert [e.body for e in c.app.exchanges] == [b"{}"]


def test_connect_is_answered_then_closed() -> None:
    c = connect()
    c.feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert c.app.exchanges[0].path == b"example.com:443"
    assert c.responses()[0].status == 200
    assert c.transport.closed


def test_expect_continue_within_limits() -> None:
    c = small()
    c.feed(b"POST /run HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert c.transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    assert c.app.exchanges == []
    c.feed(b"{}")
    assert [r.status for r in c.responses()] == [100, 200]


def test_expect_continue_over_limit_gets_413_not_100() -> None:
    c = small()
    c.feed(b"POST /run HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n")
    assert [r.status for r in c.responses()] == [413]


def test_expect_continue_waits_for_earlier_answers() -> None:
    c = connect(FakeApp(auto=False))
    c.feed(
        b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    assert c.transport.writes == []
    answer(c.app.exchanges[0])
    assert [r.status for r in c.responses()] == [200, 100]
    c.feed(b"{}")
    answer(c.app.exchanges[1])
    assert [r.status for r in c.responses()] == [200, 100, 200]


def test_expect_continue_ignored_for_http10() -> None:
    c = connect()
    c.feed(b"POST /run HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert c.transport.writes == []


def test_expect_continue_not_sent_when_the_body_came_with_the_head() -> None:
    c = small()
    c.feed(b"POST /run HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}")
    assert [r.status for r in c.responses()] == [200]


def test_a_body_in_one_byte_chunks_is_kept_in_few_pieces() -> None:
    # Each chunk is one small bytes object: 64 at a time are folded into one.
    c = connect()
    c.feed(b"POST /run HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    data = bytes(range(256)) * 80  # 20,480 chunks of one byte
    c.feed(b"".join(b"1\r\n%c\r\n" % byte for byte in data))
    assert len(c.protocol._body) <= len(data) // 64 + 64
    c.feed(b"0\r\n\r\n")
    assert [e.body for e in c.app.exchanges] == [data]
