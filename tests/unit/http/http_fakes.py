"""Fakes for protocol tests: a loop whose clock the test moves, a transport that
records writes, an app that records exchanges, and a parser for answer bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httptools
import ujson

from lightnode.config.model import ServerLimits
from lightnode.http.exchange import Exchange
from lightnode.http.protocol import HttpProtocol, ServerState
from loadtest import hotpath


class FakeTimer:
    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled


class FakeLoop:
    """time(), call_later() and call_soon() under the test's control."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[FakeTimer] = []
        self.soon: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback, args)
        self.timers.append(timer)
        return timer

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.soon.append((callback, args))

    def run_soon(self) -> None:
        while self.soon:
            callback, args = self.soon.pop(0)
            callback(*args)

    def active_timers(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled()]

    def advance(self, seconds: float) -> None:
        """Move the clock, firing due timers in time order."""
        deadline = self.now + seconds
        while True:
            due = [t for t in self.active_timers() if t.when <= deadline]
            if not due:
                break
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback(*timer.args)
            self.run_soon()
        self.now = deadline
        self.run_soon()


class FakeTransport(asyncio.Transport):
    """Records writes; close() reports connection_lost on the next loop turn."""

    def __init__(self, loop: FakeLoop, peer: object = ("127.0.0.1", 50000)) -> None:
        super().__init__()
        self.loop = loop
        self.peer = peer
        self.protocol: asyncio.Protocol | None = None
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reading = True
        self.pause_calls = 0
        self.resume_calls = 0

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed and not self.eof_written, "write after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.protocol is not None
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        assert self.reading, "pause_reading twice"
        self.reading = False
        self.pause_calls += 1

    def resume_reading(self) -> None:
        assert not self.reading, "resume_reading while reading"
        self.reading = True
        self.resume_calls += 1

    def is_reading(self) -> bool:
        return self.reading


class RecordingSinkTransport(hotpath.SinkTransport):
    """loadtest.hotpath's transport (for a real app and pool), keeping what is written
    and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.data = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.data += data

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return False

    def answers(self) -> list[bytes]:
        return [b"HTTP/1.1 " + part for part in self.data.split(b"HTTP/1.1 ")[1:]]


def connect_beside(first: HttpProtocol) -> tuple[HttpProtocol, RecordingSinkTransport]:
    """Another connection to the app and server state of `first`, on a recording transport."""
    protocol = HttpProtocol(first._app, first._state, first._loop)
    transport = RecordingSinkTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


class FakeApp:
    """Records exchanges; answers at once (auto) or when the test says."""

    def __init__(self, auto: bool = True, raises: bool = False) -> None:
        self.auto = auto
        self.raises = raises
        self.exchanges: list[Exchange] = []
        self.running: set[bytes] = set()  # paths whose work was handed on (see client_closed)
        self.closed_before_answer: list[bytes] = []
        self.refusals: list[tuple[bytes, bytes, int, str]] = []  # (method, path, status, errorType)

    def handle(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)
        if self.auto:
            answer(exchange)
        if self.raises:
            raise RuntimeError("app failure")

    def client_closed(self, exchange: Exchange) -> None:
        """As NodeApp: the exchange is cancelled unless its work was handed on (its path in `running`)."""
        self.closed_before_answer.append(exchange.path)
        if exchange.path not in self.running:
            exchange.cancel()

    def refused(self, exchange: Exchange, error_type: str) -> None:
        self.refusals.append((exchange.method, exchange.path, exchange.status, error_type))


def answer(exchange: Exchange, status: int = 200, **kwargs: Any) -> None:
    """Answer with a JSON echo of the request."""
    payload = {
        "method": exchange.method.decode(),
        "path": exchange.path.decode("latin-1"),
        "query": exchange.query.decode("latin-1"),
        "body": exchange.body.decode("latin-1"),
    }
    exchange.respond(status, ujson.dumps(payload).encode(), **kwargs)


@dataclass
class Connection:
    loop: FakeLoop
    state: ServerState
    app: FakeApp
    transport: FakeTransport
    protocol: HttpProtocol

    def feed(self, data: bytes, mode: str = "whole") -> None:
        for piece in split(data, mode):
            self.protocol.data_received(piece)

    def eof(self) -> None:
        """The client half-closes, as asyncio would report it."""
        if not self.protocol.eof_received():
            self.transport.close()
        self.loop.run_soon()

    def lose(self) -> None:
        self.protocol.connection_lost(ConnectionResetError())

    def responses(self) -> list[Response]:
        return parse_responses(self.transport.data)


def connect(
    app: FakeApp | None = None,
    state: ServerState | None = None,
    loop: FakeLoop | None = None,
    limits: ServerLimits | None = None,
    peer: object = ("127.0.0.1", 50000),
) -> Connection:
    loop = loop or FakeLoop()
    state = state or ServerState(limits or ServerLimits())
    app = app if app is not None else FakeApp()
    protocol = HttpProtocol(app, state, loop)  # type: ignore[arg-type]
    transport = FakeTransport(loop, peer)
    transport.protocol = protocol
    protocol.connection_made(transport)
    return Connection(loop, state, app, transport, protocol)


def split(data: bytes, mode: str) -> Iterable[bytes]:
    if mode == "whole":
        return [data]
    if mode == "lines":
        return [line for line in data.splitlines(keepends=True)]
    if mode == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    raise ValueError(mode)


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        return ujson.loads(self.body)


class _ResponseCollector:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        self.responses.append(Response())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.responses[-1].headers.append((name.decode().lower(), value.decode()))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.responses[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.responses[-1].body += body


def parse_responses(data: bytes) -> list[Response]:
    """Split written bytes into answers (interim 100 Continue included)."""
    collector = _ResponseCollector()
    parser = httptools.HttpResponseParser(collector)
    collector.parser = parser
    rest = data
    while rest:
        # An interim answer has no body; llhttp would wait for one, so cut it off by hand.
        if rest.startswith(b"HTTP/1.1 100 "):
            head, _, rest = rest.partition(b"\r\n\r\n")
            collector.responses.append(Response(status=100))
            continue
        end = rest.find(b"HTTP/1.1 100 ", 1)
        chunk, rest = (rest, b"") if end < 0 else (rest[:end], rest[end:])
        parser.feed_data(chunk)
    return collector.responses
