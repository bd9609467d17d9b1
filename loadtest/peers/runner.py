"""The peer benchmark: rounds over servers, one harness run per case, medians and ratios.

    for round r (server order rotated by r, so drift hits every server alike):
      for each server: start it (own process group) .. wait until both functions
        answer 200 .. warm up (harness, not recorded)
        for function in (add, spin), concurrency in (8, 64):
          server CPU from /proc .. `python -m loadtest run URL ... --connections C
          --duration D` .. server CPU again -> one run record
          (lightnode add and spin at the highest concurrency: wrk just before and after,
          the cross-check; with `generator="wrk"`, wrk makes every run's load instead
          of the harness, and there is no cross-check)
        stop it (SIGTERM to the group, SIGKILL after a grace)
    -> peers.json (every run, the cross-check, medians, machine) and peers.md

The harness runs as a subprocess (the same interpreter), exactly as an
operator would run it. Must not import `lightnode`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from loadtest import node
from loadtest.peers import procstat, running, servers, table, wrk

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_ID = "bench"
BODIES: dict[str, dict[str, Any]] = {"add": {"a": 1, "b": 2}, "spin": {}}
# A harness run may take this long beyond its load (start-up, report, plots).
HARNESS_SLACK_S = 60.0
VERSIONED = ("uvloop", "httptools", "ujson", "gunicorn", "uvicorn", "granian", "hdrhistogram")

Echo = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    out_dir: Path
    rounds: int = 3
    duration_s: float = 10.0
    concurrencies: tuple[int, ...] = (8, 64)
    servers: tuple[str, ...] = servers.SERVER_NAMES
    functions: tuple[str, ...] = ("add", "spin")
    warmup_s: float = 1.0
    procs: int = 1
    crosscheck: bool = True
    # What loads the server in a measured run: "harness" (`python -m loadtest run`) or "wrk".
    generator: str = "harness"


@dataclass
class Results:
    runs: list[dict[str, Any]] = field(default_factory=list)
    crosscheck: list[dict[str, Any]] = field(default_factory=list)
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    commands: dict[str, list[str]] = field(default_factory=dict)


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """Round 0 in the given order; each later round rotated by one more place."""
    if not names:
        return []
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


def run_path(function: str) -> str:
    return f"/public/api/v1/{SERVICE_ID}/{function}/run"


def body_bytes(function: str) -> bytes:
    return json.dumps(BODIES[function], separators=(",", ":")).encode()


def harness_command(
    url: str,
    function: str,
    connections: int,
    duration_s: float,
    out_dir: Path,
    *,
    procs: int = 1,
    python: str = sys.executable,
) -> list[str]:
    """`python -m loadtest run URL ...`: closed loop, keep-alive, no warm-up, quiet."""
    return [
        python, "-m", "loadtest", "run", url,
        "--service", SERVICE_ID, "--endpoint", function,
        "--body", body_bytes(function).decode(),
        "--connections", str(connections), "--duration", f"{duration_s:g}",
        "--procs", str(procs), "--out", str(out_dir), "--quiet",
    ]  # fmt: skip


def crosscheck_cases(config: BenchConfig) -> tuple[tuple[str, str, int], ...]:
    """The (server, function, concurrency) cases that wrk repeats: lightnode at the top
    concurrency, on each of `add` and `spin` that the run measures.

    They answer two questions. On `spin` the pipelines' 1 ms calls set the pace and a
    generator needs under a tenth of a core: the two generators should count the same
    throughput and latency (is the harness's measurement right?). On `add` the server
    and the generator share two cores, each busy: the server gets what the generator
    leaves, so the harness, costlier per request than wrk, measures less (what does
    the harness's own CPU cost the server?). Empty without a cross-check, or when wrk
    makes every run's load anyway.
    """
    if not config.crosscheck or config.generator == "wrk" or "lightnode" not in config.servers:
        return ()
    top = max(config.concurrencies)
    return tuple(("lightnode", f, top) for f in ("add", "spin") if f in config.functions)


def run_record(
    report: dict[str, Any],
    *,
    cpu_s: float,
    server_procs: int,
    root_cpu_s: float | None = None,
    **where: Any,
) -> dict[str, Any]:
    """One measured run from the harness's report.json and the server's CPU deltas."""
    answered = int(report.get("responses") or 0)
    latency = report.get("latency_ms") or {}
    generator = report.get("generator") or {}
    return {
        **where,
        "requests": report.get("requests"),
        "responses": answered,
        "duration_s": report.get("duration_s"),
        "throughput_rps": report.get("throughput_rps"),
        "ok_rps": report.get("ok_rps"),
        "latency_ms": {key: latency.get(key) for key in ("p50", "p90", "p99", "p999", "max")},
        "errors": report.get("errors"),
        "status_counts": report.get("status_counts"),
        "error_types": report.get("error_types"),
        "client_errors": report.get("client_errors"),
        "server_cpu_s": round(cpu_s, 3),
        "cpu_us_per_request": round(cpu_s * 1e6 / answered, 2) if answered else None,
        "server_procs": server_procs,
        "root_cpu_s": None if root_cpu_s is None else round(root_cpu_s, 3),
        "root_cpu_us_per_request": (
            round(root_cpu_s * 1e6 / answered, 2) if answered and root_cpu_s is not None else None
        ),
        "generator_cpu_pct": generator.get("cpu_pct"),
        "generator_saturated": bool(generator.get("saturated")),
    }


def wrk_run_record(
    parsed: dict[str, Any],
    *,
    seconds: int,
    cpu_s: float,
    server_procs: int,
    root_cpu_s: float | None = None,
    generator_cpu_s: float | None = None,
    **where: Any,
) -> dict[str, Any]:
    """One measured run from wrk's parsed summary (`wrk.parse`), in run_record's shape.

    wrk reports no p99.9, no maximum and no status counts: those stay None. Its
    errors are its non-2xx/3xx answers plus its socket errors; `generator_cpu_s`
    is wrk's own CPU time (user + system) over the run.
    """
    answered = int(parsed.get("requests") or 0)
    rps = parsed.get("throughput_rps")
    non_2xx = int(parsed.get("non_2xx") or 0)
    latency = parsed.get("latency_ms") or {}
    ok_rps = (
        round(rps * (answered - non_2xx) / answered, 2) if rps is not None and answered else None
    )
    record = run_record(
        {
            "requests": answered,
            "responses": answered,
            "duration_s": seconds,
            "throughput_rps": rps,
            "ok_rps": ok_rps,
            "latency_ms": {key: latency.get(key) for key in ("p50", "p90", "p99")},
            "errors": parsed.get("errors"),
        },
        cpu_s=cpu_s,
        server_procs=server_procs,
        root_cpu_s=root_cpu_s,
        **where,
    )
    record["generator"] = "wrk"
    if generator_cpu_s is not None and seconds > 0:
        record["generator_cpu_pct"] = round(generator_cpu_s * 100 / seconds, 1)
    return record


def _children_cpu_s() -> float:
    """User + system CPU of every child this process has waited for, so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child_env() -> dict[str, str]:
    """The environment of every child: the repo first on PYTHONPATH, so apps import."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    return env


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _command_output(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=child_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else None


def cpu_model(cpuinfo: str) -> str | None:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return None


def machine_info() -> dict[str, Any]:
    try:
        model = cpu_model(Path("/proc/cpuinfo").read_text())
    except OSError:
        model = None
    packages: dict[str, str | None] = {name: _version(name) for name in VERSIONED}
    packages["lightnode"] = _command_output(node.lightnode_command("--version"))
    packages["wrk"] = _command_output([wrk.WRK, "--version"]) if wrk.available() else None
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "packages": packages,
        "loadavg_start": list(os.getloadavg()),
    }


class Bench:
    """One benchmark: owns the lightnode data dir and every process it starts."""

    def __init__(self, config: BenchConfig, echo: Echo) -> None:
        self.config = config
        self.echo = echo
        self.results = Results()
        self.env = child_env()
        self.data_dir: Path | None = None

    def run(self) -> Results:
        try:
            if "lightnode" in self.config.servers:
                self.data_dir = Path(tempfile.mkdtemp(prefix="lightnode-peers-"))
                servers.prepare_lightnode(self.data_dir)
            for round_index in range(self.config.rounds):
                for name in round_order(self.config.servers, round_index):
                    self._server_round(name, round_index + 1)
        finally:
            running.kill_all()
            if self.data_dir is not None:
                shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.results

    def _server_round(self, name: str, round_no: int) -> None:
        port = node.free_port()
        argv = servers.server_command(name, port, data_dir=self.data_dir)
        self.results.commands.setdefault(name, argv)
        log_path = self.config.out_dir / "logs" / f"r{round_no}-{name}.log"
        server = running.ServerProcess(name, argv, port, log_path, self.env)
        server.start()
        try:
            probes = {run_path(f): body_bytes(f) for f in self.config.functions}
            server.wait_ready(probes, "/readyz" if name == "lightnode" else None)
            self._warm_up(server, round_no)
            for function in self.config.functions:
                for connections in self.config.concurrencies:
                    self._measure(server, round_no, function, connections)
        except running.ServerError as exc:
            self.echo(f"round {round_no}  {name}: {exc}")
            self.results.server_errors.append(
                {"round": round_no, "server": name, "error": str(exc)}
            )
        finally:
            code = server.stop()
            self.echo(f"round {round_no}  {name}: stopped (exit {code})")

    def _warm_up(self, server: running.ServerProcess, round_no: int) -> None:
        if self.config.warmup_s <= 0:
            return
        for function in self.config.functions:
            out = self.config.out_dir / "warmup" / f"r{round_no}-{server.name}-{function}"
            argv = harness_command(
                server.url, function, max(self.config.concurrencies), self.config.warmup_s, out
            )
            running.run_bounded(
                argv,
                timeout_s=self.config.warmup_s + HARNESS_SLACK_S,
                log_path=out / "harness.log",
                env=self.env,
            )

    def _measure(
        self, server: running.ServerProcess, round_no: int, function: str, connections: int
    ) -> None:
        config = self.config
        where = {"round": round_no, "server": server.name, "function": function}
        where["concurrency"] = connections
        if config.generator == "wrk":
            record = self._measure_with_wrk(server, where)
            self.results.runs.append(record)
            self.echo(_run_line(record))
            return
        run_dir = config.out_dir / "runs" / f"r{round_no}-{server.name}-{function}-c{connections}"
        argv = harness_command(
            server.url, function, connections, config.duration_s, run_dir, procs=config.procs
        )
        crosscheck = (server.name, function, connections) in crosscheck_cases(config)
        wrk_before = self._wrk(server, where, "before") if crosscheck else None
        before = server.cpu()
        finished = running.run_bounded(
            argv,
            timeout_s=config.duration_s + HARNESS_SLACK_S,
            log_path=run_dir / "harness.log",
            env=self.env,
        )
        after = server.cpu()
        record = self._record(finished, run_dir, where, before, after)
        self.results.runs.append(record)
        self.echo(_run_line(record))
        if wrk_before is not None and "failed" not in record:
            self._crosscheck(server, record, wrk_before, self._wrk(server, where, "after"))

    def _measure_with_wrk(
        self, server: running.ServerProcess, where: dict[str, Any]
    ) -> dict[str, Any]:
        """One measured run with wrk as the load: its summary and the server's CPU deltas."""
        before = server.cpu()
        argv, parsed = self._wrk(server, where, "run")
        after = server.cpu()
        if isinstance(parsed, str):
            return {**where, "failed": parsed, "command": argv}
        record = wrk_run_record(
            parsed,
            seconds=wrk.whole_seconds(self.config.duration_s),
            cpu_s=after.total_s - before.total_s,
            root_cpu_s=after.root_s - before.root_s,
            server_procs=after.processes,
            generator_cpu_s=parsed["cpu_s"],
            **where,
        )
        record["command"] = argv  # its URL is this server's, like a cross-check entry's
        return record

    def _record(
        self,
        finished: running.Finished,
        run_dir: Path,
        where: dict[str, Any],
        before: procstat.TreeCpu,
        after: procstat.TreeCpu,
    ) -> dict[str, Any]:
        try:
            report = json.loads((run_dir / "report.json").read_text())
        except (OSError, ValueError) as exc:
            problem = f"harness exit {finished.code}, no report: {exc}"
            return {**where, "failed": problem, "harness_log": str(run_dir / "harness.log")}
        record = run_record(
            report,
            cpu_s=after.total_s - before.total_s,
            root_cpu_s=after.root_s - before.root_s,
            server_procs=after.processes,
            **where,
        )
        record["report"] = str(run_dir / "report.json")
        if finished.code != 0:
            record["failed"] = f"harness exit {finished.code}"
        return record

    def _wrk(
        self, server: running.ServerProcess, where: dict[str, Any], when: str
    ) -> tuple[list[str], dict[str, Any] | str]:
        """One wrk run of the case `where`: (argv, parsed output or why it failed).

        The parsed output also has `cpu_s`, wrk's own CPU time (user + system).
        """
        function, connections = where["function"], where["concurrency"]
        wrk_dir = self.config.out_dir / "wrk"
        wrk_dir.mkdir(parents=True, exist_ok=True)
        script_path = wrk_dir / "post.lua"
        script_path.write_text(wrk.script(BODIES[function]))
        argv = wrk.command(server.url + run_path(function), connections, self.config.duration_s,
                           script_path)  # fmt: skip
        log_path = wrk_dir / f"r{where['round']}-{server.name}-{function}-c{connections}-{when}.txt"
        children_before = _children_cpu_s()
        finished = running.run_bounded(
            argv, timeout_s=self.config.duration_s + HARNESS_SLACK_S, log_path=log_path
        )
        cpu_s = _children_cpu_s() - children_before
        try:
            parsed = wrk.parse(log_path.read_text(errors="replace"))
        except (OSError, ValueError) as exc:
            return argv, f"wrk exit {finished.code}: {exc}"
        parsed["cpu_s"] = round(cpu_s, 3)
        return argv, parsed

    def _crosscheck(
        self,
        server: running.ServerProcess,
        record: dict[str, Any],
        before: tuple[list[str], dict[str, Any] | str],
        after: tuple[list[str], dict[str, Any] | str],
    ) -> None:
        entry: dict[str, Any] = {
            "round": record["round"],
            "server": server.name,
            "function": record["function"],
            "concurrency": record["concurrency"],
            "command": after[0],
            "harness_rps": record["throughput_rps"],
            "harness_p99_ms": record["latency_ms"]["p99"],
            "harness_cpu_us_per_request": table.generator_cpu_us(
                record.get("generator_cpu_pct"), record["throughput_rps"]
            ),
        }
        runs = {"before": before[1], "after": after[1]}
        parsed = {when: run for when, run in runs.items() if isinstance(run, dict)}
        failures = [f"{when}: {run}" for when, run in runs.items() if isinstance(run, str)]
        if failures:
            entry["wrk_failures"] = failures
        if parsed:
            entry["wrk"] = parsed
            entry.update(table.wrk_bracket(parsed.get("before"), parsed.get("after")))
            entry.update(table.crosscheck_entry(record["throughput_rps"], entry["wrk_rps"]))
        else:
            entry.update(failed="; ".join(failures), within_tolerance=False)
        self.results.crosscheck.append(entry)
        self.echo(
            f"round {record['round']}  wrk cross-check: harness {_fmt(entry.get('harness_rps'))}"
            f" req/s, wrk {_fmt(entry.get('wrk_before_rps'))} before and"
            f" {_fmt(entry.get('wrk_after_rps'))} after"
        )


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _run_line(record: dict[str, Any]) -> str:
    head = (
        f"round {record['round']}  {record['server']:<16} {record['function']:<4} "
        f"c={record['concurrency']:<3}"
    )
    if "failed" in record and "throughput_rps" not in record:
        return f"{head} FAILED: {record['failed']}"
    latency = record["latency_ms"]
    cpu = record["cpu_us_per_request"]
    return (
        f"{head} {_fmt(record['throughput_rps']):>8} req/s  p50 {latency['p50']} ms  "
        f"p99 {latency['p99']} ms  errors {record['errors']}  "
        f"cpu {'–' if cpu is None else f'{cpu:.1f}'} µs/req"
        + (" (generator saturated)" if record["generator_saturated"] else "")
    )


def run_benchmark(config: BenchConfig, echo: Echo) -> dict[str, Any]:
    """The whole benchmark; returns what peers.json holds."""
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine = machine_info()
    results = Bench(config, echo).run()
    machine["loadavg_end"] = list(os.getloadavg())
    summary = table.summarize(results.runs)
    wrk_load = config.generator == "wrk"
    run_s = wrk.whole_seconds(config.duration_s) if wrk_load else config.duration_s
    return {
        "version": 1,
        "started_at": started_at,
        "machine": machine,
        "config": {
            "rounds": config.rounds,
            "duration_s": config.duration_s,
            "concurrencies": list(config.concurrencies),
            "servers": list(config.servers),
            "functions": list(config.functions),
            "warmup_s": config.warmup_s,
            "generator": config.generator,
            "generator_procs": config.procs,
            "bodies": BODIES,
        },
        "commands": results.commands,
        "runs": results.runs,
        "crosscheck": results.crosscheck,
        "server_errors": results.server_errors,
        "summary": summary,
        "markdown": table.render_markdown(
            summary,
            results.crosscheck,
            rounds=config.rounds,
            duration_s=run_s,
            generator=config.generator,
        ),
    }


def write_outputs(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "peers.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path = out_dir / "peers.md"
    md_path.write_text(result["markdown"])
    return json_path, md_path
