"""One-shot HTTP/1.1 calls for the harness's control plane (not the load).

Used to scrape `/metrics`, read the admin stats, post tuning and switch
generations, and to wait for a node to come up. One connection per call
(`Connection: close`), parsed with httptools so chunked answers work too.
Must not import `lightnode`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httptools

from loadtest.plan import Target

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is not."""
        return json.loads(self.body)

    def describe(self) -> str:
        """`status errorType: message` (or the start of the body) for error lines."""
        try:
            value = self.json()
        except ValueError:
            value = None
        if isinstance(value, dict) and "errorType" in value:
            return f"{self.status} {value.get('errorType')}: {value.get('message', '')}"
        text = self.body[:200].decode("utf-8", "replace").strip()
        return f"{self.status} {text}".strip()


class _Collector:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


async def call(
    target: Target,
    method: str,
    path: str,
    *,
    body: Any = None,
    headers: tuple[tuple[str, str], ...] = (),
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Answer:
    """Send one request to `target` and return its answer.

    Args:
        path: path below the target's base path, e.g. "/metrics".
        body: a JSON value to send, or None for no body.

    Raises:
        OSError: connection refused or reset.
        asyncio.TimeoutError: no complete answer within `timeout_s`.
        ValueError: the answer is not HTTP.
    """
    return await asyncio.wait_for(_call(target, method, path, body, headers), timeout_s)


async def _call(
    target: Target, method: str, path: str, body: Any, headers: tuple[tuple[str, str], ...]
) -> Answer:
    payload = b"" if body is None else json.dumps(body).encode()
    head = [
        f"{method} {target.path(path)} HTTP/1.1",
        f"Host: {target.host_header}",
        "Connection: close",
        f"Content-Length: {len(payload)}",
    ]
    if body is not None:
        head.append("Content-Type: application/json")
    head += [f"{name}: {value}" for name, value in headers]
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        collector = _Collector()
        parser = httptools.HttpResponseParser(collector)
        while not collector.complete:
            data = await reader.read(65536)
            if not data:
                break  # a body delimited by the close ends here
            parser.feed_data(data)
        status = parser.get_status_code()
    except httptools.HttpParserError as exc:
        raise ValueError(f"not an HTTP answer: {exc}") from None
    finally:
        writer.close()
    if not status:
        raise ValueError("connection closed before an HTTP answer")
    return Answer(status, b"".join(collector.parts))


async def reachable(target: Target, timeout_s: float = 3.0) -> str | None:
    """None if a TCP connection to the target opens, else why not (one line)."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), timeout_s
        )
    except asyncio.TimeoutError:
        return f"cannot reach {target.url}: no answer within {timeout_s:g} s"
    except OSError as exc:
        return f"cannot reach {target.url}: {exc.strerror or exc}"
    writer.close()
    return None
