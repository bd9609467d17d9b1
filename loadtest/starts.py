"""Pipeline starts: what a node answers while many pipelines boot (BENCHMARKS run 38).

    python -m loadtest.starts boot [--endpoints 100] [--rounds 3] [--tree DIR]
    python -m loadtest.starts deploy [--endpoints 40] [--rounds 3] [--tree DIR] [--no-deploy]

`boot` starts a node on a data directory of `--endpoints` floor-1 endpoints (services
of 5; every tenth service's initialization also sleeps 1 s, as a download would) and,
every 0.25 s until /readyz says 200, times a GET /isAlive on a new connection: when the
node wrote its address, when it was ready, the slowest /isAlive, and how idle the cores
were meanwhile (from /proc/stat).

`deploy` serves a 1 ms endpoint (`floor = cruise = ceil = 2`) under `wrk -t1 -c8` for
16 s and, 4 s in, deploys a service of `--endpoints` endpoints beside it (written into
the data directory, as `admin import` would): that endpoint's latency while the new
pipelines boot. `--no-deploy` gives the same run without the deploy.

`--tree DIR` runs the node from another source tree (e.g. a `git worktree` of an older
commit) to compare. Only 127.0.0.1; wrk is the Debian package `wrk`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.node import install_service, write_tuning
from loadtest.peers import wrk

LIGHT_INIT = "import json, email, http.client, decimal\n\ndef f(x=0):\n    return x\n"
SLEEPY_INIT = "import time\ntime.sleep(1.0)\n" + LIGHT_INIT
ONE_MS = (
    "import time\n\ndef f():\n    t = time.perf_counter()\n"
    "    while time.perf_counter() - t < 0.001:\n        pass\n    return 1\n"
)
PROBE_S = 0.25


def many_endpoints(data_dir: Path, count: int) -> None:
    """`count` endpoints in services of 5; every tenth service's init sleeps 1 s too."""
    for first in range(0, count, 5):
        index = first // 5
        source = SLEEPY_INIT if index % 10 == 0 else LIGHT_INIT
        names = [f"e{i}" for i in range(first, min(first + 5, count))]
        install_service(data_dir, f"s{index:03d}", dict.fromkeys(names, source))


def cpu_times() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[3] + values[4], sum(values)


def idle_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


class Node:
    """`python -m lightnode` from `tree` (None: the installed package) on a free port."""

    def __init__(self, data_dir: Path, tree: Path | None) -> None:
        env = dict(os.environ)
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        self.addr = data_dir / "run" / "lightnode.addr"
        self.log = open(f"{data_dir}.log", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lightnode", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", "0"],
            cwd=tree or data_dir.parent, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.url = ""

    def wait_address(self, timeout_s: float = 120.0) -> str:
        deadline = time.monotonic() + timeout_s
        while not (self.addr.exists() and self.addr.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not start (see {self.log.name})")
            time.sleep(0.005)
        self.url = self.addr.read_text().strip()
        return self.url

    def get(self, path: str) -> int:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


def boot(data_dir: Path, endpoints: int, tree: Path | None) -> dict[str, Any]:
    many_endpoints(data_dir, endpoints)
    cpu_before = cpu_times()
    started = time.monotonic()
    node = Node(data_dir, tree)
    try:
        node.wait_address()
        address_s = time.monotonic() - started
        probes: list[float] = []
        while True:
            sent = time.monotonic()
            node.get("/isAlive")
            probes.append(time.monotonic() - sent)
            if node.get("/readyz") == 200:
                break
            if time.monotonic() - started > 600:
                raise RuntimeError("not ready after 600 s")
            time.sleep(PROBE_S)
        ready_s = time.monotonic() - started
        idle = idle_share(cpu_before, cpu_times())
    finally:
        node.stop()
    return {
        "address_s": round(address_s, 2),
        "ready_s": round(ready_s, 2),
        "probes": len(probes),
        "isalive_max_ms": round(max(probes) * 1000, 1),
        "idle_pct": round(idle * 100),
    }


def deploy(data_dir: Path, endpoints: int, tree: Path | None, with_deploy: bool) -> dict[str, Any]:
    install_service(data_dir, "hot", {"work": ONE_MS})
    write_tuning(data_dir, "hot", "work", {"pool": {"floor": 2, "cruise": 2, "ceil": 2, "queue": 64}})
    node = Node(data_dir, tree)
    try:
        url = node.wait_address()
        while node.get("/readyz") != 200:
            time.sleep(0.05)
        script = data_dir.parent / "post.lua"
        script.write_text(wrk.script({}))
        load = subprocess.Popen(
            wrk.command(f"{url}/public/api/v1/hot/work/run", 8, 16, script), stdout=subprocess.PIPE, text=True
        )
        time.sleep(4)
        if with_deploy:
            install_service(data_dir, "big", dict.fromkeys([f"e{i}" for i in range(endpoints)], LIGHT_INIT))
        out, _ = load.communicate(timeout=120)
    finally:
        node.stop()
    result = wrk.parse(out)
    return {"rps": result["throughput_rps"], "errors": result["errors"], **result["latency_ms"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.starts", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("boot", "deploy"))
    parser.add_argument("--endpoints", type=int, default=None, help="boot: 100; deploy: 40")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=None, help="run the node from this source tree")
    parser.add_argument("--no-deploy", action="store_true", help="deploy: the same load, no deploy")
    args = parser.parse_args(argv)
    if args.what == "deploy" and not wrk.available():
        parser.error("deploy needs wrk (Debian package wrk)")
    tree = args.tree.resolve() if args.tree else None
    for round_ in range(1, args.rounds + 1):
        scratch = Path(tempfile.mkdtemp(prefix="lightnode-starts-"))
        try:
            if args.what == "boot":
                result = boot(scratch / "data", args.endpoints or 100, tree)
            else:
                result = deploy(scratch / "data", args.endpoints or 40, tree, not args.no_deploy)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(json.dumps({"round": round_, args.what: result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
