"""service.json parsing and validation (SPEC §3.1, §3.5, §7.2)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from lightnode.errors import ConfigError
from lightnode.services.model import (
    SUPPORTED_ENDPOINT_TYPES,
    EndpointDef,
    ServiceDef,
    TestQuery,
    load_service_dir,
    parse_service_json,
)

VALID: dict[str, Any] = {
    "id": "pricing",
    "auth": {"public": True},
    "endpoints": [
        {
            "id": "quote",
            "type": "python-function",
            "code": "quote.py",
            "function": "my_api_function",
            "folders": ["model"],
            "code_env": None,
            "env": {"MODEL_NAME": "v2"},
            "test_queries": [
                {
                    "name": "typical",
                    "q": {"age": 35, "days": 344, "price": 600},
                    "expect": {"response": {"quote": 123.4}},
                }
            ],
        }
    ],
}


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "svc"
    (root / "model").mkdir(parents=True)
    (root / "quote.py").write_text("def my_api_function(age, days, price):\n    return {}\n")
    return root


def problems_of(raw: object, root: Path, *, check_files: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_service_json(raw, source="/x/service.json", root=root, check_files=check_files)
    assert info.value.source == "/x/service.json"
    return info.value.problems


def test_valid_service_parses(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    lookups = tmp_path / "lookups"
    lookups.mkdir()
    raw = copy.deepcopy(VALID)
    raw["endpoints"][0]["folders"] = ["model", str(lookups)]
    service = parse_service_json(raw, source="s", root=root)
    assert isinstance(service, ServiceDef)
    assert (service.id, service.public, service.root) == ("pricing", True, root)
    endpoint = service.endpoint("quote")
    assert isinstance(endpoint, EndpointDef)
    assert service.endpoint("nope") is None
    assert endpoint.type == "python-function"
    assert endpoint.code == "quote.py"
    assert service.code_path(endpoint) == root / "quote.py"
    assert endpoint.function == "my_api_function"
    assert endpoint.folders == (str(root / "model"), str(lookups))
    assert endpoint.code_env is None
    assert endpoint.env == {"MODEL_NAME": "v2"}
    assert endpoint.test_queries == (
        TestQuery(
            name="typical",
            q={"age": 35, "days": 344, "price": 600},
            expect={"response": {"quote": 123.4}},
        ),
    )


def test_every_problem_is_listed_at_once_with_its_json_path(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    raw = {
        "id": "../x",
        "auth": {"public": "yes"},
        "color": "blue",
        "endpoints": [
            {"id": "quote", "type": "python-function", "folders": ["model", "/abs/x"]},
            {
                "id": "quote",
                "type": "R-function",
                "code": "../outside.py",
                "env": {"A": 1},
                "test_queries": [{"q": [1, 2]}, {"q": {}, "expect": 3}],
            },
            "not an object",
        ],
    }
    problems = problems_of(raw, root)
    expected_prefixes = [
        "id: invalid id '../x'",
        "auth.public: must be true or false",
        "color: unknown key",
        "endpoints[0].code: missing",
        "endpoints[0].folders[1]: folder does not exist: /abs/x",
        "endpoints[1].id: duplicate endpoint id 'quote' (also endpoints[0])",
        "endpoints[1].type: unknown endpoint type 'R-function'; supported types: python-function",
        "endpoints[1].code: must stay inside the service directory",
        "endpoints[1].env.A: must be a string",
        "endpoints[1].test_queries[0].q: must be an object",
        "endpoints[1].test_queries[1].expect: must be an object",
        "endpoints[2]: must be an object",
    ]
    for prefix in expected_prefixes:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert len(problems) == len(expected_prefixes), problems


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda r: r.pop("id"), "id: missing"),
        (lambda r: r.update(id=""), "id: invalid id ''"),
        (lambda r: r.update(id="a/b"), "id: invalid id 'a/b'"),
        (lambda r: r.update(endpoints=[]), "endpoints: must be a non-empty list"),
        (lambda r: r.pop("endpoints"), "endpoints: must be a non-empty list"),
        (lambda r: r.update(endpoints={"id": "x"}), "endpoints: must be a non-empty list"),
        (lambda r: r.update(auth=True), "auth: must be an object"),
        (lambda r: r.update(auth={"public": True, "keys": []}), "auth.keys: unknown key"),
        (lambda r: r["endpoints"][0].pop("id"), "endpoints[0].id: missing"),
        (lambda r: r["endpoints"][0].update(id=".x"), "endpoints[0].id: invalid id '.x'"),
        (lambda r: r["endpoints"][0].pop("type"), "endpoints[0].type: missing"),
        (lambda r: r["endpoints"][0].pop("code"), "endpoints[0].code: missing"),
        (
            lambda r: r["endpoints"][0].update(code="/etc/q.py"),
            "endpoints[0].code: must be a relative path, not absolute",
        ),
        (
            lambda r: r["endpoints"][0].update(code="a/../../q.py"),
            "endpoints[0].code: must stay inside",
        ),
        (
            lambda r: r["endpoints"][0].update(code="quote.txt"),
            "endpoints[0].code: must name a .py file",
        ),
        (lambda r: r["endpoints"][0].update(code=7), "endpoints[0].code: must be a relative path"),
        (
            lambda r: r["endpoints"][0].update(function="not a name"),
            "endpoints[0].function: must be a Python function name",
        ),
        (
            lambda r: r["endpoints"][0].update(function="class"),
            "endpoints[0].function: must be a Python function name",
        ),
        (
            lambda r: r["endpoints"][0].update(folders="model"),
            "endpoints[0].folders: must be a list",
        ),
        (
            lambda r: r["endpoints"][0].update(folders=[""]),
            "endpoints[0].folders[0]: must be a non-empty path",
        ),
        (
            lambda r: r["endpoints"][0].update(folders=["../up"]),
            "endpoints[0].folders[0]: must stay inside",
        ),
        (lambda r: r["endpoints"][0].update(env=["A=1"]), "endpoints[0].env: must be an object"),
        (
            lambda r: r["endpoints"][0].update(env={"A=B": "1"}),
            "endpoints[0].env: invalid variable name 'A=B'",
        ),
        (
            lambda r: r["endpoints"][0].update(env={"A": None}),
            "endpoints[0].env.A: must be a string",
        ),
        (
            lambda r: r["endpoints"][0].update(test_queries={}),
            "endpoints[0].test_queries: must be a list",
        ),
        (
            lambda r: r["endpoints"][0].update(test_queries=[{"name": "n"}]),
            "endpoints[0].test_queries[0].q: must be an object",
        ),
        (
            lambda r: r["endpoints"][0].update(test_queries=[{"q": {}, "name": 3}]),
            "endpoints[0].test_queries[0].name: must be a non-empty string",
        ),
        (
            lambda r: r["endpoints"][0].update(test_queries=[{"q": {}, "qq": 1}]),
            "endpoints[0].test_queries[0].qq: unknown key",
        ),
        (
            lambda r: r["endpoints"][0].update(code_env=3),
            "endpoints[0].code_env: must be null, a path, or an object",
        ),
        (
            lambda r: r["endpoints"][0].update(code_env={"python": "python3"}),
            "endpoints[0].code_env.requirements: missing",
        ),
        (
            lambda r: r["endpoints"][0].update(code_env={"requirements": "req.txt"}),
            "endpoints[0].code_env.requirements: file does not exist: req.txt",
        ),
        (
            lambda r: r["endpoints"][0].update(code_env={"requirements": "/r.txt"}),
            "endpoints[0].code_env.requirements: must be a relative path",
        ),
        (
            lambda r: r["endpoints"][0].update(code_env={"requirements": "r.txt", "python": ""}),
            "endpoints[0].code_env.python: must be a command name or a path",
        ),
        (lambda r: r["endpoints"][0].update(extra=1), "endpoints[0].extra: unknown key"),
    ],
)
def test_single_problem(tmp_path: Path, mutate: Any, problem: str) -> None:
    root = make_root(tmp_path)
    (root / "r.txt").write_text("numpy\n")
    raw = copy.deepcopy(VALID)
    mutate(raw)
    problems = problems_of(raw, root)
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem), problems


def test_not_an_object(tmp_path: Path) -> None:
    assert problems_of([1], tmp_path) == ["$: must be a JSON object (got list)"]


def test_missing_files_are_reported_when_checked(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    raw = copy.deepcopy(VALID)
    raw["endpoints"][0]["folders"] = ["model", "/abs/x"]
    problems = problems_of(raw, root)
    assert problems == [
        "endpoints[0].code: file does not exist: quote.py",
        f"endpoints[0].folders[0]: folder does not exist: {root / 'model'}",
        "endpoints[0].folders[1]: folder does not exist: /abs/x",
    ]


def test_check_files_false_skips_filesystem_checks(tmp_path: Path) -> None:
    root = tmp_path / "does-not-exist"
    raw = copy.deepcopy(VALID)
    raw["endpoints"][0]["folders"] = ["model", "/abs/x"]
    raw["endpoints"][0]["code_env"] = {"requirements": "requirements.txt", "python": "python3.11"}
    service = parse_service_json(raw, source="s", root=root, check_files=False)
    endpoint = service.endpoints[0]
    assert endpoint.folders == (str(root / "model"), "/abs/x")
    assert endpoint.code_env == {"requirements": "requirements.txt", "python": "python3.11"}
    assert not root.exists()


def test_folder_resolution(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "data" / "sub").mkdir(parents=True)
    raw = copy.deepcopy(VALID)
    raw["endpoints"][0]["folders"] = ["data/sub/", "./model", str(tmp_path), "."]
    endpoint = parse_service_json(raw, source="s", root=root).endpoints[0]
    assert endpoint.folders == (
        str(root / "data" / "sub"),
        str(root / "model"),
        str(tmp_path),
        str(root),
    )
    assert all(os.path.isabs(folder) for folder in endpoint.folders)


def test_relative_root_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_root(tmp_path)
    monkeypatch.chdir(tmp_path)
    service = parse_service_json(copy.deepcopy(VALID), source="s", root=Path("svc"))
    assert service.root == tmp_path / "svc"
    assert service.endpoints[0].folders == (str(tmp_path / "svc" / "model"),)


def test_optional_fields_default(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    raw = {
        "id": "s",
        "endpoints": [{"id": "e", "type": "python-function", "code": "quote.py"}],
    }
    service = parse_service_json(raw, source="s", root=root)
    assert service.public is True  # auth missing
    endpoint = service.endpoints[0]
    assert endpoint.function is None  # the worker picks the single public function
    assert (endpoint.folders, endpoint.code_env, endpoint.env, endpoint.test_queries) == (
        (),
        None,
        {},
        (),
    )


def test_auth_private_and_code_env_string(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    raw = copy.deepcopy(VALID)
    raw["auth"] = {"public": False}
    raw["endpoints"][0]["code_env"] = "/opt/venvs/pricing"
    service = parse_service_json(raw, source="s", root=root)
    assert service.public is False
    assert service.endpoints[0].code_env == "/opt/venvs/pricing"


def test_test_query_name_defaults_and_expect_optional(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    raw = copy.deepcopy(VALID)
    raw["endpoints"][0]["test_queries"] = [{"q": {"a": 1}}, {"q": {}, "expect": None}]
    queries = parse_service_json(raw, source="s", root=root).endpoints[0].test_queries
    assert [(t.name, t.q, t.expect) for t in queries] == [
        ("query 1", {"a": 1}, None),
        ("query 2", {}, None),
    ]


def test_several_endpoints_and_subdirectory_code(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "pkg").mkdir()
    (root / "pkg" / "other.py").write_text("def f():\n    return 1\n")
    raw = copy.deepcopy(VALID)
    raw["endpoints"].append({"id": "other", "type": "python-function", "code": "pkg/other.py"})
    service = parse_service_json(raw, source="s", root=root)
    assert [e.id for e in service.endpoints] == ["quote", "other"]
    assert service.endpoint("other") == service.endpoints[1]


def test_supported_types() -> None:
    assert SUPPORTED_ENDPOINT_TYPES == ("python-function",)


# --- load_service_dir -------------------------------------------------------


def test_load_service_dir(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "service.json").write_text(json.dumps(VALID))
    service = load_service_dir(root)
    assert service.id == "pricing"
    assert service.root == root


def test_load_reports_the_service_json_path(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    raw = copy.deepcopy(VALID)
    raw["endpoints"][0]["code"] = "missing.py"
    (root / "service.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        load_service_dir(root)
    assert info.value.source == str(root / "service.json")
    assert info.value.problems == ["endpoints[0].code: file does not exist: missing.py"]
    assert str(root / "service.json") in str(info.value)
    # the same file passes when the filesystem is not checked
    assert load_service_dir(root, check_files=False).endpoints[0].code == "missing.py"


def test_load_bad_json_names_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "service.json").write_text('{\n  "id": "x",\n  "endpoints": [,]\n}\n')
    with pytest.raises(ConfigError) as info:
        load_service_dir(tmp_path)
    assert info.value.source == str(tmp_path / "service.json")
    [problem] = info.value.problems
    assert problem.startswith("invalid JSON at line 3, column 17"), problem


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_service_dir(tmp_path)
    assert info.value.source == str(tmp_path / "service.json")
    assert info.value.problems == ["file does not exist"]


def test_load_non_utf8_file(tmp_path: Path) -> None:
    (tmp_path / "service.json").write_bytes(b'{"id": "\xff"}')
    with pytest.raises(ConfigError) as info:
        load_service_dir(tmp_path)
    assert info.value.problems[0].startswith("cannot read file")
