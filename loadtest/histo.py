"""Latency histograms (HdrHistogram, microseconds) and their merge across processes.

Generator processes record into their own histograms and send `encode()`d
bytes to the parent, which decodes and adds them: percentiles of the merged
histogram are exact to the histogram's precision, unlike averaging percentiles.

Pure: no I/O. Must not import asyncio or `lightnode`.
"""

from __future__ import annotations

from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
# 1000 s: anything slower is a hung request; values above are clamped to it.
HIGHEST_US = 1_000_000_000
# 3 significant figures for the run totals (0.1 % error); 2 for the per-second
# histograms, which exist only for the plots and cost ~10x less memory each.
TOTAL_DIGITS = 3
SECOND_DIGITS = 2

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


def new_histogram(digits: int = TOTAL_DIGITS) -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, digits)


def record_us(histogram: HdrHistogram, value_us: float, count: int = 1) -> None:
    """Record `count` latencies of `value_us`, clamped into the trackable range."""
    value = int(value_us)
    if value < LOWEST_US:
        value = LOWEST_US
    elif value > HIGHEST_US:
        value = HIGHEST_US
    histogram.record_value(value, count)


def encode(histogram: HdrHistogram) -> bytes | None:
    """Compressed bytes for the pipe to the parent; None for an empty histogram."""
    if histogram.get_total_count() == 0:
        return None
    return bytes(histogram.encode())


def merge(encoded: Iterable[bytes | None], digits: int = TOTAL_DIGITS) -> HdrHistogram:
    """Decode and add histograms from several processes into a new one."""
    merged = new_histogram(digits)
    for blob in encoded:
        if blob:
            merged.add(HdrHistogram.decode(blob))
    return merged


def summary_ms(histogram: HdrHistogram) -> dict[str, float]:
    """p50/p90/p99/p999/max (and min, mean) in milliseconds; zeros when empty."""
    if histogram.get_total_count() == 0:
        keys = [name for name, _ in PERCENTILES] + ["max", "min", "mean"]
        return {key: 0.0 for key in keys}
    result = {name: _ms(histogram.get_value_at_percentile(pct)) for name, pct in PERCENTILES}
    result["max"] = _ms(histogram.get_max_value())
    result["min"] = _ms(histogram.get_min_value())
    result["mean"] = _ms(histogram.get_mean_value())
    return result


def _ms(value_us: float) -> float:
    return round(value_us / 1000.0, 3)
