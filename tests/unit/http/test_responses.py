"""Answer rendering: status lines, the fixed headers of SPEC §3.3, error bodies of §3.4."""

from __future__ import annotations

import pytest
import ujson
from http_fakes import parse_responses

from lightnode.errors import ERROR_STATUS
from lightnode.http.responses import STATUS_LINES, error_body, render_error, render_response


@pytest.mark.parametrize("status", sorted({*ERROR_STATUS.values(), 200, 201, 204, 431}))
def test_status_lines_are_precomputed(status: int) -> None:
    line = STATUS_LINES[status]
    assert line.startswith(b"HTTP/1.1 %d " % status)
    assert line.endswith(b"\r\n") and line.count(b"\r\n") == 1


def test_status_line_phrases() -> None:
    assert STATUS_LINES[200] == b"HTTP/1.1 200 OK\r\n"
    assert STATUS_LINES[431] == b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    assert STATUS_LINES[503] == b"HTTP/1.1 503 Service Unavailable\r\n"


def test_render_response_has_the_fixed_headers() -> None:
    data = render_response(200, b'{"a":1}', request_id="rid-1")
    assert data == (
        b"HTTP/1.1 200 OK\r\n"
        b"content-type: application/json\r\n"
        b"dss-apinode-api-version: 1\r\n"
        b"content-length: 7\r\n"
        b"x-request-id: rid-1\r\n"
        b"\r\n"
        b'{"a":1}'
    )


def test_render_response_extra_headers_close_and_content_type() -> None:
    data = render_response(
        405,
        b"{}",
        request_id="r",
        content_type="text/plain; version=0.0.4",
        headers=[("Allow", "GET, POST")],
        close=True,
    )
    (response,) = parse_responses(data)
    assert response.status == 405
    assert response.header("content-type") == "text/plain; version=0.0.4"
    assert response.header("allow") == "GET, POST"
    assert response.header("connection") == "close"
    assert response.header("dss-apinode-api-version") == "1"
    assert response.header("x-request-id") == "r"
    assert response.body == b"{}"


def test_no_connection_header_unless_closing() -> None:
    assert b"connection" not in render_response(200, b"", request_id="r")


def test_unlisted_status_still_renders() -> None:
    data = render_response(599, b"x", request_id="r")
    assert data.startswith(b"HTTP/1.1 599 \r\n")
    assert parse_responses(data)[0].status == 599


def test_204_has_no_body_and_no_length() -> None:
    data = render_response(204, b"ignored", request_id="r")
    assert b"content-length" not in data
    assert data.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("bad", ["a\r\nb", "a\nb", "a\rb"])
def test_header_injection_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        render_response(200, b"", request_id="r", headers=[("x-a", bad)])
    with pytest.raises(ValueError):
        render_response(200, b"", request_id="r", headers=[(bad, "v")])
    with pytest.raises(ValueError):
        render_response(200, b"", request_id="r", content_type=bad)


def test_render_error_body_shape() -> None:
    (response,) = parse_responses(
        render_error(413, "PayloadTooLarge", "too big", request_id="r9", close=True)
    )
    assert response.status == 413
    assert response.header("connection") == "close"
    assert response.header("x-request-id") == "r9"
    assert response.json() == {
        "errorType": "PayloadTooLarge",
        "message": "too big",
        "detailedMessage": "too big",
    }


def test_error_body_detailed_message_and_unicode() -> None:
    body = error_body("BadRequest", "é", "détail")
    assert ujson.loads(body) == {
        "errorType": "BadRequest",
        "message": "é",
        "detailedMessage": "détail",
    }
