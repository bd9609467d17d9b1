"""The listening sockets' backlog at shutdown: answered, not reset.

Closing a listening socket resets every connection the kernel completed for it that
the event loop had not accepted yet, and their clients may have sent a request
already: a load balancer answers that one 502, and does not send a POST again. So at
shutdown the node keeps a duplicate of each listening socket across the server's
close (`keep_listeners`), then accepts what waits in the backlog and hands each
connection to the HTTP protocol (`serve_backlog`), which answers its requests as it
answers new requests on open connections while draining: 503 ShuttingDown with
`Connection: close`, which says the function did not run (SPEC §3.4), so that the
request may be sent to another node. Then the duplicates close; a connection that
arrives after the last accept is reset, as by any closing server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("lightnode")

# The node listens with a backlog of 2048: twice that bounds the accepts, should
# connections keep coming while the backlog is emptied.
MAX_BACKLOG_ACCEPTS = 4096


def keep_listeners(sockets: Sequence[Any]) -> list[socket.socket]:
    """Duplicates of the server's listening sockets (`server.sockets`), taken before it closes."""
    kept = []
    for sock in sockets:
        try:
            kept.append(socket.socket(fileno=os.dup(sock.fileno())))
        except OSError:  # out of file descriptors: that backlog is reset, as before
            continue
    return kept


async def serve_backlog(
    loop: asyncio.AbstractEventLoop,
    listeners: Sequence[socket.socket],
    protocol_factory: Callable[[], asyncio.Protocol],
) -> int:
    """Accept the connections waiting in `listeners`' backlogs, serve each with a new
    protocol, then close the listeners. Returns how many were accepted."""
    accepted = 0
    try:
        for listener in listeners:
            listener.setblocking(False)
            while accepted < MAX_BACKLOG_ACCEPTS:
                try:
                    conn, _ = listener.accept()
                except OSError:  # BlockingIOError: none waits any more; EMFILE and the like
                    break
                try:
                    await loop.connect_accepted_socket(protocol_factory, conn)
                except OSError as exc:
                    log.warning("shutting down: a connection of the backlog could not be served: %s", exc)
                    conn.close()
                    continue
                accepted += 1
    finally:
        for listener in listeners:
            listener.close()
    return accepted
