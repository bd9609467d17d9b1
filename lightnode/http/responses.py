"""HTTP/1.1 answer bytes: precomputed status lines and one-shot response rendering.

Pure functions over bytes; no I/O, no state. Every answer carries Content-Type,
Content-Length, `DSS-APINode-API-Version: 1` and `X-Request-Id` (SPEC §3.3),
and error bodies have the SPEC §3.4 shape. Imports: standard library, ujson and
`lightnode.errors` only (no protocol, no app).
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Final

import ujson

from lightnode.errors import ERROR_STATUS


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""  # RFC 9112 §4: the reason phrase may be empty
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")


# Every status lightnode answers by itself, plus the standard table for statuses
# an app may pick (e.g. a user exception's `http_status_code`, SPEC §3.4).
STATUS_LINES: Final[dict[int, bytes]] = {
    status: _status_line(status)
    for status in sorted({*ERROR_STATUS.values(), 200, 201, 204, 431, *map(int, HTTPStatus)})
}

CONTINUE_LINE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

_API_VERSION: Final = b"dss-apinode-api-version: 1\r\n"
_CONTENT_TYPE_LINES: Final[dict[str, bytes]] = {
    "application/json": b"content-type: application/json\r\n" + _API_VERSION,
}
_NO_BODY_STATUSES: Final = frozenset({204, 304})
# The most common answer's head up to the Content-Length value (JSON, no extra
# header, connection kept), per status: render_response() joins six pieces.
_JSON_HEADS: Final[dict[int, bytes]] = {
    status: line + _CONTENT_TYPE_LINES["application/json"] + b"content-length: "
    for status, line in STATUS_LINES.items()
    if status >= 200 and status not in _NO_BODY_STATUSES
}


def _content_type_lines(content_type: str) -> bytes:
    lines = _CONTENT_TYPE_LINES.get(content_type)
    if lines is None:
        _check_field(content_type)
        lines = f"content-type: {content_type}\r\n".encode("latin-1") + _API_VERSION
        if len(_CONTENT_TYPE_LINES) < 64:  # a handful of types in practice; never unbounded
            _CONTENT_TYPE_LINES[content_type] = lines
    return lines


def _check_field(text: str) -> None:
    if "\r" in text or "\n" in text:
        raise ValueError(f"CR or LF in a response header: {text!r}")


def render_response(
    status: int,
    body: bytes,
    request_id: str,
    content_type: str = "application/json",
    headers: Sequence[tuple[str, str]] = (),
    close: bool = False,
) -> bytes:
    """The complete bytes of one answer (status line, headers, body).

    Raises ValueError if a header name or value holds CR or LF (the caller
    turns that into a 500; request ids are validated before they get here).
    Positional arguments are accepted: the protocol calls this once per answer.
    """
    if content_type == "application/json" and not headers and not close:
        head = _JSON_HEADS.get(status)
        if head is not None:  # the same bytes as below, from precomputed pieces
            request_id_bytes = request_id.encode("ascii")
            return b"".join(
                (
                    head,
                    b"%d" % len(body),
                    b"\r\nx-request-id: ",
                    request_id_bytes,
                    b"\r\n\r\n",
                    body,
                )
            )
    status_line = STATUS_LINES.get(status)
    if status_line is None:
        status_line = _status_line(status)
    type_lines = _content_type_lines(content_type)
    request_id_bytes = request_id.encode("ascii")
    if status in _NO_BODY_STATUSES or status < 200:
        body = b""  # RFC 9110 §8.6: no Content-Length and no content for these
        parts = [status_line, type_lines, b"x-request-id: ", request_id_bytes, b"\r\n"]
    else:
        length = str(len(body)).encode()
        parts = [status_line, type_lines, b"content-length: ", length, b"\r\nx-request-id: "]
        parts += (request_id_bytes, b"\r\n")
    if headers:
        extra = []
        for name, value in headers:
            _check_field(name)
            _check_field(value)
            extra.append(f"{name}: {value}\r\n")
        parts.append("".join(extra).encode("latin-1"))
    if close:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)


def json_bytes(payload: object) -> bytes:
    """`payload` as UTF-8 JSON for a response body.

    Text the node did not write (a user exception's message, echoed client input) may
    hold a lone surrogate, which UTF-8 cannot carry: then the body escapes non-ASCII as
    `\\uXXXX`, still valid JSON, rather than failing the answer.
    """
    try:
        return ujson.dumps(payload, ensure_ascii=False, escape_forward_slashes=False).encode()
    except UnicodeEncodeError:
        return ujson.dumps(payload, escape_forward_slashes=False).encode()


def error_body(error_type: str, message: str, detailed_message: str | None = None) -> bytes:
    """The SPEC §3.4 error body."""
    payload = {
        "errorType": error_type,
        "message": message,
        "detailedMessage": message if detailed_message is None else detailed_message,
    }
    return json_bytes(payload)


def render_error(
    status: int,
    error_type: str,
    message: str,
    *,
    request_id: str,
    close: bool = False,
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """An error answer with the SPEC §3.4 body (`detailedMessage` repeats `message`)."""
    return render_response(
        status, error_body(error_type, message), request_id=request_id, headers=headers, close=close
    )
