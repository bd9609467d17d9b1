"""Fault injection during a run, and deploying a service over the admin API.

    kill-pipeline      GET /admin/api/services/<S>/stats, then SIGKILL one BUSY
                       pipeline of the endpoint (else any); the node must run here
    retune             write DATA_DIR/config/services/<S>/<E>.json atomically when
                       the harness owns the data dir, else (or "via": "api")
                       POST /admin/api/services/<S>/endpoints/<E>/settings
    switch-generation  import the package prepared before the run (if any), then
                       POST /admin/api/services/<S>/actions/switchToNewest

A fault that cannot be carried out raises FaultFailed with one clear line; the
scenario then fails. Talks to lightnode over HTTP and files only: must not
import `lightnode`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any
from urllib.parse import quote

from loadtest import httpcall, node
from loadtest.plan import Fault, Target

ADMIN = "/admin/api"
ADMIN_TIMEOUT_S = 30.0  # an import unpacks a zip; a switch waits for floor


class FaultFailed(RuntimeError):
    """A fault or deployment step that could not be carried out."""


@dataclass(frozen=True)
class NodeAccess:
    """How the harness reaches the node's control plane."""

    target: Target
    service_id: str
    endpoint_id: str
    data_dir: Path | None = None  # set when the harness owns the node's data dir
    admin_headers: tuple[tuple[str, str], ...] = ()
    package_zip: Path | None = None  # a fresh generation for switch-generation

    @property
    def service_path(self) -> str:
        return f"{ADMIN}/services/{quote(self.service_id, safe='')}"


async def admin_call(access: NodeAccess, method: str, path: str, body: Any = None) -> Any:
    """One admin API call; the JSON answer (None if not JSON).

    Raises:
        FaultFailed: unreachable, or an answer that is not 2xx.
    """
    try:
        answer = await httpcall.call(
            access.target,
            method,
            path,
            body=body,
            headers=access.admin_headers,
            timeout_s=ADMIN_TIMEOUT_S,
        )
    except (OSError, ValueError, asyncio.TimeoutError) as exc:
        raise FaultFailed(f"{method} {path}: {type(exc).__name__}: {exc}") from None
    if not 200 <= answer.status < 300:
        raise FaultFailed(f"{method} {path} answered {answer.describe()}")
    try:
        return answer.json()
    except ValueError:
        return None


async def fire(fault: Fault, access: NodeAccess, measure_start: float) -> dict[str, Any]:
    """Carry out one fault; a result dict for the report (never raises FaultFailed)."""
    fired_at = monotonic() - measure_start
    try:
        if fault.action == "kill-pipeline":
            detail = await kill_pipeline(access)
        elif fault.action == "retune":
            detail = await retune(access, fault.tuning or {}, fault.via)
        elif fault.action == "switch-generation":
            detail = await switch_generation(access)
        else:
            raise FaultFailed(f"unknown action {fault.action!r}")
        ok = True
    except FaultFailed as exc:
        detail, ok = str(exc), False
    return {
        "at": fault.at_s,
        "action": fault.action,
        "fired_at_s": round(fired_at, 3),
        "ok": ok,
        "detail": detail,
    }


def pick_pipeline(stats: Any, endpoint_id: str) -> tuple[int, str] | None:
    """(pid, state) of a BUSY pipeline of the endpoint in a stats answer, else any one."""
    endpoints = stats.get("endpoints") if isinstance(stats, Mapping) else None
    candidates: list[tuple[int, str]] = []
    for entry in endpoints if isinstance(endpoints, list) else []:
        if not isinstance(entry, Mapping) or entry.get("endpointId") != endpoint_id:
            continue
        for pipeline in entry.get("pipelines") or []:
            pid = pipeline.get("pid") if isinstance(pipeline, Mapping) else None
            if isinstance(pid, int) and pid > 0:
                candidates.append((pid, str(pipeline.get("state", "")).lower()))
    busy = [c for c in candidates if c[1] == "busy"]
    if busy:
        return busy[0]
    return candidates[0] if candidates else None


def is_local(host: str) -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return all(
        ipaddress.ip_address(str(address).split("%")[0]).is_loopback for address in addresses
    )


async def kill_pipeline(access: NodeAccess) -> str:
    if not is_local(access.target.host):
        raise FaultFailed(f"kill-pipeline needs the node on this machine, not {access.target.host}")
    stats = await admin_call(access, "GET", f"{access.service_path}/stats")
    chosen = pick_pipeline(stats, access.endpoint_id)
    if chosen is None:
        raise FaultFailed(f"no pipeline with a pid for endpoint {access.endpoint_id} in the stats")
    pid, state = chosen
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        raise FaultFailed(f"pipeline pid {pid} had already exited") from None
    except PermissionError:
        raise FaultFailed(f"not allowed to kill pipeline pid {pid}") from None
    return f"killed pipeline pid {pid} ({state or 'state unknown'})"


async def retune(access: NodeAccess, tuning: Mapping[str, Any], via: str | None) -> str:
    if via != "api" and access.data_dir is not None:
        written = node.write_tuning(access.data_dir, access.service_id, access.endpoint_id, tuning)
        return f"wrote {written}"
    if via == "file":
        raise FaultFailed("retune via file needs a node the harness started (its data dir)")
    path = f"{access.service_path}/endpoints/{quote(access.endpoint_id, safe='')}/settings"
    await admin_call(access, "POST", path, body=dict(tuning))
    return f"POST {path}"


async def import_package(access: NodeAccess, zip_path: Path) -> None:
    query = quote(str(zip_path.resolve()), safe="")
    await admin_call(
        access,
        "POST",
        f"{access.service_path}/generations/actions/importFromArchive?filePath={query}",
    )


async def switch_to_newest(access: NodeAccess) -> str:
    answer = await admin_call(access, "POST", f"{access.service_path}/actions/switchToNewest")
    generation = answer.get("switchedToGeneration") if isinstance(answer, Mapping) else None
    return f"switched to generation {generation}" if generation else "switched to newest"


async def switch_generation(access: NodeAccess) -> str:
    if access.package_zip is not None:
        await import_package(access, access.package_zip)
    return await switch_to_newest(access)


async def deploy_over_api(access: NodeAccess, zip_path: Path) -> str:
    """Create the service if needed, import a package and switch to it (SPEC §6)."""
    services = await admin_call(access, "GET", f"{ADMIN}/services")
    known = (
        {s.get("id") for s in services if isinstance(s, Mapping)}
        if isinstance(services, list)
        else set()
    )
    if access.service_id not in known:
        await admin_call(
            access, "POST", f"{ADMIN}/services/", body={"serviceId": access.service_id}
        )
    await import_package(access, zip_path)
    return await switch_to_newest(access)  # a switch also enables a new service
