"""config.load: the case corpus, file loading, atomic writes, merge_tuning, paths."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightnode.config import load
from lightnode.config.load import (
    decode_json,
    endpoint_config_path,
    endpoint_config_to_json,
    load_endpoint_config,
    load_server_settings,
    merge_tuning,
    parse_endpoint_config,
    parse_server_settings,
    server_settings_to_json,
    write_endpoint_config,
)
from lightnode.config.model import (
    EndpointConfig,
    ExecLimits,
    PoolLimits,
    ServerSettings,
)
from lightnode.errors import ConfigError, IdError

CASES = Path(__file__).parent / "cases"
VALID = sorted((CASES / "valid").glob("*.json"))
INVALID = sorted((CASES / "invalid").glob("*.json"))


def _raw(case: dict[str, Any], source: str) -> object:
    if "input_text" in case:
        return decode_json(case["input_text"].encode("utf-8"), source=source)
    return case["input"]


def _parse_case(case: dict[str, Any], source: str) -> dict[str, Any]:
    raw = _raw(case, source)
    if case.get("kind", "endpoint") == "endpoint":
        return endpoint_config_to_json(parse_endpoint_config(raw, source=source))
    return server_settings_to_json(parse_server_settings(raw, source=source))


def test_corpus_is_not_empty() -> None:
    assert len(VALID) >= 10 and len(INVALID) >= 15


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_case(path: Path) -> None:
    case = json.loads(path.read_text())
    assert _parse_case(case, str(path)) == case["expected"]


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_case_lists_every_problem(path: Path) -> None:
    case = json.loads(path.read_text())
    with pytest.raises(ConfigError) as info:
        _parse_case(case, "the-source")
    assert info.value.problems == case["problems"]
    assert info.value.source == "the-source"
    assert str(info.value).startswith("the-source: ")


@pytest.mark.parametrize(
    ("section", "cls"),
    [("pool", PoolLimits), ("limits", ExecLimits)],
)
def test_endpoint_schema_covers_every_field(section: str, cls: type) -> None:
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(load._ENDPOINT_SCHEMA[section].fields) == fields


def test_server_schema_covers_every_field() -> None:
    settings = ServerSettings()
    assert set(load._SERVER_SCHEMA) == {f.name for f in dataclasses.fields(settings)}
    for name, section in load._SERVER_SCHEMA.items():
        fields = {f.name for f in dataclasses.fields(getattr(settings, name))}
        assert set(section.fields) == fields, name


def test_defaults_and_source() -> None:
    config = parse_endpoint_config({}, source="x.json")
    assert config.pool == PoolLimits() and config.limits == ExecLimits()
    assert config.source == "x.json"
    assert (config.pool.floor, config.pool.cruise, config.pool.ceil) == (1, 2, 8)
    assert (config.pool.queue, config.pool.timeout) == (16, 10000)


def test_to_json_round_trips() -> None:
    config = parse_endpoint_config(
        {"pool": {"floor": 0, "cruise": 1, "ceil": 5, "scale_down_delay": 250}},
        source="s",
    )
    assert parse_endpoint_config(endpoint_config_to_json(config), source="s") == config
    assert "source" not in endpoint_config_to_json(config)


def _valid_pools() -> st.SearchStrategy[dict[str, int]]:
    bounds = st.lists(st.integers(0, 10_000), min_size=3, max_size=3).map(sorted)
    return st.builds(
        lambda b, queue, timeout, delay, prefetch: {
            "floor": b[0],
            "cruise": b[1],
            "ceil": max(b[2], 1),
            "queue": queue,
            "timeout": timeout,
            "scale_down_delay": delay,
            "prefetch": prefetch,
        },
        bounds,
        st.integers(0, 10**6),
        st.integers(1, 10**8),
        st.integers(0, 10**8),
        st.integers(0, 1),
    )


@given(_valid_pools())
def test_every_valid_pool_round_trips(pool: dict[str, int]) -> None:
    config = parse_endpoint_config({"pool": pool}, source="s")
    assert endpoint_config_to_json(config)["pool"] == pool


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
_pool_keys = st.sampled_from(
    ["floor", "cruise", "ceil", "queue", "timeout", "scale_down_delay", "x"]
)


@settings(max_examples=100)
@given(
    st.one_of(
        _json,
        st.dictionaries(st.sampled_from(["pool", "limits", "other"]), _json, max_size=3),
        st.fixed_dictionaries({"pool": st.dictionaries(_pool_keys, _json, max_size=7)}),
    )
)
def test_anything_is_accepted_or_refused_with_config_error(raw: object) -> None:
    try:
        config = parse_endpoint_config(raw, source="fuzz")
    except ConfigError as exc:
        assert exc.problems and all(": " in problem for problem in exc.problems)
    else:
        pool = config.pool
        assert 0 <= pool.floor <= pool.cruise <= pool.ceil and pool.ceil >= 1


# -- files ------------------------------------------------------------------


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    config = load_endpoint_config(tmp_path / "nope.json")
    assert config == EndpointConfig()
    assert config.source == "defaults"


def test_load_sets_source_to_path(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    path.write_text('{"pool": {"ceil": 3}}')
    config = load_endpoint_config(path)
    assert config.pool.ceil == 3 and config.source == str(path)


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    path.write_text('{\n  "pool": {\n    "ceil": 4\n    "floor": 1\n  }\n}\n')
    with pytest.raises(ConfigError) as info:
        load_endpoint_config(path)
    assert info.value.source == str(path)
    assert info.value.problems == ["line 4, column 5: invalid JSON (Expecting ',' delimiter)"]


def test_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    path.write_bytes(b'{"pool": "\xff"}')
    with pytest.raises(ConfigError, match="byte 10: not UTF-8 text"):
        load_endpoint_config(path)


def test_unreadable_path_is_refused_not_defaulted(tmp_path: Path) -> None:
    (tmp_path / "e.json").mkdir()
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_endpoint_config(tmp_path / "e.json")


def test_write_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "config" / "services" / "s" / "e.json"  # parents created
    config = parse_endpoint_config({"pool": {"ceil": 4}, "limits": {"max_requests": 9}}, source="x")
    write_endpoint_config(path, config)
    loaded = load_endpoint_config(path)
    assert loaded.pool == config.pool and loaded.limits == config.limits
    assert path.read_text().endswith("}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["e.json"]  # no temp file left


def test_write_failure_keeps_old_file_and_cleans_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.json"
    write_endpoint_config(path, parse_endpoint_config({"pool": {"ceil": 3}}, source="x"))
    before = path.read_bytes()

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        write_endpoint_config(path, parse_endpoint_config({"pool": {"ceil": 5}}, source="x"))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["e.json"]


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    configs = [
        parse_endpoint_config({"pool": {"ceil": n, "cruise": 1, "floor": 1}}, source="x")
        for n in range(1, 30)
    ]
    write_endpoint_config(path, configs[0])
    seen: set[int] = set()
    failures: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                seen.add(load_endpoint_config(path).pool.ceil)
            except ConfigError as exc:  # pragma: no cover - the failure we test against
                failures.append(str(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for config in configs * 2:
            write_endpoint_config(path, config)
    finally:
        done.set()
        thread.join()
    assert failures == []
    assert len(seen) > 1
    assert [p.name for p in tmp_path.iterdir()] == ["e.json"]


# -- merge_tuning -----------------------------------------------------------


def _base() -> EndpointConfig:
    return parse_endpoint_config({"pool": {"ceil": 6}}, source="/d/e.json")


def test_merge_flat_nested_and_dotted() -> None:
    merged = merge_tuning(
        _base(),
        {"ceil": 4, "limits": {"max_requests": 100}, "pool.queue": 3, "exec_timeout": 500},
    )
    assert merged.pool == PoolLimits(ceil=4, queue=3)
    assert merged.limits == ExecLimits(exec_timeout=500, max_requests=100)
    assert merged.source == "/d/e.json"


def test_merge_ignores_none_values() -> None:
    merged = merge_tuning(_base(), {"ceil": None, "floor": 0, "pool": {"queue": None}})
    assert merged.pool == PoolLimits(ceil=6, floor=0)


def test_merge_validates_the_result() -> None:
    with pytest.raises(ConfigError) as info:
        merge_tuning(_base(), {"ceil": 1, "cruise": 3, "max_rss_mb": True})
    assert info.value.problems == [
        "limits.max_rss_mb: must be an integer >= 0 (got true)",
        "pool.ceil: must be >= cruise (got 1 < 3)",
    ]
    assert info.value.source == "/d/e.json"


def test_merge_reports_unknown_keys_with_other_problems() -> None:
    with pytest.raises(ConfigError) as info:
        merge_tuning(_base(), {"cieling": 4, "pool.flor": 1, "nope.x": 1, "floor": -1})
    assert info.value.problems == [
        "cieling: unknown key",
        "nope.x: unknown key",
        "pool.floor: must be an integer >= 0 (got -1)",
        "pool.flor: unknown key",
    ]


def test_merge_with_no_overrides_is_identity() -> None:
    assert merge_tuning(_base(), {}) == _base()


# -- server.json ------------------------------------------------------------


def test_server_settings_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_server_settings(tmp_path / "server.json") == ServerSettings()


def test_server_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "server.json"
    path.write_text(
        json.dumps(
            {
                "listen": {"port": 8080},
                "logging": {"format": "json", "level": "debug", "log_params": True},
                "shutdown": {"grace_ms": 0},
                "switch": {"warmup_timeout_ms": 300000},
            }
        )
    )
    settings = load_server_settings(path)
    assert settings.switch.warmup_timeout_ms == 300000
    assert settings.listen.port == 8080 and settings.listen.host == "127.0.0.1"
    assert (settings.logging.format, settings.logging.level) == ("json", "debug")
    assert settings.logging.log_params is True
    assert settings.shutdown.grace_ms == 0
    assert parse_server_settings(server_settings_to_json(settings), source="s") == settings


def test_server_settings_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "server.json"
    path.write_text('{"listen": {"port": "80"}, "logging": {"level": "loud"}, "switch": {"warmup_timeout_ms": 0}}')
    with pytest.raises(ConfigError) as info:
        load_server_settings(path)
    assert info.value.source == str(path)
    assert [p.split(":")[0] for p in info.value.problems] == ["listen.port", "logging.level", "switch.warmup_timeout_ms"]


def test_a_switch_waits_at_most_as_long_as_an_admin_client_does() -> None:
    """A warm-up time an admin client would give up on is refused (RemoteAdmin's timeout)."""
    from lightnode.admin.remote import MUTATION_TIMEOUT_S

    ok = parse_server_settings({"switch": {"warmup_timeout_ms": 600000}}, source="s")
    assert ok.switch.warmup_timeout_ms / 1000 < MUTATION_TIMEOUT_S
    with pytest.raises(ConfigError) as info:
        parse_server_settings({"switch": {"warmup_timeout_ms": 600001}}, source="s")
    assert info.value.problems == ["switch.warmup_timeout_ms: must be an integer between 1 and 600000 (got 600001)"]


# -- paths ------------------------------------------------------------------


def test_endpoint_config_path(tmp_path: Path) -> None:
    path = endpoint_config_path(tmp_path, "svc-1", "predict.v2")
    assert path == tmp_path / "config" / "services" / "svc-1" / "predict.v2.json"


@pytest.mark.parametrize(
    ("service_id", "endpoint_id"),
    [("..", "e"), ("s", "../x"), ("", "e"), ("s", ".hidden"), ("a/b", "e"), ("s", "x" * 65)],
)
def test_endpoint_config_path_refuses_bad_ids(
    tmp_path: Path, service_id: str, endpoint_id: str
) -> None:
    with pytest.raises(IdError):
        endpoint_config_path(tmp_path, service_id, endpoint_id)


def test_write_through_a_link_replaces_the_file_it_names_and_keeps_the_link(tmp_path: Path) -> None:
    """A tuning file may link to a file kept elsewhere (a config repository): `admin tune`
    must update that file, not replace the link by a copy that later edits never reach."""
    kept = tmp_path / "repo" / "e.json"
    kept.parent.mkdir()
    kept.write_text(json.dumps({"pool": {"ceil": 2}}))
    link = tmp_path / "config" / "services" / "s" / "e.json"
    link.parent.mkdir(parents=True)
    link.symlink_to(kept)
    write_endpoint_config(link, parse_endpoint_config({"pool": {"ceil": 5}}, source="x"))
    assert link.is_symlink() and os.readlink(link) == str(kept)
    assert load_endpoint_config(kept).pool.ceil == 5
    assert sorted(os.listdir(kept.parent)) == ["e.json"]  # no temp file left
    assert os.listdir(link.parent) == ["e.json"]
