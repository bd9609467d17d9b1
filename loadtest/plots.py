"""PNG plots of a report's timeline (matplotlib, Agg backend: no display needed).

    latency.png     p50 and p99 per second (ms, log scale when it spans decades)
    throughput.png  sent, ok and errors per second
    pool.png        pipelines by state (stacked) and queue length per second,
                    only when the run scraped the node's /metrics

Reads the report dict only; matplotlib is imported when plotting starts, so
the rest of the harness works without it. Must not import `lightnode`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STATE_ORDER = ("starting", "idle", "busy", "stopping")
DPI = 100
SIZE_IN = (10, 4)


def write_plots(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write the PNGs for `report` into `out_dir`; return their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        print("note: matplotlib is not installed; no plots written", file=sys.stderr)
        return []
    timeline = report.get("timeline") or []
    title = f"{report.get('service')}/{report.get('endpoint')} @ {report.get('target')}"
    stages = report.get("stages") or []
    written = [
        _save(pyplot, _latency(pyplot, timeline, title), stages, out_dir / "latency.png"),
        _save(pyplot, _throughput(pyplot, timeline, title), stages, out_dir / "throughput.png"),
    ]
    if any("pipelines" in entry or "queue" in entry for entry in timeline):
        written.append(_save(pyplot, _pool(pyplot, timeline, title), stages, out_dir / "pool.png"))
    return written


def _save(pyplot: Any, figure: Any, stages: Sequence[Mapping[str, Any]], path: Path) -> Path:
    _stage_lines(figure.axes[0], stages)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    pyplot.close(figure)
    return path


def _stage_lines(axes: Any, report_stages: Sequence[Mapping[str, Any]]) -> None:
    for stage in report_stages[1:]:
        axes.axvline(stage["start_s"], color="grey", linewidth=0.6, linestyle=":")


def _latency(pyplot: Any, timeline: Sequence[Mapping[str, Any]], title: str) -> Any:
    figure, axes = pyplot.subplots(figsize=SIZE_IN)
    seconds = [e["t"] for e in timeline]
    p50 = [e.get("p50_ms") or None for e in timeline]
    p99 = [e.get("p99_ms") or None for e in timeline]
    axes.plot(seconds, p50, marker=".", label="p50")
    axes.plot(seconds, p99, marker=".", label="p99")
    values = [v for v in p50 + p99 if v]
    if values and max(values) / max(min(values), 1e-3) > 100:
        axes.set_yscale("log")
    else:
        axes.set_ylim(bottom=0)
    axes.set_xlabel("seconds")
    axes.set_ylabel("latency (ms)")
    axes.set_title(f"latency per second: {title}")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def _throughput(pyplot: Any, timeline: Sequence[Mapping[str, Any]], title: str) -> Any:
    figure, axes = pyplot.subplots(figsize=SIZE_IN)
    seconds = [e["t"] for e in timeline]
    axes.plot(seconds, [e["sent"] for e in timeline], label="sent", color="grey", linestyle="--")
    axes.plot(seconds, [e["ok"] for e in timeline], label="ok (200)", color="tab:green")
    axes.plot(seconds, [e["errors"] for e in timeline], label="errors", color="tab:red")
    axes.set_xlabel("seconds")
    axes.set_ylabel("requests per second")
    axes.set_ylim(bottom=0)
    axes.set_title(f"throughput: {title}")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def _pool(pyplot: Any, timeline: Sequence[Mapping[str, Any]], title: str) -> Any:
    figure, axes = pyplot.subplots(figsize=SIZE_IN)
    scraped = [e for e in timeline if e.get("pipelines") or e.get("queue") is not None]
    seconds = [e["t"] for e in scraped]
    states = [s for s in STATE_ORDER if any((e.get("pipelines") or {}).get(s) for e in scraped)]
    others = sorted({s for e in scraped for s in (e.get("pipelines") or {})} - set(STATE_ORDER))
    layers = [[(e.get("pipelines") or {}).get(s, 0) for e in scraped] for s in states + others]
    if layers:
        axes.stackplot(seconds, layers, labels=states + others, alpha=0.7, step="post")
    axes.set_xlabel("seconds")
    axes.set_ylabel("pipelines")
    queue_axes = axes.twinx()
    queue = [e.get("queue") or 0 for e in scraped]
    queue_axes.plot(seconds, queue, color="black", label="queue", drawstyle="steps-post")
    queue_axes.set_ylim(bottom=0, top=max([1, *queue]) * 1.1)
    axes.set_ylim(bottom=0)
    queue_axes.set_ylabel("queue length")
    axes.set_title(f"pool and queue: {title}")
    handles, labels = axes.get_legend_handles_labels()
    more_handles, more_labels = queue_axes.get_legend_handles_labels()
    axes.legend(handles + more_handles, labels + more_labels, loc="upper left")
    return figure
