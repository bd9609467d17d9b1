"""The admin service layer on a data directory (SPEC §5, §6): what both the CLI and the routes run."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from lightnode.admin.service_layer import ServiceLayer, parse_mapping_args
from lightnode.errors import ConfigError, IdError, LightnodeError
from lightnode.services.package import PackageRefused, build_package
from lightnode.services.store import PACKAGE_FILE, DataDir, MappingEntry, ServiceState


def make_src(root: Path, name: str = "src", body: str = "return 1") -> Path:
    src = root / name
    src.mkdir()
    (src / "e.py").write_text(f"def e():\n    {body}\n")
    service = {"id": "svc", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py"}]}
    (src / "service.json").write_text(json.dumps(service))
    return src


def imported(layer: ServiceLayer, tmp_path: Path, *generations: str) -> None:
    src = tmp_path / "src"
    if not src.exists():
        make_src(tmp_path)
    for index, generation in enumerate(generations):
        built = build_package(src, output=tmp_path / f"{generation}.zip", generation=generation)
        layer.import_archive("svc", built.path)
        stamp = 1_700_000_000 + index  # import order, whatever the clock's resolution
        os.utime(layer.data_dir.generation_dir("svc", generation) / PACKAGE_FILE, (stamp, stamp))


def test_limit_comes_from_server_json(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "d")
    data.ensure_layout()
    data.server_config_path.write_text(json.dumps({"limits": {"max_package_bytes": 1234}}))
    assert ServiceLayer(data).max_package_bytes == 1234


def test_create_list_and_delete(layer: ServiceLayer) -> None:
    info = layer.create_service("svc")
    assert info == {"id": "svc", "enabled": False, "mapping": {"entries": []}, "generations": []}
    with pytest.raises(LightnodeError, match="already exists"):
        layer.create_service("svc")
    assert [s["id"] for s in layer.services()] == ["svc"]
    layer.create_key(service_id="svc")
    layer.create_key(service_id="other")
    assert layer.delete_service("svc") == {"deleted": "svc", "keysKept": 1}
    assert layer.services() == []
    assert not [p for p in os.listdir(layer.data_dir.services_dir)]  # nothing left behind
    with pytest.raises(LightnodeError) as info:
        layer.delete_service("svc")
    assert info.value.status == 404
    with pytest.raises(IdError):
        layer.create_service("../etc")


def test_import_then_switch_to_newest(layer: ServiceLayer, tmp_path: Path) -> None:
    imported(layer, tmp_path, "g1", "g2")
    gens = layer.generations("svc")["generations"]
    assert [g["generationId"] for g in gens] == ["g1", "g2"]
    assert all(not g["mapped"] and not g["mounted"] for g in gens)
    assert isinstance(gens[0]["createdOn"], int)
    (layer.data_dir.generation_dir("svc", "g1") / "__pycache__").mkdir()  # loading g1 touches its dir
    answer = layer.switch_to_newest("svc")
    assert answer["switchedToGeneration"] == "g2"
    state = layer.data_dir.read_state("svc")
    assert state == ServiceState(True, (MappingEntry("g2", 1.0),))
    gens = {g["generationId"]: g for g in layer.generations("svc")["generations"]}
    assert gens["g2"]["mapped"] and gens["g2"]["mounted"] and not gens["g1"]["mapped"]


def test_switch_refuses_unknown_or_broken_generations(layer: ServiceLayer, tmp_path: Path) -> None:
    imported(layer, tmp_path, "g1")
    layer.switch_to("svc", "g1")
    with pytest.raises(LightnodeError) as info:
        layer.switch_to("svc", "nope")
    assert info.value.status == 404
    broken = layer.data_dir.generation_dir("svc", "bad")
    broken.mkdir()
    (broken / "service.json").write_text("{")
    with pytest.raises(ConfigError):
        layer.switch_to("svc", "bad")
    with pytest.raises(LightnodeError) as info:
        layer.switch_to("missing", "g1")
    assert info.value.status == 404
    assert layer.data_dir.read_state("svc").entries == (MappingEntry("g1", 1.0),)  # unchanged


def test_set_mapping_validates_and_enables(layer: ServiceLayer, tmp_path: Path) -> None:
    imported(layer, tmp_path, "g1", "g2")
    answer = layer.set_mapping("svc", {"entries": [{"generation": "g1", "proba": 0.5}, {"generation": "g2", "proba": 0.5}]})
    assert answer["enabled"] is True and len(answer["mapping"]["entries"]) == 2
    for bad in (
        {"entries": [{"generation": "g1", "proba": 0.7}, {"generation": "g2", "proba": 0.7}]},
        {"entries": [{"generation": "g9", "proba": 1}]},
        {"entries": []},
        {"nope": []},
        None,
    ):
        with pytest.raises((ConfigError, LightnodeError)):
            layer.set_mapping("svc", bad)
    assert len(layer.data_dir.read_state("svc").entries) == 2


def test_enable_and_disable_keep_the_mapping(layer: ServiceLayer, tmp_path: Path) -> None:
    imported(layer, tmp_path, "g1")
    layer.switch_to("svc", "g1")
    assert layer.disable("svc")["enabled"] is False
    assert layer.data_dir.read_state("svc").entries == (MappingEntry("g1", 1.0),)
    assert layer.enable("svc")["enabled"] is True


def test_import_errors(layer: ServiceLayer, tmp_path: Path) -> None:
    with pytest.raises(LightnodeError, match="absolute"):
        layer.import_archive("svc", "relative.zip")
    with pytest.raises(LightnodeError, match="No such archive"):
        layer.import_archive("svc", tmp_path / "missing.zip")
    small = ServiceLayer(layer.data_dir, max_package_bytes=10)
    built = build_package(make_src(tmp_path), output=tmp_path / "p.zip", generation="g1")
    with pytest.raises(PackageRefused, match="max_package_bytes"):
        small.import_archive("svc", built.path)


def test_endpoint_settings_round_trip_and_refusal(layer: ServiceLayer) -> None:
    assert layer.endpoint_settings("svc", "e")["pool"]["ceil"] == 8  # defaults without a file
    written = layer.set_endpoint_settings("svc", "e", {"pool": {"ceil": 4, "cruise": 2}})
    assert written["pool"]["ceil"] == 4
    assert layer.endpoint_settings("svc", "e")["pool"]["ceil"] == 4
    path = layer.data_dir.endpoint_config_path("svc", "e")
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        layer.set_endpoint_settings("svc", "e", {"pool": {"floor": 5, "ceil": 2, "bogus": 1}, "limits": {"max_rss_mb": -1}})
    text = str(info.value)
    assert "pool.bogus" in text and "limits.max_rss_mb" in text and "ceil" in text
    assert path.read_bytes() == before
    with pytest.raises(IdError):
        layer.endpoint_settings("svc", "../x")


def test_keys_through_the_layer(layer: ServiceLayer) -> None:
    created = layer.create_key(service_id="svc", label="ci")
    assert created["key"].startswith("lnk_") and created["serviceId"] == "svc" and not created["admin"]
    admin = layer.create_key(label="ops")
    assert admin["admin"] is True
    listed = layer.list_keys()
    assert {k["id"] for k in listed} == {created["id"], admin["id"]}
    assert all("key" not in k for k in listed)
    assert layer.delete_key(created["key"]) == {"deleted": created["id"]}
    assert layer.delete_key_by_id(admin["id"]) == {"deleted": admin["id"]}
    with pytest.raises(LightnodeError) as info:
        layer.delete_key_by_id(admin["id"])
    assert info.value.status == 404


def test_parse_mapping_args() -> None:
    assert parse_mapping_args(["g1=0.25", "g2=0.75"]) == {
        "entries": [{"generation": "g1", "proba": 0.25}, {"generation": "g2", "proba": 0.75}]
    }
    with pytest.raises(ConfigError) as info:
        parse_mapping_args(["g1", "g2=half"])
    assert len(info.value.problems) == 2


def test_tune_overlays_and_validates(layer: ServiceLayer) -> None:
    layer.set_endpoint_settings("svc", "e", {"pool": {"floor": 1, "ceil": 4}, "limits": {"max_requests": 9}})
    answer = layer.tune("svc", "e", {"pool": {"ceil": 6}})
    assert answer["pool"]["ceil"] == 6 and answer["limits"]["max_requests"] == 9
    with pytest.raises(ConfigError, match="floor"):
        layer.tune("svc", "e", {"pool": {"floor": 7}})
    assert layer.endpoint_settings("svc", "e")["pool"]["ceil"] == 6


# --- a refused state.json is repaired by the operations that replace it (SPEC §6) ---------


@pytest.fixture
def broken(layer: ServiceLayer, tmp_path: Path) -> ServiceLayer:
    """Service svc with generations g1 and g2, served from g1, and then an empty state.json."""
    imported(layer, tmp_path, "g1", "g2")
    layer.switch_to("svc", "g1")
    layer.data_dir.state_path("svc").write_text("")  # an editor caught half-way through a save
    return layer


def test_switch_repairs_a_refused_state(broken: ServiceLayer) -> None:
    assert broken.switch_to("svc", "g2")["switchedToGeneration"] == "g2"
    assert broken.data_dir.read_state("svc") == ServiceState(True, (MappingEntry("g2", 1.0),))


def test_switch_to_newest_repairs_a_refused_state(broken: ServiceLayer) -> None:
    assert broken.switch_to_newest("svc")["switchedToGeneration"] == "g2"
    assert broken.data_dir.read_state("svc") == ServiceState(True, (MappingEntry("g2", 1.0),))


def test_set_mapping_repairs_a_refused_state(broken: ServiceLayer) -> None:
    broken.set_mapping("svc", {"entries": [{"generation": "g1", "proba": 0.5}, {"generation": "g2", "proba": 0.5}]})
    assert len(broken.data_dir.read_state("svc").entries) == 2


def test_disable_repairs_a_refused_state_and_says_the_mapping_is_gone(broken: ServiceLayer) -> None:
    """Stopping a service must never need its mapping: disabled, with no mapping (it could not be read)."""
    answer = broken.disable("svc")
    assert answer["enabled"] is False and answer["mapping"] == {"entries": []}
    assert "state.json" in answer["note"] and "switch" in answer["note"]
    assert broken.data_dir.read_state("svc") == ServiceState(False, ())


def test_enable_refuses_a_refused_state_and_says_what_to_do(broken: ServiceLayer) -> None:
    """Enabling needs the mapping, which cannot be read: refused, naming switch and set-mapping."""
    path = broken.data_dir.state_path("svc")
    with pytest.raises(LightnodeError) as info:
        broken.enable("svc")
    assert info.value.status == 400
    assert "invalid JSON" in info.value.message
    assert "switch" in info.value.message and "set-mapping" in info.value.message
    assert path.read_text() == ""  # nothing written


def test_generations_are_listed_when_the_mapping_cannot_be_read(broken: ServiceLayer) -> None:
    answer = broken.generations("svc")
    assert [(g["generationId"], g["mapped"]) for g in answer["generations"]] == [("g1", False), ("g2", False)]
    assert "invalid JSON" in answer["mappingError"]


# --- a refused server.json only blocks what needs it (SPEC §8) --------------------------


def test_a_refused_server_json_blocks_only_imports(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "d")
    data.ensure_layout()
    data.server_config_path.write_text(json.dumps({"typo": 1}))
    layer = ServiceLayer(data)  # no error: nothing needs server.json yet
    layer.create_service("svc")
    layer.disable("svc")
    layer.tune("svc", "e", {"pool": {"ceil": 3}})
    key = layer.create_key(label="ops")
    assert [k["id"] for k in layer.list_keys()] == [key["id"]]
    assert layer.delete_key_by_id(key["id"]) == {"deleted": key["id"]}
    built = build_package(make_src(tmp_path), output=tmp_path / "p.zip", generation="g1")
    with pytest.raises(ConfigError, match="typo: unknown key") as info:
        layer.import_archive("svc", built.path)
    assert info.value.source == str(data.server_config_path)


# --- admin tune over a refused tuning file (SPEC §5) ------------------------------------


def test_tune_replaces_a_refused_file_on_the_defaults(layer: ServiceLayer) -> None:
    path = layer.data_dir.endpoint_config_path("svc", "e")
    path.parent.mkdir(parents=True)
    path.write_text('{"pool": {"ceil": 4}')  # not JSON
    answer = layer.tune("svc", "e", {"pool": {"ceil": 3}})
    assert answer["pool"]["ceil"] == 3 and answer["pool"]["floor"] == 1  # the defaults, ceil changed
    assert str(path) in answer["note"] and "invalid JSON" in answer["note"] and "defaults" in answer["note"]
    assert json.loads(path.read_text())["pool"]["ceil"] == 3
    assert "note" not in json.loads(path.read_text())


def test_tune_replaces_a_refused_file_on_the_values_in_force(tmp_path: Path) -> None:
    from lightnode.config.model import EndpointConfig, PoolLimits

    data = DataDir(tmp_path / "d")
    data.ensure_layout()
    in_force = EndpointConfig(pool=PoolLimits(floor=2, cruise=2, ceil=6), source="x")
    layer = ServiceLayer(data, tuning_in_force=lambda s, e: in_force if (s, e) == ("svc", "e") else None)
    path = data.endpoint_config_path("svc", "e")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pool": {"ceil": 4}, "typo": 1}))
    answer = layer.tune("svc", "e", {"pool": {"ceil": 3}})
    assert (answer["pool"]["floor"], answer["pool"]["cruise"], answer["pool"]["ceil"]) == (2, 2, 3)
    assert "typo: unknown key" in answer["note"] and "in force" in answer["note"]
    assert json.loads(path.read_text())["pool"]["floor"] == 2


def test_tune_errors_name_the_file_even_before_it_exists(layer: ServiceLayer) -> None:
    path = layer.data_dir.endpoint_config_path("svc", "e")
    with pytest.raises(ConfigError) as info:
        layer.tune("svc", "e", {"pool": {"floor": 9}})
    assert info.value.source == str(path) and str(info.value).startswith(str(path))
    assert not path.exists()


def test_tune_of_an_endpoint_no_generation_has_says_so(layer: ServiceLayer, tmp_path: Path) -> None:
    # `admin tune churn scroe` (a typo) wrote scroe.json and said nothing.
    assert layer.tune("svc", "e", {"pool": {"ceil": 3}})["note"] == (
        "service svc is not deployed here yet: the file applies once it is")
    imported(layer, tmp_path, "g1")
    assert "note" not in layer.tune("svc", "e", {"pool": {"ceil": 4}})
    answer = layer.tune("svc", "scroe", {"pool": {"ceil": 4}})
    assert answer["note"] == (
        "no generation of service svc has an endpoint scroe (its endpoints: e): the file tunes nothing until one has")
    assert answer["pool"]["ceil"] == 4  # written all the same


def test_two_tunes_at_once_keep_both_changes(layer: ServiceLayer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each reads the file, overlays its change and writes: without a lock both read the
    # old file, and the later write lost the earlier change.
    import threading
    import time

    from lightnode.admin import service_layer

    read = service_layer.load_endpoint_config

    def slow_read(path: Path) -> Any:
        config = read(path)
        time.sleep(0.2)  # both tunes are between their read and their write
        return config

    monkeypatch.setattr(service_layer, "load_endpoint_config", slow_read)
    tunes = [
        threading.Thread(target=layer.tune, args=("svc", "e", {"pool": {"queue": 7}})),
        threading.Thread(target=layer.tune, args=("svc", "e", {"pool": {"timeout": 1234}})),
    ]
    for tune in tunes:
        tune.start()
    for tune in tunes:
        tune.join()
    pool = layer.endpoint_settings("svc", "e")["pool"]
    assert (pool["queue"], pool["timeout"]) == (7, 1234)


def test_tune_on_a_read_only_mount_names_the_file_and_the_mount(
    layer: ServiceLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A ConfigMap mount: the error named the temp file (".e.json.xxxx.tmp") with "[Errno 30]".
    def read_only(path: Path, data: bytes, *, mode: int = 0o644) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path.parent / ".e.json.x.tmp"))

    monkeypatch.setattr("lightnode.config.load.write_file_atomically", read_only)
    path = layer.data_dir.endpoint_config_path("svc", "e")
    with pytest.raises(LightnodeError) as info:
        layer.tune("svc", "e", {"pool": {"ceil": 3}})
    assert info.value.message == (
        f"cannot write {path}: Read-only file system (a read-only mount, e.g. a Kubernetes"
        " ConfigMap: change the tuning where it comes from)"
    )
