"""API keys on a live node: private services, admin keys, hot reload, no secret on disk or in logs (SPEC §9)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import dataikuapi
import pytest
from dataikuapi.utils import DataikuException

from lightnode.cli import main
from tests.conftest import Node, write_service
from tests.conftest import until as wait_for

pytestmark = pytest.mark.integration

SOURCE = "def e(x=0):\n    return {'x': x}\n"


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create_key(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["admin", "keys", "create", *argv]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    return out.strip()




def all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.fixture
def node(node_factory: Any, tmp_path: Path) -> Node:
    root = tmp_path / "data"
    write_service(root, "priv", {"e": SOURCE}, extra={"auth": {"public": False}})
    write_service(root, "other", {"e": SOURCE}, extra={"auth": {"public": False}})
    write_service(root, "pub", {"e": SOURCE})
    return node_factory(root)  # type: ignore[no-any-return]


def test_private_service_needs_its_key(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert node.run("pub", "e")[0] == 200
    for headers in ({}, basic("lnk_not-a-key"), bearer("lnk_not-a-key"), {"Authorization": "Digest x"}):
        status, answer_headers, raw = node.request("POST", "/public/api/v1/priv/e/run", b"{}", headers=headers)
        assert status == 401
        assert answer_headers["WWW-Authenticate"].startswith("Basic")
        assert json.loads(raw)["errorType"] == "Unauthorized" and json.loads(raw)["message"] == "Unknown API key"
    # 401 comes before anything is told about the service's state
    assert node.request("POST", "/public/api/v1/priv/nope/run", b"{}")[0] == 401

    key = create_key(capsys, "--service", "priv", "--label", "ci", "--data-dir", str(node.data_dir))
    wait_for(lambda: node.run("priv", "e", headers=basic(key))[0] == 200)  # hot-reloaded
    assert node.run("priv", "e", {"x": 2}, headers=bearer(key)) [1]["response"] == {"x": 2}
    client = dataikuapi.APINodeClient(node.url, "priv", api_key=key)  # the official client: Basic auth
    assert client.run_function("e", x=3)["response"] == {"x": 3}
    assert node.run("other", "e", headers=basic(key))[0] == 401  # a key opens its own service only
    with pytest.raises(DataikuException, match="Unauthorized"):
        dataikuapi.APINodeClient(node.url, "priv", api_key=key + "x").run_function("e")

    assert main(["admin", "keys", "list", "--data-dir", str(node.data_dir)]) == 0
    key_id = capsys.readouterr().out.split("\t")[0]
    assert main(["admin", "keys", "delete", key_id, "--data-dir", str(node.data_dir)]) == 0
    wait_for(lambda: node.run("priv", "e", headers=basic(key))[0] == 401)

    log = node.log() + (node.data_dir / "logs" / "lightnode.log").read_text()
    assert "auth failure: service priv" in log
    assert key.encode() not in all_bytes(node.data_dir)  # keys.json holds hashes, logs hold fingerprints
    assert key not in log


def test_admin_keys_protect_the_admin_api(node: Node, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert node.request("GET", "/admin/api/services")[0] == 200  # no admin key: loopback is enough
    key = create_key(capsys, "--admin", "--label", "ops", "--data-dir", str(node.data_dir))
    wait_for(lambda: node.request("GET", "/admin/api/services")[0] == 401)
    status, headers, raw = node.request("GET", "/admin/api/services", headers=basic("lnk_wrong"))
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert node.request("GET", "/admin/api/services", headers=bearer(key))[0] == 200
    admin = dataikuapi.APINodeAdminClient(node.url, key)
    assert {s["id"] for s in admin.list_services()} == {"priv", "other", "pub"}
    service_key = admin.auth().add_key(label="svc")["key"]
    with pytest.raises(DataikuException, match="Unauthorized"):
        dataikuapi.APINodeAdminClient(node.url, "lnk_" + "x" * 43).list_services()

    assert main(["admin", "services", "--url", node.url]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    monkeypatch.setenv("LIGHTNODE_ADMIN_KEY", key)  # keeps the key out of the process list
    assert main(["admin", "services", "--url", node.url]) == 0
    assert "priv" in capsys.readouterr().out
    assert main(["admin", "status", "--data-dir", str(node.data_dir)]) == 0  # through run/lightnode.addr

    log = node.log() + (node.data_dir / "logs" / "lightnode.log").read_text()
    assert "admin auth failure from 127.0.0.1" in log
    assert "admin POST keys by admin key" in log  # mutations are audited, by key id
    for secret in (key, service_key):
        assert secret not in log
        assert secret.encode() not in all_bytes(node.data_dir)


def test_a_broken_keys_file_keeps_the_last_good_keys(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    key = create_key(capsys, "--service", "priv", "--data-dir", str(node.data_dir))
    wait_for(lambda: node.run("priv", "e", headers=basic(key))[0] == 200)
    keys_file = node.data_dir / "config" / "keys.json"
    keys_file.write_text("{not json")
    wait_for(lambda: "keys refused" in node.log(), what="the watcher to refuse the broken keys.json")
    assert node.run("priv", "e", headers=basic(key))[0] == 200


def test_a_key_in_an_admin_path_is_never_logged_nor_echoed(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """A key given where its id belongs, or behind an encoded slash, stays out of the logs (SPEC §9)."""
    key = create_key(capsys, "--service", "priv", "--data-dir", str(node.data_dir))
    other = create_key(capsys, "--service", "priv", "--data-dir", str(node.data_dir))
    wait_for(lambda: node.run("priv", "e", headers=basic(other))[0] == 200)
    status, _, raw = node.request("DELETE", f"/admin/api/keys/{key}/key")  # the key, not its id
    assert status == 404 and key not in raw.decode() and key[4:16] not in raw.decode()
    # An encoded slash: whether routing reads it as keys/<key> (a delete) or as one segment
    # (404), the key must not show.
    status, _, raw = node.request("DELETE", f"/admin/api/keys%2F{other}")
    assert status in (200, 404) and other not in raw.decode() and other[4:16] not in raw.decode()
    status, _, raw = node.request("POST", f"/admin/api/services/{key}%21/actions/enable")
    assert status == 404 and key not in raw.decode()
    assert node.run("priv", "e", headers=basic(key))[0] == 200  # still valid: it was never deleted
    time.sleep(0.2)  # the audit lines are written
    log = node.log() + (node.data_dir / "logs" / "lightnode.log").read_text()
    assert "admin DELETE keys/<key>/key" in log  # audited, masked
    for secret in (key, other):
        assert secret not in log and secret[4:16] not in log


def test_an_expired_admin_key_keeps_the_admin_api_locked(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """When the only admin key expires, the admin API stays closed: loopback needs a key too (SPEC §9)."""
    # Whole seconds: 4 to 5 s from now, time enough for the watcher to load the key and
    # for one call with it on a busy machine before it expires.
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5))
    key = create_key(capsys, "--admin", "--expiry", expiry, "--data-dir", str(node.data_dir))
    wait_for(lambda: node.request("GET", "/admin/api/services")[0] == 401)
    assert node.request("GET", "/admin/api/services", headers=bearer(key))[0] == 200
    wait_for(lambda: node.request("GET", "/admin/api/services", headers=bearer(key))[0] == 401)
    status, headers, raw = node.request("GET", "/admin/api/services")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert json.loads(raw)["message"] == "Unknown API key"
    # The files are the way back in: a new admin key by --data-dir.
    fresh = create_key(capsys, "--admin", "--data-dir", str(node.data_dir))
    wait_for(lambda: node.request("GET", "/admin/api/services", headers=bearer(fresh))[0] == 200)


def test_the_cli_sends_a_key_from_an_env_file_and_says_when_none_was_given(
    node: Node, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = create_key(capsys, "--admin", "--data-dir", str(node.data_dir))
    wait_for(lambda: node.request("GET", "/admin/api/services")[0] == 401)
    monkeypatch.delenv("LIGHTNODE_ADMIN_KEY", raising=False)
    assert main(["admin", "keys", "list", "--url", node.url]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401: Unknown API key" in err and "no admin key given" in err and "LIGHTNODE_ADMIN_KEY" in err
    assert main(["admin", "keys", "list", "--url", node.url, "--key", "lnk_wrong"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401: Unknown API key" in err and "no admin key given" not in err
    # A key read from a file edited on Windows ends with "\r\n": it is still the key.
    monkeypatch.setenv("LIGHTNODE_ADMIN_KEY", key + "\r\n")
    assert main(["admin", "keys", "list", "--url", node.url]) == 0
    assert "\tadmin\t" in capsys.readouterr().out
    assert main(["admin", "keys", "list", "--url", node.url, "--key", key[:10] + "\n" + key[10:]]) == 1
    err = capsys.readouterr().err
    assert "admin key" in err and key[4:10] not in err and key[10:] not in err


def test_post_keys_never_turns_a_mistyped_service_key_into_an_admin_key(node: Node) -> None:
    """POST keys without serviceId makes an admin key (dataikuapi's add_key): a typo must not get one."""
    for body in ({"service": "priv"}, {"admin": False}, {"admin": True, "serviceId": "priv"}, {"admin": "no"}):
        status, _, raw = node.request("POST", "/admin/api/keys", json.dumps(body).encode())
        assert status == 400, (body, raw)
        assert json.loads(raw)["errorType"] == "BadRequest" and "lnk_" not in raw.decode()
    assert json.loads(node.get("/admin/api/keys")[1]) == []  # nothing was created
    status, _, raw = node.request("POST", "/admin/api/keys", json.dumps({"admin": False, "serviceId": "priv"}).encode())
    assert status == 200 and json.loads(raw)["serviceId"] == "priv"
    status, _, raw = node.request("POST", "/admin/api/keys", json.dumps({"admin": True, "label": "ops"}).encode())
    assert status == 200 and json.loads(raw)["admin"] is True
