"""Journey P (security review): the admin layer's answers to what an operator really types."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightnode.admin.service_layer import ServiceLayer
from lightnode.errors import LightnodeError
from lightnode.services.store import DataDir


def test_importing_a_directory_or_a_device_says_what_it_is(tmp_path: Path) -> None:
    # `admin import S ./src` (the source dir where its zip belongs) said "No such
    # archive: ./src" of a directory that plainly exists.
    data = DataDir(tmp_path / "data")
    data.ensure_layout()
    layer = ServiceLayer(data)
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(LightnodeError, match=r"is a directory, not a package zip: .*lightnode package"):
        layer.import_archive("s", src)
    with pytest.raises(LightnodeError, match="is not a regular file"):
        layer.import_archive("s", Path("/dev/null"))
    with pytest.raises(LightnodeError, match="No such archive"):
        layer.import_archive("s", tmp_path / "missing.zip")


@pytest.mark.parametrize(
    "url",
    [
        "http://lnk_SECRETKEY@127.0.0.1:12000",
        "http://admin:lnk_SECRETKEY@127.0.0.1:12000",
        "http://127.0.0.1:12000/?key=lnk_SECRETKEY",
        "http://127.0.0.1:12000/#lnk_SECRETKEY",
    ],
)
def test_a_url_holding_credentials_or_a_query_is_refused_without_echoing_them(url: str) -> None:
    # `--url http://KEY@host:port` was accepted, then failed as "cannot reach
    # http://KEY@host:port: Name or service not known" (urllib resolves "KEY@host"),
    # printing the key into the terminal or a CI log; a query or fragment was glued
    # before /admin/api/ and the node answered "Not found: /".
    import argparse

    from lightnode.admin.remote import http_url

    with pytest.raises(argparse.ArgumentTypeError) as info:
        http_url(url)
    assert "SECRETKEY" not in str(info.value)
    assert "--key" in str(info.value) or "query" in str(info.value)


def test_a_plain_url_and_a_path_prefix_are_accepted() -> None:
    from lightnode.admin.remote import http_url

    assert http_url("http://127.0.0.1:12000") == "http://127.0.0.1:12000"
    assert http_url("https://proxy.example/lightnode/") == "https://proxy.example/lightnode/"
