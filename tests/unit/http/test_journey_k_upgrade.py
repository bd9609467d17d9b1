"""An `Upgrade` request with a body is served in HTTP/1.1, its body read (RFC 9110 §7.8).

Java's java.net.http.HttpClient (HTTP/2 by default) sends every request of a new
plain-HTTP connection with `Connection: Upgrade, HTTP2-Settings` and `Upgrade: h2c`,
POST bodies included, as does `curl --http2`. A server may ignore the upgrade and
answer in HTTP/1.1; the client then goes on in HTTP/1.1. httptools ends such a
request at its head, so the protocol reads its Content-Length body itself.
"""

from __future__ import annotations

import pytest
from http_fakes import Connection, FakeApp, connect

from lightnode.config.model import ServerLimits

H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"


def upgrade_post(body: bytes, extra: bytes = b"") -> bytes:
    head = b"POST /public/api/v1/s/e/run HTTP/1.1\r\nHost: n\r\n" + H2C + extra
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize("mode", ["whole", "lines", "bytes"])
def test_an_h2c_upgrade_post_is_run_with_its_body_then_closed(mode: str) -> None:
    c = connect()
    c.feed(upgrade_post(b'{"a": 1}'), mode)
    (exchange,) = c.app.exchanges
    assert exchange.method == b"POST" and exchange.body == b'{"a": 1}'
    (response,) = c.responses()
    assert response.status == 200 and response.json()["body"] == '{"a": 1}'
    assert response.header("connection") == "close"  # as an upgrade without a body
    assert c.transport.closed


def test_an_upgrade_post_behind_a_pipelined_request_keeps_the_order() -> None:
    c = connect()
    c.feed(b"GET /0 HTTP/1.1\r\n\r\n" + upgrade_post(b'{"b": 2}') + b"GET /after HTTP/1.1\r\n\r\n")
    assert [(e.path, e.body) for e in c.app.exchanges] == [(b"/0", b""), (b"/public/api/v1/s/e/run", b'{"b": 2}')]
    assert [r.status for r in c.responses()] == [200, 200]  # bytes after it are not read


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
    c.feed(upgrade_post(b'{"d": 4}')[:-3])
    c.loop.advance(0.9)
    c.feed(b"4")  # progress: the clock restarts
    c.loop.advance(0.9)
    assert not c.transport.closed
    c.loop.advance(0.2)
    assert c.transport.closed and c.app.exchanges == [] and c.responses() == []


def test_an_upgrade_post_whose_client_closes_mid_body_is_dropped_unseen() -> None:
    c = connect()
    c.feed(upgrade_post(b'{"e": 5}')[:-2])
    c.eof()
    assert c.transport.closed and c.app.exchanges == []


def _still_refused(c: Connection) -> None:
    (response,) = c.responses()
    assert response.status == 400 and b"chunked" in response.body
    assert c.app.exchanges == []


def test_an_upgrade_with_a_chunked_body_is_still_refused() -> None:
    c = connect(FakeApp())
    c.feed(
        b"POST /run HTTP/1.1\r\nHost: n\r\n" + H2C + b"Transfer-Encoding: chunked\r\n\r\n"
        b"d\r\n{\"x\": \"sent\"}\r\n0\r\n\r\n"
    )
    _still_refused(c)
