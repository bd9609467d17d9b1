"""Three real nodes behind a real nginx running config/nginx/lightnode.conf (SPEC §12).

Continuous load goes through nginx while, phase by phase, one node is drained
with DATA_DIR/not-alive, one gets a full pool, one gets SIGTERM and one is
SIGKILLed, under each of the two retry choices the shipped file offers. The
function records every execution (start and end, with the request id and the
node's port) in a shared file, so a request that ran twice is seen. Each phase
prints its counts (run with -s). nginx is the Debian package; without it the
test skips.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, Node, free_port, write_service, write_tuning

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SHIPPED = REPO / "config" / "nginx" / "lightnode.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install -y nginx; CI installs it)"
)

THREADS = 6
FUNCTION_MS = 30
DEFAULT_RETRY = "proxy_next_upstream error http_503 non_idempotent;"
STRICT_RETRY = "# proxy_next_upstream http_503 non_idempotent;"

FUNCTION = """\
import os
import time

_RUNS = os.open({runs!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def work(rid, ms={ms}):
    port = os.environ.get("LIGHTNODE_PORT", "?")
    os.write(_RUNS, f"start {{rid}} {{port}} {{time.time():.4f}}\\n".encode())
    time.sleep(ms / 1000)
    os.write(_RUNS, f"end {{rid}} {{port}} {{time.time():.4f}}\\n".encode())
    return {{"rid": rid, "port": port}}
"""

NORMAL_TUNING = {"pool": {"floor": 3, "cruise": 3, "ceil": 8, "queue": 16, "timeout": 5000}}
FULL_TUNING = {"pool": {"floor": 1, "cruise": 1, "ceil": 1, "queue": 0, "timeout": 5000}}


# --------------------------------------------------------------------- nginx


def render_config(workdir: Path, listen_port: int, node_ports: list[int], *, strict: bool) -> Path:
    """The shipped file with the lab's addresses, inside a minimal nginx.conf of the test's own."""
    text = SHIPPED.read_text()
    ports = iter(node_ports)
    text, servers = re.subn(r"server \d+\.\d+\.\d+\.\d+:12000", lambda _: f"server 127.0.0.1:{next(ports)}", text)
    assert servers == len(node_ports) == 3, "the shipped upstream should list three nodes"
    text, listens = re.subn(r"listen 80 ", f"listen 127.0.0.1:{listen_port} ", text)
    text, logs = re.subn(r"access_log \S+", f"access_log {workdir / 'access.log'}", text)
    assert listens == 1 and logs == 1
    assert text.count(DEFAULT_RETRY) == 1 and text.count(STRICT_RETRY) == 1
    if strict:  # the operator's other choice: comment (1) out, uncomment (2)
        text = text.replace(DEFAULT_RETRY, "# " + DEFAULT_RETRY).replace(STRICT_RETRY, STRICT_RETRY[2:])
    (workdir / "lightnode.conf").write_text(text)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the private tmp dir
    main = (
        f"{user}worker_processes 1;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n{temp_paths}\n    include {workdir / 'lightnode.conf'};\n}}\n"
    )
    conf = workdir / "nginx.conf"
    conf.write_text(main)
    return conf


class Nginx:
    """nginx in the foreground, everything (pid, logs, temp files) in its own directory."""

    def __init__(self, workdir: Path, listen_port: int, node_ports: list[int], *, strict: bool) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = listen_port
        self.conf = render_config(workdir, listen_port, node_ports, strict=strict)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        assert NGINX is not None
        return [NGINX, "-p", str(self.workdir), "-e", str(self.workdir / "error.log"), "-c", str(self.conf), *extra]

    def start(self) -> Nginx:
        with open(self.workdir / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen(self.command("-g", "daemon off;"), stderr=stderr)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nginx did not listen: {self.error_log()}")

    def stop(self) -> None:
        """Graceful stop (SIGQUIT), then SIGKILL after 5 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def error_log(self) -> str:
        text = ""
        for name in ("stderr.log", "error.log"):
            path = self.workdir / name
            text += path.read_text(errors="replace")[-4000:] if path.exists() else ""
        return text

    def upstreams(self) -> dict[str, list[str]]:
        """request id -> the node addresses nginx tried for it, from the access log."""
        tried: dict[str, list[str]] = {}
        for line in (self.workdir / "access.log").read_text().splitlines():
            match = re.search(r'rid=(\S+) upstream="([^"]*)"', line)
            if match:
                # "a, b" after a retry, "a : b" after an internal redirect
                tried[match[1]] = [a for a in re.split(r"\s*[,:]\s+", match[2]) if a]
        return tried


# ---------------------------------------------------------------------- load


@dataclass
class Answer:
    rid: str
    status: int
    error: str | None
    sent_at: float = 0.0  # wall clock, as the function's records
    done_at: float = 0.0


@dataclass
class PhaseCounts:
    name: str
    answers: list[Answer] = field(default_factory=list)
    starts: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # rid -> [(port, t)]
    ends: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    retried: int = 0  # requests nginx sent to more than one node

    @property
    def errors(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]

    @property
    def double_runs(self) -> list[str]:
        return sorted(rid for rid, runs in self.starts.items() if len(runs) > 1)

    def ran_on(self, port: int, after: float = 0.0) -> list[str]:
        return [rid for rid, runs in self.starts.items() for p, t in runs if p == port and t > after]

    def in_flight(self, went_to_victim: set[str], t_before: float, t_after: float) -> set[str]:
        """Requests at the killed node when it died: sent to it, client still waiting.

        Its function may have finished already: the answer dies with the node all the same.
        """
        return {
            a.rid for a in self.answers
            if a.rid in went_to_victim and a.sent_at <= t_after and a.done_at >= t_before
        }

    def report(self, ports: dict[int, str]) -> str:
        kinds = Counter(a.error or str(a.status) for a in self.errors)
        served = Counter(ports.get(p, str(p)) for runs in self.starts.values() for p, _ in runs)
        return (
            f"[{self.name}] requests={len(self.answers)} ok={len(self.answers) - len(self.errors)} "
            f"errors={dict(kinds)} retried_by_nginx={self.retried} double_runs={len(self.double_runs)} "
            f"executions_by_node={dict(served)}"
        )


def _call(conn: http.client.HTTPConnection, rid: str) -> Answer:
    body = json.dumps({"rid": rid, "ms": FUNCTION_MS}).encode()
    headers = {"Content-Type": "application/json", "X-Request-Id": rid}
    conn.request("POST", "/public/api/v1/scale/work/run", body, headers)
    answer = conn.getresponse()
    raw = answer.read()
    error = None
    if answer.status != 200:
        try:
            error = json.loads(raw)["errorType"]
        except ValueError:
            error = f"nginx-{answer.status}"
    return Answer(rid, answer.status, error)


def run_load(port: int, phase: str, action: Callable[[], None], *, before_s: float, after_s: float) -> list[Answer]:
    """THREADS clients, each on its own keep-alive connection to nginx, until the phase ends."""
    stop = threading.Event()
    answers: list[Answer] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        n = 0
        while not stop.is_set():
            n += 1
            rid = f"{phase}-{index}-{n}"
            sent_at = time.time()
            try:
                answer = _call(conn, rid)
            except (OSError, http.client.HTTPException) as exc:
                answer = Answer(rid, 0, type(exc).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            answer.sent_at, answer.done_at = sent_at, time.time()
            with lock:
                answers.append(answer)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    time.sleep(before_s)
    action()
    time.sleep(after_s)
    stop.set()
    for thread in threads:
        thread.join(30)
    return answers


def read_runs(runs: Path, phase: str) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    starts: dict[str, list[tuple[int, float]]] = defaultdict(list)
    ends: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for line in runs.read_text().splitlines():
        kind, rid, port, at = line.split()
        if rid.startswith(phase + "-"):
            (starts if kind == "start" else ends)[rid].append((int(port), float(at)))
    return dict(starts), dict(ends)


# --------------------------------------------------------------------- setup


@dataclass
class Lab:
    nodes: dict[str, Node]
    default: Nginx  # retry choice (1): error + 503
    strict: Nginx  # retry choice (2): 503 only
    runs: Path

    @property
    def names(self) -> dict[int, str]:
        return {node.port: name for name, node in self.nodes.items()}

    def phase(self, nginx: Nginx, name: str, action: Callable[[], None],
              before_s: float = 1.0, after_s: float = 2.0) -> PhaseCounts:
        answers = run_load(nginx.port, name, action, before_s=before_s, after_s=after_s)
        time.sleep(0.2)  # let pipelines of a killed node finish their writes
        starts, ends = read_runs(self.runs, name)
        tried = nginx.upstreams()
        retried = sum(1 for a in answers if len(tried.get(a.rid, [])) > 1)
        counts = PhaseCounts(name, answers, starts, ends, retried)
        print(counts.report(self.names))
        return counts


def start_nodes(nodes: list[Node]) -> None:
    for node in nodes:
        node.start(wait_ready=False)
    for node in nodes:
        node.wait_ready(20)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    runs = tmp_path / "runs.log"
    runs.touch()
    nodes = {}
    for name in ("A", "B", "C"):
        root = tmp_path / f"node-{name}"
        write_service(root, "scale", {"work": FUNCTION.format(runs=str(runs), ms=FUNCTION_MS)})
        write_tuning(root, "scale", "work", NORMAL_TUNING)
        nodes[name] = Node(root, extra_args=["--port", str(free_port())])
    started: list[Nginx] = []
    try:
        start_nodes(list(nodes.values()))
        ports = [n.port for n in nodes.values()]
        default = Nginx(tmp_path / "nginx-default", free_port(), ports, strict=False).start()
        started.append(default)
        strict = Nginx(tmp_path / "nginx-strict", free_port(), ports, strict=True).start()
        started.append(strict)
        yield Lab(nodes, default, strict, runs)
    finally:
        for nginx in started:
            nginx.stop()
        for node in nodes.values():
            if node.proc is not None:
                node.stop(timeout_s=10)


def restart(node: Node) -> None:
    node.stop(timeout_s=5)
    node.start(wait_ready=False)


def wait_ceil(node: Node, ceil: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pools = node.stats("scale")["endpoints"]
        if pools and all(p["config"]["pool"]["ceil"] == ceil for p in pools):
            return
        time.sleep(0.05)
    raise AssertionError(f"ceil {ceil} not applied: {node.stats('scale')}")


# --------------------------------------------------------------------- tests


@needs_nginx
def test_the_shipped_config_passes_nginx_t(tmp_path: Path) -> None:
    for strict in (False, True):
        nginx = Nginx(tmp_path / f"t-{strict}", free_port(), [12001, 12002, 12003], strict=strict)
        done = subprocess.run(nginx.command("-t"), capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr


def tcp_states(remote_port: int) -> Counter[str]:
    """TCP sockets of this host whose remote port is `remote_port`, by state (/proc/net/tcp)."""
    names = {"01": "ESTABLISHED", "06": "TIME_WAIT"}
    states: Counter[str] = Counter()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].rsplit(":", 1)[1], 16) == remote_port:
            states[names.get(fields[3], fields[3])] += 1
    return states


@needs_nginx
def test_request_ids_keepalive_and_closed_admin_through_nginx(node_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "data"
    write_service(root, "scale", {"work": FUNCTION.format(runs=str(tmp_path / "runs.log"), ms=1)})
    node = node_factory(root)
    nginx = Nginx(tmp_path / "nginx", free_port(), [node.port] * 3, strict=False).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=10)
        before = tcp_states(node.port)
        sent = []
        for n in range(30):
            headers = {"X-Request-Id": f"client-id-{n}"} if n % 2 else {}
            conn.request("POST", "/public/api/v1/scale/work/run", json.dumps({"rid": str(n)}), headers)
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200
            sent.append((headers.get("X-Request-Id"), answer.getheader("X-Request-Id")))
        after = tcp_states(node.port)
        conn.request("GET", "/admin/api/services")
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 403  # the admin API is not published through nginx
        conn.close()
    finally:
        nginx.stop()
    for mine, echoed in sent:
        assert echoed == mine if mine else re.fullmatch(r"[0-9a-f]{32}", echoed or ""), (mine, echoed)
    deadline = time.monotonic() + 3  # the query log is written off the event loop
    while True:
        lines = (root / "logs" / "queries.log").read_text().splitlines()
        logged = {json.loads(line)["requestId"] for line in lines}
        if {echoed for _, echoed in sent} <= logged or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert {echoed for _, echoed in sent} <= logged  # the node saw the id nginx passed (or made)
    # 30 requests, one upstream connection kept open: no connection closed per request.
    assert after["TIME_WAIT"] - before["TIME_WAIT"] <= 1, (before, after)
    assert after["ESTABLISHED"] >= 1


@needs_nginx
def test_three_nodes_behind_nginx_under_drain_full_pool_sigterm_and_sigkill(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    # The phase counts are this test's report (issue: "passes in CI with the counts
    # printed"): shown in every run, where pytest would show them only on failure.
    with capsys.disabled():
        print()
        run_phases(lab)


def run_phases(lab: Lab) -> None:
    a, b, c = lab.nodes["A"], lab.nodes["B"], lab.nodes["C"]
    drain_at: list[float] = []

    # (a) drain A with the not-alive file: nginx retries its 503s elsewhere and marks it down.
    def drain() -> None:
        (a.data_dir / "not-alive").touch()
        drain_at.append(time.time())

    counts = lab.phase(lab.default, "drain", drain, after_s=2.5)
    (a.data_dir / "not-alive").unlink()
    assert counts.ran_on(a.port), "A served nothing before the drain: the phase proves nothing"
    late = counts.ran_on(a.port, after=drain_at[0] + 0.5)  # the node polls the file every 0.25 s
    assert not late, f"A still ran requests after it was drained: {late}"
    assert not counts.errors and not counts.double_runs
    assert counts.retried > 0, "nginx never re-sent a 503 of the drained node"

    # (d) C's pool is full (ceil 1, no queue): its 503 QueueFull are retried on another node.
    write_tuning(c.data_dir, "scale", "work", FULL_TUNING)
    wait_ceil(c, 1)
    counts = lab.phase(lab.default, "full", lambda: None, before_s=0.0, after_s=2.5)
    rejections = c.stats("scale")["endpoints"][0]["counters"]["rejections"]
    print(f"[full] C rejections: {rejections}")
    assert rejections.get("QueueFull", 0) > 0, "C's pool never refused: the phase proves nothing"
    assert not counts.errors and not counts.double_runs
    assert counts.retried >= rejections["QueueFull"]
    write_tuning(c.data_dir, "scale", "work", NORMAL_TUNING)
    wait_ceil(c, 8)

    # (b) SIGTERM B: it stops accepting, answers 503 on open connections, finishes its requests.
    counts = lab.phase(lab.default, "sigterm", lambda: b.signal(signal.SIGTERM))
    assert b.proc is not None and b.proc.wait(10) == 0, b.log()
    assert not counts.errors and not counts.double_runs
    unfinished = [rid for rid in counts.ran_on(b.port) if not counts.ends.get(rid)]
    assert not unfinished, f"B did not finish {unfinished}"

    # (c) SIGKILL C with retry choice (1): only requests in flight on C may fail or run twice.
    check_kill(lab, lab.default, c, "sigkill", strict=False)

    # (c') SIGKILL C again with choice (2), after restarting B and C: nothing runs twice.
    restart(b)
    restart(c)
    b.wait_ready(20)
    c.wait_ready(20)
    check_kill(lab, lab.strict, c, "sigkill-strict", strict=True)
    assert "[emerg]" not in lab.default.error_log() + lab.strict.error_log()


def check_kill(lab: Lab, nginx: Nginx, victim: Node, phase: str, *, strict: bool) -> None:
    window: list[float] = []

    def kill() -> None:
        window.append(time.time())
        assert victim.proc is not None
        victim.proc.kill()  # the server process only: its pipelines exit when their pipes close
        window.append(time.time())

    counts = lab.phase(nginx, phase, kill, after_s=1.5)
    victim_addr = f"127.0.0.1:{victim.port}"
    went = {rid for rid, addrs in nginx.upstreams().items() if victim_addr in addrs}
    went |= set(counts.ran_on(victim.port))
    in_flight = counts.in_flight(went, *window)
    print(f"[{phase}] in flight on the killed node: {len(in_flight)}")
    assert set(counts.double_runs) <= in_flight, "a request not in flight on the killed node ran twice"
    for answer in counts.errors:
        assert answer.rid in went and answer.status == 502, f"{answer} never went to the killed node"
    if strict:
        # Choice (2): nothing runs twice; besides the requests in flight, those nginx
        # sends to the dead node before it is marked down fail too (refused, not re-sent).
        assert not counts.double_runs
    else:
        assert {a.rid for a in counts.errors} <= in_flight
    assert len(counts.errors) + len(counts.double_runs) <= THREADS
