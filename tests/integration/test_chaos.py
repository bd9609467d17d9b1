"""Chaos against live nodes: garbage on raw sockets, the gunicorn invalid-request corpus,
random SIGKILLs of pipelines under load, and a thousand idle keep-alive connections.

Each test prints its counts (run with -s to see them). The default run is
bounded to seconds; the `slow` variants run longer.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import re
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Node, write_service, write_tuning

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "gunicorn-http-requests"
ADD = "def add(a=0, b=0):\n    return {'sum': a + b}\n"
WORK = "import time\ndef work(ms=5):\n    time.sleep(ms / 1000)\n    return {'ok': True}\n"
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def write_server(root: Path, settings: dict[str, Any]) -> None:
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "server.json").write_text(json.dumps(settings))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("chaos") / "data"
    write_service(root, "svc", {"add": ADD})
    write_tuning(root, "svc", "add", {"pool": {"floor": 2, "cruise": 2, "ceil": 2, "queue": 256}})
    write_server(
        root,
        {
            "limits": {
                "header_timeout_ms": 500,
                "keepalive_timeout_ms": 1000,
                "max_body_bytes": 65536,
                "max_header_bytes": 16384,
            }
        },
    )
    n = Node(root)
    n.start()
    yield n
    n.stop()


def healthy(node: Node) -> None:
    assert node.proc is not None and node.proc.poll() is None, node.log()[-3000:]
    status, body = node.run("svc", "add", {"a": 40, "b": 2})
    assert (status, body["response"]) == (200, {"sum": 42})
    log = node.log()
    # The node's own lines: a call that raised (a string for a number) puts the user's
    # traceback in the log by design, tagged lightnode.user (and the request's id).
    own = "\n".join(line for line in log.splitlines() if not re.search(r" lightnode\.user( \[req \S+\])?: ", line))
    assert "Traceback" not in own and "the app raised" not in own, log[-3000:]


# ----------------------------------------------------------- garbage inputs


TEMPLATES = [
    b"GET /isAlive HTTP/1.1\r\nHost: x\r\n\r\n",
    b'POST /public/api/v1/svc/add/run HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n{"a": 1}',
    b"POST /public/api/v1/svc/add/run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'4\r\n{"a"\r\n4\r\n: 1}\r\n0\r\n\r\n',
    b"GET /public/api/v1/svc/add/run?a=1&b=2 HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc\r\n\r\n"
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /admin/api/services/svc/stats HTTP/1.1\r\nHost: x\r\n\r\n",
]
NASTIES = [
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),
    b"GET / HTTP/0.9\r\n\r\n",
    b"GET /\r\n\r\n",
    b"\r\n" * 500,
    b"POST /public/api/v1/svc/add/run HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /public/api/v1/svc/add/run HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST /public/api/v1/svc/add/run HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"POST /public/api/v1/svc/add/run HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n",
    b"GET /isAlive HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
    b"GET /isAlive HTTP/1.1\r\nNoColonHere\r\n\r\n",
    b"G" * 5000 + b" / HTTP/1.1\r\n\r\n",
    b"GET /" + b"%" * 3000 + b" HTTP/1.1\r\n\r\n",
    b"GET /isAlive HTTP/1.1\r\n" + b"X-H: v\r\n" * 4000 + b"\r\n",
    b"GET /public/api/v1/%00/%ff/run HTTP/1.1\r\n\r\n",
    b"GET http://[::1/ HTTP/1.1\r\n\r\n",
    b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n",
    b"GET /isAlive HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"POST /public/api/v1/svc/add/run HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        op = rng.randrange(6)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 2:
            del out[at : at + rng.randint(1, 16)]
        elif op == 3:
            del out[at:]
        elif op == 4:
            out[at:at] = out[at : at + rng.randint(1, 64)] * rng.randint(1, 20)
        else:
            out[at:at] = rng.choice(
                [b"\r\n", b"\n", b"\r", b":", b" ", b"\x00", b"\t", b"\xff", b"0\r\n\r\n"]
            )
    return bytes(out)


def garbage_inputs(count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(seed)
    for index in range(count):
        kind = index % 4
        if kind == 0:
            yield "random", rng.randbytes(rng.randint(0, 300))
        elif kind == 1:
            yield "mutated", mutate(rng, rng.choice(TEMPLATES))
        elif kind == 2:
            yield (
                "nasty",
                mutate(rng, rng.choice(NASTIES)) if rng.random() < 0.7 else rng.choice(NASTIES),
            )
        else:
            yield "prefixed", rng.choice(TEMPLATES) + mutate(rng, rng.choice(TEMPLATES + NASTIES))


async def send_one(port: int, data: bytes, half_close: bool) -> tuple[str, bytes]:
    """Send one input on a new connection; return (outcome, first status or b"").

    A half-closing client is gone (SPEC §4 rule 9): a call of its that still waits
    for a pipeline is cancelled and gets no answer; what runs or is done is answered.
    Outcomes: "closed" (the node closed after its answer, or without one),
    "reset", "internal" (an InternalError answer: the app raised), "timeout".
    """
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, asyncio.TimeoutError) as exc:
        return f"connect-failed:{type(exc).__name__}", b""
    received = b""
    outcome = "closed"
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 3)
            if not chunk:
                break
            received += chunk
    except asyncio.TimeoutError:
        outcome = "timeout"  # neither an answer nor a close: the node kept a bad connection
    except OSError:  # reset, broken pipe, or not connected any more at write_eof
        outcome = "reset"
    finally:
        writer.transport.abort()
    match = STATUS.search(received)
    if b'"errorType":"InternalError"' in received:
        outcome = "internal"
    return outcome, match.group(1) if match else b""


async def fire_garbage(
    port: int, inputs: list[tuple[str, bytes]], concurrency: int
) -> collections.Counter[str]:
    gate = asyncio.Semaphore(concurrency)
    counts: collections.Counter[str] = collections.Counter()

    async def one(index: int, kind: str, data: bytes) -> None:
        half_close = index % 50 != 0  # the others wait for the node's timeouts
        async with gate:
            outcome, status = await send_one(port, data, half_close)
        if outcome == "timeout" and not half_close and b"\r\n\r\n" in data:
            # A complete head and a body still to come: the node waits for it (no
            # body timeout; see test_hostile.py::test_a_stalled_body_is_not_held_forever).
            outcome = "waiting-for-body"
        counts["sent"] += 1
        counts[f"kind:{kind}"] += 1
        counts[f"outcome:{outcome}"] += 1
        counts[f"status:{status.decode() or 'none'}"] += 1

    await asyncio.gather(*(one(i, kind, data) for i, (kind, data) in enumerate(inputs)))
    return counts


def run_garbage(node: Node, count: int, seed: int) -> collections.Counter[str]:
    inputs = list(garbage_inputs(count, seed))
    started = time.monotonic()
    counts = asyncio.run(fire_garbage(node.port, inputs, concurrency=64))
    print(
        f"\ngarbage: {count} inputs in {time.monotonic() - started:.1f} s: {dict(sorted(counts.items()))}"
    )
    assert counts["sent"] == count
    assert counts["outcome:timeout"] == 0 and counts["outcome:internal"] == 0
    assert not any(k.startswith("outcome:connect-failed") for k in counts)
    healthy(node)
    return counts


def test_ten_thousand_garbage_inputs_on_raw_sockets(node: Node) -> None:
    counts = run_garbage(node, 10_000, seed=20240611)
    assert counts["status:400"] > 1000 and counts["status:200"] > 100


@pytest.mark.slow
@pytest.mark.timeout(600)  # 200,000 inputs, 96 s here: over the default 60 s
def test_garbage_long(node: Node) -> None:
    for seed in range(10):
        run_garbage(node, 20_000, seed=seed)


# ------------------------------------------------------------------ corpus


def decode(raw: bytes) -> bytes:
    """The corpus escape format (its README.md)."""
    text = raw.replace(b"\r\n", b"").replace(b"\n", b"")
    text = text.replace(b"\\r\\n", b"\r\n").replace(b"\\0", b"\0")
    text = text.replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), text)


# Invalid for gunicorn only because of its own rules; the unit corpus test
# (tests/unit/http/test_corpus.py) says why for each.
PARSED_HERE = {
    "invalid/019.http",
    "invalid/040.http",
    "invalid/chunked_07.http",
    "invalid/041.http",
}
MAX_HEAD = 16384  # the module node's max_header_bytes


def corpus_cases() -> list[tuple[str, str]]:
    manifest_path = CORPUS / "MANIFEST.json"
    if not manifest_path.is_file():
        return []
    files = json.loads(manifest_path.read_text())["files"]
    cases = []
    for name, info in sorted(files.items()):
        if not name.startswith("invalid/"):
            continue
        want = "refused"
        if name in PARSED_HERE:
            want = "parsed"
        elif str(info["expect"]).startswith("LimitRequest") and name != "invalid/013.http":
            head = decode((CORPUS / name).read_bytes()).partition(b"\r\n\r\n")[0]
            want = "431" if len(head) > MAX_HEAD else "parsed"
        cases.append((name, want))
    return cases


def send_corpus(port: int, data: bytes, bytewise: bool) -> list[int]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if bytewise:
                for i in range(len(data)):
                    sock.send(data[i : i + 1])
            else:
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: the answer may still be there
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return [int(s) for s in STATUS.findall(received)]


def test_gunicorn_invalid_corpus_whole_and_byte_by_byte(node: Node) -> None:
    cases = corpus_cases()
    if not cases:
        pytest.skip(f"corpus not found at {CORPUS}")
    sent = 0
    for name, want in cases:
        data = decode((CORPUS / name).read_bytes())
        for bytewise in (False, True):
            statuses = send_corpus(node.port, data, bytewise)
            sent += 1
            where = (name, "bytes" if bytewise else "whole", statuses)
            if want == "parsed":
                assert statuses and 400 not in statuses and 431 not in statuses, where
            elif want == "431":
                assert statuses[-1:] == [431], where
            else:
                assert statuses[-1:] in ([400], [431]) or statuses == [], where
    print(
        f"\ncorpus: {sent} sends of {len(cases)} invalid requests, all refused or judged as expected"
    )
    healthy(node)


# ------------------------------------------------------------ SIGKILL chaos


def load_and_kill(node: Node, duration_s: float, clients: int = 8) -> dict[str, Any]:
    stop = threading.Event()
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    kills = 0
    body = b'{"ms": 5}'
    request = (
        b"POST /public/api/v1/svc/work/run HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )

    def client() -> None:
        sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        buffer = b""
        def receive() -> bytes:
            chunk = sock.recv(65536)
            if not chunk:  # the node closed the connection: never loop on it
                raise ConnectionError("connection closed by the node")
            return chunk

        while not stop.is_set():
            sock.sendall(request)
            while b"\r\n\r\n" not in buffer:
                buffer += receive()
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
            while len(buffer) < length:
                buffer += receive()
            answer, buffer = buffer[:length], buffer[length:]
            status = int(head.split()[1])
            kind = "ok" if status == 200 else f"{status} {json.loads(answer)['errorType']}"
            with lock:
                outcomes[kind] += 1
        sock.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    rng = random.Random(7)
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.05, 0.2))
        pipelines = node.stats("svc")["endpoints"][0]["pipelines"]
        serving = [p["pid"] for p in pipelines if p["state"] in ("idle", "busy") and p["pid"]]
        if serving:
            try:
                os.kill(rng.choice(serving), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
    stop.set()
    for thread in threads:
        thread.join(30)
    return {"requests": sum(outcomes.values()), "kills": kills, "outcomes": dict(outcomes)}


def chaos_node(node_factory: Any, tmp_path: Path) -> Node:
    root = tmp_path / "kills"
    write_service(root, "svc", {"work": WORK})
    write_tuning(
        root,
        "svc",
        "work",
        {"pool": {"floor": 4, "cruise": 4, "ceil": 4, "queue": 1000, "timeout": 30000}},
    )
    return node_factory(root)  # type: ignore[no-any-return]


def check_kills(node: Node, result: dict[str, Any]) -> None:
    print(f"\nSIGKILL chaos: {result}")
    outcomes = dict(result["outcomes"])
    ok = outcomes.pop("ok", 0)
    crashed = outcomes.pop("500 WorkerCrashed", 0)
    assert not outcomes, f"failures other than WorkerCrashed: {outcomes}"
    assert ok > 10 * result["kills"] and result["kills"] >= 10
    assert crashed <= result["kills"]  # only requests running in a killed pipeline fail
    counters = node.stats("svc")["endpoints"][0]["counters"]
    assert counters["crashes"] == result["kills"]
    # Requests were sent ahead into busy pipelines (prefetch), so kills also hit pipelines
    # holding one: those never started and were served by another pipeline, not failed.
    assert counters["prefetched"] > 0
    assert node.run("svc", "work")[0] == 200


def test_random_sigkills_under_load_fail_only_the_killed_requests(
    node_factory: Any, tmp_path: Path
) -> None:
    node = chaos_node(node_factory, tmp_path)
    check_kills(node, load_and_kill(node, duration_s=3.0))


@pytest.mark.slow
@pytest.mark.timeout(300)  # 60 s of load plus start and checks: over the default 60 s
def test_random_sigkills_long(node_factory: Any, tmp_path: Path) -> None:
    node = chaos_node(node_factory, tmp_path)
    check_kills(node, load_and_kill(node, duration_s=60.0, clients=16))


# ------------------------------------------------- a thousand connections


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def test_thousand_keepalive_connections_held_while_requests_succeed(
    node_factory: Any, tmp_path: Path
) -> None:
    raise_fd_limit(4096)  # before the node starts: it inherits the limit
    root = tmp_path / "conns"
    write_service(root, "svc", {"add": ADD})
    node = node_factory(root)
    held: list[socket.socket] = []
    ping = b"GET /public/api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
            sock.sendall(ping)
            held.append(sock)
        for sock in held:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200"), "a held connection was refused"
        for i in range(20):  # fresh connections and held ones both serve /run
            assert node.run("svc", "add", {"a": i})[0] == 200
            sock = held[i * 50]
            body = b'{"a": 1}'
            sock.sendall(
                b"POST /public/api/v1/svc/add/run HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n"
                + body
            )
            assert b'"sum":1' in sock.recv(4096)
        for sock in held:  # every one is still open and answering
            sock.sendall(ping)
        answered = sum(sock.recv(4096).startswith(b"HTTP/1.1 200") for sock in held)
        assert answered == 1000
        print(f"\n1000 keep-alive connections held; {answered} answered a second request")
    finally:
        for sock in held:
            sock.close()
    healthy(node)
