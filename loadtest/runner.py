"""One measured run: generator processes, scraper, faults, progress, then the report.

    execute(plan)
      ProcGroup.start ... wait_ready ... go(go_at)        (procs.py)
      warm-up (not counted) | stages back to back ........ measure_start .. end
      Scraper.run: GET /metrics at measure_start + k       (scrape.py)
      faults: fire at measure_start + fault.at             (faults.py)
      progress line once a second                          (progress.py)
      wait_done -> build_report                            (report.py)

A first Ctrl-C stops the generators early and still writes a report (marked
"interrupted"); a second one aborts. Must not import `lightnode`.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from time import monotonic
from typing import Any

from loadtest import httpcall, report
from loadtest.faults import NodeAccess, fire
from loadtest.plan import PlanError, RunPlan, render_requests, split_connections
from loadtest.procs import (
    DONE_GRACE_S,
    GeneratorFailed,
    ProcGroup,
    WorkerJob,
    fd_limit_problem,
)
from loadtest.progress import ProgressLine, Tally
from loadtest.scrape import Scraper

# Time between "go" and the first request, so every process starts together.
GO_DELAY_S = 0.3


class TargetUnreachable(RuntimeError):
    """The target did not accept a TCP connection before the run."""


def make_jobs(plan: RunPlan) -> list[WorkerJob]:
    requests = render_requests(plan)
    # --max-connections caps the open loop's pool; closed-loop stages get theirs.
    closed = max((stage.connections or 0 for stage in plan.stages), default=0)
    per_proc_cap = max(
        1,
        math.ceil(plan.max_connections / plan.procs),
        split_connections(closed, plan.procs, 0),
    )
    return [
        WorkerJob(
            proc_index=index,
            procs=plan.procs,
            host=plan.target.host,
            port=plan.target.port,
            requests=requests,
            stages=plan.stages,
            warmup_s=plan.warmup_s,
            timeout_s=plan.timeout_s,
            max_connections=per_proc_cap,
        )
        for index in range(plan.procs)
    ]


async def execute(
    plan: RunPlan, *, access: NodeAccess | None = None, progress: ProgressLine | None = None
) -> dict[str, Any]:
    """Run `plan` against its target and return report.json's content.

    Args:
        access: the node's control plane, needed when the plan has faults.

    Raises:
        PlanError: the closed-loop connections do not fit the open-files limit.
        TargetUnreachable: no TCP connection to the target.
        GeneratorFailed: a generator process failed.
    """
    problem = fd_limit_problem(plan.stages, plan.procs)
    if problem:
        raise PlanError(problem)
    progress = progress or ProgressLine(enabled=False)
    problem = await httpcall.reachable(plan.target)
    if problem:
        raise TargetUnreachable(problem)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tally = Tally(plan.procs)
    group = ProcGroup(make_jobs(plan), tally.add)
    scraper = Scraper(
        plan.target,
        plan.service_id,
        plan.endpoint_id,
        headers=access.admin_headers if access else (),
    )
    interrupted = _Interrupt(group, progress)
    tasks: list[asyncio.Task[Any]] = []
    try:
        group.start()
        await _within(group.wait_ready(), "the generator processes did not start")
        go_at = monotonic() + GO_DELAY_S
        measure_start = go_at + plan.warmup_s
        end = measure_start + plan.duration_s
        group.go(go_at)
        scrape_task = asyncio.create_task(scraper.run(measure_start, end))
        tasks.append(scrape_task)
        tasks.append(
            asyncio.create_task(_show_progress(plan, tally, scraper, progress, measure_start, end))
        )
        fault_tasks = [
            asyncio.create_task(_fire_at(fault, access, measure_start, progress))
            for fault in plan.faults
        ]
        tasks.extend(fault_tasks)
        results = await _within(
            group.wait_done(
                plan.warmup_s + plan.duration_s + plan.timeout_s + GO_DELAY_S + DONE_GRACE_S
            ),
            "the generator processes did not finish",
        )
        fault_results = await _collect_faults(fault_tasks)
        await asyncio.wait([scrape_task], timeout=2.0)  # the scrape at the very end
    finally:
        interrupted.remove()
        for task in tasks:
            task.cancel()
        group.stop()
        group.close()
        progress.end()
    buckets = tally.buckets + [b for r in results for b in r.get("buckets", [])]
    result = report.build_report(
        plan, results, buckets, scraper.samples, scraper.status(), fault_results, started_at
    )
    if interrupted.count or any(r.get("stopped") for r in results):
        result["interrupted"] = True
    return result


async def _within(awaitable: Any, what: str) -> Any:
    try:
        return await awaitable
    except asyncio.TimeoutError:
        raise GeneratorFailed(f"{what} in time") from None


async def _fire_at(
    fault: Any, access: NodeAccess | None, measure_start: float, progress: ProgressLine
) -> dict[str, Any]:
    await asyncio.sleep(max(0.0, measure_start + fault.at_s - monotonic()))
    if access is None:
        return {
            "at": fault.at_s,
            "action": fault.action,
            "ok": False,
            "detail": "no access to the node's control plane",
        }
    outcome = await fire(fault, access, measure_start)
    state = "ok" if outcome["ok"] else "FAILED"
    progress.note(f"fault at {fault.at_s:g} s {fault.action}: {state} {outcome['detail']}")
    return outcome


async def _collect_faults(tasks: list[asyncio.Task[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Results of fired faults; one still running after the run is cut short."""
    if tasks:
        await asyncio.wait(tasks, timeout=5.0)
    results = []
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is None:
            results.append(task.result())
        else:
            task.cancel()
            results.append({"ok": False, "detail": "did not fire or finish within the run"})
    return results


async def _show_progress(
    plan: RunPlan,
    tally: Tally,
    scraper: Scraper,
    progress: ProgressLine,
    measure_start: float,
    end: float,
) -> None:
    """Once a second, a quarter second after the processes ship their buckets."""
    go_at = measure_start - plan.warmup_s
    tick = 1
    while True:
        await asyncio.sleep(max(0.0, go_at + tick + 0.25 - monotonic()))
        now = monotonic()
        if now < measure_start:
            progress.show(f"warm-up {measure_start - now:4.1f} s left")
        else:
            progress.show(
                tally.line(min(now, end) - measure_start, plan.duration_s, scraper.latest)
            )
        tick += 1


class _Interrupt:
    """SIGINT while running: first stop the generators, then abort the run."""

    def __init__(self, group: ProcGroup, progress: ProgressLine) -> None:
        self.group, self.progress = group, progress
        self.count = 0
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        try:
            self.loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            self.installed = True
        except (ValueError, RuntimeError, NotImplementedError):
            self.installed = False  # not the main thread: default Ctrl-C behaviour

    def _on_sigint(self) -> None:
        self.count += 1
        if self.count == 1:
            self.progress.note("interrupted: stopping the generators (Ctrl-C again to abort)")
            self.group.stop()
        elif self.task is not None:
            self.task.cancel()

    def remove(self) -> None:
        if self.installed:
            with suppress(ValueError, RuntimeError):
                self.loop.remove_signal_handler(signal.SIGINT)


def default_out_dir() -> Path:
    return Path("loadtest-out") / datetime.now().strftime("%Y%m%d-%H%M%S")


def write_outputs(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write report.json and the PNG plots into `out_dir`; return what was written."""
    from loadtest import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return [path, *plots.write_plots(result, out_dir)]
