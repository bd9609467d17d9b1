"""Frozen configuration values: node settings and endpoint tuning.

These dataclasses are what every other part of lightnode sees; parsing and
validation live in `config.load`. Field names are exactly the JSON keys.
Imports: standard library and `lightnode.errors` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from lightnode.errors import IdError

# SPEC §2: service, endpoint and generation ids.
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def check_id(value: object, what: str = "id") -> str:
    """Return `value` if it is a valid SPEC §2 id, else raise IdError."""
    if not is_valid_id(value):
        raise IdError(
            f"invalid {what} {value!r}: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}$"
        )
    assert isinstance(value, str)
    return value


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """The `pool` section of an endpoint tuning file (SPEC §4, §5)."""

    floor: int = 1
    ceil: int = 8
    cruise: int = 2
    queue: int = 16
    timeout: int = 10000  # ms a request may wait for a pipeline
    scale_down_delay: int = 0  # ms a surplus pipeline stays idle before it stops
    # 1: at ceil, a busy pipeline of a fast endpoint may hold its next request in its
    # pipe so it never waits for the node between calls (see pool/machine.py).
    prefetch: int = 1


@dataclass(frozen=True, slots=True)
class ExecLimits:
    """The `limits` section of an endpoint tuning file; 0 means no limit."""

    exec_timeout: int = 0  # ms a single call may run
    max_requests: int = 0  # calls served before a pipeline is retired
    max_rss_mb: int = 0  # resident memory before a pipeline is retired


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One endpoint's tuning, with where it came from."""

    pool: PoolLimits = field(default_factory=PoolLimits)
    limits: ExecLimits = field(default_factory=ExecLimits)
    source: str = "defaults"


@dataclass(frozen=True, slots=True)
class ListenSettings:
    host: str = "127.0.0.1"
    port: int = 12000


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_body_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    header_timeout_ms: int = 10000
    keepalive_timeout_ms: int = 75000
    max_connections: int = 10000
    max_package_bytes: int = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "info"
    format: str = "text"  # "text" or "json"
    query_log: bool = True
    log_params: bool = False
    query_log_max_bytes: int = 50 * 1024 * 1024
    query_log_backups: int = 5


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    public: bool = True


@dataclass(frozen=True, slots=True)
class ShutdownSettings:
    grace_ms: int = 30000


@dataclass(frozen=True, slots=True)
class SwitchSettings:
    # How long a switch waits for the new generation's pools to reach their floor.
    warmup_timeout_ms: int = 120000


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """`config/server.json` (SPEC §8) after command-line overrides."""

    listen: ListenSettings = field(default_factory=ListenSettings)
    limits: ServerLimits = field(default_factory=ServerLimits)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    shutdown: ShutdownSettings = field(default_factory=ShutdownSettings)
    switch: SwitchSettings = field(default_factory=SwitchSettings)
