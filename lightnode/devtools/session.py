"""A dev session: the real node serving a source directory directly (SPEC §7.1).

    SRC_DIR ──(each load)──▶ services/<id>/generations/dev-N ─symlink─▶ SRC_DIR
                              services/<id>/state.json  →  dev-N, proba 1
                                         │
    daemon.Node (dev=True) ── Registry.service_changed(id): zero-downtime switch
                                         │
    DevSession.load() waits until dev-N serves, reads each pool's load state;
    DevSession.play() POSTs each test query to the node over loopback HTTP.

The data directory is a throwaway temp dir. Its dev generations resolve to
SRC_DIR itself (`DevDataDir.generation_dir`), so pipelines run the developer's
files in place: tracebacks, the working directory and sys.path show SRC_DIR.
Every load is a new generation, so the Registry starts fresh pipelines, routes
to them once they are warm and drains the previous ones. Requirements code envs
are built before the switch into a persistent cache (`code_envs_dir`), so a
session restart reuses them.

Imports: daemon (Node), scheduler.registry, services.*, devtools.expect, config.
Never http/ internals: queries go through a real socket like any client.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from lightnode.config.model import ListenSettings, ServerSettings, ShutdownSettings
from lightnode.daemon import DaemonOptions, Node
from lightnode.devtools.expect import Mismatch, match_expect
from lightnode.errors import ConfigError
from lightnode.scheduler.registry import SWITCH_WARMUP_TIMEOUT_S
from lightnode.services.codeenv import CodeEnvError, build_env, interpreter_for, plan_env
from lightnode.services.model import EndpointDef, ServiceDef, TestQuery, load_service_dir
from lightnode.services.store import DataDir, MappingEntry, ServiceState

DEV_GENERATION = re.compile(r"dev-[0-9]+")
# A dev node stops quickly on Ctrl-C: a query still running after this is cut.
DEV_SHUTDOWN_GRACE_MS = 5000
QUERY_TIMEOUT_S = 120.0
SWITCH_POLL_S = 0.01


def default_code_envs_dir() -> Path:
    """Where dev and test keep built requirements envs across sessions."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "lightnode" / "code-envs"


class DevDataDir(DataDir):
    """A temp data dir whose dev-N generations are the source directory itself."""

    def __init__(self, root: Path, src_dir: Path, code_envs_dir: Path) -> None:
        super().__init__(root)
        self.src_dir = src_dir
        self._code_envs_dir = code_envs_dir

    @property
    def code_envs_dir(self) -> Path:
        return self._code_envs_dir

    def generation_dir(self, service_id: str, generation: str) -> Path:
        path = super().generation_dir(service_id, generation)  # checks both ids
        return self.src_dir if DEV_GENERATION.fullmatch(generation) else path


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """Whether one endpoint's function loads, and why not."""

    endpoint_id: str
    loaded: bool
    error: str | None = None
    traceback: str | None = None
    start_ms: float | None = None


@dataclass(frozen=True, slots=True)
class LoadReport:
    """The outcome of loading SRC_DIR once. `problem` is a service.json error (nothing switched)."""

    src_dir: Path
    service_id: str | None
    generation: str | None
    definition: ServiceDef | None
    endpoints: tuple[EndpointStatus, ...] = ()
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and all(e.loaded for e in self.endpoints)


@dataclass(frozen=True, slots=True)
class QueryOutcome:
    """One test query played: HTTP status (0: no answer), latency, body and verdict."""

    endpoint_id: str
    name: str
    status: int = 0
    latency_ms: float | None = None
    body: Any = None
    passed: bool = False
    skipped: bool = False
    mismatches: tuple[Mismatch, ...] = ()
    error: str | None = None  # why it failed, one line


@dataclass
class DevSession:
    """One running dev node for `src_dir`; use `start()`, `load()`, `play()`, `close()`."""

    src_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    code_envs_dir: Path = field(default_factory=default_code_envs_dir)
    progress: TextIO | None = None  # code env build output
    node: Node | None = None
    url: str = ""
    service_id: str | None = None
    generation: str | None = None
    _tmp: Path | None = None
    _count: int = 0

    async def start(self) -> None:
        """Start the node on an empty temp data dir. Raises OSError (e.g. port in use)."""
        self.src_dir = Path(os.path.abspath(self.src_dir))
        self._tmp = Path(tempfile.mkdtemp(prefix="lightnode-dev-"))
        store = DevDataDir(self._tmp, self.src_dir, Path(self.code_envs_dir))
        store.ensure_layout()
        settings = replace(
            ServerSettings(),
            listen=ListenSettings(host=self.host, port=self.port),
            shutdown=ShutdownSettings(grace_ms=DEV_SHUTDOWN_GRACE_MS),
        )
        node = Node(DaemonOptions(data_dir=self._tmp, host=self.host, port=self.port, dev=True), settings)
        node.data_dir = store  # the registry reads generations through it
        try:
            await node.start()
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self.node = node
        self.url = node.addr_file.read_text().strip()

    @property
    def store(self) -> DevDataDir:
        assert self.node is not None and isinstance(self.node.data_dir, DevDataDir)
        return self.node.data_dir

    async def close(self) -> None:
        """Drain and stop the node (staged shutdown), remove the temp data dir."""
        if self.node is not None and self.node.registry is not None:
            await self.node.shutdown()
        self.node = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    # ------------------------------------------------------------------ load

    async def load(self) -> LoadReport:
        """Serve SRC_DIR's current content as a new generation; report each endpoint."""
        try:
            definition = load_service_dir(self.src_dir)
        except ConfigError as exc:
            return LoadReport(self.src_dir, self.service_id, self.generation, None, problem=str(exc))
        loop = asyncio.get_running_loop()
        env_errors = await loop.run_in_executor(None, self._build_envs, definition)
        self._count += 1
        generation = f"dev-{self._count}"
        await self._switch(definition.id, generation)
        statuses = tuple(self._status(definition, generation, ep, env_errors) for ep in definition.endpoints)
        return LoadReport(self.src_dir, definition.id, generation, definition, statuses)

    def _build_envs(self, definition: ServiceDef) -> dict[str, str]:
        errors: dict[str, str] = {}
        for endpoint in definition.endpoints:
            if isinstance(endpoint.code_env, dict):
                try:
                    plan = plan_env(endpoint.code_env, definition.root, self.store.code_envs_dir)
                    build_env(plan, progress=self.progress, label=f"endpoint {endpoint.id}")
                except CodeEnvError as exc:
                    errors[endpoint.id] = str(exc)
        return errors

    async def _switch(self, service_id: str, generation: str) -> None:
        assert self.node is not None and self.node.registry is not None
        registry, store = self.node.registry, self.store
        if self.service_id is not None and self.service_id != service_id:  # service.json id changed
            shutil.rmtree(store.service_dir(self.service_id), ignore_errors=True)
            registry.service_changed(self.service_id)
        generations = store.generations_dir(service_id)
        generations.mkdir(parents=True, exist_ok=True)
        os.symlink(self.src_dir, generations / generation)
        store.write_state(service_id, ServiceState(True, (MappingEntry(generation, 1.0),)))
        registry.service_changed(service_id)
        deadline = time.monotonic() + SWITCH_WARMUP_TIMEOUT_S + 5
        while not self._serving(service_id, generation):
            if time.monotonic() > deadline:
                raise TimeoutError(f"generation {generation} of {service_id} did not start serving")
            await asyncio.sleep(SWITCH_POLL_S)
        for entry in generations.iterdir():
            if entry.name != generation and entry.is_symlink():
                entry.unlink()
        self.service_id, self.generation = service_id, generation

    def _serving(self, service_id: str, generation: str) -> bool:
        assert self.node is not None and self.node.registry is not None
        runtime = self.node.registry.services.get(service_id)
        return runtime is not None and [e.generation for e in runtime.state.entries] == [generation]

    def _status(
        self, definition: ServiceDef, generation: str, endpoint: EndpointDef, env_errors: dict[str, str]
    ) -> EndpointStatus:
        assert self.node is not None and self.node.registry is not None
        if endpoint.id in env_errors:
            return EndpointStatus(endpoint.id, False, env_errors[endpoint.id])
        runtime = self.node.registry.services[definition.id]
        gen = runtime.generations.get(generation)
        pool = gen.pools.get(endpoint.id) if gen is not None else None
        if pool is None:
            error = (gen.load_error if gen is not None else None) or "not loaded"
            try:
                interpreter_for(endpoint.code_env, definition.root, self.store.code_envs_dir)
            except CodeEnvError as exc:
                error = str(exc)
            return EndpointStatus(endpoint.id, False, error)
        snap = pool.snapshot()
        if snap.load_state == "failed":
            error = pool.last_load_error or snap.last_load_error or "failed to load"
            return EndpointStatus(endpoint.id, False, error, pool.last_load_traceback)
        start_ms = None if pool.last_start_s is None else round(pool.last_start_s * 1000, 1)
        return EndpointStatus(endpoint.id, True, start_ms=start_ms)

    # ------------------------------------------------------------------ play

    async def play(self, report: LoadReport) -> list[QueryOutcome]:
        """Play every test query of the report's endpoints, in order, one at a time."""
        if report.definition is None:
            return []
        loaded = {s.endpoint_id: s.loaded for s in report.endpoints}
        outcomes = []
        for endpoint in report.definition.endpoints:
            for query in endpoint.test_queries:
                if not loaded.get(endpoint.id):
                    outcomes.append(QueryOutcome(endpoint.id, query.name, skipped=True,
                                                 error="endpoint does not load"))
                    continue
                outcomes.append(await play_query(self.url, report.definition.id, endpoint.id, query))
        return outcomes

    def endpoint_url(self, endpoint_id: str) -> str:
        return f"{self.url}/public/api/v1/{self.service_id}/{endpoint_id}/run"


async def play_query(base_url: str, service_id: str, endpoint_id: str, query: TestQuery) -> QueryOutcome:
    """POST one test query and judge the answer."""
    path = f"/public/api/v1/{service_id}/{endpoint_id}/run"
    started = time.perf_counter()
    try:
        status, raw = await asyncio.wait_for(http_post(base_url, path, json.dumps(query.q).encode()),
                                             QUERY_TIMEOUT_S)
    except (OSError, ValueError, EOFError, asyncio.LimitOverrunError, asyncio.TimeoutError) as exc:
        return QueryOutcome(endpoint_id, query.name, error=f"no answer: {exc or type(exc).__name__}")
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return judge(endpoint_id, query, status, body, latency_ms)


async def http_post(base_url: str, path: str, body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 POST on its own connection, on the event loop's thread.

    Not urllib in a worker thread: a thread that opens sockets while the loop
    closes pipes of exiting pipelines is exposed to any double close there.

    Raises:
        OSError: cannot connect, or the connection broke.
        ValueError: the answer is not HTTP.
    """
    url = urllib.parse.urlsplit(base_url)
    host = url.hostname or "127.0.0.1"
    reader, writer = await asyncio.open_connection(host, url.port or 80)
    try:
        head = (f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        try:
            header_bytes = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ValueError(f"not an HTTP answer: {exc.partial[:80]!r}") from None
        lines = header_bytes.decode("latin-1").split("\r\n")
        status_line = lines[0].split()
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/") or not status_line[1].isdigit():
            raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
        length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith("content-length:")), None)
        payload = await (reader.readexactly(length) if length is not None else reader.read())
    finally:
        writer.close()
    return int(status_line[1]), payload


def judge(endpoint_id: str, query: TestQuery, status: int, body: Any, latency_ms: float) -> QueryOutcome:
    """A query passes on 200 whose envelope matches `expect`, or on the very error
    its `expect` names (an expect with `errorType` tests an error case)."""
    expect = query.expect
    expects_error = isinstance(expect, dict) and "errorType" in expect
    outcome = QueryOutcome(endpoint_id, query.name, status, latency_ms, body)
    if status != 200 and not expects_error:
        return replace(outcome, error=_error_line(status, body))
    mismatches = tuple(match_expect(expect, body)) if expect is not None else ()
    return replace(outcome, passed=not mismatches, mismatches=mismatches,
                   error=f"{len(mismatches)} difference(s) from expect" if mismatches else None)


def _error_line(status: int, body: Any) -> str:
    if isinstance(body, dict) and "errorType" in body:
        return f"{body['errorType']}: {body.get('message', '')}"
    return f"HTTP {status}"
