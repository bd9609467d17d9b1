"""A client developer's calls, as the usual clients send them, against a real node.

What `requests`, `curl` and Java's HttpClient send by default or by a common mistake:
each is either served as meant or answered with a message that says what to change
(SPEC §3.2, §3.4), never run with other parameters than the ones sent.
"""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Node, write_service

pytestmark = pytest.mark.integration

FUNCS = {
    "echo": "def echo(**kw):\n    return kw\n",
    "add": "def add(a, b=0):\n    return {'sum': a + b}\n",
}
BAD_BODY = "Could not parse a JsonObject from request body"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root: Path = tmp_path_factory.mktemp("journey_k") / "data"
    write_service(root, "jk", FUNCS)
    n = Node(root)
    n.start()
    yield n
    n.stop()


def url(node: Node, endpoint: str) -> str:
    return f"{node.url}/public/api/v1/jk/{endpoint}/run"


def bad_request(answer: requests.Response) -> str:
    """The detailedMessage of a 400 BadRequest (what the official client shows); the
    message keeps the DSS wording, for alerts that match it."""
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["errorType"] == "BadRequest"
    assert body["message"] == BAD_BODY
    assert body["detailedMessage"].startswith(BAD_BODY)
    return str(body["detailedMessage"])


# ------------------------------------------------------------ GET with a body


def test_a_get_run_with_a_body_is_refused_not_run_without_it(node: Node) -> None:
    """`curl -X GET -d '{...}'`: the body was ignored and the function ran with the query's
    parameters (none), answering as if the caller had sent nothing."""
    answer = requests.request("GET", url(node, "echo"), data=b'{"a": 1}')
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["errorType"] == "BadRequest"
    assert "query string" in body["message"] and "POST" in body["message"]
    with_query = requests.request("GET", url(node, "echo") + "?a=2", data=b'{"a": 1}')
    assert with_query.status_code == 400
    assert requests.get(url(node, "echo") + "?a=2").json()["response"] == {"a": 2}  # no body: served
    unknown = requests.request("GET", url(node, "nosuch"), data=b'{"a": 1}')
    assert unknown.status_code == 404  # the URL's fault is told first


# ------------------------------------------------------------ browsers (CORS)


def test_a_browsers_cors_preflight_is_told_that_the_node_answers_none(node: Node) -> None:
    """fetch() from a page of another origin sends OPTIONS first: "Method OPTIONS is not
    allowed" speaks of a request its developer never wrote."""
    preflight = requests.options(
        url(node, "add"),
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},  # fmt: skip
    )
    assert preflight.status_code == 405 and preflight.headers["Allow"] == "GET, POST"
    body = preflight.json()
    assert body["errorType"] == "MethodNotAllowed"
    assert "CORS" in body["message"] and "preflight" in body["message"]
    plain = requests.options(url(node, "add")).json()  # no preflight: the plain wording
    assert plain["message"] == "Method OPTIONS is not allowed"


# ------------------------------------------------------- bodies sent by mistake


def test_a_form_encoded_body_is_refused_saying_so(node: Node) -> None:
    """`requests.post(url, data={...})` form-encodes the dict."""
    message = bad_request(requests.post(url(node, "add"), data={"a": 1, "b": 2}))
    assert "application/x-www-form-urlencoded" in message and "json=" in message


def test_json_sent_with_curls_form_content_type_is_served(node: Node) -> None:
    """`curl -d '{...}'` labels JSON as a form: the body decides, as README's example shows."""
    answer = requests.post(
        url(node, "add"), data=b'{"a": 1, "b": 2}', headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert answer.status_code == 200 and answer.json()["response"] == {"sum": 3}
    broken = requests.post(  # a JSON typo sent by `curl -d` is not called form-encoded
        url(node, "add"), data=b'{"a": 1,}', headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert "form" not in bad_request(broken)


def test_a_multipart_body_is_refused_saying_so(node: Node) -> None:
    """`requests.post(url, files=...)`."""
    message = bad_request(requests.post(url(node, "add"), files={"a": ("a.json", b'{"a": 1}')}))
    assert "multipart/form-data" in message


def test_a_compressed_body_is_refused_saying_so(node: Node) -> None:
    body = gzip.compress(b'{"a": 1}')
    message = bad_request(requests.post(url(node, "add"), data=body, headers={"Content-Encoding": "gzip"}))
    assert "Content-Encoding: gzip" in message and "uncompressed" in message


@pytest.mark.parametrize(
    "body, kind", [(b"[1, 2]", "a JSON array"), (b' "a"', "a JSON string"), (b"42", "a JSON number"),
                   (b"null", "JSON null")],  # fmt: skip
)
def test_a_json_value_that_is_no_object_is_named(node: Node, body: bytes, kind: str) -> None:
    message = bad_request(requests.post(url(node, "echo"), data=body))
    assert kind in message and "object" in message
    labelled = requests.post(  # as `curl -d` and urllib send it: a JSON value, not a form
        url(node, "echo"), data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert bad_request(labelled) == message


def test_a_javascript_object_sent_without_stringify_is_named(node: Node) -> None:
    """`fetch(url, {method: "POST", body: {a: 1}})` sends "[object Object]" (text/plain):
    it is no JSON array, whatever its first byte."""
    answer = requests.post(url(node, "echo"), data=b"[object Object]", headers={"Content-Type": "text/plain;charset=UTF-8"})
    message = bad_request(answer)
    assert "JSON.stringify" in message and "array" not in message


def test_a_body_not_in_utf8_is_named(node: Node) -> None:
    """Windows PowerShell 5.1's Invoke-RestMethod sends a string body as ISO-8859-1."""
    message = bad_request(requests.post(url(node, "echo"), data='{"name": "José"}'.encode("latin-1")))
    assert "UTF-8" in message and "offset 13" in message


def test_a_body_with_a_utf8_bom_is_served(node: Node) -> None:
    """What Windows editors and PowerShell's Out-File write (RFC 8259 §8.1: a parser may ignore it)."""
    answer = requests.post(url(node, "add"), data=b'\xef\xbb\xbf{"a": 1, "b": 2}')
    assert answer.status_code == 200, answer.text
    assert answer.json()["response"] == {"sum": 3}


# ---------------------------------------------------------- h2c upgrade (Java)


def test_a_post_asking_for_an_h2c_upgrade_is_served_in_http11(node: Node) -> None:
    """java.net.http.HttpClient (HTTP/2 by default) and `curl --http2` send a POST on a new
    plain-HTTP connection with `Upgrade: h2c`: it was refused 400, then served on a
    connection closed after each answer (a chunked body still refused). The connection
    now goes on in HTTP/1.1, and a chunked body is read."""

    def request(a: int) -> bytes:
        body = json.dumps({"a": a, "b": 2}).encode()
        head = (
            b"POST /public/api/v1/jk/add/run HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Java-http-client/21\r\n"
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA\r\n"
        )
        if a % 2:  # a streamed body (BodyPublishers.ofInputStream) comes in chunks
            return head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)

    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        for a in (40, 41, 42, 43):  # Java's client asks again on each request of the connection
            sock.sendall(request(a))
            status = reader.readline()
            assert status.startswith(b"HTTP/1.1 200 "), status
            headers = {}
            while (line := reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            assert headers.get("connection") != "close"
            parsed: Any = json.loads(reader.read(int(headers["content-length"])))
            assert parsed["response"] == {"sum": a + 2}


