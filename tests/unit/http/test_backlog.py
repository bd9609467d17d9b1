"""At shutdown, connections waiting in the listening socket's backlog are answered, not reset.

A real uvloop server on 127.0.0.1: clients connect and send while the loop is not
running, so their connections wait in the kernel's backlog, as they do when SIGTERM
comes between two passes of a busy loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
import uvloop

from lightnode.http.backlog import keep_listeners, serve_backlog


class Answer(asyncio.Protocol):
    """Answers the first bytes it reads, then closes (the node answers 503 ShuttingDown)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"answered " + data)  # type: ignore[attr-defined]
        self.transport.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def _waiting_clients(loop: asyncio.AbstractEventLoop, count: int) -> tuple[asyncio.Server, list[socket.socket]]:
    server = loop.run_until_complete(loop.create_server(Answer, "127.0.0.1", 0, backlog=64))
    port = server.sockets[0].getsockname()[1]
    clients = []
    for i in range(count):  # the loop is not running: each waits in the backlog, its request sent
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.sendall(b"request %d" % i)
        clients.append(client)
    return server, clients


def _read(client: socket.socket) -> bytes:
    chunks = []
    while chunk := client.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_plain_close_resets_the_backlog(loop: asyncio.AbstractEventLoop) -> None:
    # What the node did before: its clients' requests were lost.
    server, clients = _waiting_clients(loop, 3)
    server.close()
    loop.run_until_complete(server.wait_closed())
    for client in clients:
        with pytest.raises(ConnectionResetError):
            _read(client)
        client.close()


def test_the_backlog_is_accepted_and_answered_then_the_port_closes(loop: asyncio.AbstractEventLoop) -> None:
    server, clients = _waiting_clients(loop, 5)
    port = server.sockets[0].getsockname()[1]
    listeners = keep_listeners(server.sockets)
    server.close()
    accepted = loop.run_until_complete(serve_backlog(loop, listeners, Answer))
    assert accepted == 5
    loop.run_until_complete(asyncio.sleep(0.2))  # the protocols read and answer
    for i, client in enumerate(clients):
        assert _read(client) == b"answered request %d" % i
        client.close()
    assert all(listener.fileno() == -1 for listener in listeners)  # closed
    loop.run_until_complete(server.wait_closed())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_an_empty_backlog_closes_the_listeners_at_once(loop: asyncio.AbstractEventLoop) -> None:
    server, _ = _waiting_clients(loop, 0)
    listeners = keep_listeners(server.sockets)
    server.close()
    assert loop.run_until_complete(serve_backlog(loop, listeners, Answer)) == 0
    assert all(listener.fileno() == -1 for listener in listeners)
    loop.run_until_complete(server.wait_closed())
