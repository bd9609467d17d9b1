"""Journey P (security review): attacks on a live node through its admin API and public port."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Node, until, write_service

pytestmark = pytest.mark.integration

SOURCE = "def e(x=0):\n    return {'x': x}\n"
# A line of the server log as lightnode's formatter writes it.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def raw_request(node: Node, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_admin_requests_cannot_forge_lines_in_the_audit_log(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    # The audit log records who did what on the admin API; a path segment or a
    # refusal message holding a newline (a tuning key, an id in the path, both
    # decoded from the request) wrote a line of the caller's choosing into it,
    # with raw terminal escapes.
    data = tmp_path / "data"
    write_service(data, "s", {"e": SOURCE})
    node = node_factory(data)
    forged = "2026-01-01 00:00:00,000 INFO lightnode.audit: FORGED"
    status, _, body = node.request(
        "POST", "/admin/api/services/s/endpoints/e/settings",
        json.dumps({"pool": {f"x\n{forged}\x1b[2J": 1}}).encode(),
    )
    assert status == 400, body
    answer = raw_request(
        node, b"DELETE /admin/api/keys/k%0a" + forged.replace(" ", "%20").encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert b" 404 " in answer.split(b"\r\n", 1)[0], answer
    log = data / "logs" / "lightnode.log"
    until(lambda: log.read_text().count("lightnode.audit: admin ") >= 2, what="both audit lines")
    text = log.read_text()
    assert "\x1b" not in text
    for line in text.splitlines():
        assert LOG_LINE.match(line) or line.startswith((" ", "\t", "Traceback")), f"forged line: {line!r}"
    assert "\\x0a" in text  # the newline is shown, escaped, within its own line


def test_an_api_key_typed_as_a_service_or_endpoint_id_is_neither_echoed_nor_logged(
    node_factory: Callable[..., Node], tmp_path: Path
) -> None:
    """dataikuapi's APINodeClient(uri, KEY) swaps the service id and the key: the path
    /public/api/v1/<key>/<endpoint>/run is well formed, and its 404 repeated the key, as
    did queries.log (mode 0644) as its serviceId."""
    data = tmp_path / "data"
    write_service(data, "s", {"e": SOURCE})
    node = node_factory(data)
    key = "lnk_" + "Ab3" * 14
    for service, endpoint in ((key, "e"), ("s", key)):
        status, body = node.run(service, endpoint, {})
        assert status == 404 and body["errorType"] == "NotFound", body
        assert key not in json.dumps(body) and "looks like an API key" in body["message"]
    assert node.run("s", "e", {"x": 1})[0] == 200
    log = data / "logs" / "queries.log"
    lines = until(lambda: log.exists() and len(text := log.read_text().splitlines()) >= 3 and text)
    assert key not in "".join(lines)
    records = [json.loads(line) for line in lines]
    assert [(r["serviceId"], r["endpointId"], r["status"]) for r in records] == [
        ("<an API key>", "e", 404),
        ("s", "<an API key>", 404),
        ("s", "e", 200),
    ]


def test_admin_status_waits_for_a_node_that_is_starting(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    """The node writes run/lightnode.addr last, once its pipelines are started (4-6 s
    with 100 endpoints here): `admin status --data-dir` said "no running node" (exit 1)
    meanwhile. Here a live node's address file is held back for a second."""
    import subprocess
    import sys
    import time

    data = tmp_path / "data"
    write_service(data, "s", {"e": SOURCE})
    node_factory(data)
    addr = data / "run" / "lightnode.addr"
    held = addr.with_name("held-back")
    addr.rename(held)
    err_path = tmp_path / "status.err"
    with open(err_path, "wb") as err_file:
        cli = subprocess.Popen(
            [sys.executable, "-m", "lightnode", "admin", "status", "--data-dir", str(data)],
            stdout=subprocess.PIPE, stderr=err_file, text=True,
        )  # fmt: skip
    # Held back until the command has found no address and waits (an interpreter start:
    # it may take over a second on a busy machine).
    deadline = time.monotonic() + 30
    while "waiting for the node" not in err_path.read_text() and cli.poll() is None:
        assert time.monotonic() < deadline, err_path.read_text()
        time.sleep(0.02)
    held.rename(addr)
    out, _ = cli.communicate(timeout=60)
    err = err_path.read_text()
    assert cli.returncode == 0, err
    assert "waiting for the node" in err and "s" in out


def test_the_admin_key_in_the_nodes_environment_does_not_reach_user_code(
    node_factory: Callable[..., Node], tmp_path: Path
) -> None:
    """The README's production setup exports LIGHTNODE_ADMIN_KEY in the shell that starts
    the node; every pipeline inherited it (a service returned it in its answer)."""
    data = tmp_path / "data"
    spy = "import os\ndef e():\n    return {k: v for k, v in os.environ.items() if 'ADMIN' in k or v.startswith('lnk_')}\n"
    write_service(data, "s", {"e": spy})
    node = node_factory(data, env={"LIGHTNODE_ADMIN_KEY": "lnk_" + "Zz9" * 14, "OTHER_SETTING": "kept"})
    status, body = node.run("s", "e")
    assert status == 200 and body["response"] == {}, body
