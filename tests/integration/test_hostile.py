"""Hostile input against a live node: limits, slow clients, connection floods, odd ids (SPEC §2, §3.4, §8)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Node, until, write_service, write_tuning

pytestmark = pytest.mark.integration

MARK = "ZQX"  # in every hostile id; the audit hook reports any file access naming it
LIMITS = {
    "max_body_bytes": 4096,
    "max_header_bytes": 2048,
    "header_timeout_ms": 600,
    "keepalive_timeout_ms": 600,
    "max_connections": 10000,
}
FUNCS = {
    "echo": "def echo(**kw):\n    return {'n': len(kw)}\n",
    "boom": "def boom():\n    raise ValueError('bad value')\n",
    "crash": "import os\ndef crash():\n    os._exit(9)\n",
    "odd": "def odd():\n    return {'x': object()}\n",
    "broken": "raise RuntimeError('cannot load model')\ndef broken():\n    return 1\n",
}
# Installed in the node (and its workers) through PYTHONPATH: a Python audit hook
# that writes to stderr (the node's log) any file-system event naming MARK. It
# sees open/listdir/scandir/mkdir/...; strace, when it can attach, also sees stat.
SITECUSTOMIZE = """
import os, sys
_MARK = os.environ.get("LN_AUDIT_MARK")
if _MARK:
    def _hook(event, args):
        if event == "open" or event.startswith(("os.", "shutil.", "glob.", "pathlib.")):
            for arg in args:
                if isinstance(arg, (str, bytes)):
                    text = arg if isinstance(arg, str) else arg.decode("latin-1")
                    if _MARK in text:
                        os.write(2, ("AUDIT-FS-HIT %s %r\\n" % (event, text)).encode())
    sys.addaudithook(_hook)
"""


def write_server(root: Path, limits: dict[str, int]) -> None:
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "server.json").write_text(json.dumps({"limits": limits}))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("hostile")
    root = base / "data"
    write_service(root, "svc", FUNCS)
    write_server(root, LIMITS)
    hook_dir = base / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pythonpath = os.pathsep.join(p for p in (str(hook_dir), os.environ.get("PYTHONPATH", "")) if p)
    n = Node(root, env={"PYTHONPATH": pythonpath, "LN_AUDIT_MARK": MARK})
    n.start()
    yield n
    n.stop()


def run_path(endpoint: str, service: str = "svc") -> str:
    return f"/public/api/v1/{service}/{endpoint}/run"


def connect(node: Node, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.port), timeout=timeout_s)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One answer off a keep-alive connection (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def exchange(node: Node, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(node) as sock:
        sock.sendall(data)
        return read_response(sock)


def request(method: str, path: str, body: bytes = b"", extra: bytes = b"") -> bytes:
    return (
        b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n"
        % (method.encode(), path.encode("latin-1"), len(body), extra)
    ) + body


def closed_within(sock: socket.socket, timeout_s: float) -> bool:
    """True if the peer closes (EOF or reset) within timeout_s, reading and discarding input."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            try:
                if not sock.recv(65536):
                    return True
            except ConnectionResetError:
                return True
    return False


# ------------------------------------------------------------------ limits


def test_body_limit(node: Node) -> None:
    body = b'{"a": "' + b"x" * (4096 - 9) + b'"}'
    assert len(body) == 4096
    status, _, answer = exchange(node, request("POST", run_path("echo"), body))
    assert status == 200, answer
    status, headers, answer = exchange(node, request("POST", run_path("echo"), body + b" "))
    assert (status, json.loads(answer)["errorType"]) == (413, "PayloadTooLarge")
    assert headers["connection"] == "close"
    chunked = (
        b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        % run_path("echo").encode()
        + b"800\r\n"
        + b" " * 0x800
        + b"\r\n"
        + b"800\r\n"
        + b" " * 0x800
        + b"\r\n"
        + b"1\r\n \r\n0\r\n\r\n"
    )
    status, _, _ = exchange(node, chunked)
    assert status == 413
    assert node.run("svc", "echo", {"a": 1})[0] == 200


def test_header_and_url_limits(node: Node) -> None:
    status, _, answer = exchange(
        node, request("GET", "/isAlive", extra=b"X-Big: " + b"a" * 2100 + b"\r\n")
    )
    assert (status, json.loads(answer)["errorType"]) == (431, "HeadersTooLarge")
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(300))
    assert exchange(node, request("GET", "/isAlive", extra=many))[0] == 431
    assert exchange(node, request("GET", "/isAlive?" + "q" * 3000))[0] == 431
    assert (
        exchange(node, request("GET", "/isAlive", extra=b"X-Ok: " + b"a" * 1500 + b"\r\n"))[0]
        == 200
    )


def test_slowloris_is_disconnected_after_the_header_timeout(node: Node) -> None:
    head = b"GET /isAlive HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
    started = time.monotonic()  # before the connection: the node's clock starts after this
    with connect(node) as sock:
        sent = 0
        closed = False
        for byte in head:  # one byte every 0.15 s: never idle as long as the timeout
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sent += 1
            if closed_within(sock, 0.15):
                closed = True
                break
        elapsed = time.monotonic() - started
    assert closed and sent < len(head)
    assert 0.5 <= elapsed <= 1.5, elapsed  # header_timeout_ms is 600: a deadline, not an idle timer


def test_keepalive_timeout_closes_idle_connections_only(node: Node) -> None:
    with connect(node) as sock:
        for _ in range(5):  # active for 1.5 s, longer than the 0.6 s keep-alive timeout
            last_sent = time.monotonic()
            sock.sendall(request("GET", "/isAlive"))
            assert read_response(sock)[0] == 200
            time.sleep(0.3)
        assert closed_within(sock, 3.0)
        # Idle from the node's answer to the last request, which came after last_sent (timed
        # from there, not from the end of a sleep that a busy machine may prolong).
        assert 0.55 <= time.monotonic() - last_sent <= 1.5


def test_bare_crlfs_do_not_keep_an_idle_connection_open(node: Node) -> None:
    # CRLFs between requests start no request: the keep-alive clock runs on.
    with connect(node) as sock:
        sock.sendall(request("GET", "/isAlive"))
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < 4.0:
            try:
                sock.sendall(b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed = closed_within(sock, 0.2)
        assert closed, "a connection sending only CRLFs was kept past keepalive_timeout_ms"
        assert time.monotonic() - started <= 2.0  # keepalive_timeout_ms is 600


def test_an_encoded_slash_in_an_admin_path_is_part_of_an_id(node: Node) -> None:
    status, _, body = exchange(node, request("GET", "/admin/api/services/svc%2Fstats"))
    assert (status, json.loads(body)["errorType"]) == (404, "NotFound")
    assert exchange(node, request("GET", "/admin/api/services/svc/stats"))[0] == 200


# --------------------------------------------------------------- ids


HOSTILE_PATHS = [
    f"/public/api/v1/..%2F{MARK}svc/echo/run",
    f"/public/api/v1/{MARK}svc/..%2f..%2f{MARK}/run",
    f"/public/api/v1/%2e%2e/{MARK}/run",
    f"/public/api/v1/{MARK}svc%00/echo/run",
    f"/public/api/v1/{MARK}svc/echo%0a/run",
    f"/public/api/v1/{MARK}svc/echo%2f..%2f..%2f{MARK}/run",
    f"/public/api/v1/{MARK}svc/.{MARK}/run",
    f"/public/api/v1/{MARK}" + "a" * 70 + "/echo/run",
    f"/public/api/v1/{MARK}%C3%A9/echo/run",
    f"/public/api/v1/{MARK}%5c..%5c/echo/run",
    f"/public/api/v1/{MARK}svc/echo/../../{MARK}/run",
    f"/public/api/v1/{MARK}nope/echo/run",  # valid ids that name nothing
    f"/public/api/v1/{MARK}svc/{MARK}nope/run",
    f"/admin/api/services/..%2f{MARK}svc/stats",
    f"/admin/api/services/{MARK}nope/stats",
    f"/admin/api/services/%2e%2e%2f%2e%2e%2f{MARK}/stats",
    f"/{MARK}/../../etc/passwd",
]


def strace_file_calls(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """Trace the node's file system calls while the test runs, when strace can attach."""
    if shutil.which("strace") is None:
        return None
    proc = subprocess.Popen(
        ["strace", "-f", "-qq", "-e", "trace=%file", "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Attached once it shows a poll of DATA_DIR/not-alive (every 0.25 s): from then on
    # the node's file calls are traced.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if out.exists() and "not-alive" in out.read_text(errors="replace"):
            break
        time.sleep(0.05)
    return proc


def test_odd_ids_are_404_and_never_touch_the_filesystem(node: Node, tmp_path: Path) -> None:
    assert node.proc is not None
    tracer = strace_file_calls(node.proc.pid, tmp_path / "strace.out")
    try:
        for path in HOSTILE_PATHS:
            for method in ("GET",) if path.startswith("/admin/") else ("GET", "POST"):
                status, _, answer = exchange(node, request(method, path, b"{}"))
                assert status == 404, (path, answer)
                assert json.loads(answer)["errorType"] == "NotFound"
        with connect(node) as sock:  # raw bytes in the target are refused by the parser
            sock.sendall(
                b"POST /public/api/v1/"
                + MARK.encode()
                + b"\xff\xfe/echo/run HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            assert read_response(sock)[0] == 400
        time.sleep(0.3)  # still traced: any file call made after the answers
    finally:
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(5)
    time.sleep(0.2)  # worker stderr reaches the log through a pipe
    assert "AUDIT-FS-HIT" not in node.log(), node.log()[-3000:]
    if tracer is not None and (tmp_path / "strace.out").exists():  # else strace never got going
        traced = (tmp_path / "strace.out").read_text(errors="replace")
        assert "not-alive" in traced  # strace did see the node's file calls
        assert MARK not in traced, [line for line in traced.splitlines() if MARK in line][:5]
    # Positive control: a file the node does read, named with the mark, is reported.
    write_tuning(node.data_dir, "svc", f"{MARK}ep", {"pool": {"floor": 1}})
    deadline = time.monotonic() + 5
    while "AUDIT-FS-HIT" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "AUDIT-FS-HIT" in node.log()
    assert node.run("svc", "echo", {"a": 1})[0] == 200


def test_no_traceback_in_error_bodies(node: Node) -> None:
    cases = [
        ("boom", b"{}", 500),
        ("crash", b"{}", 500),
        ("odd", b"{}", 500),
        ("broken", b"{}", 503),
        ("echo", b"{nope", 400),
        ("echo", b"[1]", 400),
    ]
    for endpoint, body, expected in cases:
        status, _, answer = exchange(node, request("POST", run_path(endpoint), body))
        assert status == expected, (endpoint, answer)
        for needle in (b"Traceback", b'File "', b", line "):
            assert needle not in answer, (endpoint, answer)
    status, _, answer = exchange(node, b"GARBAGE\x00 / HTTP/1.1\r\n\r\n")
    assert status == 400 and b"Traceback" not in answer


# -------------------------------------------------------- max_connections


def test_max_connections_refuses_politely_and_keeps_serving(
    node_factory: Any, tmp_path: Path
) -> None:
    root = tmp_path / "maxconn"
    write_service(root, "svc", {"echo": FUNCS["echo"]})
    write_server(root, {"max_connections": 30})
    write_tuning(root, "svc", "echo", {"pool": {"queue": 64}})
    node = node_factory(root)
    held = []
    try:
        for _ in range(30):
            sock = connect(node)
            sock.sendall(request("GET", "/isAlive"))
            assert read_response(sock)[0] == 200
            held.append(sock)
        for _ in range(3):
            with connect(node) as extra:
                status, headers, answer = read_response(extra)
                assert (status, json.loads(answer)["errorType"]) == (503, "TooManyConnections")
                assert headers["connection"] == "close" and closed_within(extra, 2)
        for sock in held[:5]:  # the connections already open are served as before
            sock.sendall(request("POST", "/public/api/v1/svc/echo/run", b'{"a": 1}'))
            assert read_response(sock)[0] == 200
        for sock in held[-5:]:
            sock.close()
        held = held[:-5]
        # Room again, once the node has seen those closes.
        until(lambda: node.run("svc", "echo", {"a": 1})[0] == 200, what="a connection served again")
    finally:
        for sock in held:
            sock.close()


def test_a_body_dripping_a_byte_at_a_time_is_not_held_forever(node: Node) -> None:
    """Bytes that keep coming, but under 500 per second: cut once the header timeout has
    passed (a drip of a byte a second with a 1 MB Content-Length held a slot for days)."""
    with connect(node) as sock:
        sock.sendall(
            b"POST /public/api/v1/svc/echo/run HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n{"
        )
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < 10:
            try:
                sock.sendall(b" ")  # one byte every 0.15 s: never stalled for the timeout
            except (BrokenPipeError, ConnectionResetError):
                break
            closed = closed_within(sock, 0.15)
        elapsed = time.monotonic() - started
    assert elapsed < 3, elapsed  # header_timeout_ms is 600
    assert node.run("svc", "echo", {"a": 1})[0] == 200


def test_a_stalled_body_is_not_held_forever(node: Node) -> None:
    with connect(node) as sock:
        sock.sendall(
            b"POST /public/api/v1/svc/echo/run HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        )
        assert closed_within(sock, 3 * LIMITS["header_timeout_ms"] / 1000)
