"""wrk as a second opinion on the harness's generator: its script, command and output.

`wrk -t1 -cC -dDs --latency -s post.lua URL` on one case of the benchmark (the
cross-check), or on every case with `--generator wrk`; the Lua script sets the method, the JSON body and the content type. All pure
(the runner writes the script and runs the command). Must not import
`lightnode`.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

WRK = "wrk"

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_DISTRIBUTION = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def lua_quote(text: str) -> str:
    """A Lua long-bracket string holding `text` verbatim."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def script(body: dict[str, Any]) -> str:
    """post.lua: every request a POST of `body` as JSON."""
    payload = json.dumps(body, separators=(",", ":"))
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = {lua_quote(payload)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


def whole_seconds(duration_s: float) -> int:
    """How long wrk runs for `duration_s`: whole seconds (its unit), rounded up, at least 1."""
    return max(1, math.ceil(duration_s))


def command(url: str, connections: int, duration_s: float, script_path: Path) -> list[str]:
    """One thread, `connections` keep-alive connections, whole seconds (wrk's unit)."""
    return [
        WRK, "-t1", f"-c{connections}", f"-d{whole_seconds(duration_s)}s", "--latency",
        "-s", str(script_path), url,
    ]  # fmt: skip


def available() -> bool:
    return shutil.which(WRK) is not None


def parse(text: str) -> dict[str, Any]:
    """wrk's summary -> throughput_rps, requests, latency_ms {p50, p75, p90, p99}, errors.

    Raises:
        ValueError: no "Requests/sec" line (wrk failed).
    """
    rps = _RPS.search(text)
    if rps is None:
        raise ValueError("no Requests/sec line in wrk output")
    latency = {
        f"p{pct}": round(float(value) * _UNITS_MS[unit], 3)
        for pct, value, unit in _DISTRIBUTION.findall(text)
    }
    total = _TOTAL.search(text)
    non_2xx = _NON_2XX.search(text)
    sockets = _SOCKET.search(text)
    socket_errors = sum(int(n) for n in sockets.groups()) if sockets else 0
    return {
        "throughput_rps": float(rps.group(1)),
        "requests": int(total.group(1)) if total else None,
        "latency_ms": latency,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": socket_errors,
        "errors": (int(non_2xx.group(1)) if non_2xx else 0) + socket_errors,
    }
