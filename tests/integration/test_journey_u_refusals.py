"""Journey U: a switch refused at warm-up is tried once per write of state.json, and
answers read from inside an answer's handling keep the pipe's frames in order.

Each test runs a real node on loopback. Tries are counted by an init that appends its
pid to a file before it raises or hangs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import Node, until, write_service, write_tuning

OK = "def e():\n    return 'v1'\n"


def _raising(pids: Path) -> str:
    return (
        f"import os\nwith open({str(pids)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\n"
        "raise RuntimeError('model file missing')\ndef e():\n    return 'bad'\n"
    )


def _hanging(pids: Path) -> str:
    return (
        f"import os, time\nwith open({str(pids)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\n"
        "time.sleep(600)\ndef e():\n    return 'hung'\n"
    )


def _tries(pids: Path) -> int:
    return len(pids.read_text().split()) if pids.exists() else 0


def _write_state(data_dir: Path, *generations: str, atomic: bool = True) -> None:
    entries = [{"generation": g, "proba": 1.0 / len(generations)} for g in generations]
    text = json.dumps({"enabled": True, "mapping": {"entries": entries}})
    path = data_dir / "services" / "svc" / "state.json"
    if atomic:
        tmp = path.with_name(".state.json.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)


def _add_generation(data_dir: Path, tmp: Path, name: str, source: str) -> None:
    """A generation that appears at once (one rename), as an import makes it appear."""
    staging = tmp / f"staging-{name}"
    staging.mkdir()
    (staging / "e.py").write_text(source)
    (staging / "service.json").write_text(json.dumps(
        {"id": "svc", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py"}]}))
    os.rename(staging, data_dir / "services" / "svc" / "generations" / name)


def _generation(node: Node) -> str:
    status, answer = node.run("svc", "e")
    assert status == 200, answer
    return str(answer["apiContext"]["serviceGeneration"])


def _switch_error(node: Node) -> str | None:
    error = node.stats("svc")["switchError"]
    return None if error is None else str(error)


def _node(node_factory: Any, tmp_path: Path, warmup_ms: int = 2000) -> Node:
    data_dir = tmp_path / "node"
    (data_dir / "config").mkdir(parents=True)
    (data_dir / "config" / "server.json").write_text(json.dumps({"switch": {"warmup_timeout_ms": warmup_ms}}))
    write_service(data_dir, "svc", {"e": OK})
    node: Node = node_factory(data_dir)
    return node


def test_a_hand_edited_refused_switch_is_tried_once_per_write_and_again_on_sighup(
    node_factory: Any, tmp_path: Path
) -> None:
    node = _node(node_factory, tmp_path)
    pids = tmp_path / "tries"
    _add_generation(node.data_dir, tmp_path, "bad", _raising(pids))
    _write_state(node.data_dir, "bad", atomic=False)  # an editor's in-place save
    until(lambda: _tries(pids) == 1 and _switch_error(node), 10, "the first try")
    assert _switch_error(node) == (
        "switch not applied: generation bad failed to load (RuntimeError: model file missing); v1 stays in service"
    )
    time.sleep(2.0)  # the watcher's later scans see nothing new: no second try
    assert _tries(pids) == 1
    assert _generation(node) == "v1"
    _write_state(node.data_dir, "bad")  # the same mapping written again: a new write
    until(lambda: _tries(pids) == 2, 10, "the try of the second write")
    time.sleep(1.5)
    assert _tries(pids) == 2
    node.signal(signal.SIGHUP)
    until(lambda: _tries(pids) == 3, 10, "the try SIGHUP asks for")
    time.sleep(1.5)
    assert _tries(pids) == 3 and _generation(node) == "v1"
    _write_state(node.data_dir, "v1")  # a switch back
    until(lambda: _switch_error(node) is None, 10, "the switch error to clear")
    assert _tries(pids) == 3 and _generation(node) == "v1"
    assert "state.json names the state in force again" in node.log()


def test_a_refused_switch_waits_for_its_own_generation_not_for_other_imports(
    node_factory: Any, tmp_path: Path
) -> None:
    """A mapping naming a generation that is not there is refused; a generation imported
    beside it does not try it again; the mapped one appearing does, and it serves."""
    node = _node(node_factory, tmp_path)
    _write_state(node.data_dir, "later")
    until(lambda: "generation later does not exist" in (_switch_error(node) or ""), 10, "the refusal")
    refusal = "switch not applied: generation later failed to load"
    until(lambda: node.log().count(refusal) == 1, 10, "the refusal in the log")
    _add_generation(node.data_dir, tmp_path, "other", OK)
    time.sleep(2.0)  # the watcher reports the service; its mapping is read as it was refused
    assert node.log().count(refusal) == 1
    assert "generation later does not exist" in (_switch_error(node) or "")
    assert _generation(node) == "v1"
    _add_generation(node.data_dir, tmp_path, "later", "def e():\n    return 'later'\n")
    until(lambda: _generation(node) == "later", 10, "the switch to the generation that appeared")
    assert _switch_error(node) is None


def test_a_refused_switch_through_the_cli_is_tried_once(node_factory: Any, tmp_path: Path) -> None:
    """`lightnode admin switch --data-dir` goes through the running node: exit 1 with the
    node's reason, one try, and the watcher's report of that write is not a second one."""
    from lightnode.cli import main

    node = _node(node_factory, tmp_path)
    pids = tmp_path / "tries"
    _add_generation(node.data_dir, tmp_path, "bad", _raising(pids))
    assert main(["admin", "switch", "svc", "bad", "--data-dir", str(node.data_dir)]) == 1
    assert _tries(pids) == 1
    time.sleep(2.0)
    assert _tries(pids) == 1
    assert (_switch_error(node) or "").startswith("switch not applied: generation bad failed to load")
    assert main(["admin", "switch", "svc", "bad", "--data-dir", str(node.data_dir)]) == 1
    assert _tries(pids) == 2  # the same switch asked again
    _add_generation(node.data_dir, tmp_path, "fixed", "def e():\n    return 'fixed'\n")
    assert main(["admin", "switch", "svc", "fixed", "--data-dir", str(node.data_dir)]) == 0
    assert _generation(node) == "fixed" and _switch_error(node) is None
    assert _tries(pids) == 2


# Was: a SIGHUP sent while a refused switch warmed up was not a new try: its re-read was
# answered with the refusal that warm-up recorded afterwards (forget_refusals cleared only
# the marks already recorded).
def test_sighup_during_the_warm_up_of_a_refused_switch_tries_it_again(node_factory: Any, tmp_path: Path) -> None:
    node = _node(node_factory, tmp_path, warmup_ms=2000)
    pids = tmp_path / "tries"
    _add_generation(node.data_dir, tmp_path, "hung", _hanging(pids))
    answers: list[int] = []

    def switch() -> None:
        url = f"{node.url}/admin/api/services/svc/actions/switchTo/hung"
        request = urllib.request.Request(url, data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                answers.append(answer.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            answers.append(exc.code)

    thread = threading.Thread(target=switch)
    thread.start()
    until(lambda: _tries(pids) == 1, 10, "the warm-up's pipeline")
    warming = thread.is_alive()
    node.signal(signal.SIGHUP)  # the operator fixed what init waits on: try again
    thread.join(30)
    assert warming and answers == [503]
    until(lambda: _tries(pids) == 2, 6, "the try SIGHUP asked for")


BIG_SOURCE = "BIG = 'x' * (256 * 1024)\ndef big():\n    return BIG\n"
BIG_REQUEST = (
    b"POST /public/api/v1/big/big/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)


def _pipeline_and_leave(port: int, count: int, read_per_step: int, stay_s: float) -> None:
    """Send `count` requests at once, read `read_per_step` bytes now and then (0: none), close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendall(BIG_REQUEST * count)
        except OSError:
            pass
        deadline = time.monotonic() + stay_s
        while time.monotonic() < deadline:
            if read_per_step:
                try:
                    if not sock.recv(read_per_step):
                        return
                except OSError:  # a timeout among them
                    pass
            time.sleep(0.02)


def test_pipelined_clients_of_a_256_kb_answer_leave_the_endpoint_serving(node_factory: Any, tmp_path: Path) -> None:
    """Answers freeing a pipelining window hand the next request to the pool from inside
    the answer's handling; the pipe being settled must not be read there (its 256 KB
    frames went out of step, and the pipeline stayed busy for good)."""
    data_dir = tmp_path / "node"
    write_service(data_dir, "big", {"big": BIG_SOURCE})
    write_service(data_dir, "small", {"small": "def small(i=0):\n    return {'i': i}\n"})
    write_tuning(data_dir, "big", "big", {"pool": {"floor": 1, "cruise": 2, "ceil": 4, "queue": 256}})
    node = node_factory(data_dir)
    small: list[tuple[int, Any]] = []
    stop = threading.Event()

    def normal_traffic() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            status, answer = node.run("small", "small", {"i": i})
            small.append((status, answer.get("response")))
            time.sleep(0.01)

    background = threading.Thread(target=normal_traffic)
    background.start()
    try:
        for _ in range(2):
            clients = [
                threading.Thread(target=_pipeline_and_leave, args=(node.port, count, step, stay))
                for count, step, stay in ((150, 0, 1.5), (120, 4096, 2.0), (200, 1 << 20, 1.5), (90, 4096, 1.0))
            ]
            for client in clients:
                client.start()
            for client in clients:
                client.join(30)
    finally:
        stop.set()
        background.join(30)
    assert small and all(status == 200 for status, _ in small), [s for s in small if s[0] != 200][:5]
    for _ in range(3):  # promptly served afterwards: a pipeline left BUSY would queue these
        started = time.monotonic()
        status, answer = node.run("big", "big", timeout=20)
        assert status == 200 and len(answer["response"]) == 256 * 1024, answer
        assert time.monotonic() - started < 8
    until(
        lambda: all(p["state"] != "busy" for e in node.stats("big")["endpoints"] for p in e["pipelines"]),
        10, "no busy pipeline",
    )
    assert json.loads(node.get("/admin/api/metrics")[1])["ready"] is True
