"""URL paths -> routes. PURE: no I/O, no lightnode imports but config.model.

Ids are validated here (SPEC §2), before anything looks them up, so that a
path such as `/public/api/v1/../x/run` can never reach the filesystem.
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


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    service_id: str = ""
    endpoint_id: str = ""
    rest: str = ""  # for ADMIN: the path after /admin/api/


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
    if path.startswith(RUN_PREFIX) and path.endswith(b"/run"):
        route = _parse_run(path)
        if len(_KNOWN) >= len(_FIXED) + RUN_ROUTES_CACHED:
            _KNOWN.clear()
            _KNOWN.update(_FIXED)
        _KNOWN[path] = route
        return route
    if path.startswith(b"/admin/api/"):
        return Route(RouteKind.ADMIN, rest=_admin_rest(path[len(b"/admin/api/") :]))
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
        raise BadId("expected /public/api/v1/<service>/<endpoint>/run")
    middle = path[len(RUN_PREFIX) : -len(b"/run")]
    parts = middle.split(b"/")
    if len(parts) != 2:
        raise BadId("expected /public/api/v1/<service>/<endpoint>/run")
    service = unquote(parts[0].decode("latin-1"))
    endpoint = unquote(parts[1].decode("latin-1"))
    if not is_valid_id(service):
        raise BadId(f"Service {service} does not exist")
    if not is_valid_id(endpoint):
        raise BadId(f"Endpoint does not exist: {endpoint}")
    return Route(RouteKind.RUN, service, endpoint)


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
