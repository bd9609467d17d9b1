"""Server-side CPU per request, without sockets or worker processes.

    python -m loadtest.hotpath [--requests N] [--connections C] [--profile] [--no-observers]

Feeds keep-alive POSTs into the real HttpProtocol (fake transport) of a real
NodeApp, Registry and EndpointPool whose pipelines are in-process fakes. What
remains is every line of Python the node runs per request, with metrics and
the query log on: the number to drive down when optimising the hot path
(syscalls and the pipe round trip come on top).

With `--connections 1` (the default) a pipeline answers each call at once, so
the pool is never busy. With C > 1, C connections each send their next
request as soon as their answer is written, and two pipelines answer in turn,
one call at a time, their answers framed and decoded by runtime.py's encoder
and decoder (the node's own reader, in scheduler/worker_handle.py, costs a
little less): the saturated steady state of a load test (queue, prefetch,
pipe frames).

`--profile` lists the top 25 functions by own time; HOTPATH_SORT (a pstats sort key,
e.g. cumulative or ncalls) and HOTPATH_TOP (a count) change that listing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any

from lightnode.config.model import LoggingSettings, ServerLimits
from lightnode.http.app import NodeApp
from lightnode.http.protocol import HttpProtocol, ServerState
from lightnode.scheduler.registry import Registry
from lightnode.services.store import DataDir, MappingEntry, ServiceState
from lightnode.worker import runtime
from loadtest.node import write_tuning

REQUEST = (
    b"POST /public/api/v1/bench/add/run HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b'Content-Length: 16\r\n\r\n{"a": 1, "b": 2}'
)


class InstantWorker:
    """A pipeline that is ready at once and answers each call synchronously."""

    def __init__(self, loop: Any, worker_id: int, spec: Any, listener: Any) -> None:
        self.worker_id, self.listener, self.pid, self.started_at = worker_id, listener, 0, 0.0

    def spawn(self) -> None:
        self.listener.worker_ready(self.worker_id, {})

    def send_call(self, body: bytes, start_by_ns: int = 0, tag: bytes = b"") -> None:
        self.listener.worker_answered(self.worker_id, runtime.RESULT, 3, b'{"sum":3}')

    def read_answers(self) -> None:
        """Answers are reported as they are made: none is ever written and unread."""

    def stop(self) -> None: ...

    def kill(self, *, dump_stack: bool = True) -> None: ...

    def rss_bytes(self) -> int:
        return 0


class QueueingWorker(InstantWorker):
    """A pipeline that keeps the calls it is sent (prefetch included) until told to answer one."""

    instances: list[QueueingWorker] = []  # in start order, for the driver

    def __init__(self, loop: Any, worker_id: int, spec: Any, listener: Any) -> None:
        super().__init__(loop, worker_id, spec, listener)
        self.calls: deque[bytes] = deque()
        self.decoder = runtime.FrameDecoder()
        QueueingWorker.instances.append(self)

    def send_call(self, body: bytes, start_by_ns: int = 0, tag: bytes = b"") -> None:
        self.calls.append(runtime.encode_frame(runtime.CALL, body, start_by_ns))

    def answer_one(self) -> bool:
        if not self.calls:
            return False
        self.calls.popleft()
        frame = runtime.encode_frame(runtime.RESULT, b'{"sum":3}', 3)
        for kind, value, body in self.decoder.feed(frame):
            self.listener.worker_answered(self.worker_id, kind, value, body)
        return True


class SinkTransport:
    def __init__(self, on_write: Any = None) -> None:
        self.written = 0
        self.on_write = on_write

    def write(self, data: bytes) -> None:
        self.written += 1
        if self.on_write is not None:
            self.on_write()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def set_write_buffer_limits(self, *args: Any, **kwargs: Any) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0


def build(
    root: Path, observers: bool, worker: Any = None, pool_size: int = 0
) -> tuple[HttpProtocol, SinkTransport, Any]:
    """A node app over the fake pipeline class `worker` (InstantWorker by default), one connection.

    `pool_size` > 0 writes a tuning file fixing the pool at that size (as the peer benchmark does).
    """
    data = DataDir(root)
    data.ensure_layout()
    gen = data.generation_dir("bench", "v1")
    gen.mkdir(parents=True)
    (gen / "add.py").write_text("def add(a, b):\n    return {'sum': a + b}\n")
    (gen / "service.json").write_text(
        json.dumps(
            {
                "id": "bench",
                "endpoints": [{"id": "add", "type": "python-function", "code": "add.py"}],
            }
        )
    )
    data.write_state("bench", ServiceState(enabled=True, entries=(MappingEntry("v1", 1.0),)))
    if pool_size:
        pool = {"floor": pool_size, "cruise": pool_size, "ceil": pool_size, "queue": 256}
        write_tuning(root, "bench", "add", {"pool": pool})
    loop = asyncio.new_event_loop()
    app = NodeApp(root)
    app.registry = Registry(loop, data, app, worker_factory=worker or InstantWorker)
    app.registry.load_all()
    if observers:
        from lightnode.observe.metrics import RequestMetrics
        from lightnode.observe.querylog import QueryLog

        app.observers.append(RequestMetrics(lambda service, endpoint: True))
        settings = LoggingSettings()
        app.observers.append(
            QueryLog(
                data.logs_dir / "queries.log",
                loop=loop,
                max_bytes=settings.query_log_max_bytes,
                backups=settings.query_log_backups,
            )
        )
    protocol = HttpProtocol(app, ServerState(ServerLimits()), loop)
    transport = SinkTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport, loop


class Saturated:
    """C connections, each sending its next request once answered, over two queueing pipelines."""

    def __init__(self, root: Path, observers: bool, connections: int) -> None:
        QueueingWorker.instances = []
        first, _, self.loop = build(root, observers, worker=QueueingWorker, pool_size=2)
        self.workers = QueueingWorker.instances
        self.answered: deque[HttpProtocol] = deque()
        self.protocols = [first]
        for _ in range(connections - 1):
            self.protocols.append(HttpProtocol(first._app, first._state, self.loop))
        self.transports = []
        for protocol in self.protocols:
            transport = SinkTransport(partial(self.answered.append, protocol))
            protocol.connection_made(transport)  # type: ignore[arg-type]
            self.transports.append(transport)
        for protocol in self.protocols:
            protocol.data_received(REQUEST)

    @property
    def written(self) -> int:
        return sum(transport.written for transport in self.transports)

    def run(self, requests: int) -> None:
        """Answer `requests` calls, the pipelines in turn; each answered client sends again."""
        workers = self.workers
        answered = self.answered
        turn = 0
        for _ in range(requests):
            worker = workers[turn]
            turn ^= 1
            if not worker.answer_one():
                workers[turn].answer_one()
            while answered:
                answered.popleft().data_received(REQUEST)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.hotpath", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument(
        "--connections",
        type=int,
        default=1,
        help="C > 1: C clients over two busy pipelines (queue, prefetch)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print the top functions by own time"
    )
    parser.add_argument("--no-observers", action="store_true", help="without metrics and query log")
    args = parser.parse_args(argv)
    observers = not args.no_observers
    with tempfile.TemporaryDirectory() as tmp:
        if args.connections > 1:
            saturated = Saturated(Path(tmp), observers, args.connections)
            saturated.run(2000)  # warm up
            before = saturated.written
            loop = saturated.loop

            def run() -> None:
                saturated.run(args.requests)
        else:
            protocol, transport, loop = build(Path(tmp), observers=observers)
            for _ in range(2000):  # warm up
                protocol.data_received(REQUEST)
            before = transport.written

            def run() -> None:
                for _ in range(args.requests):
                    protocol.data_received(REQUEST)

        profiler = cProfile.Profile() if args.profile else None
        started_cpu = time.process_time()
        if profiler:
            profiler.enable()
        run()
        if profiler:
            profiler.disable()
        cpu_us = (time.process_time() - started_cpu) / args.requests * 1e6
        written = (saturated.written if args.connections > 1 else transport.written) - before
        assert written >= args.requests, f"answers missing: {written} of {args.requests}"
        print(
            f"{cpu_us:.1f} us of server CPU per request (Python only, observers "
            f"{'on' if observers else 'off'}, {args.connections} connection(s), "
            f"{args.requests} requests)"
        )
        if profiler:
            pstats.Stats(profiler, stream=sys.stdout).sort_stats(os.environ.get("HOTPATH_SORT", "tottime")).print_stats(int(os.environ.get("HOTPATH_TOP", "25")))
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
