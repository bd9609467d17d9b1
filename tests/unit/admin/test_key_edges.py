"""Edges of API-key authentication: expired admin keys, the CLI's key transport (SPEC §9)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lightnode.admin.keys import KeyStore
from lightnode.admin.remote import RemoteAdmin, RemoteError
from lightnode.errors import LightnodeError


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "config" / "keys.json").load()


def test_an_expired_admin_key_does_not_reopen_the_admin_api(store: KeyStore) -> None:
    """Expiry locks a key out; it must not turn the admin API back into keyless loopback access."""
    _, key = store.create(admin=True, expiry=int((time.time() - 60) * 1000))
    with pytest.raises(LightnodeError) as info:
        store.check_admin_request(None, "127.0.0.1")
    assert info.value.error_type == "Unauthorized"
    with pytest.raises(LightnodeError) as info:
        store.check_admin_request(b"Bearer " + key.encode(), "127.0.0.1")
    assert info.value.error_type == "Unauthorized"
    with pytest.raises(LightnodeError) as info:  # off loopback: the key is unknown, not "no admin key exists"
        store.check_admin_request(b"Bearer " + key.encode(), "10.1.2.3")
    assert info.value.error_type == "Unauthorized"
    _, fresh = store.create(admin=True)
    assert store.check_admin_request(b"Bearer " + fresh.encode(), "10.1.2.3") is not None


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\t"])
def test_a_key_with_surrounding_whitespace_is_sent_trimmed(suffix: str) -> None:
    """A key read from a file or an env file keeps its line end; it is not part of the key."""
    secret = "lnk_" + "s" * 43
    with pytest.raises(RemoteError) as info:
        RemoteAdmin("http://127.0.0.1:1", secret + suffix).call("GET", "services")
    assert "cannot reach http://127.0.0.1:1" in str(info.value)
    assert secret[4:] not in str(info.value)


@pytest.mark.parametrize("bad", ["lnk_ab\ncd", "lnk_ab\x00cd", "lnk_ab\u2019cd"])
def test_a_key_that_cannot_travel_in_a_header_is_refused_without_echoing_it(bad: str) -> None:
    with pytest.raises(RemoteError) as info:
        RemoteAdmin("http://127.0.0.1:1", bad).call("GET", "services")
    message = str(info.value)
    assert "admin key" in message and "cannot reach" not in message
    assert "ab" not in message.replace("admin", "")
