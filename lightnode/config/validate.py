"""Strict JSON validation: small pure converters and the walk that applies them.

Owns the vocabulary every config format in lightnode is checked with: a
converter takes a decoded JSON value and returns it (possibly normalised) or
raises `Refused(reason)`; a `Section` maps each allowed key of one JSON object
to its converter; `parse_document` walks a document of sections and collects
*every* problem as "json.path: reason" instead of stopping at the first.
`decode_json` turns file bytes into JSON, remembering duplicate keys and
naming line and column on a syntax error.

Imports: standard library and `lightnode.errors` only.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightnode.errors import ConfigError

# The path used in problems about the document itself ("(root): must be a JSON object").
ROOT_PATH = "(root)"

# How much of a refused value is quoted back in a problem; files are hand-written,
# so a short excerpt identifies the value without flooding the log.
MAX_QUOTED_CHARS = 40

# The largest integer any setting takes (2**31 - 1: 24 days in milliseconds). A larger
# one is a typo, and it could overflow the float arithmetic of timers.
MAX_SETTING_INT = 2**31 - 1

# Configuration files are hand-written and small; a larger one is not read at all.
MAX_CONFIG_FILE_BYTES = 1 << 20


class Refused(Exception):
    """A converter's verdict on one value; `reason` completes "json.path: ..."."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Converter = Callable[[object], object]


def describe(value: object) -> str:
    """A JSON-flavoured excerpt of a refused value, for "(got ...)"."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"  # its digits may be too many to print
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > MAX_QUOTED_CHARS:
        text = text[: MAX_QUOTED_CHARS - 3] + "..."
    return text


def _as_int(value: object) -> int | None:
    # bool is a subclass of int in Python, but `true` is not a number in a config file.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def int_at_least(minimum: int) -> Converter:
    """An integer >= minimum."""

    def convert(value: object) -> object:
        number = _as_int(value)
        if number is None or number < minimum:
            raise Refused(f"must be an integer >= {minimum} (got {describe(value)})")
        if number > MAX_SETTING_INT:
            raise Refused(f"must be an integer <= {MAX_SETTING_INT} (got {describe(value)})")
        return number

    return convert


def int_between(minimum: int, maximum: int) -> Converter:
    """An integer in [minimum, maximum]."""

    def convert(value: object) -> object:
        number = _as_int(value)
        if number is None or not minimum <= number <= maximum:
            raise Refused(
                f"must be an integer between {minimum} and {maximum} (got {describe(value)})"
            )
        return number

    return convert


def boolean(value: object) -> object:
    if not isinstance(value, bool):
        raise Refused(f"must be true or false (got {describe(value)})")
    return value


def non_empty_str(value: object) -> object:
    if not isinstance(value, str) or not value:
        raise Refused(f"must be a non-empty string (got {describe(value)})")
    return value


def one_of(*choices: str) -> Converter:
    """One of `choices` (lower case), compared case-insensitively, returned in lower case."""
    listed = ", ".join(json.dumps(c) for c in choices)

    def convert(value: object) -> object:
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        raise Refused(f"must be one of {listed} (got {describe(value)})")

    return convert


@dataclass(frozen=True)
class Section:
    """One JSON object of a document: the dataclass it becomes and a converter per key."""

    cls: Callable[..., Any]
    fields: Mapping[str, Converter]


# Per section name: (values that passed their converter, keys that were refused).
Parsed = dict[str, tuple[dict[str, Any], set[str]]]


class JsonObject(dict[str, Any]):
    """A decoded JSON object that remembers the keys it saw more than once."""

    duplicate_keys: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj = JsonObject(pairs)
    if len(obj) != len(pairs):
        counts: dict[str, int] = {}
        for key, _ in pairs:
            counts[key] = counts.get(key, 0) + 1
        obj.duplicate_keys = tuple(key for key, count in counts.items() if count > 1)
    return obj


def decode_json(data: bytes, *, source: str) -> Any:
    """Decode a config file's bytes (UTF-8, a BOM tolerated).

    Objects come back as `JsonObject`, so the walk can report duplicate keys.

    Raises:
        ConfigError: not UTF-8, or not JSON (the problem names line and column).
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"byte {exc.start}: not UTF-8 text"]) from None
    try:
        return json.loads(text, object_pairs_hook=_object_pairs)
    except json.JSONDecodeError as exc:
        problem = f"line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})"
        raise ConfigError(source, [problem]) from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(source, [json_problem(exc)]) from None


def load_json_document(data: bytes, source: str) -> Any:
    """Plain json.loads of a file's bytes (UTF-8), every failure a ConfigError naming `source`."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"cannot read file: {exc}"]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            source, [f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(source, [json_problem(exc)]) from None


def json_problem(exc: ValueError | RecursionError) -> str:
    """What json.loads refused beyond syntax: nesting too deep, an integer too long."""
    if isinstance(exc, RecursionError):
        return "invalid JSON (nested too deeply)"
    return f"invalid JSON ({exc})"


# Read errors that say nothing of the file: the node is out of descriptors or memory.
_NODE_SHORT_OF: frozenset[int] = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


class FileUnreadableNow(ConfigError):
    """A configuration file could not be read for want of the node's resources (too many
    open files, no memory), not for anything in the file: read it again later."""


def _cannot_read(path: Path, exc: OSError) -> ConfigError:
    reason = f"cannot read the file ({exc.strerror or exc})"
    if exc.errno in _NODE_SHORT_OF:
        return FileUnreadableNow(str(path), [reason])
    return ConfigError(str(path), [reason])


def read_config_bytes(path: Path, max_bytes: int = MAX_CONFIG_FILE_BYTES) -> bytes | None:
    """A configuration file's bytes, None if it does not exist.

    Opened without blocking (a FIFO at the path must not stall the event loop) and
    read only if it is a regular file of at most `max_bytes` (through symlinks).

    Raises:
        ConfigError: "cannot read the file (...)": unreadable, not a regular file, too large;
            FileUnreadableNow when the node is short of descriptors or memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _cannot_read(path, exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(str(path), ["cannot read the file (not a regular file)"])
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise ConfigError(str(path), [f"cannot read the file (larger than {max_bytes} bytes)"])
    except OSError as exc:
        raise _cannot_read(path, exc) from None
    finally:
        os.close(fd)


def check_object(raw: object, path: str, problems: list[str]) -> Mapping[Any, Any] | None:
    """`raw` if it is a JSON object (duplicate keys noted), else None with a problem."""
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: must be a JSON object (got {describe(raw)})")
        return None
    prefix = "" if path == ROOT_PATH else f"{path}."
    for key in getattr(raw, "duplicate_keys", ()):
        problems.append(f"{prefix}{key}: duplicate key")
    return raw


def parse_section(
    raw: object, path: str, section: Section, problems: list[str]
) -> tuple[dict[str, Any], set[str]]:
    """Convert one section; returns (good values, keys refused)."""
    values: dict[str, Any] = {}
    refused: set[str] = set()
    obj = check_object(raw, path, problems)
    if obj is None:
        return values, set(section.fields)
    for key, value in obj.items():
        convert = section.fields.get(key)
        if convert is None:
            problems.append(f"{path}.{key}: unknown key")
            continue
        try:
            values[key] = convert(value)
        except Refused as exc:
            problems.append(f"{path}.{key}: {exc.reason}")
            refused.add(key)
    return values, refused


def parse_document(raw: object, schema: Mapping[str, Section], problems: list[str]) -> Parsed:
    """Every section of `schema` (missing ones empty); problems appended in document order."""
    sections: Parsed = {name: ({}, set()) for name in schema}
    obj = check_object(raw, ROOT_PATH, problems)
    if obj is None:
        return sections
    for name, value in obj.items():
        section = schema.get(name)
        if section is None:
            problems.append(f"{name}: unknown key")
            continue
        sections[name] = parse_section(value, name, section, problems)
    return sections


def build(schema: Mapping[str, Section], sections: Parsed) -> dict[str, Any]:
    """One dataclass per section, missing keys left to the dataclass defaults."""
    return {name: schema[name].cls(**values) for name, (values, _) in sections.items()}
