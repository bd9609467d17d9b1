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
to them once they are warm and drains the previous ones. Pipelines write no
bytecode caches (`PYTHONDONTWRITEBYTECODE`): Python trusts a `__pycache__` file
whose source has the same size and mtime second, so a quick second save (a
constant 2 -> 3) would run the first save's code.

A load may be cancelled (the dev server does when a file changes meanwhile):
the new generation's pipelines are killed then, as its code is stale before it
serves. Old code must not hold back new code: the Registry applies a service's
changes in order, each after the previous one's warm-up and drain, so
initialization code that never returns, or a call that never ends, would hold
back every later reload. Hence that kill, and a previous generation's pipelines
still running `OLD_GENERATION_GRACE_S` after a switch are killed too.

Requirements code envs are built before the switch into a persistent cache
(`code_envs_dir`), so a session restart reuses them. A session closed while one
builds (Ctrl-C, SIGTERM) stops the build rather than wait for pip to finish.

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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from lightnode.config.model import ListenSettings, ServerSettings, ShutdownSettings
from lightnode.daemon import DaemonOptions, Node
from lightnode.devtools.expect import MISSING, Mismatch, match_expect
from lightnode.errors import ConfigError
from lightnode.scheduler.registry import SWITCH_WARMUP_TIMEOUT_S
from lightnode.scheduler.scheduler import EndpointPool
from lightnode.services.codeenv import BuildStop, CodeEnvError, build_env, interpreter_for, plan_env
from lightnode.services.model import EndpointDef, ServiceDef, TestQuery, load_service_dir
from lightnode.services.store import DataDir, MappingEntry, ServiceState

DEV_GENERATION = re.compile(r"dev-[0-9]+")
# A dev node stops quickly on Ctrl-C: a query still running after this is cut.
DEV_SHUTDOWN_GRACE_MS = 5000
QUERY_TIMEOUT_S = 120.0
SUGGESTION_CHARS = 200  # longest corrected expect a hint shows
SWITCH_POLL_S = 0.01
# A previous generation's pipelines still running this long after a switch are killed.
OLD_GENERATION_GRACE_S = DEV_SHUTDOWN_GRACE_MS / 1000
OLD_GENERATION_POLL_S = 0.1
# Set for the pipelines of a dev node (see the module docstring).
DEV_PIPELINE_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}
# The top-level keys of an answer (SPEC §3.3, §3.4): an expect naming another one can never match.
ENVELOPE_KEYS = ("response", "responseIsEmpty", "timing", "apiContext", "errorType", "message", "detailedMessage")


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

    def ensure_layout(self) -> None:
        """The temp dir's layout, without the shared code envs cache: `build_env` creates
        that when an env is first built, so a service without requirements envs never
        needs it (a CI container's HOME may not be writable)."""
        shared, self._code_envs_dir = self._code_envs_dir, self.root / "code-envs"
        try:
            super().ensure_layout()
        finally:
            self._code_envs_dir = shared

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
    interrupted: bool = False  # a change of SRC_DIR cut it short (dev)
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
    notice: Callable[[str], None] | None = None  # says what the session did on its own
    node: Node | None = None
    url: str = ""
    service_id: str | None = None
    generation: str | None = None
    _tmp: Path | None = None
    _count: int = 0
    _saved_env: dict[str, str | None] = field(default_factory=dict)
    _cutting: set[asyncio.Task[None]] = field(default_factory=set)
    _cut_pools: set[int] = field(default_factory=set)  # id() of the pools a _cut_old task watches
    _env_build: asyncio.Future[dict[str, str]] | None = None
    _build_stop: BuildStop = field(default_factory=BuildStop)  # of the build under way
    loading: str | None = None  # the generation a load is switching to
    _load_started_s: float = 0.0  # time.monotonic() at the start of the last load
    # A private service ("auth": {"public": false}) answers 401 without a key: the
    # session makes one in its temp data dir, per service id, for its test queries.
    _keys: dict[str, str] = field(default_factory=dict)
    # (endpoint id, query name, perf_counter at its start) of the query being played
    playing: tuple[str, str, float] | None = None

    async def start(self) -> None:
        """Start the node on an empty temp data dir. Raises StartupError (e.g. port in use)."""
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
        self._set_pipeline_env(DEV_PIPELINE_ENV)
        try:
            await node.start()
        except BaseException:
            self._restore_env()
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
        for task in list(self._cutting):
            task.cancel()
        if self._env_build is not None and not self._env_build.done():
            # A build left running (the run was stopped while it loaded): not to the end of pip.
            self._build_stop.stop()
            await asyncio.wait([self._env_build])
        if self.node is not None and self.node.registry is not None:
            await self.node.shutdown()
        self.node = None
        self._restore_env()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _set_pipeline_env(self, values: dict[str, str]) -> None:
        """Pipelines inherit the node's environment: set `values` for them (until close)."""
        for name, value in values.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    # ------------------------------------------------------------------ load

    async def load(self) -> LoadReport:
        """Serve SRC_DIR's current content as a new generation; report each endpoint."""
        try:
            definition = load_service_dir(self.src_dir)
        except ConfigError as exc:
            return LoadReport(self.src_dir, self.service_id, self.generation, None, problem=str(exc))
        if not definition.public:
            self._key_for(definition.id)
        self._count += 1
        generation = f"dev-{self._count}"
        self.loading = generation
        self._load_started_s = time.monotonic()
        try:
            # A build left running by a cancelled load ends first: two builds of one env must not race.
            if self._env_build is not None and not self._env_build.done():
                await asyncio.wait([self._env_build])
            self._build_stop = BuildStop()
            self._env_build = asyncio.get_running_loop().run_in_executor(
                None, self._build_envs, definition, self._build_stop)
            env_errors = await asyncio.shield(self._env_build)
            await self._switch(definition, generation)
        finally:
            self.loading = None
        statuses = tuple(self._status(definition, generation, ep, env_errors) for ep in definition.endpoints)
        return LoadReport(self.src_dir, definition.id, generation, definition, statuses)

    def _key_for(self, service_id: str) -> str:
        """The session's key for a private service, made once (and said, in dev)."""
        key = self._keys.get(service_id)
        if key is None and self.node is not None:
            _, key = self.node.keys.create(admin=False, service_id=service_id, label="lightnode dev/test queries")
            self._keys[service_id] = key
            if self.notice is not None:
                self.notice(f"service {service_id} is private: its test queries send a key of this session;"
                            f" so can you: -H 'Authorization: Bearer {key}'")
        return key or ""

    def _build_envs(self, definition: ServiceDef, stop: BuildStop) -> dict[str, str]:
        errors: dict[str, str] = {}
        for endpoint in definition.endpoints:
            if isinstance(endpoint.code_env, dict):
                try:
                    stop.check()
                    plan = plan_env(endpoint.code_env, definition.root, self.store.code_envs_dir)
                    build_env(plan, progress=self.progress, label=f"endpoint {endpoint.id}", stop=stop)
                except CodeEnvError as exc:
                    errors[endpoint.id] = str(exc)
        return errors

    async def _switch(self, definition: ServiceDef, generation: str) -> None:
        assert self.node is not None and self.node.registry is not None
        registry, store, service_id = self.node.registry, self.store, definition.id
        previous = {gen: pools for sid in {self.service_id, service_id} if sid is not None
                    for gen, pools in self._pools_by_generation(sid).items()}
        if self.service_id is not None and self.service_id != service_id:  # service.json id changed
            shutil.rmtree(store.service_dir(self.service_id), ignore_errors=True)
            registry.service_changed(self.service_id)
        generations = store.generations_dir(service_id)
        generations.mkdir(parents=True, exist_ok=True)
        os.symlink(self.src_dir, generations / generation)
        store.write_state(service_id, ServiceState(True, (MappingEntry(generation, 1.0),)))
        registry.service_changed(service_id)
        deadline = time.monotonic() + SWITCH_WARMUP_TIMEOUT_S + 5
        try:
            while not self._serving(service_id, generation):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"generation {generation} of {service_id} did not start serving")
                await asyncio.sleep(SWITCH_POLL_S)
        except asyncio.CancelledError:
            pools = [pool for endpoint in definition.endpoints
                     for pool in registry.pools_of(service_id, endpoint.id) if pool.spec.generation == generation]
            for pool in pools:
                pool.kill_all()
            for old_generation, old in [*previous.items(), (generation, pools)]:
                self._cut_later(old_generation, old)
            raise
        for entry in generations.iterdir():
            if entry.name != generation and entry.is_symlink():
                entry.unlink()
        self.service_id, self.generation = service_id, generation
        serving = {id(p) for pools in self._pools_by_generation(service_id).values() for p in pools}
        for old_generation, pools in previous.items():
            self._cut_later(old_generation, [p for p in pools if id(p) not in serving])

    def _cut_later(self, generation: str, pools: list[EndpointPool]) -> None:
        pools = [p for p in pools if id(p) not in self._cut_pools]
        if not pools:
            return
        self._cut_pools.update(id(p) for p in pools)
        task = asyncio.get_running_loop().create_task(self._cut_old(generation, pools))
        self._cutting.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._cutting.discard(task)
            self._cut_pools.difference_update(id(p) for p in pools)

        task.add_done_callback(done)

    def _pools_by_generation(self, service_id: str) -> dict[str, list[EndpointPool]]:
        assert self.node is not None and self.node.registry is not None
        runtime = self.node.registry.services.get(service_id)
        if runtime is None:
            return {}
        return {name: list(gen.pools.values()) for name, gen in runtime.generations.items()}

    async def _cut_old(self, generation: str, pools: list[EndpointPool]) -> None:
        """Until `generation`'s pools have drained, kill what runs in them after each grace:
        the next reload waits for them. (A pool not draining yet, of a cancelled load,
        may start pipelines again until the Registry drains it.)"""
        while True:
            deadline = time.monotonic() + OLD_GENERATION_GRACE_S
            while time.monotonic() < deadline:
                if all(p.drained for p in pools):
                    return
                await asyncio.sleep(OLD_GENERATION_POLL_S)
            running = [p for p in pools if not p.drained]
            count = sum(len(p.workers) for p in running)
            for pool in running:
                pool.kill_all()
            if count and self.notice is not None:
                self.notice(f"{generation}: killed {count} pipeline(s) still running after "
                            f"{OLD_GENERATION_GRACE_S:.0f} s (old code; a request there gets 500 WorkerCrashed)")

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
        if snap.load_state == "loading":
            # Never ready: the switch came after the registry's warm-up timeout, with the
            # pipeline still in its initialization code (a hung download, a lock). Its
            # test queries would only wait in the queue into a 503 QueueTimeout.
            waited = time.monotonic() - self._load_started_s
            return EndpointStatus(endpoint.id, False,
                                  f"still starting after {waited:.0f} s: its initialization code has not returned")
        start_ms = None if pool.last_start_s is None else round(pool.last_start_s * 1000, 1)
        return EndpointStatus(endpoint.id, True, start_ms=start_ms)

    # ------------------------------------------------------------------ play

    async def play(self, report: LoadReport, outcomes: list[QueryOutcome] | None = None) -> list[QueryOutcome]:
        """Play every test query of the report's endpoints, in order, one at a time.

        Each outcome is appended to `outcomes` (a new list if None) as it comes,
        and `playing` names the query under way, so a caller that cancels the
        play knows what was done and what was cut.
        """
        outcomes = [] if outcomes is None else outcomes
        if report.definition is None:
            return outcomes
        loaded = {s.endpoint_id: s.loaded for s in report.endpoints}
        for endpoint in report.definition.endpoints:
            for query in endpoint.test_queries:
                if not loaded.get(endpoint.id):
                    outcomes.append(QueryOutcome(endpoint.id, query.name, skipped=True,
                                                 error="endpoint does not load"))
                    continue
                self.playing = (endpoint.id, query.name, time.perf_counter())
                try:
                    outcomes.append(await play_query(self.url, report.definition.id, endpoint.id, query,
                                                     key=self._keys.get(report.definition.id)))
                finally:
                    self.playing = None
        return outcomes

    def interrupted_outcome(self) -> QueryOutcome | None:
        """The query under way, as cut short by a change (None if none is)."""
        if self.playing is None:
            return None
        endpoint_id, name, started = self.playing
        return QueryOutcome(endpoint_id, name, latency_ms=round((time.perf_counter() - started) * 1000, 2),
                            interrupted=True, error="interrupted by a change")

    def endpoint_url(self, endpoint_id: str) -> str:
        return f"{self.url}/public/api/v1/{self.service_id}/{endpoint_id}/run"


async def play_query(
    base_url: str, service_id: str, endpoint_id: str, query: TestQuery, *, key: str | None = None
) -> QueryOutcome:
    """POST one test query (with `key` as a Bearer token, if any) and judge the answer."""
    path = f"/public/api/v1/{service_id}/{endpoint_id}/run"
    started = time.perf_counter()
    try:
        status, raw = await asyncio.wait_for(http_post(base_url, path, json.dumps(query.q).encode(), key=key),
                                             QUERY_TIMEOUT_S)
    except asyncio.TimeoutError:  # before OSError, of which it is a subclass
        return QueryOutcome(endpoint_id, query.name, error=f"no answer within {QUERY_TIMEOUT_S:g} s")
    except (OSError, ValueError, EOFError, asyncio.LimitOverrunError) as exc:
        return QueryOutcome(endpoint_id, query.name, error=f"no answer: {exc or type(exc).__name__}")
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return judge(endpoint_id, query, status, body, latency_ms)


async def http_post(base_url: str, path: str, body: bytes, *, key: str | None = None) -> tuple[int, bytes]:
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
        authorization = f"Authorization: Bearer {key}\r\n" if key else ""
        head = (f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                f"{authorization}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
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
    if status == 200:  # a success whose result the table shows: the keys may sit outside "response"
        mismatches = tuple(_with_hints(list(mismatches)))
    return replace(outcome, passed=not mismatches, mismatches=mismatches,
                   error=f"{len(mismatches)} difference(s) from expect" if mismatches else None)


def _with_hints(mismatches: list[Mismatch]) -> list[Mismatch]:
    """Say how to fix an expect that names the result's keys at its top
    (`{"churn_score": 22.0}`): it is matched against the whole answer, where they
    are missing, while the table shows them in the result."""
    stray = [m for m in mismatches if m.actual is MISSING and m.path.count(".") == 1 and "[" not in m.path
             and m.path[2:] not in ENVELOPE_KEYS]
    if not stray:
        return mismatches
    suggestion = json.dumps({"response": {m.path[2:]: m.expected for m in stray}}, ensure_ascii=False)
    if len(suggestion) > SUGGESTION_CHARS:
        suggestion = '{"response": {...}}'
    first = (f"not a key of the answer ({', '.join(ENVELOPE_KEYS)}): expect is matched against the whole "
             f'answer, and the function\'s result is under "response": write {suggestion}')
    hints = {id(m): (first if i == 0 else "not a key of the answer") for i, m in enumerate(stray)}
    return [replace(m, hint=hints[id(m)]) if id(m) in hints else m for m in mismatches]


def _error_line(status: int, body: Any) -> str:
    if isinstance(body, dict) and "errorType" in body:
        return f"{body['errorType']}: {body.get('message', '')}"
    return f"HTTP {status}"
