"""Build report.json from what the generator processes and the scraper sent.

Report fields (SPEC §13, plus a few more):
  requests         requests sent in the measured window (warm-up excluded)
  responses        requests that got an HTTP answer (any status)
  duration_s       the measured window: the sum of the stages, or as long as it
                   ran when interrupted (then "interrupted": true)
  throughput_rps   responses / duration_s;  ok_rps: 200 answers / duration_s
  latency_ms       p50 p90 p99 p999 max min mean of answered requests (HdrHistogram)
  latency_ms_by_status, latency_ms_by_error_type
                   the same, per status ("200", "503") and per errorType ("QueueFull"):
                   admitted requests' latency apart from the rejections'
  status_counts    {"200": n, "503": n}; error_types {"QueueFull": n} (non-200 bodies)
  client_errors    {"connect", "reset", "timeout", "invalid"}: no HTTP answer
                   (connect counts failed connection attempts, retried every 0.1 s)
  errors           everything that is not a 200
  timeline         per second: t, sent, ok, errors, p50_ms, p99_ms, and when
                   scraped: pipelines {state: n}, allocated, queue
  pool             derived from the scrape (absent when it never worked):
                   samples, max_allocated, min_allocated, final_allocated, max_queue, final_queue
  stages           per stage: start_s, config, sent/ok/errors of the requests sent
                   in it, and pool values scraped during it
  generator        procs, cpu_pct (sum, % of one core), cpu_pct_per_proc, saturated,
                   peak_connections, send_lag_ms
  config echo      target, service, endpoint, mode, connections, rate, warmup_s, timeout_s
  node_exit_code   the exit code of a node the harness started (--spawn, scenarios);
                   node_died: true when it exited during the run, before the stop

Pure: builds dicts and text, no I/O. Must not import asyncio or `lightnode`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from loadtest import histo
from loadtest.plan import RunPlan, Stage, mode_of
from loadtest.schedule import stage_starts

REPORT_VERSION = 1
# A generator process above this share of one core is likely the bottleneck.
SATURATION_CPU_PCT = 90.0


def config_echo(plan: RunPlan) -> dict[str, Any]:
    """The run's settings, repeated in the report so it stands on its own."""
    first = plan.stages[0] if plan.stages else Stage(0.0)
    return {
        "target": plan.target.url,
        "service": plan.service_id,
        "endpoint": plan.endpoint_id,
        "mode": mode_of(plan.stages),
        "connections": first.connections if len(plan.stages) == 1 else None,
        "rate": first.rate_rps if len(plan.stages) == 1 else None,
        "warmup_s": plan.warmup_s,
        "timeout_s": plan.timeout_s,
        "bodies": len(plan.bodies),
    }


def merge_counts(maps: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in maps:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + int(value)
    return dict(sorted(total.items()))


def merge_timeline(buckets: Iterable[Mapping[str, Any]], duration_s: float) -> list[dict[str, Any]]:
    """Per-second buckets from every process -> one entry per second, gaps filled."""
    by_second: dict[int, dict[str, Any]] = {}
    for bucket in buckets:
        entry = by_second.setdefault(
            int(bucket["t"]), {"sent": 0, "ok": 0, "errors": 0, "blobs": []}
        )
        for key in ("sent", "ok", "errors"):
            entry[key] += int(bucket[key])
        entry["blobs"].append(bucket.get("latency"))
    last = max([int(duration_s + 0.999) - 1, *by_second]) if by_second or duration_s else -1
    timeline = []
    for second in range(last + 1):
        entry = by_second.get(second, {"sent": 0, "ok": 0, "errors": 0, "blobs": []})
        latency = histo.summary_ms(histo.merge(entry["blobs"], histo.SECOND_DIGITS))
        timeline.append(
            {
                "t": second,
                "sent": entry["sent"],
                "ok": entry["ok"],
                "errors": entry["errors"],
                "p50_ms": latency["p50"],
                "p99_ms": latency["p99"],
                "max_ms": latency["max"],
            }
        )
    return timeline


def attach_samples(timeline: list[dict[str, Any]], samples: Sequence[Mapping[str, Any]]) -> None:
    """Put the last scrape of each second into that second's timeline entry."""
    by_second = {int(sample["t"]): sample for sample in samples}
    for entry in timeline:
        sample = by_second.get(entry["t"])
        if sample is not None:
            entry["pipelines"] = sample.get("pipelines")
            entry["allocated"] = sample.get("allocated")
            entry["queue"] = sample.get("queue")


def pool_values(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """max/min/final allocated pipelines and queue over scrape samples."""
    allocated = [s["allocated"] for s in samples if s.get("allocated") is not None]
    queue = [s["queue"] for s in samples if s.get("queue") is not None]
    if not allocated and not queue:
        return None
    values: dict[str, Any] = {"samples": len(samples)}
    if allocated:
        values.update(
            max_allocated=max(allocated),
            min_allocated=min(allocated),
            final_allocated=allocated[-1],
        )
    if queue:
        values.update(max_queue=max(queue), final_queue=queue[-1])
    return values


def stage_summaries(
    stages: Sequence[Stage],
    counts: Sequence[Mapping[str, int]],
    samples: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Per stage: its requests (by send time) and pool values from its scrapes.

    A stage's scrapes are those taken from its start to half a second past its
    end, so the sample right at a boundary describes the end of the stage.
    """
    result = []
    for index, (stage, start) in enumerate(zip(stages, stage_starts(list(stages)), strict=True)):
        end = start + stage.duration_s
        mine = counts[index] if index < len(counts) else {}
        summary: dict[str, Any] = {
            "index": index,
            "start_s": start,
            "duration_s": stage.duration_s,
            "rate": stage.rate_rps,
            "rate_to": stage.rate_to_rps,
            "connections": stage.connections,
            "sent": mine.get("sent", 0),
            "ok": mine.get("ok", 0),
            "errors": mine.get("errors", 0),
        }
        summary["ok_rps"] = round(summary["ok"] / stage.duration_s, 2)
        in_stage = [s for s in samples if start <= s["t"] <= end + 0.5]
        summary.update(pool_values(in_stage) or {})
        result.append(summary)
    return result


def merge_stage_counts(results: Sequence[Mapping[str, Any]], stages: int) -> list[dict[str, int]]:
    merged = [{"sent": 0, "ok": 0, "errors": 0} for _ in range(stages)]
    for result in results:
        for index, counts in enumerate(result.get("stages", [])[:stages]):
            for key in merged[index]:
                merged[index][key] += int(counts.get(key, 0))
    return merged


def latency_groups(results: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    """{status or errorType: latency summary} merged over the processes' histograms."""
    blobs: dict[str, list[bytes | None]] = {}
    for result in results:
        for group, blob in (result.get(key) or {}).items():
            blobs.setdefault(group, []).append(blob)
    return {group: histo.summary_ms(histo.merge(blobs[group])) for group in sorted(blobs)}


def generator_values(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    per_proc = [round(100.0 * r["cpu_s"] / max(r["wall_s"], 1e-6), 1) for r in results]
    lag = histo.summary_ms(histo.merge(r.get("send_lag") for r in results))
    return {
        "procs": len(results),
        "cpu_pct": round(sum(per_proc), 1),
        "cpu_pct_per_proc": per_proc,
        "saturated": any(pct > SATURATION_CPU_PCT for pct in per_proc),
        "peak_connections": sum(int(r.get("peak_connections", 0)) for r in results),
        "connect_attempts": sum(int(r.get("connect_attempts", 0)) for r in results),
        "send_lag_ms": {key: lag[key] for key in ("p50", "p99", "max")},
    }


def build_report(
    plan: RunPlan,
    results: Sequence[Mapping[str, Any]],
    buckets: Iterable[Mapping[str, Any]],
    samples: Sequence[Mapping[str, Any]] = (),
    scrape_status: Mapping[str, Any] | None = None,
    faults: Sequence[Mapping[str, Any]] = (),
    started_at: str | None = None,
) -> dict[str, Any]:
    """Assemble report.json from the processes' "done" totals and buckets.

    Args:
        results: one "done" payload per generator process.
        buckets: every per-second bucket from every process.
        samples: scrape samples, each with `t` seconds from the measured start.
    """
    duration_s = plan.duration_s
    if any(r.get("stopped") for r in results):  # cut short: rates over the time it ran
        duration_s = round(max(float(r.get("measured_s", 0.0)) for r in results), 3)
    latency = histo.merge(r.get("latency") for r in results)
    status_counts = merge_counts(r["status_counts"] for r in results)
    client_errors = merge_counts(r["client_errors"] for r in results)
    responses = sum(status_counts.values())
    ok = status_counts.get("200", 0)
    timeline = merge_timeline(buckets, duration_s)
    attach_samples(timeline, samples)
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "started_at": started_at,
        **config_echo(plan),
        "duration_s": duration_s,
        "requests": sum(int(r["sent"]) for r in results),
        "responses": responses,
        "throughput_rps": round(responses / duration_s, 2) if duration_s else 0.0,
        "ok_rps": round(ok / duration_s, 2) if duration_s else 0.0,
        "latency_ms": histo.summary_ms(latency),
        "latency_ms_by_status": latency_groups(results, "latency_by_status"),
        "latency_ms_by_error_type": latency_groups(results, "latency_by_error_type"),
        "status_counts": status_counts,
        "error_types": merge_counts(r["error_types"] for r in results),
        "client_errors": client_errors,
        "errors": responses - ok + sum(client_errors.values()),
        "generator": generator_values(results),
        "stages": stage_summaries(
            plan.stages, merge_stage_counts(results, len(plan.stages)), samples
        ),
        "timeline": timeline,
        "faults": list(faults),
    }
    pool = pool_values(samples)
    if pool is not None:
        report["pool"] = pool
    if scrape_status is not None:
        report["scrape"] = dict(scrape_status)
    return report


# ------------------------------------------------------------------ text output


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _counts(counts: Mapping[str, int]) -> str:
    return "  ".join(f"{key}: {value:,}" for key, value in counts.items()) or "-"


def _load_text(report: Mapping[str, Any]) -> str:
    if report.get("rate") is not None:
        return f"open loop {_fmt(report['rate'])}/s"
    if report.get("connections") is not None:
        return f"closed loop {report['connections']} conns"
    return f"{len(report.get('stages') or [])} stages ({report.get('mode')})"


def _load_line(report: Mapping[str, Any]) -> str:
    return (
        f"{report.get('target')}  {report.get('service')}/{report.get('endpoint')}  "
        f"{_load_text(report)}  {_fmt(report.get('duration_s'))} s"
    )


def summary_text(report: Mapping[str, Any]) -> str:
    """A one-screen text summary of a report."""
    lat = report["latency_ms"]
    gen = report["generator"]
    lines = [
        _load_line(report),
        f"requests   {report['requests']:,} sent, {report['responses']:,} answered; "
        f"throughput {_fmt(report['throughput_rps'])}/s (ok {_fmt(report['ok_rps'])}/s)",
        "latency ms "
        + "  ".join(
            f"{name} {_fmt(lat[key])}"
            for name, key in (
                ("p50", "p50"),
                ("p90", "p90"),
                ("p99", "p99"),
                ("p99.9", "p999"),
                ("max", "max"),
            )
        ),
        f"status     {_counts(report['status_counts'])}",
    ]
    by_status = report.get("latency_ms_by_status") or {}
    if len(by_status) > 1:
        lines.append(
            "by status  "
            + "  ".join(
                f"{status}: p99 {_fmt(lat.get('p99'))} max {_fmt(lat.get('max'))}"
                for status, lat in by_status.items()
            )
        )
    if report["error_types"]:
        lines.append(f"errorType  {_counts(report['error_types'])}")
    if any(report["client_errors"].values()):
        lines.append(f"no answer  {_counts(report['client_errors'])}")
    pool = report.get("pool")
    if pool:
        lines.append(
            f"pool       allocated max {_fmt(pool.get('max_allocated'))} "
            f"final {_fmt(pool.get('final_allocated'))}; queue max "
            f"{_fmt(pool.get('max_queue'))} ({pool['samples']} scrapes)"
        )
    elif report.get("scrape"):
        lines.append(f"pool       not scraped: {report['scrape'].get('last_error')}")
    lines.append(
        f"generator  cpu {_fmt(gen['cpu_pct'])}% over {gen['procs']} proc(s) "
        f"{gen['cpu_pct_per_proc']}; {gen['peak_connections']} connections; "
        f"send lag p99 {_fmt(gen['send_lag_ms']['p99'])} ms"
    )
    if report.get("node_died"):
        lines.append(f"WARNING    {node_died_text(report)}")
    if gen["saturated"]:
        lines.append(
            f"WARNING    the generator saturated (a process above "
            f"{SATURATION_CPU_PCT:g}% of a core): the numbers show its limit, "
            "not the target's; use more --procs"
        )
    for fault in report.get("faults", []):
        state = "ok" if fault.get("ok") else "FAILED"
        lines.append(
            f"fault      at {_fmt(fault.get('at'))} s {fault.get('action')}: "
            f"{state} {fault.get('detail', '')}".rstrip()
        )
    return "\n".join(lines)


def node_died_text(report: Mapping[str, Any]) -> str:
    return f"the node exited during the run with code {report.get('node_exit_code')}"


COMPARE_ROWS = (
    ("requests", "requests"),
    ("duration_s", "duration_s"),
    ("throughput_rps", "throughput_rps"),
    ("ok_rps", "ok_rps"),
    ("latency p50 ms", "latency_ms.p50"),
    ("latency p90 ms", "latency_ms.p90"),
    ("latency p99 ms", "latency_ms.p99"),
    ("latency p99.9 ms", "latency_ms.p999"),
    ("latency max ms", "latency_ms.max"),
    ("errors", "errors"),
    ("generator cpu %", "generator.cpu_pct"),
)


def lookup(report: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (list items by index), or None if absent."""
    value: Any = report
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or a == 0:
        return "-"
    return f"{b / a:.2f}x"


def compare_text(
    a: Mapping[str, Any], b: Mapping[str, Any], names: tuple[str, str] = ("A", "B")
) -> str:
    """Two reports side by side with B/A ratios."""
    rows: list[tuple[str, Any, Any]] = [
        (label, lookup(a, path), lookup(b, path)) for label, path in COMPARE_ROWS
    ]
    for group in ("status_counts", "error_types", "client_errors", "pool"):
        # A group of another shape (another version's report) reads as absent.
        groups = [r.get(group) for r in (a, b)]
        keys = sorted({str(k) for g in groups if isinstance(g, Mapping) for k in g})
        for key in keys:
            rows.append(
                (
                    f"{group}.{key}",
                    lookup(a, f"{group}.{key}") or 0,
                    lookup(b, f"{group}.{key}") or 0,
                )
            )
    head = [
        ("", names[0], names[1], "B/A"),
        ("target", str(a.get("target")), str(b.get("target")), ""),
        ("load", _load_text(a), _load_text(b), ""),
    ]
    table = head + [(label, _fmt(va), _fmt(vb), _ratio(va, vb)) for label, va, vb in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join(
        f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  "
        f"{row[3]:>{widths[3]}}".rstrip()
        for row in table
    )
