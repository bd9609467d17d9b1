"""Imports flow one way (STYLE §1): http -> scheduler -> pool; pool and config stay pure."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lightnode"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("path", _modules("pool"), ids=lambda p: p.name)
def test_pool_is_pure(path: Path) -> None:
    allowed_lightnode = ("lightnode.pool", "lightnode.config.model", "lightnode.errors")
    for name in _imports(path):
        if name.startswith("lightnode"):
            assert name.startswith(allowed_lightnode), f"{path.name} imports {name}"
        else:
            root = name.split(".")[0]
            assert root in sys.stdlib_module_names or root == "__future__", f"{path.name} imports {name}"
            assert root not in {"asyncio", "subprocess", "os", "socket", "time", "random"}, (
                f"{path.name} imports {name}: the pool machine does no I/O and reads no clock"
            )


@pytest.mark.parametrize("path", _modules("scheduler"), ids=lambda p: p.name)
def test_scheduler_never_imports_http(path: Path) -> None:
    assert not [n for n in _imports(path) if n.startswith("lightnode.http")]


@pytest.mark.parametrize(
    "name", ["protocol.py", "exchange.py", "routing.py", "responses.py"]
)
def test_http_layer_never_sees_pools(name: str) -> None:
    bad = [n for n in _imports(PACKAGE / "http" / name) if n.startswith(("lightnode.scheduler", "lightnode.pool"))]
    assert not bad, f"http/{name} imports {bad}: only http/app.py meets the scheduler"


@pytest.mark.parametrize("path", _modules("config"), ids=lambda p: p.name)
def test_config_imports_no_runtime_layer(path: Path) -> None:
    bad = [
        n for n in _imports(path)
        if n.startswith(("lightnode.scheduler", "lightnode.http", "lightnode.pool", "lightnode.admin"))
    ]
    assert not bad, f"config/{path.name} imports {bad}"


def test_worker_runtime_imports_nothing_from_lightnode() -> None:
    assert not [n for n in _imports(PACKAGE / "worker" / "runtime.py") if n.startswith("lightnode")]
