"""Packages: build (validation, bundled folders, manifest) and safe import (SPEC §6)."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import struct
import warnings
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from lightnode.admin.routes import _error_for
from lightnode.errors import ConfigError, IdError
from lightnode.services import package
from lightnode.services.model import load_service_dir
from lightnode.services.package import (
    PackageNotWritten,
    PackageRefused,
    build_package,
    default_generation,
    import_package,
    member_problem,
)
from lightnode.services.store import PACKAGE_FILE, DataDir, imported_at

LIMIT = 10 * 1024 * 1024


def make_src(root: Path, *, folders: list[str] | None = None, service_id: str = "pricing") -> Path:
    src = root / "src"
    (src / "model").mkdir(parents=True)
    (src / "model" / "weights.txt").write_text("w")
    (src / "quote.py").write_text("import helper\ndef quote(x=1):\n    return {'x': x}\n")
    (src / "helper.py").write_text("VALUE = 1\n")
    endpoint = {"id": "quote", "type": "python-function", "code": "quote.py", "function": "quote"}
    if folders is not None:
        endpoint["folders"] = folders
    (src / "service.json").write_text(json.dumps({"id": service_id, "endpoints": [endpoint]}))
    return src


def snapshot(root: Path) -> set[str]:
    """Every path under root, hidden ones included."""
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def zip_bytes(members: list[tuple[zipfile.ZipInfo | str, bytes]], manifest: dict | None = None) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # duplicate names are one of the cases under test
        for info, data in members:
            zf.writestr(info, data)
        if manifest is not False:
            zf.writestr(PACKAGE_FILE, json.dumps(manifest or {"service": "s", "generation": "g1", "created": "x"}))
    return buf.getvalue()


def good_members() -> list[tuple[zipfile.ZipInfo | str, bytes]]:
    service = {"id": "s", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py"}]}
    return [("service.json", json.dumps(service).encode()), ("e.py", b"def e():\n    return 1\n")]


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "data")
    d.ensure_layout()
    return d


# --- build ------------------------------------------------------------------


def test_default_generation_is_v_plus_utc_time() -> None:
    moment = datetime(2026, 11, 27, 4, 15, 0, tzinfo=timezone.utc)
    assert default_generation(moment) == "v20261127-041500"


def test_build_writes_code_folders_and_manifest(tmp_path: Path) -> None:
    src = make_src(tmp_path, folders=["model"])
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "quote.cpython-311.pyc").write_bytes(b"x")
    (src / "stale.pyc").write_bytes(b"x")
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    built = build_package(src, output=tmp_path / "out.zip", now=moment)
    assert built.generation == "v20260102-030405" and built.service_id == "pricing"
    with zipfile.ZipFile(built.path) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read(PACKAGE_FILE))
    assert {"quote.py", "helper.py", "service.json", "model/", "model/weights.txt", PACKAGE_FILE} <= names
    assert not any("pycache" in n or n.endswith(".pyc") for n in names)
    assert manifest == {"service": "pricing", "generation": "v20260102-030405", "created": "2026-01-02T03:04:05Z"}


def test_build_bundles_outside_folders_and_points_service_json_at_them(tmp_path: Path) -> None:
    outside = tmp_path / "lookups"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "table.csv").write_text("a,b\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    src = make_src(tmp_path, folders=["model", str(outside), str(empty), str(outside)])
    built = build_package(src, output=tmp_path / "p.zip", generation="g7")
    with zipfile.ZipFile(built.path) as zf:
        service = json.loads(zf.read("service.json"))
        names = set(zf.namelist())
    folders = service["endpoints"][0]["folders"]
    assert folders == ["model", "_folders/lookups", "_folders/empty", "_folders/lookups"]
    assert "_folders/lookups/deep/table.csv" in names
    assert "_folders/empty/" in names  # an empty managed folder still exists after import


def test_build_refuses_an_invalid_service_json_with_file_and_json_path(tmp_path: Path) -> None:
    src = make_src(tmp_path, folders=["missing"])
    with pytest.raises(ConfigError) as info:
        build_package(src, output=tmp_path / "p.zip")
    assert str(src / "service.json") in str(info.value)
    assert "endpoints[0].folders[0]" in str(info.value)
    assert not (tmp_path / "p.zip").exists()


def test_build_refuses_a_bad_generation_id(tmp_path: Path) -> None:
    src = make_src(tmp_path)
    with pytest.raises(IdError):
        build_package(src, output=tmp_path / "p.zip", generation="../x")


def test_build_skips_its_own_output_inside_the_source(tmp_path: Path) -> None:
    src = make_src(tmp_path)
    build_package(src, output=src / "p.zip", generation="g1")
    built = build_package(src, output=src / "p.zip", generation="g2")
    with zipfile.ZipFile(built.path) as zf:
        assert "p.zip" not in zf.namelist()


# --- member names -------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../evil.py", "a/../../evil", "/etc/passwd", "C:/x", "a\\..\\b", "a//b", "./a", "", "a\x00b", "a/./b"],
)
def test_unsafe_member_names(name: str) -> None:
    assert member_problem(name) is not None


@pytest.mark.parametrize("name", ["a.py", "model/", "model/w.bin", "..a/b", "a..b"])
def test_safe_member_names(name: str) -> None:
    assert member_problem(name) is None


# --- import -------------------------------------------------------------------


def test_round_trip_creates_a_disabled_service(tmp_path: Path, data: DataDir) -> None:
    outside = tmp_path / "lookups"
    outside.mkdir()
    (outside / "t.csv").write_text("1")
    built = build_package(make_src(tmp_path, folders=["model", str(outside)]), output=tmp_path / "p.zip", generation="g1")
    result = import_package(data, "pricing", built.path, max_bytes=LIMIT)
    assert result.created_service and result.generation == "g1"
    gen = data.generation_dir("pricing", "g1")
    assert result.path == gen
    definition = load_service_dir(gen)
    assert definition.endpoints[0].folders == (str(gen / "model"), str(gen / "_folders" / "lookups"))
    assert (gen / "_folders" / "lookups" / "t.csv").read_text() == "1"
    state = data.read_state("pricing")
    assert state.enabled is False and state.entries == ()
    assert not [p for p in os.listdir(data.services_dir) if p.startswith(".")]  # no staging left


def test_second_generation_goes_into_the_existing_service(tmp_path: Path, data: DataDir) -> None:
    src = make_src(tmp_path)
    import_package(data, "pricing", build_package(src, output=tmp_path / "1.zip", generation="g1").path, max_bytes=LIMIT)
    data.write_state("pricing", data.read_state("pricing").__class__(True, ()))
    second = import_package(data, "pricing", build_package(src, output=tmp_path / "2.zip", generation="g2").path, max_bytes=LIMIT)
    assert not second.created_service
    assert {g.id for g in data.generations("pricing")} == {"g1", "g2"}
    assert data.read_state("pricing").enabled is True  # untouched


def test_a_generation_already_present_is_refused_and_left_untouched(tmp_path: Path, data: DataDir) -> None:
    src = make_src(tmp_path)
    built = build_package(src, output=tmp_path / "1.zip", generation="g1")
    import_package(data, "pricing", built.path, max_bytes=LIMIT)
    (src / "quote.py").write_text("def quote():\n    return 2\n")
    again = build_package(src, output=tmp_path / "2.zip", generation="g1")
    before = snapshot(data.root)
    with pytest.raises(PackageRefused, match="already present"):
        import_package(data, "pricing", again.path, max_bytes=LIMIT)
    assert snapshot(data.root) == before
    assert "import helper" in (data.generation_dir("pricing", "g1") / "quote.py").read_text()


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../../escaped.py", "traversal"),
        ("model/../../../escaped.py", "traversal"),
        ("/tmp/absolute-escape.py", "absolute"),
        (symlink_info("link-to-etc"), "symbolic link"),
    ],
)
def test_malicious_archives_are_refused_whole(tmp_path: Path, data: DataDir, member: object, reason: str) -> None:
    archive = tmp_path / "bad.zip"
    payload = b"/etc/passwd" if isinstance(member, zipfile.ZipInfo) else b"print('pwned')\n"
    archive.write_bytes(zip_bytes([*good_members(), (member, payload)]))  # type: ignore[list-item]
    before, around = snapshot(data.root), snapshot(tmp_path.parent)
    with pytest.raises(PackageRefused, match=reason):
        import_package(data, "s", archive, max_bytes=LIMIT)
    assert snapshot(data.root) == before
    assert snapshot(tmp_path.parent) == around
    assert not Path("/tmp/absolute-escape.py").exists()


def test_declared_size_over_the_limit_is_refused_before_extraction(tmp_path: Path, data: DataDir) -> None:
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(zip_bytes([*good_members(), ("zeros.bin", b"\0" * (2 * 1024 * 1024))]))
    assert archive.stat().st_size < 64 * 1024  # small on disk, big unpacked
    before = snapshot(data.root)
    with pytest.raises(PackageRefused, match="max_package_bytes"):
        import_package(data, "s", archive, max_bytes=1024 * 1024)
    assert snapshot(data.root) == before


def _lie_about_sizes(raw: bytes, name: bytes, declared: int) -> bytes:
    """Rewrite the uncompressed size of `name` in the central directory and local header."""
    out = bytearray(raw)
    pos = 0
    while (pos := out.find(b"PK\x01\x02", pos)) != -1:  # central directory headers
        name_len = struct.unpack_from("<H", out, pos + 28)[0]
        if bytes(out[pos + 46: pos + 46 + name_len]) == name:
            struct.pack_into("<I", out, pos + 24, declared)
        pos += 4
    pos = 0
    while (pos := out.find(b"PK\x03\x04", pos)) != -1:  # local headers
        name_len = struct.unpack_from("<H", out, pos + 26)[0]
        if bytes(out[pos + 30: pos + 30 + name_len]) == name:
            struct.pack_into("<I", out, pos + 22, declared)
        pos += 4
    return bytes(out)


def test_a_zip_bomb_that_lies_about_its_size_is_refused(tmp_path: Path, data: DataDir) -> None:
    raw = zip_bytes([*good_members(), ("bomb.bin", b"\0" * (4 * 1024 * 1024))])
    archive = tmp_path / "liar.zip"
    archive.write_bytes(_lie_about_sizes(raw, b"bomb.bin", 100))
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo("bomb.bin").file_size == 100  # the directory now lies
    before = snapshot(data.root)
    with pytest.raises(PackageRefused):
        import_package(data, "s", archive, max_bytes=1024 * 1024)
    assert snapshot(data.root) == before


def test_extraction_counts_the_bytes_really_written(tmp_path: Path) -> None:
    """Even if every declared size passed the check, writing stops at the limit."""
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes([("big.bin", b"x" * 5000)]))
    with zipfile.ZipFile(archive) as zf, pytest.raises(PackageRefused, match="max_package_bytes"):
        package._extract(zf, tmp_path / "out", max_bytes=4000, source="a.zip")


@pytest.mark.parametrize(
    ("members", "manifest", "reason"),
    [
        (good_members(), False, "not a lightnode package"),
        (good_members(), {"service": "s", "generation": "../x"}, "invalid generation id"),
        (good_members()[1:], None, "no service.json"),
        ([("service.json", b"{not json"), ("e.py", b"")], None, "invalid JSON"),
        ([*good_members(), ("e.py", b"again")], None, "appears twice"),
    ],
)
def test_invalid_packages_are_refused(tmp_path: Path, data: DataDir, members: list, manifest: object, reason: str) -> None:
    archive = tmp_path / "x.zip"
    archive.write_bytes(zip_bytes(members, manifest))  # type: ignore[arg-type]
    before = snapshot(data.root)
    with pytest.raises(PackageRefused, match=reason):
        import_package(data, "s", archive, max_bytes=LIMIT)
    assert snapshot(data.root) == before


def test_service_json_errors_name_the_archive_and_the_json_path(tmp_path: Path, data: DataDir) -> None:
    service = {"id": "s", "endpoints": [{"id": "e", "type": "python-function", "code": "missing.py"}]}
    archive = tmp_path / "x.zip"
    archive.write_bytes(zip_bytes([("service.json", json.dumps(service).encode())]))
    with pytest.raises(PackageRefused) as info:
        import_package(data, "s", archive, max_bytes=LIMIT)
    assert f"{archive}: service.json" in str(info.value)
    assert "endpoints[0].code" in str(info.value)


def test_not_a_zip_and_bad_service_id(tmp_path: Path, data: DataDir) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(PackageRefused, match="not a readable zip"):
        import_package(data, "s", junk, max_bytes=LIMIT)
    with pytest.raises(IdError):
        import_package(data, "../s", junk, max_bytes=LIMIT)


def test_import_time_survives_pycache_written_into_the_generation(tmp_path: Path, data: DataDir) -> None:
    src = make_src(tmp_path)
    import_package(data, "p", build_package(src, output=tmp_path / "1.zip", generation="g1").path, max_bytes=LIMIT)
    import_package(data, "p", build_package(src, output=tmp_path / "2.zip", generation="g2").path, max_bytes=LIMIT)
    g1, g2 = data.generation_dir("p", "g1"), data.generation_dir("p", "g2")
    os.utime(g2 / PACKAGE_FILE, (1_000_000_000, 1_000_000_000))
    os.utime(g1 / PACKAGE_FILE, (900_000_000, 900_000_000))
    (g1 / "__pycache__").mkdir()  # a pipeline loading g1 bumps the directory's mtime
    assert imported_at(g2) > imported_at(g1)


@pytest.mark.parametrize(
    "members",
    [
        [("a", b"file"), ("a/b", b"member under the file")],
        [("a/b", b"member under the file"), ("a", b"file")],
        [("a", b"file"), ("a/deeper/c", b"x")],
        [("a", b"file"), ("a/b/", b"")],
    ],
    ids=["file-then-member", "member-then-file", "deeper", "directory-entry"],
)
def test_a_file_that_is_also_a_directory_is_refused_with_both_names(
    tmp_path: Path, data: DataDir, members: list[tuple[str, bytes]]
) -> None:
    """`a` and `a/b` cannot both be unpacked: refused whole, naming both members, before anything is written."""
    archive = tmp_path / "x.zip"
    archive.write_bytes(zip_bytes([*good_members(), *members]))
    before = snapshot(data.root)
    with pytest.raises(PackageRefused) as info:
        import_package(data, "s", archive, max_bytes=LIMIT)
    text = str(info.value)
    other = next(name for name, _ in members if name != "a")
    assert "member 'a'" in text and repr(other) in text
    assert ".import-" not in text  # the staging path means nothing to the operator
    assert snapshot(data.root) == before


def test_extraction_errors_are_refusals(tmp_path: Path) -> None:
    """Whatever the directory check missed, a member that cannot be written is PackageRefused, not OSError."""
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes([("a", b"file"), ("a/b", b"x")]))
    with zipfile.ZipFile(archive) as zf, pytest.raises(PackageRefused, match="member 'a/b': cannot unpack"):
        package._extract(zf, tmp_path / "out", max_bytes=LIMIT, source="a.zip")


# --- a disk that refuses the import: the node's failure, not the archive's (500, not 400)


def _archive(tmp_path: Path, members: list[tuple[Any, bytes]] | None = None) -> Path:
    archive = tmp_path / "p.zip"
    archive.write_bytes(zip_bytes(members if members is not None else good_members()))
    return archive


def _disk_full_on_write(monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    """Files opened by the unpacking take no byte: each write fails as a full disk's does."""
    real_fdopen = os.fdopen

    class Refusing:
        def __init__(self, fd: int, *args: Any, **kwargs: Any) -> None:
            self._file = real_fdopen(fd, *args, **kwargs)

        def __enter__(self) -> Refusing:
            return self

        def __exit__(self, *exc: object) -> None:
            self._file.close()

        def write(self, data: bytes) -> int:
            raise OSError(err, os.strerror(err))

    monkeypatch.setattr(package.os, "fdopen", Refusing)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_a_write_the_disk_refuses_is_not_written_not_refused(
    tmp_path: Path, data: DataDir, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    archive = _archive(tmp_path)
    before = snapshot(data.root)
    _disk_full_on_write(monkeypatch, err)
    with pytest.raises(PackageNotWritten) as info:
        import_package(data, "s", archive, max_bytes=LIMIT)
    assert f"cannot unpack: {os.strerror(err)}" in str(info.value)
    assert snapshot(data.root) == before  # nothing left: the staging directory is gone


def test_a_flush_the_disk_refuses_is_not_written(
    tmp_path: Path, data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page cache took the writes; fsync is where a full disk (or NFS) says no.
    def no_space(root: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(root / "e.py"))

    monkeypatch.setattr(package, "flush_tree", no_space)
    archive = _archive(tmp_path)
    before = snapshot(data.root)
    with pytest.raises(PackageNotWritten, match="cannot write e.py to disk: No space left on device"):
        import_package(data, "s", archive, max_bytes=LIMIT)
    assert snapshot(data.root) == before


def test_a_member_the_file_system_cannot_hold_is_still_the_archives_fault(tmp_path: Path) -> None:
    archive = _archive(tmp_path, [("a", b"file"), ("a/b", b"x")])
    with zipfile.ZipFile(archive) as zf, pytest.raises(PackageRefused) as info:
        package._extract(zf, tmp_path / "out", max_bytes=LIMIT, source="p.zip")
    assert not isinstance(info.value, PackageNotWritten)


def test_the_admin_api_answers_a_disk_failure_500_and_a_refusal_400() -> None:
    not_written = _error_for(PackageNotWritten("/tmp/p.zip", ["member 'e.py': cannot unpack: No space left on device"]))
    assert (not_written.status, not_written.error_type) == (500, "InternalError")
    assert "No space left on device" in not_written.message
    refused = _error_for(PackageRefused("/tmp/p.zip", ["member '../x': unsafe name"]))
    assert (refused.status, refused.error_type) == (400, "BadRequest")
