"""URL paths -> routes. PURE: no I/O, no lightnode imports but config.model.

Ids are validated here (SPEC §2), before anything looks them up, so that a
path such as `/public/api/v1/../x/run` can never reach the filesystem.

Leading repeated slashes are one slash: the official client joins its base URI
and its path with a "/", so the URI its docstring shows (`http://host:port/`)
makes every request `//public/api/v1/...` or `//admin/api/...`. Repeated slashes
further in are left alone: an empty segment there stands for a missing id, and
folding it would shift the segments after it into other roles.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from lightnode.config.model import is_valid_id

RUN_PREFIX: Final = b"/public/api/v1/"


class RouteKind(enum.Enum):
    RUN = "run"
    PING = "ping"
    IS_ALIVE = "isAlive"
    READY = "ready"
    METRICS = "metrics"
    ADMIN = "admin"
    # /public/api/v1/<service>/<endpoint>/<verb> for a DSS verb other than run: DSS
    # model endpoints answer them; a python-function endpoint answers /run only.
    ENDPOINT_VERB = "endpointVerb"


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    service_id: str = ""
    endpoint_id: str = ""
    rest: str = ""  # for ADMIN: the path after /admin/api/; for ENDPOINT_VERB: the verb


_FIXED: Final[dict[bytes, Route]] = {
    b"/public/api/v1/ping": Route(RouteKind.PING),
    b"/isAlive": Route(RouteKind.IS_ALIVE),
    b"/healthz": Route(RouteKind.IS_ALIVE),
    b"/readyz": Route(RouteKind.READY),
    b"/metrics": Route(RouteKind.METRICS),
}

# Routes of the paths parsed before: the fixed ones and the valid /run paths (a
# handful in practice; emptied when it reaches RUN_ROUTES_CACHED run paths, so
# that URLs made up by clients cannot grow it without bound). Routes are
# immutable and depend on the path alone; refused paths are never cached.
RUN_ROUTES_CACHED: Final = 1024
_KNOWN: Final[dict[bytes, Route]] = dict(_FIXED)
# known_route(path): the Route of a fixed or already parsed /run path, else None.
# A bare dict lookup for the hot path; anything else goes through parse_path().
known_route: Final = _KNOWN.get


# What the official client (dataikuapi.APINodeClient) calls besides run_function:
# predict_record(s), forecast, predict_effect(s), sql_query, lookup_record(s).
DSS_VERBS: Final = frozenset(
    b"predict predict-multi forecast predict-effect predict-effect-multi query lookup lookup-multi".split()
)


class BadId(Exception):
    """The path names an id that SPEC §2 refuses: answer 404 without lookup."""


def parse_path(path: bytes) -> Route | None:
    """Return the route for `path` (no query string), or None for unknown paths.

    Raises:
        BadId: a run path whose service or endpoint id is not a valid id.
    """
    route = _KNOWN.get(path)
    if route is not None:
        return route
    raw = path
    if path[:2] == b"//":  # a base URI ending in "/" (see the module docstring)
        path = b"/" + path.lstrip(b"/")
        route = _KNOWN.get(path)
        if route is not None and route.kind is not RouteKind.RUN:
            return route  # a fixed route: only /run paths are remembered
    if path.startswith(RUN_PREFIX) and path.endswith(b"/run"):
        route = _parse_run(path)
        if len(_KNOWN) >= len(_FIXED) + RUN_ROUTES_CACHED:
            _KNOWN.clear()
            _KNOWN.update(_FIXED)
        _KNOWN[raw] = route  # as the client spells it: its next request is a lookup
        return route
    if path.startswith(b"/admin/api/"):
        return Route(RouteKind.ADMIN, rest=_admin_rest(path[len(b"/admin/api/") :]))
    if path.startswith(RUN_PREFIX):
        return _parse_verb(path)
    return None


def _admin_rest(raw: bytes) -> str:
    """The admin path after /admin/api/, split before decoding as /run paths are.

    An encoded slash stays in its segment, written `%2F` (the admin API splits `rest`
    on "/"): `services/demo%2Fstats` names the service `demo/stats`, which id
    validation refuses, never the stats route of `demo`.
    """
    return "/".join(unquote(segment).replace("/", "%2F") for segment in raw.decode("latin-1").split("/"))


def _parse_run(path: bytes) -> Route:
    if len(path) < len(RUN_PREFIX) + len(b"/run"):  # "/public/api/v1/run": prefix and suffix overlap
        # Checked, not sliced: the compiled build raises SystemError for a bytes slice
        # whose start is past its end, where Python returns b"".
        raise _bad_run_path(path)
    middle = path[len(RUN_PREFIX) : -len(b"/run")]
    parts = middle.split(b"/")
    if len(parts) != 2:
        raise _bad_run_path(path)
    service = unquote(parts[0].decode("latin-1"))
    endpoint = unquote(parts[1].decode("latin-1"))
    if not is_valid_id(service):
        raise BadId(f"Service {service} does not exist")
    if not is_valid_id(endpoint):
        raise BadId(f"Endpoint does not exist: {endpoint}")
    return Route(RouteKind.RUN, service, endpoint)


# The start of an API key (admin.keys.KEY_PREFIX), also percent-encoded ("lnk%5f").
_KEY_PREFIX: Final = b"lnk"


def _bad_run_path(path: bytes) -> BadId:
    """A /run path without exactly a service and an endpoint: what came, and what is expected.

    The prefix twice is a client given the URL of an endpoint's API (as a service's page
    shows it) for its base: `APINodeClient("http://host:port/public/api/v1", ...)`.
    """
    hint = ""
    if RUN_PREFIX in path[len(RUN_PREFIX) - 1 :]:
        hint = "; the client's base URL is the node's alone (http://host:port), without /public/api/v1"
    # An API key typed into the URL (lnk_..., maybe percent-encoded): not repeated back.
    shown = "a path holding an API key" if _KEY_PREFIX in path.lower() else path.decode("latin-1")
    return BadId(f"Not found: {shown}: expected /public/api/v1/<service>/<endpoint>/run{hint}")


def _parse_verb(path: bytes) -> Route | None:
    """/public/api/v1/<service>/<endpoint>/<DSS verb>, valid ids only; anything else None."""
    parts = path[len(RUN_PREFIX) :].split(b"/")
    if len(parts) != 3 or parts[2] not in DSS_VERBS:
        return None
    service = unquote(parts[0].decode("latin-1"))
    endpoint = unquote(parts[1].decode("latin-1"))
    if not is_valid_id(service) or not is_valid_id(endpoint):
        return None  # never looked up: the plain "Not found"
    return Route(RouteKind.ENDPOINT_VERB, service, endpoint, parts[2].decode("ascii"))


# A JSON number literal (RFC 8259 §6), ASCII digits only: what a query value must be,
# whole, to become a number. int() and float() also take "01234", "1_000", " 42 ",
# "+5", ".5", "inf" and non-ASCII digits, which stay strings.
_JSON_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_LITERALS: Final[dict[str, object]] = {"true": True, "false": False, "null": None}


def query_to_object(query: bytes) -> dict[str, object]:
    """GET /run?a=1&b=x -> {"a": 1, "b": "x"} (SPEC §3.3): literals typed, the rest strings."""
    from urllib.parse import parse_qsl

    result: dict[str, object] = {}
    for key, value in parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True):
        result[key] = _typed(value)
    return result


def _typed(text: str) -> object:
    """`true`/`false`/`null` and JSON number literals typed; anything else is the string.

    An integer literal is an int, one with a fraction or an exponent a float; one
    that is no finite float (1e999) or longer than int() reads stays a string.
    """
    if text in _LITERALS:
        return _LITERALS[text]
    match = _JSON_NUMBER.fullmatch(text)
    if match is None:
        return text
    try:
        if match.group(1) is None and match.group(2) is None:
            return int(text)
        number = float(text)
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        return text
    return number if abs(number) != float("inf") else text
