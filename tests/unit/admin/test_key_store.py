"""API keys: hashing, transport, scopes, hot reload, audit without secrets (SPEC §9)."""

from __future__ import annotations

import base64
import json
import logging
import stat
from pathlib import Path

import pytest

from lightnode.admin.keys import KeyStore, parse_keys_file, presented_key
from lightnode.errors import ConfigError, LightnodeError


def basic(user: str, password: str = "") -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "config" / "keys.json").load()


def test_presented_key_transports() -> None:
    assert presented_key(basic("lnk_abc")) == "lnk_abc"  # what dataikuapi sends
    assert presented_key(basic("", "lnk_abc")) == "lnk_abc"
    assert presented_key(b"Bearer lnk_abc") == "lnk_abc"
    assert presented_key(b"bearer   lnk_abc ") == "lnk_abc"
    for bad in (None, b"", b"Basic !!!notbase64", b"Digest x", b"Bearer ", basic("")):
        assert presented_key(bad) is None


def test_keys_are_stored_only_as_hashes_with_private_mode(store: KeyStore) -> None:
    entry, key = store.create(admin=False, service_id="svc", label="ci")
    text = store.path.read_text()
    assert key not in text and key[4:20] not in text
    raw = json.loads(text)["keys"][0]
    assert raw["hash"].startswith("sha256:") and raw["id"] == entry.id
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert key.startswith("lnk_") and len(key) >= 40
    assert "key" not in entry.to_public_json() and "hash" not in entry.to_public_json()


def test_service_keys_open_only_their_service(store: KeyStore) -> None:
    _, key = store.create(admin=False, service_id="svc")
    assert store.check_service_request(basic(key), "svc", "10.0.0.1").service_id == "svc"
    assert store.check_service_request(b"Bearer " + key.encode(), "svc", "10.0.0.1")
    for auth, service in ((basic(key), "other"), (basic(key + "x"), "svc"), (None, "svc"), (b"Bearer nope", "svc")):
        with pytest.raises(LightnodeError) as info:
            store.check_service_request(auth, service, "10.0.0.1")
        assert info.value.status == 401 and info.value.message == "Unknown API key"
        assert dict(info.value.headers)["WWW-Authenticate"].startswith("Basic")


def test_admin_api_is_loopback_only_until_an_admin_key_exists(store: KeyStore) -> None:
    assert store.check_admin_request(None, "127.0.0.1") is None
    assert store.check_admin_request(None, "::1") is None
    with pytest.raises(LightnodeError) as info:
        store.check_admin_request(None, "192.0.2.7")
    assert info.value.status == 403
    _, service_key = store.create(admin=False, service_id="svc")
    assert store.check_admin_request(None, "127.0.0.1") is None  # a service key changes nothing
    entry, admin_key = store.create(admin=True)
    for auth in (None, basic(service_key), basic("lnk_wrong")):
        with pytest.raises(LightnodeError) as info:
            store.check_admin_request(auth, "127.0.0.1")
        assert info.value.status == 401
    assert store.check_admin_request(basic(admin_key), "192.0.2.7") == entry
    store.delete_by_id(entry.id)
    assert store.check_admin_request(None, "127.0.0.1") is None  # all admin keys gone: loopback again


def test_delete_by_id_and_by_key(store: KeyStore) -> None:
    a, key_a = store.create(admin=True, label="a")
    b, key_b = store.create(admin=False, service_id="s")
    assert store.delete_by_key(key_b).id == b.id
    assert store.delete_by_id(a.id).id == a.id
    assert store.entries() == ()
    with pytest.raises(KeyError):
        store.delete_by_id(a.id)
    with pytest.raises(KeyError):
        store.delete_by_key(key_a)
    assert store.match(key_a) is None


def test_two_stores_on_one_file_never_lose_each_others_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    cli, node = KeyStore(path).load(), KeyStore(path).load()
    _, key1 = cli.create(admin=True)
    _, key2 = node.create(admin=False, service_id="s")
    assert len(KeyStore(path).load().entries()) == 2
    assert node.match(key1) is not None and node.match(key2) is not None


def test_reload_refuses_a_broken_file_and_keeps_the_last_good_keys(store: KeyStore, caplog: pytest.LogCaptureFixture) -> None:
    _, key = store.create(admin=False, service_id="s")
    store.path.write_text("{broken")
    assert isinstance(store.reload(), ConfigError)
    assert store.match(key) is not None
    store.path.write_text(json.dumps({"keys": []}))
    assert store.reload() is None and store.match(key) is None
    with pytest.raises(ConfigError):
        store.path.write_text("[]")
        KeyStore(store.path).load()


def test_expired_keys_are_refused(store: KeyStore) -> None:
    _, old = store.create(admin=False, service_id="s", expiry="2001-01-01T00:00:00Z")
    _, fresh = store.create(admin=False, service_id="s", expiry=4102444800000)  # epoch ms, 2100
    assert store.match(old) is None
    assert store.match(fresh) is not None
    with pytest.raises(ValueError):
        store.create(admin=True, expiry="next tuesday")


def test_key_file_validation_lists_every_problem() -> None:
    raw = {"keys": [{"id": "../x", "hash": "md5:00"}, {"id": "k1", "hash": "sha256:" + "0" * 64, "admin": False}],
           "extra": 1}
    with pytest.raises(ConfigError) as info:
        parse_keys_file(raw, source="keys.json")
    text = str(info.value)
    assert "keys[0].id" in text and "keys[0].hash" in text and "keys[1]" in text and "extra" in text


def test_failures_are_logged_without_the_key(store: KeyStore, caplog: pytest.LogCaptureFixture) -> None:
    _, key = store.create(admin=False, service_id="s")
    caplog.set_level(logging.INFO, logger="lightnode.audit")
    with pytest.raises(LightnodeError):
        store.check_service_request(basic(key), "other", "10.1.2.3")
    with pytest.raises(LightnodeError):
        store.check_service_request(basic(key[:-1]), "s", "10.1.2.3")
    assert "10.1.2.3" in caplog.text and "auth failure" in caplog.text
    assert key not in caplog.text and key[:-1] not in caplog.text


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [
        (None, "No API key sent: send the key as the HTTP Basic user name or as Authorization: Bearer KEY"),
        (b"Token abc", "Authorization scheme 'Token' is not supported: send the key as"),
        (b"lnk_" + b"a" * 43, "The Authorization header holds no scheme: send the key as"),
        (b"Bearer ", "The Authorization header's Bearer credentials hold no key: send the key as"),
        (b"Basic !!!notbase64", "The Authorization header's Basic credentials hold no key: send the key as"),
        (b"Bearer lnk_wrong", "Unknown API key"),
    ],
)
def test_a_refusal_says_when_no_key_came_or_came_in_a_way_not_read(
    store: KeyStore, authorization: bytes | None, detail: str
) -> None:
    """A right key sent the wrong way (curl -H "Authorization: $KEY") was told the key is
    unknown. The message stays SPEC §3.4's; detailedMessage tells, never echoing a key."""
    with pytest.raises(LightnodeError) as info:
        store.check_service_request(authorization, "s", "10.1.2.3")
    error = info.value
    assert (error.status, error.error_type, error.message) == (401, "Unauthorized", "Unknown API key")
    assert error.detailed_message.startswith(detail)
    assert "lnk_" not in error.detailed_message


def test_refusals_are_logged_once_per_client_per_interval_with_a_count(
    store: KeyStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client retrying a stale key in a loop wrote one audit line per request (200,000
    lines, 28 MB, for as many requests), rotating the log's history away."""
    from lightnode.admin import keys

    now = [1000.0]
    monkeypatch.setattr(keys.time, "monotonic", lambda: now[0])
    caplog.set_level(logging.INFO, logger="lightnode.audit")
    for _ in range(100):
        with pytest.raises(LightnodeError):
            store.check_service_request(None, "s", "10.1.2.3")
    with pytest.raises(LightnodeError):
        store.check_service_request(None, "s", "10.9.9.9")  # another client: its own line
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["auth failure: service s from 10.1.2.3: no key", "auth failure: service s from 10.9.9.9: no key"]
    now[0] += keys.AUTH_LOG_INTERVAL_S
    with pytest.raises(LightnodeError):
        store.check_service_request(None, "s", "10.1.2.3")
    assert caplog.records[-1].getMessage() == (
        "auth failure: service s from 10.1.2.3: no key (and 99 more refused from this client since its last line)"
    )
