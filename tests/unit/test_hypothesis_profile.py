"""The suite's hypothesis profile (tests/conftest.py): no timing deadline anywhere."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from tests.unit.config import test_config_load
from tests.unit.pool import test_fair_queue


def _settings_of(test: object) -> settings:
    return test._hypothesis_internal_use_settings  # type: ignore[attr-defined,no-any-return]


def test_no_property_test_has_a_deadline_or_the_too_slow_check() -> None:
    active = settings.default
    assert active is not None and active.deadline is None
    assert HealthCheck.too_slow in active.suppress_health_check
    # A test without @settings, and one whose @settings sets only max_examples:
    bare = test_fair_queue.test_matches_a_plain_list
    partial = test_config_load.test_anything_is_accepted_or_refused_with_config_error
    for test in (bare, partial):
        assert _settings_of(test).deadline is None
        assert HealthCheck.too_slow in _settings_of(test).suppress_health_check
    assert _settings_of(partial).max_examples == 100
