"""Packages built the way a developer builds them: from inside the service directory,
again and again, for a node that runs as another user (journey I)."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

from lightnode.services.package import build_package


def make_src(root: Path) -> Path:
    src = root / "svc"
    (src / "model").mkdir(parents=True)
    (src / "model" / "weights.txt").write_text("w")
    (src / "quote.py").write_text("def quote(x=1):\n    return {'x': x}\n")
    endpoint = {"id": "quote", "type": "python-function", "code": "quote.py", "folders": ["model"]}
    (src / "service.json").write_text(json.dumps({"id": "pricing", "endpoints": [endpoint]}))
    return src


def test_a_package_never_bundles_the_packages_built_before_it(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`lightnode package .` run in the service directory writes its zip there; the next
    one must not carry it (each would hold all the earlier ones: a size that doubles)."""
    src = make_src(tmp_path)
    monkeypatch.chdir(src)
    first = build_package(Path("."), generation="v1")
    second = build_package(Path("."), generation="v2")
    assert first.path.parent == src  # the default output sits in the source directory
    with zipfile.ZipFile(second.path) as zf:
        names = set(zf.namelist())
    assert first.path.name not in names
    assert {"quote.py", "service.json", "model/weights.txt"} <= names
    assert second.files == first.files


def test_a_zip_that_is_not_a_package_is_still_bundled(tmp_path: Path) -> None:
    """Data shipped as a zip (a model archive) is the service's own: only packages are left out."""
    src = make_src(tmp_path)
    with zipfile.ZipFile(src / "model" / "embeddings.zip", "w") as zf:
        zf.writestr("vectors.txt", "1 2 3")
    (src / "model" / "broken.zip").write_bytes(b"not a zip at all")
    built = build_package(src, output=tmp_path / "out.zip", generation="v1")
    with zipfile.ZipFile(built.path) as zf:
        names = set(zf.namelist())
    assert {"model/embeddings.zip", "model/broken.zip"} <= names


def test_the_package_is_readable_as_the_umask_allows(tmp_path: Path) -> None:
    """A node running as another user (systemd's `lightnode`) reads the zip that
    `admin import --url` names: it is created like any file, not owner-only."""
    src = make_src(tmp_path)
    old = os.umask(0o022)
    try:
        built = build_package(src, output=tmp_path / "out" / "pricing.zip", generation="v1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(built.path.stat().st_mode) == 0o644
