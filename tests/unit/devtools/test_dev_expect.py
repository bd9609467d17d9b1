"""SPEC §7.1 expect matching: a subset match on objects, exact on arrays and scalars."""

from __future__ import annotations

import pytest

from lightnode.devtools.expect import (
    MISSING,
    Mismatch,
    exact_diff,
    json_equal,
    match_expect,
    render_diff,
)

ENVELOPE = {
    "response": {"quote": 123.4, "tags": ["a", "b"], "nested": {"x": 1, "y": [1, {"k": 2}]}, "ok": True},
    "timing": {"wait": 12, "execution": 340, "functionInternal": 200},
    "apiContext": {"serviceId": "pricing", "endpointId": "quote", "serviceGeneration": "v1"},
}


@pytest.mark.parametrize(
    "expect",
    [
        {},
        {"response": {"quote": 123.4}},
        {"response": {"nested": {"x": 1}}},
        {"response": {"tags": ["a", "b"]}},
        {"apiContext": {"endpointId": "quote"}, "response": {"ok": True}},
        {"response": {"nested": {"y": [1, {"k": 2}]}}},
        {"response": {"quote": 123.40}},
    ],
)
def test_subsets_match(expect: dict) -> None:
    assert match_expect(expect, ENVELOPE) == []


def test_a_different_scalar_is_reported_at_its_path() -> None:
    found = match_expect({"response": {"quote": 64.1}}, ENVELOPE)
    assert found == [Mismatch("$.response.quote", 64.1, 123.4)]
    assert render_diff(found) == "  $.response.quote: expected 64.1, got 123.4"


def test_a_missing_key_is_reported_and_the_others_checked_too() -> None:
    found = match_expect({"response": {"price": 1, "quote": 1}, "extra": None}, ENVELOPE)
    assert [m.path for m in found] == ["$.response.price", "$.response.quote", "$.extra"]
    assert found[0].actual is MISSING
    assert found[0].describe() == "$.response.price: missing (expected 1)"


def test_arrays_compare_exactly_not_as_subsets() -> None:
    assert match_expect({"response": {"tags": ["a"]}}, ENVELOPE) == [
        Mismatch("$.response.tags", ["a"], ["a", "b"])
    ]
    # an object inside an array must be equal, not a subset
    found = match_expect({"response": {"nested": {"y": [1, {}]}}}, ENVELOPE)
    assert found == [Mismatch("$.response.nested.y[1].k", MISSING, 2)]
    assert "unexpected 2" in found[0].describe()


def test_same_length_arrays_point_at_the_differing_element() -> None:
    found = match_expect({"response": {"tags": ["a", "c"]}}, ENVELOPE)
    assert found == [Mismatch("$.response.tags[1]", "c", "b")]


def test_booleans_are_not_numbers_but_ints_equal_floats() -> None:
    assert match_expect({"response": {"ok": 1}}, ENVELOPE) != []
    assert json_equal(1, 1.0)
    assert not json_equal(True, 1)
    assert not json_equal(0, False)
    assert not json_equal("1", 1)
    assert not json_equal(None, {})


def test_an_object_expected_where_a_scalar_is() -> None:
    found = match_expect({"response": {"quote": {"value": 1}}}, ENVELOPE)
    assert found == [Mismatch("$.response.quote", {"value": 1}, 123.4)]


def test_keys_that_are_not_identifiers_are_quoted_in_paths() -> None:
    found = match_expect({"a b": 1}, {"a b": 2})
    assert found[0].path == '$["a b"]'


def test_exact_diff_of_objects_reports_extra_keys() -> None:
    assert exact_diff({"a": 1}, {"a": 1, "b": 2}) == [Mismatch("$.b", MISSING, 2)]


def test_long_values_are_shortened_in_the_diff() -> None:
    found = match_expect({"v": "x" * 500}, {"v": "y"})
    assert len(found[0].describe()) < 300
