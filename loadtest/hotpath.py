"""Server-side CPU per request, without sockets or worker processes.

    python -m loadtest.hotpath [--requests N] [--profile] [--no-observers]

Feeds keep-alive POSTs into the real HttpProtocol (fake transport) of a real
NodeApp, Registry and EndpointPool whose pipeline is an in-process fake that
answers at once. What remains is every line of Python the node runs per
request, with metrics and the query log on: the number to drive down when
optimising the hot path (syscalls and the pipe round trip come on top).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from lightnode.config.model import LoggingSettings, ServerLimits
from lightnode.http.app import NodeApp
from lightnode.http.protocol import HttpProtocol, ServerState
from lightnode.scheduler import registry as registry_module
from lightnode.scheduler.registry import Registry
from lightnode.scheduler.scheduler import EndpointPool
from lightnode.services.store import DataDir, MappingEntry, ServiceState
from lightnode.worker import runtime

REQUEST = (
    b"POST /public/api/v1/bench/add/run HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Length: 16\r\n\r\n{\"a\": 1, \"b\": 2}"
)


class InstantWorker:
    """A pipeline that is ready at once and answers each call synchronously."""

    def __init__(self, loop: Any, worker_id: int, spec: Any, listener: Any) -> None:
        self.worker_id, self.listener, self.pid, self.started_at = worker_id, listener, 0, 0.0

    def spawn(self) -> None:
        self.listener.worker_ready(self.worker_id, {})

    def send_call(self, body: bytes) -> None:
        self.listener.worker_answered(self.worker_id, runtime.RESULT, 3, b'{"sum":3}')

    def stop(self) -> None: ...

    def kill(self, *, dump_stack: bool = True) -> None: ...

    def rss_bytes(self) -> int:
        return 0


class SinkTransport:
    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += 1

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


def build(root: Path, observers: bool) -> tuple[HttpProtocol, SinkTransport, Any]:
    data = DataDir(root)
    data.ensure_layout()
    gen = data.generation_dir("bench", "v1")
    gen.mkdir(parents=True)
    (gen / "add.py").write_text("def add(a, b):\n    return {'sum': a + b}\n")
    (gen / "service.json").write_text(json.dumps(
        {"id": "bench", "endpoints": [{"id": "add", "type": "python-function", "code": "add.py"}]}
    ))
    data.write_state("bench", ServiceState(enabled=True, entries=(MappingEntry("v1", 1.0),)))
    loop = asyncio.new_event_loop()
    app = NodeApp(root)
    registry_module.EndpointPool = partial(EndpointPool, worker_factory=InstantWorker)  # type: ignore[misc]
    app.registry = Registry(loop, data, app)
    app.registry.load_all()
    if observers:
        from lightnode.observe.metrics import RequestMetrics
        from lightnode.observe.querylog import QueryLog

        app.observers.append(RequestMetrics(lambda service, endpoint: True))
        settings = LoggingSettings()
        app.observers.append(QueryLog(
            data.logs_dir / "queries.log", loop=loop,
            max_bytes=settings.query_log_max_bytes, backups=settings.query_log_backups,
        ))
    protocol = HttpProtocol(app, ServerState(ServerLimits()), loop)
    transport = SinkTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport, loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.hotpath", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--profile", action="store_true", help="print the top functions by own time")
    parser.add_argument("--no-observers", action="store_true", help="without metrics and query log")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        protocol, transport, loop = build(Path(tmp), observers=not args.no_observers)
        for _ in range(2000):  # warm up
            protocol.data_received(REQUEST)
        profiler = cProfile.Profile() if args.profile else None
        started_cpu = time.process_time()
        if profiler:
            profiler.enable()
        for _ in range(args.requests):
            protocol.data_received(REQUEST)
        if profiler:
            profiler.disable()
        cpu_us = (time.process_time() - started_cpu) / args.requests * 1e6
        assert transport.written >= args.requests, "answers missing"
        print(f"{cpu_us:.1f} us of server CPU per request (Python only, observers "
              f"{'off' if args.no_observers else 'on'}, {args.requests} requests)")
        if profiler:
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
