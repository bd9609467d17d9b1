"""worker/runtime.py runs inside users' environments: stdlib only, Python 3.8 syntax."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lightnode.worker import runtime

SOURCE = Path(runtime.__file__).read_text()
OPTIONAL = {"ujson"}  # used when present, with a stdlib fallback


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_runtime_imports_only_the_standard_library() -> None:
    imported = _imports(ast.parse(SOURCE)) - OPTIONAL
    assert "lightnode" not in imported
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported - set(sys.stdlib_module_names)


def test_runtime_parses_as_python_3_8() -> None:
    ast.parse(SOURCE, feature_version=(3, 8))


def _local_interpreters() -> list[str]:
    """Every CPython 3.8+ found on this machine (PATH and pyenv's versions)."""
    found = {}
    candidates = [shutil.which(f"python3.{minor}") for minor in range(8, 16)]
    candidates += [str(p) for p in Path("~/.pyenv/versions").expanduser().glob("3.*/bin/python3")]
    for path in filter(None, candidates):
        probe = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] >= (3, 8))"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            found[Path(path).resolve()] = path
    return sorted(found.values())


INTERPRETERS = _local_interpreters()


@pytest.mark.skipif(not INTERPRETERS, reason="no other interpreter found")
@pytest.mark.parametrize("python", INTERPRETERS or ["none"])
def test_runtime_serves_under_each_local_interpreter(python: str, tmp_path: Path) -> None:
    """Start the runtime with each interpreter and make one real call through its pipes."""
    (tmp_path / "ep.py").write_text("def f(a):\n    return {'twice': a * 2}\n")
    script = (
        "import os, sys, json, subprocess\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "import runtime as rt\n"
        "cr, cw = os.pipe(); ar, aw = os.pipe()\n"
        "spec = json.dumps({'root': sys.argv[3], 'code': 'ep.py', 'function': 'f'})\n"
        "p = subprocess.Popen([sys.executable, sys.argv[1], str(cr), str(aw), spec], pass_fds=(cr, aw))\n"
        "os.close(cr); os.close(aw)\n"
        "assert rt.read_frame(ar)[0] == rt.READY\n"
        "rt.write_frame(cw, rt.CALL, b'{\"a\": 21}')\n"
        "kind, value, body = rt.read_frame(ar)\n"
        "os.close(cw); p.wait()\n"
        "print(kind, body.decode())\n"
    )
    runtime_path = Path(runtime.__file__)
    out = subprocess.run(
        [python, "-c", script, str(runtime_path), str(runtime_path.parent), str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f'{runtime.RESULT} {{"twice":42}}'
