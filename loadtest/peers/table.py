"""Medians over rounds and the Markdown tables of the peer benchmark (pure).

`summarize(runs)` groups the per-run records by (function, concurrency,
server) and takes medians; `render_markdown` prints one table per function and
concurrency with ratios to lightnode (req/s, p99 and CPU per request: above 1
means the peer has more of it), and the wrk cross-check. No I/O. Must not
import `lightnode`.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

REFERENCE = "lightnode"
CROSSCHECK_TOLERANCE = 0.10


def _median(values: Iterable[float | None]) -> float | None:
    present = [float(value) for value in values if value is not None]
    return statistics.median(present) if present else None


def summarize(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (function, concurrency, server) in first-seen order, medians of its runs.

    A run with a "failed" key counts in `failed_runs` only.
    """
    groups: dict[tuple[str, int, str], list[Mapping[str, Any]]] = {}
    failed: dict[tuple[str, int, str], int] = {}
    for run in runs:
        key = (run["function"], int(run["concurrency"]), run["server"])
        groups.setdefault(key, [])
        if run.get("failed"):
            failed[key] = failed.get(key, 0) + 1
        else:
            groups[key].append(run)
    rows = []
    for (function, concurrency, server), done in groups.items():
        reference = groups.get((function, concurrency, REFERENCE), [])
        per_round = (
            round_ratios(done, reference, "throughput_rps") if server != REFERENCE else []
        )
        rows.append(
            {
                "function": function,
                "concurrency": concurrency,
                "server": server,
                "runs": len(done),
                "failed_runs": failed.get((function, concurrency, server), 0),
                "throughput_rps": _median(r.get("throughput_rps") for r in done),
                "p50_ms": _median(r.get("latency_ms", {}).get("p50") for r in done),
                "p99_ms": _median(r.get("latency_ms", {}).get("p99") for r in done),
                "cpu_us_per_request": _median(r.get("cpu_us_per_request") for r in done),
                "root_cpu_us_per_request": _median(r.get("root_cpu_us_per_request") for r in done),
                "errors": sum(int(r.get("errors") or 0) for r in done),
                "generator_saturated": any(r.get("generator_saturated") for r in done),
                "round_ratios": per_round,
            }
        )
    return rows


def round_ratios(
    runs: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]], field: str
) -> list[float]:
    """`field` of each run ÷ that of the reference's run in the same round, in round order.

    A round counts only when both ran it. Paired by round, these ratios compare two
    servers measured minutes apart; a ratio of medians may pair different rounds, and
    on a machine whose speed drifts between rounds that can move it across 1.0.
    """
    by_round = {r.get("round"): r.get(field) for r in reference}
    ratios = []
    for run in sorted(runs, key=lambda r: r.get("round") or 0):
        value = ratio(run.get(field), by_round.get(run.get("round")))
        if value is not None:
            ratios.append(value)
    return ratios


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def rounds_won(ratios: Iterable[float]) -> int:
    """The rounds lightnode won: those where the peer's ratio to it is below 1.0."""
    return sum(1 for value in ratios if value < 1.0)


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _per_round(ratios: Sequence[float]) -> str:
    """The median of per-round ratios; with several, their range and how many rounds
    lightnode won (a peer's ratio below 1.0): on a machine whose speed drifts, the count
    tells a tie from a loss better than either median."""
    if not ratios:
        return "–"
    median = f"{statistics.median(ratios):.2f}×"
    if len(ratios) == 1:
        return median
    won = rounds_won(ratios)
    return f"{median} ({min(ratios):.2f}–{max(ratios):.2f}; lightnode ahead {won}/{len(ratios)})"


def _table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    reference = next((row for row in rows if row["server"] == REFERENCE), None)
    ref = reference or {}
    lines = [
        "| server | req/s | × lightnode | × lightnode per round | p50 ms | p99 ms "
        "| p99 × lightnode | CPU µs/req | CPU × lightnode | errors | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        runs = f"{row['runs']}" + (f" ({row['failed_runs']} failed)" if row["failed_runs"] else "")
        saturated = " (generator saturated)" if row.get("generator_saturated") else ""
        cells = [
            f"{row['server']}{saturated}",
            _num(row["throughput_rps"], 0),
            _times(ratio(row["throughput_rps"], ref.get("throughput_rps"))),
            _per_round(row.get("round_ratios") or ()),
            _num(row["p50_ms"], 2),
            _num(row["p99_ms"], 2),
            _times(ratio(row["p99_ms"], ref.get("p99_ms"))),
            _num(row["cpu_us_per_request"], 1),
            _times(ratio(row["cpu_us_per_request"], ref.get("cpu_us_per_request"))),
            str(row["errors"]),
            runs,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _root_note(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """lightnode's node process alone (its pipelines are the rest of its CPU)."""
    reference = next((row for row in rows if row["server"] == REFERENCE), None)
    if reference is None or reference.get("root_cpu_us_per_request") is None:
        return []
    root = reference["root_cpu_us_per_request"]
    return [
        f"lightnode's node process alone: {root:,.1f} µs CPU per request (pipelines: the rest).",
        "",
    ]


def render_markdown(
    summary: Sequence[Mapping[str, Any]],
    crosscheck: Sequence[Mapping[str, Any]] = (),
    *,
    rounds: int,
    duration_s: float,
    generator: str = "harness",
) -> str:
    """Every (function, concurrency) table, in the order the summary has them.

    With `generator="wrk"` the headings say that wrk, not the harness, made the load.
    """
    load = ", load from wrk -t1" if generator == "wrk" else ""
    keys: list[tuple[str, int]] = []
    for row in summary:
        key = (row["function"], row["concurrency"])
        if key not in keys:
            keys.append(key)
    parts: list[str] = []
    for function, concurrency in keys:
        rows = [r for r in summary if (r["function"], r["concurrency"]) == (function, concurrency)]
        parts.append(
            f"### {function}, c={concurrency} "
            f"(median of {rounds} round{'s' if rounds != 1 else ''} of {duration_s:g} s{load})"
        )
        parts.append("")
        parts.extend(_table(rows))
        parts.append("")
        parts.extend(_root_note(rows))
    if crosscheck:
        parts.extend(render_crosscheck(crosscheck))
    return "\n".join(parts).rstrip() + "\n"


def crosscheck_entry(harness_rps: float | None, wrk_rps: float | None) -> dict[str, Any]:
    """harness/wrk throughput ratio and whether it is within the tolerance."""
    agreement = ratio(harness_rps, wrk_rps)
    within = agreement is not None and abs(agreement - 1.0) <= CROSSCHECK_TOLERANCE
    return {"harness_over_wrk": agreement, "within_tolerance": within}


def wrk_bracket(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any]:
    """The wrk side of a cross-check from parsed wrk runs just before and just after the
    harness run: their mean, so that a machine drifting during the three cancels out
    (one run when the other failed)."""
    runs = [run for run in (before, after) if run is not None]
    return {
        "wrk_rps": _mean([run["throughput_rps"] for run in runs]),
        "wrk_p99_ms": _mean([run["latency_ms"].get("p99") for run in runs]),
        "wrk_before_rps": before["throughput_rps"] if before is not None else None,
        "wrk_after_rps": after["throughput_rps"] if after is not None else None,
        "wrk_cpu_us_per_request": _mean(
            [_scaled(ratio(run.get("cpu_s"), run.get("requests")), 1e6) for run in runs]
        ),
    }


def generator_cpu_us(cpu_pct: float | None, throughput_rps: float | None) -> float | None:
    """A generator's CPU per request in µs, from its share of a core and the throughput."""
    return _scaled(ratio(cpu_pct, throughput_rps), 1e4)  # (pct / 100) / rps * 1e6


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _mean(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None


def render_crosscheck(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        f"### generator cross-check against wrk (within {CROSSCHECK_TOLERANCE:.0%} wanted)",
        "",
        "wrk runs just before and just after the harness; its req/s, p99 and CPU are their means.",
        "On `spin` the server sets the pace, so both generators should measure the same; on",
        "`add` the server gets the CPU a generator leaves it, so a costlier generator measures",
        "less (the generators' own CPU per request says by how much they differ).",
        "",
        "| round | case | harness req/s | wrk req/s (before / after) | harness / wrk "
        "| harness p99 ms | wrk p99 ms | generator CPU µs/req (harness / wrk) | agrees |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for entry in entries:
        case = f"{entry['server']} {entry['function']} c={entry['concurrency']}"
        wrk_cell = _num(entry.get("wrk_rps"), 0)
        if "wrk_before_rps" in entry:
            wrk_cell += (
                f" ({_num(entry.get('wrk_before_rps'), 0)} / {_num(entry.get('wrk_after_rps'), 0)})"
            )
        cpu_cell = (
            f"{_num(entry.get('harness_cpu_us_per_request'), 1)}"
            f" / {_num(entry.get('wrk_cpu_us_per_request'), 1)}"
        )
        cells = [
            str(entry["round"]),
            case,
            _num(entry.get("harness_rps"), 0),
            wrk_cell,
            _num(entry.get("harness_over_wrk"), 3),
            _num(entry.get("harness_p99_ms"), 2),
            _num(entry.get("wrk_p99_ms"), 2),
            cpu_cell,
            "yes" if entry.get("within_tolerance") else "NO",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines
