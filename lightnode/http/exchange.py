"""One HTTP request/response cycle, and the narrow seam between protocol and app.

The protocol (`http.protocol`) parses bytes into an `Exchange` and hands it to
an `App`. The app answers, now or later, with `respond()`; the protocol writes
answers in request order (pipelining) and calls `on_cancel` when the client
goes away before its answer (on a reset; on a close, the app's `client_closed`
decides). A request the protocol refuses itself once its path is known (413), or
drops unseen by the app because its client went away (499 ClientGone: a request
held back by the pipelining window), is shown to the app's `refused`, for its
records. The protocol never sees pools; the app never sees sockets. Imports:
standard library and `lightnode.errors` only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from lightnode.errors import LightnodeError
from lightnode.http.responses import json_bytes

# A /run request whose client went away before its answer (a reset, or a close while it
# was queued): no answer is sent, and it is recorded with nginx's status for that case.
CLIENT_GONE_STATUS: Final = 499
CLIENT_GONE: Final = "ClientGone"


class Responder(Protocol):
    """What an Exchange needs from its connection (the protocol implements it)."""

    def exchange_done(self, exchange: Exchange) -> None: ...

    def exchange_given_up(self, exchange: Exchange) -> None: ...


class Exchange:
    """A parsed request waiting for its answer.

    Attributes set by the protocol:
        method: b"GET", b"POST", ...
        path: the URL path, percent-encoding untouched, without the query.
        query: the raw query string (without "?"), or b"".
        headers: (name, value) pairs as received, in arrival order; read one with header().
        body: the whole request body (chunked bodies already joined).
        client: the peer's IP address as text ("" if unknown).
        request_id: the client's X-Request-Id when it sent a sane one, else generated.
        keep_alive: whether the connection may stay open after this answer.
        started: time.monotonic() when the request was complete.
    Attributes set by the app:
        on_cancel, cancel_token: on_cancel(cancel_token) is called once if the
            client goes away before the answer (the app passes a bound method
            and its argument: no closure per request). On a close (not a reset)
            the app's `client_closed` decides whether to cancel.
    """

    __slots__ = (
        "method",
        "path",
        "query",
        "headers",
        "body",
        "client",
        "request_id",
        "keep_alive",
        "started",
        "on_cancel",
        "cancel_token",
        "cancelled",
        "done",
        "status",
        "response_body",
        "response_headers",
        "content_type",
        "close_after",
        "_responder",
    )

    def __init__(
        self,
        responder: Responder,
        method: bytes,
        path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        client: str,
        request_id: str,
        keep_alive: bool,
        started: float,
    ) -> None:
        self._responder = responder
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.client = client
        self.request_id = request_id
        self.keep_alive = keep_alive
        self.started = started
        self.on_cancel: Callable[[Any], None] | None = None
        self.cancel_token: Any = None
        self.cancelled = False
        self.done = False
        self.status = 0
        self.response_body = b""
        self.response_headers: Sequence[tuple[str, str]] = ()
        self.content_type = "application/json"
        self.close_after = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (given in lower case; matched in any case),
        without trailing whitespace, or None."""
        for key, value in self.headers:
            if key == name or key.lower() == name:
                return value.rstrip(b" \t")  # llhttp drops leading whitespace only
        return None

    def respond(
        self,
        status: int,
        body: bytes,
        headers: Sequence[tuple[str, str]] = (),
        *,
        content_type: str = "application/json",
        close: bool = False,
    ) -> None:
        """Answer this request. A second call, or a call after cancel, is ignored."""
        if self.done or self.cancelled:
            return
        self.done = True
        # Cancelling is over: drop the references to the pool's call, which refers back
        # to this exchange (no reference cycle left for the garbage collector).
        self.on_cancel = None
        self.cancel_token = None
        self.status = status
        self.response_body = body
        self.response_headers = headers
        self.content_type = content_type
        self.close_after = close
        self._responder.exchange_done(self)

    def respond_json(
        self, status: int, payload: object, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.respond(status, json_bytes(payload), headers)

    def respond_error(self, error: LightnodeError, *, close: bool = False) -> None:
        self.respond(
            error.status,
            json_bytes(error.payload()),
            error.headers,
            close=close,
        )

    def cancel(self) -> None:
        """Called by the protocol when the client is gone before the answer."""
        if self.done or self.cancelled:
            return
        self.cancelled = True
        callback, self.on_cancel = self.on_cancel, None
        token, self.cancel_token = self.cancel_token, None
        if callback is not None:
            callback(token)

    def give_up(self) -> None:
        """The app's cancel, after the client closed its side (App.client_closed): work it
        had left going is dropped after all. Cancelled as by the protocol; never answered."""
        if self.done or self.cancelled:
            return
        self.cancel()
        self._responder.exchange_given_up(self)


class App(Protocol):
    """What the protocol hands each complete request to."""

    def handle(self, exchange: Exchange) -> None: ...

    def client_closed(self, exchange: Exchange) -> None:
        """The client closed its side of the connection (read EOF) before this answer.

        The app cancels the exchange (`exchange.cancel()`) unless its work was handed
        on; an exchange not cancelled is answered if the socket still takes the bytes.
        (A reset cancels every pending exchange without asking.)
        """
        ...

    def refused(self, exchange: Exchange, error_type: str) -> None:
        """The protocol refused this request itself and has answered it (413 PayloadTooLarge),
        or dropped it unseen by the app as its client went away (status 499, CLIENT_GONE).

        Its method, path and query are the request's; its headers and body may not have
        been kept. For the app's records only: nothing more is written for it.
        """
        ...
