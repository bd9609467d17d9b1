"""`lightnode admin ...`: operate a data directory directly or a running node by URL.

With `--data-dir`, commands change files and the running node applies them
live; `status` reaches the running node through run/lightnode.addr. With
`--url`, every command goes through the admin HTTP API.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lightnode.admin.remote import RemoteAdmin, RemoteError, http_url
from lightnode.config.load import endpoint_config_path
from lightnode.config.model import check_id

# How long an admin command waits for a node that is starting (it holds run/lightnode.pid
# and writes run/lightnode.addr once it serves: seconds with many endpoints).
STARTING_WAIT_S = 60.0

TUNE_FLAGS = {
    "floor": "pool",
    "cruise": "pool",
    "ceil": "pool",
    "queue": "pool",
    "timeout": "pool",
    "scale_down_delay": "pool",
    "prefetch": "pool",
    "exec_timeout": "limits",
    "max_requests": "limits",
    "max_rss_mb": "limits",
}
TUNE_HELP = {
    "floor": "pipelines always running (default 1)",
    "cruise": "pipelines kept when load falls (default 2)",
    "ceil": "most pipelines (default 8)",
    "queue": "requests that may wait at ceil before 503 QueueFull (default 16)",
    "timeout": "ms a request may wait for a pipeline before 503 QueueTimeout (default 10000)",
    "scale_down_delay": "ms a pipeline above cruise stays idle before it stops (default 0: at once)",
    "prefetch": "1 lets a busy pipeline of a fast endpoint take requests ahead, 0 not (default 1)",
    "exec_timeout": "ms a call may run before its pipeline is killed, 504 (default 0: no limit)",
    "max_requests": "calls after which a pipeline is replaced (default 0: no limit)",
    "max_rss_mb": "MB of RSS past which a serving pipeline is replaced (default 0: no limit)",
}


def add_admin_parser(sub: Any) -> None:
    from lightnode.cli import data_dir_path

    admin = sub.add_parser("admin", help="operate services, tuning and keys")
    target = argparse.ArgumentParser(add_help=False)
    where = target.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=data_dir_path, help="act on this data directory")
    where.add_argument("--url", type=http_url, help="act through a running node's admin API, e.g. http://127.0.0.1:12000")
    target.add_argument(
        "--key",
        default=os.environ.get("LIGHTNODE_ADMIN_KEY"),
        help="admin API key for the node's admin API (default: $LIGHTNODE_ADMIN_KEY, which keeps it out of `ps`)",
    )
    commands = admin.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)

    status = commands.add_parser("status", parents=[target], help="live state of every pool")
    status.add_argument("service", nargs="?")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    commands.add_parser("services", parents=[target], help="list services")

    tune = commands.add_parser("tune", parents=[target], help="validate and write an endpoint's tuning")
    tune.add_argument("service")
    tune.add_argument("endpoint")
    for name in TUNE_FLAGS:
        tune.add_argument("--" + name.replace("_", "-"), dest=name, type=int, metavar="N", help=TUNE_HELP[name])

    from lightnode.admin.lifecycle_cli import add_lifecycle_commands

    add_lifecycle_commands(commands, target)

    build_env = commands.add_parser(
        "build-env",
        parents=[target],
        help="build the code envs (requirements venvs) of a service generation",
        description="Build the requirements code envs of a generation into DATA_DIR/code-envs/<hash>/ "
        "(with --data-dir, pip's output on stderr). Envs already built are reused. GENERATION "
        "defaults to the newest. A running node starts the endpoints that were waiting for them.",
    )
    build_env.add_argument("service")
    build_env.add_argument("generation", nargs="?")


def run_admin(args: argparse.Namespace) -> int:
    from lightnode.admin.lifecycle_cli import LIFECYCLE_HANDLERS
    from lightnode.cli import CliError

    handlers = {"status": _status, "tune": _tune, "build-env": _build_env, **LIFECYCLE_HANDLERS}
    handler = handlers.get(args.admin_command)
    if handler is None:
        raise CliError(f"unknown admin command {args.admin_command}", 2)
    return handler(args)


# ----------------------------------------------------------------- transport


def node_url(args: argparse.Namespace) -> str:
    from lightnode.admin.lifecycle_cli import (
        IN_FORCE_TIMEOUT_S,
        node_addr,
        serves,
        starting_node_pid,
    )
    from lightnode.cli import CliError

    if args.url:
        return str(args.url).rstrip("/")
    data_dir = Path(args.data_dir)
    addr = data_dir / "run" / "lightnode.addr"
    url = node_addr(data_dir)
    pid = None if url else starting_node_pid(data_dir)
    if pid is not None:
        # A node holds the directory but serves not yet (it writes the address last,
        # once its pipelines are started): wait for it rather than say there is none.
        print(f"waiting for the node of {args.data_dir} (pid {pid}) to finish starting...", file=sys.stderr)
        deadline = time.monotonic() + STARTING_WAIT_S
        while not url and time.monotonic() < deadline and starting_node_pid(data_dir) is not None:
            time.sleep(0.1)
            url = node_addr(data_dir)
        if not url:
            raise CliError(f"the node of {args.data_dir} (pid {pid}) holds run/lightnode.pid but has not written"
                           f" {addr} after {STARTING_WAIT_S:.0f} s: still starting, or stopped meanwhile;"
                           " its log says which")
    if not url:
        raise CliError(f"no running node for {args.data_dir} (no {addr})")
    # The node the file names must answer, and serve this very directory (node_addr).
    try:
        status = RemoteAdmin(url, getattr(args, "key", None)).call("GET", "status", timeout_s=IN_FORCE_TIMEOUT_S)
    except RemoteError as exc:
        if exc.status is None:
            raise CliError(f"no running node for {args.data_dir}: {addr} names {url}, which does not answer"
                           f" ({exc}); a node killed with SIGKILL leaves that file behind") from None
        return url  # it answers (401: no key given): the command's own call says why
    if serves(status, data_dir) is False:
        raise CliError(f"no running node for {args.data_dir}: {addr} names {url}, the node of {status['dataDir']}"
                       " (the file came with a copy of that directory?)")
    return url


def request(args: argparse.Namespace, method: str, path: str, body: object = None) -> Any:
    """Call the admin API of the node `args` names; return the decoded JSON or raise CliError."""
    from lightnode.cli import CliError

    try:
        return RemoteAdmin(node_url(args), getattr(args, "key", None)).call(method, path, body)
    except RemoteError as exc:
        raise CliError(str(exc)) from None


# ------------------------------------------------------------------ commands


def _status(args: argparse.Namespace) -> int:
    if args.service:
        check_id(args.service, "service id")
        payload = {"services": [request(args, "GET", f"services/{args.service}/stats")]}
    else:
        payload = request(args, "GET", "status")
    if args.json:
        json.dump(payload, sys.stdout, indent=2)
        print()
        return 0
    print(render_status(payload))
    return 0


# limits.* in status, with their units; 0 is no limit.
_LIMITS = {"exec_timeout": "ms", "max_requests": "", "max_rss_mb": "MB"}


def _limit_text(name: str, value: object) -> str:
    return "none" if not value else f"{value}{_LIMITS[name]}"


def render_status(payload: dict[str, Any]) -> str:
    lines = []
    if "ready" in payload:
        lines.append(f"node: ready={payload['ready']} draining={payload['draining']} "
                     f"config errors={payload['configErrorsTotal']}")
    for service in payload.get("services", []):
        mapping = ", ".join(f"{m['generation']}={m['proba']:g}" for m in service.get("mapping", []))
        lines.append(f"service {service['serviceId']}: enabled={service['enabled']} mapping=[{mapping}]")
        if service.get("error"):
            lines.append(f"  error: {service['error']}")
        if service.get("switchError"):
            lines.append(f"  switchError: {service['switchError']}")
        for name, error in (service.get("generationErrors") or {}).items():
            lines.append(f"  generation {name}: {error}")
        for ep in service.get("endpoints", []):
            states = ep["pipelinesByState"]
            pool = ep["config"]["pool"]
            load = ep["loadState"]
            if load == "loading" and not any(states.values()) and pool["floor"] == 0:
                # Nothing is loading: a hundred such endpoints read "loading" at idle.
                load = "not loaded (floor 0: loads at its first request)"
            # Pipelines listed without a pid wait for the node's start gate: not booting yet.
            waiting = sum(1 for p in ep.get("pipelines") or () if p.get("pid") is None)
            starting = f"{states.get('starting', 0)}" + (f" ({waiting} waiting for a start slot)" if waiting else "")
            lines.append(
                f"  {ep['endpointId']}@{ep['generation']}: {load}"
                f" pipelines starting={starting} idle={states.get('idle', 0)}"
                f" busy={states.get('busy', 0)} stopping={states.get('stopping', 0)}"
                f" queue={ep['queueLength']} staged={ep.get('stagedRequests', 0)}"
                f" oldest_wait={ep['oldestWaitMs']}ms"
            )
            limits = ep["config"].get("limits") or {}
            lines.append(
                f"    config floor={pool['floor']} cruise={pool['cruise']} ceil={pool['ceil']}"
                f" queue={pool['queue']} timeout={pool['timeout']}ms"
                f" scale_down_delay={pool.get('scale_down_delay', 0)}ms prefetch={pool.get('prefetch', 1)}"
                f" from {ep['configSource']}"
            )
            lines.append(
                "    limits " + " ".join(f"{name}={_limit_text(name, limits.get(name, 0))}" for name in _LIMITS)
            )
            start = ep["lastStart"]
            if start["durationMs"] is not None:
                lines.append(f"    last start {start['secondsAgo']}s ago, took {start['durationMs']}ms")
            if ep["lastLoadError"]:
                lines.append(f"    last load error: {ep['lastLoadError']}")
            if ep["lastConfigError"]:
                lines.append(f"    last config error: {ep['lastConfigError']}")
            counters = ep["counters"]
            rejections = ", ".join(f"{k}={v}" for k, v in counters["rejections"].items()) or "none"
            lines.append(
                f"    served={counters['served']} starts={counters['starts']} crashes={counters['crashes']}"
                f" retirements={counters['retirements']} rejections: {rejections}"
            )
    return "\n".join(lines)


def _build_env(args: argparse.Namespace) -> int:
    """0 when every env is built or reused; 1 (CliError) otherwise."""
    from lightnode.admin.lifecycle_cli import call_target

    service = check_id(args.service, "service id")
    answer = call_target(args, "build_envs", service, args.generation)
    generation = answer["generation"]
    if not answer["envs"]:
        print(f"{service} {generation}: no endpoint has a requirements code env")
    for env in answer["envs"]:
        state = f"built in {env['seconds']:.1f} s" if env["built"] else "already built, reused"
        print(f"{service} {generation} {', '.join(env['endpoints'])}: code env {env['hash']} "
              f"({env['python']}) {state}: {env['interpreter']}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from lightnode.admin.lifecycle_cli import call_target

    service = check_id(args.service, "service id")
    endpoint = check_id(args.endpoint, "endpoint id")
    overrides: dict[str, dict[str, int]] = {}
    for name, section in TUNE_FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            overrides.setdefault(section, {})[name] = value
    answer = call_target(args, "tune", service, endpoint, overrides)
    note = answer.pop("note", None)
    if note:
        print(note)
    if not args.url:
        print(f"wrote {endpoint_config_path(Path(args.data_dir), service, endpoint)}")
    print(json.dumps(answer, indent=2))
    return 0
