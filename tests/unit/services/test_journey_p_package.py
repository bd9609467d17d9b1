"""Journey P (security review): hostile packages found by walking `admin import`."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from lightnode.services.package import MAX_MEMBER_DEPTH, PackageRefused, import_package
from lightnode.services.store import PACKAGE_FILE, DataDir

LIMIT = 10 * 1024 * 1024


def package_with(member: str) -> bytes:
    service = {"id": "s", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py"}]}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(PACKAGE_FILE, json.dumps({"service": "s", "generation": "g1", "created": "x"}))
        zf.writestr("service.json", json.dumps(service))
        zf.writestr("e.py", "def e():\n    return 1\n")
        zf.writestr(member, b"x")
    return buf.getvalue()


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def data_dir(tmp_path: Path) -> DataDir:
    data = DataDir(tmp_path / "data")
    data.ensure_layout()
    return data


def refused_leaving_nothing(data: DataDir, archive: Path, match: str) -> None:
    """Importing `archive` is refused with a message matching `match`; the data dir is as it was."""
    before = snapshot(data.root)
    with pytest.raises(PackageRefused, match=match):
        import_package(data, "s", archive, max_bytes=LIMIT)
    assert snapshot(data.root) == before


@pytest.mark.parametrize("depth", [950, 1500, 3000])
def test_a_deeply_nested_member_is_a_refusal_not_a_recursion_error(tmp_path: Path, depth: int) -> None:
    # A member "d/d/d/.../f" nested ~1000 deep made pathlib's recursive mkdir (and
    # os.walk / rmtree after it) raise RecursionError: a traceback from
    # `admin import --data-dir`, a 500 from the admin API.
    data = data_dir(tmp_path)
    archive = tmp_path / "deep.zip"
    archive.write_bytes(package_with("d/" * depth + "f"))
    refused_leaving_nothing(data, archive, "directories deep")


def test_a_member_at_the_depth_limit_still_imports(tmp_path: Path) -> None:
    data = data_dir(tmp_path)
    archive = tmp_path / "deep-ok.zip"
    archive.write_bytes(package_with("d/" * (MAX_MEMBER_DEPTH - 1) + "f"))
    imported = import_package(data, "s", archive, max_bytes=LIMIT)
    assert (imported.path / ("d/" * (MAX_MEMBER_DEPTH - 1) + "f")).read_bytes() == b"x"



def test_a_manifest_nested_too_deeply_is_a_refusal(tmp_path: Path) -> None:
    # lightnode-package.json of "[[[[...]]]]" 30000 deep (within its 64 KiB) ended the
    # import in a RecursionError: a traceback from `admin import`, a 500 from the API.
    data = data_dir(tmp_path)
    service = {"id": "s", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py"}]}
    archive = tmp_path / "deep-manifest.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(PACKAGE_FILE, "[" * 30000 + "]" * 30000)
        zf.writestr("service.json", json.dumps(service))
        zf.writestr("e.py", "def e():\n    return 1\n")
    refused_leaving_nothing(data, archive, "nested too deeply")


def test_a_package_of_thousands_of_bad_members_gets_a_message_of_bounded_size(tmp_path: Path) -> None:
    # 90,000 members named "../xxx...": the refusal listed every one, a 21 MB message
    # printed by `admin import`, answered by the admin API and written as one line of
    # the audit log, at every attempt.
    data = data_dir(tmp_path)
    archive = tmp_path / "many-bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(PACKAGE_FILE, json.dumps({"service": "s", "generation": "g1", "created": "x"}))
        zf.writestr("service.json", "{}")
        for index in range(5000):
            zf.writestr(f"../{'x' * 300}{index}", b"")
    with pytest.raises(PackageRefused) as info:
        import_package(data, "s", archive, max_bytes=LIMIT)
    text = str(info.value)
    assert len(text) < 10_000, len(text)
    assert "path traversal" in text and "4980 more members refused" in text


def test_an_overlong_member_name_is_shortened_in_the_message(tmp_path: Path) -> None:
    data = data_dir(tmp_path)
    archive = tmp_path / "long-bad.zip"
    archive.write_bytes(package_with("../" + "n" * 60000))
    with pytest.raises(PackageRefused, match="path traversal") as info:
        import_package(data, "s", archive, max_bytes=LIMIT)
    assert len(str(info.value)) < 1000


def test_links_out_of_the_source_are_bundled_and_named(tmp_path: Path) -> None:
    """`lightnode package` follows symbolic links: one to a directory outside the source
    (`up -> ..`, a link to ~/.aws) shipped what it pointed at without a word."""
    from lightnode.services.package import build_package

    src = tmp_path / "src"
    src.mkdir()
    (src / "service.json").write_text(
        json.dumps({"id": "s", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py", "function": "e"}]})
    )
    (src / "e.py").write_text("def e():\n    return 1\n")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "credentials").write_text("key")
    (src / "creds").symlink_to(secrets)
    (src / "token").symlink_to(secrets / "credentials")
    (src / "inside").symlink_to(src / "e.py")  # a link within the source: not named
    built = build_package(src, output=tmp_path / "p.zip", generation="g1")
    assert sorted((link.name, target) for link, target in built.outside_links) == [
        ("creds", str(secrets)),
        ("token", str(secrets / "credentials")),
    ]
    with zipfile.ZipFile(built.path) as zf:
        assert {"creds/credentials", "token", "inside"} <= set(zf.namelist())  # still bundled


def test_package_says_which_links_leave_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lightnode.cli import main

    src = tmp_path / "src"
    src.mkdir()
    (src / "service.json").write_text(
        json.dumps({"id": "s", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py", "function": "e"}]})
    )
    (src / "e.py").write_text("def e():\n    return 1\n")
    (tmp_path / "sibling").mkdir()
    (src / "up").symlink_to("..")
    assert main(["package", str(src), "-o", str(tmp_path / "p.zip"), "--generation", "g1"]) == 0
    err = capsys.readouterr().err
    assert f"bundled {src / 'up'} -> {tmp_path}: a link out of the source directory" in err
