"""Configuration files that are hostile rather than wrong: nested too deeply, integers too
long, values too large for a timer, a FIFO, a directory or a huge file at a config path.

Each is refused with a ConfigError naming the file (never another exception, which would
end the watcher or the start-up with a traceback), and none may block the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from lightnode.admin.keys import KeyStore, normalize_expiry
from lightnode.config.load import decode_endpoint_config, endpoint_config_path, load_server_settings
from lightnode.config.validate import MAX_CONFIG_FILE_BYTES, MAX_SETTING_INT, read_config_bytes
from lightnode.config.watch import ConfigWatcher, TuningChanged, TuningInvalid
from lightnode.errors import ConfigError
from lightnode.services.store import DataDir

DEEP = b"[" * 100_000
LONG_INT = b'{"pool": {"ceil": 1' + b"0" * 5000 + b"}}"


@pytest.mark.parametrize(
    "data, problem",
    [
        (DEEP, "invalid JSON (nested too deeply)"),
        pytest.param(
            LONG_INT, "invalid JSON (Exceeds the limit",
            marks=pytest.mark.skipif(not hasattr(sys, "get_int_max_str_digits"), reason="no int digit limit"),
        ),
    ],
)  # fmt: skip
def test_json_the_parser_refuses_beyond_syntax_is_a_config_error(data: bytes, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        decode_endpoint_config(data, source="t.json")
    assert info.value.problems[0].startswith(problem)


@pytest.mark.parametrize("field", ['"limits": {"exec_timeout": %d}', '"pool": {"timeout": %d}'])
def test_integers_beyond_a_timers_range_are_refused(field: str) -> None:
    def decode(number: int) -> object:
        return decode_endpoint_config(("{%s}" % (field % number)).encode(), source="t.json")

    decode(MAX_SETTING_INT)
    for number in (MAX_SETTING_INT + 1, 10**400):
        with pytest.raises(ConfigError, match=f"must be an integer <= {MAX_SETTING_INT}"):
            decode(number)
    with pytest.raises(ConfigError, match="got an integer of 1329 bits"):
        decode(10**400)


def test_a_fifo_a_directory_and_a_huge_file_are_refused_without_reading_them(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # nobody writes it: a blocking open or read would never return
    (tmp_path / "dir.json").mkdir()
    huge = tmp_path / "huge.json"
    with huge.open("wb") as handle:
        handle.truncate(MAX_CONFIG_FILE_BYTES + 1)  # sparse
    (tmp_path / "link.json").symlink_to(huge)
    for name, problem in [
        ("fifo.json", "not a regular file"), ("dir.json", "not a regular file"),
        ("huge.json", f"larger than {MAX_CONFIG_FILE_BYTES} bytes"),
        ("link.json", f"larger than {MAX_CONFIG_FILE_BYTES} bytes"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError) as info:
            read_config_bytes(tmp_path / name)
        assert info.value.problems == [f"cannot read the file ({problem})"]
    assert read_config_bytes(tmp_path / "absent.json") is None
    (tmp_path / "ok.json").write_bytes(b"x" * MAX_CONFIG_FILE_BYTES)
    assert len(read_config_bytes(tmp_path / "ok.json") or b"") == MAX_CONFIG_FILE_BYTES


def test_server_json_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "server.json"
    path.write_bytes(DEEP)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_server_settings(path)


def test_the_watcher_reports_a_fifo_once_and_goes_on(tmp_path: Path) -> None:
    path = endpoint_config_path(tmp_path, "s", "e")
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    reported: list[object] = []
    watcher = ConfigWatcher(tmp_path, reported.extend, poll_interval_s=30.0)
    first = watcher.scan()
    assert [type(c) for c in first] == [TuningInvalid]
    assert watcher.scan() == []  # the same problem is not reported at every scan
    path.unlink()
    path.write_text(json.dumps({"pool": {"ceil": 3}}))
    (change,) = watcher.scan()
    assert isinstance(change, TuningChanged) and change.config.pool.ceil == 3


def test_the_watcher_survives_a_change_handler_that_raises_on_hostile_keys(tmp_path: Path) -> None:
    keys = tmp_path / "config" / "keys.json"
    keys.parent.mkdir(parents=True)
    keys.write_bytes(DEEP)
    seen: list[object] = []

    def apply(changes: list[object]) -> None:
        seen.extend(changes)
        KeyStore(keys).load()  # raises ConfigError: a handler bug must not end the watch either

    async def main() -> None:
        task = asyncio.create_task(ConfigWatcher(tmp_path, apply, poll_interval_s=0.05).run())
        await asyncio.sleep(0.3)
        assert not task.done()
        task.cancel()

    asyncio.run(main())
    assert seen


@pytest.mark.parametrize("expiry", [1e30, -1e20, 10**400, float("nan")])
def test_an_expiry_out_of_range_is_a_value_error(expiry: object) -> None:
    with pytest.raises(ValueError, match="expiry: epoch milliseconds out of range"):
        normalize_expiry(expiry)


def test_keys_json_may_be_larger_than_other_config_files(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    entry = {"hash": "sha256:" + "0" * 64, "serviceId": "svc", "label": "x" * 200}
    keys = [{"id": f"k{i}", **entry} for i in range(MAX_CONFIG_FILE_BYTES // 250)]
    path.write_text(json.dumps({"keys": keys}))
    assert path.stat().st_size > MAX_CONFIG_FILE_BYTES
    assert len(KeyStore(path).load().entries()) == len(keys)


def test_keys_json_with_an_expiry_out_of_range_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    entry = {"id": "k1", "hash": "sha256:" + "0" * 64, "admin": True, "expiry": 1e30}
    path.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(ConfigError, match="out of range"):
        KeyStore(path).load()


@pytest.mark.parametrize("content", [DEEP, b"\xff\xfe", b"{"])
def test_state_and_service_json_that_cannot_be_parsed_are_config_errors(tmp_path: Path, content: bytes) -> None:
    data = DataDir(tmp_path)
    state = data.state_path("svc")
    state.parent.mkdir(parents=True)
    state.write_bytes(content)
    with pytest.raises(ConfigError):
        data.read_state("svc")
