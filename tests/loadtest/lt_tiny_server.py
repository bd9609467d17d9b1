"""A tiny HTTP/1.1 server that answers like lightnode, for the harness's own tests.

asyncio + httptools, keep-alive, one thread of its own. `/run` answers the
success envelope (SPEC §3.3), except every `reject_every`-th request, which
gets 503 QueueFull (SPEC §3.4). `/metrics` serves the two pool gauges the
scraper reads, `/isAlive` answers 200. Loopback only.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import httptools

OK_BODY = json.dumps(
    {
        "response": {"sum": 3},
        "timing": {"wait": 5, "execution": 40, "functionInternal": 2},
        "apiContext": {"serviceId": "bench", "endpointId": "add", "serviceGeneration": "v1"},
    }
).encode()
FULL_BODY = json.dumps(
    {
        "errorType": "QueueFull",
        "message": "Request queue is full",
        "detailedMessage": "Request queue is full",
    }
).encode()
METRICS = (
    b"# HELP lightnode_pipelines Pipelines by state\n"
    b"# TYPE lightnode_pipelines gauge\n"
    b'lightnode_pipelines{service="bench",endpoint="add",state="idle"} 1\n'
    b'lightnode_pipelines{service="bench",endpoint="add",state="busy"} 2\n'
    b'lightnode_pipelines{service="bench",endpoint="add",state="starting"} 0\n'
    b'lightnode_pipelines{service="other",endpoint="add",state="busy"} 7\n'
    b'lightnode_queue_length{service="bench",endpoint="add"} 3\n'
)


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


@dataclass
class Counters:
    runs: int = 0
    rejected: int = 0
    paths: dict[str, int] = field(default_factory=dict)
    # With TinyServer(record=True): each /run request's body and Authorization header.
    bodies: list[bytes] = field(default_factory=list)
    authorizations: list[bytes | None] = field(default_factory=list)


class _Protocol(asyncio.Protocol):
    def __init__(self, server: TinyServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport
        self.url = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        self.transport.write(self.server.answer(self.url.decode()))


class _RecordingProtocol(_Protocol):
    """Also keeps each /run request's body and Authorization header (record=True)."""

    def __init__(self, server: TinyServer) -> None:
        super().__init__(server)
        self.body = b""
        self.authorization: bytes | None = None

    def on_message_begin(self) -> None:
        self.body, self.authorization = b"", None

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.authorization = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.url.startswith(b"/public/api/v1/"):
            self.server.counters.bodies.append(self.body)
            self.server.counters.authorizations.append(self.authorization)
        super().on_message_complete()


class TinyServer:
    """Start with `start()`, which returns the base URL; `stop()` at the end."""

    def __init__(
        self, reject_every: int = 0, use_uvloop: bool = False, record: bool = False
    ) -> None:
        self.reject_every = reject_every
        self.record = record
        self.counters = Counters()
        if use_uvloop:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._ok = _response("200 OK", OK_BODY)
        self._full = _response("503 Service Unavailable", FULL_BODY)

    def answer(self, path: str) -> bytes:
        counters = self.counters
        if path.startswith("/public/api/v1/"):
            counters.runs += 1
            if self.reject_every and counters.runs % self.reject_every == 0:
                counters.rejected += 1
                return self._full
            return self._ok
        counters.paths[path] = counters.paths.get(path, 0) + 1
        if path == "/metrics":
            return _response("200 OK", METRICS, b"text/plain; version=0.0.4")
        if path == "/isAlive":
            return _response("200 OK", b"{}")
        return _response(
            "404 Not Found",
            json.dumps(
                {"errorType": "NotFound", "message": path, "detailedMessage": path}
            ).encode(),
        )

    def start(self, port: int = 0) -> str:
        async def serve() -> int:
            protocol = _RecordingProtocol if self.record else _Protocol
            self._server = await self.loop.create_server(lambda: protocol(self), "127.0.0.1", port)
            return int(self._server.sockets[0].getsockname()[1])

        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(5)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


if __name__ == "__main__":  # a standalone server for measuring the generator
    import sys
    import time

    server = TinyServer(use_uvloop=True)
    print(server.start(), flush=True)
    start_cpu, start = time.process_time(), time.monotonic()
    try:
        sys.stdin.read()  # until stdin closes
    finally:
        cpu_pct = 100 * (time.process_time() - start_cpu) / (time.monotonic() - start)
        print(f"served {server.counters.runs} runs, cpu {cpu_pct:.0f}%", file=sys.stderr)
