"""The floor: lightnode's architecture with none of its features, as a reference server.

    python -m loadtest.peers.floor --port P [--host 127.0.0.1] [--pipelines 2] [--depth 2]

One uvloop process parses HTTP/1.1 with httptools and hands each request body
to a pipeline process over an OS pipe (a 4-byte length, then the JSON body);
each pipeline is a stdlib loop that runs one function of the bench service and
writes the JSON result back the same way. A FIFO per endpoint feeds the
pipelines; each holds up to `depth` requests in its pipe (depth 2: one running,
one waiting behind it, like lightnode's prefetch). The answer has the same
envelope and headers as lightnode's.

What it leaves out is everything a product needs: no pool sizing, queue bound
or timeout, no crash or hang handling, no metrics, no query log, no request-id
validation, no limits, no HTTP error answers beyond 404 (a malformed request
closes the connection), no pipelining (one request in flight per connection,
as the harness and wrk send). It measures what the architecture costs on this
machine, so that lightnode's own cost per request can be read against it.
Must not import `lightnode`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import struct
import subprocess
import sys
from collections import deque

import httptools
import uvloop

from loadtest.peers.apps import BENCH_FILE, GENERATION, SERVICE_ID

LENGTH = struct.Struct("!I")
PREFIX = f"/public/api/v1/{SERVICE_ID}/".encode()
ENDPOINTS = ("add", "spin")  # the measured functions

# The pipeline: stdlib only, as lightnode's.
PIPELINE = r"""
import importlib.util, json, os, struct, sys
LENGTH = struct.Struct("!I")
spec = importlib.util.spec_from_file_location("bench", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
function = getattr(module, sys.argv[2])
fd_in, fd_out = int(sys.argv[3]), int(sys.argv[4])
buffer = b""
while True:
    while len(buffer) < 4 or len(buffer) < 4 + LENGTH.unpack_from(buffer)[0]:
        data = os.read(fd_in, 65536)
        if not data:
            sys.exit(0)
        buffer += data
    size = LENGTH.unpack_from(buffer)[0]
    body, buffer = buffer[4 : 4 + size], buffer[4 + size :]
    result = json.dumps(function(**json.loads(body)) if body else function()).encode()
    os.write(fd_out, LENGTH.pack(len(result)) + result)
"""

_ids = itertools.count(1)
_ID_PREFIX = os.urandom(4).hex()


class Pipeline:
    """One pipeline process and the requests in its pipe, oldest first."""

    def __init__(self, loop: asyncio.AbstractEventLoop, endpoint: Endpoint, function: str) -> None:
        call_r, self._call_w = os.pipe()
        self._answer_r, answer_w = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-c", PIPELINE, str(BENCH_FILE), function, str(call_r), str(answer_w)],
            pass_fds=(call_r, answer_w),
        )
        os.close(call_r)
        os.close(answer_w)
        self._endpoint = endpoint
        self.in_pipe: deque[Connection] = deque()
        self._buffer = b""
        loop.add_reader(self._answer_r, self._on_answers)

    def send(self, connection: Connection, body: bytes) -> None:
        self.in_pipe.append(connection)
        os.write(self._call_w, LENGTH.pack(len(body)) + body)

    def _on_answers(self) -> None:
        self._buffer += os.read(self._answer_r, 65536)
        while len(self._buffer) >= 4:
            size = LENGTH.unpack_from(self._buffer)[0]
            if len(self._buffer) < 4 + size:
                break
            result, self._buffer = self._buffer[4 : 4 + size], self._buffer[4 + size :]
            self.in_pipe.popleft().answer(self._endpoint.envelope(result))
            self._endpoint.refill(self)


class Endpoint:
    """A FIFO in front of the pipelines of one function."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, name: str, pipelines: int, depth: int
    ) -> None:
        self.depth = depth
        self.waiting: deque[tuple[Connection, bytes]] = deque()
        self.pipelines = [Pipeline(loop, self, name) for _ in range(pipelines)]
        self._context = (
            b',"timing":{"wait":0,"execution":0,"functionInternal":0},"apiContext":{"serviceId":"'
            + SERVICE_ID.encode() + b'","endpointId":"' + name.encode()
            + b'","serviceGeneration":"' + GENERATION.encode() + b'"}}'
        )  # fmt: skip

    def envelope(self, result: bytes) -> bytes:
        return b'{"response":' + result + self._context

    def submit(self, connection: Connection, body: bytes) -> None:
        pipeline = min(self.pipelines, key=lambda p: len(p.in_pipe))
        if len(pipeline.in_pipe) < self.depth:
            pipeline.send(connection, body)
        else:
            self.waiting.append((connection, body))

    def refill(self, pipeline: Pipeline) -> None:
        if self.waiting and len(pipeline.in_pipe) < self.depth:
            pipeline.send(*self.waiting.popleft())


class Connection(asyncio.Protocol):
    """One keep-alive client connection; answers go out in request order."""

    endpoints: dict[bytes, Endpoint] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.closed = False

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        url, self.url = self.url, b""
        body, self.body = b"".join(self.body), []
        name = (
            url[len(PREFIX) : -len(b"/run")]
            if url.startswith(PREFIX) and url.endswith(b"/run")
            else b""
        )
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            self.answer(
                b'{"errorType":"NotFound","message":"Not found","detailedMessage":"Not found"}', 404
            )
        else:
            endpoint.submit(self, body)

    def answer(self, body: bytes, status: int = 200) -> None:
        if self.closed:
            return  # the client left: its answer is dropped
        head = b"HTTP/1.1 200 OK\r\n" if status == 200 else b"HTTP/1.1 404 Not Found\r\n"
        self.transport.write(  # type: ignore[attr-defined]
            head + b"content-type: application/json\r\ndss-apinode-api-version: 1\r\n"
            b"content-length: %d\r\nx-request-id: %s-%x\r\n\r\n%s"
            % (len(body), _ID_PREFIX.encode(), next(_ids), body)
        )


async def serve(host: str, port: int, pipelines: int, depth: int) -> None:
    loop = asyncio.get_running_loop()
    Connection.endpoints = {
        name.encode(): Endpoint(loop, name, pipelines, depth) for name in ENDPOINTS
    }
    server = await loop.create_server(Connection, host, port)
    try:
        await asyncio.Future()
    finally:
        server.close()
        for endpoint in Connection.endpoints.values():
            for pipeline in endpoint.pipelines:
                pipeline.process.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.peers.floor", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pipelines", type=int, default=2, help="per endpoint (default 2)")
    parser.add_argument("--depth", type=int, default=2, help="requests per pipe (default 2)")
    args = parser.parse_args(argv)
    try:
        uvloop.run(serve(args.host, args.port, args.pipelines, args.depth))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
