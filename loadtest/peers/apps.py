"""The peer servers' side of the benchmark: one plain WSGI app and one raw ASGI app.

Both serve the functions of `loadtest/services/bench/bench.py` (loaded from that
very file, so peers and lightnode run the identical loop) on lightnode's routes,
`POST /public/api/v1/bench/<endpoint>/run`, and answer lightnode's wire format:
the SPEC §3.3 envelope (`response`, `timing`, `apiContext`) and the same headers
(`content-type`, `dss-apinode-api-version`, `x-request-id`), so the bytes on the
wire are comparable. JSON goes through ujson, as in lightnode. The function runs
in the server process (in the event loop for ASGI): no isolation, no framework.

Served by gunicorn, uvicorn and granian as `loadtest.peers.apps:wsgi_app` and
`loadtest.peers.apps:asgi_app`. Must not import `lightnode`, asyncio or any
server package.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from time import perf_counter_ns
from types import ModuleType
from typing import Any

import ujson

BENCH_FILE = Path(__file__).resolve().parents[1] / "services" / "bench" / "bench.py"
SERVICE_ID = "bench"
GENERATION = "peer"
PREFIX = f"/public/api/v1/{SERVICE_ID}/"


def load_bench(path: Path = BENCH_FILE) -> ModuleType:
    """Import bench.py from its file, the way a lightnode worker loads it."""
    spec = importlib.util.spec_from_file_location("bench", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_bench = load_bench()
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "add": _bench.add,
    "spin": _bench.spin,
    "sleep": _bench.sleep,
}

_ID_PREFIX = os.urandom(4).hex()
_id_counter = itertools.count(1)


def _error(status: int, error_type: str, message: str) -> tuple[int, bytes]:
    body = {"errorType": error_type, "message": message, "detailedMessage": message}
    return status, ujson.dumps(body).encode()


def handle(method: str, path: str, body: bytes) -> tuple[int, bytes]:
    """One request -> (status, JSON body bytes). Pure apart from the function call."""
    endpoint_id = path[len(PREFIX) : -len("/run")] if path.startswith(PREFIX) else ""
    function = FUNCTIONS.get(endpoint_id) if path.endswith("/run") else None
    if function is None:
        return _error(404, "NotFound", f"no such endpoint: {path}")
    if method != "POST":
        return _error(405, "MethodNotAllowed", f"{method} is not allowed here")
    try:
        params = ujson.loads(body) if body else {}
    except ValueError as exc:
        return _error(400, "BadRequest", f"body is not JSON: {exc}")
    if not isinstance(params, dict):
        return _error(400, "BadRequest", "body must be a JSON object")
    started_ns = perf_counter_ns()
    try:
        result = function(**params)
    except Exception as exc:  # the function's failure is the client's 500, as in lightnode
        return _error(500, "FunctionError", f"{type(exc).__name__}: {exc}")
    internal_us = (perf_counter_ns() - started_ns) // 1000
    envelope = {
        "response": result,
        "timing": {"wait": 0, "execution": internal_us, "functionInternal": internal_us},
        "apiContext": {
            "serviceId": SERVICE_ID,
            "endpointId": endpoint_id,
            "serviceGeneration": GENERATION,
        },
    }
    return 200, ujson.dumps(envelope).encode()


def new_request_id() -> str:
    return f"{_ID_PREFIX}-{next(_id_counter):x}"


_REASONS = {200: "200 OK", 400: "400 Bad Request", 404: "404 Not Found"}
_REASONS.update({405: "405 Method Not Allowed", 500: "500 Internal Server Error"})

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def wsgi_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """A plain WSGI application (PEP 3333)."""
    length = environ.get("CONTENT_LENGTH") or "0"
    body = environ["wsgi.input"].read(int(length)) if length != "0" else b""
    status, payload = handle(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), body)
    headers = [
        ("content-type", "application/json"),
        ("dss-apinode-api-version", "1"),
        ("content-length", str(len(payload))),
        ("x-request-id", new_request_id()),
    ]
    start_response(_REASONS.get(status, f"{status} Error"), headers)
    return [payload]


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A raw ASGI 3 application (no framework); the function runs in the loop."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    status, payload = handle(scope["method"], scope["path"], b"".join(chunks))
    headers = [
        (b"content-type", b"application/json"),
        (b"dss-apinode-api-version", b"1"),
        (b"content-length", str(len(payload)).encode()),
        (b"x-request-id", new_request_id().encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
