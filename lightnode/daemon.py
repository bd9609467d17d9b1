"""Composition root: data dir + registry of pools + HTTP server + config watcher.

Start-up: lay out the data dir (sample service if empty), take the lock on
run/lightnode.pid (one node per data dir, SPEC §12), read server.json, load
every enabled service's pools, listen, write run/lightnode.addr, watch config.

Shutdown is a staged contract (SPEC §11), triggered by SIGTERM or SIGINT:
  1. stop accepting: the listening socket closes (new connections are refused),
     /readyz and /isAlive answer 503, new requests on open connections get
     503 ShuttingDown with `Connection: close` (idle keep-alive connections too:
     they stay open until step 4, so that a request racing the signal gets that
     answer, not a closed connection); connections already in the listening
     socket's backlog are accepted and answered the same, not reset
     (http/backlog.py);
  2. drain: running and queued requests finish, up to `shutdown.grace_ms`;
  3. stop pipelines: each drained pool closes its workers' pipes (they exit on
     EOF), escalating to SIGTERM then SIGKILL; after the grace period whatever
     still runs is killed and its requests answered 500 WorkerCrashed, and what
     still waits in a queue is answered 503 ShuttingDown (it never runs);
  4. close the idle connections, then the others after their last answer, remove
     run/lightnode.addr, exit 0.
Signal handlers only set an event or enqueue work; everything else runs in the loop.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import logging
import os
import resource
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import uvloop

from lightnode import hotbuild
from lightnode.admin.keys import KeyStore
from lightnode.admin.routes import AdminRoutes
from lightnode.config.load import load_server_settings, server_settings_path
from lightnode.config.model import EndpointConfig, ServerSettings
from lightnode.config.watch import (
    Change,
    CodeEnvsChanged,
    ConfigWatcher,
    KeysChanged,
    ServerSettingsChanged,
    ServiceFilesChanged,
    TuningChanged,
    TuningInvalid,
    TuningRemoved,
)
from lightnode.errors import ConfigError, LightnodeError
from lightnode.http.app import NodeApp
from lightnode.http.backlog import keep_listeners, serve_backlog
from lightnode.http.protocol import HttpProtocol, ServerState
from lightnode.observe import logsetup
from lightnode.observe.metrics import MetricsCollector, RequestMetrics
from lightnode.observe.querylog import QueryLog
from lightnode.scheduler.registry import Registry
from lightnode.scheduler.worker_handle import flush_user_output
from lightnode.services.package import remove_stale_staging
from lightnode.services.store import DataDir

log = logging.getLogger("lightnode")
# Applied before the other changes of a batch (a service reloaded next uses the new tuning).
_TUNING_CHANGES = (TuningChanged, TuningRemoved, TuningInvalid)

NOT_ALIVE_POLL_S = 0.25
# Past the grace period: how long to wait for killed pipelines to exit, and how often
# to refuse the requests that came back to a queue and kill what started meanwhile.
KILL_WAIT_S = 5.0
KILL_POLL_S = 0.1
GRACE_OVER_MESSAGE = "The node is shutting down: its grace period ended before this request started"
# Young-generation collection threshold (CPython's default is 700): fewer pauses on
# the request path for a little more memory held between collections.
GC_GEN0_THRESHOLD = 20_000


# Descriptors the node needs besides one per connection: the listening socket, logs,
# three pipes per pipeline, the config watcher's, the admin's files.
FD_RESERVE = 1024


def raise_fd_limit(max_connections: int) -> None:
    """Raise the soft open-files limit toward `max_connections` + FD_RESERVE (never past
    the hard one), and warn at start when it stays below.

    A node short of descriptors fails silently where it hurts: the kernel's accept
    fails (EMFILE) and clients are reset with nothing logged; configuration files
    cannot be read. The soft limit is often 1024 while limits.max_connections is
    10000; raising it to the hard limit needs no privilege (nginx, systemd's
    LimitNOFILE= and most servers do the same).
    """
    wanted = max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the open files limit to %d: %s", target, exc)
    if soft < wanted:
        log.warning(
            "the open files limit is %d (hard limit %s): below limits.max_connections (%d) + %d"
            " for pipelines and files; past it, new connections are reset and nothing is logged."
            " Raise it (ulimit -n, systemd LimitNOFILE=) or lower limits.max_connections",
            soft, "unlimited" if hard == resource.RLIM_INFINITY else hard, max_connections, FD_RESERVE,
        )  # fmt: skip


@dataclass(frozen=True)
class DaemonOptions:
    data_dir: Path
    host: str | None = None
    port: int | None = None
    log_level: str | None = None
    pidfile: Path | None = None
    dev: bool = False


class StartupError(Exception):
    """The node cannot start; the message is shown to the operator as is."""


def settings_for(options: DaemonOptions) -> ServerSettings:
    """server.json with command-line overrides applied."""
    settings = load_server_settings(options.data_dir / "config" / "server.json")
    listen = settings.listen
    if options.host is not None:
        listen = replace(listen, host=options.host)
    if options.port is not None:
        listen = replace(listen, port=options.port)
    logging_settings = settings.logging
    if options.log_level is not None:
        logging_settings = replace(logging_settings, level=options.log_level)
    return replace(settings, listen=listen, logging=logging_settings)


def setup_logging(settings: ServerSettings, logs_dir: Path | None) -> None:
    """Server log in `logging.format` (text or JSON lines), see observe.logsetup."""
    logsetup.setup_logging(settings.logging, logs_dir)


class PidLock:
    """An exclusive lock on run/lightnode.pid held for the node's life (SPEC §12)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StartupError(
                f"another lightnode (pid {holder}) is serving this data directory ({self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Empty the file, then unlock it. A pid left in it after the node has gone would
        have `kill $(cat run/lightnode.pid)` signal whatever process reuses that pid. The
        file is not removed: a node starting meanwhile may hold it open already, and would
        lock a file that a third node, creating the path anew, would not see."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass  # the lock goes anyway; a stale pid is a lesser harm than a stuck stop
            os.close(self._fd)
            self._fd = None


class Node:
    """One running node: owns the server, the registry and the watcher."""

    def __init__(self, options: DaemonOptions, settings: ServerSettings) -> None:
        self.options = options
        self.settings = settings
        self.data_dir = DataDir(options.data_dir)
        self.loop = asyncio.get_running_loop()
        self.app = NodeApp(options.data_dir, dev=options.dev)
        self.http_state = ServerState(settings.limits)
        self.registry: Registry | None = None
        self.watcher: ConfigWatcher | None = None
        self.config_errors_total = 0
        self.keys = KeyStore(self.data_dir.keys_path)  # API keys (SPEC §9), loaded in start()
        self.admin_routes: AdminRoutes | None = None
        self.metrics: MetricsCollector | None = None
        self.query_log: QueryLog | None = None
        self._stop = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.addr_file = self.data_dir.run_dir / "lightnode.addr"

    def _new_connection(self) -> asyncio.Protocol:
        return cast(asyncio.Protocol, HttpProtocol(self.app, self.http_state, self.loop))

    async def start(self) -> None:
        listen = self.settings.listen
        self.keys.load()  # a keys.json that does not parse stops the start (ConfigError)
        try:
            self._server = await self.loop.create_server(
                self._new_connection,
                listen.host,
                listen.port,
                backlog=2048,
                reuse_address=True,
            )
        except OSError as exc:  # a host that does not resolve says only "Name or service not known"
            raise StartupError(f"cannot listen on {listen.host} port {listen.port}: {exc.strerror or exc}") from None
        port = self._server.sockets[0].getsockname()[1]
        self.registry = Registry(
            self.loop, self.data_dir, self.app, port=port, dev=self.options.dev,
            switch_warmup_s=self.settings.switch.warmup_timeout_ms / 1000,
        )  # fmt: skip
        self.app.registry = self.registry
        self.admin_routes = AdminRoutes(self, self.keys)
        self.admin_routes.install(self.app)
        self.app.api_key_check = self.keys.check_service_request
        self._install_observers()
        self.watcher = ConfigWatcher(self.data_dir.root, self._config_changed)
        # Tuning only: load_all() below reads the services and keys itself.
        self._config_changed([c for c in self.watcher.scan() if isinstance(c, _TUNING_CHANGES)])
        self.registry.load_all()
        self.addr_file.write_text(f"http://{_url_host(listen.host)}:{port}\n")
        log.info("lightnode serving %s on http://%s:%d", self.data_dir.root, listen.host, port)
        log.info("hot path: %s", hotbuild.status())
        self._watch_task = self.loop.create_task(self.watcher.run())
        self._not_alive_task = self.loop.create_task(self._watch_not_alive())

    async def _watch_not_alive(self) -> None:
        """Drain by file (SPEC §10), polled: one stat per NOT_ALIVE_POLL_S.

        While DATA_DIR/not-alive exists the node answers /run with 503 ShuttingDown,
        "The node is drained" (the function did not run, so a load balancer may re-send it to another
        node, SPEC §3.4) and /isAlive, /readyz with 503; requests already running or
        queued finish. Open-source nginx has no active health checks: these 503s are
        how it learns of the drain (config/nginx/lightnode.conf).
        """
        path = self.data_dir.root / "not-alive"
        drained = False
        while True:
            exists = path.exists()
            if exists != drained:
                drained = exists
                self.app.not_alive = drained
                log.warning("%s: %s", path, "present, node drained" if drained else "gone, serving again")
            await asyncio.sleep(NOT_ALIVE_POLL_S)

    def _install_observers(self) -> None:
        """Metrics at /metrics and the query log, both fed one record per /run request."""
        registry = self.registry
        assert registry is not None
        request_metrics = RequestMetrics(self._knows_endpoint)
        self.metrics = MetricsCollector(
            request_metrics, registry.all_pools, lambda: self.config_errors_total,
            query_log_dropped=lambda: self.query_log.dropped_lines if self.query_log is not None else 0,
        )
        self.metrics.start(self.loop)
        registry.pool_made = self.metrics.note
        self.app.observers.append(request_metrics)
        self.app.metrics_text = self.metrics.render
        self.app.metrics_public = self.settings.metrics.public
        logging_settings = self.settings.logging
        if logging_settings.query_log:
            self.query_log = QueryLog(
                self.data_dir.logs_dir / "queries.log",
                loop=self.loop,
                max_bytes=logging_settings.query_log_max_bytes,
                backups=logging_settings.query_log_backups,
                log_params=logging_settings.log_params,
            )
            self.app.observers.append(self.query_log)

    def _knows_endpoint(self, service_id: str, endpoint_id: str) -> bool:
        """Whether a generation of the service defines the endpoint (metrics label guard)."""
        runtime = self.registry.services.get(service_id) if self.registry is not None else None
        return runtime is not None and any(
            gen.definition is not None and gen.definition.endpoint(endpoint_id) is not None
            for gen in runtime.generations.values()
        )

    def _config_changed(self, changes: Sequence[Change]) -> None:
        """Apply what the watcher saw, tuning first; each change on its own.

        A change whose application raises is logged and counted, and the others of
        the batch still apply: the watcher's snapshot has moved past all of them, so
        one skipped would wait for the next edit of its file or a SIGHUP.
        """
        ordered: list[Change] = [c for c in changes if isinstance(c, _TUNING_CHANGES)]
        ordered += [c for c in changes if not isinstance(c, _TUNING_CHANGES)]
        for change in ordered:
            try:
                self._apply_change(change)
            except Exception:
                self.config_errors_total += 1
                log.exception("applying %s failed; the other changes still apply", change)

    def _apply_change(self, change: Change) -> None:
        assert self.registry is not None
        if isinstance(change, TuningChanged):
            self.registry.apply_tuning(change.service_id, change.endpoint_id, change.config)
        elif isinstance(change, TuningRemoved):
            self.registry.apply_tuning(change.service_id, change.endpoint_id, EndpointConfig())
        elif isinstance(change, TuningInvalid):
            self.config_errors_total += 1
            self.registry.tuning_refused(change.service_id, change.endpoint_id, change.error)
        elif isinstance(change, ServiceFilesChanged):
            self.registry.service_changed(change.service_id)
        elif isinstance(change, CodeEnvsChanged):
            self.registry.code_envs_changed()
        elif isinstance(change, KeysChanged) and self.keys.reload() is not None:
            self.config_errors_total += 1  # refused whole: the last good keys stay
        elif isinstance(change, ServerSettingsChanged):
            self._server_settings_changed()

    def _server_settings_changed(self) -> None:
        """server.json is read at start only: a change is checked now and said to wait for a restart."""
        path = server_settings_path(self.options.data_dir)
        try:
            load_server_settings(path)
        except ConfigError as exc:
            self.config_errors_total += 1
            log.error("%s refused: the next start would fail; the running node keeps its settings: %s", path, exc)
            return
        log.warning("%s changed: its settings apply at the next start (the running node keeps its own)", path)

    def request_stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read the tuning files, keys.json and the services (server.json: at start only)."""
        if self.watcher is not None:
            log.info("SIGHUP: re-reading configuration")
            if self.registry is not None:
                self.registry.forget_refusals()  # a refused switch is tried again
            self._config_changed(self.watcher.rescan_all())

    async def wait(self) -> None:
        await self._stop.wait()

    async def abandon_start(self) -> None:
        """A start that failed midway: stop listening and stop the pipelines it started.

        Their start would otherwise be cut short by the end of the loop (a traceback per
        pipeline under the one-line reason), and they would outlive the node briefly.
        """
        if self._server is not None:
            self._server.close()
        if self.registry is not None and not await self._stop_now(self.registry):
            log.error("pipelines did not exit %.0f s after SIGKILL", KILL_WAIT_S)

    async def _stop_now(self, registry: Registry) -> bool:
        """Past the grace period (or after a failed start): refuse what waits, kill what runs, until every pool has drained.

        A draining pool starts a pipeline anew for the requests still queued when one
        dies (right within the grace period: they are to be run). Past it they must
        not run: each is answered 503 ShuttingDown (it did not run, so a client or a
        load balancer may send it elsewhere, SPEC §3.4) rather than run on a new
        pipeline or be cut off unanswered when the node exits. Repeated until the pools
        have drained: a killed pipeline's prefetched calls come back to the queue, and a
        pipeline started for them meanwhile is killed in turn. False if still not drained
        after KILL_WAIT_S.
        """
        drained = asyncio.ensure_future(registry.drain_all())
        deadline = self.loop.time() + KILL_WAIT_S
        while True:
            _refuse_queued(registry)
            registry.kill_all()
            done, _ = await asyncio.wait([drained], timeout=KILL_POLL_S)
            if done:
                return True
            if self.loop.time() >= deadline:
                drained.cancel()
                return False

    async def shutdown(self) -> None:
        """The staged shutdown written down in this module's docstring."""
        assert self.registry is not None and self._server is not None
        grace_s = self.settings.shutdown.grace_ms / 1000
        log.info("shutting down: draining for up to %.1f s", grace_s)
        self._not_alive_task.cancel()  # from now on draining stays on
        self.app.draining = True
        self.http_state.draining = True
        listeners = keep_listeners(self._server.sockets)
        self._server.close()  # 1. stop accepting; idle keep-alive connections stay (step 4)
        self._watch_task.cancel()
        if self.admin_routes is not None:
            self.admin_routes.close()
        backlog = await serve_backlog(self.loop, listeners, self._new_connection)
        if backlog:
            log.info("shutting down: %d connection(s) of the listening backlog answered, not reset", backlog)
        try:  # 2. + 3. drain and stop pipelines
            await asyncio.wait_for(self.registry.drain_all(), timeout=grace_s)
        except asyncio.TimeoutError:
            log.warning("grace period over: refusing the requests still queued, killing the pipelines still running")
            if not await self._stop_now(self.registry):
                log.error("pipelines did not exit %.0f s after SIGKILL", KILL_WAIT_S)
        await flush_user_output(timeout_s=2)  # what the pipelines printed last
        self.http_state.close_idle_connections()  # 4. connections close after their last answer
        try:  # abort the rest
            await asyncio.wait_for(self.http_state.wait_closed(), timeout=1)
        except asyncio.TimeoutError:
            self.http_state.abort_all()
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout=1)
        except asyncio.TimeoutError:
            pass
        if self.metrics is not None:
            self.metrics.close()
        if self.query_log is not None:
            self.query_log.close()  # every answered request is in the query log
        self.addr_file.unlink(missing_ok=True)
        log.info("lightnode stopped")


def _refuse_queued(registry: Registry) -> None:
    """Answer every request still waiting in a queue 503 ShuttingDown (it did not run)."""
    error = LightnodeError("ShuttingDown", GRACE_OVER_MESSAGE)
    for pool in registry.all_pools():
        pool.refuse_waiting(error)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def serve(options: DaemonOptions) -> int:
    data_dir = DataDir(options.data_dir)
    if data_dir.is_uninitialised():
        data_dir.init_sample()
    data_dir.ensure_layout()
    settings = settings_for(options)
    setup_logging(settings, data_dir.logs_dir)
    raise_fd_limit(settings.limits.max_connections)
    # The data directory's own lock always (one node per data dir, SPEC §12), and the
    # operator's --pidfile besides: a pid file elsewhere must not let a second node in.
    locks = [PidLock(data_dir.run_dir / "lightnode.pid")]
    if options.pidfile is not None and options.pidfile.resolve() != locks[0].path.resolve():
        locks.append(PidLock(options.pidfile))
    held: list[PidLock] = []
    try:
        for lock in locks:
            lock.acquire()
            held.append(lock)
        # What imports and deletes killed with the last node left (up to a package's size each).
        remove_stale_staging(data_dir.services_dir)
        node = Node(options, settings)
        try:
            await node.start()
        except Exception:
            await node.abandon_start()
            raise
        # Objects alive after start-up live as long as the node: keep the collector off
        # them, and collect the young generation less often than every 700 allocations
        # (a request allocates a few dozen tracked objects, almost none in cycles).
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, node.request_stop)
        loop.add_signal_handler(signal.SIGHUP, node.reload)
        await node.wait()
        await node.shutdown()
    finally:
        for lock in held:
            lock.release()
    return 0


def run(options: DaemonOptions) -> int:
    """Run the node in the foreground until SIGTERM/SIGINT; return the exit code."""
    try:
        return uvloop.run(serve(options))
    except (StartupError, ConfigError, OSError) as exc:
        print(f"lightnode: {exc}", file=sys.stderr)
        return 1
