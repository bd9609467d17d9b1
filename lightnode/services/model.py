"""The service definition: service.json parsed and validated (SPEC §3.1, §3.5, §7.2).

Owns the frozen `ServiceDef` / `EndpointDef` / `TestQuery` values and their
validation. Every problem found is reported at once, each with its JSON path,
in one `ConfigError` whose source is the service.json path.

The only I/O here is `load_service_dir` reading service.json and, when
`check_files` is true, existence checks on the code file and managed folders.
Imports: standard library, `lightnode.errors` and `lightnode.config.model` only;
never the scheduler, HTTP or worker layers.
"""

from __future__ import annotations

import json
import keyword
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lightnode.config.model import is_valid_id
from lightnode.config.validate import load_json_document, read_config_bytes
from lightnode.errors import ConfigError

SUPPORTED_ENDPOINT_TYPES: tuple[str, ...] = ("python-function",)

SERVICE_FILE = "service.json"

_SERVICE_KEYS = ("id", "auth", "endpoints")
_AUTH_KEYS = ("public",)
_ENDPOINT_KEYS = ("id", "type", "code", "function", "folders", "code_env", "env", "test_queries")
_TEST_QUERY_KEYS = ("name", "q", "expect")
_CODE_ENV_KEYS = ("requirements", "python")


@dataclass(frozen=True, slots=True)
class TestQuery:
    """One test query of an endpoint (SPEC §7.1): `q` is the request object,
    `expect` a subset of the whole response envelope, or None for no check."""

    __test__ = False  # not a pytest test class, despite its name

    name: str
    q: dict[str, Any]
    expect: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class EndpointDef:
    """One endpoint of a service.

    `code` is the path of the .py file relative to the service root;
    `folders` are absolute paths, resolved against the service root, in the
    order of service.json; `code_env` is None, an interpreter/venv path, or
    the `{"requirements": ..., "python": ...}` object (SPEC §7.2).
    """

    id: str
    type: str
    code: str
    function: str | None
    folders: tuple[str, ...]
    code_env: None | str | dict[str, Any]
    env: dict[str, str]
    test_queries: tuple[TestQuery, ...]


@dataclass(frozen=True, slots=True)
class ServiceDef:
    """A parsed service.json; `root` is the (absolute) generation directory."""

    id: str
    public: bool
    endpoints: tuple[EndpointDef, ...]
    root: Path

    def endpoint(self, endpoint_id: str) -> EndpointDef | None:
        for endpoint in self.endpoints:
            if endpoint.id == endpoint_id:
                return endpoint
        return None

    def code_path(self, endpoint: EndpointDef) -> Path:
        """Absolute path of the endpoint's code file."""
        return self.root / endpoint.code


def load_service_dir(root: Path, *, check_files: bool = True) -> ServiceDef:
    """Read and validate `root/service.json`.

    Args:
        root: the service (generation or dev source) directory.
        check_files: also check that the code file and managed folders exist.

    Raises:
        ConfigError: the file is missing, unreadable, not JSON, or invalid;
            the problems name the JSON path (or line/column) of each fault.
    """
    root = Path(os.path.abspath(root))
    path = root / SERVICE_FILE
    source = str(path)
    data = read_config_bytes(path)
    if data is None:
        raise ConfigError(source, ["file does not exist"])
    raw = load_json_document(data, source)
    return parse_service_json(raw, source=source, root=root, check_files=check_files)


def parse_service_json(
    raw: object, *, source: str, root: Path, check_files: bool = True
) -> ServiceDef:
    """Validate a decoded service.json object.

    Args:
        raw: the decoded JSON value.
        source: where it came from (the service.json path), for the error.
        root: the service directory; relative code and folders resolve against it.
        check_files: also check that code files and folders exist.

    Returns:
        The frozen ServiceDef.

    Raises:
        ConfigError: listing every problem as "json.path: reason".
    """
    root = Path(os.path.abspath(root))
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"$: must be a JSON object (got {_kind(raw)})"])
    _unknown_keys(raw, _SERVICE_KEYS, "", problems)
    service_id = _parse_id(raw, "id", "id", problems)
    public = _parse_auth(raw.get("auth"), problems)
    endpoints = _parse_endpoints(raw.get("endpoints"), root, check_files, problems)
    if problems:
        raise ConfigError(source, problems)
    return ServiceDef(id=service_id, public=public, endpoints=endpoints, root=root)


# --- sections ---------------------------------------------------------------


def _parse_auth(raw: object, problems: list[str]) -> bool:
    if raw is None:
        return True
    if not isinstance(raw, dict):
        problems.append(f"auth: must be an object (got {_kind(raw)})")
        return True
    _unknown_keys(raw, _AUTH_KEYS, "auth.", problems)
    public = raw.get("public", True)
    if not isinstance(public, bool):
        problems.append(f"auth.public: must be true or false (got {_kind(public)})")
        return True
    return public


def _parse_endpoints(
    raw: object, root: Path, check_files: bool, problems: list[str]
) -> tuple[EndpointDef, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append("endpoints: must be a non-empty list")
        return ()
    endpoints: list[EndpointDef] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(raw):
        path = f"endpoints[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{path}: must be an object (got {_kind(item)})")
            continue
        endpoint = _parse_endpoint(item, path, root, check_files, problems)
        if endpoint.id in first_index:
            problems.append(
                f"{path}.id: duplicate endpoint id {endpoint.id!r} "
                f"(also endpoints[{first_index[endpoint.id]}])"
            )
        elif endpoint.id:
            first_index[endpoint.id] = index
        endpoints.append(endpoint)
    return tuple(endpoints)


def _parse_endpoint(
    raw: dict[str, Any], path: str, root: Path, check_files: bool, problems: list[str]
) -> EndpointDef:
    _unknown_keys(raw, _ENDPOINT_KEYS, f"{path}.", problems)
    endpoint_id = _parse_id(raw, "id", f"{path}.id", problems)
    endpoint_type = raw.get("type")
    if endpoint_type is None:
        problems.append(f"{path}.type: missing")
    elif endpoint_type not in SUPPORTED_ENDPOINT_TYPES:
        problems.append(
            f"{path}.type: unknown endpoint type {_show(endpoint_type)}; "
            f"supported types: {', '.join(SUPPORTED_ENDPOINT_TYPES)}"
        )
    return EndpointDef(
        id=endpoint_id,
        type=endpoint_type if isinstance(endpoint_type, str) else "",
        code=_parse_code(raw.get("code"), f"{path}.code", root, check_files, problems),
        function=_parse_function(raw.get("function"), f"{path}.function", problems),
        folders=_parse_folders(raw.get("folders"), f"{path}.folders", root, check_files, problems),
        code_env=_parse_code_env(
            raw.get("code_env"), f"{path}.code_env", root, check_files, problems
        ),
        env=_parse_env(raw.get("env"), f"{path}.env", problems),
        test_queries=_parse_test_queries(raw.get("test_queries"), f"{path}.test_queries", problems),
    )


# --- fields -----------------------------------------------------------------


def _parse_id(raw: dict[str, Any], key: str, path: str, problems: list[str]) -> str:
    value = raw.get(key)
    if value is None:
        problems.append(f"{path}: missing")
        return ""
    if not is_valid_id(value):
        problems.append(
            f"{path}: invalid id {_show(value)}: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}$"
        )
        return ""
    assert isinstance(value, str)
    return value


def _parse_code(
    value: object, path: str, root: Path, check_files: bool, problems: list[str]
) -> str:
    if value is None:
        problems.append(f"{path}: missing")
        return ""
    reason = _inside_root_problem(value)
    if reason is None and isinstance(value, str) and not value.endswith(".py"):
        reason = f"must name a .py file (got {value!r})"
    if reason is not None:
        problems.append(f"{path}: {reason}")
        return ""
    assert isinstance(value, str)
    if check_files and not (root / value).is_file():
        problems.append(f"{path}: file does not exist: {value}")
    return value


def _parse_function(value: object, path: str, problems: list[str]) -> str | None:
    if value is None:
        return None  # the worker picks the module's single public function (SPEC §3.5)
    if not isinstance(value, str) or not value.isidentifier() or keyword.iskeyword(value):
        problems.append(f"{path}: must be a Python function name (got {_show(value)})")
        return None
    return value


def _parse_folders(
    value: object, path: str, root: Path, check_files: bool, problems: list[str]
) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f"{path}: must be a list of paths (got {_kind(value)})")
        return ()
    folders: list[str] = []
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        if not isinstance(item, str) or not item or "\x00" in item:
            problems.append(f"{item_path}: must be a non-empty path (got {_show(item)})")
            continue
        if not os.path.isabs(item):
            reason = _inside_root_problem(item)
            if reason is not None:
                problems.append(
                    f"{item_path}: {reason}; use an absolute path for a folder elsewhere"
                )
                continue
        resolved = os.path.normpath(os.path.join(root, item))
        if check_files and not os.path.isdir(resolved):
            problems.append(f"{item_path}: folder does not exist: {resolved}")
        folders.append(resolved)
    return tuple(folders)


def _parse_code_env(
    value: object, path: str, root: Path, check_files: bool, problems: list[str]
) -> None | str | dict[str, Any]:
    if value is None:
        return None  # the node's own interpreter
    if isinstance(value, str):
        if not value or "\x00" in value:
            problems.append(f"{path}: must be an interpreter or venv path (got {value!r})")
            return None
        return value
    if not isinstance(value, dict):
        problems.append(
            f"{path}: must be null, a path, or an object with requirements (got {_kind(value)})"
        )
        return None
    _unknown_keys(value, _CODE_ENV_KEYS, f"{path}.", problems)
    requirements = value.get("requirements")
    if requirements is None:
        problems.append(f"{path}.requirements: missing")
    else:
        reason = _inside_root_problem(requirements)
        if reason is not None:
            problems.append(f"{path}.requirements: {reason}")
        elif check_files and not (root / str(requirements)).is_file():
            problems.append(f"{path}.requirements: file does not exist: {requirements}")
    python = value.get("python")
    if python is not None and (not isinstance(python, str) or not python):
        problems.append(f"{path}.python: must be a command name or a path (got {_show(python)})")
    return dict(value)


def _parse_env(value: object, path: str, problems: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{path}: must be an object of strings (got {_kind(value)})")
        return {}
    env: dict[str, str] = {}
    for name, item in value.items():
        if not name or "=" in name or "\x00" in name:
            problems.append(f"{path}: invalid variable name {name!r}")
        elif not isinstance(item, str):
            problems.append(f"{path}.{name}: must be a string (got {_kind(item)})")
        elif "\x00" in item:
            problems.append(f"{path}.{name}: must not contain a NUL character")
        else:
            env[name] = item
    return env


def _parse_test_queries(value: object, path: str, problems: list[str]) -> tuple[TestQuery, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f"{path}: must be a list (got {_kind(value)})")
        return ()
    queries: list[TestQuery] = []
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{item_path}: must be an object (got {_kind(item)})")
            continue
        count = len(problems)
        _unknown_keys(item, _TEST_QUERY_KEYS, f"{item_path}.", problems)
        name = item.get("name", f"query {index + 1}")
        if not isinstance(name, str) or not name:
            problems.append(f"{item_path}.name: must be a non-empty string (got {_show(name)})")
        q = item.get("q")
        if not isinstance(q, dict):
            problems.append(f"{item_path}.q: must be an object (got {_kind(q)})")
        expect = item.get("expect")
        if expect is not None and not isinstance(expect, dict):
            problems.append(f"{item_path}.expect: must be an object (got {_kind(expect)})")
        if len(problems) == count:
            assert isinstance(name, str) and isinstance(q, dict)
            queries.append(TestQuery(name=name, q=q, expect=expect))
    return tuple(queries)


# --- helpers ----------------------------------------------------------------


def _inside_root_problem(value: object) -> str | None:
    """Why `value` is not a relative path that stays inside the root, or None."""
    if not isinstance(value, str) or not value or "\x00" in value:
        return f"must be a relative path (got {_show(value)})"
    if os.path.isabs(value):
        return f"must be a relative path, not absolute (got {value!r})"
    if ".." in PurePosixPath(value).parts:
        return f"must stay inside the service directory (got {value!r})"
    return None


def _unknown_keys(
    raw: dict[str, Any], allowed: tuple[str, ...], prefix: str, problems: list[str]
) -> None:
    for key in raw:
        if key not in allowed:
            problems.append(f"{prefix}{key}: unknown key; allowed: {', '.join(allowed)}")


_KINDS: dict[type, str] = {
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "list",
    dict: "object",
    type(None): "null",
}


def _kind(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    """A short JSON-ish rendering of a bad value for messages."""
    if isinstance(value, str):
        return repr(value)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
