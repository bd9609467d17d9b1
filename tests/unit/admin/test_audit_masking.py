"""Secrets never reach the audit log or an error message (SPEC §9): the path masks of the admin API."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightnode.admin.routes import _public_path, mask_secrets
from lightnode.admin.service_layer import ServiceLayer
from lightnode.errors import LightnodeError
from lightnode.services.store import DataDir

KEY = "lnk_9xfPq2b-Zr_0aa1bb2cc3dd4ee5ff6gg7hh8ii9jj0kk"


@pytest.mark.parametrize(
    ("rest", "public"),
    [
        (f"keys/{KEY}", "keys/<key>"),
        (f"keys/{KEY}/key", "keys/<key>/key"),  # a key given where its id belongs
        (f"keys%2F{KEY}", "keys/<key>"),  # the raw path: routing decodes %2F
        (f"keys/lnk%5F{KEY[4:]}", "keys/<key>"),
        (f"keys/lnk%255F{KEY[4:]}", "keys/<key>"),  # encoded twice
        (f"services/{KEY}/actions/enable", "services/<key>/actions/enable"),
        ("keys/k0123456789ab/key", "keys/k0123456789ab/key"),  # an id is no secret
        ("services/demo/actions/enable", "services/demo/actions/enable"),
    ],
)
def test_every_segment_that_looks_like_a_key_is_masked(rest: str, public: str) -> None:
    assert _public_path(rest) == public


def test_messages_are_scrubbed_of_keys() -> None:
    assert KEY not in mask_secrets(f"No API key with id {KEY}")
    assert mask_secrets("Service demo does not exist") == "Service demo does not exist"


def test_deleting_by_id_never_echoes_a_key(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "d")
    data.ensure_layout()
    layer = ServiceLayer(data)
    key = layer.create_key(label="ops")["key"]
    with pytest.raises(LightnodeError) as info:
        layer.delete_key_by_id(key)
    assert info.value.status == 404 and key not in info.value.message and key[4:12] not in info.value.message
    assert "DELETE keys/<key>" in info.value.message  # says how to delete by the key itself
    with pytest.raises(LightnodeError) as info:
        layer.delete_key_by_id("k000000000000")
    assert "k000000000000" in info.value.message  # an id may be named


def test_remote_messages_mask_keys_in_any_segment() -> None:
    from urllib.parse import quote

    from lightnode.admin.remote import _public

    assert _public(f"keys/{quote(KEY, safe='')}") == "keys/<key>"
    assert _public(f"keys/{quote(KEY, safe='')}/key") == "keys/<key>/key"
    assert _public("services/demo/actions/enable") == "services/demo/actions/enable"
