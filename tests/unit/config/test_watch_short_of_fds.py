"""The config watcher when the node is out of file descriptors (EMFILE).

Found with `ulimit -n 128` and 300 connections: every read failed, and the watcher
took it for changed files: "server.json refused: the next start would fail", keys
reloaded (refused), and again "server.json changed" once descriptors were free.
A read that fails for want of the node's resources says nothing of the file.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from lightnode.config import validate
from lightnode.config.validate import FileUnreadableNow, read_config_bytes
from lightnode.config.watch import ConfigWatcher, TuningChanged


def tree(root: Path) -> None:
    (root / "config" / "services" / "s").mkdir(parents=True)
    (root / "config" / "server.json").write_text('{"limits": {"max_connections": 100}}')
    (root / "config" / "keys.json").write_text('{"keys": []}')
    (root / "config" / "services" / "s" / "e.json").write_text('{"pool": {"floor": 1}}')


def out_of_descriptors(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(validate.os, "open", refuse)


def test_a_read_short_of_descriptors_is_not_a_fault_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree(tmp_path)
    out_of_descriptors(monkeypatch)
    with pytest.raises(FileUnreadableNow, match="Too many open files"):
        read_config_bytes(tmp_path / "config" / "server.json")


def test_the_watcher_reports_nothing_while_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tree(tmp_path)
    watcher = ConfigWatcher(tmp_path, lambda changes: None)
    assert TuningChanged in [type(c) for c in watcher.scan()]  # the first scan: all is new
    (tmp_path / "config" / "services" / "s" / "e.json").touch()  # not settled: read at each scan
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        out_of_descriptors(patch)
        for _ in range(3):
            assert watcher.scan() == []  # no ServerSettingsChanged, KeysChanged, TuningInvalid
    warnings = [r.getMessage() for r in caplog.records if "too many open files" in r.getMessage()]
    assert warnings and len(warnings) == len(set(warnings))  # once per file
    assert watcher.scan() == []  # descriptors back: nothing changed meanwhile
    (tmp_path / "config" / "services" / "s" / "e.json").write_text('{"pool": {"floor": 2}}')
    assert [type(c) for c in watcher.scan()] == [TuningChanged]
