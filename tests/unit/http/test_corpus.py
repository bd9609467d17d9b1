"""gunicorn's raw request corpus, fed whole and byte by byte (SPEC §3.4).

valid/*.http must become exchanges (any answer but 400); invalid/*.http must get
400 (431 for header limits) or a close. The corpus lives next to the repository
(`../shared/corpus/gunicorn-http-requests`, see its README.md) and is not copied
here; the tests skip when it is absent.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
from http_fakes import Connection, connect

from lightnode.config.model import ServerLimits

CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "corpus" / "gunicorn-http-requests"

# Outcomes: "parsed" (at least one exchange, no 400/431), "refused" (400/431 or a
# close without any exchange), "incomplete" (nothing yet: waiting for more bytes),
# "431" (refused for its head size).
#
# Cases judged differently from gunicorn's manifest, and why:
SPECIAL: dict[str, str] = {
    # valid for gunicorn, refused by lightnode's stricter parser (llhttp):
    "valid/009.http": "refused",  # Content-Length with Transfer-Encoding (identity): refused as a smuggling vector (RFC 9112 §6.1 allows it)
    "valid/013.http": "refused",  # whitespace around ";" in chunk extensions; nothing uses chunk extensions
    "valid/027.http": "refused",  # raw non-ASCII bytes in the request target; RFC 3986 needs percent-encoding
    "valid/028.http": "refused",  # space before the colon of a field name: RFC 9112 §5.1 says MUST reject (gunicorn needs a compat flag)
    "valid/031.http": "refused",  # method "-BLARGH": llhttp knows only registered methods; lightnode serves GET/POST
    "valid/031compat.http": "refused",  # same, lower case
    "valid/031compat2.http": "refused",  # same
    "valid/compat_obs_fold.http": "refused",  # obs-fold: a server may reject it (RFC 9112 §5.2); gunicorn needs a compat flag
    "valid/compat_obs_fold_huge.http": "refused",  # same
    "valid/pp_01.http": "refused",  # PROXY protocol preamble: not spoken, refused without harm
    "valid/pp_02.http": "refused",  # same
    "valid/pp_04.http": "refused",  # same
    "valid/pp_05.http": "refused",  # same
    "valid/099.http": "incomplete",  # the file holds 8599 of the 17914 body bytes its Content-Length announces
    # invalid for gunicorn because of gunicorn-only rules (non-default config):
    "invalid/019.http": "parsed",  # conflicting X-Forwarded-* scheme headers: lightnode does not read them
    "invalid/040.http": "parsed",  # "Transfer_Encoding"/"Content_Length" are just other names here: no CGI-style "_" to "-" mapping
    "invalid/chunked_07.http": "parsed",  # same
    "invalid/041.http": "parsed",  # two Content-Type lines: lightnode ignores Content-Type (SPEC §3.2)
    "invalid/013.http": "refused",  # filed under header limits, but it is an obs-fold, refused as such
}
# Other LimitRequest* cases come from gunicorn's own limits (request line 4094,
# 100 fields, 8190 per field). lightnode has one limit, max_header_bytes, on the
# whole head: they are judged by head size against it, once with the default and
# once with LOW_HEAD_LIMIT so that the large ones are refused.
LOW_HEAD_LIMIT = 4000


def decode(raw: bytes) -> bytes:
    """The corpus escape format (README.md)."""
    text = raw.replace(b"\r\n", b"").replace(b"\n", b"")
    text = text.replace(b"\\r\\n", b"\r\n").replace(b"\\0", b"\0")
    text = text.replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), text)


@cache
def manifest() -> dict[str, dict[str, object]]:
    if not (CORPUS / "MANIFEST.json").is_file():
        return {}
    files: dict[str, dict[str, object]] = json.loads((CORPUS / "MANIFEST.json").read_text())[
        "files"
    ]
    return files


def case_names() -> list[str]:
    return sorted(manifest()) or ["(corpus absent)"]


def expected(name: str, max_head: int) -> str:
    if name in SPECIAL:
        return SPECIAL[name]
    if str(manifest()[name]["expect"]).startswith("LimitRequest"):
        head = decode((CORPUS / name).read_bytes()).partition(b"\r\n\r\n")[0]
        return "431" if len(head) > max_head else "parsed"
    return "parsed" if name.startswith("valid/") else "refused"


def run(name: str, mode: str, limits: ServerLimits) -> tuple[Connection, bool]:
    c = connect(limits=limits)
    c.feed(decode((CORPUS / name).read_bytes()), mode)
    quiet = not c.app.exchanges and not c.transport.writes and not c.transport.closed
    c.eof()  # the client is done sending
    return c, quiet


def check(name: str, mode: str, limits: ServerLimits) -> None:
    if not manifest():
        pytest.skip(f"corpus not found at {CORPUS}")
    want = expected(name, limits.max_header_bytes)
    c, quiet = run(name, mode, limits)
    statuses = [r.status for r in c.responses()]
    assert c.transport.closed or c.transport.eof_written, "connection left open after EOF"
    if want == "parsed":
        assert c.app.exchanges, f"no exchange; answers {statuses}"
        assert 400 not in statuses and 431 not in statuses
    elif want == "incomplete":
        assert quiet and not c.app.exchanges and statuses == []
    elif want == "431":
        assert statuses[-1:] == [431] and not c.app.exchanges
    else:
        assert not c.app.exchanges, "a refused request reached the app"
        assert statuses[-1:] in ([400], [431]) or statuses == [], statuses


@pytest.mark.parametrize("mode", ["whole", "bytes"])
@pytest.mark.parametrize("name", case_names())
def test_corpus_default_limits(name: str, mode: str) -> None:
    check(name, mode, ServerLimits())


@pytest.mark.parametrize("mode", ["whole", "bytes"])
@pytest.mark.parametrize(
    "name",
    [n for n in case_names() if "Limit" in str(manifest().get(n, {}).get("expect"))] or ["(none)"],
)
def test_corpus_header_limits_low(name: str, mode: str) -> None:
    check(name, mode, ServerLimits(max_header_bytes=LOW_HEAD_LIMIT))


def test_low_limit_refuses_some_large_heads() -> None:
    if not manifest():
        pytest.skip(f"corpus not found at {CORPUS}")
    refused = [n for n in manifest() if expected(n, LOW_HEAD_LIMIT) == "431"]
    assert len(refused) >= 4, refused


def test_other_connections_keep_working_after_a_bad_one() -> None:
    if not manifest():
        pytest.skip(f"corpus not found at {CORPUS}")
    from lightnode.http.protocol import ServerState

    state = ServerState(ServerLimits())
    good = connect(state=state)
    for name in manifest():
        if name.startswith("invalid/"):
            bad = connect(state=state)
            bad.feed(decode((CORPUS / name).read_bytes()))
            bad.eof()
    good.feed(b"GET /still HTTP/1.1\r\n\r\n")
    assert [r.status for r in good.responses()] == [200]
    assert state.connections == {good.protocol}
