"""Paths -> routes, id validation before any lookup, GET query typing."""

from __future__ import annotations

import pytest

from lightnode.http.routing import BadId, Route, RouteKind, parse_path, query_to_object


@pytest.mark.parametrize(
    ("path", "route"),
    [
        (b"/public/api/v1/demo/quote/run", Route(RouteKind.RUN, "demo", "quote")),
        (b"/public/api/v1/a.b-c_d/E1/run", Route(RouteKind.RUN, "a.b-c_d", "E1")),
        (b"/public/api/v1/ping", Route(RouteKind.PING)),
        (b"/isAlive", Route(RouteKind.IS_ALIVE)),
        (b"/healthz", Route(RouteKind.IS_ALIVE)),
        (b"/readyz", Route(RouteKind.READY)),
        (b"/metrics", Route(RouteKind.METRICS)),
        (b"/admin/api/services/demo/stats", Route(RouteKind.ADMIN, rest="services/demo/stats")),
    ],
)
def test_known_paths(path: bytes, route: Route) -> None:
    assert parse_path(path) == route


@pytest.mark.parametrize("path", [b"/", b"/public/api/v1/demo/quote", b"/public/api/v2/x/y/run", b"/run"])
def test_unknown_paths(path: bytes) -> None:
    assert parse_path(path) is None


@pytest.mark.parametrize(
    "path",
    [
        b"/public/api/v1/../quote/run",
        b"/public/api/v1/%2e%2e/quote/run",
        b"/public/api/v1/demo/../run",
        b"/public/api/v1/demo/a%2fb/run",
        b"/public/api/v1/.hidden/quote/run",
        b"/public/api/v1/" + b"a" * 65 + b"/quote/run",
        b"/public/api/v1/demo/x/y/run",
        b"/public/api/v1/demo//run",
        b"/public/api/v1/d%00/q/run",
    ],
)
def test_bad_ids_are_refused_before_lookup(path: bytes) -> None:
    with pytest.raises(BadId):
        parse_path(path)


def test_bad_id_messages_use_dss_wording() -> None:
    with pytest.raises(BadId, match="Service .. does not exist"):
        parse_path(b"/public/api/v1/../q/run")
    with pytest.raises(BadId, match="Endpoint does not exist: .x"):
        parse_path(b"/public/api/v1/demo/.x/run")


def test_query_typing() -> None:
    assert query_to_object(b"a=1&b=x&c=true&d=false&e=null&f=2.5&g=&h=%20s&i=nan") == {
        "a": 1, "b": "x", "c": True, "d": False, "e": None, "f": 2.5, "g": "", "h": " s", "i": "nan",
    }
