"""The compiled hot path: which modules it holds, and the guard against a stale build.

`LIGHTNODE_COMPILE=1 pip install .` (see setup.py) compiles HOT_MODULES with
mypyc into C extensions; everything else, and the pipelines' runtime, stays
Python. The sources are the truth: a build is used only while it matches them.

Python imports an extension before a `.py` of the same name, so a build left
in a source tree (`pip install -e .` or `setup.py build_ext --inplace` with
LIGHTNODE_COMPILE=1) would shadow every later edit. Hence `guard()`, run by
`lightnode/__init__.py` before any hot module is imported: setup.py records
the SHA-256 of each compiled source in MANIFEST; if any source differs now,
the manifest is missing, or LIGHTNODE_PURE=1 is set, an import hook loads all
the hot modules from their `.py` files. All of them, never some: the compiled
modules call each other directly and must not meet their Python twins.

`status()` tells which path runs, and why (the daemon logs it at start).

Where compiled code differs from Python (each seen here, each guarded in the code):
an attribute narrowed by mypy (`x = None`, then `if x is None` after a call that
sets it) is trusted, and the read is checked against the narrowed type; a value
whose library stub is wrong (httptools' absent URL fields are None, typed bytes)
fails its check; a bytes slice whose start is past its end raises SystemError
instead of giving b""; a fixed-length tuple is a C struct, boxed anew at each
read, so `is` between two reads of one tuple is False (compare a field instead);
a Final tuple read from the lambda of a dataclass field raised NameError ("value
for final name ... was not set"). CI runs every test on both builds to find the
next one.

Cost, not behaviour: a module name that is not Final is a dict lookup at each
use in compiled code, a Final one a C variable; tests/unit/test_hotbuild.py keeps
the names the hot modules bind Final.

Imports: standard library only (setup.py loads this file before anything is installed).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# Everything a /run request touches in the node, and no more: each module here
# must stay clean under mypyc (declared attribute types are checked at run time).
HOT_MODULES = (
    "lightnode.http.protocol",
    "lightnode.http.exchange",
    "lightnode.http.app",
    "lightnode.http.responses",
    "lightnode.http.routing",
    "lightnode.scheduler.scheduler",
    "lightnode.scheduler.worker_handle",
    "lightnode.scheduler.registry",
    "lightnode.pool.machine",
    "lightnode.pool.pipelines",
    "lightnode.pool.fair_queue",
    "lightnode.pool.worker_record",
    "lightnode.pool.commands",
    "lightnode.pool.events",
    "lightnode.pool.sizing",
    "lightnode.pool.states",
    "lightnode.observe.querylog",
    "lightnode.observe.metrics",
    "lightnode.config.model",
    "lightnode.pool.snapshot",
)
MANIFEST = "hotbuild.json"  # in the package directory, written by setup.py
GROUP_NAME = "lightnode_hot"  # mypyc's shared library: lightnode_hot__mypyc.<abi>.so
PURE_ENV = "LIGHTNODE_PURE"

NOT_COMPILED = "pure Python (not compiled)"

_status = NOT_COMPILED


def source_path(package_dir: Path, module: str) -> Path:
    """The `.py` of `module` ("lightnode.x.y") under the `lightnode` package directory."""
    parts = module.split(".")[1:]
    return package_dir.joinpath(*parts[:-1], parts[-1] + ".py")


def digests(package_dir: Path, modules: Sequence[str] = HOT_MODULES) -> dict[str, str]:
    """{module: SHA-256 of its source}."""
    return {
        module: hashlib.sha256(source_path(package_dir, module).read_bytes()).hexdigest()
        for module in modules
    }


def write_manifest(package_dir: Path, modules: Sequence[str] = HOT_MODULES) -> None:
    """Record the sources being compiled (setup.py, before mypyc runs)."""
    text = json.dumps({"modules": digests(package_dir, modules)}, indent=1, sort_keys=True) + "\n"
    (package_dir / MANIFEST).write_text(text)


def compiled_files(package_dir: Path, modules: Sequence[str] = HOT_MODULES) -> list[Path]:
    """The extension files of `modules` this interpreter would import."""
    found = []
    for module in modules:
        py = source_path(package_dir, module)
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = py.with_name(py.stem + suffix)
            if candidate.exists():
                found.append(candidate)
                break
    return found


def stale_reason(package_dir: Path, modules: Sequence[str] = HOT_MODULES) -> str | None:
    """Why the manifest rules out the build in `package_dir`, or None if it matches the sources."""
    try:
        recorded = json.loads((package_dir / MANIFEST).read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MANIFEST} beside the build"
    if not isinstance(recorded, dict):
        return f"no readable {MANIFEST} beside the build"
    try:
        current = digests(package_dir, modules)
    except OSError as exc:
        return f"a source cannot be read ({exc})"
    for module in modules:
        if recorded.get(module) != current[module]:
            name = source_path(package_dir, module).relative_to(package_dir.parent)
            return f"{name} changed since the build"
    return None


class SourceOnly:
    """An import hook that loads the given modules from their `.py` files."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        source = self.sources.get(name)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(name, source)


def decide(
    package_dir: Path, environ: dict[str, str], modules: Sequence[str] = HOT_MODULES
) -> tuple[bool, str]:
    """(use the compiled build?, status text) for the package in `package_dir`."""
    built = len(compiled_files(package_dir, modules))
    if not built:
        return False, NOT_COMPILED
    if environ.get(PURE_ENV, "") not in ("", "0"):
        reason: str | None = f"{PURE_ENV} is set"
    elif built != len(modules):
        reason = "the build lacks some of the hot modules"
    else:
        reason = stale_reason(package_dir, modules)
    if reason is not None:
        return False, f"pure Python (compiled build not used: {reason})"
    return True, f"compiled ({len(modules)} modules, mypyc)"


def extension_sources(package_dir: Path) -> dict[str, Path]:
    """{module: its `.py`} for every extension under `package_dir` that has a source beside it.

    Not only HOT_MODULES: a module dropped from the list after a build keeps its
    stale extension, which must not load beside the Python twins of the others.
    """
    found = {}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for extension in package_dir.rglob("*" + suffix):
            source = extension.with_name(extension.name[: -len(suffix)] + ".py")
            if source.exists():
                parts = source.relative_to(package_dir).with_suffix("").parts
                found[".".join((package_dir.name, *parts))] = source
    return found


def guard(package_dir: Path) -> str:
    """Decide compiled or pure for this process, before any hot module is imported."""
    global _status
    use_build, _status = decide(package_dir, dict(os.environ))
    if not use_build and _status != NOT_COMPILED:  # a build is there, and must not load
        sources = {module: source_path(package_dir, module) for module in HOT_MODULES}
        sources.update(extension_sources(package_dir))
        sys.meta_path.insert(0, SourceOnly(sources))
    return _status


def status() -> str:
    """Which hot path this process runs, e.g. "compiled (12 modules, mypyc)"."""
    return _status


def running_compiled(module: ModuleType) -> bool:
    """Whether `module` was loaded from an extension (a compiled build)."""
    return not (module.__file__ or "").endswith(".py")
