"""config.watch: snapshot diffs of a real data directory, and the run() loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from lightnode.config import watch
from lightnode.config.load import endpoint_config_path
from lightnode.config.model import PoolLimits
from lightnode.config.validate import MAX_CONFIG_FILE_BYTES
from lightnode.config.watch import (
    Change,
    CodeEnvsChanged,
    ConfigWatcher,
    KeysChanged,
    ServerSettingsChanged,
    ServiceFilesChanged,
    TuningChanged,
    TuningInvalid,
    TuningRemoved,
)


def tuning(data_dir: Path, service_id: str = "s", endpoint_id: str = "e") -> Path:
    return endpoint_config_path(data_dir, service_id, endpoint_id)


def write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def as_changed(change: Change) -> TuningChanged:
    assert isinstance(change, TuningChanged), change
    return change


def pool_of(change: Change) -> PoolLimits:
    return as_changed(change).config.pool


def watcher(data_dir: Path) -> ConfigWatcher:
    return ConfigWatcher(data_dir, lambda changes: None)


class ConfigMapDir:
    """A directory laid out and updated the way the kubelet mounts a ConfigMap."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.counter = 0
        directory.mkdir(parents=True, exist_ok=True)

    def publish(self, files: dict[str, str]) -> None:
        self.counter += 1
        stamp = f"..2026_11_27_10_00_00.{self.counter:09d}"
        new_dir = self.directory / stamp
        new_dir.mkdir()
        for name, text in files.items():
            (new_dir / name).write_text(text)
        data_link = self.directory / "..data"
        old_target = os.readlink(data_link) if data_link.is_symlink() else None
        tmp_link = self.directory / "..data_tmp"
        tmp_link.symlink_to(stamp)
        os.rename(tmp_link, data_link)  # the atomic swap
        for name in files:
            user_link = self.directory / name
            if not user_link.is_symlink():
                user_link.symlink_to(f"..data/{name}")
        for entry in self.directory.iterdir():
            if not entry.name.startswith(".") and entry.name not in files:
                entry.unlink()
        if old_target is not None:
            for leftover in (self.directory / old_target).iterdir():
                leftover.unlink()
            (self.directory / old_target).rmdir()


# -- scan() -----------------------------------------------------------------


def test_first_scan_reports_everything_present(tmp_path: Path) -> None:
    write_json(tuning(tmp_path, "a", "one"), {"pool": {"ceil": 3}})
    write_json(tuning(tmp_path, "b", "two"), {"pool": {"ceil": 0}})
    write_json(tmp_path / "services" / "a" / "state.json", {"enabled": True})
    write_json(tmp_path / "config" / "keys.json", [])
    write_json(tmp_path / "config" / "server.json", {})
    changes = watcher(tmp_path).scan()
    assert changes[:2] == [KeysChanged(), ServiceFilesChanged("a")]
    assert pool_of(changes[2]).ceil == 3
    assert isinstance(changes[3], TuningInvalid)
    assert changes[3].error.problems == ["pool.ceil: must be an integer >= 1 (got 0)"]
    assert len(changes) == 4  # server.json: the first scan is its baseline


def test_empty_data_dir(tmp_path: Path) -> None:
    w = watcher(tmp_path / "does-not-exist-yet")
    assert w.scan() == []
    assert w.scan() == []


def test_create_change_delete(tmp_path: Path) -> None:
    w = watcher(tmp_path)
    assert w.scan() == []
    path = write_json(tuning(tmp_path), {"pool": {"ceil": 4}})
    [change] = w.scan()
    created = as_changed(change)
    assert (created.service_id, created.endpoint_id) == ("s", "e")
    assert created.config.pool.ceil == 4
    assert created.config.source == str(path)
    assert w.scan() == []
    path.unlink()
    assert w.scan() == [TuningRemoved("s", "e")]
    assert w.scan() == []


def test_in_place_write_is_seen_by_content(tmp_path: Path) -> None:
    path = write_json(tuning(tmp_path), {"pool": {"ceil": 4}})
    w = watcher(tmp_path)
    w.scan()
    before = path.stat()
    with open(path, "r+") as f:  # same inode, same size, mtime put back
        f.write(json.dumps({"pool": {"ceil": 5}}))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    [changed] = w.scan()
    assert pool_of(changed).ceil == 5


def test_atomic_rename_and_temp_files_ignored(tmp_path: Path) -> None:
    path = write_json(tuning(tmp_path), {"pool": {"ceil": 4}})
    w = watcher(tmp_path)
    w.scan()
    tmp = path.parent / ".e.json.1234.tmp"
    tmp.write_text('{"pool": {"ce')  # half written: must not be looked at
    (path.parent / "notes.txt").write_text("not a tuning file")
    (path.parent / "e.json.bak").write_text("{}")
    assert w.scan() == []
    tmp.write_text(json.dumps({"pool": {"ceil": 7}}))
    os.replace(tmp, path)
    [changed] = w.scan()
    assert pool_of(changed).ceil == 7


def test_invalid_reported_once_then_fixed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_json(tuning(tmp_path), {"pool": {"ceil": 4}})
    w = watcher(tmp_path)
    w.scan()
    caplog.set_level(logging.WARNING, logger="lightnode.config")
    path.write_text('{"pool": {"ceil": 4,}}')
    [invalid] = w.scan()
    assert isinstance(invalid, TuningInvalid)
    assert invalid.error.source == str(path)
    assert "invalid JSON" in invalid.error.problems[0]
    assert w.scan() == [] and w.scan() == []  # once per distinct content
    assert len(caplog.records) == 1 and str(path) in caplog.text
    path.write_text('{"pool": {"flor": 1}}')  # another bad content: reported again
    [again] = w.scan()
    assert isinstance(again, TuningInvalid)
    assert again.error.problems == ["pool.flor: unknown key"]
    path.write_text('{"pool": {"ceil": 4}}')  # fixed, even back to the old values
    [fixed] = w.scan()
    assert pool_of(fixed).ceil == 4
    assert len(caplog.records) == 2


def test_same_values_in_other_bytes_are_not_a_change(tmp_path: Path) -> None:
    path = write_json(tuning(tmp_path), {"pool": {"ceil": 4}})
    w = watcher(tmp_path)
    w.scan()
    path.write_text('{\n  "pool": {"ceil": 4, "floor": 1}\n}\n')
    assert w.scan() == []
    path.write_text('{"pool": {"ceil": 5}}')
    assert pool_of(w.scan()[0]).ceil == 5


def test_unreadable_tuning_file_is_invalid(tmp_path: Path) -> None:
    tuning(tmp_path).mkdir(parents=True)  # a directory named e.json
    [invalid] = watcher(tmp_path).scan()
    assert isinstance(invalid, TuningInvalid)
    assert invalid.error.problems[0].startswith("cannot read the file")


def test_kubernetes_configmap_swap(tmp_path: Path) -> None:
    service_dir = tmp_path / "config" / "services" / "s"
    configmap = ConfigMapDir(service_dir)
    configmap.publish({"e.json": '{"pool": {"ceil": 3}}', "f.json": "{}"})
    assert os.readlink(service_dir / "e.json") == "..data/e.json"
    w = watcher(tmp_path)
    first = w.scan()
    assert [(as_changed(c).endpoint_id, pool_of(c).ceil) for c in first] == [("e", 3), ("f", 8)]
    assert w.scan() == []

    configmap.publish({"e.json": '{"pool": {"ceil": 6}}', "f.json": "{}"})
    [change] = w.scan()
    assert as_changed(change).endpoint_id == "e" and pool_of(change).ceil == 6

    configmap.publish({"e.json": '{"pool": {"ceil": 6}}'})  # key f removed from the ConfigMap
    assert w.scan() == [TuningRemoved("s", "f")]

    configmap.publish({"e.json": '{"pool": {"ceil": "six"}}'})
    [invalid] = w.scan()
    assert isinstance(invalid, TuningInvalid)
    assert invalid.error.problems == ['pool.ceil: must be an integer >= 1 (got "six")']
    assert [p.name for p in service_dir.iterdir() if p.name.startswith("..2026")] != []


def test_service_files(tmp_path: Path) -> None:
    service_dir = tmp_path / "services" / "svc"
    w = watcher(tmp_path)
    assert w.scan() == []
    write_json(service_dir / "state.json", {"enabled": True, "generation": "v1"})
    (service_dir / "generations" / "v1").mkdir(parents=True)
    assert w.scan() == [ServiceFilesChanged("svc")]
    assert w.scan() == []

    code_dir = service_dir / "generations" / "v1" / "code"
    code_dir.mkdir()
    (code_dir / "model.py").write_text("x = 1")  # inside a generation: not watched
    assert w.scan() == []

    (service_dir / "generations" / "v2").mkdir()
    assert w.scan() == [ServiceFilesChanged("svc")]
    (service_dir / "generations" / ".v3.importing").mkdir()
    assert w.scan() == []

    write_json(service_dir / "state.json", {"enabled": False, "generation": "v2"})
    assert w.scan() == [ServiceFilesChanged("svc")]

    for path in sorted(service_dir.rglob("*"), key=lambda p: -len(p.parts)):
        path.rmdir() if path.is_dir() else path.unlink()
    service_dir.rmdir()
    assert w.scan() == [ServiceFilesChanged("svc")]
    assert w.scan() == []


def test_keys_and_server_settings(tmp_path: Path) -> None:
    keys = tmp_path / "config" / "keys.json"
    server = tmp_path / "config" / "server.json"
    w = watcher(tmp_path)
    assert w.scan() == []
    write_json(keys, [{"id": "k1"}])
    assert w.scan() == [KeysChanged()]
    write_json(keys, [{"id": "k1"}, {"id": "k2"}])
    assert w.scan() == [KeysChanged()]
    keys.unlink()
    assert w.scan() == [KeysChanged()]
    write_json(server, {"listen": {"port": 1}})
    assert w.scan() == [ServerSettingsChanged()]
    assert w.scan() == []
    assert w.rescan_all() == []  # server.json: only a real change is reported


def test_an_env_coming_or_going_in_code_envs_is_reported_once(tmp_path: Path) -> None:
    envs = tmp_path / "code-envs"
    w = watcher(tmp_path)
    assert w.scan() == []
    envs.mkdir()
    (envs / ".build-abc-123").mkdir()  # a build under way, and its lock: not yet
    (envs / ".abc.lock").write_text("")
    assert w.scan() == []
    (envs / ".build-abc-123").rename(envs / "abc")  # the build's last step
    assert w.scan() == [CodeEnvsChanged()]
    assert w.scan() == []
    (envs / "abc").rmdir()
    assert w.scan() == [CodeEnvsChanged()]


def test_bad_ids_and_hidden_names_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "config" / "services"
    write_json(root / "bad id" / "e.json", {})
    write_json(root / "s" / "bad endpoint.json", {})
    write_json(root / ".hidden" / "e.json", {})
    write_json(root / "s" / "ok.json", {})
    write_json(tmp_path / "services" / "-bad" / "state.json", {})
    caplog.set_level(logging.WARNING, logger="lightnode.config")
    w = watcher(tmp_path)
    [ok] = w.scan()
    assert (as_changed(ok).service_id, as_changed(ok).endpoint_id) == ("s", "ok")
    assert w.scan() == []
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3  # once each, not once per scan
    assert all("not a valid" in m for m in messages)


def test_rescan_all_reports_every_file_and_removals(tmp_path: Path) -> None:
    write_json(tuning(tmp_path, "s", "a"), {"pool": {"ceil": 3}})
    gone = write_json(tuning(tmp_path, "s", "b"), {})
    write_json(tuning(tmp_path, "s", "c"), {"pool": "bad"})
    write_json(tmp_path / "services" / "s" / "state.json", {})
    w = watcher(tmp_path)
    w.scan()
    assert w.scan() == []
    gone.unlink()
    changes = w.rescan_all()
    assert changes[0] == ServiceFilesChanged("s")
    assert pool_of(changes[1]).ceil == 3
    assert changes[2] == TuningRemoved("s", "b")
    assert isinstance(changes[3], TuningInvalid)
    assert len(changes) == 4
    assert w.scan() == []


def test_unlistable_directory_keeps_last_known_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_json(tuning(tmp_path), {"pool": {"ceil": 3}})
    w = watcher(tmp_path)
    w.scan()
    real_scandir = os.scandir
    service_dir = str(tuning(tmp_path).parent)

    def flaky_scandir(path: Any) -> Any:
        if str(path) == service_dir:
            raise PermissionError(13, "Permission denied", service_dir)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", flaky_scandir)
    assert w.scan() == []  # not "removed": defaults must not apply on a read hiccup
    monkeypatch.setattr(os, "scandir", real_scandir)
    assert w.scan() == []


# -- run() ------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[float, list[Change]]] = []

    def __call__(self, changes: list[Change]) -> None:
        self.batches.append((time.monotonic(), changes))

    async def wait_for(self, predicate: Callable[[Change], bool], timeout_s: float = 2.0) -> float:
        """Monotonic time at which a matching change was reported."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            for at, changes in self.batches[seen:]:
                if any(predicate(c) for c in changes):
                    return at
            seen = len(self.batches)
            await asyncio.sleep(0.005)
        raise AssertionError(f"no matching change within {timeout_s} s: {self.batches}")


@contextlib.asynccontextmanager
async def running(w: ConfigWatcher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(w.run())
    try:
        yield task
    finally:
        task.cancel()
        started = time.monotonic()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 0.5, "cancelling run() must be prompt"


def ceil_is(n: int) -> Callable[[Change], bool]:
    return lambda c: isinstance(c, TuningChanged) and c.config.pool.ceil == n


def test_run_reports_in_place_writes_quickly(tmp_path: Path) -> None:
    path = write_json(tuning(tmp_path), {"pool": {"ceil": 2}})
    recorder = Recorder()
    # A long poll interval, so only file events can explain a fast report.
    w = ConfigWatcher(tmp_path, recorder, poll_interval_s=30.0)

    async def main() -> list[float]:
        delays = []
        async with running(w):
            await recorder.wait_for(ceil_is(2))
            await asyncio.sleep(0.1)  # let the event watch start
            for ceil in range(3, 9):
                written = time.monotonic()
                with open(path, "w") as f:  # in place: truncate and write
                    f.write(json.dumps({"pool": {"ceil": ceil}}))
                delays.append(await recorder.wait_for(ceil_is(ceil), timeout_s=1.0) - written)
        return delays

    delays = asyncio.run(main())
    print(
        f"in-place write -> TuningChanged: median {statistics.median(delays) * 1000:.0f} ms,"
        f" max {max(delays) * 1000:.0f} ms"
    )
    assert max(delays) < 1.0
    assert not any(isinstance(c, TuningInvalid) for _, b in recorder.batches for c in b)


def test_run_sees_directories_created_after_start(tmp_path: Path) -> None:
    recorder = Recorder()
    w = ConfigWatcher(tmp_path, recorder, poll_interval_s=30.0)

    async def main() -> None:
        async with running(w):
            await asyncio.sleep(0.1)
            assert (tmp_path / "config").is_dir() and (tmp_path / "services").is_dir()
            write_json(tuning(tmp_path, "new", "e"), {"pool": {"ceil": 5}})
            await recorder.wait_for(ceil_is(5), timeout_s=1.0)
            await asyncio.sleep(0.1)  # the watch now includes config/services/new
            write_json(tuning(tmp_path, "new", "e"), {"pool": {"ceil": 6}})
            await recorder.wait_for(ceil_is(6), timeout_s=1.0)
            write_json(tmp_path / "services" / "new" / "state.json", {})
            await recorder.wait_for(lambda c: c == ServiceFilesChanged("new"), timeout_s=1.0)

    asyncio.run(main())


def test_run_falls_back_to_polling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_events(*paths: object, **kwargs: object) -> Any:
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(watch, "awatch", no_events)
    recorder = Recorder()
    w = ConfigWatcher(tmp_path, recorder, poll_interval_s=0.05)

    async def main() -> None:
        async with running(w):
            await asyncio.sleep(0.1)
            write_json(tuning(tmp_path), {"pool": {"ceil": 5}})
            await recorder.wait_for(ceil_is(5), timeout_s=1.0)

    asyncio.run(main())


def test_run_periodic_scan_without_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def quiet_awatch(*paths: object, **kwargs: Any) -> AsyncIterator[set[Any]]:
        while True:  # an event source that never reports, only times out
            await asyncio.sleep(kwargs["rust_timeout"] / 1000)
            yield set()

    monkeypatch.setattr(watch, "awatch", quiet_awatch)
    recorder = Recorder()
    w = ConfigWatcher(tmp_path, recorder, poll_interval_s=0.05)

    async def main() -> None:
        async with running(w):
            await asyncio.sleep(0.1)
            write_json(tuning(tmp_path), {"pool": {"ceil": 5}})
            await recorder.wait_for(ceil_is(5), timeout_s=1.0)

    asyncio.run(main())


def test_run_catches_up_on_changes_made_while_the_watch_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def late_awatch(*paths: object, **kwargs: Any) -> AsyncIterator[set[Any]]:
        # A change lands after the previous scan but before any event is delivered.
        write_json(tuning(tmp_path), {"pool": {"ceil": 5}})
        await asyncio.Event().wait()  # and no event ever comes
        yield set()

    monkeypatch.setattr(watch, "awatch", late_awatch)
    recorder = Recorder()
    w = ConfigWatcher(tmp_path, recorder, poll_interval_s=30.0)

    async def main() -> None:
        async with running(w):
            await recorder.wait_for(ceil_is(5), timeout_s=1.0)

    asyncio.run(main())


def test_a_change_that_cannot_be_applied_is_logged_and_the_watch_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_json(tuning(tmp_path), {})
    recorder = Recorder()
    calls: list[list[Change]] = []

    def fails_once(changes: list[Change]) -> None:
        calls.append(changes)
        if len(calls) == 1:
            raise ValueError("handler bug")
        recorder(changes)

    w = ConfigWatcher(tmp_path, fails_once, poll_interval_s=30.0)

    async def main() -> None:
        async with running(w):
            while not calls:
                await asyncio.sleep(0.01)
            write_json(tuning(tmp_path), {"pool": {"ceil": 4}})
            await recorder.wait_for(ceil_is(4))

    asyncio.run(main())
    assert "applying configuration changes failed" in caplog.text and "handler bug" in caplog.text


def test_run_follows_a_kubernetes_configmap_swap(tmp_path: Path) -> None:
    configmap = ConfigMapDir(tmp_path / "config" / "services" / "s")
    configmap.publish({"e.json": '{"pool": {"ceil": 3}}'})
    recorder = Recorder()
    w = ConfigWatcher(tmp_path, recorder, poll_interval_s=30.0)

    async def main() -> None:
        async with running(w):
            await recorder.wait_for(ceil_is(3))
            await asyncio.sleep(0.1)
            for ceil in (4, 5):
                configmap.publish({"e.json": json.dumps({"pool": {"ceil": ceil}})})
                await recorder.wait_for(ceil_is(ceil), timeout_s=1.0)

    asyncio.run(main())


def test_keys_json_over_the_tuning_size_limit_is_still_watched(tmp_path: Path) -> None:
    """keys.json may grow far beyond a tuning file (thousands of keys): every change of it,
    a revoked key above all, must still reach the running node."""
    keys = tmp_path / "config" / "keys.json"
    big = MAX_CONFIG_FILE_BYTES + 1000
    write_json(keys, {"keys": [], "pad": "a" * big})
    w = watcher(tmp_path)
    assert w.scan() == [KeysChanged()]
    assert w.scan() == []
    tmp = keys.with_name(".keys.json.tmp")
    write_json(tmp, {"keys": [], "pad": "b" * big})  # same size, other bytes, as the key store writes
    os.replace(tmp, keys)
    assert w.scan() == [KeysChanged()]
    assert w.scan() == []
    write_json(keys, {"keys": [], "pad": "c" * (big + 10)})  # in place, another size
    assert w.scan() == [KeysChanged()]


def test_run_sees_config_and_services_created_again_after_removal(tmp_path: Path) -> None:
    """With DATA_DIR/config (or services) gone, its re-creation is an event in DATA_DIR:
    the new tuning applies at once, not at the next periodic scan."""
    recorder = Recorder()
    w = ConfigWatcher(tmp_path, recorder, poll_interval_s=30.0)  # only events can be quick

    async def main() -> None:
        async with running(w):
            write_json(tuning(tmp_path), {"pool": {"ceil": 5}})
            await recorder.wait_for(ceil_is(5), timeout_s=3.0)
            shutil.rmtree(tmp_path / "config")
            shutil.rmtree(tmp_path / "services")
            await recorder.wait_for(lambda c: isinstance(c, TuningRemoved), timeout_s=3.0)
            await asyncio.sleep(0.1)  # the watch restarts on what is left
            write_json(tuning(tmp_path), {"pool": {"ceil": 6}})
            await recorder.wait_for(ceil_is(6), timeout_s=3.0)
            await asyncio.sleep(0.1)
            write_json(tmp_path / "services" / "s" / "state.json", {})
            await recorder.wait_for(lambda c: c == ServiceFilesChanged("s"), timeout_s=3.0)

    asyncio.run(main())


def test_run_sees_in_place_writes_to_the_target_of_a_linked_tuning_file(tmp_path: Path) -> None:
    """E.json may link to a file kept elsewhere (a config repository): an edit of that file
    is seen by its directory's events, not only by the periodic scan."""
    target = write_json(tmp_path / "etc" / "e.json", {"pool": {"ceil": 2}})
    link = tuning(tmp_path)
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    recorder = Recorder()
    w = ConfigWatcher(tmp_path, recorder, poll_interval_s=30.0)  # only events can be quick

    async def main() -> None:
        async with running(w):
            await recorder.wait_for(ceil_is(2), timeout_s=3.0)
            await asyncio.sleep(0.1)
            with open(target, "w") as f:  # in place
                f.write(json.dumps({"pool": {"ceil": 3}}))
            await recorder.wait_for(ceil_is(3), timeout_s=3.0)
            tmp = target.with_name("e.json.new")
            write_json(tmp, {"pool": {"ceil": 4}})
            os.replace(tmp, target)  # replaced by rename, beside it
            await recorder.wait_for(ceil_is(4), timeout_s=3.0)

    asyncio.run(main())


def test_an_unreadable_service_directory_does_not_stop_the_events_of_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel refuses to watch a directory the node may not read (EACCES): one such
    directory (a service deployed with the wrong owner) must not turn every other file
    over to the periodic scan."""
    denied = tmp_path / "services" / "locked"
    denied.mkdir(parents=True)
    real_access, real_awatch = os.access, watch.awatch

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        return Path(path) != denied and real_access(path, mode, **kwargs)

    def kernel_awatch(*paths: str, **kwargs: Any) -> Any:
        if str(denied) in paths:  # what inotify_add_watch answers for it
            raise PermissionError(13, f"Permission denied (os error 13) about [{str(denied)!r}]")
        return real_awatch(*paths, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(watch, "awatch", kernel_awatch)
    path = write_json(tuning(tmp_path), {"pool": {"ceil": 2}})
    recorder = Recorder()
    w = ConfigWatcher(tmp_path, recorder, poll_interval_s=30.0)  # only events can be quick

    async def main() -> None:
        async with running(w):
            await recorder.wait_for(ceil_is(2), timeout_s=3.0)
            await asyncio.sleep(0.1)
            write_json(path, {"pool": {"ceil": 3}})
            await recorder.wait_for(ceil_is(3), timeout_s=3.0)

    asyncio.run(main())
