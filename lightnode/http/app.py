"""The node's App: routes each Exchange to a pool, a health answer or the admin API.

It is the one place where HTTP meets the scheduler: it resolves the route
(ids validated by `http.routing` before any lookup), checks the method and
the service's state, submits the body to the endpoint's pool, and turns each
call's outcome into the answer plus one record for the observers (metrics,
query log). Every /run request gets exactly one record: refused here, answered
by its pool, refused by the protocol (`refused`: 413), or gone with its client
before the answer (`_client_gone`: 499 ClientGone).
Imports: http.*, scheduler.*, errors, config.model.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import ujson

from lightnode.errors import BAD_JSON_MESSAGE, LightnodeError
from lightnode.http.exchange import CLIENT_GONE, CLIENT_GONE_STATUS, Exchange
from lightnode.http.routing import (
    RUN_PREFIX,
    BadId,
    Route,
    RouteKind,
    known_route,
    parse_path,
    query_to_object,
)
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
# RFC 8259 §8.1: a JSON text may come with it (Windows editors, PowerShell), a parser may ignore it.
_UTF8_BOM: Final = b"\xef\xbb\xbf"
_BOM_FIRST_BYTE: Final = 0xEF
CORS_PREFLIGHT_MESSAGE: Final = (
    "Method OPTIONS is not allowed: this is a browser's CORS preflight, and the node answers"
    " none (it sends no Access-Control-* headers); call it from a server, or through a proxy"
    " that adds CORS headers"
)
GET_WITH_BODY_MESSAGE: Final = (
    "A GET request takes its parameters from the query string (?a=1&b=x), and this one"
    " has a body: send the JSON object with POST"
)


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
        # DATA_DIR/not-alive exists (SPEC §10), as the node's poll last saw it. The one
        # source of /isAlive, /healthz, /readyz and /run alike, so that they never
        # disagree (the file read by a probe would run ahead of /run by up to a poll);
        # and the cheap one for /run, which reads a flag and not the disk.
        self.not_alive = False
        # Exchange.on_cancel of every /run call, bound once (no bound method per request).
        self._on_client_gone: Callable[[Any], None] = self._client_gone

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
            elif route.kind is RouteKind.ENDPOINT_VERB:
                self._endpoint_verb(exchange, route)
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
                    _params(exchange),
                )

    def _run(self, exchange: Exchange, route: Route) -> None:
        method = exchange.method
        if method != b"POST" and method != b"GET":
            message = f"Method {method.decode('latin-1')} is not allowed"
            if method == b"OPTIONS" and exchange.header(b"access-control-request-method") is not None:
                message = CORS_PREFLIGHT_MESSAGE  # its developer wrote a POST, not this request
            raise LightnodeError("MethodNotAllowed", message, headers=ALLOW_RUN)
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
        if method == b"GET" and exchange.body:
            # `curl -X GET -d '{...}'`: running it with the query's parameters alone would
            # answer a call other than the one sent (after the 401 and 404 of its URL).
            raise LightnodeError("BadRequest", GET_WITH_BODY_MESSAGE)
        call = pool.submit(_params(exchange), exchange, (exchange.request_id + "\n").encode())
        if not exchange.done:  # a client gone before the answer: _client_gone((pool, call))
            exchange.on_cancel = self._on_client_gone
            exchange.cancel_token = (pool, call)

    def client_closed(self, exchange: Exchange) -> None:
        """Its client closed the connection before this answer: it is gone (SPEC §4 rule 9).

        A call not yet handed to a pipeline leaves the queue (cancelled, as for a
        reset). One already handed over (running, or staged in a pipeline's pipe: it will
        run) is left alone: it finishes, counts and logs as any call, and its answer is
        written if the socket still takes it; should a staged one be taken back from its
        pipeline instead, it leaves then (EndpointPool.client_closed). Other requests
        (admin) are answered too.
        """
        token = exchange.cancel_token
        if isinstance(token, tuple):
            call: Call = token[1]
            if not call.worker_id:
                exchange.cancel()
            else:
                token[0].client_closed(call)

    def _client_gone(self, token: Any) -> None:
        """Exchange.on_cancel of a /run call: its client went away before the answer.

        The pool drops the call (a queued one leaves the queue; a running one finishes
        unanswered). The request is recorded now, once (SPEC §10), as 499 ClientGone
        with its wait and execution so far: no answer will be sent, and whatever the
        pool does with the call later is not recorded again (see _record_call).
        """
        pool: EndpointPool = token[0]
        call: Call = token[1]
        now = _monotonic()
        if call.worker_id and call.dispatched:  # running
            wait_us = call.wait_us
            exec_us = int((now - call.dispatched) * 1e6)
        else:  # queued, or staged in a busy pipeline's pipe
            wait_us = int((now - call.arrived) * 1e6)
            exec_us = 0
        pool.cancel(call)
        if self.observers:
            spec = pool.spec
            self._record(call.exchange, spec.service_id, spec.endpoint_id, spec.generation,
                         CLIENT_GONE_STATUS, CLIENT_GONE, wait_us, exec_us, 0, call.body)  # fmt: skip

    def refused(self, exchange: Exchange, error_type: str) -> None:
        """The protocol answered this request itself (413 PayloadTooLarge), or dropped it
        unseen as its client went away (499 ClientGone): record a /run one.

        Only a path that parses as a /run path with valid ids is recorded (its service and
        endpoint taken from the path, as for the app's own refusals), with the parameters
        read (none for a 413: its body was not read).
        """
        if not self.observers:
            return
        route = known_route(exchange.path)
        if route is None:
            try:
                route = parse_path(exchange.path)
            except BadId:
                return
        if route is not None and route.kind is _RUN:
            self._record(exchange, route.service_id, route.endpoint_id, "", exchange.status,
                         error_type, 0, 0, 0, _params(exchange))  # fmt: skip

    def _endpoint_verb(self, exchange: Exchange, route: Route) -> None:
        """A DSS verb other than run (/predict, /query, /lookup, ...): 404, precise when allowed.

        Every endpoint here is a python-function endpoint, which answers /run only. The
        caller is told so when the service defines the endpoint and the caller may see
        the service (public, or a valid key); otherwise the plain answer for an unknown
        path, which tells nothing of the service.
        """
        not_found = LightnodeError("NotFound", f"Not found: {exchange.path.decode('latin-1')}")
        registry = self.registry
        service_id = route.service_id
        endpoint_id = route.endpoint_id
        if registry is None or not _defines_endpoint(registry, service_id, endpoint_id):
            raise not_found
        if not registry.is_public(service_id):
            try:
                self.check_api_key(exchange, service_id)
            except LightnodeError:
                raise not_found from None
        raise LightnodeError(
            "NotFound",
            f"Endpoint {endpoint_id} of service {service_id} is a python-function endpoint:"
            f" call {RUN_PREFIX.decode()}{service_id}/{endpoint_id}/run",
        )

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
        elif self.not_alive:
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
        if self.observers and not exchange.cancelled:  # a cancelled one is recorded (_client_gone)
            self._record_call(pool, call, 200, None, exec_us, function_us)

    def call_failed(
        self, pool: EndpointPool, call: Call, error: LightnodeError, exec_us: int, function_us: int
    ) -> None:
        exchange: Exchange = call.exchange
        if error.error_type == "BadRequest" and error.message == BAD_JSON_MESSAGE:
            error = _explain_bad_body(exchange, call.body, error)
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
        if self.observers and not exchange.cancelled:  # a cancelled one is recorded (_client_gone)
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


def _defines_endpoint(registry: Registry, service_id: str, endpoint_id: str) -> bool:
    """Whether a generation the service serves defines the endpoint (ids already valid)."""
    runtime = registry.services.get(service_id)
    if runtime is None:
        return False
    for gen in runtime.generations.values():
        if gen.definition is not None and gen.definition.endpoint(endpoint_id) is not None:
            return True
    return False


def _params(exchange: Exchange) -> bytes:
    """The parameters a /run request carries, as the pipeline gets them and the query log
    shows them: a GET's query as its JSON object (SPEC §3.3), else the body (without a
    UTF-8 byte order mark: RFC 8259 §8.1 lets a parser ignore it, and the pipeline's
    parser would refuse it)."""
    if exchange.method == b"GET":
        return ujson.dumps(query_to_object(exchange.query)).encode()
    body = exchange.body
    if body and body[0] == _BOM_FIRST_BYTE and body.startswith(_UTF8_BOM):
        return body[len(_UTF8_BOM) :]
    return body


# What a body that the pipeline could not read as a JSON object is, when its first byte
# says so (see _explain_bad_body).
_JSON_VALUE_KINDS: Final[dict[bytes, str]] = {  # "[" and "-": see _json_kind
    b'"': "a JSON string",
    **{digit: "a JSON number" for digit in (b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9")},
}
_JSON_LITERALS: Final[dict[bytes, str]] = {b"true": "JSON true", b"false": "JSON false", b"null": "JSON null"}
_SEND_AN_OBJECT: Final = "send one JSON object, whose attributes are the function's parameters"


_ARRAY_SECOND_BYTES: Final = b'{["]-0123456789tfn'
# What JavaScript's fetch() sends for an object given as the body, without JSON.stringify().
_JS_OBJECT_TEXT: Final = b"[object "


def _json_kind(text: bytes) -> str | None:
    """The kind of JSON value `text` (stripped; no object) is, when its first bytes tell."""
    first = text[:1]
    if first == b"-":  # a negative number; a multipart body begins with "--"
        return "a JSON number" if text[1:2].isdigit() else None
    if first == b"[":  # "[object Object]" is no array
        second = text[1:].lstrip(b" \t\r\n")[:1]
        return "a JSON array" if second and second in _ARRAY_SECOND_BYTES else None
    return _JSON_VALUE_KINDS.get(first) or _JSON_LITERALS.get(text.rstrip(b" \t\r\n"))


def _explain_bad_body(exchange: Exchange, body: bytes, error: LightnodeError) -> LightnodeError:
    """The pipeline's 400 for a body that is no JSON object, its detailedMessage saying what
    the body is instead when its first byte or headers tell (SPEC §3.4: a message to act
    on; the official client shows detailedMessage), else `error`. `message` keeps the DSS
    wording, for alerts that match it.

    The usual mistakes of a client library: a JSON value other than an object, a form
    (Python requests' `data=` with a dict), an upload form (`files=`), a compressed body,
    a JavaScript object given to fetch() as it is.
    The body's first byte comes first: `curl -d` and urllib label any body a form, and a
    body that begins as an object is JSON with an error in it (the pipeline's words stand,
    unless it is no UTF-8).
    Called on that failure only, never on the path of a call that runs.
    """
    stripped = body.lstrip(b" \t\r\n")
    if stripped[:1] == b"{":
        return _explain_bad_object(body, error)
    kind = _json_kind(stripped)
    reason = ""
    if kind is not None:
        reason = f"the body is {kind}; {_SEND_AN_OBJECT}"
    elif stripped.startswith(_JS_OBJECT_TEXT):
        reason = (
            "the body is the text '[object Object]', a JavaScript object sent as the body without"
            " JSON.stringify(); send JSON.stringify(payload)"
        )
    else:
        encoding = exchange.header(b"content-encoding")
        content_type = exchange.header(b"content-type") or b""
        media = content_type.partition(b";")[0].strip().lower()
        if encoding and encoding.lower() != b"identity":
            coding = encoding.decode("latin-1")
            reason = (
                f"the body is sent with Content-Encoding: {coding}, which the node does not decode;"
                " send it uncompressed"
            )
        elif media == b"application/x-www-form-urlencoded":
            reason = (
                "the body is form-encoded (Content-Type: application/x-www-form-urlencoded); send the"
                " JSON object itself as the body (Python requests: json=payload, not data=payload)"
            )
        elif media == b"multipart/form-data":
            reason = (
                "the body is multipart/form-data (an upload form; Python requests: files=); send the"
                " JSON object itself as the body"
            )
    return _with_reason(error, reason)


def _explain_bad_object(body: bytes, error: LightnodeError) -> LightnodeError:
    """A body that begins as a JSON object: said to be no UTF-8 when it is not (Windows
    PowerShell 5.1 sends a string body as ISO-8859-1), else the pipeline's words stand."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _with_reason(
            error,
            f"the body is not UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}); JSON is"
            " sent as UTF-8 (RFC 8259 §8.1): make the client encode it so",
        )
    return error


def _with_reason(error: LightnodeError, reason: str) -> LightnodeError:
    """`error` with `reason` added to its detailedMessage (its message stays), if any."""
    if not reason:
        return error
    detailed = f"{error.detailed_message}: {reason}"
    return LightnodeError(error.error_type, error.message, detailed, status=error.status, headers=error.headers)
