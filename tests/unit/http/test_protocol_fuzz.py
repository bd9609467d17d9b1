"""Fuzzing the HTTP protocol through a fake transport (hypothesis).

Generated request streams (pipelined, Content-Length or chunked bodies), the
same streams mutated (bytes flipped, inserted, deleted, cut), and plain
garbage are fed in random pieces, with the clock moved between reads. Whatever
comes in, the protocol must not raise, must write only well-formed answers
whose statuses it may give, must answer every request the app saw, in order,
and must hand the app the same requests however the bytes were split.
The default run is short; `-m slow` runs the long variant.
"""

from __future__ import annotations

from typing import Any

import pytest
from http_fakes import Connection, connect
from hypothesis import given, settings
from hypothesis import strategies as st

from lightnode.config.model import ServerLimits

LIMITS = ServerLimits(
    max_body_bytes=256, max_header_bytes=512, header_timeout_ms=1000, keepalive_timeout_ms=2000
)
ALLOWED_STATUSES = {100, 200, 400, 413, 431}
FAST = settings(max_examples=150)  # no deadline, no too_slow check: tests/conftest.py
LONG = settings(max_examples=5000)

TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
    min_size=1,
    max_size=12,
)
PATH_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-._~%/"
FIELD_VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)


@st.composite
def request_bytes(
    draw: st.DrawFn, last: bool = False
) -> tuple[bytes, tuple[bytes, bytes, bytes, bytes]]:
    """One well-formed request and the (method, path, query, body) the app must see."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]))
    path = b"/" + draw(st.text(alphabet=PATH_CHARS, max_size=30)).encode()
    query = draw(
        st.one_of(
            st.just(b""), st.text(alphabet="abc=&123", min_size=1, max_size=15).map(str.encode)
        )
    )
    target = path + (b"?" + query if query else b"")
    headers = [
        (draw(TOKEN).encode(), draw(FIELD_VALUE).encode()) for _ in range(draw(st.integers(0, 4)))
    ]
    headers = [
        (n, v)
        for n, v in headers
        if n.lower()
        not in (
            b"content-length",
            b"transfer-encoding",
            b"connection",
            b"expect",
            b"host",
            b"upgrade",
            b"te",
            b"trailer",
        )
    ]
    body = draw(st.binary(max_size=120)) if method != b"GET" else b""
    chunked = bool(body) and draw(st.booleans())
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: h"]
    lines += [n + b": " + v for n, v in headers]
    if last:
        lines.append(b"Connection: close")
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        payload = b""
        rest = body
        while rest:
            size = draw(st.integers(1, max(1, len(rest))))
            payload += b"%x\r\n%s\r\n" % (size, rest[:size])
            rest = rest[size:]
        payload += b"0\r\n\r\n"
    else:
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + payload
    return raw, (method, path, query, body)


@st.composite
def request_stream(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bytes, bytes, bytes]]]:
    count = draw(st.integers(1, 4))
    parts = [draw(request_bytes(last=i == count - 1 and draw(st.booleans()))) for i in range(count)]
    return b"".join(raw for raw, _ in parts), [seen for _, seen in parts]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(request_stream())[0])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut", "dup"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "cut":
            del data[at:]
        elif op == "dup":
            data[at:at] = data[at : at + draw(st.integers(1, 30))]
    return bytes(data)


ANY_INPUT = st.one_of(st.binary(max_size=400), mutated(), request_stream().map(lambda s: s[0]))


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


def feed(data: bytes, cuts: list[int], delays: list[float] | None = None) -> Connection:
    c = connect(limits=LIMITS)
    for index, piece in enumerate(pieces(data, cuts)):
        if c.transport.closed:
            break
        c.protocol.data_received(piece)
        c.loop.run_soon()
        if delays:
            c.loop.advance(delays[index % len(delays)])
    if not c.transport.closed:
        c.eof()
    c.loop.advance(10.0)  # every timer (header, keep-alive, linger) fires
    return c


def check_sane(c: Connection) -> list[int]:
    """Answers parse, statuses are allowed, and every exchange the app saw was answered in order."""
    responses = c.responses()
    statuses = [r.status for r in responses]
    assert set(statuses) <= ALLOWED_STATUSES, statuses
    finals = [r for r in responses if r.status != 100]
    answered = [r for r in finals if r.status == 200]
    assert len(answered) <= len(c.app.exchanges)
    for response, exchange in zip(answered, c.app.exchanges, strict=False):
        assert response.json()["path"] == exchange.path.decode("latin-1")
    refusals = [r for r in finals if r.status != 200]
    assert len(refusals) <= 1 and (not refusals or finals[-1] is refusals[0])
    assert c.transport.closed or c.transport.eof_written, (
        "connection left open after EOF and timers"
    )
    assert not c.state.connections
    return statuses


def outcome(c: Connection) -> tuple[list[tuple[bytes, bytes, bytes, bytes]], list[int]]:
    exchanges = [(e.method, e.path, e.query, e.body) for e in c.app.exchanges]
    return exchanges, [r.status for r in c.responses() if r.status != 100]


@FAST
@given(
    data=ANY_INPUT,
    cuts=st.lists(st.integers(0, 1000), max_size=12),
    delays=st.lists(st.floats(0, 1.5), max_size=4),
)
def test_any_input_any_split_any_timing_is_handled(
    data: bytes, cuts: list[int], delays: list[float]
) -> None:
    check_sane(feed(data, cuts, delays))


@FAST
@given(stream=request_stream(), cuts=st.lists(st.integers(0, 1000), max_size=12))
def test_valid_streams_are_parsed_exactly_whatever_the_split(
    stream: tuple[bytes, list[Any]], cuts: list[int]
) -> None:
    data, expected = stream
    c = feed(data, cuts)
    check_sane(c)
    within_limits = all(len(body) <= LIMITS.max_body_bytes for *_, body in expected)
    if within_limits and len(data) < LIMITS.max_header_bytes:
        assert outcome(c) == (expected, [200] * len(expected))


@FAST
@given(data=mutated(), cuts=st.lists(st.integers(0, 1000), max_size=12))
def test_mutated_streams_give_the_same_outcome_whole_or_split(data: bytes, cuts: list[int]) -> None:
    whole, split = feed(data, []), feed(data, cuts)
    check_sane(whole)
    check_sane(split)
    assert outcome(split) == outcome(whole)


@pytest.mark.slow
@LONG
@given(
    data=ANY_INPUT,
    cuts=st.lists(st.integers(0, 1000), max_size=20),
    delays=st.lists(st.floats(0, 1.5), max_size=4),
)
def test_long_fuzz_any_input(data: bytes, cuts: list[int], delays: list[float]) -> None:
    check_sane(feed(data, cuts, delays))


@pytest.mark.slow
@LONG
@given(data=mutated(), cuts=st.lists(st.integers(0, 1000), max_size=20))
def test_long_fuzz_split_invariance(data: bytes, cuts: list[int]) -> None:
    assert outcome(feed(data, cuts)) == outcome(feed(data, []))
