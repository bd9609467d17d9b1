"""The admin API against a live node, with the official client and with the CLI (SPEC §5, §6, §8, §9)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import dataikuapi
import pytest
from dataikuapi.utils import DataikuException

from lightnode.cli import main
from tests.conftest import Node, build_test_package, tree_listing
from tests.conftest import until as wait_for

pytestmark = pytest.mark.integration

SOURCE = "def e(x=0):\n    return {'x': x}\n"


def generation_of(node: Node, service: str = "pricing") -> tuple[int, str | None]:
    status, body = node.run(service, "e", {"x": 1})
    return status, body.get("apiContext", {}).get("serviceGeneration") if status == 200 else body.get("errorType")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_admin_client_method(node_factory: Any, tmp_path: Path) -> None:
    node = node_factory()
    g1 = build_test_package(tmp_path, "pricing", "g1", {"e": SOURCE})
    g2 = build_test_package(tmp_path, "pricing", "g2", {"e": SOURCE})
    client = dataikuapi.APINodeAdminClient(node.url, None)  # no admin key yet: loopback is enough

    client.create_service("pricing")
    listed = {s["id"]: s for s in client.list_services()}
    assert listed["pricing"]["enabled"] is False and listed["demo"]["enabled"] is True
    service = client.service("pricing")
    service.import_generation_from_archive(str(g1))
    gens = service.list_generations()
    assert [(g["generationId"], g["mapped"], g["mounted"]) for g in gens] == [("g1", False, False)]
    assert "createdOn" in gens[0]
    assert generation_of(node) == (503, "ServiceNotActive")

    assert service.switch_to_newest() == {"switchedToGeneration": "g1", "serviceId": "pricing",
                                          "enabled": True, "mapping": {"entries": [{"generation": "g1", "proba": 1.0}]}}
    assert generation_of(node) == (200, "g1")  # answered once the switch was applied
    service.import_generation_from_archive(str(g2))
    service.preload_generation("g2")
    service.switch_to_single_generation("g2")
    assert generation_of(node) == (200, "g2")
    mounted = {g["generationId"]: g["mounted"] for g in service.list_generations()}
    assert mounted == {"g1": False, "g2": True}

    service.set_generations_mapping({"entries": [{"generation": "g1", "proba": 0.5}, {"generation": "g2", "proba": 0.5}]})
    seen = Counter(generation_of(node)[1] for _ in range(40))
    assert set(seen) == {"g1", "g2"}

    service.disable()
    assert generation_of(node) == (503, "ServiceNotActive")
    service.enable()
    assert generation_of(node)[0] == 200

    metrics = client.get_metrics()
    assert {(e["serviceId"], e["generation"]) for e in metrics["endpoints"]} >= {("pricing", "g1"), ("pricing", "g2")}
    assert sum(e["served"] for e in metrics["endpoints"] if e["serviceId"] == "pricing") >= 1  # since enable

    auth = client.auth()
    assert auth.list_keys() == []
    first = auth.add_key(label="ops", description="operators", created_by="test")
    assert first["key"].startswith("lnk_") and first["label"] == "ops" and first["admin"] is True
    with pytest.raises(DataikuException, match="Unauthorized: No API key sent: send the key as the HTTP Basic user name"):
        client.list_services()  # an admin key exists now: loopback alone is not enough
    admin = dataikuapi.APINodeAdminClient(node.url, first["key"])
    second = admin.auth().add_key(label="ci")
    assert {k["id"] for k in admin.auth().list_keys()} == {first["id"], second["id"]}
    assert all("key" not in k for k in admin.auth().list_keys())
    admin.auth().delete_key(second["key"])
    admin.auth().delete_key_by_id(first["id"])
    assert client.auth().list_keys() == []  # no admin key left: loopback again

    service.delete()
    assert "pricing" not in {s["id"] for s in client.list_services()}
    assert generation_of(node) == (404, "NotFound")
    assert not (node.data_dir / "services" / "pricing").exists()


def test_client_errors_are_clear(node_factory: Any, tmp_path: Path) -> None:
    node = node_factory()
    client = dataikuapi.APINodeAdminClient(node.url, None)
    with pytest.raises(DataikuException, match="NotFound: Service ghost does not exist"):
        client.service("ghost").switch_to_newest()
    client.create_service("s1")
    with pytest.raises(DataikuException, match="already exists"):
        client.create_service("s1")
    with pytest.raises(DataikuException, match="BadRequest"):
        client.create_service("../etc")
    with pytest.raises(DataikuException, match="Generation nope of service s1 does not exist"):
        client.service("s1").switch_to_single_generation("nope")
    with pytest.raises(DataikuException, match="No such archive"):
        client.service("s1").import_generation_from_archive(str(tmp_path / "missing.zip"))
    with pytest.raises(DataikuException, match="probabilities must sum to 1"):
        client.service("s1").set_generations_mapping({"entries": [{"generation": "a", "proba": 0.2}]})
    status, headers, body = node.request("GET", "/admin/api/services/s1/actions/enable")
    assert status == 405 and headers["Allow"] == "POST"
    assert node.request("GET", "/admin/api/nothing/here")[0] == 404
    assert node.request("POST", "/admin/api/services/bad%21id/actions/enable")[0] == 404
    assert node.request("POST", "/admin/api/services/%2E%2E/actions/enable")[0] == 404


def test_endpoint_settings_route_and_tune_url(node_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    node = node_factory()
    status, _, body = node.request("GET", "/admin/api/services/demo/endpoints/quote/settings")
    assert status == 200 and json.loads(body)["pool"]["floor"] == 1
    bad = {"pool": {"floor": 3, "ceil": 2, "extra": 1}, "limits": {"max_requests": -1}}
    status, _, body = node.request("POST", "/admin/api/services/demo/endpoints/quote/settings", json.dumps(bad).encode())
    message = json.loads(body)["message"]
    assert status == 400 and "pool.extra" in message and "limits.max_requests" in message and "ceil" in message
    tuning = node.data_dir / "config" / "services" / "demo" / "quote.json"
    assert not tuning.exists()
    twice = b'{"pool": {"ceil": 2, "ceil": 4}}'
    status, _, body = node.request("POST", "/admin/api/services/demo/endpoints/quote/settings", twice)
    assert status == 400 and "pool.ceil: duplicate key" in json.loads(body)["message"]
    status, _, body = node.request("POST", "/admin/api/services/demo/endpoints/quote/settings", b'{"pool": ')
    assert status == 400 and "not valid JSON: line 1, column" in json.loads(body)["message"]
    assert not tuning.exists()
    code, out, _ = cli(capsys, "admin", "tune", "demo", "quote", "--ceil", "3", "--floor", "2", "--url", node.url)
    assert code == 0 and json.loads(out)["pool"]["ceil"] == 3
    assert json.loads(tuning.read_text())["pool"] == {**json.loads(out)["pool"]}
    for _ in range(100):
        pool = node.stats("demo")["endpoints"][0]["config"]["pool"]
        if pool["floor"] == 2:
            break
        __import__("time").sleep(0.05)
    assert pool["floor"] == 2 and pool["ceil"] == 3


def test_tunes_at_once_through_the_admin_api_keep_every_change(
    node_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `admin tune --url` read the settings, overlaid its change and posted the whole
    # object: two at once both read the old file, and the later post lost the earlier
    # change (4 rounds of 5 lost one, each command exiting 0). The node overlays now.
    import threading
    import time

    from lightnode.admin.remote import RemoteAdmin

    node = node_factory()
    read = RemoteAdmin.endpoint_settings

    def slow_read(self: RemoteAdmin, service_id: str, endpoint_id: str) -> Any:
        settings = read(self, service_id, endpoint_id)
        time.sleep(0.3)  # every client is between its read and its write
        return settings

    monkeypatch.setattr(RemoteAdmin, "endpoint_settings", slow_read)
    changes = [{"pool": {"queue": 7}}, {"pool": {"timeout": 1234}}, {"limits": {"max_requests": 99}}, {"ceil": 5}]
    answers: list[Any] = []
    tunes = [
        threading.Thread(target=lambda c=c: answers.append(RemoteAdmin(node.url).tune("demo", "quote", c)))
        for c in changes
    ]
    for tune in tunes:
        tune.start()
    for tune in tunes:
        tune.join(30)
    assert len(answers) == len(changes)
    written = json.loads((node.data_dir / "config" / "services" / "demo" / "quote.json").read_text())
    assert (written["pool"]["queue"], written["pool"]["timeout"], written["pool"]["ceil"]) == (7, 1234, 5)
    assert written["limits"]["max_requests"] == 99
    status, _, body = node.request("POST", "/admin/api/services/demo/endpoints/quote/tune", b'{"pool": {"ceil": 0}}')
    assert status == 400 and "ceil" in json.loads(body)["message"]  # validated there, nothing written
    assert json.loads((node.data_dir / "config" / "services" / "demo" / "quote.json").read_text()) == written
    status, _, body = node.request("POST", "/admin/api/services/demo/endpoints/quote/tune", b"[1]")
    assert status == 400


def test_the_same_operations_through_the_cli(node_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = node_factory()
    g1 = build_test_package(tmp_path, "pricing", "g1", {"e": SOURCE})
    g2 = build_test_package(tmp_path, "pricing", "g2", {"e": SOURCE})
    url = ["--url", node.url]
    assert cli(capsys, "admin", "create", "pricing", *url)[0] == 0
    assert cli(capsys, "admin", "import", "pricing", str(g1), *url)[0] == 0
    code, out, _ = cli(capsys, "admin", "switch", "pricing", "--newest", *url)
    assert code == 0 and "switched to g1" in out
    assert generation_of(node) == (200, "g1")
    assert cli(capsys, "admin", "import", "pricing", str(g2), *url)[0] == 0
    assert cli(capsys, "admin", "switch", "pricing", "g2", *url)[0] == 0
    assert generation_of(node) == (200, "g2")
    code, out, _ = cli(capsys, "admin", "generations", "pricing", *url)
    assert code == 0 and out.splitlines()[1].startswith("g2") and "mounted" in out.splitlines()[1]
    assert cli(capsys, "admin", "set-mapping", "pricing", "g1=0.5", "g2=0.5", *url)[0] == 0
    assert {generation_of(node)[1] for _ in range(40)} == {"g1", "g2"}
    assert cli(capsys, "admin", "disable", "pricing", *url)[0] == 0
    assert generation_of(node) == (503, "ServiceNotActive")
    assert cli(capsys, "admin", "enable", "pricing", *url)[0] == 0
    code, out, _ = cli(capsys, "admin", "services", *url)
    assert "pricing\tenabled=True\tmapping=g1=0.5 g2=0.5" in out
    code, out, _ = cli(capsys, "admin", "metrics", *url)
    assert code == 0 and "endpoints" in json.loads(out)
    code, out, _ = cli(capsys, "admin", "keys", "create", "--admin", "--label", "ops", *url)
    key = out.strip()
    assert code == 0 and key.startswith("lnk_")
    code, _, err = cli(capsys, "admin", "services", *url)
    assert code == 1 and "HTTP 401" in err and "Traceback" not in err
    code, out, _ = cli(capsys, "admin", "keys", "list", *url, "--key", key)
    assert code == 0 and "admin" in out and key not in out
    assert cli(capsys, "admin", "delete", "pricing", *url, "--key", key)[0] == 0
    assert generation_of(node) == (404, "NotFound")
    assert cli(capsys, "admin", "keys", "delete", out.split("\t")[0], *url, "--key", key)[0] == 0
    assert cli(capsys, "admin", "services", *url)[0] == 0  # loopback again


def test_data_dir_commands_apply_live(node_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --data-dir the CLI writes files; the running node applies them through its watcher."""
    node = node_factory()
    d = ["--data-dir", str(node.data_dir)]
    src = tmp_path / "src"
    src.mkdir()
    (src / "e.py").write_text(SOURCE)
    (src / "service.json").write_text(json.dumps(
        {"id": "pricing", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py"}]}))
    assert cli(capsys, "deploy", str(src), *d, "--generation", "g1")[0] == 0
    wait_for(lambda: generation_of(node) == (200, "g1"))
    assert cli(capsys, "deploy", str(src), *d, "--generation", "g2")[0] == 0
    wait_for(lambda: generation_of(node) == (200, "g2"))
    assert cli(capsys, "admin", "disable", "pricing", *d)[0] == 0
    wait_for(lambda: generation_of(node) == (503, "ServiceNotActive"))
    assert cli(capsys, "admin", "switch", "pricing", "g1", *d)[0] == 0
    wait_for(lambda: generation_of(node) == (200, "g1"))
    code, out, _ = cli(capsys, "admin", "status", "pricing", *d)
    assert code == 0 and "service pricing: enabled=True mapping=[g1=1]" in out
    assert cli(capsys, "admin", "delete", "pricing", *d)[0] == 0
    wait_for(lambda: generation_of(node) == (404, "NotFound"))


def test_import_route_refuses_unsafe_archives_and_writes_nothing(node_factory: Any, tmp_path: Path) -> None:
    import io
    import zipfile

    node = node_factory()
    client = dataikuapi.APINodeAdminClient(node.url, None)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("service.json", "{}")
        zf.writestr("lightnode-package.json", json.dumps({"service": "x", "generation": "g1"}))
        zf.writestr("../../../escaped.py", "print('pwned')")
    archive = tmp_path / "slip.zip"
    archive.write_bytes(buf.getvalue())
    before, around = tree_listing(node.data_dir / "services"), tree_listing(node.data_dir.parent)
    with pytest.raises(DataikuException, match="BadRequest: .*path traversal"):
        client.service("x").import_generation_from_archive(str(archive))
    assert tree_listing(node.data_dir / "services") == before
    assert {p for p in tree_listing(node.data_dir.parent) - around if "escaped" in p} == set()




def test_a_refused_state_json_is_repaired_through_the_admin_api_and_the_cli(
    node_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """switch, set-mapping and disable write a whole new state: they never need the refused one (SPEC §6)."""
    node = node_factory()
    state = node.data_dir / "services" / "demo" / "state.json"
    url, d = ["--url", node.url], ["--data-dir", str(node.data_dir)]
    state.write_text("")
    code, out, err = cli(capsys, "admin", "generations", "demo", *url)
    assert code == 0 and out.startswith("v1\t") and "invalid JSON" in err
    code, _, err = cli(capsys, "admin", "enable", "demo", *url)
    assert code == 1 and "switch" in err and "set-mapping" in err and "Traceback" not in err
    code, out, err = cli(capsys, "admin", "switch", "demo", "v1", *url)
    assert code == 0 and "switched to v1" in out, err
    assert json.loads(state.read_text())["enabled"] is True
    for argv in (["switch", "demo", "--newest"], ["set-mapping", "demo", "v1=1"], ["disable", "demo"]):
        for where in (url, d):
            state.write_text("")
            code, _, err = cli(capsys, "admin", *argv, *where)
            assert code == 0, (argv, where, err)
            json.loads(state.read_text())  # a good state.json again
    assert json.loads(state.read_text()) == {"enabled": False, "mapping": {"entries": []}}
    assert cli(capsys, "admin", "switch", "demo", "v1", *url)[0] == 0
    wait_for(lambda: node.run("demo", "quote", {"age": 35, "days": 344, "price": 600})[0] == 200)
    assert node.stats("demo")["error"] is None


def test_a_refused_server_json_blocks_no_admin_data_dir_command_but_import(
    node_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = node_factory()
    server = node.data_dir / "config" / "server.json"
    server.write_text(json.dumps({"typo": 1}))  # on a running node: read at the next start only
    d = ["--data-dir", str(node.data_dir)]
    assert cli(capsys, "admin", "tune", "demo", "quote", "--ceil", "3", *d)[0] == 0
    code, key, _ = cli(capsys, "admin", "keys", "create", "--admin", *d)
    assert code == 0
    code, out, _ = cli(capsys, "admin", "keys", "list", *d)
    assert code == 0 and cli(capsys, "admin", "keys", "delete", out.split("\t")[0], *d)[0] == 0  # revoked
    assert cli(capsys, "admin", "disable", "demo", *d)[0] == 0
    code, out, _ = cli(capsys, "admin", "services", *d)
    assert code == 0 and "demo\tenabled=False" in out
    archive = build_test_package(tmp_path, "pricing", "g1", {"e": SOURCE})
    code, _, err = cli(capsys, "admin", "import", "pricing", str(archive), *d)
    assert code == 1 and f"{server}: typo: unknown key" in err and "Traceback" not in err


def test_tune_replaces_a_refused_tuning_file_on_the_values_in_force(
    node_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """SPEC §5: the node keeps its last good values; `tune` builds on them, by --url and by --data-dir."""
    node = node_factory()
    tuning = node.data_dir / "config" / "services" / "demo" / "quote.json"
    tuning.parent.mkdir(parents=True, exist_ok=True)
    tuning.write_text(json.dumps({"pool": {"floor": 2, "cruise": 3, "ceil": 5}}))
    wait_for(lambda: node.stats("demo")["endpoints"][0]["config"]["pool"]["cruise"] == 3)
    for where in (["--url", node.url], ["--data-dir", str(node.data_dir)]):
        tuning.write_text('{"pool": {"ceil": 4}')  # refused: the node keeps floor 2, cruise 3
        wait_for(lambda: node.stats("demo")["endpoints"][0]["lastConfigError"] is not None)
        code, out, err = cli(capsys, "admin", "tune", "demo", "quote", "--ceil", "4", *where)
        assert code == 0, err
        assert "replaced the refused tuning file" in out and "invalid JSON" in out and "in force" in out
        pool = json.loads(tuning.read_text())["pool"]
        assert (pool["floor"], pool["cruise"], pool["ceil"]) == (2, 3, 4)
        wait_for(lambda: node.stats("demo")["endpoints"][0]["lastConfigError"] is None)
        assert node.stats("demo")["endpoints"][0]["config"]["pool"]["ceil"] == 4


def test_tune_of_an_endpoint_without_a_file_names_the_file_in_its_errors(
    node_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    node = node_factory()
    tuning = node.data_dir / "config" / "services" / "demo" / "quote.json"
    for where in (["--url", node.url], ["--data-dir", str(node.data_dir)]):
        code, _, err = cli(capsys, "admin", "tune", "demo", "quote", "--floor", "9", *where)
        assert code == 1 and str(tuning) in err and "defaults:" not in err, err
    assert not tuning.exists()


def test_an_archive_with_a_file_and_a_directory_of_one_name_is_refused(node_factory: Any, tmp_path: Path) -> None:
    import io
    import zipfile

    node = node_factory()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("service.json", json.dumps(
            {"id": "x", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py"}]}))
        zf.writestr("e.py", SOURCE)
        zf.writestr("lightnode-package.json", json.dumps({"service": "x", "generation": "g1"}))
        zf.writestr("a", "a file")
        zf.writestr("a/b", "a member under it")
    archive = tmp_path / "clash.zip"
    archive.write_bytes(buf.getvalue())
    before = tree_listing(node.data_dir / "services")
    status, _, body = node.request(
        "POST", f"/admin/api/services/x/generations/actions/importFromArchive?filePath={archive}", b"")
    answer = json.loads(body)
    assert status == 400 and answer["errorType"] == "BadRequest", answer
    assert "member 'a'" in answer["message"] and "'a/b'" in answer["message"]
    assert ".import-" not in answer["message"] and str(node.data_dir) not in answer["message"]
    assert tree_listing(node.data_dir / "services") == before


def test_deploy_url_takes_the_admin_key_from_the_environment(
    node_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = node_factory()
    code, out, _ = cli(capsys, "admin", "keys", "create", "--admin", "--url", node.url)
    key = out.strip()
    wait_for(lambda: node.request("GET", "/admin/api/services")[0] == 401)
    src = tmp_path / "src"
    src.mkdir()
    (src / "e.py").write_text(SOURCE)
    (src / "service.json").write_text(json.dumps(
        {"id": "pricing", "endpoints": [{"id": "e", "type": "python-function", "code": "e.py"}]}))
    code, _, err = cli(capsys, "deploy", str(src), "--url", node.url, "--generation", "g1")
    assert code == 1 and "HTTP 401" in err
    monkeypatch.setenv("LIGHTNODE_ADMIN_KEY", key)
    code, out, err = cli(capsys, "deploy", str(src), "--url", node.url, "--generation", "g1")
    assert code == 0 and "deployed pricing generation g1" in out, err
    assert generation_of(node) == (200, "g1")
