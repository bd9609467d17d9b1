"""Soak and observer-overhead runs against a node started here (not in CI).

    python -m loadtest.soak [--requests 1000000] [--connections 32]
        1M keep-alive POSTs of a trivial function; prints the server's RSS (and
        its pipelines') at start, at 100k and at the end, and exits non-zero if
        any request failed.

    python -m loadtest.soak --overhead [--rounds 6] [--duration 10] [--connections 64]
        The cost of metrics + query log: two nodes serve the same function, one
        as shipped, one with no request observer and no query log; `wrk -t1
        -c<connections>` (Debian package `wrk`) alternates between them for
        `rounds` rounds each, while /metrics is scraped once a second on both;
        prints every round's requests/s and the medians.

Both modes lay out a data directory in a temporary directory (or --data-dir),
start `python -m lightnode` in its own session, and stop it with SIGTERM.
Must not import `lightnode`: the node runs as a separate process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from loadtest.node import install_service, write_tuning

SERVICE, ENDPOINT = "soak", "noop"
FUNCTION = "def noop(x=0):\n    return {'x': x}\n"
BODY = b'{"x": 1}'
# Started instead of `-m lightnode` for the overhead run's reference node: the
# node as shipped, minus its request observers (metrics series, query log).
NO_OBSERVERS = (
    "import sys\n"
    "from lightnode import daemon\n"
    "daemon.Node._install_observers = lambda self: None\n"
    "from lightnode.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


# ------------------------------------------------------------------ the node


def lay_out(root: Path, *, query_log: bool, pipelines: int) -> None:
    install_service(root, SERVICE, {ENDPOINT: FUNCTION})
    pool = {"floor": pipelines, "cruise": pipelines, "ceil": pipelines, "queue": 4096, "timeout": 60000}
    write_tuning(root, SERVICE, ENDPOINT, {"pool": pool})
    (root / "config" / "server.json").write_text(json.dumps({"logging": {"query_log": query_log}}))


class NodeProcess:
    def __init__(self, root: Path, *, observers: bool = True) -> None:
        self.root = root
        launcher = ["-m", "lightnode"] if observers else ["-c", NO_OBSERVERS]
        addr = root / "run" / "lightnode.addr"
        addr.unlink(missing_ok=True)
        self.log = open(root.parent / f"{root.name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, *launcher, "--data-dir", str(root), "--port", "0"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not (addr.exists() and addr.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the node did not start; see {self.log.name}")
            time.sleep(0.05)
        self.url = addr.read_text().strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        while get(self.url + "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise SystemExit("the node did not become ready")
            time.sleep(0.05)

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def pipelines_rss_mb(self) -> float:
        stats = json.loads(get(f"{self.url}/admin/api/services/{SERVICE}/stats")[1])
        return sum(rss_mb(p["pid"]) for e in stats["endpoints"] for p in e["pipelines"] if p["pid"])

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


# ------------------------------------------------------------------- soak


class SoakClient:
    """Keep-alive connections, each sending one request at a time, until `total` are sent."""

    def __init__(self, port: int, total: int, checkpoints: dict[int, Any]) -> None:
        self.port = port
        self.total = total
        self.sent = 0
        self.done = 0
        self.statuses: Counter[int] = Counter()
        self.checkpoints = checkpoints  # request count -> callback(done)
        self.request = (
            b"POST /public/api/v1/%s/%s/run HTTP/1.1\r\nHost: soak\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (SERVICE.encode(), ENDPOINT.encode(), len(BODY), BODY)
        )

    async def connection(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        while self.sent < self.total:
            self.sent += 1
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            self.statuses[int(head[9:12])] += 1
            self.done += 1
            callback = self.checkpoints.get(self.done)
            if callback is not None:
                callback(self.done)
        writer.close()

    async def run(self, connections: int) -> None:
        await asyncio.gather(*(self.connection() for _ in range(connections)))


def soak(args: argparse.Namespace, work: Path) -> int:
    root = work / "soak"
    lay_out(root, query_log=True, pipelines=args.pipelines)
    node = NodeProcess(root)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()

    def mark(done: int) -> None:
        row = {
            "requests": done,
            "elapsed_s": round(time.monotonic() - started, 1),
            "server_rss_mb": round(node.rss_mb(), 1),
            "pipelines_rss_mb": round(node.pipelines_rss_mb(), 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    mark(0)
    points = sorted({*range(args.every, args.requests, args.every), args.requests})
    client = SoakClient(node.port, args.requests, dict.fromkeys(points, mark))
    try:
        _run_async(client.run(args.connections))
    finally:
        code = node.stop()
    elapsed = time.monotonic() - started
    summary = {
        "requests": client.done,
        "elapsed_s": round(elapsed, 1),
        "rps": round(client.done / elapsed),
        "statuses": dict(client.statuses),
        "exit_code": code,
        "rss_mb": {str(r["requests"]): r["server_rss_mb"] for r in rows},
        "query_logs_mb": round(
            sum(p.stat().st_size for p in (root / "logs").glob("queries.log*")) / 2**20, 1
        ),
    }
    print(json.dumps(summary, indent=2))
    return 0 if set(client.statuses) == {200} and code == 0 else 1


def _run_async(coroutine: Any) -> None:
    try:
        import uvloop

        uvloop.run(coroutine)
    except ImportError:
        asyncio.run(coroutine)


# ---------------------------------------------------------------- overhead


WRK_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{BODY.decode()}'
wrk.headers["Content-Type"] = "application/json"
"""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_round(
    node: NodeProcess, script: Path, connections: int, duration_s: int
) -> dict[str, float]:
    """One wrk run: requests/s, non-2xx answers, and the node process's CPU µs per request."""
    cpu_before = cpu_s(node.proc.pid)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration_s}s",
            "-s",
            str(script),
            f"{node.url}/public/api/v1/{SERVICE}/{ENDPOINT}/run",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = cpu_s(node.proc.pid) - cpu_before
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    return {
        "rps": rps,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "cpu_us_per_request": cpu / max(1, requests) * 1e6,
    }


def scrape_while(urls: list[str], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        for url in urls:
            get(url + "/metrics")


def overhead(args: argparse.Namespace, work: Path) -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found (Debian: apt-get install -y wrk)")
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    lay_out(work / "on", query_log=True, pipelines=args.pipelines)
    lay_out(work / "off", query_log=False, pipelines=args.pipelines)
    nodes = {"on": NodeProcess(work / "on"), "off": NodeProcess(work / "off", observers=False)}
    results: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    stop = threading.Event()
    scraper = threading.Thread(
        target=scrape_while, args=([n.url for n in nodes.values()], stop), daemon=True
    )
    scraper.start()
    try:
        for node in nodes.values():  # warm-up, not counted
            wrk_round(node, script, args.connections, 2)
        for index in range(args.rounds):
            order = ("on", "off") if index % 2 == 0 else ("off", "on")
            for name in order:
                result = wrk_round(nodes[name], script, args.connections, args.duration)
                results[name].append(result)
                print(
                    f"round {index + 1} {name:>3}: {result['rps']:9.0f} req/s  "
                    f"{result['cpu_us_per_request']:6.1f} node CPU us/request  "
                    f"non-2xx {result['non_2xx']:.0f}",
                    flush=True,
                )
    finally:
        stop.set()
        for node in nodes.values():
            node.stop()

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    on, off = median("on", "rps"), median("off", "rps")
    cpu_on, cpu_off = median("on", "cpu_us_per_request"), median("off", "cpu_us_per_request")
    print(
        json.dumps(
            {
                "median_rps_on": round(on),
                "median_rps_off": round(off),
                "throughput_cost_percent": round((off - on) / off * 100, 1),
                "median_node_cpu_us_per_request_on": round(cpu_on, 1),
                "median_node_cpu_us_per_request_off": round(cpu_off, 1),
                "cpu_cost_us_per_request": round(cpu_on - cpu_off, 1),
                "non_2xx": sum(r["non_2xx"] for rs in results.values() for r in rs),
            },
            indent=2,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--overhead", action="store_true", help="measure metrics + query log on vs off"
    )
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument(
        "--every", type=int, default=100_000, help="RSS checkpoint interval (requests)"
    )
    parser.add_argument(
        "--connections", type=int, default=None, help="default 32 (soak), 64 (overhead)"
    )
    parser.add_argument("--pipelines", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk round")
    parser.add_argument("--data-dir", type=Path, help="work here instead of a temporary directory")
    args = parser.parse_args(argv)
    if args.connections is None:
        args.connections = 64 if args.overhead else 32
    with tempfile.TemporaryDirectory(prefix="lightnode-soak-") as tmp:
        work = args.data_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return overhead(args, work) if args.overhead else soak(args, work)


if __name__ == "__main__":
    sys.exit(main())
