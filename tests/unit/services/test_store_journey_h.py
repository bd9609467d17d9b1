"""The data directory's own files, as an operator deploys them (journey H).

The node may run as a user other than the one that imported the services (the
services owned by root and read-only to the node, or one read-only `services/`
volume shared by several nodes, README "Running in production"): the files it
must read are world-readable like every other file of a package.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import pytest

from lightnode.services.store import DataDir, MappingEntry, ServiceState


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_json_is_readable_by_other_users(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    data.ensure_layout()
    data.write_state("pricing", ServiceState(True, (MappingEntry("v1", 1.0),)))
    assert _mode(data.state_path("pricing")) == 0o644


def test_sample_service_files_are_readable_by_other_users(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    data.init_sample()
    assert _mode(data.state_path("demo")) == 0o644
    package = data.generation_dir("demo", "v1") / "lightnode-package.json"
    assert _mode(package) == 0o644


def test_state_rewrite_leaves_no_temp_file(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    data.ensure_layout()
    for enabled in (True, False):
        data.write_state("pricing", ServiceState(enabled, (MappingEntry("v1", 1.0),)))
    assert os.listdir(data.service_dir("pricing")) == ["state.json"]
    assert data.read_state("pricing").enabled is False


def test_a_state_json_that_cannot_be_written_is_named_not_its_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lightnode admin disable` by a user who may not write services/ (they belong to
    root) said "Permission denied: '.../.state.json.l1ysm73t.tmp'", a file that never exists."""
    data = DataDir(tmp_path)
    data.ensure_layout()
    data.service_dir("pricing").mkdir()

    def refused(*args: object, dir: str, prefix: str, suffix: str) -> tuple[int, str]:
        raise PermissionError(
            errno.EACCES, "Permission denied", os.path.join(dir, prefix + "x1y2" + suffix)
        )

    monkeypatch.setattr(tempfile, "mkstemp", refused)  # the module store writes through
    with pytest.raises(PermissionError) as caught:
        data.write_state("pricing", ServiceState(False))
    assert caught.value.filename == str(data.state_path("pricing"))
    assert str(caught.value) == f"[Errno 13] Permission denied: '{data.state_path('pricing')}'"
    assert os.listdir(data.service_dir("pricing")) == []
