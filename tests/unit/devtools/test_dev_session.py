"""DevDataDir: dev generations are the source directory itself; everything else is a normal data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightnode.devtools.session import DevDataDir, default_code_envs_dir
from lightnode.errors import IdError


def test_dev_generations_resolve_to_the_source_dir(tmp_path: Path) -> None:
    store = DevDataDir(tmp_path / "data", tmp_path / "src", tmp_path / "envs")
    assert store.generation_dir("pricing", "dev-1") == tmp_path / "src"
    assert store.generation_dir("pricing", "dev-42") == tmp_path / "src"
    assert store.generation_dir("pricing", "v1") == tmp_path / "data" / "services" / "pricing" / "generations" / "v1"
    assert store.code_envs_dir == tmp_path / "envs"
    with pytest.raises(IdError):
        store.generation_dir("../x", "dev-1")


def test_code_envs_cache_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_code_envs_dir() == tmp_path / "lightnode" / "code-envs"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_code_envs_dir() == tmp_path / "home" / ".cache" / "lightnode" / "code-envs"
