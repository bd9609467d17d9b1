"""The compiled hot path (lightnode.hotbuild): a build is used only while it matches its sources.

The decision is tested on fake package trees (an extension file is only looked
for, never loaded, until the decision is made). The import hook is tested on a
package whose "extension" is not loadable at all: importing it without the hook
fails, with the hook the source is used. When CI runs the suite against a real
compiled build (LIGHTNODE_EXPECT_COMPILED=1), the last tests check that it is
really loaded, and that editing a source makes a copy of it fall back to Python.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import lightnode
from lightnode import hotbuild

MODULES = ("lightnode.http.fast", "lightnode.core")
EXT = importlib.machinery.EXTENSION_SUFFIXES[0]
PACKAGE = Path(lightnode.__file__).parent


def _tree(root: Path, *, compiled: bool = True, manifest: bool = True) -> Path:
    """A fake `lightnode` package directory holding MODULES, optionally "compiled"."""
    package = root / "lightnode"
    (package / "http").mkdir(parents=True)
    (package / "http" / "fast.py").write_text("VALUE = 1\n")
    (package / "core.py").write_text("VALUE = 2\n")
    if compiled:
        for module in MODULES:
            source = hotbuild.source_path(package, module)
            source.with_name(source.stem + EXT).write_bytes(b"not an extension")
    if manifest:
        hotbuild.write_manifest(package, MODULES)
    return package


def test_source_path_maps_dotted_names_under_the_package(tmp_path: Path) -> None:
    assert hotbuild.source_path(tmp_path, "lightnode.http.protocol") == tmp_path / "http" / "protocol.py"
    assert hotbuild.source_path(tmp_path, "lightnode.errors") == tmp_path / "errors.py"


def test_every_hot_module_exists_and_the_worker_runtime_is_not_one() -> None:
    for module in hotbuild.HOT_MODULES:
        assert hotbuild.source_path(PACKAGE, module).is_file(), module
    # The pipelines' runtime runs under the endpoint's own interpreter: never compiled.
    assert not [m for m in hotbuild.HOT_MODULES if m.startswith("lightnode.worker")]


def test_a_tree_without_extensions_runs_pure(tmp_path: Path) -> None:
    package = _tree(tmp_path, compiled=False)
    assert hotbuild.decide(package, {}, MODULES) == (False, "pure Python (not compiled)")


def test_a_build_matching_its_sources_is_used(tmp_path: Path) -> None:
    package = _tree(tmp_path)
    assert hotbuild.decide(package, {}, MODULES) == (True, "compiled (2 modules, mypyc)")
    assert hotbuild.decide(package, {"LIGHTNODE_PURE": "0"}, MODULES)[0]


def test_an_edited_source_turns_the_whole_build_off(tmp_path: Path) -> None:
    package = _tree(tmp_path)
    (package / "core.py").write_text("VALUE = 3\n")
    assert hotbuild.decide(package, {}, MODULES) == (
        False,
        "pure Python (compiled build not used: lightnode/core.py changed since the build)",
    )


def test_a_build_without_manifest_or_with_a_broken_one_is_not_used(tmp_path: Path) -> None:
    package = _tree(tmp_path, manifest=False)
    use, status = hotbuild.decide(package, {}, MODULES)
    assert not use and f"no readable {hotbuild.MANIFEST}" in status
    for text in ("{", '{"modules": [1]}', "[]"):
        (package / hotbuild.MANIFEST).write_text(text)
        use, status = hotbuild.decide(package, {}, MODULES)
        assert not use and f"no readable {hotbuild.MANIFEST}" in status, text


def test_a_partial_build_is_not_used(tmp_path: Path) -> None:
    package = _tree(tmp_path)
    next(package.glob(f"core{EXT}")).unlink()
    use, status = hotbuild.decide(package, {}, MODULES)
    assert not use and "lacks some of the hot modules" in status


def test_lightnode_pure_forces_the_sources(tmp_path: Path) -> None:
    package = _tree(tmp_path)
    assert hotbuild.decide(package, {"LIGHTNODE_PURE": "1"}, MODULES) == (
        False,
        "pure Python (compiled build not used: LIGHTNODE_PURE is set)",
    )


def test_write_manifest_records_every_hot_source(tmp_path: Path) -> None:
    package = tmp_path / "lightnode"
    for module in hotbuild.HOT_MODULES:
        source = hotbuild.source_path(package, module)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"NAME = {module!r}\n")
        source.with_name(source.stem + EXT).write_bytes(b"")
    hotbuild.write_manifest(package)
    assert hotbuild.stale_reason(package) is None
    hotbuild.source_path(package, hotbuild.HOT_MODULES[-1]).write_text("NAME = 'edited'\n")
    assert hotbuild.stale_reason(package) is not None


def test_every_extension_with_a_source_is_found_for_the_hook(tmp_path: Path) -> None:
    package = _tree(tmp_path)
    (package / "dropped.py").write_text("")  # built once, then dropped from the list
    (package / f"dropped{EXT}").write_bytes(b"")
    (package / f"orphan{EXT}").write_bytes(b"")  # no source: nothing to load instead
    assert hotbuild.extension_sources(package) == {
        "lightnode.http.fast": package / "http" / "fast.py",
        "lightnode.core": package / "core.py",
        "lightnode.dropped": package / "dropped.py",
    }


@pytest.fixture
def shadowed(tmp_path: Path) -> Iterator[Path]:
    """A package `shadowpkg` whose module `mod` has a broken extension beside its source."""
    package = tmp_path / "shadowpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("WHERE = 'source'\n")
    (package / f"mod{EXT}").write_bytes(b"not an extension")
    sys.path.insert(0, str(tmp_path))
    try:
        yield package
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("shadowpkg.mod", "shadowpkg"):
            sys.modules.pop(name, None)


def test_an_extension_shadows_its_source_without_the_hook(shadowed: Path) -> None:
    # Why the guard exists: Python imports the extension first.
    with pytest.raises(ImportError):
        importlib.import_module("shadowpkg.mod")


def test_the_hook_loads_the_source_instead(shadowed: Path) -> None:
    hook = hotbuild.SourceOnly({"shadowpkg.mod": shadowed / "mod.py"})
    sys.meta_path.insert(0, hook)
    try:
        module = importlib.import_module("shadowpkg.mod")
    finally:
        sys.meta_path.remove(hook)
    assert module.WHERE == "source"
    assert module.__file__ == str(shadowed / "mod.py")
    assert hook.find_spec("shadowpkg") is None  # other modules: the usual finders


def test_this_process_reports_what_it_runs() -> None:
    protocol = importlib.import_module("lightnode.http.protocol")
    compiled = hotbuild.running_compiled(protocol)
    assert hotbuild.status().startswith("compiled" if compiled else "pure Python")
    for module in hotbuild.HOT_MODULES:  # all or none
        assert hotbuild.running_compiled(importlib.import_module(module)) == compiled, module


# Made once or more per request. Their __init__ is their own: the one @dataclass
# writes is compiled from a string at import and stays interpreted in a compiled
# build, at four times the cost of one that mypyc compiles.
PER_REQUEST_CLASSES = [
    ("lightnode.http.app", "RequestRecord"),
    ("lightnode.pool.commands", "Dispatch"),
    ("lightnode.pool.worker_record", "StagedRequest"),
    ("lightnode.pool.fair_queue", "QueuedRequest"),
]


@pytest.mark.parametrize(("module_name", "name"), PER_REQUEST_CLASSES)
def test_per_request_records_have_their_own_init(module_name: str, name: str) -> None:
    module = importlib.import_module(module_name)
    init = getattr(module, name).__init__
    if hotbuild.running_compiled(module):
        assert not isinstance(init, types.FunctionType)  # compiled, not dataclass's
    else:
        assert init.__code__.co_filename == module.__file__  # not "<string>"


# Module names a hot module may bind without Final: type aliases (never read at run
# time); a limit a test lowers with monkeypatch (a Final one it could not reach); and
# the tuples read by lambdas of dataclass fields, once per new series: made Final, the
# mypyc of mypy 2.4.1 raised NameError there ("value for final name ... was not set").
NOT_FINAL = {
    ("lightnode.observe.metrics", "DURATION_BUCKETS_S"),
    ("lightnode.observe.metrics", "WAIT_BUCKETS_S"),
    ("lightnode.observe.metrics", "PIPELINE_STATES"),
    ("lightnode.http.app", "AdminHandler"),
    ("lightnode.scheduler.scheduler", "WorkerFactory"),
    ("lightnode.pool.commands", "Command"),
    ("lightnode.pool.events", "Event"),
    ("lightnode.observe.metrics", "Key"),
    ("lightnode.observe.querylog", "LITERAL_CACHE_SIZE"),
}


def test_every_module_name_a_hot_module_binds_is_final() -> None:
    """The compiled build reads a Final module name from a C variable, any other one
    with a lookup in the module's dict at each use: 8 % of the instructions per request
    (loadtest.hotpath under callgrind) before the hot modules' constants became Final."""
    unmarked = []
    for module in hotbuild.HOT_MODULES:
        tree = ast.parse(hotbuild.source_path(PACKAGE, module).read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign):
                names = [target.id for target in node.targets if isinstance(target, ast.Name)]
                names += [
                    element.id
                    for target in node.targets
                    if isinstance(target, ast.Tuple)
                    for element in target.elts
                    if isinstance(element, ast.Name)
                ]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if "Final" in ast.unparse(node.annotation):
                    continue
                names = [node.target.id]
            else:
                continue
            unmarked += [(module, name) for name in names if (module, name) not in NOT_FINAL]
    assert unmarked == []


# -- a real compiled build (CI's second run) ---------------------------------------

expect_compiled = pytest.mark.skipif(
    os.environ.get("LIGHTNODE_EXPECT_COMPILED") != "1",
    reason="runs against a compiled build (LIGHTNODE_EXPECT_COMPILED=1, see .ci/run)",
)


@expect_compiled
def test_the_compiled_build_is_in_use() -> None:
    assert hotbuild.status() == f"compiled ({len(hotbuild.HOT_MODULES)} modules, mypyc)"
    for module in hotbuild.HOT_MODULES:
        assert hotbuild.running_compiled(importlib.import_module(module)), module


def _import_in(root: Path) -> list[str]:
    code = (
        "import lightnode.hotbuild as h, lightnode.http.routing as r, lightnode.http.protocol as p;"
        "print(h.status()); print(p.__file__); print(getattr(r, 'EDITED', False))"
    )
    env = {key: value for key, value in os.environ.items() if key != "LIGHTNODE_PURE"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


@expect_compiled
def test_an_edit_after_the_build_runs_the_edited_source(tmp_path: Path) -> None:
    # A copy of the built package and its shared library, imported from its own directory.
    shutil.copytree(PACKAGE, tmp_path / "lightnode", ignore=shutil.ignore_patterns("__pycache__"))
    for library in PACKAGE.parent.glob(f"{hotbuild.GROUP_NAME}__mypyc*"):
        shutil.copy(library, tmp_path)
    status, protocol_file, edited = _import_in(tmp_path)
    assert status.startswith("compiled") and not protocol_file.endswith(".py") and edited == "False"
    with (tmp_path / "lightnode" / "http" / "routing.py").open("a") as source:
        source.write("\nEDITED = True\n")
    status, protocol_file, edited = _import_in(tmp_path)
    assert status == (
        "pure Python (compiled build not used: lightnode/http/routing.py changed since the build)"
    )
    assert protocol_file.endswith("protocol.py") and edited == "True"
