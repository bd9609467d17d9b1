"""The node's own lifecycle on real processes: shutdown past its grace period, signals
during start-up and drain, restarts on the same data directory (SPEC §8, §11, §12)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import REPO, Node, until, write_service, write_tuning

# Each call notes its id in a file when it starts, then sleeps: what ran is on disk.
MARKED = """\
import time

def f(id, s, marks):
    with open(marks, "a") as out:
        out.write(str(id) + "\\n")
    time.sleep(s)
    return id
"""


def write_server(root: Path, settings: dict[str, Any]) -> None:
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "server.json").write_text(json.dumps(settings))


def marks(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _one_pipeline_node(node_factory: Any, root: Path, *, grace_ms: int) -> Node:
    """A node serving MARKED as s/slow on one pipeline (so calls queue), with that grace."""
    write_service(root, "s", {"slow": MARKED})
    write_tuning(root, "s", "slow", {"pool": {"floor": 1, "cruise": 1, "ceil": 1, "queue": 8, "timeout": 60000}})
    write_server(root, {"shutdown": {"grace_ms": grace_ms}})
    node: Node = node_factory(root)
    return node


def test_grace_over_refuses_the_queued_requests_and_runs_none_of_them(node_factory: Any, tmp_path: Path) -> None:
    """Past shutdown.grace_ms the running call is killed (500) and the queued ones are
    answered 503 ShuttingDown, which says they did not run: none may start afterwards
    on a pipeline started anew for them, nor be left unanswered when the node exits."""
    node = _one_pipeline_node(node_factory, tmp_path / "grace", grace_ms=1000)
    mark_file = tmp_path / "marks"
    results: dict[int, Any] = {}

    def call(i: int) -> None:
        try:
            results[i] = node.run("s", "slow", {"id": i, "s": 30, "marks": str(mark_file)}, timeout=60)
        except Exception as exc:  # a connection closed without an answer
            results[i] = repr(exc)

    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    until(lambda: marks(mark_file) == ["0"], 20.0, "the first call to start")
    threads += [threading.Thread(target=call, args=(i,)) for i in (1, 2)]
    for thread in threads[1:]:
        thread.start()
    until(lambda: node.stats("s")["endpoints"][0]["queueLength"] == 2, 20.0, "two queued calls")
    node.signal(signal.SIGTERM)
    assert node.proc is not None
    assert node.proc.wait(30) == 0, node.log()
    for thread in threads:
        thread.join(30)
    assert results[0][0] == 500 and results[0][1]["errorType"] == "WorkerCrashed", results
    for i in (1, 2):
        assert results[i][0] == 503 and results[i][1]["errorType"] == "ShuttingDown", (results, node.log())
    time.sleep(0.5)
    assert marks(mark_file) == ["0"], "a queued call ran after the grace period"


def test_grace_over_exits_promptly(node_factory: Any, tmp_path: Path) -> None:
    """A node whose calls all outlast the grace period exits soon after it (not grace + 5 s + ...)."""
    node = _one_pipeline_node(node_factory, tmp_path / "prompt", grace_ms=500)
    mark_file = tmp_path / "marks"
    statuses: list[Any] = []

    def call() -> None:
        try:
            statuses.append(node.run("s", "slow", {"id": 0, "s": 30, "marks": str(mark_file)}, timeout=60)[0])
        except Exception as exc:  # a connection closed without an answer
            statuses.append(repr(exc))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    until(lambda: node.stats("s")["endpoints"][0]["queueLength"] == 2, 20.0, "two queued calls")
    started = time.monotonic()
    node.signal(signal.SIGTERM)
    assert node.proc is not None
    assert node.proc.wait(30) == 0
    # grace 0.5 s + the kill; 5 s is generous on a busy machine, the old code took > 6 s.
    assert time.monotonic() - started < 5, node.log()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses, key=str) == [500, 503, 503], statuses


def test_a_start_that_fails_after_its_pipelines_started_says_why_without_a_traceback(tmp_path: Path) -> None:
    """run/lightnode.addr is written last (a full disk refuses it, here it is a directory):
    the pipelines already starting are stopped first, so the operator reads one line,
    not a traceback of their connections cut by the loop's end."""
    root = tmp_path / "addr"
    write_service(root, "s", {"slow": MARKED})
    write_tuning(root, "s", "slow", {"pool": {"floor": 2, "cruise": 2, "ceil": 2}})
    (root / "run" / "lightnode.addr").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "lightnode", "--data-dir", str(root), "--port", "0"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.rstrip().splitlines()[-1] == (
        f"lightnode: [Errno 21] Is a directory: '{root / 'run' / 'lightnode.addr'}'"
    ), done.stderr


def test_a_listen_host_that_is_not_an_address_is_named_in_the_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lightnode", "--data-dir", str(tmp_path / "d"), "--host", "no-such-host.invalid",
         "--port", "0"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    last = done.stderr.rstrip().splitlines()[-1]
    assert last.startswith("lightnode: cannot listen on no-such-host.invalid port 0: "), done.stderr
    assert "Traceback" not in done.stderr
