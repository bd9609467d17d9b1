"""The node's App: routes each Exchange to a pool, a health answer or the admin API.

It is the one place where HTTP meets the scheduler: it resolves the route
(ids validated by `http.routing` before any lookup), checks the method and
the service's state, submits the body to the endpoint's pool, and turns each
call's outcome into the answer plus one record for the observers (metrics,
query log). Imports: http.*, scheduler.*, errors, config.model.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import ujson

from lightnode.errors import LightnodeError
from lightnode.http.exchange import Exchange
from lightnode.http.routing import BadId, Route, RouteKind, known_route, parse_path, query_to_object
from lightnode.scheduler.registry import Registry
from lightnode.scheduler.scheduler import Call, EndpointPool

log: Final = logging.getLogger("lightnode.http")

ALLOW_RUN: Final = (("Allow", "GET, POST"),)
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Failures on the node's side of a call, logged with the request id so that the
# pipeline's exit or stack dump in the server log can be tied to the request.
LOGGED_FAILURES: Final = frozenset({"WorkerCrashed", "ExecutionTimeout"})
# A global name: on Python 3.11 reading an Enum member off its class is slow (see pool/states.py).
_RUN: Final = RouteKind.RUN
# Read from C variables in the compiled build (a module attribute is a dict lookup).
_time: Final = time.time
_monotonic: Final = time.monotonic


def _is_loopback(client: str) -> bool:
    try:
        return ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False


@dataclass(slots=True, init=False)
class RequestRecord:
    """One finished /run request, as the observers see it (SPEC §10 query log keys).

    Its own __init__: the one dataclass writes is interpreted even in the compiled
    build (4x the cost of this one, which mypyc compiles); eq and repr still come
    from dataclass.
    """

    time: float  # wall clock, seconds
    request_id: str
    service_id: str
    endpoint_id: str
    generation: str
    status: int
    error_type: str | None
    wait_us: int
    execution_us: int
    function_us: int
    total_us: int
    client: str
    params: bytes

    def __init__(
        self,
        time: float,
        request_id: str,
        service_id: str,
        endpoint_id: str,
        generation: str,
        status: int,
        error_type: str | None,
        wait_us: int,
        execution_us: int,
        function_us: int,
        total_us: int,
        client: str,
        params: bytes,
    ) -> None:
        self.time = time
        self.request_id = request_id
        self.service_id = service_id
        self.endpoint_id = endpoint_id
        self.generation = generation
        self.status = status
        self.error_type = error_type
        self.wait_us = wait_us
        self.execution_us = execution_us
        self.function_us = function_us
        self.total_us = total_us
        self.client = client
        self.params = params


class RequestObserver(Protocol):
    def observe(self, record: RequestRecord) -> None: ...


AdminHandler = Callable[[Exchange, Route], None]


class NodeApp:
    """Implements http.exchange.App and scheduler.CallSink."""

    def __init__(self, data_dir: Path, *, dev: bool = False) -> None:
        self.data_dir = data_dir
        self.dev = dev
        self.registry: Registry | None = None
        self.observers: list[RequestObserver] = []
        self.admin: AdminHandler | None = None
        # (Authorization header, service id, client) -> raises 401 Unauthorized (admin.keys.KeyStore)
        self.api_key_check: Callable[[bytes | None, str, str], object] | None = None
        self.metrics_text: Callable[[], bytes] | None = None
        self.metrics_public = True  # server.json metrics.public
        self.draining = False  # shutting down (SIGTERM/SIGINT)
        self.not_alive = False  # DATA_DIR/not-alive exists (set by the node's poll)
        self._not_alive = str(data_dir / "not-alive")

    # ------------------------------------------------------------------ App

    def handle(self, exchange: Exchange) -> None:
        route = known_route(exchange.path)  # the same as parse_path() for paths seen before
        if route is None:
            try:
                route = parse_path(exchange.path)
            except BadId as bad_id:
                exchange.respond_error(LightnodeError("NotFound", str(bad_id)))
                return
            if route is None:
                path = exchange.path.decode("latin-1")
                exchange.respond_error(LightnodeError("NotFound", f"Not found: {path}"))
                return
        try:
            if route.kind is _RUN:
                self._run(exchange, route)
            elif route.kind is RouteKind.PING:
                exchange.respond(200, b"{}")
            elif route.kind is RouteKind.IS_ALIVE:
                self._alive(exchange)
            elif route.kind is RouteKind.READY:
                self._ready(exchange)
            elif route.kind is RouteKind.METRICS and self.metrics_text is not None:
                self.check_metrics_access(exchange)
                exchange.respond(200, self.metrics_text(), content_type=METRICS_CONTENT_TYPE)
            elif route.kind is RouteKind.ADMIN and self.admin is not None:
                self.admin(exchange, route)
            else:
                raise LightnodeError("NotFound", f"Not found: {exchange.path.decode('latin-1')}")
        except LightnodeError as exc:
            # SPEC §11: a request that comes while the node shuts down gets 503 and
            # `Connection: close`. Other refusals leave the connection to the protocol,
            # which closes it once nothing is pending (no accepted call behind is dropped).
            exchange.respond_error(exc, close=self.draining and exc.error_type == "ShuttingDown")
            if route.kind is RouteKind.RUN and self.observers:
                self._record(
                    exchange,
                    route.service_id,
                    route.endpoint_id,
                    "",
                    exc.status,
                    exc.error_type,
                    0,
                    0,
                    0,
                    exchange.body,
                )

    def _run(self, exchange: Exchange, route: Route) -> None:
        method = exchange.method
        if method != b"POST" and method != b"GET":
            raise LightnodeError(
                "MethodNotAllowed",
                f"Method {method.decode('latin-1')} is not allowed",
                headers=ALLOW_RUN,
            )
        if self.draining:
            raise LightnodeError("ShuttingDown", "The node is shutting down")
        if self.not_alive:
            raise LightnodeError("ShuttingDown", "The node is drained (its not-alive file exists)")
        registry = self.registry
        assert registry is not None
        service_id = route.service_id
        if not registry.is_public(service_id):  # 401 before telling anything of the service
            self.check_api_key(exchange, service_id)
        pool = registry.resolve(service_id, route.endpoint_id)
        if method == b"GET":
            body = ujson.dumps(query_to_object(exchange.query)).encode()
        else:
            body = exchange.body
        call = pool.submit(body, exchange)
        if not exchange.done:  # a client gone before the answer: pool.cancel(call)
            exchange.on_cancel = pool.cancel
            exchange.cancel_token = call

    def client_closed(self, exchange: Exchange) -> None:
        """Its client closed the connection before this answer: it is gone (SPEC §4 rule 9).

        A call not yet handed to a pipeline leaves the queue (the pool's cancel, as for a
        reset). One already handed over (running, or staged in a pipeline's pipe: it will
        run) is left alone: it finishes, counts and logs as any call, and its answer is
        written if the socket still takes it. Other requests (admin) are answered too.
        """
        call = exchange.cancel_token
        if isinstance(call, Call) and not call.worker_id:
            exchange.cancel()

    def check_api_key(self, exchange: Exchange, service_id: str) -> None:
        """SPEC §9: `api_key_check` (the key store) raises 401; without one a private service refuses everyone."""
        if self.api_key_check is not None:
            self.api_key_check(exchange.header(b"authorization"), service_id, exchange.client)
            return
        raise LightnodeError(
            "Unauthorized",
            "Unknown API key",
            headers=(("WWW-Authenticate", 'Basic realm="lightnode"'),),
        )

    def check_metrics_access(self, exchange: Exchange) -> None:
        """With `metrics.public` false, /metrics answers loopback clients only."""
        if not self.metrics_public and not _is_loopback(exchange.client):
            raise LightnodeError(
                "Forbidden", "/metrics answers on loopback only (metrics.public is false)"
            )

    def _alive(self, exchange: Exchange) -> None:
        if self.draining:
            exchange.respond(503, b'{"alive":false,"reason":"draining"}')
        elif self.not_alive or os.path.exists(self._not_alive):
            exchange.respond(503, b'{"alive":false,"reason":"not-alive file present"}')
        else:
            exchange.respond(200, b'{"alive":true}')

    def _ready(self, exchange: Exchange) -> None:
        assert self.registry is not None
        if self.draining:
            exchange.respond(503, b'{"ready":false,"reason":"draining"}')
        elif self.not_alive:
            exchange.respond(503, b'{"ready":false,"reason":"not-alive file present"}')
        elif not self.registry.ready():
            exchange.respond(503, b'{"ready":false,"reason":"pools starting"}')
        else:
            exchange.respond(200, b'{"ready":true}')

    # ------------------------------------------------------------- CallSink

    def call_succeeded(
        self, pool: EndpointPool, call: Call, body: bytes, exec_us: int, function_us: int
    ) -> None:
        exchange: Exchange = call.exchange
        exchange.respond(200, body)
        if self.observers:
            self._record_call(pool, call, 200, None, exec_us, function_us)

    def call_failed(
        self, pool: EndpointPool, call: Call, error: LightnodeError, exec_us: int, function_us: int
    ) -> None:
        exchange: Exchange = call.exchange
        # An accepted call's answer, even while draining: it does not close the connection,
        # which would drop the calls pipelined behind it (SPEC §11: they are answered). The
        # protocol closes it, saying so, once nothing is pending.
        exchange.respond_error(error)
        if error.error_type in LOGGED_FAILURES:
            log.warning(
                "%s: %d %s: %s",
                pool.spec.tag,
                error.status,
                error.error_type,
                error.message,
                extra={"request_id": exchange.request_id},
            )
        if self.observers:
            self._record_call(pool, call, error.status, error.error_type, exec_us, function_us)

    def _record_call(
        self, pool: EndpointPool, call: Call, status: int, error_type: str | None, exec_us: int, function_us: int
    ) -> None:
        """Feed the observers one /run call's outcome (see _record)."""
        spec = pool.spec
        self._record(call.exchange, spec.service_id, spec.endpoint_id, spec.generation, status,
                     error_type, call.wait_us, exec_us, function_us, call.body)  # fmt: skip

    def _record(
        self,
        exchange: Exchange,
        service_id: str,
        endpoint_id: str,
        generation: str,
        status: int,
        error_type: str | None,
        wait_us: int,
        exec_us: int,
        fn_us: int,
        params: bytes,
    ) -> None:
        # Positional, in field order: half the cost of keywords, once per request.
        record = RequestRecord(
            _time(),
            exchange.request_id,
            service_id,
            endpoint_id,
            generation,
            status,
            error_type,
            wait_us,
            exec_us,
            fn_us,
            int((_monotonic() - exchange.started) * 1e6),  # total_us
            exchange.client,
            params,
        )
        for observer in self.observers:
            try:
                observer.observe(record)
            except Exception:  # boundary: an observer must not break answers
                log.exception(
                    "observer %r failed", observer, extra={"request_id": record.request_id}
                )
