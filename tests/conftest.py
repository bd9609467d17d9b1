"""Shared fixtures: free ports, data dirs, and a real `lightnode` daemon on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Property tests check behaviour; speed is measured in loadtest/. Hypothesis's default
# 200 ms deadline per example and its too_slow health check would fail a test whose one
# example was stalled by the machine (a full garbage collection, a cold import, a busy CI
# neighbour), so no test here has either. Loaded before any test module is imported, so
# a test's own @settings(...) inherits it.
settings.register_profile("lightnode", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lightnode")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def process_gone(pid: int) -> bool:
    """Not running: no such process, or a zombie waiting for init to reap it (reads /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def until(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition", *,
          interval_s: float = 0.02) -> Any:
    """Poll `predicate` until it gives a true value, and return that; AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Node:
    """A `lightnode` daemon started as a subprocess in its own process group."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args or []
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = data_dir.parent / f"{data_dir.name}.stderr.log"

    def start(self, timeout_s: float = 20.0, wait_ready: bool = True) -> Node:
        addr = self.data_dir / "run" / "lightnode.addr"
        if addr.exists():
            addr.unlink()
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, **(self.env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lightnode", "--data-dir", str(self.data_dir), "--port", "0", *self.extra_args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lightnode exited with {self.proc.returncode}:\n{self.log()}")
            if addr.exists() and addr.read_text().strip():
                self.url = addr.read_text().strip()
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"lightnode did not start:\n{self.log()}")
        if wait_ready:
            self.wait_ready(deadline - time.monotonic())
        return self

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.02)
        raise RuntimeError(f"lightnode not ready:\n{self.log()}")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, Any, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                return answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def get(self, path: str) -> tuple[int, bytes]:
        status, _, body = self.request("GET", path)
        return status, body

    def run(self, service: str, endpoint: str, payload: Any = None, **kw: Any) -> tuple[int, Any]:
        body = json.dumps(payload if payload is not None else {}).encode()
        status, _, raw = self.request("POST", f"/public/api/v1/{service}/{endpoint}/run", body, **kw)
        return status, json.loads(raw)

    def stats(self, service: str) -> dict[str, Any]:
        status, body = self.get(f"/admin/api/services/{service}/stats")
        assert status == 200, body
        return json.loads(body)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()
        self._log.close()
        return self.proc.returncode

    def kill_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(data_dir: Path | None = None, *, start: bool = True, **kw: Any) -> Node:
        node = Node(data_dir or tmp_path / f"data{len(nodes)}", **kw)
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        if node.proc is not None:
            node.stop(timeout_s=10)


def write_service(root: Path, service_id: str, endpoints: dict[str, str], *, generation: str = "v1",
                  extra: dict[str, Any] | None = None, enabled: bool = True,
                  endpoint_extra: dict[str, dict[str, Any]] | None = None) -> Path:
    """Install a service generation directly in a data dir: {endpoint_id: python source}."""
    gen = root / "services" / service_id / "generations" / generation
    gen.mkdir(parents=True, exist_ok=True)
    eps = []
    for endpoint_id, source in endpoints.items():
        (gen / f"{endpoint_id}.py").write_text(source)
        ep = {"id": endpoint_id, "type": "python-function", "code": f"{endpoint_id}.py"}
        ep.update((endpoint_extra or {}).get(endpoint_id, {}))
        eps.append(ep)
    service = {"id": service_id, "endpoints": eps}
    service.update(extra or {})
    (gen / "service.json").write_text(json.dumps(service))
    state = {"enabled": enabled, "mapping": {"entries": [{"generation": generation, "proba": 1.0}]}}
    (root / "services" / service_id / "state.json").write_text(json.dumps(state))
    return gen


def write_tuning(root: Path, service_id: str, endpoint_id: str, tuning: dict[str, Any]) -> Path:
    path = root / "config" / "services" / service_id / f"{endpoint_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(tuning))
    os.replace(tmp, path)
    return path


def write_service_src(root: Path, service_id: str, endpoints: dict[str, str], *,
                      extra: dict[str, Any] | None = None) -> Path:
    """A service source directory (for `lightnode package`/`deploy`): {endpoint_id: python source}."""
    root.mkdir(parents=True, exist_ok=True)
    eps = []
    for endpoint_id, source in endpoints.items():
        (root / f"{endpoint_id}.py").write_text(source)
        eps.append({"id": endpoint_id, "type": "python-function", "code": f"{endpoint_id}.py"})
    service = {"id": service_id, "endpoints": eps, **(extra or {})}
    (root / "service.json").write_text(json.dumps(service))
    return root


def build_test_package(tmp: Path, service_id: str, generation: str, endpoints: dict[str, str], *,
                       extra: dict[str, Any] | None = None) -> Path:
    """A package zip of a small service, as `lightnode package` writes it."""
    from lightnode.services.package import build_package

    src = write_service_src(tmp / f"src-{service_id}-{generation}", service_id, endpoints, extra=extra)
    return build_package(src, output=tmp / f"{service_id}-{generation}.zip", generation=generation).path


def tree_listing(root: Path) -> set[str]:
    """Every path under root, hidden ones included (to show that nothing was written)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()
