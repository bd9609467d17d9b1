"""What a load run is: target, stages, faults, bodies, and the request bytes.

Pure values and pure helpers shared by the CLI, the scenario parser, the
generator processes and the report. No I/O here; must not import asyncio,
sockets, subprocess or `lightnode`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

FAULT_ACTIONS = ("kill-pipeline", "retune", "switch-generation")


class PlanError(ValueError):
    """A run or scenario description that cannot be carried out."""


@dataclass(frozen=True)
class Target:
    """An HTTP base URL split into what the client needs."""

    url: str
    host: str
    port: int
    base_path: str = ""  # prefix before /public/..., without a trailing slash

    @classmethod
    def parse(cls, url: str) -> Target:
        """Parse `http://host[:port][/prefix]`.

        Raises:
            PlanError: not an http URL, or no host.
        """
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # "http://[::1": an unclosed IPv6 bracket
            raise PlanError(f"target {url!r}: {exc}") from None
        if parts.scheme != "http":
            raise PlanError(f"target {url!r}: only http:// URLs are supported")
        if not parts.hostname:
            raise PlanError(f"target {url!r}: no host")
        try:
            port = parts.port or 80
        except ValueError as exc:
            raise PlanError(f"target {url!r}: {exc}") from None
        return cls(
            url=url.rstrip("/"), host=parts.hostname, port=port, base_path=parts.path.rstrip("/")
        )

    @property
    def host_header(self) -> str:
        return self.host if self.port == 80 else f"{self.host}:{self.port}"

    def path(self, path: str) -> str:
        return self.base_path + path


@dataclass(frozen=True)
class Stage:
    """One stretch of load: closed loop (`connections`) or open loop (`rate`).

    `rate_to` makes an open-loop stage a linear ramp from `rate` to `rate_to`.
    A stage with `rate == 0` (and no ramp) is idle.
    """

    duration_s: float
    rate_rps: float | None = None
    connections: int | None = None
    rate_to_rps: float | None = None

    @property
    def is_open_loop(self) -> bool:
        return self.rate_rps is not None

    def describe(self) -> str:
        if self.connections is not None:
            return f"{self.duration_s:g}s x {self.connections} conns"
        if self.rate_to_rps is not None:
            return f"{self.duration_s:g}s ramp {self.rate_rps:g}->{self.rate_to_rps:g}/s"
        if not self.rate_rps:
            return f"{self.duration_s:g}s idle"
        return f"{self.duration_s:g}s @ {self.rate_rps:g}/s"


@dataclass(frozen=True)
class Fault:
    """A fault fired `at_s` seconds after the measured run starts."""

    at_s: float
    action: str
    tuning: Mapping[str, Any] | None = None  # for "retune"
    via: str | None = None  # "api" or "file" for "retune"; None = pick


@dataclass(frozen=True)
class RunPlan:
    """Everything the generator and the orchestrator need for one run."""

    target: Target
    service_id: str
    endpoint_id: str
    bodies: tuple[bytes, ...]
    stages: tuple[Stage, ...]
    faults: tuple[Fault, ...] = ()
    procs: int = 1
    warmup_s: float = 0.0
    timeout_s: float = 30.0
    max_connections: int = 2048  # per run, split over the procs
    headers: tuple[tuple[str, str], ...] = field(default=())

    @property
    def duration_s(self) -> float:
        return sum(stage.duration_s for stage in self.stages)

    @property
    def run_path(self) -> str:
        return self.target.path(
            f"/public/api/v1/{quote(self.service_id, safe='')}/"
            f"{quote(self.endpoint_id, safe='')}/run"
        )


def render_requests(plan: RunPlan) -> tuple[bytes, ...]:
    """Pre-render one complete HTTP/1.1 POST per body (keep-alive)."""
    head = (
        f"POST {plan.run_path} HTTP/1.1\r\n"
        f"Host: {plan.target.host_header}\r\n"
        "Content-Type: application/json\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in plan.headers)
    ).encode("latin-1")
    return tuple(head + b"Content-Length: %d\r\n\r\n" % len(body) + body for body in plan.bodies)


def encode_body(value: Any) -> bytes:
    """A body as compact JSON bytes; it must be a JSON object (SPEC §3.2)."""
    if not isinstance(value, dict):
        raise PlanError(f"a body must be a JSON object, got {type(value).__name__}")
    return json.dumps(value, separators=(",", ":")).encode()


def parse_bodies_jsonl(text: str, *, source: str) -> tuple[bytes, ...]:
    """Bodies from a JSON-lines text (blank lines skipped), cycled by the client.

    Raises:
        PlanError: a line is not a JSON object, or there is none.
    """
    bodies = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            bodies.append(encode_body(json.loads(line)))
        except (ValueError, PlanError) as exc:
            raise PlanError(f"{source}:{number}: {exc}") from None
    if not bodies:
        raise PlanError(f"{source}: no JSON object in the file")
    return tuple(bodies)


def split_connections(total: int, procs: int, index: int) -> int:
    """Proc `index`'s share of `total` closed-loop connections (as even as possible)."""
    return total // procs + (1 if index < total % procs else 0)


def mode_of(stages: Sequence[Stage]) -> str:
    """ "open", "closed" or "mixed", for the report's config echo."""
    kinds = {("open" if stage.is_open_loop else "closed") for stage in stages}
    return kinds.pop() if len(kinds) == 1 else "mixed"
