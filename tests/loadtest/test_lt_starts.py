"""loadtest.starts: the data directories it lays out and what it reads from /proc/stat."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest import starts


def test_many_endpoints_lays_out_services_of_five_and_a_sleepy_tenth(tmp_path: Path) -> None:
    starts.many_endpoints(tmp_path, 57)
    services = sorted(p.name for p in (tmp_path / "services").iterdir())
    assert services == [f"s{i:03d}" for i in range(12)]  # 11 of 5, one of 2
    seen = []
    for service_id in services:
        gen = tmp_path / "services" / service_id / "generations" / "v1"
        definition = json.loads((gen / "service.json").read_text())
        assert definition["id"] == service_id
        state = json.loads((tmp_path / "services" / service_id / "state.json").read_text())
        assert state["enabled"] and state["mapping"]["entries"] == [{"generation": "v1", "proba": 1.0}]
        for endpoint in definition["endpoints"]:
            source = (gen / endpoint["code"]).read_text()
            assert ("time.sleep(1.0)" in source) == (service_id in ("s000", "s010"))
            compile(source, endpoint["code"], "exec")
            seen.append(endpoint["id"])
    assert sorted(seen, key=lambda e: int(e[1:])) == [f"e{i}" for i in range(57)]
    assert not list(tmp_path.rglob("*.tmp"))


def test_idle_share_is_the_idle_part_of_the_jiffies_between_two_readings() -> None:
    assert starts.idle_share((100, 1000), (150, 1200)) == 0.25
    assert starts.idle_share((100, 1000), (100, 1000)) == 0.0  # no time passed


def test_cpu_times_reads_idle_within_total() -> None:
    idle, total = starts.cpu_times()
    assert 0 <= idle <= total and total > 0


def test_one_ms_endpoint_runs_about_a_millisecond() -> None:
    namespace: dict[str, object] = {}
    exec(starts.ONE_MS, namespace)
    import time

    began = time.perf_counter()
    assert namespace["f"]() == 1  # type: ignore[operator]
    assert time.perf_counter() - began >= 0.001
