"""SPEC §7 / issue 6 requirements audit: `lightnode dev` and `lightnode test` behaviours not
covered elsewhere (test_devtools.py, test_code_envs.py)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import until
from tests.integration.test_devtools import (
    QUOTE_V1,
    dev_server,
    post,
    stop_a_test_run_during_its_query,
    write_src,
)

__all__ = ["dev_server"]  # the fixture, shared with test_devtools.py

pytestmark = pytest.mark.integration


def test_dev_on_a_port_in_use_says_so_without_a_traceback(tmp_path: Path) -> None:
    """SPEC §8: a failure prints a short clear message and exits non-zero, never a traceback.
    Was: `lightnode dev SRC --port P` with P taken printed a StartupError traceback."""
    src = write_src(tmp_path / "src", {"quote.py": QUOTE_V1}, [{"id": "quote", "code": "quote.py"}])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "lightnode", "dev", str(src), "--port", str(port),
             "--code-envs", str(tmp_path / "envs")],
            capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert f"lightnode dev: cannot listen on 127.0.0.1 port {port}" in done.stderr, done.stderr
    assert "address already in use" in done.stderr


SLOW = ("import time\n"
        "def quote(age):\n"
        "    if age == 0:\n"
        "        time.sleep(3)\n"
        "    return {'quote': age, 'version': %d}\n")


def test_dev_reload_drains_the_old_pipelines_a_request_in_flight_is_answered(
    tmp_path: Path, dev_server: Any
) -> None:
    """Issue 6: on a change the dev server reloads with new pipelines, the old ones drained:
    a request running in the old code when the file is saved still gets its answer."""
    src = write_src(tmp_path / "src", {"quote.py": SLOW % 1}, [{"id": "quote", "code": "quote.py"}])
    server = dev_server(src)
    server.wait_for(r"OK: 1 endpoint")
    url = server.run_url("pricing", "quote")
    answers: list[Any] = []

    def call() -> None:
        try:
            answers.append(post(url, {"age": 0}, timeout=20))
        except OSError as exc:  # a broken or timed-out connection is a failure too
            answers.append(exc)

    slow = threading.Thread(target=call)
    slow.start()

    def running_in_dev_1() -> bool:
        with urllib.request.urlopen(f"{server.url}/admin/api/services/pricing/stats", timeout=10) as answer:
            (endpoint,) = json.loads(answer.read())["endpoints"]
        return bool(endpoint["generation"] == "dev-1" and endpoint["pipelinesByState"]["busy"] == 1)

    until(running_in_dev_1, what="the request running in dev-1")
    mark = len(server.output())
    (src / "quote.py").write_text(SLOW % 2)
    server.wait_for(r"service pricing from .* \(generation dev-2\)", start=mark)
    slow.join(30)
    assert answers and isinstance(answers[0], tuple) and answers[0][0] == 200, (answers, server.output())
    assert answers[0][1]["response"] == {"quote": 0, "version": 1}
    assert answers[0][1]["apiContext"]["serviceGeneration"] == "dev-1"
    assert post(url, {"age": 1})[1]["response"]["version"] == 2
    assert "killed" not in server.output()[mark:]


def test_test_command_with_a_code_envs_dir_it_cannot_create_exits_3_naming_it(tmp_path: Path) -> None:
    """Exit 3 is documented for "code env that cannot be built". A code-envs directory that
    cannot be created (a read-only or missing HOME in a CI container) is such a case.
    Was: "lightnode: [Errno 20] Not a directory: ..." and exit 1, which says a query failed."""
    src = write_src(tmp_path / "src", {"quote.py": QUOTE_V1}, [{
        "id": "quote", "code": "quote.py", "code_env": {"requirements": "requirements.txt"},
        "test_queries": [{"name": "q", "q": {"age": 1}}]}])
    (src / "requirements.txt").write_text("# nothing to install\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "lightnode", "test", str(src), "--code-envs", str(blocker / "envs"), "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    (endpoint,) = json.loads(done.stdout)["endpoints"]
    assert endpoint["loaded"] is False
    assert f"cannot create the code envs directory {blocker / 'envs'}" in endpoint["error"], endpoint
    assert "Not a directory" in endpoint["error"]
    assert "Traceback" not in done.stderr


def test_test_command_of_a_service_without_code_envs_needs_no_cache_dir(tmp_path: Path) -> None:
    """The code envs cache (default ~/.cache/lightnode/code-envs) is for requirements envs only.
    Was: `lightnode test` created it at start, so in a CI container whose HOME is not
    writable every service failed: "lightnode: [Errno 13] Permission denied: '/.cache'", exit 1."""
    src = write_src(tmp_path / "src", {"quote.py": QUOTE_V1}, [{
        "id": "quote", "code": "quote.py", "test_queries": [{"name": "q", "q": {"age": 1}}]}])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**os.environ, "XDG_CACHE_HOME": str(blocker)}
    done = subprocess.run([sys.executable, "-m", "lightnode", "test", str(src)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    assert "OK: 1 endpoint(s)" in done.stdout


def test_test_command_stopped_by_ctrl_c_exits_130_and_cleans_up(tmp_path: Path) -> None:
    """The documented exit code 130 (Ctrl-C): the node and its pipelines are stopped and the
    temp data dir removed first, as for SIGTERM (test_devtools.py)."""
    code, out, err = stop_a_test_run_during_its_query(tmp_path, signal.SIGINT)
    assert code == 130, (code, out, err)
    assert "Traceback" not in err, err


def test_dev_server_that_cannot_watch_src_dir_says_why_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reloading on every change is what `lightnode dev` is for; when the watch fails (Linux's
    inotify watch limit: watchfiles raises "OS file watch limit reached") the developer must
    be told. Was: "lightnode dev: stopping" and exit 0, the reason swallowed."""
    import uvloop

    from lightnode.devtools import server

    async def no_watch(*args: Any, **kwargs: Any) -> Any:
        raise FileNotFoundError(f'OS file watch limit reached. about ["{src}"]')
        yield  # an async generator, as watchfiles.awatch

    src = write_src(tmp_path / "src", {"quote.py": QUOTE_V1}, [{"id": "quote", "code": "quote.py"}])
    monkeypatch.setattr(server, "awatch", no_watch)
    out = io.StringIO()
    code = uvloop.run(asyncio.wait_for(
        server.serve_dev(src, host="127.0.0.1", port=0, code_envs_dir=tmp_path / "envs", out=out), 60))
    assert code == 1, out.getvalue()
    assert f"lightnode dev: cannot watch {src} for changes: OS file watch limit reached" in out.getvalue()
    assert out.getvalue().rstrip().endswith("lightnode dev: stopping")
