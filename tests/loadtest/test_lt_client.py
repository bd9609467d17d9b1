"""The generator of one process, in-process against small servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Coroutine
from time import monotonic
from typing import Any

import pytest
import uvloop
from lt_tiny_server import TinyServer

from loadtest import histo
from loadtest.client import Generator, error_type_of
from loadtest.plan import RunPlan, Stage, Target, render_requests
from loadtest.procs import sleep_until
from loadtest.recorder import Recorder
from loadtest.schedule import stage_starts


def _requests(url: str) -> tuple[bytes, ...]:
    plan = RunPlan(
        Target.parse(url), "bench", "add", (b'{"a":1}', b'{"a":2}'), (Stage(1, connections=1),)
    )
    return render_requests(plan)


async def _drive(
    url: str, stages: list[Stage], timeout_s: float = 5.0, max_connections: int = 64
) -> tuple[Recorder, Generator]:
    target = Target.parse(url)
    start = monotonic() + 0.05
    recorder = Recorder(start, stage_starts(stages))
    generator = Generator(
        target.host,
        target.port,
        _requests(url),
        recorder,
        max_connections=max_connections,
        timeout_s=timeout_s,
    )
    await sleep_until(start)
    at = start
    for stage in stages:
        generator.start_stage(stage, at)
        at += stage.duration_s
        await sleep_until(at)
    generator.finish()
    await asyncio.wait_for(asyncio.shield(generator.drained), timeout_s + 2)
    generator.stop()
    recorder.close_all()
    return recorder, generator


def _run(coroutine: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return uvloop.run(coroutine())


def test_open_loop_sends_exactly_the_schedule(tiny_server: TinyServer) -> None:
    url = f"http://127.0.0.1:{tiny_server.port}"
    recorder, generator = _run(lambda: _drive(url, [Stage(0.5, rate_rps=400)]))
    assert recorder.sent_total == 200
    assert recorder.status_counts == {"200": 180, "503": 20}
    assert recorder.error_types == {"QueueFull": 20}
    assert tiny_server.counters.runs == 200
    assert generator.peak_connections >= 1


def test_closed_loop_keeps_n_connections_busy(tiny_server: TinyServer) -> None:
    url = f"http://127.0.0.1:{tiny_server.port}"
    recorder, generator = _run(lambda: _drive(url, [Stage(0.4, connections=11)]))
    assert generator.peak_connections == 11  # beyond the first round of connects
    assert recorder.sent_total == sum(recorder.status_counts.values()) > 50
    assert recorder.client_errors == {"connect": 0, "reset": 0, "timeout": 0, "invalid": 0}


def test_stages_back_to_back_mixed_modes(tiny_server: TinyServer) -> None:
    url = f"http://127.0.0.1:{tiny_server.port}"
    stages = [Stage(0.3, rate_rps=100), Stage(0.3, rate_rps=0), Stage(0.3, connections=2)]
    recorder, _ = _run(lambda: _drive(url, stages))
    open_loop, idle, closed_loop = recorder.totals()["stages"]
    assert open_loop["sent"] == 30 and idle["sent"] == 0 and closed_loop["sent"] > 10
    assert recorder.sent_total == 30 + closed_loop["sent"]


async def _silent_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


def _drive_scripted(
    answer: Callable[[int, asyncio.StreamWriter], Awaitable[None]],
    stages: list[Stage],
    **drive: Any,
) -> Recorder:
    """Drive a server that reads each request (its 7-byte body) and has `answer(n, writer)`
    write the answer to the n-th request on the connection (n from 1)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await reader.readexactly(7)  # the body, b'{"a":1}' or b'{"a":2}'
                served += 1
                await answer(served, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:  # also when the run ends with this connection still open
            writer.transport.abort()

    async def scenario() -> Recorder:
        server, url = await _silent_server(handler)
        async with server:
            recorder, _ = await _drive(url, stages, **drive)
        return recorder

    return _run(scenario)


def test_latency_counts_from_the_intended_time_when_the_server_stalls() -> None:
    """One slow answer holds the only connection: later requests wait in the
    backlog, and that wait is in their latency (coordinated omission)."""

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        if n == 1:
            await asyncio.sleep(0.3)
        writer.write(OK_EMPTY)

    recorder = _drive_scripted(answer, [Stage(0.3, rate_rps=50)], max_connections=1)
    latency = histo.summary_ms(recorder.latency)
    assert recorder.sent_total == 15
    # Request 0 took 300 ms; request 1 was due at 20 ms and answered near 300 ms.
    assert latency["max"] == pytest.approx(300, abs=40)
    assert latency["p50"] > 100  # most requests queued behind the stall
    lag = histo.summary_ms(recorder.send_lag)
    assert lag["max"] > 200


def test_error_type_of_a_body_in_pieces_and_no_leftovers_between_answers() -> None:
    """An error body that arrives in two reads still gives its errorType; the bodies of
    the 200 and of the errors after it on the same connection are read on their own."""
    first = b'{"errorType": "QueueTimeout", "mess'
    second = b'age": "x"}'
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n"

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        if n == 1:
            writer.write(head % (len(first) + len(second)) + first)
            await writer.drain()
            await asyncio.sleep(0.05)  # the rest in a read of its own
            writer.write(second)
        elif n == 2:
            writer.write(OK_EMPTY)
        else:
            writer.write(b"HTTP/1.1 429 Slow Down\r\nContent-Length: 21\r\n\r\n")
            writer.write(b'{"errorType": "Slow"}')

    recorder = _drive_scripted(answer, [Stage(0.3, connections=1)])
    assert recorder.status_counts["503"] == 1 and recorder.status_counts["200"] == 1
    slow = recorder.status_counts["429"]
    assert slow >= 1 and recorder.error_types == {"QueueTimeout": 1, "Slow": slow}


class _Rude(asyncio.Protocol):
    """Reads a request, then resets the connection."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.abort()


def test_timeouts_and_resets_are_counted_as_client_errors() -> None:
    async def scenario() -> tuple[Recorder, Recorder]:
        with socket.socket() as silent:  # accepts in the kernel, never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen(16)
            silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
            timed_out, _ = await _drive(silent_url, [Stage(0.2, connections=2)], timeout_s=0.3)
        rude = await asyncio.get_running_loop().create_server(_Rude, "127.0.0.1", 0)
        async with rude:
            rude_url = f"http://127.0.0.1:{rude.sockets[0].getsockname()[1]}"
            reset, _ = await _drive(rude_url, [Stage(0.2, rate_rps=20)])
        return timed_out, reset

    timed_out, reset = _run(scenario)
    assert timed_out.client_errors["timeout"] == 2 and timed_out.status_counts == {}
    assert reset.client_errors["reset"] == reset.sent_total == 4


def test_refused_connections_are_counted() -> None:
    recorder, generator = _run(
        lambda: _drive("http://127.0.0.1:1", [Stage(0.35, connections=1)], timeout_s=0.5)
    )
    assert recorder.client_errors["connect"] >= 2  # retried every 100 ms
    assert recorder.sent_total == 0 and generator.peak_connections == 0


def test_error_type_only_from_json_error_bodies() -> None:
    assert error_type_of(b'{"errorType": "QueueTimeout", "message": "x"}') == "QueueTimeout"
    assert error_type_of(b"<html>bad gateway</html>") is None
    assert error_type_of(b'["errorType"]') is None
    assert error_type_of(b"\xff\xfe") is None


def test_an_answer_delimited_by_the_close_is_an_answer() -> None:
    """HTTP/1.0 answers, and HTTP/1.1 ones with `Connection: close` and no
    Content-Length, end where the server closes: an answer, not a reset. A body
    cut short of its Content-Length is still a reset."""

    served = 0

    async def answer(_: int, writer: asyncio.StreamWriter) -> None:
        nonlocal served  # over every connection: each carries one answer
        served += 1
        if served % 3 == 1:
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{}")
        elif served % 3 == 2:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n")
            writer.write(b'{"errorType": "QueueFull", "message": "full"}')
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}")
        await writer.drain()
        writer.close()

    recorder = _drive_scripted(answer, [Stage(0.3, connections=1)])
    answered = sum(recorder.status_counts.values())
    assert recorder.status_counts["200"] >= 1 and recorder.status_counts["503"] >= 1
    assert recorder.error_types["QueueFull"] == recorder.status_counts["503"]
    assert recorder.client_errors["reset"] == recorder.sent_total - answered >= 1
    assert answered >= 2 * recorder.client_errors["reset"] - 2  # two in three, give or take


def test_interim_1xx_answers_are_not_the_answer() -> None:
    """A `100 Continue` before the final answer is skipped: one request, one answer."""

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + OK_EMPTY)

    recorder = _drive_scripted(answer, [Stage(0.3, connections=1)])
    assert recorder.sent_total >= 2
    assert recorder.status_counts == {"200": recorder.sent_total}


def test_open_loop_against_a_refusing_target_backs_off_between_connects() -> None:
    """Due requests do not each start a connect: after a refused connect the next
    try waits CONNECT_RETRY_S, whatever the rate (else the run measures how fast
    the target refuses, and counts several connect errors per request)."""
    recorder, generator = _run(
        lambda: _drive("http://127.0.0.1:1", [Stage(0.5, rate_rps=400)], timeout_s=0.3)
    )
    assert recorder.sent_total == 200
    # 0.8 s of retries every 100 ms, 4 connects each: about 36; without the back-off, ~800.
    assert 2 <= generator.connect_attempts < 100
    assert recorder.client_errors["connect"] < 100
    assert recorder.client_errors["timeout"] == 200


def test_an_answer_that_is_not_http_is_invalid_not_a_reset() -> None:
    """A target that speaks something else (a TLS port, a wrong service) is told
    apart from one that resets its connections."""

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"blah blah\r\n\r\n")

    recorder = _drive_scripted(answer, [Stage(0.2, rate_rps=20)])
    assert recorder.sent_total == 4
    assert recorder.client_errors == {"connect": 0, "reset": 0, "timeout": 0, "invalid": 4}
