"""Scrape the node's pool gauges from `/metrics` once a second during a run.

Only two gauges matter here (SPEC §10): `lightnode_pipelines{service, endpoint,
state}` and `lightnode_queue_length{service, endpoint}`. The parser reads the
Prometheus text format line by line and skips anything it does not understand,
so a node that answers 404 (metrics not there yet), garbage, or a peer server
without these gauges only yields samples without pool data.
`parse_samples` and `pool_sample` are pure; `Scraper` does the I/O.
Must not import `lightnode`.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

from loadtest import httpcall
from loadtest.plan import Target

PIPELINES = "lightnode_pipelines"
QUEUE_LENGTH = "lightnode_queue_length"
# States counted as allocated (SPEC §4): STARTING + IDLE + BUSY.
ALLOCATED_STATES = ("starting", "idle", "busy")

_LINE = re.compile(
    r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)"
    r"(?:\{(?P<labels>.*)\})?"
    r"\s+(?P<value>\S+)(?:\s+\S+)?\s*$"
)
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def _unescape(value: str) -> str:
    return value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def parse_labels(text: str) -> dict[str, str] | None:
    """`a="x",b="y"` -> {"a": "x", "b": "y"}; None when malformed."""
    labels: dict[str, str] = {}
    position = 0
    text = text.strip()
    while position < len(text):
        match = _LABEL.match(text, position)
        if match is None:
            return None
        labels[match.group(1)] = _unescape(match.group(2))
        position = match.end()
    return labels


def parse_samples(
    text: str, names: tuple[str, ...] = (PIPELINES, QUEUE_LENGTH)
) -> list[tuple[str, dict[str, str], float]]:
    """Samples (name, labels, value) of the metrics in `names`; bad lines skipped."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#") or not line.startswith(names):
            continue
        match = _LINE.match(line)
        if match is None or match.group("name") not in names:
            continue
        labels = parse_labels(match.group("labels") or "")
        try:
            value = float(match.group("value"))
        except ValueError:
            continue
        if labels is None or math.isnan(value):
            continue
        samples.append((match.group("name"), labels, value))
    return samples


def pool_sample(text: str, service_id: str, endpoint_id: str) -> dict[str, Any] | None:
    """The pool of one endpoint from a /metrics text, or None if it is not there.

    Returns {"pipelines": {state: n}, "allocated": n, "queue": n}; "queue" is
    None when only the pipelines gauge was present, and vice versa.
    """
    pipelines: dict[str, int] = {}
    queue: int | None = None
    for name, labels, value in parse_samples(text):
        if labels.get("service") != service_id or labels.get("endpoint") != endpoint_id:
            continue
        if name == PIPELINES and "state" in labels:
            pipelines[labels["state"]] = pipelines.get(labels["state"], 0) + int(value)
        elif name == QUEUE_LENGTH:
            queue = (queue or 0) + int(value)
    if not pipelines and queue is None:
        return None
    return {
        "pipelines": pipelines if pipelines else None,
        "allocated": sum(pipelines.get(state, 0) for state in ALLOCATED_STATES)
        if pipelines
        else None,
        "queue": queue,
    }


@dataclass
class Scraper:
    """Polls `/metrics` once a second; samples carry `t` from the measured start."""

    target: Target
    service_id: str
    endpoint_id: str
    headers: tuple[tuple[str, str], ...] = ()
    samples: list[dict[str, Any]] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    last_error: str | None = None
    latest: dict[str, Any] | None = None

    async def run(self, measure_start: float, end: float, interval_s: float = 1.0) -> None:
        """Scrape at measure_start + k * interval until `end` (monotonic times)."""
        tick = 0
        while True:
            when = measure_start + tick * interval_s
            if when > end:
                return
            await asyncio.sleep(max(0.0, when - monotonic()))
            await self.scrape_once(monotonic() - measure_start)
            tick += 1

    async def scrape_once(self, t: float) -> None:
        timeout_s = 0.9
        try:
            answer = await httpcall.call(
                self.target, "GET", "/metrics", headers=self.headers, timeout_s=timeout_s
            )
        except asyncio.TimeoutError:  # its text is empty
            self._fail(f"/metrics did not answer within {timeout_s:g} s")
            return
        except (OSError, ValueError) as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        if answer.status != 200:
            self._fail(f"/metrics answered {answer.status}")
            return
        sample = pool_sample(
            answer.body.decode("utf-8", "replace"), self.service_id, self.endpoint_id
        )
        if sample is None:
            self._fail("no lightnode_pipelines/lightnode_queue_length for this endpoint")
            return
        self.ok += 1
        sample["t"] = round(t, 3)
        self.samples.append(sample)
        self.latest = sample

    def _fail(self, reason: str) -> None:
        self.failed += 1
        self.last_error = reason

    def status(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.failed, "last_error": self.last_error}
