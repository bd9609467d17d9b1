"""Protocol overhead per request with a no-op transport (marked `load`: out of the
default run). Run: python -m pytest tests/unit/http/test_protocol_bench.py -m load -s"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import uvloop

from lightnode.config.model import ServerLimits
from lightnode.http.exchange import Exchange
from lightnode.http.protocol import HttpProtocol, ServerState

REQUEST = (
    b"POST /public/api/v1/svc/ep/run HTTP/1.1\r\nHost: 127.0.0.1:12000\r\n"
    b"User-Agent: python-requests/2.31\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\n"
    b"Connection: keep-alive\r\nContent-Length: 16\r\nAuthorization: Basic a2V5Og==\r\n\r\n"
    b'{"a": 1, "b": 2}'
)
ANSWER = b'{"response": 42, "timing": {"wait": 1, "execution": 2, "functionInternal": 1}}'


class NullTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def write(self, data: Any) -> None:
        self.writes += 1


class EchoApp:
    def handle(self, exchange: Exchange) -> None:
        exchange.respond(200, ANSWER)


def per_request_us(batch: int, requests: int = 100_000) -> float:
    loop = uvloop.new_event_loop()
    try:
        protocol = HttpProtocol(EchoApp(), ServerState(ServerLimits()), loop)
        transport = NullTransport()
        protocol.connection_made(transport)
        data = REQUEST * batch
        rounds = requests // batch
        start = time.perf_counter()
        for _ in range(rounds):
            protocol.data_received(data)
        elapsed = time.perf_counter() - start
        assert transport.writes == rounds
        return elapsed / (rounds * batch) * 1e6
    finally:
        loop.close()


@pytest.mark.load
@pytest.mark.parametrize("batch", [1, 16])
def test_protocol_overhead_per_request(batch: int) -> None:
    best = min(per_request_us(batch) for _ in range(3))
    print(f"\nprotocol overhead, {batch} request(s) per read: {best:.2f} us/request")
    assert best < 100  # a loose guard against pathological regressions
