"""lightnode's HTTP/1.1 server connection on httptools (no web framework).

One `HttpProtocol` per TCP connection: httptools callbacks fill a per-request
buffer; each complete request becomes an `Exchange` handed to the `App`;
answers are written strictly in request order (pipelining), several per
`transport.write` when they are ready together. `ServerState` is shared by the
connections of one listening server.

Limits (SPEC §8) and refusals (SPEC §3.4), each answered after the requests
before it, then the connection closes (after draining unread input briefly):
- malformed HTTP, unsupported versions, a second Host, Transfer-Encoding in
  HTTP/1.0, framing trailers, bad request targets: 400 BadRequest;
- `max_header_bytes` counts the URL plus, per field, name + value + 4 (the
  value as received: llhttp drops leading whitespace, trailing counts): 431;
  it also bounds a chunked body's bytes that bring no body (trailer fields);
- a Content-Length over `max_body_bytes` is refused before its body is read,
  a chunked body when it grows past it: 413 PayloadTooLarge;
- a connection beyond `max_connections` gets 503 TooManyConnections at once.
Upgrade and CONNECT are not supported: such a request goes to the app like
any other (RFC 9110 §7.8: the upgrade is ignored). httptools ends such a
request at its head, so the protocol reads its body: java.net.http's client and
`curl --http2` send each POST of a new plain-HTTP connection with `Upgrade: h2c`
(chunked when Java streams the body). After an ignored `h2c`
upgrade the connection goes on in HTTP/1.1 (a client sends no HTTP/2 before a
101, RFC 7540 §3.2), so that such clients keep their connections; after any
other (a WebSocket, CONNECT) it closes after the answer.

Timeouts: a connection that has connected or begun a request but has not
completed its headers within `header_timeout_ms` is closed without an answer
(SPEC §3.4 "disconnected"); so is one whose request body stops making progress
for that long, or, past that time, averages under 500 bytes/s (a drip that would
hold the connection for days; any real client is faster). Requests read in full
before the stalled one are answered first, the last answer closing the connection.
An idle keep-alive connection is closed after `keepalive_timeout_ms` (bytes that
begin no request, such as bare CRLFs, do not make it busy). Draining (SPEC §11)
only closes connections once they are idle, the last answer saying so.

A client that closes its side (read EOF) is gone, as one that resets (SPEC §4
rule 9): see eof_received.

Pipelining is bounded by `ServerState.max_pipelined`: the app is handed at most
that many requests of a connection whose answers are not written yet, and none
while the client reads nothing (the transport's write buffer is full). Requests
one read brings beyond that wait, parsed, until answers are written; reading
pauses meanwhile. A client that pipelines without reading thus makes the node
run and buffer a bounded number of answers, not every request it sent (each
answer may be megabytes). Requests still held back when the client goes away
never reach the app; a /run one is recorded as 499 ClientGone (app.refused).

Imports: standard library, httptools, `lightnode.config.model`,
`lightnode.http.exchange` and `lightnode.http.responses` only. Never routing,
pools or the scheduler: the app owns those.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import deque
from typing import Any, Final, NoReturn, cast

import httptools

from lightnode.config.model import ServerLimits
from lightnode.http.exchange import CLIENT_GONE, CLIENT_GONE_STATUS, App, Exchange
from lightnode.http.responses import CONTINUE_LINE, error_body, render_error, render_response

logger: Final = logging.getLogger(__name__)

# Trailer fields that would change how a request is framed, routed or
# authorized had they come in the header section (RFC 9110 §6.5.1). Trailers are
# never shown to the app; a chunked body ending with one of these is refused as
# a likely smuggling attempt. Others (Vary, Content-Type, checksums) are dropped.
_FORBIDDEN_TRAILERS: Final = frozenset(
    b"authorization connection content-length expect host keep-alive proxy-authorization"
    b" te trailer transfer-encoding upgrade".split()
)

# Request headers the protocol itself reads, looked up once per header line.
_CONTENT_LENGTH: Final = 0
_HOST: Final = 1
_TRANSFER_ENCODING: Final = 2
_EXPECT: Final = 3
_REQUEST_ID: Final = 4
_CONNECTION: Final = 5  # llhttp reads both for keep-alive (see on_headers_complete)
_SPECIAL_HEADERS: Final = {
    b"content-length": _CONTENT_LENGTH,
    b"host": _HOST,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"expect": _EXPECT,
    b"x-request-id": _REQUEST_ID,
    b"connection": _CONNECTION,
    b"proxy-connection": _CONNECTION,
}
# The usual spellings too, found without lower-casing the name; another spelling
# is lower-cased only when its length is one of theirs.
_SPECIAL_HEADERS.update({name.title(): kind for name, kind in _SPECIAL_HEADERS.items()})
_SPECIAL_HEADERS[b"X-Request-ID"] = _REQUEST_ID
_SPECIAL_LENGTHS: Final = frozenset(len(name) for name in _SPECIAL_HEADERS)
# Headers of the usual clients whose length is one of theirs: found as ordinary at the
# first lookup, not lower-cased and looked up again.
_ORDINARY: Final = -1
_SPECIAL_HEADERS.update(
    (spelling, _ORDINARY)
    for name in (b"accept", b"cookie", b"origin", b"content-type", b"user-agent", b"keep-alive",
                 b"content-encoding")  # fmt: skip
    for spelling in (name, name.title())
)

# Bytes per second a request body must average once `header_timeout_ms` has passed
# since it began (see _on_header_timeout): 1 MB in 35 minutes.
_MIN_BODY_RATE: Final = 500.0

_HASH: Final = ord("#")
_QUESTION: Final = ord("?")

# Small body pieces (chunks) folded into one at a time (see on_body).
_FOLD_PIECES: Final = 64

_ID_PREFIX: Final = os.urandom(4).hex()
_next_id: Final = itertools.count(1).__next__
# Final names for what runs per request: the compiled build reads a Final name from a C
# variable, a module's attribute or a builtin by a dict lookup at each use.
_monotonic: Final = time.monotonic
_hex: Final = hex


def _decimal(value: bytes) -> int:
    """int(value): a native loop over up to 18 ASCII digits (a third of int()'s cost,
    once per request with a body), int() itself for anything else."""
    size = len(value)
    if 0 < size <= 18:
        number = 0
        for index in range(size):
            digit = value[index] - 48
            if not 0 <= digit <= 9:
                return int(value)
            number = number * 10 + digit
        return number
    return int(value)


def new_request_id() -> str:
    """A request id unique in this process: a random per-process prefix and a counter.

    hex() and not an f-string's `:x`: compiled, a format spec goes through str.format
    (0.44 against 0.18 µs per id).
    """
    return f"{_ID_PREFIX}-{_hex(_next_id())[2:]}"


def client_request_id(value: bytes) -> str | None:
    """The client's X-Request-Id if it is 1..128 printable ASCII chars without spaces."""
    if 0 < len(value) <= 128 and value.isascii():
        text = value.decode("ascii")
        if text.isprintable() and " " not in text:
            return text
    return None


_NOT_IDLE: Final[float | None] = None  # see data_received


def _asks_for_h2c(exchange: Exchange) -> bool:
    """An `Upgrade: h2c` request (not CONNECT): HTTP/1.1 may go on after it (see _on_upgrade)."""
    upgrade = exchange.header(b"upgrade")
    return (
        upgrade is not None and upgrade.strip().lower() == b"h2c" and exchange.method != b"CONNECT"
    )


_CHUNKED_HEAD: Final = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
_STAGE_HEAD: Final = 0  # the parser reads _CHUNKED_HEAD
_STAGE_BODY: Final = 1  # the upgrade request's chunks and trailer fields
_STAGE_AFTER: Final = 2  # the requests after it: every callback goes to the protocol


class _ChunkedUpgradeBody:
    """httptools callbacks for the parser that reads an upgrade request's chunked body.

    httptools ends an upgrade request at its head, and llhttp does not resume after
    it. A fresh parser is fed `_CHUNKED_HEAD`, then the bytes after the head: it reads
    the chunks (and trailer fields) into the protocol as llhttp reads any body, and
    then, after an h2c upgrade, the next requests. Its own head is not the client's
    and is not shown to the protocol; what follows the body is passed on as is.
    """

    def __init__(self, protocol: HttpProtocol) -> None:
        self.protocol = protocol
        self.stage = _STAGE_HEAD

    def on_message_begin(self) -> None:
        if self.stage == _STAGE_AFTER:
            self.protocol.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if self.stage == _STAGE_AFTER:
            self.protocol.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.stage != _STAGE_HEAD:  # a trailer field is checked there
            self.protocol.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.stage == _STAGE_HEAD:
            self.stage = _STAGE_BODY
        else:
            self.protocol.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.protocol.on_body(body)

    def on_message_complete(self) -> None:
        if self.stage == _STAGE_BODY:
            self.stage = _STAGE_AFTER
            self.protocol._chunked_upgrade_body_complete()
        else:
            self.protocol.on_message_complete()


class ServerState:
    """Shared by all connections of one listening server."""

    # Requests per connection handed to the app and not answered yet (written): beyond
    # it reading pauses, and requests already read wait (see the module docstring).
    max_pipelined = 64
    linger_s = 2.0  # after refusing a request: how long unread input is drained before close
    # A client that reads none of its answers for this long is disconnected (nginx's
    # send_timeout default): it would hold its connection, and a connection slot, forever.
    send_timeout_s = 60.0

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.connections: set[HttpProtocol] = set()
        self.draining = False
        self._waiters: list[asyncio.Future[None]] = []

    def close_idle_connections(self) -> None:
        """For shutdown: close connections with no request pending or arriving."""
        for connection in list(self.connections):
            connection.close_if_idle()

    def abort_all(self) -> None:
        """End of the shutdown grace: drop every connection (pending requests are cancelled)."""
        for connection in list(self.connections):
            connection.abort()

    async def wait_closed(self) -> None:
        """Return once no connection is open."""
        while self.connections:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def forget(self, connection: HttpProtocol) -> None:
        self.connections.discard(connection)
        if not self.connections and self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


class _Rejected(Exception):
    """Raised inside a parser callback to stop parsing; the answer is in `_rejection`."""


class _ServerExchange(Exchange):
    """An Exchange that remembers whether its answer must say `Connection: keep-alive`."""

    __slots__ = ("http10_keep_alive",)
    http10_keep_alive: bool


class HttpProtocol:
    """One client connection: parse, hand requests to the app, answer in order.

    An asyncio protocol by its methods, not by inheritance: the event loop needs no
    base class, and without one the compiled build makes this a native class (fast
    attribute access) instead of a Python class with compiled methods.
    """

    def __init__(self, app: App, state: ServerState, loop: asyncio.AbstractEventLoop) -> None:
        self._app = app
        self._state = state
        self._loop = loop
        limits = state.limits
        self._max_body = limits.max_body_bytes
        self._max_head = limits.max_header_bytes
        self._header_timeout_s = limits.header_timeout_ms / 1000
        self._keepalive_timeout_s = limits.keepalive_timeout_ms / 1000
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._pending: deque[_ServerExchange] = deque()  # request order, answered or not
        self._ready: list[_ServerExchange] = []  # parsed in this data_received, not yet handed over
        # Parsed and held back (in `_pending` too, in order): the pipelining window was full.
        self._held: deque[_ServerExchange] = deque()
        self._dispatching = False
        self._pumping = False  # in _dispatch_held (which _flush may call again)
        # Connection state.
        self._accepting = True  # False once no further request will be read
        self._refused = False  # a request was refused: input may be left unread
        # The app answered a request handed to it with `Connection: close` (503 ShuttingDown):
        # the requests pipelined behind it are neither handed over nor recorded (_hand_to_app).
        self._closing_answer = False
        self._read_eof = False
        self._closed = False
        self._reading_paused = False
        self._write_paused = False
        self._continue_wanted = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None  # loop time the connection became idle
        self._linger_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._rejection: tuple[int, str, str] | None = None
        # The request being parsed.
        self._seq = 0
        self._in_request = False
        self._body_progress_s = 0.0  # loop time of the last body bytes of an incomplete request
        self._body_since_s = 0.0  # loop time of its first read with body still to come
        self._in_head = False
        self._head_bytes = 0
        self._head_partial = 0
        self._url: list[bytes] = []  # pieces, joined when the head is complete
        self._path = b""
        self._query = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._folded = 0  # leading pieces of _body already folded (see on_body)
        self._body_bytes = 0
        self._framing_bytes = 0
        self._content_length = 0
        self._host_count = 0
        self._has_transfer_encoding = False
        self._has_connection = False  # a Connection or Proxy-Connection header
        self._expect_continue = False
        self._request_id: str | None = None
        self._http10 = False
        # An upgrade request whose body the protocol reads itself (see _on_upgrade); in
        # neither _pending nor _ready until its body is complete.
        self._raw_exchange: _ServerExchange | None = None
        self._upgrade_kept = False  # that request asked for h2c: HTTP/1.1 goes on after it
        # An upgrade request whose chunked body llhttp reads (see _ChunkedUpgradeBody).
        self._chunked_exchange: _ServerExchange | None = None

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self._transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        state = self._state
        if len(state.connections) >= state.limits.max_connections:
            self._closed = True
            transport.write(
                render_error(
                    503,
                    "TooManyConnections",
                    "Too many open connections",
                    request_id=new_request_id(),
                    close=True,
                )
            )
            transport.close()
            return
        state.connections.add(self)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_timers()
        if self._send_timer is not None:  # the only timer that outlives _close(): see pause_writing
            self._send_timer.cancel()
            self._send_timer = None
        self._cancel_pending()
        self._state.forget(self)

    def eof_received(self) -> bool:
        """The client closed its side: it is gone (SPEC §4 rule 9), a FIN as a reset.

        Behind a proxy every client abort closes the upstream connection this way. Each
        request not yet answered goes to the app's `client_closed`, which cancels what
        has not started (a queued call leaves its queue); work already handed on (a
        running call) is answered if the socket still takes the bytes, as are answers
        already done. The last of them closes the connection.
        """
        self._read_eof = True
        self._stop_reading()
        self._cancel_timers()
        if self._closed:
            return False
        self._drop_held()
        pending = self._pending
        if pending:
            self._dispatching = True  # answers given meanwhile are written below, in order
            try:
                for exchange in list(pending):
                    if not exchange.done and not exchange.cancelled:
                        try:
                            self._app.client_closed(exchange)
                        except Exception:
                            logger.exception("request %s: client_closed raised", exchange.request_id)
            finally:
                self._dispatching = False
            # A cancelled exchange is never answered: it no longer holds the ones behind it.
            self._pending = pending = deque(exchange for exchange in pending if not exchange.cancelled)
        if pending and pending[0].done:
            self._flush()
        elif not pending:
            self._close()
        return not self._closed

    def data_received(self, data: bytes) -> None:
        if not self._accepting or self._closed or self._raw_exchange is not None:
            # Discarding input after a refusal or a closing request, or reading the body
            # of an upgrade request (only while accepting: _stop_reading clears it).
            self._read_raw(data)
            return
        # The keep-alive timer sees None and does not close. Assigned from a name typed
        # `float | None`: a literal None would narrow the attribute to None for the rest
        # of this method, but _dispatch() may set it (the compiled build trusts narrowing).
        idle_since = self._idle_since
        self._idle_since = _NOT_IDLE
        seq = self._seq
        body_before = self._body_bytes
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data, upgrade.args)
        except httptools.HttpParserError as exc:
            self._on_parse_error(exc)
        if self._in_head:
            self._count_partial_head(seq, len(data))
        if self._ready:
            self._dispatch()
        if len(self._pending) >= self._state.max_pipelined:
            self.pause_reading()
        if self._in_head:
            self._arm_header_timer()  # no timer at all for a head that arrives in one read
        elif self._in_request:
            if self._has_transfer_encoding:
                self._count_chunk_framing(seq, body_before, len(data))
            # A body still incomplete: the same limit holds for a client that stops
            # sending in the middle of it (slowloris on the body).
            self._body_progressed()
            if self._continue_wanted:
                self._send_continue()
        elif self._continue_wanted:
            self._send_continue()
        elif self._idle_since is None and not self._pending:  # else _flush() has just found it idle
            if idle_since is not None and self._seq == seq:
                # Idle before, and these bytes began no request (CRLFs, which llhttp skips
                # between messages): the keep-alive clock runs on, it does not restart.
                self._idle_since = idle_since
            else:
                self._check_idle()

    def _count_partial_head(self, seq: int, size: int) -> None:
        """A head still incomplete after a read of `size` bytes, `seq` the request number before it.

        httptools buffers the header being read whole, so its raw bytes are
        counted here too (exactly when the head began before this read, or in it
        with no other request in it). Raw bytes include the request line and
        separators, hence the doubled bound: the exact limit is enforced when
        each header ends.
        """
        if seq == self._seq:
            self._head_partial += size
        elif not self._ready and self._seq == seq + 1:
            self._head_partial = size
        if self._head_partial > 2 * self._max_head:
            self._refuse(431, "HeadersTooLarge", "Request headers are too large")

    def _count_chunk_framing(self, seq: int, body_before: int, size: int) -> None:
        """Bytes of a chunked request that bring no body: chunk lines and trailer fields.

        httptools buffers a trailer field whole, like a header, and max_body_bytes
        does not see it: `max_header_bytes` bounds such bytes between two pieces of
        body (twice over, as for a head still arriving; see _count_partial_head).
        Only reads wholly within this request's body count (`seq`: the request
        number before the read).
        """
        if self._seq != seq or self._body_bytes != body_before:
            self._framing_bytes = 0
            return
        self._framing_bytes += size
        if self._framing_bytes > 2 * self._max_head:
            self._refuse(431, "HeadersTooLarge", "Request trailer fields are too large")

    def pause_writing(self) -> None:
        self._write_paused = True
        self.pause_reading()
        # Armed even once closing: a transport closed with unsent data waits for the client.
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(self._state.send_timeout_s, self._on_send_stalled)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self._held and not self._closed:
            self._dispatch_held()
        self._update_reading()

    def _on_send_stalled(self) -> None:
        """The client has read nothing of its answers for send_timeout_s: drop it."""
        self._send_timer = None
        if self._write_paused and self._transport is not None:
            logger.info(
                "connection from %s: answers unread for %.0f s, disconnected",
                self._client or "?", self._state.send_timeout_s,
            )  # fmt: skip
            self._transport.abort()

    # -- flow control (idempotent) ----------------------------------------

    def pause_reading(self) -> None:
        if self._reading_paused or self._closed or self._transport is None:
            return
        self._reading_paused = True
        self._transport.pause_reading()
        self._cancel_header_timer()  # the client is not slow while we do not read

    def resume_reading(self) -> None:
        if not self._reading_paused or self._closed or self._transport is None:
            return
        self._reading_paused = False
        self._transport.resume_reading()
        if self._in_head:
            self._arm_header_timer()
        elif self._in_request:
            # The client was not slow while paused: its clocks start again.
            self._body_progress_s = self._body_since_s = self._loop.time()
            self._arm_header_timer()

    def _update_reading(self) -> None:
        if self._write_paused or len(self._pending) >= self._state.max_pipelined:
            self.pause_reading()
        else:
            self.resume_reading()

    # -- httptools callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        if not self._accepting:
            raise _Rejected()  # bytes after a closing request are not parsed
        self._seq += 1
        self._in_request = True
        self._in_head = True
        self._head_bytes = 0
        self._head_partial = 0
        self._url = []
        self._headers = []
        self._body = []
        self._folded = 0
        self._body_bytes = 0
        self._framing_bytes = 0
        self._content_length = 0
        self._host_count = 0
        self._has_transfer_encoding = False
        self._has_connection = False
        self._expect_continue = False
        self._request_id = None

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > self._max_head:
            self._reject_in_parser(431, "HeadersTooLarge", "Request headers are too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_head:
            self._reject_in_parser(431, "HeadersTooLarge", "Request headers are too large")
        if self._in_head:
            # Kept as received: Exchange.header() matches names case-insensitively and
            # strips values; only the headers read here are lower-cased and stripped.
            self._headers.append((name, value))
            kind = _SPECIAL_HEADERS.get(name)
            if kind is None:
                if len(name) not in _SPECIAL_LENGTHS:
                    return
                kind = _SPECIAL_HEADERS.get(name.lower())
                if kind is None:
                    return
            if kind == _ORDINARY:
                return
            # Host, Content-Length and Connection inline, the rarer ones in _special_header().
            if kind == _HOST:
                self._host_count += 1
            elif kind == _CONTENT_LENGTH:
                try:
                    self._content_length = _decimal(value)  # llhttp checked the digits
                except ValueError:
                    self._reject_in_parser(400, "BadRequest", "Invalid Content-Length")
            elif kind == _CONNECTION:  # its value is llhttp's to read
                self._has_connection = True
            else:
                self._special_header(kind, value)
        elif name.lower() in _FORBIDDEN_TRAILERS:  # a trailer field: checked, then dropped
            self._reject_in_parser(400, "BadRequest", "Forbidden trailer field")

    def _special_header(self, kind: int, value: bytes) -> None:
        """Transfer-Encoding, Expect and X-Request-ID (see on_header for the others)."""
        value = value.rstrip(b" \t")  # llhttp drops leading whitespace only (RFC 9110 §5.5)
        if kind == _TRANSFER_ENCODING:
            self._has_transfer_encoding = True
        elif kind == _EXPECT:
            self._expect_continue = value.lower() == b"100-continue"
        elif self._request_id is None:
            self._request_id = client_request_id(value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._header_timer is not None:
            self._cancel_header_timer()
        self._body_progress_s = self._body_since_s = 0.0
        parser = self._parser
        if self._has_connection or not parser.should_keep_alive():
            version = parser.get_http_version()
            if version != "1.1":
                if version != "1.0":
                    self._reject_in_parser(400, "BadRequest", f"Unsupported HTTP version {version}")
                if self._has_transfer_encoding:  # RFC 9112 §6.1: faulty framing
                    self._reject_in_parser(
                        400, "BadRequest", "Transfer-Encoding in an HTTP/1.0 request"
                    )
            self._http10 = version == "1.0"
        else:
            # HTTP/1.1 without asking: llhttp parses only the versions 0.9, 1.0, 1.1 and
            # 2.0, and without a Connection (or Proxy-Connection) header keeps alive
            # 1.1 alone (major > 0 and minor > 0). get_http_version() formats a string
            # (about 4 % of the node's work per request), should_keep_alive() reads flags.
            self._http10 = False
        if self._host_count > 1:  # RFC 9112 §3.2
            self._reject_in_parser(400, "BadRequest", "More than one Host header")
        pieces = self._url
        url = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if url[:1] == b"/":
            # Bytes are tested for one byte as an int: `b"#" in url` first tries the
            # operand as an int and formats a TypeError to discard (4x the cost).
            if _HASH in url:
                url = url.partition(b"#")[0]
            if _QUESTION in url:
                self._path, _, self._query = url.partition(b"?")
            else:
                self._path, self._query = url, b""
        else:
            self._split_target(url)
        if self._content_length > self._max_body:
            self._reject_in_parser(
                413, "PayloadTooLarge", f"Request body is larger than {self._max_body} bytes"
            )
        # Sent at the end of this read if the body is still to come, and after
        # the answers to earlier requests (see _send_continue).
        self._continue_wanted = self._expect_continue and not self._http10

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body:
            self._reject_in_parser(
                413, "PayloadTooLarge", f"Request body is larger than {self._max_body} bytes"
            )
        pieces = self._body
        pieces.append(body)
        if len(pieces) - self._folded >= _FOLD_PIECES:
            # Many small chunks: 64 at a time become one, so that a body sent in 1-byte
            # chunks costs its size in memory, not ~40 bytes per byte in small objects.
            pieces[self._folded :] = [b"".join(pieces[self._folded :])]
            self._folded += 1

    def on_message_complete(self) -> None:
        self._in_request = False
        self._continue_wanted = False
        if self._header_timer is not None:
            self._cancel_header_timer()  # armed while the body was arriving
        parser = self._parser
        body = self._body
        keep_alive = parser.should_keep_alive()
        exchange = _ServerExchange(
            self,
            parser.get_method(),
            self._path,
            self._query,
            self._headers,
            (body[0] if len(body) == 1 else b"".join(body)) if body else b"",
            self._client,
            self._request_id or new_request_id(),
            keep_alive,
            # time.monotonic(), not the loop's clock: that one has 1 ms steps, too coarse
            # for the latency histogram and the query log's `total`.
            _monotonic(),
        )
        exchange.http10_keep_alive = self._http10 and keep_alive
        self._pending.append(exchange)
        self._ready.append(exchange)
        if not keep_alive:
            self._stop_reading()

    # -- parsing helpers --------------------------------------------------

    def _split_target(self, url: bytes) -> None:
        """Request targets not in origin form (RFC 9112 §3.2): rare, checked strictly."""
        method = self._parser.get_method()
        if url == b"*":
            if method != b"OPTIONS":
                self._reject_in_parser(400, "BadRequest", "Invalid request target")
            self._path, self._query = url, b""
            return
        if method == b"CONNECT":  # authority form; the upgrade path then closes
            self._path, self._query = url, b""
            return
        # Any: httptools' stubs type the URL's fields as bytes, but absent ones are None
        # (and the compiled build checks the declared types).
        parsed: Any
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            parsed = None
        if parsed is None or not parsed.schema or not parsed.host:
            self._reject_in_parser(400, "BadRequest", "Invalid request target")
        assert parsed is not None
        self._path = parsed.path or b"/"
        self._query = parsed.query or b""

    def _reject_in_parser(self, status: int, error_type: str, message: str) -> NoReturn:
        self._rejection = (status, error_type, message)
        raise _Rejected()

    def _on_parse_error(self, exc: httptools.HttpParserError) -> None:
        rejection, self._rejection = self._rejection, None
        if rejection is not None:
            self._refuse(*rejection)
        elif self._accepting:
            self._refuse(400, "BadRequest", f"Malformed HTTP request: {exc}")
        # else: bytes after a request that closes the connection; they are ignored

    def _on_upgrade(self, data: bytes, args: tuple[Any, ...]) -> bytes:
        """Upgrade and CONNECT are not supported: the request is answered in HTTP/1.1.

        The upgrade is ignored (RFC 9110 §7.8): the client reads an HTTP/1.1 answer.
        httptools ends an upgrade request at its head and hands back the bytes after
        it (from `data[args[0]]` on) as the new protocol's. A Content-Length body is read here
        instead (_raw_body_received), a chunked one by a fresh parser (_ChunkedUpgradeBody),
        and the request handed over once it is complete: java.net.http's client (HTTP/2
        by default) and `curl --http2` send a POST of a new plain-HTTP connection that
        way, chunked when Java streams the body (`BodyPublishers.ofInputStream`).

        After an `h2c` upgrade on a connection kept alive, HTTP/1.1 goes on: a client
        sends no HTTP/2 before a 101 (RFC 7540 §3.2), and Java's client, which asks on
        every new connection, would otherwise connect once per request. A fresh parser
        takes the bytes after the request (returned here to be fed to it), as llhttp
        does not resume after an upgrade. After any other upgrade (a WebSocket, whose
        client may already be sending frames) or CONNECT, the connection closes after
        the answer.
        """
        if self._ready and not self._in_request:
            exchange = self._ready[-1]
            kept = exchange.keep_alive and _asks_for_h2c(exchange)
            exchange.keep_alive = kept
            self._upgrade_kept = kept
            offset: int = args[0] if args else len(data)
            if self._has_transfer_encoding:
                self._ready.pop()  # handed over once its body is read
                self._pending.remove(exchange)
                self._chunked_exchange = exchange
                self._in_request = True  # the body timeout and the idle checks see a request
                self._continue_wanted = self._expect_continue and not self._http10
                # llhttp reads the chunks: a fresh parser is told a chunked head first.
                self._parser = parser = httptools.HttpRequestParser(_ChunkedUpgradeBody(self))
                parser.feed_data(_CHUNKED_HEAD)
                return data[offset:]
            if self._content_length > 0:
                self._ready.pop()  # handed over once its body is read
                self._pending.remove(exchange)
                self._raw_exchange = exchange
                self._in_request = True  # the body timeout and the idle checks see a request
                self._continue_wanted = self._expect_continue and not self._http10
                if offset < len(data):
                    return self._raw_body_received(data[offset:])
                return b""  # data_received arms the body timeout or hands the request over
            if kept:
                self._parser = httptools.HttpRequestParser(self)
                return data[offset:]
            self._stop_reading()
        else:
            self._refuse(400, "BadRequest", "Protocol upgrade is not supported")
        return b""

    def _chunked_upgrade_body_complete(self) -> None:
        """The chunked body of the upgrade request in `_chunked_exchange` is read (see _on_upgrade)."""
        exchange = self._chunked_exchange
        if exchange is None:
            return
        self._chunked_exchange = None
        self._in_request = False
        self._continue_wanted = False
        if self._header_timer is not None:
            self._cancel_header_timer()
        if not self._upgrade_kept:
            self._stop_reading()
        self._upgrade_body_read(exchange)  # handed over at the end of this read

    def _upgraded(self, data: bytes, args: tuple[Any, ...]) -> None:
        """The parser stopped at an upgrade request in `data`: see _on_upgrade."""
        rest = self._on_upgrade(data, args)
        while rest:  # requests after ignored h2c upgrades (a loop: one may follow another)
            rest = self._feed_after_upgrade(rest)

    def _read_raw(self, data: bytes) -> None:
        """Input while the protocol reads an upgrade request's body, or discards input.

        Bytes after the body of an ignored h2c upgrade are a read of their own (one
        level deep: while they are parsed, no body is read raw here).
        """
        rest = self._raw_body_received(data)
        if rest:
            self.data_received(rest)

    def _feed_after_upgrade(self, data: bytes) -> bytes:
        """Bytes after an upgrade's head, to the fresh parser; returns those after the next upgrade."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            return self._on_upgrade(data, upgrade.args)
        except httptools.HttpParserError as exc:
            self._on_parse_error(exc)
        return b""

    def _raw_body_received(self, data: bytes) -> bytes:
        """Body bytes of the upgrade request in `_raw_exchange` (see _on_upgrade).

        Its Content-Length is within `max_body_bytes` (checked with its head). Once the
        body is complete the request joins `_pending` and goes to the app. After an h2c
        upgrade on a connection kept alive, the bytes after the body are returned, to be
        parsed as the next requests by a fresh parser; after any other, reading stops:
        bytes after it are the new protocol's. Returns b"" while the body is incomplete
        (or when discarding input).
        """
        exchange = self._raw_exchange
        if exchange is None or self._closed:
            return b""
        left = self._content_length - self._body_bytes
        self._continue_wanted = False  # the body is coming
        self.on_body(data[:left] if len(data) > left else data)
        if self._body_bytes < self._content_length:
            self._body_progressed()
            return b""
        rest = b""
        if self._upgrade_kept:
            self._raw_exchange = None
            self._in_request = False
            self._cancel_header_timer()
            self._parser = httptools.HttpRequestParser(self)
            rest = data[left:]
        else:
            self._stop_reading()  # clears _raw_exchange
        self._upgrade_body_read(exchange)
        self._dispatch()
        return rest

    def _upgrade_body_read(self, exchange: _ServerExchange) -> None:
        """The body of upgrade request `exchange` is read: it joins the requests to hand over."""
        body = self._body
        exchange.body = (body[0] if len(body) == 1 else b"".join(body)) if body else b""
        exchange.started = _monotonic()
        self._pending.append(exchange)
        self._ready.append(exchange)

    def _stop_reading(self) -> None:
        self._accepting = False
        self._in_request = False
        self._raw_exchange = None  # an upgrade request whose body was incomplete: never handed over
        self._chunked_exchange = None
        self._in_head = False
        self._continue_wanted = False
        self._cancel_header_timer()

    def _refuse(self, status: int, error_type: str, message: str) -> None:
        """Answer `status` after the requests before it, then close; read nothing more."""
        if not self._accepting or self._closed:
            return
        request_id = self._request_id if self._in_request and self._request_id else new_request_id()
        # A 413 comes once the head is read (its path is this request's): the app is told,
        # and records it if it is a /run request (SPEC §10). Other refusals may come before
        # the path, or with the path of the request before.
        told = status == 413 and self._in_request
        method, path, query = (self._parser.get_method(), self._path, self._query) if told else (b"", b"", b"")
        self._stop_reading()
        self._refused = True
        exchange = _ServerExchange(
            self, method, path, query, [], b"", self._client, request_id, False, _monotonic()
        )
        exchange.http10_keep_alive = False
        self._pending.append(exchange)
        exchange.respond(status, error_body(error_type, message), close=True)
        if told:
            try:
                self._app.refused(exchange, error_type)
            except Exception:
                logger.exception("request %s: refused raised", request_id)

    # -- answers ----------------------------------------------------------

    def _dispatch(self) -> None:
        ready, self._ready = self._ready, []
        if self._held or self._write_paused or len(self._pending) > self._state.max_pipelined:
            # Beyond the window (every request in _pending is handed over or in `ready`).
            self._held.extend(ready)
            self._dispatch_held()
            return
        self._dispatching = True
        try:
            for exchange in ready:
                if self._closing_answer:
                    break
                self._hand_to_app(exchange)
        finally:
            self._dispatching = False
        if self._pending and self._pending[0].done:
            self._flush()

    def _dispatch_held(self) -> None:
        """Hand held requests to the app while the window has room, writing the answers
        done meanwhile (which makes room); a loop, not a recursion through _flush."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while True:
                self._hand_over_held()
                pending = self._pending
                if self._closed or not pending or not pending[0].done:
                    return
                self._flush()
                if not self._held:
                    return
        finally:
            self._pumping = False

    def _hand_over_held(self) -> None:
        held = self._held
        limit = self._state.max_pipelined
        self._dispatching = True
        try:
            while held and not self._write_paused and not self._closed and len(self._pending) - len(held) < limit:
                if self._closing_answer:
                    return
                self._hand_to_app(held.popleft())
        finally:
            self._dispatching = False

    def _hand_to_app(self, exchange: _ServerExchange) -> None:
        """The app handles `exchange` (unless its client left); an exception it raises is
        answered 500 InternalError, so that one bad request never ends the connection."""
        if exchange.cancelled:
            return
        try:
            self._app.handle(exchange)
        except Exception:
            logger.exception("request %s: the app raised", exchange.request_id)
            exchange.respond(500, error_body("InternalError", "Internal error"))
        if exchange.close_after and exchange.done:
            # The connection closes after this answer (SPEC §11: 503 ShuttingDown with
            # `Connection: close`): what the client pipelined behind it is not taken. It
            # is not handed over, answered or recorded, as if never sent: the close tells
            # the client to send it again elsewhere. Nothing more is read.
            self._closing_answer = True
            self._stop_reading()

    def _drop_held(self) -> None:
        """The client is gone: requests held back never reach the app (a /run one is
        recorded as 499 ClientGone by app.refused, SPEC §10). Or the node closes the
        connection after an answer (_closing_answer): they are not taken, not recorded."""
        held, self._held = self._held, deque()
        for exchange in held:
            exchange.cancel()
            if self._closing_answer:
                continue
            exchange.status = CLIENT_GONE_STATUS
            try:
                self._app.refused(exchange, CLIENT_GONE)
            except Exception:
                logger.exception("request %s: refused raised", exchange.request_id)

    def exchange_done(self, exchange: Exchange) -> None:
        """Called by `Exchange.respond`: write it now if every earlier answer is written."""
        if self._dispatching or self._closed:
            return
        pending = self._pending
        if pending and pending[0] is exchange:
            self._flush()

    def exchange_given_up(self, exchange: Exchange) -> None:
        """Called by `Exchange.give_up`, after the client's EOF: `exchange` is never
        answered, so it no longer holds the answers behind it; the last closes."""
        pending = self._pending
        if self._closed or exchange not in pending:
            return
        pending.remove(cast(_ServerExchange, exchange))
        if self._dispatching:
            return  # eof_received writes what is done, or closes, once its loop is over
        if pending and pending[0].done:
            self._flush()
        else:
            self._check_idle()

    def _flush(self) -> None:
        """Write the answers done at the head of `_pending` (callers check the first is).

        An answer that leaves nothing pending, on a connection that closes once idle
        (the client's EOF, or the node draining; see _check_idle), says `Connection:
        close` and closes it (SPEC §11): a keep-alive client told nothing would send
        its next request on a connection about to close. Not while a request is being
        read: that one is answered first.
        """
        pending = self._pending
        exchange = pending.popleft()
        close = exchange.close_after or not exchange.keep_alive
        if not pending and not close:  # the last answer for now
            close = (self._read_eof or self._state.draining) and not self._in_request
        data = self._render(exchange, close)
        if not close and pending and pending[0].done:  # pipelined answers ready together
            out = [data]
            while not close and pending and pending[0].done:
                exchange = pending.popleft()
                close = exchange.close_after or not exchange.keep_alive
                if not pending and not close:
                    close = (self._read_eof or self._state.draining) and not self._in_request
                out.append(self._render(exchange, close))
            data = b"".join(out)
        transport = self._transport
        assert transport is not None
        transport.write(data)
        if close:
            self._close(linger=self._refused)
            return
        if self._held and not self._pumping:
            self._dispatch_held()  # answers written: room in the window
            if self._closed:
                return
        if self._continue_wanted:
            self._send_continue()
        if self._reading_paused:
            self._update_reading()
        self._check_idle()

    def _send_continue(self) -> None:
        """Expect: 100-continue, once every earlier answer is written."""
        if not self._pending and self._in_request and self._transport is not None:
            self._continue_wanted = False
            self._transport.write(CONTINUE_LINE)

    def _render(self, exchange: _ServerExchange, close: bool) -> bytes:
        headers = exchange.response_headers
        if exchange.http10_keep_alive and not close:
            headers = (*headers, ("connection", "keep-alive"))
        try:
            data = render_response(  # positional: once per answer
                exchange.status,
                exchange.response_body,
                exchange.request_id,
                exchange.content_type,
                headers,
                close,
            )
        except ValueError:
            logger.exception("request %s: the answer could not be rendered", exchange.request_id)
            return render_error(
                500, "InternalError", "Internal error", request_id=exchange.request_id, close=close
            )
        body = exchange.response_body
        if exchange.method == b"HEAD" and body and data.endswith(body):
            data = data[: len(data) - len(body)]
        return data

    # -- idle, timers, close ----------------------------------------------

    def _check_idle(self) -> None:
        if self._pending or self._in_request or self._closed:
            return
        if self._read_eof or self._state.draining or not self._accepting:
            self._close()
            return
        # One long-lived timer per connection instead of one per request: new
        # data only clears `_idle_since`, and the timer re-arms itself for the
        # rest of the delay when it fires early (call_later and cancel cost more
        # than the rest of a request's bookkeeping).
        self._idle_since = self._loop.time()
        if self._keepalive_timer is None:
            self._keepalive_timer = self._loop.call_later(
                self._keepalive_timeout_s, self._on_keepalive_timer
            )

    def close_if_idle(self) -> None:
        if not self._pending and not self._in_request:
            self._close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _on_keepalive_timer(self) -> None:
        self._keepalive_timer = None
        if self._idle_since is None or self._pending or self._in_request:
            return  # busy: armed again when it next becomes idle
        left_s = self._idle_since + self._keepalive_timeout_s - self._loop.time()
        if left_s > 0:
            self._keepalive_timer = self._loop.call_later(left_s, self._on_keepalive_timer)
        else:
            self._close()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and not self._reading_paused:
            self._header_timer = self._loop.call_later(
                self._header_timeout_s, self._on_header_timeout
            )

    def _body_progressed(self) -> None:
        """A read brought body bytes of a request whose body is still incomplete."""
        now = self._loop.time()
        self._body_progress_s = now
        if self._body_since_s == 0.0:
            self._body_since_s = now
        self._arm_header_timer()

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if not self._in_head and self._in_request:
            # Body in progress: close if no byte came for the whole limit, or if, past
            # that limit, the body has come slower than _MIN_BODY_RATE on average: a
            # drip of a byte a second would hold the connection for days (as Apache's
            # mod_reqtimeout, whose default MinRate this is).
            left_s = (
                min(self._body_progress_s, self._body_since_s + self._body_bytes / _MIN_BODY_RATE)
                + self._header_timeout_s
                - self._loop.time()
            )
            if left_s > 0:
                self._header_timer = self._loop.call_later(left_s, self._on_header_timeout)
                return
        if self._pending:
            # Requests read in full before the stalled one may have run: their answers
            # are written first, the last one closing the connection.
            self._pending[-1].keep_alive = False
            self._stop_reading()
            return
        self._close()  # SPEC §3.4: a client too slow with its request is disconnected

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_header_timer()
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    def _cancel_pending(self) -> None:
        self._drop_held()
        pending, self._pending = self._pending, deque()
        self._ready = []
        self._raw_exchange = None  # never handed over: nothing to cancel
        for exchange in pending:
            try:
                exchange.cancel()
            except Exception:
                logger.exception("request %s: on_cancel raised", exchange.request_id)

    def _close(self, linger: bool = False) -> None:
        """Close after what was written; later pending requests are cancelled."""
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        self._cancel_timers()
        self._cancel_pending()
        transport = self._transport
        assert transport is not None
        if linger and not self._read_eof and transport.can_write_eof():
            # Input may still be arriving (e.g. a body we refused): closing now
            # could reset the connection before the client reads the answer.
            # Reads go on, discarded, until the client's EOF or the linger delay.
            transport.write_eof()
            if self._reading_paused:
                self._reading_paused = False
                transport.resume_reading()
            self._linger_timer = self._loop.call_later(self._state.linger_s, transport.close)
            return
        transport.close()
