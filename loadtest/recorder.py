"""Per-process accounting of one run: totals, per-second buckets, histograms.

The client calls `issued`, `wrote`, `answered` and `failed` with monotonic timestamps;
the process loop calls `close_seconds(now)` once a second and ships the closed
buckets to the parent. A second is closed once the clock has left it, so a
bucket never changes after it was shipped. Requests sent before
`measure_start` (the warm-up) are not counted anywhere.

Latencies are whole microseconds counted in a dict per second, and go into
the HdrHistograms (total and per second) when the second closes, one
`record_value(v, count)` per distinct value: hdrh records in pure Python at
about 1.5 us a call, which per request would cost the generator a third of
its budget. The histograms are the same either way.

The latencies of non-200 answers are also kept apart by status and by
errorType (so a scenario can tell "admitted p99 <= queue timeout" from
"rejections fast"); the 200s' histogram is the second's latencies minus
those, taken when the second closes, so a 200 answer costs nothing more.

Pure: takes times as arguments, reads no clock, does no I/O.
Must not import asyncio or `lightnode`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest import histo

# connect: a connection attempt failed; reset: the connection closed or broke
# before the answer was complete; timeout: no answer within the request timeout;
# invalid: the answer was not HTTP (a TLS port, another protocol).
CLIENT_ERROR_KINDS = ("connect", "reset", "timeout", "invalid")


@dataclass
class Bucket:
    """One second of the timeline, for this process."""

    sent: int = 0
    ok: int = 0
    errors: int = 0
    latency_us: dict[int, int] = field(default_factory=dict)  # value -> count
    # The non-200 answers among them: (status, errorType) -> value -> count.
    other_us: dict[tuple[str, str | None], dict[int, int]] = field(default_factory=dict)


class Recorder:
    """Counts and latencies of one generator process."""

    def __init__(self, measure_start: float, stage_starts: Sequence[float] = (0.0,)) -> None:
        """Args:
        measure_start: monotonic time at which the measured run starts.
        stage_starts: start of each stage in seconds from `measure_start`;
            a request counts in the stage its intended time falls in.
        """
        self.measure_start = measure_start
        self._stage_bounds = [measure_start + start for start in stage_starts[1:]]
        self.stage_counts = [{"sent": 0, "ok": 0, "errors": 0} for _ in stage_starts]
        self.latency = histo.new_histogram()
        self.send_lag = histo.new_histogram()
        self.latency_by_status: dict[str, Any] = {}  # status -> histogram
        self.latency_by_error_type: dict[str, Any] = {}  # errorType -> histogram
        self._lag_us: dict[int, int] = {}
        self.sent_total = 0
        self.status_counts: dict[str, int] = {}
        self.error_types: dict[str, int] = {}
        self.client_errors = dict.fromkeys(CLIENT_ERROR_KINDS, 0)
        self._buckets: dict[int, Bucket] = {}
        self._next_open = 0  # seconds below this one were shipped

    def issued(self, due: float) -> None:
        """A request due at `due` was issued (open loop: its intended time).

        Counted as sent in the second and the stage of `due`, whether or not
        a connection was free: the timeline's `sent` is the offered load.
        """
        if due < self.measure_start:
            return
        self.sent_total += 1
        self._bucket(due).sent += 1
        self._stage(due)["sent"] += 1

    def wrote(self, origin: float, due: float, now: float) -> None:
        """A request was written at `now`; send lag = now - origin (its latency origin)."""
        if due < self.measure_start:
            return
        lag_us = int((now - origin) * 1e6)
        if lag_us >= 1:
            self._lag_us[lag_us] = self._lag_us.get(lag_us, 0) + 1

    def answered(
        self, origin: float, due: float, now: float, status: int, error_type: str | None
    ) -> None:
        """An HTTP answer arrived; latency runs from `origin` (its intended send
        time, within the timer slack); `due` decides whether and where it counts."""
        if due < self.measure_start:
            return
        latency_us = int((now - origin) * 1e6)
        bucket = self._bucket(now)
        counts = bucket.latency_us
        counts[latency_us] = counts.get(latency_us, 0) + 1
        key = str(status)
        self.status_counts[key] = self.status_counts.get(key, 0) + 1
        if status == 200:
            bucket.ok += 1
            self._stage(due)["ok"] += 1
            return
        bucket.errors += 1
        self._stage(due)["errors"] += 1
        other = bucket.other_us.setdefault((key, error_type or None), {})
        other[latency_us] = other.get(latency_us, 0) + 1
        if error_type:
            self.error_types[error_type] = self.error_types.get(error_type, 0) + 1

    def failed(self, due: float, now: float, kind: str) -> None:
        """No HTTP answer for the request due at `due`: `kind` is one of CLIENT_ERROR_KINDS."""
        if due < self.measure_start:
            return
        self.client_errors[kind] += 1
        self._bucket(now).errors += 1
        self._stage(due)["errors"] += 1

    def connect_failed(self, now: float) -> None:
        """A connection attempt failed (not tied to one request)."""
        if now < self.measure_start:
            return
        self.client_errors["connect"] += 1
        self._bucket(now).errors += 1

    def close_seconds(self, now: float) -> list[dict[str, Any]]:
        """Ship every bucket the clock has left, as plain dicts for the pipe."""
        current = int(now - self.measure_start) if now >= self.measure_start else -1
        shipped = []
        while self._next_open < current:
            second = self._next_open
            bucket = self._buckets.pop(second, None) or Bucket()
            shipped.append(self._ship(second, bucket))
            self._next_open += 1
        self._flush_lag()
        return shipped

    def close_all(self) -> list[dict[str, Any]]:
        """Ship every remaining bucket (end of run)."""
        last = max(self._buckets, default=self._next_open - 1)
        return self.close_seconds(self.measure_start + last + 1)

    def totals(self) -> dict[str, Any]:
        """Run totals; call after `close_all` so every latency is in the histogram."""
        self._flush_lag()
        return {
            "sent": self.sent_total,
            "status_counts": dict(self.status_counts),
            "error_types": dict(self.error_types),
            "client_errors": dict(self.client_errors),
            "latency": histo.encode(self.latency),
            "send_lag": histo.encode(self.send_lag),
            "latency_by_status": _encode_each(self.latency_by_status),
            "latency_by_error_type": _encode_each(self.latency_by_error_type),
            "stages": [dict(counts) for counts in self.stage_counts],
        }

    def _stage(self, due: float) -> dict[str, int]:
        return self.stage_counts[bisect_right(self._stage_bounds, due)]

    def _bucket(self, when: float) -> Bucket:
        # A late event for an already shipped second lands in the oldest open one.
        second = max(int(when - self.measure_start), self._next_open)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = Bucket()
        return bucket

    def _ship(self, second: int, bucket: Bucket) -> dict[str, Any]:
        per_second = histo.new_histogram(histo.SECOND_DIGITS)
        ok_us = dict(bucket.latency_us) if bucket.other_us else bucket.latency_us
        for (status, error_type), counts in bucket.other_us.items():
            for value_us, count in counts.items():
                ok_us[value_us] -= count
                histo.record_us(_histogram(self.latency_by_status, status), value_us, count)
                if error_type is not None:
                    histogram = _histogram(self.latency_by_error_type, error_type)
                    histo.record_us(histogram, value_us, count)
        for value_us, count in bucket.latency_us.items():
            histo.record_us(self.latency, value_us, count)
            histo.record_us(per_second, value_us, count)
            ok = ok_us[value_us]
            if ok:
                histo.record_us(_histogram(self.latency_by_status, "200"), value_us, ok)
        return {
            "t": second,
            "sent": bucket.sent,
            "ok": bucket.ok,
            "errors": bucket.errors,
            "latency": histo.encode(per_second),
        }

    def _flush_lag(self) -> None:
        for value_us, count in self._lag_us.items():
            histo.record_us(self.send_lag, value_us, count)
        self._lag_us.clear()


def _histogram(histograms: dict[str, Any], key: str) -> Any:
    histogram = histograms.get(key)
    if histogram is None:
        histogram = histograms[key] = histo.new_histogram()
    return histogram


def _encode_each(histograms: dict[str, Any]) -> dict[str, bytes | None]:
    return {key: histo.encode(histogram) for key, histogram in sorted(histograms.items())}
