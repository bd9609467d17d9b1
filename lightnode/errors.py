"""Every client-visible error, its HTTP status and its wording, in one table.

The table is SPEC §3.4 verbatim: errorType -> HTTP status. Messages reuse the
DSS API node's wording where one exists so operators' alerts carry over.
This module imports nothing from lightnode; everything may import it.
"""

from __future__ import annotations

from collections.abc import Sequence

# The start of every API key (admin.keys.KEY_PREFIX). Ids never hold it by choice: a
# service or endpoint id that does is a key typed in the wrong place (dataikuapi's
# `APINodeClient(uri, KEY)` swaps the service id and the key), never to be repeated
# in a message or written to a log.
API_KEY_PREFIX = "lnk_"


def holds_api_key(text: str) -> bool:
    """True when an id is shaped like an API key (ids cannot hold percent-escapes)."""
    return text[:4].lower() == API_KEY_PREFIX


# errorType -> HTTP status (SPEC §3.4). A 503 always means the function did not run.
ERROR_STATUS: dict[str, int] = {
    "NotFound": 404,
    "ServiceNotActive": 503,
    "MethodNotAllowed": 405,
    "Unauthorized": 401,
    "Forbidden": 403,
    "BadRequest": 400,
    "InvalidParameters": 400,
    "PayloadTooLarge": 413,
    "HeadersTooLarge": 431,
    "FunctionError": 500,
    "ResultNotSerializable": 500,
    "WorkerCrashed": 500,
    "ExecutionTimeout": 504,
    "EndpointUnavailable": 503,
    "QueueFull": 503,
    "QueueTimeout": 503,
    "ShuttingDown": 503,
    "InternalError": 500,
}

# Default wording where the DSS API node has one.
QUEUE_FULL_MESSAGE = "Request queue is full"
QUEUE_TIMEOUT_MESSAGE = "Request timed out"
BAD_JSON_MESSAGE = "Could not parse a JsonObject from request body"


class LightnodeError(Exception):
    """An error that becomes one HTTP answer with the SPEC §3.4 body."""

    def __init__(
        self,
        error_type: str,
        message: str,
        detailed_message: str | None = None,
        *,
        status: int | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        if error_type not in ERROR_STATUS:
            raise InternalError(f"unknown errorType {error_type!r}")
        self.error_type = error_type
        self.message = message
        self.detailed_message = detailed_message if detailed_message is not None else message
        self.status = status if status is not None else ERROR_STATUS[error_type]
        self.headers = tuple(headers)

    def payload(self) -> dict[str, str]:
        return {
            "errorType": self.error_type,
            "message": self.message,
            "detailedMessage": self.detailed_message,
        }


class InternalError(Exception):
    """A broken invariant inside lightnode. Nothing catches it broadly."""


class ConfigError(Exception):
    """A configuration file or object was refused.

    Args:
        source: the file (or other origin) that was read.
        problems: every problem found, each as "json.path: reason".
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


class IdError(ValueError):
    """An id (service, endpoint, generation) that does not match SPEC §2's pattern."""
