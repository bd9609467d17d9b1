"""SPEC §7.1 end to end: `lightnode dev` (reload, load errors, tracebacks) and `lightnode test`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

QUOTE_V1 = "def quote(age):\n    return {'quote': age * 2, 'version': 1}\n"
QUOTE_V2 = "def quote(age):\n    return {'quote': age * 3, 'version': 2}\n"
BROKEN = "import json\nraise RuntimeError('model file missing')\ndef broken():\n    return 1\n"
FIXED = "def broken():\n    return {'fixed': True}\n"
BOOM = "def boom():\n    helper()\n\ndef helper():\n    raise ValueError('bad value in helper')\n"


def write_src(src: Path, files: dict[str, str], endpoints: list[dict[str, Any]], service_id: str = "pricing") -> Path:
    src.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (src / name).write_text(text)
    eps = [{"type": "python-function", **ep} for ep in endpoints]
    (src / "service.json").write_text(json.dumps({"id": service_id, "endpoints": eps}))
    return src


def post(url: str, payload: Any, timeout: float = 10) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


class DevServer:
    """`lightnode dev SRC --port 0` in its own process group, stdout captured to a file."""

    def __init__(self, src: Path, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.out_path = tmp / "dev.out"
        self.err_path = tmp / "dev.err"
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lightnode", "dev", str(src), "--port", "0", "--code-envs", str(tmp / "envs")],
            stdout=self._out, stderr=self._err, start_new_session=True, env=env,
        )
        banner = self.wait_for(r"on (http://\S+) \(Ctrl-C to stop\)")
        self.url = banner.group(1)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float = 20, start: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.compile(pattern).search(self.output(), start)
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} in dev output:\n{self.output()}\nstderr:\n{self.err_path.read_text()}")

    def run_url(self, service: str, endpoint: str) -> str:
        return f"{self.url}/public/api/v1/{service}/{endpoint}/run"

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(20)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(5)
        self._out.close()
        self._err.close()


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[Any]:
    servers: list[DevServer] = []

    def start(src: Path, env: dict[str, str] | None = None) -> DevServer:
        server = DevServer(src, tmp_path, env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _until(predicate: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return predicate()


def test_dev_server_serves_the_edit_within_3_s_and_exits_cleanly(tmp_path: Path, dev_server: Any) -> None:
    src = write_src(tmp_path / "src", {"quote.py": QUOTE_V1}, [
        {"id": "quote", "code": "quote.py", "function": "quote",
         "test_queries": [{"name": "typical", "q": {"age": 10}, "expect": {"response": {"quote": 20}}}]},
    ])
    server = dev_server(src)
    server.wait_for(r"OK: 1 endpoint")
    out = server.output()
    assert re.search(r"quote\s+ok\s+started in \d+ ms", out), out
    assert re.search(r"quote\s+typical\s+200\s+[\d.]+ ms\s+ok\s+\{\"quote\":20,\"version\":1\}", out), out
    assert f"POST {server.url}/public/api/v1/pricing/quote/run" in out
    url = server.run_url("pricing", "quote")
    assert post(url, {"age": 1})[1]["response"] == {"quote": 2, "version": 1}

    mark = len(server.output())
    edited = time.monotonic()
    (src / "quote.py").write_text(QUOTE_V2)
    served = _until(lambda: post(url, {"age": 1})[1].get("response", {}).get("version") == 2, 3.0)
    elapsed = time.monotonic() - edited
    assert served, f"new code not served within 3 s:\n{server.output()}"
    assert elapsed < 3.0
    assert post(url, {"age": 1})[1]["apiContext"]["serviceGeneration"] == "dev-2"
    # the replay after the reload shows the new result, and the expect that no longer holds
    server.wait_for(r"changed: quote\.py; reloading", start=mark)
    server.wait_for(r"\$\.response\.quote: expected 20, got 30", start=mark)

    assert server.interrupt() == 0
    assert "Traceback" not in server.err_path.read_text()
    assert server.output().rstrip().endswith("lightnode dev: stopping")


def test_dev_server_shows_a_load_error_with_traceback_then_recovers(tmp_path: Path, dev_server: Any) -> None:
    src = write_src(tmp_path / "src", {"broken.py": BROKEN, "boom.py": BOOM}, [
        {"id": "broken", "code": "broken.py", "test_queries": [{"name": "q", "q": {}}]},
        {"id": "boom", "code": "boom.py", "function": "boom"},
    ])
    server = dev_server(src)
    server.wait_for(r"FAILED: 2 endpoint\(s\), 1 failing to load")
    out = server.output()
    assert re.search(r"broken\s+FAILED\s+RuntimeError: model file missing", out), out
    assert f'File "{src}/broken.py", line 2, in <module>' in out
    assert re.search(r"broken\s+q\s+-\s+-\s+skipped", out), out
    status, body = post(server.run_url("pricing", "broken"), {})
    assert status == 503 and body["errorType"] == "EndpointUnavailable"
    assert "model file missing" in body["message"]

    # dev mode: a function's error answer carries its traceback
    status, body = post(server.run_url("pricing", "boom"), {})
    assert status == 500 and body["errorType"] == "FunctionError"
    assert "Traceback (most recent call last)" in body["detailedMessage"]
    assert f'File "{src}/boom.py", line 5, in helper' in body["detailedMessage"]

    mark = len(server.output())
    (src / "broken.py").write_text(FIXED)
    server.wait_for(r"OK: 2 endpoint\(s\), 0 failing to load; 1 test query, 1 passed", start=mark)
    assert re.search(r"broken\s+ok\s+started in", server.output()[mark:])
    assert post(server.run_url("pricing", "broken"), {})[1]["response"] == {"fixed": True}

    # Broken again while the fixed code serves: a dev server shows the code as it is now
    # (a node out of dev mode would keep the working generation: test_generations.py).
    mark = len(server.output())
    (src / "broken.py").write_text(BROKEN)
    server.wait_for(r"FAILED: 2 endpoint\(s\), 1 failing to load", start=mark)
    status, body = post(server.run_url("pricing", "broken"), {})
    assert status == 503 and body["errorType"] == "EndpointUnavailable"


def test_dev_server_keeps_serving_through_an_invalid_service_json(tmp_path: Path, dev_server: Any) -> None:
    src = write_src(tmp_path / "src", {"quote.py": QUOTE_V1}, [{"id": "quote", "code": "quote.py"}])
    server = dev_server(src)
    server.wait_for(r"OK: 1 endpoint")
    mark = len(server.output())
    (src / "service.json").write_text('{"id": "pricing", "endpoints": [{"id": "quote"}]}')
    server.wait_for(r"service\.json is invalid \(still serving dev-1\)", start=mark)
    assert "endpoints[0].code: missing" in server.output()[mark:]
    assert post(server.run_url("pricing", "quote"), {"age": 2})[1]["response"]["quote"] == 4


def _served_version(url: str) -> Any:
    status, body = post(url, {"age": 1})
    return body.get("response", {}).get("version") if status == 200 else None


def test_dev_server_serves_a_save_that_keeps_the_size_and_second_of_the_last(tmp_path: Path, dev_server: Any) -> None:
    """Python trusts a __pycache__ file whose source has the same size and mtime second:
    two quick saves of a constant (2 -> 3) must not serve the first one's bytecode."""
    src = write_src(tmp_path / "src", {"quote.py": QUOTE_V1}, [{"id": "quote", "code": "quote.py"}])
    # as on a developer's machine: the interpreter writes bytecode caches by default
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    server = dev_server(src, env)
    server.wait_for(r"OK: 1 endpoint")
    url = server.run_url("pricing", "quote")
    assert _served_version(url) == 1
    stamp = (src / "quote.py").stat().st_mtime_ns
    assert len(QUOTE_V2) == len(QUOTE_V1)
    mark = len(server.output())
    (src / "quote.py").write_text(QUOTE_V2)
    os.utime(src / "quote.py", ns=(stamp, stamp))  # saved within the same second
    server.wait_for(r"service pricing from .* \(generation dev-2\)", start=mark)
    server.wait_for(r"OK: 1 endpoint", start=mark)
    assert _served_version(url) == 2, server.output()
    assert not (src / "__pycache__").exists()  # nothing written into the developer's tree


HANGS = ("import time\n"
         "def quote(age):\n"
         "    if age == 0:\n"
         "        time.sleep(600)\n"
         "    return {'quote': age, 'version': %d}\n")


def test_dev_server_reloads_while_a_query_hangs(tmp_path: Path, dev_server: Any) -> None:
    """A test query that hangs must not hold the edit loop: a save interrupts the replay,
    and a request still running in old code does not hold back later reloads."""
    src = write_src(tmp_path / "src", {"quote.py": HANGS % 1}, [
        {"id": "quote", "code": "quote.py", "test_queries": [{"name": "hangs", "q": {"age": 0}}]},
    ])
    server = dev_server(src)
    server.wait_for(r"POST http://")
    url = server.run_url("pricing", "quote")
    assert _served_version(url) == 1
    time.sleep(0.5)  # the replay's query is running
    mark = len(server.output())
    (src / "quote.py").write_text(HANGS % 2)
    server.wait_for(r"hangs\s+-\s+[\d.]+ ms\s+INTERRUPTED\s+interrupted by a change", timeout_s=30, start=mark)
    assert _until(lambda: _served_version(url) == 2, 30), server.output()
    # dev-1's hung request is cut after a grace; then every later save still reloads
    server.wait_for(r"dev-1: killed \d+ pipeline\(s\) still running after 5 s", timeout_s=30)
    mark = len(server.output())
    (src / "quote.py").write_text(HANGS % 3)
    assert _until(lambda: _served_version(url) == 3, 30), server.output()
    assert server.interrupt() == 0
    assert "Traceback" not in server.err_path.read_text()


def test_dev_server_reloads_while_initialization_code_hangs(tmp_path: Path, dev_server: Any) -> None:
    """Initialization code that hangs (a download, a lock) must not hold the edit loop:
    saving the fix reloads at once, not after the node's 120 s switch warm-up."""
    src = write_src(tmp_path / "src", {"quote.py": "import time\ntime.sleep(600)\n" + QUOTE_V1},
                    [{"id": "quote", "code": "quote.py"}])
    server = dev_server(src)
    time.sleep(1.0)  # the pipeline is in the initialization code
    (src / "quote.py").write_text(QUOTE_V2)
    server.wait_for(r"loading dev-1 interrupted: a file changed", timeout_s=30)
    server.wait_for(r"OK: 1 endpoint", timeout_s=30)
    assert _served_version(server.run_url("pricing", "quote")) == 2, server.output()
    assert server.interrupt() == 0
    assert "Traceback" not in server.err_path.read_text()


WRITES_CACHE = ("import os, time\n"
                "with open(os.path.join(folders[0], 'cache.txt'), 'w') as f:\n"
                "    f.write(str(time.time()))\n"
                "def quote(age):\n"
                "    return {'quote': age, 'version': %d}\n")


def test_dev_server_does_not_reload_for_ever_on_files_the_service_writes(tmp_path: Path, dev_server: Any) -> None:
    """Initialization code that writes a cache into its folder: each reload would write it
    again and reload again, for ever. After one such reload the file is taken as the
    service's own, and saves of the code still reload."""
    src = write_src(tmp_path / "src", {"quote.py": WRITES_CACHE % 1},
                    [{"id": "quote", "code": "quote.py", "folders": ["models"]}])
    (src / "models").mkdir()
    server = dev_server(src)
    server.wait_for(r"models/cache\.txt: changed again while the service reloaded, so taken as written by the service")
    time.sleep(3)  # longer than a reload here: a loop would have gone round several times
    assert server.output().count("; reloading") == 1, server.output()
    assert _served_version(server.run_url("pricing", "quote")) == 1
    (src / "quote.py").write_text(WRITES_CACHE % 2)
    assert _until(lambda: _served_version(server.run_url("pricing", "quote")) == 2, 30), server.output()
    assert server.interrupt() == 0


# ------------------------------------------------------------------ lightnode test


def run_test_command(src: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightnode", "test", str(src), "--code-envs", str(tmp / "envs"), *extra],
        capture_output=True, text=True, timeout=60,
    )


TESTED = [
    {"id": "quote", "code": "quote.py", "function": "quote", "test_queries": [
        {"name": "typical", "q": {"age": 10}, "expect": {"response": {"quote": 20},
                                                        "apiContext": {"endpointId": "quote"}}},
        {"name": "no-expect", "q": {"age": 1}},
        {"name": "bad-params", "q": {"nope": 1}, "expect": {"errorType": "InvalidParameters"}},
    ]},
]


def test_test_command_passes_with_exit_0_and_a_json_report(tmp_path: Path) -> None:
    src = write_src(tmp_path / "src", {"quote.py": QUOTE_V1}, TESTED)
    done = run_test_command(src, tmp_path, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["exitCode"] == 0 and report["serviceId"] == "pricing"
    queries = report["endpoints"][0]["queries"]
    assert [(q["name"], q["status"], q["passed"]) for q in queries] == [
        ("typical", 200, True), ("no-expect", 200, True), ("bad-params", 400, True)]
    assert queries[0]["answer"]["response"] == {"quote": 20, "version": 1}
    assert queries[0]["latencyMs"] > 0


def test_test_command_plays_the_queries_of_a_private_service_with_a_key(tmp_path: Path) -> None:
    # "auth": {"public": false}: every query was answered 401 Unknown API key.
    src = write_src(tmp_path / "src", {"quote.py": QUOTE_V1}, TESTED)
    service = json.loads((src / "service.json").read_text())
    (src / "service.json").write_text(json.dumps({**service, "auth": {"public": False}}))
    done = run_test_command(src, tmp_path, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    queries = json.loads(done.stdout)["endpoints"][0]["queries"]
    assert [(q["name"], q["status"]) for q in queries] == [("typical", 200), ("no-expect", 200), ("bad-params", 400)]


def test_test_command_mismatch_exits_1_with_a_diff(tmp_path: Path) -> None:
    src = write_src(tmp_path / "src", {"quote.py": QUOTE_V2}, TESTED)
    done = run_test_command(src, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"quote\s+typical\s+200\s+[\d.]+ ms\s+MISMATCH", done.stdout), done.stdout
    assert "$.response.quote: expected 20, got 30" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("FAILED:")


def test_test_command_error_answer_exits_1(tmp_path: Path) -> None:
    src = write_src(tmp_path / "src", {"boom.py": BOOM},
                    [{"id": "boom", "code": "boom.py", "function": "boom", "test_queries": [{"name": "q", "q": {}}]}])
    done = run_test_command(src, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"boom\s+q\s+500\s+[\d.]+ ms\s+FAILED\s+FunctionError", done.stdout), done.stdout
    assert f'File "{src}/boom.py", line 5, in helper' in done.stdout


def test_test_command_load_failure_exits_3(tmp_path: Path) -> None:
    src = write_src(tmp_path / "src", {"quote.py": QUOTE_V1, "broken.py": BROKEN},
                    [TESTED[0], {"id": "broken", "code": "broken.py"}])
    done = run_test_command(src, tmp_path, "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    report = json.loads(done.stdout)
    broken = report["endpoints"][1]
    assert broken["loaded"] is False and "model file missing" in broken["error"]
    assert f'{src}/broken.py' in broken["traceback"]
    # an invalid service.json is a load failure too
    (src / "service.json").write_text("{not json")
    done = run_test_command(src, tmp_path)
    assert done.returncode == 3
    assert "service.json is invalid" in done.stdout and "invalid JSON at line 1" in done.stdout


def test_test_command_usage_error_exits_2(tmp_path: Path) -> None:
    done = run_test_command(tmp_path / "nowhere", tmp_path)
    assert done.returncode == 2
    assert "is not a directory" in done.stderr
    assert run_test_command(tmp_path, tmp_path, "--bogus").returncode == 2
    help_text = subprocess.run([sys.executable, "-m", "lightnode", "test", "--help"],
                               capture_output=True, text=True, timeout=30).stdout
    assert "exit codes:" in help_text and "3  service.json is invalid" in help_text



def stop_a_test_run_during_its_query(tmp_path: Path, signum: int) -> tuple[int, str, str]:
    """Run `lightnode test` on a query that never ends, send `signum` once it runs, and
    check that no pipeline nor temp data dir is left behind; (exit code, stdout, stderr)."""
    marker = tmp_path / "running.pid"
    src = write_src(tmp_path / "src", {"stuck.py": (
        "import os, time\n"
        "def stuck():\n"
        f"    open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(600)\n")},
        [{"id": "stuck", "code": "stuck.py", "test_queries": [{"name": "q", "q": {}}]}])
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightnode", "test", str(src), "--code-envs", str(tmp_path / "envs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(scratch)},
    )
    try:
        assert _until(lambda: marker.exists() and marker.read_text(), 30), "the query never ran"
        pipeline = int(marker.read_text())
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert not os.path.exists(f"/proc/{pipeline}") or "zombie" in Path(f"/proc/{pipeline}/status").read_text()
    assert list(scratch.iterdir()) == []
    return proc.returncode, out, err


def test_test_command_stopped_by_sigterm_cleans_up(tmp_path: Path) -> None:
    """A CI job cancelled or timed out gets SIGTERM: no pipeline nor temp data dir left behind."""
    code, out, err = stop_a_test_run_during_its_query(tmp_path, signal.SIGTERM)
    assert code == 143, (code, out, err)
    assert "stopped by SIGTERM" in err
    assert "Traceback" not in err

NUMPY_STATS = (
    "import numpy as np\n"
    "def stats():\n"
    "    grid = np.arange(6, dtype=np.int64).reshape(2, 3)\n"
    "    return {'int': np.int64(7), 'float': np.float32(0.5), 'bool': np.bool_(True), 'grid': grid,\n"
    "            'mean': grid.mean(), 'nan': np.float64('nan'), 'floats': np.array([1.5, 2.5]),\n"
    "            'nested': [np.int32(1), {'x': np.uint8(255)}], 'text': np.str_('hi'),\n"
    "            'day': np.datetime64('2026-01-02'), 'tuple': (np.int16(1), 2)}\n"
)


def test_numpy_results_are_converted(tmp_path: Path) -> None:
    """SPEC §3.2: numpy scalars and arrays in a result become plain JSON."""
    pytest.importorskip("numpy")
    expected = {"int": 7, "float": 0.5, "bool": True, "grid": [[0, 1, 2], [3, 4, 5]], "mean": 2.5,
                "nan": None, "floats": [1.5, 2.5], "nested": [1, {"x": 255}], "text": "hi",
                "day": "2026-01-02", "tuple": [1, 2]}
    src = write_src(tmp_path / "src", {"stats.py": NUMPY_STATS}, [
        {"id": "stats", "code": "stats.py",
         "test_queries": [{"name": "all", "q": {}, "expect": {"response": expected}}]},
    ])
    done = run_test_command(src, tmp_path, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)["endpoints"][0]["queries"][0]["answer"]
    assert answer["response"] == expected
