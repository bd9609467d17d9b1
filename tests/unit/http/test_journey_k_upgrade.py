"""An `Upgrade` request with a body is served in HTTP/1.1, its body read (RFC 9110 §7.8).

Java's java.net.http.HttpClient (HTTP/2 by default) sends every request of a new
plain-HTTP connection with `Connection: Upgrade, HTTP2-Settings` and `Upgrade: h2c`,
POST bodies included, as does `curl --http2`. A server may ignore the upgrade and
answer in HTTP/1.1; the client then goes on in HTTP/1.1, on the same connection.
httptools ends such a request at its head, so the protocol reads its Content-Length
body itself, and a fresh parser the requests after it.
"""

from __future__ import annotations

import pytest
from http_fakes import FakeApp, connect

from lightnode.config.model import ServerLimits

H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"


def upgrade_post(body: bytes, extra: bytes = b"") -> bytes:
    head = b"POST /public/api/v1/s/e/run HTTP/1.1\r\nHost: n\r\n" + H2C + extra
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize("mode", ["whole", "lines", "bytes"])
def test_an_h2c_upgrade_post_is_run_with_its_body_and_the_connection_goes_on(mode: str) -> None:
    c = connect()
    c.feed(upgrade_post(b'{"a": 1}'), mode)
    (exchange,) = c.app.exchanges
    assert exchange.method == b"POST" and exchange.body == b'{"a": 1}'
    (response,) = c.responses()
    assert response.status == 200 and response.json()["body"] == '{"a": 1}'
    assert response.header("connection") is None and not c.transport.closed
    # Java's client asks again on each request of its connection: each is served.
    c.feed(upgrade_post(b'{"a": 2}') + upgrade_post(b'{"a": 3}') + b"GET /after HTTP/1.1\r\n\r\n", mode)
    assert [e.body for e in c.app.exchanges] == [b'{"a": 1}', b'{"a": 2}', b'{"a": 3}', b""]
    assert [r.status for r in c.responses()] == [200] * 4
    assert not c.transport.closed


@pytest.mark.parametrize("mode", ["whole", "lines", "bytes"])
def test_requests_after_an_h2c_upgrade_without_a_body_are_served(mode: str) -> None:
    c = connect()
    c.feed(b"GET /u HTTP/1.1\r\nHost: n\r\n" + H2C + b"\r\n" + b"GET /x HTTP/1.1\r\n\r\n" * 3, mode)
    assert [e.path for e in c.app.exchanges] == [b"/u", b"/x", b"/x", b"/x"]
    assert [r.status for r in c.responses()] == [200] * 4 and not c.transport.closed


def test_many_h2c_upgrades_in_one_read_are_each_served() -> None:
    # A loop, not recursion, takes each request after an upgrade.
    c = connect(FakeApp())  # answers at once: the pipelining window never fills
    c.feed(upgrade_post(b"{}") * 3000)
    assert len(c.app.exchanges) == 3000 and not c.transport.closed


def test_an_h2c_upgrade_asking_to_close_is_closed_after_its_answer() -> None:
    c = connect()
    c.feed(upgrade_post(b'{"a": 1}', b"Connection: close\r\n") + b"GET /never HTTP/1.1\r\n\r\n")
    assert [e.body for e in c.app.exchanges] == [b'{"a": 1}']
    (response,) = c.responses()
    assert response.header("connection") == "close" and c.transport.closed


def test_garbage_after_an_h2c_upgrade_is_refused_after_its_answer() -> None:
    # HTTP/2 frames sent before any 101 (a faulty client) are malformed HTTP/1.1.
    c = connect()
    c.feed(upgrade_post(b'{"a": 1}') + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04")
    responses = c.responses()
    assert [r.status for r in responses] == [200, 400]
    assert responses[1].json()["errorType"] == "BadRequest" and responses[1].header("connection") == "close"
    assert c.transport.eof_written or c.transport.closed


def test_an_upgrade_post_behind_a_pipelined_request_keeps_the_order() -> None:
    c = connect()
    c.feed(b"GET /0 HTTP/1.1\r\n\r\n" + upgrade_post(b'{"b": 2}') + b"GET /after HTTP/1.1\r\n\r\n")
    assert [(e.path, e.body) for e in c.app.exchanges] == [
        (b"/0", b""),
        (b"/public/api/v1/s/e/run", b'{"b": 2}'),
        (b"/after", b""),
    ]
    assert [r.status for r in c.responses()] == [200, 200, 200]


def test_an_upgrade_post_with_expect_100_continue_gets_its_continue() -> None:
    c = connect()
    request = upgrade_post(b'{"c": 3}', b"Expect: 100-continue\r\n")
    head, body = request[: -len(b'{"c": 3}')], b'{"c": 3}'
    c.feed(head)
    assert c.app.exchanges == []
    assert [r.status for r in c.responses()] == [100]
    c.feed(body)
    assert [e.body for e in c.app.exchanges] == [body]
    assert [r.status for r in c.responses()] == [100, 200]


def test_an_upgrade_post_whose_body_stalls_is_disconnected_unseen() -> None:
    limits = ServerLimits(header_timeout_ms=1000)
    c = connect(limits=limits)
    request = upgrade_post(b'{"d": "' + b"x" * 2000 + b'"}')
    c.feed(request[:-1003])
    c.loop.advance(0.9)
    c.feed(request[-1003:-3])  # progress (over 500 bytes/s): the clock restarts
    c.loop.advance(0.9)
    assert not c.transport.closed
    c.loop.advance(0.2)
    assert c.transport.closed and c.app.exchanges == [] and c.responses() == []


def test_an_upgrade_post_whose_client_closes_mid_body_is_dropped_unseen() -> None:
    c = connect()
    c.feed(upgrade_post(b'{"e": 5}')[:-2])
    c.eof()
    assert c.transport.closed and c.app.exchanges == []


def chunked_upgrade_post(chunks: list[bytes], extra: bytes = b"", trailer: bytes = b"") -> bytes:
    head = b"POST /public/api/v1/s/e/run HTTP/1.1\r\nHost: n\r\n" + H2C + extra
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n" + trailer + b"\r\n"


@pytest.mark.parametrize("mode", ["whole", "lines", "bytes"])
def test_an_h2c_upgrade_post_with_a_chunked_body_is_run_with_it(mode: str) -> None:
    """Java's client streams a body (`BodyPublishers.ofInputStream`) in chunks: it was 400."""
    c = connect()
    request = chunked_upgrade_post([b'{"x": ', b'"sent"}'], trailer=b"X-Checksum: 1\r\n")
    c.feed(request + request + b"GET /after HTTP/1.1\r\n\r\n", mode)
    assert [(e.path, e.body) for e in c.app.exchanges] == [
        (b"/public/api/v1/s/e/run", b'{"x": "sent"}'),
        (b"/public/api/v1/s/e/run", b'{"x": "sent"}'),
        (b"/after", b""),
    ]
    assert [r.status for r in c.responses()] == [200] * 3 and not c.transport.closed
    assert c.app.exchanges[0].header(b"x-checksum") is None  # trailers are dropped


def test_a_chunked_upgrade_body_arriving_in_pieces_is_awaited() -> None:
    c = connect()
    request = chunked_upgrade_post([b'{"y": 1}'], b"Expect: 100-continue\r\n")
    head, body = request.split(b"\r\n\r\n", 1)
    c.feed(head + b"\r\n\r\n")
    assert c.app.exchanges == [] and [r.status for r in c.responses()] == [100]
    c.feed(body[:5])
    assert c.app.exchanges == []
    c.feed(body[5:])
    assert [e.body for e in c.app.exchanges] == [b'{"y": 1}']
    assert [r.status for r in c.responses()] == [100, 200]


def test_a_chunked_upgrade_body_over_the_limit_is_refused() -> None:
    c = connect(limits=ServerLimits(max_body_bytes=64))
    c.feed(chunked_upgrade_post([b"x" * 40, b"x" * 40]))
    (response,) = c.responses()
    assert response.status == 413 and c.app.exchanges == []  # not run
    assert c.transport.eof_written or c.transport.closed


def test_a_forbidden_trailer_after_a_chunked_upgrade_body_is_refused() -> None:
    c = connect()
    c.feed(chunked_upgrade_post([b"{}"], trailer=b"Content-Length: 5\r\n"))
    (response,) = c.responses()
    assert response.status == 400 and c.app.exchanges == []


def test_a_chunked_upgrade_body_that_stalls_is_disconnected_unseen() -> None:
    c = connect(limits=ServerLimits(header_timeout_ms=1000))
    c.feed(chunked_upgrade_post([b'{"d": 4}'])[:-7])
    c.loop.advance(1.1)
    assert c.transport.closed and c.app.exchanges == [] and c.responses() == []


def test_a_websocket_upgrade_with_a_chunked_body_is_run_then_closed() -> None:
    c = connect(FakeApp())
    c.feed(
        b"POST /run HTTP/1.1\r\nHost: n\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b'Transfer-Encoding: chunked\r\n\r\nd\r\n{"x": "sent"}\r\n0\r\n\r\n\x81\x05hello'
    )
    assert [e.body for e in c.app.exchanges] == [b'{"x": "sent"}']
    (response,) = c.responses()
    assert response.status == 200 and response.header("connection") == "close"
    assert c.transport.closed
