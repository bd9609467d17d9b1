"""A lightnode started by the harness, and the files and commands around it.

`--spawn DATA_DIR` and scenarios with a service directory start the node as
`python -m lightnode --data-dir DIR --host 127.0.0.1 --port P` (the same
interpreter as the harness, so no PATH is needed), in its own session, and
stop it with SIGTERM (SIGKILL to the group if it does not exit in time).
Deploying and packaging go through the `lightnode` command line, as an
operator would. This module talks to lightnode only through processes, files
and HTTP: it must not import `lightnode`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from time import monotonic
from typing import IO, Any

from loadtest import httpcall
from loadtest.plan import Target

# A node answers /isAlive within this long or the run is abandoned; pipeline
# starts (floor) can take seconds for a model load, so /readyz gets as long.
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 30.0
COMMAND_TIMEOUT_S = 600.0


class NodeError(RuntimeError):
    """The node could not be deployed, started or reached."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def lightnode_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightnode", *args]


def run_lightnode(*args: str) -> str:
    """Run one `lightnode` command to completion; return its stdout.

    Raises:
        NodeError: non-zero exit, with the command's last error line.
    """
    try:
        done = subprocess.run(
            lightnode_command(*args),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise NodeError(f"lightnode {args[0]} did not finish in {COMMAND_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        last = lines[-1] if lines else "(no output)"
        raise NodeError(f"lightnode {' '.join(args[:2])} failed (exit {done.returncode}): {last}")
    return done.stdout


def read_service_id(service_dir: Path) -> str:
    """The `id` of a service source directory's service.json."""
    path = service_dir / "service.json"
    try:
        value = json.loads(path.read_text()).get("id")
    except (OSError, ValueError, AttributeError) as exc:
        raise NodeError(f"{path}: cannot read the service id: {exc}") from None
    if not isinstance(value, str):
        raise NodeError(f'{path}: no string "id"')
    return value


def tuning_path(data_dir: Path, service_id: str, endpoint_id: str) -> Path:
    return data_dir / "config" / "services" / service_id / f"{endpoint_id}.json"


def write_tuning(data_dir: Path, service_id: str, endpoint_id: str, tuning: Any) -> Path:
    """Write an endpoint tuning file atomically (temp file + rename, SPEC §5)."""
    path = tuning_path(data_dir, service_id, endpoint_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{endpoint_id}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(tuning, handle, indent=2)
        handle.write("\n")
    os.replace(temp, path)
    return path


def install_service(data_dir: Path, service_id: str, sources: dict[str, str], generation: str = "v1") -> None:
    """Install `generation` of a service straight into `data_dir` ({endpoint id: source}),
    enabled and mapped to it; state.json last, by rename, so a running node's watcher
    sees a whole service."""
    gen = data_dir / "services" / service_id / "generations" / generation
    gen.mkdir(parents=True, exist_ok=True)
    for endpoint_id, source in sources.items():
        (gen / f"{endpoint_id}.py").write_text(source)
    endpoints = [{"id": e, "type": "python-function", "code": f"{e}.py"} for e in sources]
    (gen / "service.json").write_text(json.dumps({"id": service_id, "endpoints": endpoints}))
    state = {"enabled": True, "mapping": {"entries": [{"generation": generation, "proba": 1.0}]}}
    tmp = data_dir / "services" / service_id / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, tmp.with_suffix(""))


def deploy(service_dir: Path, data_dir: Path, generation: str | None = None) -> None:
    args = ["deploy", str(service_dir), "--data-dir", str(data_dir)]
    run_lightnode(*args, *(["--generation", generation] if generation else []))


def package(service_dir: Path, zip_path: Path, generation: str) -> Path:
    run_lightnode("package", str(service_dir), "-o", str(zip_path), "--generation", generation)
    return zip_path


class SpawnedNode:
    """A lightnode process owned by the harness for the length of a run."""

    def __init__(self, data_dir: Path, log_path: Path | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.target = Target.parse(f"http://127.0.0.1:{self.port}")
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            lightnode_command(
                "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)
            ),
            stdin=subprocess.DEVNULL,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_up(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Wait for /isAlive 200, then /readyz 200 (or 404: not served).

        Raises:
            NodeError: the node exited, or did not come up in time.
        """
        deadline = monotonic() + timeout_s
        for path, accept in (("/isAlive", {200}), ("/readyz", {200, 404})):
            while True:
                self._check_running()
                status = await _status(self.target, path)
                if status in accept:
                    break
                if monotonic() > deadline:
                    raise NodeError(
                        f"the node on port {self.port} did not answer {path} "
                        f"with 200 within {timeout_s:g} s (last: {status})"
                    )
                await asyncio.sleep(0.1)

    def _check_running(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise NodeError(f"the node exited with code {code} during start-up{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return (": " + lines[-1]) if lines else ""

    def stop_after_run(self, result: dict[str, Any] | None) -> None:
        """Stop the node and put its exit code into a run's report; a node that
        was gone before the stop is marked `node_died`."""
        died = self.process is not None and self.process.poll() is not None
        code = self.stop()
        if result is not None:
            result["node_exit_code"] = code
            if died:
                result["node_died"] = True

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, wait, then SIGKILL the whole group; return the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # workers left behind, if any
        except (ProcessLookupError, PermissionError):
            pass
        code = process.wait()
        if self._log is not None:
            self._log.close()
        return code


async def _status(target: Target, path: str) -> int | None:
    try:
        return (await httpcall.call(target, "GET", path, timeout_s=2.0)).status
    except (OSError, ValueError, asyncio.TimeoutError):
        return None
