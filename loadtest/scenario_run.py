"""Run a scenario: set up the node, run the stages with faults, check expectations.

Two ways to get a node:
* no `--target`: the scenario's "service" directory is deployed into a fresh
  temporary data dir (`lightnode deploy`), its "tuning" written into the
  endpoint's tuning file, and a node is started there and stopped after;
* `--target URL`: a running node; a "service" directory is packaged, imported
  and switched to over the admin API, and "tuning" is posted to the settings
  route; with "service": null the scenario's "serviceId" must already be served.

A switch-generation fault needs a generation to switch to: with a service
directory, one package with a fresh generation id is built before the run and
imported when the fault fires. Must not import `lightnode`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from loadtest import node, runner
from loadtest.faults import NodeAccess, admin_call, deploy_over_api
from loadtest.plan import RunPlan, Target
from loadtest.progress import ProgressLine
from loadtest.report import node_died_text
from loadtest.scenario import ExpectationResult, Scenario, check_expectations


class ScenarioSetupError(RuntimeError):
    """The scenario's node or service could not be set up."""


class ScenarioUsageError(ScenarioSetupError):
    """The scenario file, with the command line, does not say what to load: a
    usage error (exit 2), found before any node is started or connection made."""


@contextmanager
def _scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lightnode-loadtest-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _generation_id(tag: str) -> str:
    return f"lt-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}-{tag}"


def _service_id(scenario: Scenario) -> str:
    if scenario.service_dir is not None:
        found = node.read_service_id(scenario.service_dir)
        if scenario.service_id and scenario.service_id != found:
            raise ScenarioUsageError(
                f"serviceId {scenario.service_id!r} does not match "
                f"{scenario.service_dir}/service.json id {found!r}"
            )
        return found
    if not scenario.service_id:
        raise ScenarioUsageError('a scenario with "service": null needs "serviceId"')
    return scenario.service_id


def build_plan(
    scenario: Scenario,
    target: Target,
    service_id: str,
    *,
    warmup_s: float | None = None,
    procs: int | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> RunPlan:
    """The run described by a scenario against `target`; CLI values override the file."""
    return RunPlan(
        target=target,
        service_id=service_id,
        endpoint_id=scenario.endpoint,
        bodies=scenario.bodies,
        stages=scenario.stages,
        faults=scenario.faults,
        procs=procs or scenario.procs or 1,
        warmup_s=warmup_s if warmup_s is not None else (scenario.warmup_s or 0.0),
        timeout_s=scenario.timeout_s or 30.0,
        headers=headers,
    )


async def run_scenario(
    scenario: Scenario,
    *,
    target_url: str | None,
    out_dir: Path,
    admin_key: str | None = None,
    warmup_s: float | None = None,
    procs: int | None = None,
    progress: ProgressLine | None = None,
) -> tuple[dict[str, Any], list[ExpectationResult]]:
    """Set up, run and check one scenario; the report includes the checks.

    Raises:
        ScenarioUsageError: the file and the arguments do not say what to load.
        ScenarioSetupError, node.NodeError, FaultFailed: set-up failed.
        runner.TargetUnreachable, GeneratorFailed: the run could not go on.
    """
    if target_url is None and scenario.service_dir is None:
        raise ScenarioUsageError('without --target the scenario needs a "service" directory')
    service_id = _service_id(scenario)
    headers = (("Authorization", f"Bearer {admin_key}"),) if admin_key else ()
    with _scratch_dir() as scratch:
        package_zip = _prepare_package(scenario, scratch)
        if target_url is not None:
            target = Target.parse(target_url)
            access = NodeAccess(
                target,
                service_id,
                scenario.endpoint,
                admin_headers=headers,
                package_zip=package_zip,
            )
            await _setup_running_node(scenario, access, scratch)
            result = await runner.execute(
                build_plan(scenario, target, service_id, warmup_s=warmup_s, procs=procs),
                access=access,
                progress=progress,
            )
        else:
            result = await _run_on_spawned_node(
                scenario, service_id, scratch, out_dir, package_zip, warmup_s, procs, progress
            )
    return _with_checks(scenario, result)


def _prepare_package(scenario: Scenario, scratch: Path) -> Path | None:
    switches = any(f.action == "switch-generation" for f in scenario.faults)
    if scenario.service_dir is None or not switches:
        return None
    return node.package(
        scenario.service_dir, scratch / "next-generation.zip", _generation_id("next")
    )


async def _setup_running_node(scenario: Scenario, access: NodeAccess, scratch: Path) -> None:
    if scenario.service_dir is not None:
        zip_path = node.package(
            scenario.service_dir, scratch / "deploy.zip", _generation_id("base")
        )
        await deploy_over_api(access, zip_path)
    if scenario.tuning is not None:
        await admin_call(
            access,
            "POST",
            f"{access.service_path}/endpoints/{scenario.endpoint}/settings",
            body=dict(scenario.tuning),
        )


async def _run_on_spawned_node(
    scenario: Scenario,
    service_id: str,
    scratch: Path,
    out_dir: Path,
    package_zip: Path | None,
    warmup_s: float | None,
    procs: int | None,
    progress: ProgressLine | None,
) -> dict[str, Any]:
    assert scenario.service_dir is not None  # checked by run_scenario
    data_dir = scratch / "data"
    data_dir.mkdir()
    node.deploy(scenario.service_dir, data_dir)
    if scenario.tuning is not None:
        node.write_tuning(data_dir, service_id, scenario.endpoint, scenario.tuning)
    spawned = node.SpawnedNode(data_dir, out_dir / "node.log")
    spawned.start()
    result: dict[str, Any] | None = None
    try:
        await spawned.wait_up()
        access = NodeAccess(
            spawned.target,
            service_id,
            scenario.endpoint,
            data_dir=data_dir,
            package_zip=package_zip,
        )
        plan = build_plan(scenario, spawned.target, service_id, warmup_s=warmup_s, procs=procs)
        result = await runner.execute(plan, access=access, progress=progress)
    finally:
        spawned.stop_after_run(result)
    return result


def _with_checks(
    scenario: Scenario, result: dict[str, Any]
) -> tuple[dict[str, Any], list[ExpectationResult]]:
    checks = check_expectations(result, scenario.expectations)
    failed_faults = [f for f in result.get("faults", []) if not f.get("ok")]
    result["scenario"] = {
        "name": scenario.name,
        "file": str(scenario.source),
        "description": scenario.description,
    }
    result["expectations"] = [check.as_dict() for check in checks]
    result["passed"] = (
        all(check.passed for check in checks)
        and not failed_faults
        and not result.get("node_died")
        and not result.get("interrupted")  # read on part of the run only
    )
    return result, checks


def verdict_text(result: dict[str, Any], checks: list[ExpectationResult]) -> str:
    """The expectation list and the verdict, for the end of the summary."""
    lines = [f"scenario   {result['scenario']['name']}"]
    lines += [f"  {check.describe()}" for check in checks]
    for fault in result.get("faults", []):
        if not fault.get("ok"):
            lines.append(
                f"  FAIL fault {fault.get('action')} at {fault.get('at')} s: {fault.get('detail')}"
            )
    if result.get("node_died"):
        lines.append(f"  FAIL {node_died_text(result)}")
    failed = (
        sum(not c.passed for c in checks)
        + sum(not f.get("ok") for f in result.get("faults", []))
        + bool(result.get("node_died"))
    )
    if result.get("interrupted"):
        lines.append("INTERRUPTED (the expectations were read on the part that ran)")
    else:
        lines.append("PASSED" if result.get("passed") else f"FAILED ({failed} failed)")
    return "\n".join(lines)
