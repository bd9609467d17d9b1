"""The data directory layout, the sample install and state.json (SPEC §2, §6)."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from lightnode.errors import ConfigError, IdError
from lightnode.services import store
from lightnode.services.model import load_service_dir
from lightnode.services.store import DataDir, MappingEntry, ServiceState

LAYOUT = ("config", "config/services", "services", "code-envs", "logs", "run")
BAD_IDS = ["..", ".", "a/b", "", ".x", "x" * 65, "-x", "a\x00b", "../etc", "/abs"]


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- layout -----------------------------------------------------------------


def test_paths(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "d")
    assert data.root == tmp_path / "d"
    assert data.config_dir == tmp_path / "d" / "config"
    assert data.services_dir == tmp_path / "d" / "services"
    assert data.code_envs_dir == tmp_path / "d" / "code-envs"
    assert data.logs_dir == tmp_path / "d" / "logs"
    assert data.run_dir == tmp_path / "d" / "run"
    assert data.pid_path == tmp_path / "d" / "run" / "lightnode.pid"
    assert data.server_config_path == tmp_path / "d" / "config" / "server.json"
    assert data.keys_path == tmp_path / "d" / "config" / "keys.json"
    assert data.endpoint_config_path("s", "e") == data.config_dir / "services" / "s" / "e.json"
    assert data.service_dir("s") == data.services_dir / "s"
    assert data.generation_dir("s", "v1") == data.services_dir / "s" / "generations" / "v1"
    assert data.state_path("s") == data.services_dir / "s" / "state.json"


def test_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert DataDir(Path("d")).root == tmp_path / "d"


def test_ensure_layout(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "new" / "dir")
    data.ensure_layout()
    data.ensure_layout()  # idempotent
    for name in LAYOUT:
        assert (data.root / name).is_dir(), name


def test_is_uninitialised(tmp_path: Path) -> None:
    missing = DataDir(tmp_path / "missing")
    assert missing.is_uninitialised()
    (tmp_path / "empty").mkdir()
    assert DataDir(tmp_path / "empty").is_uninitialised()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert not DataDir(tmp_path / "full").is_uninitialised()
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / ".keep").write_text("")
    assert not DataDir(tmp_path / "hidden").is_uninitialised()
    (tmp_path / "afile").write_text("x")
    assert not DataDir(tmp_path / "afile").is_uninitialised()


# --- sample -----------------------------------------------------------------


@pytest.mark.parametrize("prepare", ["missing", "empty"])
def test_init_sample_on_missing_or_empty_dir(tmp_path: Path, prepare: str) -> None:
    root = tmp_path / "data"
    if prepare == "empty":
        root.mkdir()
    data = DataDir(root)
    assert data.is_uninitialised()
    data.init_sample()
    assert not data.is_uninitialised()
    for name in LAYOUT:
        assert (root / name).is_dir(), name
    assert data.service_ids() == ["demo"]
    assert data.read_state("demo") == ServiceState(True, (MappingEntry("v1", 1.0),))
    assert json.loads(data.state_path("demo").read_text()) == {
        "enabled": True,
        "mapping": {"entries": [{"generation": "v1", "proba": 1.0}]},
    }
    generation = data.generation_dir("demo", "v1")
    service = load_service_dir(generation)
    assert service.id == "demo"
    assert service.root == generation
    assert service.endpoint("quote") is not None
    package = json.loads((generation / "lightnode-package.json").read_text())
    assert package["service"] == "demo" and package["generation"] == "v1"
    assert [g.id for g in data.generations("demo")] == ["v1"]
    assert not list(generation.rglob("__pycache__"))
    # no staging directory is left behind
    assert sorted(p.name for p in data.services_dir.iterdir()) == ["demo"]


def test_init_sample_is_idempotent_and_never_overwrites_demo(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    data.init_sample()
    data.write_state("demo", ServiceState(False, ()))
    (data.generation_dir("demo", "v1") / "quote.py").write_text("# operator's own\n")
    before = all_files(tmp_path)
    data.init_sample()
    assert all_files(tmp_path) == before
    assert data.read_state("demo") == ServiceState(False, ())


def test_init_sample_keeps_a_user_demo_service(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    (tmp_path / "services" / "demo" / "generations" / "mine").mkdir(parents=True)
    data.init_sample()
    assert [g.id for g in data.generations("demo")] == ["mine"]
    assert data.read_state("demo") == ServiceState(False, ())
    for name in LAYOUT:  # the layout is still completed
        assert (tmp_path / name).is_dir(), name


# --- services and generations -------------------------------------------------


def test_service_ids_sorted_and_valid_only(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    assert data.service_ids() == []  # no services dir yet
    data.ensure_layout()
    for name in ("zeta", "alpha", "Mid.1", ".hidden", "-dash", "x" * 65):
        (data.services_dir / name).mkdir()
    (data.services_dir / "afile").write_text("")
    assert data.service_ids() == ["Mid.1", "alpha", "zeta"]


def test_generations_order_and_created(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    assert data.generations("svc") == []
    base = data.services_dir / "svc" / "generations"
    for name in ("v2", "v1", "v3", ".partial"):
        (base / name).mkdir(parents=True)
    (base / "notes.txt").write_text("")
    (base / "v1" / "lightnode-package.json").write_text(
        json.dumps({"service": "svc", "generation": "v1", "created": "2026-11-27T04:15:00Z"})
    )
    (base / "v3" / "lightnode-package.json").write_text("{not json")
    # The import stamp is the package file's mtime; a directory's own mtime (which a
    # pipeline's __pycache__ changes) counts only where there is no package file.
    os.utime(base / "v1" / "lightnode-package.json", (1_000_000, 1_000_000))
    os.utime(base / "v1", (9_000_000, 9_000_000))
    os.utime(base / "v2", (3_000_000, 3_000_000))
    os.utime(base / "v3" / "lightnode-package.json", (2_000_000, 2_000_000))
    infos = data.generations("svc")
    assert [g.id for g in infos] == ["v1", "v3", "v2"]  # oldest import first
    by_id = {g.id: g for g in infos}
    assert by_id["v1"].created == datetime(2026, 11, 27, 4, 15, tzinfo=timezone.utc)
    assert by_id["v1"].imported == datetime.fromtimestamp(1_000_000, tz=timezone.utc)
    assert by_id["v3"].created == by_id["v3"].imported  # unreadable package file: mtime
    assert by_id["v2"].path == base / "v2"
    newest = data.newest_generation("svc")
    assert newest is not None and newest.id == "v2"
    assert data.newest_generation("other") is None


# --- ids are checked before any filesystem access ---------------------------


def id_calls(data: DataDir, bad: str) -> list[Callable[[], Any]]:
    return [
        lambda: data.service_dir(bad),
        lambda: data.generation_dir(bad, "v1"),
        lambda: data.generation_dir("svc", bad),
        lambda: data.generations(bad),
        lambda: data.newest_generation(bad),
        lambda: data.read_state(bad),
        lambda: data.write_state(bad, ServiceState(False, ())),
        lambda: data.state_path(bad),
        lambda: data.endpoint_config_path(bad, "e"),
        lambda: data.endpoint_config_path("s", bad),
    ]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_refused_before_any_filesystem_access(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    data = DataDir(tmp_path / "data")
    data.ensure_layout()

    def forbidden(*args: object, **kwargs: object) -> Any:
        raise AssertionError(f"filesystem accessed for id {bad!r}")

    for name in ("scandir", "open", "stat", "lstat", "mkdir", "replace", "rename", "listdir"):
        monkeypatch.setattr(os, name, forbidden)
    for name in ("read_text", "read_bytes", "open", "mkdir", "exists", "iterdir", "stat"):
        monkeypatch.setattr(pathlib.Path, name, forbidden)
    for call in id_calls(data, bad):
        with pytest.raises(IdError):
            call()
    # the trap is armed: a valid id does reach the filesystem
    with pytest.raises(AssertionError, match="filesystem accessed"):
        data.read_state("svc")
    with pytest.raises(AssertionError, match="filesystem accessed"):
        data.generations("svc")


def test_traversal_id_never_escapes(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")
    (tmp_path / "state.json").write_text('{"enabled": true}')
    with pytest.raises(IdError, match="invalid service id"):
        data.read_state("..")
    with pytest.raises(IdError, match="invalid generation id"):
        data.generation_dir("svc", "../../x")


# --- state.json -------------------------------------------------------------


def test_missing_state_means_disabled(tmp_path: Path) -> None:
    assert DataDir(tmp_path).read_state("svc") == ServiceState(enabled=False, entries=())


def test_state_round_trip(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    state = ServiceState(True, (MappingEntry("v1", 0.25), MappingEntry("v2", 0.75)))
    data.write_state("svc", state)  # creates the service directory
    assert data.read_state("svc") == state
    assert json.loads(data.state_path("svc").read_text()) == {
        "enabled": True,
        "mapping": {
            "entries": [{"generation": "v1", "proba": 0.25}, {"generation": "v2", "proba": 0.75}]
        },
    }
    data.write_state("svc", ServiceState(False, ()))
    assert data.read_state("svc") == ServiceState(False, ())
    assert sorted(p.name for p in data.service_dir("svc").iterdir()) == ["state.json"]


def test_write_state_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = DataDir(tmp_path)
    old = ServiceState(True, (MappingEntry("v1", 1.0),))
    data.write_state("svc", old)

    def failing_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        data.write_state("svc", ServiceState(False, ()))
    monkeypatch.undo()
    assert data.read_state("svc") == old
    assert sorted(p.name for p in data.service_dir("svc").iterdir()) == ["state.json"]


def test_read_state_bad_json_names_path_and_position(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    data.service_dir("svc").mkdir(parents=True)
    data.state_path("svc").write_text('{"enabled": tru}')
    with pytest.raises(ConfigError) as info:
        data.read_state("svc")
    assert info.value.source == str(data.state_path("svc"))
    assert info.value.problems[0].startswith("invalid JSON at line 1, column 13")


def test_read_state_invalid_mapping_lists_every_problem(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    data.service_dir("svc").mkdir(parents=True)
    raw = {
        "enabled": "yes",
        "mapping": {
            "entries": [
                {"generation": "../x", "proba": 0.5},
                {"generation": "v2", "proba": -0.5},
                {"generation": "v3", "proba": True},
                {"proba": 1},
                "v4",
            ]
        },
    }
    data.state_path("svc").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        data.read_state("svc")
    assert info.value.source == str(data.state_path("svc"))
    assert info.value.problems == [
        "enabled: must be true or false (got 'yes')",
        "mapping.entries[0].generation: invalid generation id '../x'",
        "mapping.entries[1].proba: must be >= 0 (got -0.5)",
        "mapping.entries[2].proba: must be a number (got True)",
        "mapping.entries[3].generation: missing",
        "mapping.entries[4]: must be an object",
    ]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ([], "$: must be a JSON object"),
        ({"mapping": {"entries": []}}, "enabled: missing"),
        ({"enabled": True, "extra": 1}, "extra: unknown key"),
        ({"enabled": True, "mapping": []}, "mapping: must be an object with an entries list"),
        ({"enabled": True, "mapping": {}}, "mapping.entries: must be a list"),
        ({"enabled": True, "mapping": {"entries": [], "x": 1}}, "mapping.x: unknown key"),
        (
            {"enabled": True, "mapping": {"entries": [{"generation": "v1", "proba": 0.9}]}},
            "mapping.entries: probabilities must sum to 1 (got 0.9)",
        ),
        (
            {
                "enabled": True,
                "mapping": {
                    "entries": [
                        {"generation": "v1", "proba": 0.5},
                        {"generation": "v1", "proba": 0.5},
                    ]
                },
            },
            "mapping.entries[1].generation: duplicate generation 'v1'",
        ),
        (
            {"enabled": True, "mapping": {"entries": [{"generation": "v1", "proba": 1, "w": 2}]}},
            "mapping.entries[0].w: unknown key",
        ),
        (
            {"enabled": True, "mapping": {"entries": [{"generation": "v1"}]}},
            "mapping.entries[0].proba: missing",
        ),
    ],
)
def test_state_from_json_problems(raw: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServiceState.from_json(raw, source="/d/state.json")
    assert info.value.source == "/d/state.json"
    assert info.value.problems == [problem]


def test_state_from_json_valid_forms() -> None:
    assert ServiceState.from_json({"enabled": False}, source="s") == ServiceState(False, ())
    three = {
        "enabled": True,
        "mapping": {
            "entries": [
                {"generation": "a", "proba": 0.1},
                {"generation": "b", "proba": 0.2},
                {"generation": "c", "proba": 0.7},
            ]
        },
    }
    state = ServiceState.from_json(three, source="s")  # 0.1 + 0.2 + 0.7 != 1.0 exactly
    assert [e.generation for e in state.entries] == ["a", "b", "c"]
    assert ServiceState.from_json(state.to_json(), source="s") == state
    ints = {"enabled": True, "mapping": {"entries": [{"generation": "v1", "proba": 1}]}}
    parsed = ServiceState.from_json(ints, source="s")
    assert parsed.entries == (MappingEntry("v1", 1.0),)
    assert isinstance(parsed.entries[0].proba, float)


def test_state_constructor_checks_the_mapping() -> None:
    with pytest.raises(ValueError, match="probabilities must sum to 1"):
        ServiceState(True, (MappingEntry("v1", 0.5),))
    with pytest.raises(ValueError, match="invalid generation id"):
        ServiceState(True, (MappingEntry("..", 1.0),))


def test_parse_mapping_for_the_admin_api() -> None:
    body = {"entries": [{"generation": "v1", "proba": 0.5}, {"generation": "v2", "proba": 0.5}]}
    assert store.parse_mapping(body, source="setMapping") == (
        MappingEntry("v1", 0.5),
        MappingEntry("v2", 0.5),
    )
    with pytest.raises(ConfigError) as info:
        store.parse_mapping({"entries": [{"generation": "v1", "proba": 2}]}, source="setMapping")
    assert info.value.problems == ["entries: probabilities must sum to 1 (got 2)"]
    with pytest.raises(ConfigError) as info:
        store.parse_mapping(None, source="setMapping")
    assert info.value.problems == ["$: must be an object with an entries list"]
