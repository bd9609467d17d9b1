"""The load generator of one process: keep-alive HTTP/1.1 connections on uvloop.

    stage timer --due--> Generator.submit --idle conn?--> Connection.send --> socket
                              |  no: backlog (FIFO), grow the pool up to its cap
    Connection.on_message_complete --> Recorder.answered --> Generator._available
                                          (next backlog item, next closed-loop send, or idle)

* Closed loop (`connections`): each of N connections sends its next request as
  soon as the previous answer arrives; latency runs from the actual send.
* Open loop (`rate`): requests are due at fixed intended times (`schedule`),
  whether or not earlier ones were answered; a due request takes an idle
  connection or waits in the backlog while the pool grows. Latency runs from
  the intended time, so a slow server cannot hide queueing (coordinated
  omission): time spent in the backlog always counts.

The event loop's timers have a resolution of about 1 ms, so a request is
issued by the timer tick that comes within TIMER_SLACK_S of its intended time
(early or late), and its latency runs from that issue time: from the intended
time, off by the timer's jitter only, never spinning the CPU to hit it exactly.
A tick later than the slack (a busy generator) charges the excess to the
latency too, and shows as send lag in the report.

Requests are pre-rendered bytes, answers are parsed with httptools, and the
body is read only for non-200 answers (their `errorType`). One request in flight
per connection (no pipelining). Must not import `lightnode`.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from collections.abc import Iterator
from time import monotonic
from typing import Any

import httptools

from loadtest.plan import Stage
from loadtest.recorder import Recorder
from loadtest.schedule import stage_offsets

# After a failed connect, wait this long before trying again: against a dead
# target a tight retry loop would only measure how fast we can get refused.
CONNECT_RETRY_S = 0.1
# Connections being opened at once, at least (else as many as are open: the
# pool may double per connect round trip, like TCP slow start).
MIN_CONNECTING = 4
# How often in-flight requests are checked against the request timeout.
SWEEP_INTERVAL_S = 0.1
# A request may be issued this far from its intended time without it counting
# (the loop's ~1 ms timer resolution); see the module docstring.
TIMER_SLACK_S = 0.001


class Connection(asyncio.Protocol):
    """One keep-alive client connection with at most one request in flight."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport
        self.parser = httptools.HttpResponseParser(self)
        self.busy = False
        self.origin = 0.0  # latency origin
        self.due = 0.0  # intended time: decides the request's second and stage
        self.body_parts: list[bytes] = []  # of a non-200 answer (its errorType)
        # The bytes of the answer being read, for one that ends where the peer closes.
        self.unfinished: list[bytes] = []
        self.dead = False

    # -- asyncio callbacks
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.unfinished.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.generator.lost(self, "invalid")
            self.close()

    def eof_received(self) -> bool | None:
        self._answer_at_eof()
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._answer_at_eof()
        self.generator.lost(self, "reset")

    def _answer_at_eof(self) -> None:
        """Complete an answer whose body ends where the peer closes (HTTP/1.0, or
        no Content-Length and not chunked): httptools has no call for the end of
        the stream, so its head is read again from the bytes kept."""
        if not self.busy or not self.unfinished:
            return
        answer = read_close_delimited(b"".join(self.unfinished))
        self.unfinished = []
        if answer is None:
            return  # cut short: a reset
        status, body = answer
        self.busy = False
        error_type = None if status == 200 else error_type_of(body)
        self.generator.answered(self, status, error_type, False, monotonic())

    # -- httptools callbacks (no on_headers_complete: one Python call less per answer)
    def on_body(self, body: bytes) -> None:
        if self.parser.get_status_code() != 200:
            self.body_parts.append(body)

    def on_message_complete(self) -> None:
        now = monotonic()
        parts = self.body_parts
        if parts:
            self.body_parts = []
        self.unfinished.clear()
        if not self.busy:
            return  # an answer nobody asked for; ignore it
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the final one follows
        self.busy = False
        error_type = None if status == 200 else error_type_of(b"".join(parts))
        self.generator.answered(self, status, error_type, parser.should_keep_alive(), now)

    # -- generator side
    def send(self, request: bytes, origin: float, due: float) -> None:
        self.busy = True
        self.origin = origin
        self.due = due
        self.transport.write(request)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class _Head:
    """httptools callbacks that keep an answer's framing headers and body."""

    def __init__(self) -> None:
        self.framed = False  # Content-Length or Transfer-Encoding: not ended by the close
        self.complete = False  # the head was read
        self.body: list[bytes] = []

    def on_header(self, name: bytes, _value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.complete = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)


def read_close_delimited(data: bytes) -> tuple[int, bytes] | None:
    """(status, body) of a final answer in `data` whose body ends at the end of the
    stream; None when `data` holds no complete head, an interim (1xx) head only,
    or an answer framed by Content-Length or chunks (so the close cut it short)."""
    parser = httptools.HttpResponseParser(head := _Head())
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    status = parser.get_status_code()
    if not head.complete or head.framed or status < 200 or status in (204, 304):
        return None
    return status, b"".join(head.body)


def error_type_of(body: bytes) -> str | None:
    """The `errorType` of a lightnode/DSS error body, or None if there is none."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    error_type = value.get("errorType") if isinstance(value, dict) else None
    return error_type if isinstance(error_type, str) else None


class Generator:
    """Drives one process's share of the load through a pool of connections."""

    def __init__(
        self,
        host: str,
        port: int,
        requests: tuple[bytes, ...],
        recorder: Recorder,
        *,
        proc_index: int = 0,
        procs: int = 1,
        max_connections: int = 2048,
        timeout_s: float = 30.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port = host, port
        self.requests = requests
        self.recorder = recorder
        self.proc_index, self.procs = proc_index, procs
        self.max_connections = max(1, max_connections)
        self.timeout_s = timeout_s
        self.conns: set[Connection] = set()
        self.idle: list[Connection] = []
        self.connecting = 0
        self.backlog: deque[tuple[float, float, int]] = deque()  # origin, due, index
        self.busy_count = 0
        self.peak_connections = 0
        self.connect_attempts = 0
        self.closed_target = 0  # closed-loop connections wanted in this stage
        self.stage_end = 0.0
        self.sequence = 0  # closed-loop request counter of this process
        self.draining = False
        self.drained: asyncio.Future[None] = self.loop.create_future()
        self._schedule: Iterator[tuple[float, int]] | None = None
        self._next_due: float | None = None
        self._next_index = 0
        self._stage_start = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    # -- stages
    def start_stage(self, stage: Stage, start: float) -> None:
        """Begin `stage` at monotonic time `start` (now or a moment ago)."""
        self._cancel_timer()
        self.stage_end = start + stage.duration_s
        self._stage_start = start
        if stage.is_open_loop:
            self.closed_target = 0
            self._schedule = stage_offsets(stage, self.proc_index, self.procs)
            self._next_due = self._advance()
            self._tick()
        else:
            self._schedule = None
            self.closed_target = stage.connections or 0
            self._fill_closed_loop()

    def finish(self) -> None:
        """Send nothing new; resolve `drained` once nothing is pending."""
        self._cancel_timer()
        self.closed_target = 0
        self.draining = True
        self._check_drained()

    def stop(self) -> None:
        """Give up on everything pending (deadline passed or run aborted)."""
        now = monotonic()
        while self.backlog:
            _, due, _ = self.backlog.popleft()
            self.recorder.failed(due, now, "timeout")
        for conn in list(self.conns):
            if conn.busy:
                conn.busy = False
                self.busy_count -= 1
                self.recorder.failed(conn.due, now, "timeout")
            conn.close()
        self._sweeper.cancel()
        self._cancel_timer()
        if self._retry is not None:
            self._retry.cancel()
        if not self.drained.done():
            self.drained.set_result(None)

    # -- open loop
    def _advance(self) -> float | None:
        assert self._schedule is not None
        for offset, index in self._schedule:
            self._next_index = index
            return self._stage_start + offset
        return None

    def _tick(self) -> None:
        self._timer = None
        now = monotonic()
        due = self._next_due
        while due is not None and due <= now + TIMER_SLACK_S:
            # Latency origin: now, unless this tick is late by more than the slack.
            self.submit(min(now, due + TIMER_SLACK_S), due, self._next_index)
            due = self._advance()
        self._next_due = due
        if due is not None:
            self._timer = self.loop.call_later(due - now, self._tick)

    def submit(self, origin: float, due: float, index: int) -> None:
        """Send request `index` now, or queue it for a connection.

        Args:
            origin: when its latency starts (its intended time, within the slack).
            due: its intended time; counts it in a second, a stage, or the warm-up.
        """
        self.recorder.issued(due)
        if self.idle and not self.backlog:
            self._send(self.idle.pop(), origin, due, index)
            return
        self.backlog.append((origin, due, index))
        self._grow()

    def _grow(self) -> None:
        """Open connections for waiting requests, at most doubling the pool per round.

        One new connection per backlogged request would open hundreds at once
        whenever connects are slower than the arrival gap; an answer on an
        existing connection usually comes sooner than a new connection. After
        a failed connect nothing opens until the retry, however many requests
        come due meanwhile.
        """
        if self._retry is not None:
            return
        wanted = len(self.backlog) + self._closed_deficit(monotonic())
        max_connecting = max(MIN_CONNECTING, len(self.conns))
        while (
            wanted > self.connecting
            and self.connecting < max_connecting
            and len(self.conns) + self.connecting < self.max_connections
        ):
            self._open()

    # -- closed loop
    def _closed_deficit(self, now: float) -> int:
        if self.closed_target == 0 or now >= self.stage_end:
            return 0
        return max(0, self.closed_target - self.busy_count - len(self.backlog))

    def _fill_closed_loop(self) -> None:
        while self.idle and self._closed_deficit(monotonic()) > 0:
            self._send_next_closed(self.idle.pop())
        self._grow()

    def _send_next_closed(self, conn: Connection) -> None:
        """Send the next closed-loop request; its latency runs from now, its send lag is 0."""
        index = self.sequence * self.procs + self.proc_index
        self.sequence += 1
        origin = monotonic()
        self.recorder.issued(origin)
        self.busy_count += 1
        conn.send(self.requests[index % len(self.requests)], origin, origin)

    # -- connections
    def _send(self, conn: Connection, origin: float, due: float, index: int) -> None:
        """Send a due request (open loop): its send lag runs from `origin` to now."""
        self.busy_count += 1
        self.recorder.wrote(origin, due, monotonic())
        conn.send(self.requests[index % len(self.requests)], origin, due)

    def _available(self, conn: Connection, now: float) -> None:
        """`conn` is connected and has nothing in flight: give it work or park it."""
        if self.backlog:
            origin, due, index = self.backlog.popleft()
            self._send(conn, origin, due, index)
        elif self._closed_deficit(now) > 0:
            self._send_next_closed(conn)
        else:
            self.idle.append(conn)
            self._check_drained()

    def _open(self) -> None:
        self.connecting += 1
        self.connect_attempts += 1
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: Connection(self), self.host, self.port),
                timeout=min(self.timeout_s, 10.0),
            )
        except (OSError, asyncio.TimeoutError):
            self.connecting -= 1
            self.recorder.connect_failed(monotonic())
            self._retry_later()
            return
        self.connecting -= 1
        if conn.dead or self.drained.done():
            conn.close()  # closed by the peer already, or the run is over
            return
        self.conns.add(conn)
        self.peak_connections = max(self.peak_connections, len(self.conns))
        self._available(conn, monotonic())
        self._grow()  # the next round of connects, if requests still wait for one

    def _retry_later(self) -> None:
        if self._retry is None and not self.drained.done():
            self._retry = self.loop.call_later(CONNECT_RETRY_S, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._grow()

    def answered(
        self, conn: Connection, status: int, error_type: str | None, keep_alive: bool, now: float
    ) -> None:
        """An answer on `conn`, read at `now`."""
        self.busy_count -= 1
        self.recorder.answered(conn.origin, conn.due, now, status, error_type)
        if keep_alive:
            self._available(conn, now)
        else:
            conn.dead = True
            self.conns.discard(conn)
            conn.close()
            self._grow()
            self._check_drained()

    def lost(self, conn: Connection, kind: str) -> None:
        """`conn` closed or broke; a request in flight on it failed with `kind`."""
        if conn.busy:
            conn.busy = False
            self.busy_count -= 1
            self.recorder.failed(conn.due, monotonic(), kind)
        if conn.dead:
            return
        conn.dead = True
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if not self.drained.done():
            self._grow()
            self._check_drained()

    def _sweep(self) -> None:
        now = monotonic()
        for conn in list(self.conns):
            if conn.busy and now - conn.origin > self.timeout_s:
                self.lost(conn, "timeout")
                conn.close()
        while self.backlog and now - self.backlog[0][0] > self.timeout_s:
            _, due, _ = self.backlog.popleft()
            self.recorder.failed(due, now, "timeout")
        self._check_drained()
        if not self.drained.done():
            self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def _check_drained(self) -> None:
        if self.draining and not self.backlog and self.busy_count == 0 and not self.drained.done():
            self.drained.set_result(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._schedule = None
        self._next_due = None

    def snapshot(self) -> dict[str, int]:
        return {
            "connections": len(self.conns),
            "in_flight": self.busy_count,
            "backlog": len(self.backlog),
        }
