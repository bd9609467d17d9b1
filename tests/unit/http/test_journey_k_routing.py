"""What a /run path of the wrong shape is told (SPEC §3.4: a message to act on)."""

from __future__ import annotations

import pytest

from lightnode.http.routing import BadId, parse_path


def test_a_base_url_holding_the_api_prefix_is_named() -> None:
    """`APINodeClient("http://host:port/public/api/v1", "svc")`, the URL copied from a
    service's page: each request is /public/api/v1/public/api/v1/svc/<endpoint>/run."""
    with pytest.raises(BadId) as raised:
        parse_path(b"/public/api/v1/public/api/v1/svc/add/run")
    message = str(raised.value)
    assert "/public/api/v1/public/api/v1/svc/add/run" in message  # what was asked
    assert "expected /public/api/v1/<service>/<endpoint>/run" in message
    assert "base URL" in message and "http://host:port" in message


def test_a_run_path_of_the_wrong_shape_shows_the_path() -> None:
    with pytest.raises(BadId) as raised:
        parse_path(b"/public/api/v1/svc/run")
    message = str(raised.value)
    assert "/public/api/v1/svc/run" in message and "expected" in message
    assert "base URL" not in message


@pytest.mark.parametrize("path", [b"/public/api/v1/lnk_abcDEF123/run", b"/public/api/v1/svc/LNK%5Fabc/x/run"])
def test_a_run_path_holding_an_api_key_is_not_repeated_back(path: bytes) -> None:
    with pytest.raises(BadId) as raised:
        parse_path(path)
    message = str(raised.value)
    assert "abc" not in message.lower()
    assert message.startswith("Not found: a path holding an API key: expected /public/api/v1/<service>/<endpoint>/run")
