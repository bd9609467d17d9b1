"""The query log: line format, params, buffering, rotation, write errors."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from lightnode.http.app import RequestRecord
from lightnode.observe import querylog
from lightnode.observe.querylog import QueryLog

KEYS = {
    "time",
    "requestId",
    "serviceId",
    "endpointId",
    "generation",
    "status",
    "errorType",
    "wait",
    "execution",
    "functionInternal",
    "total",
    "client",
}


def record(params: bytes = b'{"a": 1}', **kw: Any) -> RequestRecord:
    base: dict[str, Any] = dict(
        time=1767323045.25,
        request_id="rid-1",
        service_id="svc",
        endpoint_id="ep",
        generation="v1",
        status=200,
        error_type=None,
        wait_us=12,
        execution_us=340,
        function_us=300,
        total_us=400,
        client="127.0.0.1",
        params=params,
    )
    base.update(kw)
    return RequestRecord(**base)


class FakeLoop:
    def __init__(self) -> None:
        self.timers: list[Any] = []

    def call_later(self, delay: float, callback: Any) -> Any:
        loop = self

        class Timer:
            cancelled = False

            def cancel(self) -> None:
                self.cancelled = True
                loop.timers.remove(self)

        timer = Timer()
        timer.delay, timer.callback = delay, callback  # type: ignore[attr-defined]
        self.timers.append(timer)
        return timer

    def fire(self) -> None:
        timers, self.timers = self.timers, []
        for timer in timers:
            timer.callback()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def make(tmp_path: Path, **kw: Any) -> QueryLog:
    options: dict[str, Any] = dict(loop=None, max_bytes=1 << 20, backups=2)
    options.update(kw)
    return QueryLog(tmp_path / "queries.log", **options)


def test_one_json_line_with_the_spec_keys(tmp_path: Path) -> None:
    qlog = make(tmp_path)
    qlog.observe(record())
    qlog.observe(record(status=503, error_type="QueueFull", generation=""))
    qlog.close()
    first, second = lines(tmp_path / "queries.log")
    assert set(first) == KEYS
    assert first["time"] == "2026-01-02T03:04:05.250Z"
    assert (first["requestId"], first["serviceId"], first["endpointId"], first["generation"]) == (
        "rid-1",
        "svc",
        "ep",
        "v1",
    )
    assert (first["status"], first["errorType"]) == (200, None)
    assert (first["wait"], first["execution"], first["functionInternal"], first["total"]) == (
        12,
        340,
        300,
        400,
    )
    assert first["client"] == "127.0.0.1"
    assert (second["status"], second["errorType"]) == (503, "QueueFull")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": [1, {"b": "x/y"}]}', {"a": [1, {"b": "x/y"}]}),
        (b"{not json\n", "{not json\n"),
        (b"", {}),
        (b'{"big": 1e999}', '{"big": 1e999}'),
        (b'\xff\xfe{"a"', '\ufffd\ufffd{"a"'),
    ],
)
def test_params_only_with_log_params(tmp_path: Path, body: bytes, expected: object) -> None:
    qlog = make(tmp_path, log_params=True)
    qlog.observe(record(params=body))
    qlog.close()
    (entry,) = lines(tmp_path / "queries.log")
    assert set(entry) == KEYS | {"params"}
    assert entry["params"] == expected
    assert (tmp_path / "queries.log").read_text().count("\n") == 1


def test_no_params_by_default(tmp_path: Path) -> None:
    qlog = make(tmp_path)
    qlog.observe(record(params=b'{"secret": 1}'))
    qlog.close()
    assert "secret" not in (tmp_path / "queries.log").read_text()


def test_lines_wait_for_the_timer_or_a_full_buffer(tmp_path: Path) -> None:
    loop = FakeLoop()
    qlog = make(tmp_path, loop=loop)
    path = tmp_path / "queries.log"
    qlog.observe(record())
    qlog.observe(record())
    assert path.read_bytes() == b"" and len(loop.timers) == 1  # one timer, not one per line
    loop.fire()
    assert len(lines(path)) == 2
    big = record(params=b"x" * 1000)
    qlog.log_params = True
    count = querylog.FLUSH_BYTES // 1000 + 10
    for _ in range(count):
        qlog.observe(big)
    assert 2 < len(lines(path)) < 2 + count  # flushed on size, the rest still buffered
    assert len(loop.timers) == 1
    qlog.close()  # shutdown flushes the rest
    assert len(lines(path)) == 2 + count and not loop.timers


def test_rotation_by_size_keeps_backups(tmp_path: Path) -> None:
    qlog = make(tmp_path, max_bytes=2000, backups=2)
    for i in range(100):
        qlog.observe(record(request_id=f"r{i}"))
        qlog.flush()
    qlog.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["queries.log", "queries.log.1", "queries.log.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 2000
    newest = lines(tmp_path / "queries.log")[-1]["requestId"]
    oldest_kept = lines(tmp_path / "queries.log.2")[0]["requestId"]
    assert newest == "r99" and int(oldest_kept[1:]) > 0
    ids = [e["requestId"] for n in reversed(names) for e in lines(tmp_path / n)]
    assert ids == sorted(
        ids, key=lambda r: int(r[1:])
    )  # no line lost or reordered inside the window


def test_one_large_flush_rotates_between_lines(tmp_path: Path) -> None:
    qlog = make(tmp_path, max_bytes=2000, backups=5)
    for i in range(40):
        qlog.observe(record(request_id=f"r{i}"))
    qlog.close()  # one flush of ~9 kB
    files = sorted(
        tmp_path.iterdir(), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0
    )
    assert len(files) == 5
    ids = [e["requestId"] for f in files for e in lines(f)]
    assert ids == [f"r{i}" for i in range(40)]  # all of them, in order, none split
    assert all(f.stat().st_size <= 2000 for f in files)


def test_rotation_without_backups_truncates(tmp_path: Path) -> None:
    qlog = make(tmp_path, max_bytes=1000, backups=0)
    for _ in range(30):
        qlog.observe(record())
        qlog.flush()
    qlog.close()
    assert [p.name for p in tmp_path.iterdir()] == ["queries.log"]
    assert 0 < (tmp_path / "queries.log").stat().st_size <= 1000


def test_write_errors_drop_lines_and_never_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    qlog = make(tmp_path)
    os.close(qlog._fd)
    qlog._fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    qlog.observe(record())
    qlog.flush()
    qlog.observe(record())
    qlog.flush()
    assert qlog.dropped_lines == 2
    assert len([r for r in caplog.records if "query log" in r.getMessage()]) == 1  # rate-limited
    qlog.close()


def test_observe_cost_is_small(tmp_path: Path) -> None:
    qlog = make(tmp_path, max_bytes=1 << 30)
    rec = record()
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        qlog.observe(rec)
    per_call_ns = (time.perf_counter() - started) / n * 1e9
    qlog.close()
    assert len(lines(tmp_path / "queries.log")) == n
    assert per_call_ns < 50_000, per_call_ns


@pytest.mark.parametrize(
    "odd", ['q"uote', "back\\slash", "new\nline", "tab\t", "lone \ud800", "é/ü", "\x7f", ""]
)
def test_any_string_field_stays_valid_json(tmp_path: Path, odd: str) -> None:
    qlog = make(tmp_path)
    qlog.observe(record(request_id=odd, client=odd, error_type=odd, generation=odd))
    qlog.close()
    raw = (tmp_path / "queries.log").read_bytes()
    assert raw.count(b"\n") == 1
    (entry,) = lines(tmp_path / "queries.log")
    assert entry["requestId"] == entry["client"] == entry["errorType"] == entry["generation"] == odd


def test_time_across_seconds_and_a_clock_going_back(tmp_path: Path) -> None:
    qlog = make(tmp_path)
    base = 1767323045  # 2026-01-02T03:04:05Z
    for wall in (base + 0.999, base + 1.0, base + 1.001, base + 0.5, base + 61.25):
        qlog.observe(record(time=wall))
    qlog.close()
    assert [entry["time"] for entry in lines(tmp_path / "queries.log")] == [
        "2026-01-02T03:04:05.999Z",
        "2026-01-02T03:04:06.000Z",
        "2026-01-02T03:04:06.001Z",
        "2026-01-02T03:04:05.500Z",
        "2026-01-02T03:05:06.250Z",
    ]


def test_literal_cache_overflow_keeps_lines_right(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(querylog, "LITERAL_CACHE_SIZE", 3)
    qlog = make(tmp_path)
    for i in range(6):
        qlog.observe(record(service_id=f"s{i}", endpoint_id=f"e{i}", client=f"10.0.0.{i}"))
    qlog.close()
    entries = lines(tmp_path / "queries.log")
    assert [(e["serviceId"], e["endpointId"], e["client"]) for e in entries] == [
        (f"s{i}", f"e{i}", f"10.0.0.{i}") for i in range(6)
    ]


def test_cached_fragments_follow_status_error_type_and_generation(tmp_path: Path) -> None:
    qlog = make(tmp_path)
    cases = [(200, None, "g1"), (503, "QueueFull", "g1"), (200, None, "g1"), (404, "NotFound", ""),
             (500, "FunctionError", "g2"), (503, "QueueFull", "g1")]  # fmt: skip
    for status, error_type, generation in cases:
        qlog.observe(record(status=status, error_type=error_type, generation=generation))
    qlog.close()
    entries = lines(tmp_path / "queries.log")
    assert [(e["status"], e["errorType"], e["generation"]) for e in entries] == cases


def test_a_removed_or_moved_file_is_reopened(tmp_path: Path) -> None:
    """An operator who removes queries.log (to free space) or moves it away (logrotate
    without copytruncate) gets the next lines in a new queries.log, not in the old inode,
    where they would be lost and the space never freed."""
    path = tmp_path / "queries.log"
    qlog = make(tmp_path)
    qlog.observe(record(request_id="before"))
    qlog.flush()
    path.unlink()
    qlog.observe(record(request_id="after-rm"))
    qlog.flush()
    assert [e["requestId"] for e in lines(path)] == ["after-rm"]
    path.rename(tmp_path / "queries.log-20260102")
    qlog.observe(record(request_id="after-mv"))
    qlog.close()
    assert [e["requestId"] for e in lines(path)] == ["after-mv"]
    assert [e["requestId"] for e in lines(tmp_path / "queries.log-20260102")] == ["after-rm"]


def test_a_removed_logs_directory_is_made_again(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    qlog = make(logs)
    qlog.observe(record(request_id="before"))
    qlog.flush()
    shutil.rmtree(logs)
    qlog.observe(record(request_id="after-rm-rf"))
    qlog.close()
    assert [e["requestId"] for e in lines(logs / "queries.log")] == ["after-rm-rf"]
    assert qlog.dropped_lines == 0


def test_an_api_key_typed_as_an_id_is_not_written_but_a_service_named_so_is(tmp_path: Path) -> None:
    """A key in the id of a /run path (dataikuapi's APINodeClient(uri, KEY)) gets a 404:
    the line holds "<an API key>". A service that exists keeps its name, whatever it is."""
    key = "lnk_" + "Ab3" * 14
    qlog = make(tmp_path)
    qlog.observe(record(service_id=key, status=404, error_type="NotFound"))
    qlog.observe(record(endpoint_id=key.upper(), status=404, error_type="NotFound"))
    qlog.observe(record(service_id="lnk_mapper", status=200))
    qlog.close()
    text = (tmp_path / "queries.log").read_text()
    assert key.lower() not in text.lower()
    assert [(line["serviceId"], line["endpointId"]) for line in lines(tmp_path / "queries.log")] == [
        ("<an API key>", "ep"),
        ("svc", "<an API key>"),
        ("lnk_mapper", "ep"),
    ]
