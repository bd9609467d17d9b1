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


@pytest.mark.parametrize(
    ("query", "value"),
    [
        (b"v=0", 0),
        (b"v=-7", -7),
        (b"v=42", 42),
        (b"v=12345678901234567890123", 12345678901234567890123),
        (b"v=2.5", 2.5),
        (b"v=-0.125", -0.125),
        (b"v=1e3", 1000.0),
        (b"v=1.5E-2", 0.015),
        (b"v=2e%2B2", 200.0),
        (b"v=true", True),
        (b"v=false", False),
        (b"v=null", None),
    ],
)
def test_query_json_number_literals_are_typed(query: bytes, value: object) -> None:
    (typed,) = query_to_object(query).values()
    assert typed == value and type(typed) is type(value)


@pytest.mark.parametrize(
    "text",
    [
        "01234",  # a zip code keeps its leading zero
        "-01",
        "00",
        "1_000",  # int() accepts underscores; JSON does not
        " 42 ",  # nor surrounding whitespace
        "+5",
        "1.",
        ".5",
        "1.e3",
        "1e",
        "0x10",
        "inf",
        "Infinity",
        "NaN",
        "1e999",  # a literal, but no finite number
        "\u0661\u0662\u0663",  # Arabic-Indic digits: int() reads them as 123
        "\uff11\uff12",  # fullwidth digits: int() reads them as 12
        "True",
        "NULL",
        "1" * 5000,  # past int()'s digit limit
    ],
)
def test_query_values_that_are_no_json_number_stay_strings(text: str) -> None:
    from urllib.parse import quote

    assert query_to_object(b"v=" + quote(text).encode()) == {"v": text}


def test_query_typing_of_the_review_example() -> None:
    query = b"zip=01234&u=1_000&sp=%2042%20&arab=%D9%A1%D9%A2%D9%A3&full=%EF%BC%91%EF%BC%92&n=5"
    assert query_to_object(query) == {
        "zip": "01234", "u": "1_000", "sp": " 42 ", "arab": "\u0661\u0662\u0663", "full": "\uff11\uff12", "n": 5,
    }


@pytest.mark.parametrize(
    ("path", "rest"),
    [
        (b"/admin/api/services/demo%2Fstats", "services/demo%2Fstats"),
        (b"/admin/api/services/demo%2fstats", "services/demo%2Fstats"),
        (b"/admin/api/services/%2e%2e%2f%2e%2e%2fx/stats", "services/..%2F..%2Fx/stats"),
        (b"/admin/api/services/d%65mo/stats", "services/demo/stats"),
        (b"/admin/api/keys/a%20b", "keys/a b"),
    ],
)
def test_admin_paths_are_split_before_decoding(path: bytes, rest: str) -> None:
    # An encoded slash is part of its segment (an id the admin API then refuses),
    # never a separator: /admin/api/services/demo%2Fstats is not the stats route.
    assert parse_path(path) == Route(RouteKind.ADMIN, rest=rest)


# ------------------------------------------------ a base URI ending in "/"


@pytest.mark.parametrize(
    ("path", "route"),
    [
        # dataikuapi joins "<uri>/public/api/v1/<service>" and "<endpoint>/run": a URI
        # given as http://host:port/ (its docstring's form) gives a leading "//".
        (b"//public/api/v1/demo/quote/run", Route(RouteKind.RUN, "demo", "quote")),
        (b"///public/api/v1/demo/quote/run", Route(RouteKind.RUN, "demo", "quote")),
        (b"//public/api/v1/ping", Route(RouteKind.PING)),
        (b"//isAlive", Route(RouteKind.IS_ALIVE)),
        (b"//admin/api/services", Route(RouteKind.ADMIN, rest="services")),
        (b"//admin/api/services/demo/stats", Route(RouteKind.ADMIN, rest="services/demo/stats")),
        (b"//public/api/v1/demo/quote/predict", Route(RouteKind.ENDPOINT_VERB, "demo", "quote", "predict")),
    ],
)
def test_leading_repeated_slashes_are_one_slash(path: bytes, route: Route) -> None:
    assert parse_path(path) == route


@pytest.mark.parametrize(
    "path",
    [
        b"//public/api/v1/../quote/run",
        b"//public/api/v1/demo/%2e%2e/run",
        b"//public/api/v1//demo/quote/run",  # an empty id further in is not folded away
        b"//public/api/v1/demo//quote/run",
    ],
)
def test_leading_slashes_folded_ids_still_validated(path: bytes) -> None:
    with pytest.raises(BadId):
        parse_path(path)


def test_a_run_path_with_leading_slashes_is_remembered_as_sent() -> None:
    from lightnode.http.routing import known_route

    path = b"//public/api/v1/slashy/ep/run"
    route = parse_path(path)
    assert route == Route(RouteKind.RUN, "slashy", "ep")
    assert known_route(path) is route  # the client's next request is a dict lookup
    assert known_route(b"//isAlive") is None  # fixed routes: folded, not remembered


# ---------------------------------------------- DSS verbs other than run


@pytest.mark.parametrize(
    "verb", ["predict", "predict-multi", "forecast", "predict-effect", "predict-effect-multi", "query",
             "lookup", "lookup-multi"],  # fmt: skip
)
def test_dss_verbs_name_the_service_and_endpoint(verb: str) -> None:
    path = f"/public/api/v1/svc/ep/{verb}".encode()
    assert parse_path(path) == Route(RouteKind.ENDPOINT_VERB, "svc", "ep", verb)


@pytest.mark.parametrize(
    "path",
    [
        b"/public/api/v1/svc/ep/runn",
        b"/public/api/v1/svc/ep/predict/x",
        b"/public/api/v1/svc/predict",
        b"/public/api/v1/../ep/predict",
        b"/public/api/v1/svc/%2e%2e/predict",
        b"/public/api/v1/svc/a%2fb/predict",
        b"/public/api/v1//ep/predict",
    ],
)
def test_other_paths_under_the_prefix_stay_unknown(path: bytes) -> None:
    # Invalid ids are never looked up: the plain "Not found", no BadId wording either.
    assert parse_path(path) is None
