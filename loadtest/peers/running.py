"""Processes the peer benchmark starts: servers, harness runs, wrk; all bounded and reaped.

Every child gets a session (process group) of its own and is recorded in a
module registry until it has been reaped; `kill_all` (also registered with
atexit) SIGKILLs every group still recorded, so an exception, Ctrl-C or SIGTERM
in the runner never leaves a server or a generator behind, and each child asks
the kernel for SIGTERM should the runner die without cleaning up (SIGKILL,
PR_SET_PDEATHSIG). Commands run with a deadline; servers stop with SIGTERM to the group, then SIGKILL after a grace.
Must not import `lightnode`.
"""

from __future__ import annotations

import atexit
import ctypes
import http.client
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from loadtest.peers import procstat

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0

_live: dict[int, subprocess.Popen[bytes]] = {}


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all() -> None:
    """SIGKILL every process group still recorded and reap the leaders."""
    for pid, process in list(_live.items()):
        _kill_group(process)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        _live.pop(pid, None)


atexit.register(kill_all)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the runner dies (even by SIGKILL); Linux only."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _spawn(
    argv: list[str], log: IO[bytes] | int, env: dict[str, str] | None
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        preexec_fn=_die_with_parent,
    )
    _live[process.pid] = process
    return process


def stop_group(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM the group, wait up to `grace_s`, then SIGKILL it; return the exit code."""
    try:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(process)  # stragglers of the group (workers, pipelines)
        return process.wait(timeout=grace_s)
    finally:
        _live.pop(process.pid, None)


@dataclass
class Finished:
    code: int | None  # None: killed at the deadline
    elapsed_s: float


def run_bounded(
    argv: list[str], *, timeout_s: float, log_path: Path, env: dict[str, str] | None = None
) -> Finished:
    """Run a command to completion (output to `log_path`), killing its group at the deadline."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = _spawn(argv, log, env)
        try:
            code: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            stop_group(process, grace_s=2.0)
    return Finished(code, time.monotonic() - started)


class ServerError(RuntimeError):
    """A server did not start, or did not answer both functions with 200."""


class ServerProcess:
    """One server under test, in its own process group, for the length of a round."""

    def __init__(
        self, name: str, argv: list[str], port: int, log_path: Path, env: dict[str, str]
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.process = _spawn(self.argv, log, self.env)

    def cpu(self) -> procstat.TreeCpu:
        """CPU seconds of the server's tree now."""
        assert self.process is not None
        return procstat.tree_cpu(self.process.pid)

    def wait_ready(
        self, probes: dict[str, bytes], ready_path: str | None, timeout_s: float = READY_TIMEOUT_S
    ) -> None:
        """Wait for `ready_path` (if any) to answer 200, then every probe POST to answer 200.

        Raises:
            ServerError: the server exited, or was not ready in time.
        """
        deadline = time.monotonic() + timeout_s
        checks = [("GET", ready_path, b"")] if ready_path else []
        checks += [("POST", path, body) for path, body in probes.items()]
        for method, path, body in checks:
            while True:
                self._check_running()
                status = http_status(self.port, method, path, body)
                if status == 200:
                    break
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"{self.name}: {method} {path} not 200 within {timeout_s:g} s (last: {status}); see {self.log_path}"
                    )
                time.sleep(0.1)

    def _check_running(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise ServerError(
                f"{self.name} exited with code {code} during start-up; see {self.log_path}"
            )

    def stop(self) -> int | None:
        if self.process is None:
            return None
        return stop_group(self.process)


def http_status(
    port: int, method: str, path: str, body: bytes, timeout_s: float = 2.0
) -> int | None:
    """One request on a fresh connection; its status, or None when it got no answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        headers = {"Content-Type": "application/json"} if method == "POST" else {}
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
