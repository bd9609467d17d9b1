"""The embedded sample service `demo` (SPEC §2): its service.json and quote.py."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

from lightnode.services import store
from lightnode.services.model import load_service_dir

SAMPLE = Path(store.__file__).parent / "sample"


def load_quote_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lightnode_sample_quote", SAMPLE / "quote.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_subset(expect: object, actual: object) -> bool:
    """SPEC §7.1 subset match: objects recursively, everything else exactly."""
    if isinstance(expect, dict):
        return isinstance(actual, dict) and all(
            key in actual and is_subset(value, actual[key]) for key, value in expect.items()
        )
    return expect == actual


def test_sample_is_found_beside_the_store_module() -> None:
    assert store.SAMPLE_DIR == SAMPLE
    assert (SAMPLE / "service.json").is_file()
    assert (SAMPLE / "quote.py").is_file()


def test_sample_service_json_loads() -> None:
    service = load_service_dir(SAMPLE)
    assert service.id == "demo"
    assert service.public is True
    [endpoint] = service.endpoints
    assert endpoint.id == "quote"
    assert endpoint.type == "python-function"
    assert endpoint.code == "quote.py"
    assert endpoint.function == "my_api_function"
    assert endpoint.folders == ()
    assert endpoint.env == {}
    assert endpoint.code_env is None
    assert len(endpoint.test_queries) == 2
    assert all(query.expect is not None for query in endpoint.test_queries)


def test_sample_test_queries_expect_what_the_function_returns() -> None:
    module = load_quote_module()
    endpoint = load_service_dir(SAMPLE).endpoints[0]
    for query in endpoint.test_queries:
        result = getattr(module, endpoint.function or "")(**query.q)
        # the node sends the result as JSON; compare what the client would see
        envelope = {"response": json.loads(json.dumps(result))}
        assert is_subset(query.expect, envelope), (query.name, result)
        # and the expectation is exact, not a vacuous subset
        assert query.expect == envelope, (query.name, result)


def test_quote_is_deterministic_and_accepts_json_ints_and_floats() -> None:
    fn = load_quote_module().my_api_function
    from_ints = fn(age=35, days=344, price=600)
    assert from_ints == fn(age=35.0, days=344.0, price=600.0)
    assert from_ints == fn(35, 344, 600)
    assert from_ints["quote"] == 64.1
    assert isinstance(from_ints["quote"], float)
    # GET query strings may arrive as numeric text
    assert fn(age="35", days="344", price="600") == from_ints


def test_quote_formula() -> None:
    fn = load_quote_module().my_api_function
    result = fn(age=67, days=21, price=2450.5)
    base = round(2450.5 * 0.05, 2)
    age_factor = round(1 + 0.02 * (67 - 30), 4)
    days_factor = round(1 + 21 / 365, 4)
    assert result == {
        "quote": round(base * age_factor * days_factor, 2),
        "base": base,
        "age_factor": age_factor,
        "days_factor": days_factor,
    }
    assert fn(age=18, days=0, price=100)["quote"] == 5.0  # no surcharge under 30, no days


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"age": -1, "days": 1, "price": 1}, "age must be a finite number >= 0"),
        ({"age": 1, "days": "many", "price": 1}, "days must be a number"),
        ({"age": 1, "days": 1, "price": None}, "price must be a number"),
        ({"age": True, "days": 1, "price": 1}, "age must be a number"),
        ({"age": 1, "days": 1, "price": math.inf}, "price must be a finite number"),
    ],
)
def test_quote_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    fn = load_quote_module().my_api_function
    with pytest.raises(ValueError, match=message):
        fn(**kwargs)
