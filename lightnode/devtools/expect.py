"""Test-query `expect` matching and its readable diff (SPEC §7.1). Pure.

`expect` is a subset match on the whole response envelope: every key it names
must be present with an equal value, recursively for objects; arrays and
scalars compare exactly (an object inside an array must then be equal, not a
subset). Equality is JSON equality: `1 == 1.0`, but `true != 1`.

Imports: standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

VALUE_CHARS = 120  # longest rendering of one value in a diff line


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One difference: at `path` ($.response.a[2]) `expected` was wanted, `actual` found."""

    path: str
    expected: Any
    actual: Any  # MISSING when the key is absent
    hint: str = ""  # how to fix the expect, when the mismatch shows a mistake in it

    def describe(self) -> str:
        return self._what() + (f"; {self.hint}" if self.hint else "")

    def _what(self) -> str:
        if self.expected is MISSING:
            return f"{self.path}: unexpected {show(self.actual)}"
        if self.actual is MISSING:
            return f"{self.path}: missing (expected {show(self.expected)})"
        return f"{self.path}: expected {show(self.expected)}, got {show(self.actual)}"


def match_expect(expected: Any, actual: Any, path: str = "$") -> list[Mismatch]:
    """Every way `actual` fails the subset match `expected`; [] when it matches."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [Mismatch(path, expected, actual)]
        found: list[Mismatch] = []
        for key, want in expected.items():
            where = _child(path, key)
            if key not in actual:
                found.append(Mismatch(where, want, MISSING))
            else:
                found.extend(match_expect(want, actual[key], where))
        return found
    return exact_diff(expected, actual, path)


def exact_diff(expected: Any, actual: Any, path: str = "$") -> list[Mismatch]:
    """Differences between two JSON values compared exactly, as precise paths."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in expected:
            where = _child(path, key)
            if key not in actual:
                found.append(Mismatch(where, expected[key], MISSING))
            else:
                found.extend(exact_diff(expected[key], actual[key], where))
        found.extend(Mismatch(_child(path, k), MISSING, actual[k]) for k in actual if k not in expected)
        return found
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [Mismatch(path, expected, actual)]
        found = []
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            found.extend(exact_diff(want, got, f"{path}[{index}]"))
        return found
    return [] if json_equal(expected, actual) else [Mismatch(path, expected, actual)]


def json_equal(a: Any, b: Any) -> bool:
    """Equality of decoded JSON values: numbers by value, booleans apart from numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def render_diff(mismatches: list[Mismatch], indent: str = "  ") -> str:
    """One line per mismatch, in order of the expect object."""
    return "\n".join(indent + m.describe() for m in mismatches)


def show(value: Any, limit: int = VALUE_CHARS) -> str:
    """Compact JSON of a value, shortened to `limit` characters."""
    if value is MISSING:
        return "<missing>"
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _child(path: str, key: str) -> str:
    if key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"
