"""Reading, validating and writing configuration files (SPEC §5, §8).

Owns the JSON file formats of endpoint tuning (`config/services/S/E.json`) and
node settings (`config/server.json`): strict parsing into the frozen dataclasses
of `config.model`, every problem reported at once with its JSON path, the
atomic write used by `admin tune`, and the data-directory paths of those files.

Each format is a table of sections built from the converters of
`config.validate`. Unknown keys, duplicate keys, wrong types (a bool is not an
integer) and broken constraints are all errors: a file is accepted whole or
refused whole.

Imports: standard library, `lightnode.errors` and `lightnode.config` only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightnode.config.model import (
    EndpointConfig,
    ExecLimits,
    ListenSettings,
    LoggingSettings,
    MetricsSettings,
    PoolLimits,
    ServerLimits,
    ServerSettings,
    ShutdownSettings,
    SwitchSettings,
    check_id,
)
from lightnode.config.validate import (
    Section,
    boolean,
    build,
    decode_json,
    int_at_least,
    int_between,
    non_empty_str,
    one_of,
    parse_document,
    read_config_bytes,
)
from lightnode.errors import ConfigError

# ---------------------------------------------------------------------------
# Schemas: JSON section -> (dataclass, {key: converter}). Keys are the field names.

_ENDPOINT_SCHEMA: Mapping[str, Section] = {
    "pool": Section(
        PoolLimits,
        {
            "floor": int_at_least(0),
            "ceil": int_at_least(1),
            "cruise": int_at_least(0),
            "queue": int_at_least(0),
            "timeout": int_at_least(1),
            "scale_down_delay": int_at_least(0),
            "prefetch": int_between(0, 1),
        },
    ),
    "limits": Section(
        ExecLimits,
        {
            "exec_timeout": int_at_least(0),
            "max_requests": int_at_least(0),
            "max_rss_mb": int_at_least(0),
        },
    ),
}

_SERVER_SCHEMA: Mapping[str, Section] = {
    "listen": Section(ListenSettings, {"host": non_empty_str, "port": int_between(0, 65535)}),
    "limits": Section(
        ServerLimits,
        {
            "max_body_bytes": int_at_least(0),
            "max_header_bytes": int_at_least(1),
            "header_timeout_ms": int_at_least(1),
            "keepalive_timeout_ms": int_at_least(0),
            "max_connections": int_at_least(1),
            "max_package_bytes": int_at_least(1),
        },
    ),
    "logging": Section(
        LoggingSettings,
        {
            "level": one_of("debug", "info", "warning", "error"),
            "format": one_of("text", "json"),
            "query_log": boolean,
            "log_params": boolean,
            "query_log_max_bytes": int_at_least(1),
            "query_log_backups": int_at_least(0),
        },
    ),
    "metrics": Section(MetricsSettings, {"public": boolean}),
    "shutdown": Section(ShutdownSettings, {"grace_ms": int_at_least(0)}),
    # At most 10 minutes: an admin client waits MUTATION_TIMEOUT_S for a switch's answer.
    "switch": Section(SwitchSettings, {"warmup_timeout_ms": int_between(1, 600000)}),
}

# `floor <= cruise <= ceil` (SPEC §4), checked on the values after defaults.
# (lower, upper): upper must be >= lower.
_POOL_ORDER: tuple[tuple[str, str], ...] = (
    ("floor", "cruise"),
    ("cruise", "ceil"),
    ("floor", "ceil"),
)

# admin tune --ceil 4: a flat key names its section.
_FLAT_TUNING_KEYS: Mapping[str, str] = {
    key: section for section, schema in _ENDPOINT_SCHEMA.items() for key in schema.fields
}


def _check_pool_order(values: dict[str, Any], refused: set[str], problems: list[str]) -> None:
    defaults = PoolLimits()
    for lower, upper in _POOL_ORDER:
        if lower in refused or upper in refused:
            continue
        low = values.get(lower, getattr(defaults, lower))
        high = values.get(upper, getattr(defaults, upper))
        if high < low:
            problems.append(f"pool.{upper}: must be >= {lower} (got {high} < {low})")


# ---------------------------------------------------------------------------
# Endpoint tuning (SPEC §5)


def parse_endpoint_config(raw: object, *, source: str) -> EndpointConfig:
    """Validate a decoded tuning document.

    Args:
        raw: the decoded JSON value (normally a dict).
        source: where it came from (a file path); kept in `EndpointConfig.source`.

    Returns:
        The frozen config; missing keys take their defaults.

    Raises:
        ConfigError: listing every problem as "json.path: reason".
    """
    problems: list[str] = []
    sections = parse_document(raw, _ENDPOINT_SCHEMA, problems)
    pool_values, pool_refused = sections["pool"]
    _check_pool_order(pool_values, pool_refused, problems)
    if problems:
        raise ConfigError(source, problems)
    return EndpointConfig(**build(_ENDPOINT_SCHEMA, sections), source=source)


def decode_endpoint_config(data: bytes, *, source: str) -> EndpointConfig:
    """`parse_endpoint_config` over the raw bytes of a tuning file."""
    return parse_endpoint_config(decode_json(data, source=source), source=source)


def load_endpoint_config(path: Path) -> EndpointConfig:
    """Read a tuning file.

    Returns:
        The config with `source == str(path)`, or `EndpointConfig()` (source
        "defaults") when the file does not exist.

    Raises:
        ConfigError: unreadable, not JSON, or refused by `parse_endpoint_config`.
    """
    data = read_config_bytes(path)
    if data is None:
        return EndpointConfig()
    return decode_endpoint_config(data, source=str(path))


def _section_to_json(value: object) -> dict[str, Any]:
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}  # type: ignore[arg-type]


def endpoint_config_to_json(config: EndpointConfig) -> dict[str, Any]:
    """The file format (every key written out); `parse_endpoint_config` reads it back."""
    return {name: _section_to_json(getattr(config, name)) for name in _ENDPOINT_SCHEMA}


def write_endpoint_config(path: Path, config: EndpointConfig) -> None:
    """Write a tuning file atomically; readers see the old file or the new one.

    The temporary file lives in the same directory (so `os.replace` is a rename)
    and its name starts with "." (so the watcher ignores it). Parent directories
    are created.

    Raises:
        OSError: the directory is not writable (e.g. a Kubernetes ConfigMap mount).
    """
    text = json.dumps(endpoint_config_to_json(config), indent=2) + "\n"
    write_file_atomically(path, text.encode("utf-8"))


def write_file_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Temp file in the same directory, fsync, `os.replace`, then fsync the directory.

    A `path` that is a symbolic link is written through: the file it names is
    replaced, in that file's directory, and the link stays. Replacing the link by
    a regular file would cut it from the file it named (a tuning file kept in a
    config repository, say): later edits there would be ignored without a word.
    On a Kubernetes ConfigMap the named file is read-only, so that is an OSError;
    one raised before the temporary file exists names `path`, not that file, and
    so does one of a write or fsync (a full disk), which names no file at all.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # named after the file written, not a temp file that never exists
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fchmod(tmp.fileno(), mode)
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if exc.filename is not None or exc.errno is None:
            raise
        # A full disk fails write or fsync with a bare "[Errno 28]": name the file written.
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    flush_directory(path.parent)


def flush_directory(directory: Path) -> None:
    """fsync a directory, so that the entries made in it (a rename) survive a power cut.
    Some filesystems refuse fsync on a directory; the data is already safe in the
    files, so that is not an error."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def merge_tuning(base: EndpointConfig, overrides: Mapping[str, Any]) -> EndpointConfig:
    """Overlay `overrides` on `base` and validate the result (`admin tune`).

    Args:
        base: the current tuning (its `source` is kept).
        overrides: flat keys (`{"ceil": 4}`), dotted keys (`{"pool.ceil": 4}`) or
            nested sections (`{"pool": {"ceil": 4}}`), freely mixed. A value of
            None means "not given" and leaves the base value.

    Raises:
        ConfigError: every unknown key and every problem of the merged config.
    """
    merged = endpoint_config_to_json(base)
    problems: list[str] = []
    for key, value in overrides.items():
        if value is None:
            continue
        section, dot, name = str(key).partition(".")
        if key in merged and isinstance(value, Mapping):
            for inner_key, inner_value in value.items():
                _overlay(merged, key, inner_key, inner_value)
        elif key in merged:
            merged[key] = value  # not an object: the parser says so
        elif dot and section in merged:
            _overlay(merged, section, name, value)
        elif key in _FLAT_TUNING_KEYS:
            _overlay(merged, _FLAT_TUNING_KEYS[key], key, value)
        else:
            problems.append(f"{key}: unknown key")
    try:
        result = parse_endpoint_config(merged, source=base.source)
    except ConfigError as exc:
        raise ConfigError(base.source, problems + exc.problems) from None
    if problems:
        raise ConfigError(base.source, problems)
    return result


def _overlay(merged: dict[str, Any], section: str, key: str, value: object) -> None:
    if value is not None and isinstance(merged[section], dict):
        merged[section][key] = value


# ---------------------------------------------------------------------------
# Node settings (SPEC §8)


def parse_server_settings(raw: object, *, source: str) -> ServerSettings:
    """Validate a decoded `server.json`; same strictness as endpoint tuning.

    Raises:
        ConfigError: listing every problem as "json.path: reason".
    """
    problems: list[str] = []
    sections = parse_document(raw, _SERVER_SCHEMA, problems)
    if problems:
        raise ConfigError(source, problems)
    return ServerSettings(**build(_SERVER_SCHEMA, sections))


def load_server_settings(path: Path) -> ServerSettings:
    """Read `server.json`; a missing file means defaults.

    Raises:
        ConfigError: unreadable, not JSON, or refused by `parse_server_settings`.
    """
    data = read_config_bytes(path)
    if data is None:
        return ServerSettings()
    source = str(path)
    return parse_server_settings(decode_json(data, source=source), source=source)


def server_settings_to_json(settings: ServerSettings) -> dict[str, Any]:
    """The `server.json` format with every key written out."""
    return {name: _section_to_json(getattr(settings, name)) for name in _SERVER_SCHEMA}


# ---------------------------------------------------------------------------
# Paths in the data directory (SPEC §2)


def config_dir(data_dir: Path) -> Path:
    return data_dir / "config"


def server_settings_path(data_dir: Path) -> Path:
    return config_dir(data_dir) / "server.json"


def keys_path(data_dir: Path) -> Path:
    return config_dir(data_dir) / "keys.json"


def tuning_root(data_dir: Path) -> Path:
    """`DATA_DIR/config/services`: one directory of tuning files per service."""
    return config_dir(data_dir) / "services"


def endpoint_config_path(data_dir: Path, service_id: str, endpoint_id: str) -> Path:
    """`DATA_DIR/config/services/S/E.json`, after checking both ids.

    Raises:
        IdError: either id does not match SPEC §2 (so no path is ever built from it).
    """
    check_id(service_id, "service id")
    check_id(endpoint_id, "endpoint id")
    return tuning_root(data_dir) / service_id / f"{endpoint_id}.json"
