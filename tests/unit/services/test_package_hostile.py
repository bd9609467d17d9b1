"""Hostile and interrupted imports (SPEC §6): archives a real zip tool may produce, or an
attacker may craft, and imports killed half way. Each is refused whole, never a crash,
never a resource blow-up, and leaves nothing behind for good."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lightnode.services import package
from lightnode.services.package import PackageRefused, import_package
from lightnode.services.store import PACKAGE_FILE, DataDir

LIMIT = 10 * 1024 * 1024
SERVICE = {"id": "s", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py"}]}
MANIFEST = {"service": "s", "generation": "g1", "created": "2026-01-01T00:00:00Z"}


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def package_bytes(extra: list[tuple[str, bytes]] = ()) -> bytes:  # type: ignore[assignment]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("service.json", json.dumps(SERVICE))
        zf.writestr(PACKAGE_FILE, json.dumps(MANIFEST))
        zf.writestr("e.py", "def e():\n    return 1\n")
        for name, data in extra:
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "data")
    d.ensure_layout()
    return d


def test_a_name_flagged_utf8_that_is_not_utf8_is_a_refusal_not_a_crash(tmp_path: Path, data: DataDir) -> None:
    # The zip's directory says "names are UTF-8" (flag bit 11) but one is not: opening it
    # raised UnicodeDecodeError out of the import (a traceback at the CLI, 500 at the API).
    raw = package_bytes([("caf\u00e9.txt", b"x")]).replace("caf\u00e9".encode(), b"caf\xff\xfe")
    archive = tmp_path / "latin.zip"
    archive.write_bytes(raw)
    before = snapshot(data.root)
    with pytest.raises(PackageRefused, match="not a readable zip archive"):
        import_package(data, "s", archive, max_bytes=LIMIT)
    assert snapshot(data.root) == before


def _many_members_zip(path: Path, count: int) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for index in range(count):
            zf.writestr(zipfile.ZipInfo(f"{index}"), b"")


def test_too_many_members_are_refused_before_the_directory_is_loaded(
    tmp_path: Path, data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zipfile builds one object per member of the central directory before any check
    # can run: 1M empty members (an 88 MB zip) made the importer, the node itself for
    # the admin API, grow by 600 MB. The count is now read off the directory first.
    monkeypatch.setattr(package, "MAX_PACKAGE_MEMBERS", 50)
    archive = tmp_path / "many.zip"
    _many_members_zip(archive, 200)
    opened: list[object] = []
    real_zipfile = zipfile.ZipFile
    monkeypatch.setattr(package.zipfile, "ZipFile", lambda *a, **k: opened.append(a) or real_zipfile(*a, **k))
    before = snapshot(data.root)
    with pytest.raises(PackageRefused, match="more than 50 members"):
        import_package(data, "s", archive, max_bytes=LIMIT)
    assert opened == []  # refused without building the directory
    assert snapshot(data.root) == before


def test_member_count_reads_the_directory_not_the_end_record(tmp_path: Path) -> None:
    # The end record's entry count may lie (zipfile ignores it); the count walks the directory.
    archive = tmp_path / "liar.zip"
    _many_members_zip(archive, 30)
    raw = bytearray(archive.read_bytes())
    end = raw.rfind(b"PK\x05\x06")
    raw[end + 8: end + 12] = (1).to_bytes(2, "little") * 2  # "1 entry on this disk, 1 in all"
    archive.write_bytes(bytes(raw))
    with archive.open("rb") as handle:
        assert package.count_members(handle, stop_after=1000) == 30
        assert package.count_members(handle, stop_after=10) == 11  # stops early
    (tmp_path / "junk.zip").write_bytes(b"not a zip at all")
    with (tmp_path / "junk.zip").open("rb") as handle:
        assert package.count_members(handle, stop_after=10) is None  # zipfile says why


def test_a_real_package_passes_the_member_count(tmp_path: Path, data: DataDir) -> None:
    archive = tmp_path / "ok.zip"
    archive.write_bytes(package_bytes([(f"m/{i}.txt", b"x") for i in range(20)]))
    with archive.open("rb") as handle:
        assert package.count_members(handle, stop_after=1000) == 23
    assert import_package(data, "s", archive, max_bytes=LIMIT).generation == "g1"


def test_staging_left_by_a_killed_import_is_removed_by_the_next_one(tmp_path: Path, data: DataDir) -> None:
    # An import killed (kill -9, OOM, power) during extraction leaves its hidden staging
    # directory under services/: up to limits.max_package_bytes of debris that nothing removed.
    archive = tmp_path / "ok.zip"
    archive.write_bytes(package_bytes())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = data.services_dir / f"{package.STAGING_PREFIX}{dead_pid}-abcd1234"
    (stale / "service" / "generations" / "g0").mkdir(parents=True)
    (stale / "service" / "generations" / "g0" / "big.bin").write_bytes(b"\0" * 1000)
    live = data.services_dir / f"{package.STAGING_PREFIX}{os.getppid()}-live0001"  # an import in progress
    live.mkdir()
    import_package(data, "s", archive, max_bytes=LIMIT)
    assert not stale.exists()
    assert live.is_dir()
    assert sorted(p.name for p in data.services_dir.iterdir()) == sorted(["s", live.name])


def test_a_refused_import_leaves_no_staging(tmp_path: Path, data: DataDir) -> None:
    archive = tmp_path / "bad.zip"
    archive.write_bytes(package_bytes([("big.bin", b"\0" * 5000)]))
    with pytest.raises(PackageRefused):
        import_package(data, "s", archive, max_bytes=4000)
    assert list(data.services_dir.iterdir()) == []
