"""Which pools exist: services, their generations and endpoints, built from the data dir.

The registry turns `services/<S>/state.json` and each mapped generation's
service.json into running `EndpointPool`s, routes a request to a pool
(choosing a generation by the mapping's probabilities), applies endpoint
tuning, and performs zero-downtime switches: the new generation's pools reach
floor first, then new requests go to them, then the old pools drain.

Imports: scheduler.scheduler, services/, config/, errors. Never http/.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from lightnode.config.load import load_endpoint_config
from lightnode.config.model import EndpointConfig
from lightnode.config.watch import stat_signature
from lightnode.errors import ConfigError, LightnodeError, holds_api_key
from lightnode.pool.snapshot import PoolSnapshot
from lightnode.scheduler.scheduler import CallSink, EndpointPool, WorkerFactory
from lightnode.scheduler.start_gate import StartGate, default_slots
from lightnode.scheduler.worker_handle import WorkerHandle, WorkerSpec
from lightnode.services.codeenv import CodeEnvError, interpreter_for
from lightnode.services.model import EndpointDef, ServiceDef, load_service_dir
from lightnode.services.store import DataDir, ServiceState

log: Final = logging.getLogger("lightnode.registry")

# The 404 of a /run path whose service or endpoint id holds an API key: not repeated back.
_KEY_AS_ID: Final = (
    "No such {what}: its id in the path looks like an API key. The key goes in the"
    " Authorization header (dataikuapi: APINodeClient(uri, service_id, api_key))"
)

# How long a switch waits, by default, for the new generation's pools to reach floor
# (server.json `switch.warmup_timeout_ms`; a pool that failed to load counts as settled
# at once). Past it, the switch goes ahead on the pipelines that are ready, unless an
# endpoint has none: then it is refused while the previous generation serves.
SWITCH_WARMUP_TIMEOUT_S: Final = 120.0


@dataclass
class GenerationRuntime:
    generation: str
    definition: ServiceDef | None
    load_error: str | None = None
    pools: dict[str, EndpointPool] = field(default_factory=dict)
    # Why an endpoint of it has no pool (its code env cannot be resolved): each its own.
    endpoint_errors: dict[str, str] = field(default_factory=dict)


@dataclass
class ServiceRuntime:
    service_id: str
    state: ServiceState
    public: bool = True
    generations: dict[str, GenerationRuntime] = field(default_factory=dict)
    # (generation, cumulative probability) for routing
    routes: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    # Why the last change of state.json was not applied (see _switch_failure), if it was not.
    switch_error: str | None = None
    # True when state.json was refused and this runtime is the disabled stand-in;
    # False for a runtime built from a good state.json (even if a later read failed).
    state_refused: bool = False
    # What the disk held when this runtime was read: the registry's refusal epoch (see
    # forget_refusals), state.json's stat, and the inode of each generation it maps (one
    # deleted and imported again is a new directory; its mtime moves when a pipeline
    # writes __pycache__ in it).
    # While switch_error is set: what the disk held when that switch was refused.
    read_mark: tuple[object, ...] = ()
    refused_mark: tuple[object, ...] | None = None


def resolve_python(code_env: object, root: Path, data_dir: DataDir, service_id: str, generation: str) -> str:
    """The interpreter for an endpoint's `code_env` (SPEC §7.2; see services.codeenv)."""
    # Not the data dir's path: the message reaches public clients in the 503.
    build = f"lightnode admin build-env {service_id} {generation} --data-dir DIR"
    try:
        return interpreter_for(code_env, root, data_dir.code_envs_dir, build)
    except CodeEnvError as exc:
        raise LightnodeError("EndpointUnavailable", str(exc)) from None


class Registry:
    """Every service the node serves, and their pools."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        data_dir: DataDir,
        sink: CallSink,
        *,
        port: int = 0,
        dev: bool = False,
        worker_factory: WorkerFactory = WorkerHandle,
        switch_warmup_s: float = SWITCH_WARMUP_TIMEOUT_S,
    ) -> None:
        self.loop = loop
        # Every pool's pipeline starts pass one gate: two per core boot at once, at least
        # four (start_gate.py).
        self.start_gate = StartGate(loop, default_slots())
        self.switch_warmup_s = switch_warmup_s
        self.worker_factory = worker_factory  # how pools start pipelines (tests: in-process fakes)
        self.data_dir = data_dir
        self.sink = sink
        self.port = port
        self.dev = dev
        self.services: dict[str, ServiceRuntime] = {}
        self.tuning: dict[tuple[str, str], EndpointConfig] = {}
        self.tuning_errors: dict[tuple[str, str], str] = {}
        self._retired: set[EndpointPool] = set()
        self.pool_made: Callable[[EndpointPool], None] | None = None  # told of each pool (metrics)
        self._reloads: dict[str, asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # drains of pools a change retired
        # Runtimes whose pools are warming up for a switch: not routed to yet,
        # but tuned like the others and stopped by a shutdown.
        self._pending: dict[str, ServiceRuntime] = {}
        self.draining = False
        # Bumped by SIGHUP (forget_refusals); part of every read's mark, so that a read
        # after it never matches a refusal recorded before it, nor one still warming up.
        self._refusal_epoch = 0
        # Set once every routed pool has reached its floor (or failed to load): /readyz
        # says "ready" from then on. A pipeline crash, a raised floor or a new service
        # later must not take the node out of its load balancer while /run still
        # answers (every pod at once, when one ConfigMap retunes them all).
        self._became_ready = False

    # ----------------------------------------------------------------- loading

    def load_all(self) -> None:
        for service_id in self.data_dir.service_ids():
            self._install(service_id)

    def _read(self, service_id: str) -> ServiceRuntime:
        state_mark = stat_signature(self.data_dir.state_path(service_id))  # before the read: a later write differs
        try:
            state = self.data_dir.read_state(service_id)
        except ConfigError as exc:
            runtime = ServiceRuntime(service_id, ServiceState(enabled=False, entries=()))
            runtime.error = str(exc)
            runtime.state_refused = True
            log.error("service %s: %s", service_id, exc)
            return runtime
        runtime = ServiceRuntime(service_id, state)
        # An entry with probability 0 never gets a request: it gets no pools either.
        served = [entry for entry in state.entries if entry.proba > 0]
        generation_marks: list[tuple[str, int | None]] = []
        for entry in served:
            signature = stat_signature(self.data_dir.generation_dir(service_id, entry.generation))
            generation_marks.append((entry.generation, signature[0] if signature else None))  # the inode
            runtime.generations[entry.generation] = self._load_generation(service_id, entry.generation)
        runtime.read_mark = (self._refusal_epoch, state_mark, tuple(generation_marks))
        defs = [g.definition for g in runtime.generations.values() if g.definition]
        runtime.public = all(d.public for d in defs) if defs else True
        total = 0.0
        for entry in served:
            total += entry.proba
            runtime.routes.append((entry.generation, total))
        return runtime

    def _load_generation(self, service_id: str, generation: str) -> GenerationRuntime:
        root = self.data_dir.generation_dir(service_id, generation)
        if not os.path.lexists(root):  # a hand-edited state.json, or a generation deleted by hand
            error = f"generation {generation} does not exist (state.json names it; see `lightnode admin generations {service_id}`)"
            log.error("service %s: %s", service_id, error)
            return GenerationRuntime(generation, None, load_error=error)
        try:
            definition = load_service_dir(root)
        except (ConfigError, OSError) as exc:
            log.error("service %s generation %s: %s", service_id, generation, exc)
            return GenerationRuntime(generation, None, load_error=str(exc))
        return GenerationRuntime(generation, definition)

    def _install(self, service_id: str) -> ServiceRuntime:
        runtime = self._read(service_id)
        if runtime.state.enabled:
            for gen in runtime.generations.values():
                self._start_pools(service_id, gen)
        self.services[service_id] = runtime
        return runtime

    def _start_pools(self, service_id: str, gen: GenerationRuntime) -> None:
        """Start a pool for each endpoint of `gen` that has none (all of them, the first time)."""
        if gen.definition is None:
            return
        for endpoint in gen.definition.endpoints:
            if endpoint.id in gen.pools:
                continue
            try:
                spec = self._worker_spec(service_id, gen, endpoint)
            except LightnodeError as exc:
                log.error("%s/%s: %s", service_id, endpoint.id, exc.message)
                gen.load_error = exc.message
                gen.endpoint_errors[endpoint.id] = exc.message
                continue
            if gen.endpoint_errors.pop(endpoint.id, None) is not None:
                log.info("%s/%s: starting, its code env is built now", service_id, endpoint.id)
            config = self.endpoint_config(service_id, endpoint.id)
            pool = EndpointPool(
                self.loop, spec, config, self.sink, worker_factory=self.worker_factory, start_gate=self.start_gate
            )
            gen.pools[endpoint.id] = pool
            if self.pool_made is not None:
                self.pool_made(pool)
            pool.start()
        if not gen.endpoint_errors:
            gen.load_error = None

    def code_envs_changed(self) -> None:
        """An env came into DATA_DIR/code-envs: endpoints that had none start now.

        An endpoint whose requirements env is not built gets no pool (503, naming
        `admin build-env`); the build, by that command or an import, needs no restart.
        Nor does a switch refused for want of it (its refusal names the same command):
        every refused switch is tried again, as after SIGHUP.
        """
        if self.draining:
            return
        for runtime in [*self.services.values(), *self._pending.values()]:
            if not runtime.state.enabled:
                continue
            for gen in runtime.generations.values():
                if gen.endpoint_errors:
                    self._start_pools(runtime.service_id, gen)
        refused = [service_id for service_id, runtime in self.services.items() if runtime.switch_error is not None]
        if refused:
            self.forget_refusals()
            for service_id in refused:
                log.info("service %s: a code env was built: the refused switch is tried again", service_id)
                self.service_changed(service_id)

    def _worker_spec(self, service_id: str, gen: GenerationRuntime, endpoint: EndpointDef) -> WorkerSpec:
        assert gen.definition is not None
        root = gen.definition.root
        return WorkerSpec(
            service_id=service_id,
            endpoint_id=endpoint.id,
            generation=gen.generation,
            root=root,
            code=endpoint.code,
            function=endpoint.function,
            folders=tuple(endpoint.folders),
            env=dict(endpoint.env),
            python=resolve_python(endpoint.code_env, root, self.data_dir, service_id, gen.generation),
            port=self.port,
            dev=self.dev,
        )

    # ----------------------------------------------------------------- tuning

    def endpoint_config(self, service_id: str, endpoint_id: str) -> EndpointConfig:
        key = (service_id, endpoint_id)
        if key not in self.tuning:
            path = self.data_dir.config_dir / "services" / service_id / f"{endpoint_id}.json"
            try:
                self.tuning[key] = load_endpoint_config(path)
            except ConfigError as exc:
                self.tuning_errors[key] = str(exc)
                log.error("tuning refused, defaults in force: %s", exc)
                self.tuning[key] = EndpointConfig()
        return self.tuning[key]

    def apply_tuning(self, service_id: str, endpoint_id: str, config: EndpointConfig) -> None:
        self.tuning[(service_id, endpoint_id)] = config
        self.tuning_errors.pop((service_id, endpoint_id), None)
        for pool in self.pools_of(service_id, endpoint_id):
            pool.apply_config(config)
        log.info("%s/%s: tuning applied from %s: %s", service_id, endpoint_id, config.source, config.pool)

    def tuning_refused(self, service_id: str, endpoint_id: str, error: ConfigError) -> None:
        key = (service_id, endpoint_id)
        self.tuning_errors[key] = str(error)
        if key in self.tuning:
            log.error("tuning refused, last good values stay in force: %s", error)
            return
        # No good values yet (refused at start, or since the file appeared): the defaults
        # are in force, and a pool started later takes them without reading the file again.
        self.tuning[key] = EndpointConfig()
        log.error("tuning refused, defaults in force: %s", error)

    def pools_of(self, service_id: str, endpoint_id: str) -> list[EndpointPool]:
        pools: list[EndpointPool] = []
        for runtime in (self.services.get(service_id), self._pending.get(service_id)):
            if runtime is None:
                continue
            for gen in runtime.generations.values():
                pool = gen.pools.get(endpoint_id)
                if pool is not None and pool not in pools:
                    pools.append(pool)
        return pools

    # ---------------------------------------------------------------- routing

    def resolve(self, service_id: str, endpoint_id: str) -> EndpointPool:
        """The pool that serves the next request, or raise the SPEC §3.4 error."""
        runtime = self.services.get(service_id)
        if runtime is None:
            if holds_api_key(service_id):
                raise LightnodeError("NotFound", _KEY_AS_ID.format(what="service"))
            raise LightnodeError("NotFound", f"Service {service_id} does not exist")
        if not runtime.state.enabled or not runtime.routes:
            if runtime.error:
                # /run is public: the error (a path, a parse error) goes to the log and admin status only.
                raise LightnodeError(
                    "ServiceNotActive",
                    f"Service {service_id} is not active: its state.json is refused"
                    " (the node's log and admin status say why)",
                )
            raise LightnodeError("ServiceNotActive", f"Service {service_id} is not active")
        generation = runtime.routes[0][0]
        if len(runtime.routes) > 1:
            draw = random.random()
            generation = next((g for g, cum in runtime.routes if draw < cum), runtime.routes[-1][0])
        gen = runtime.generations[generation]
        pool = gen.pools.get(endpoint_id)
        if pool is None:
            if gen.definition is not None and gen.definition.endpoint(endpoint_id) is None:
                if holds_api_key(endpoint_id):
                    raise LightnodeError("NotFound", _KEY_AS_ID.format(what="endpoint"))
                raise LightnodeError("NotFound", f"Endpoint does not exist: {endpoint_id}")
            reason = gen.endpoint_errors.get(endpoint_id) or gen.load_error or "not loaded"
            raise LightnodeError("EndpointUnavailable", f"Endpoint {endpoint_id} cannot be loaded: {reason}")
        return pool

    def is_public(self, service_id: str) -> bool:
        runtime = self.services.get(service_id)
        return runtime is None or runtime.public

    # --------------------------------------------------------- live changes

    def forget_refusals(self) -> None:
        """SIGHUP: a refused switch is tried again when its service is read next, even
        one refused by a warm-up still running now (its re-read waits behind it)."""
        self._refusal_epoch += 1

    def service_changed(self, service_id: str) -> asyncio.Future[str | None] | None:
        """state.json or the generations of a service changed on disk: apply it live.

        Returns a future done once new requests follow the new state (after
        the warm-up of a switch, before the old pools finish draining), or
        None while the node drains. Changes of one service apply in order.
        Its result is None, or why the new state was not applied (a switch to a
        generation that failed to load, away from one that serves).
        """
        if self.draining:
            return None
        previous = self._reloads.get(service_id)
        applied: asyncio.Future[str | None] = self.loop.create_future()
        task = self.loop.create_task(self._reload(service_id, previous, applied))
        self._reloads[service_id] = task
        task.add_done_callback(self._reload_done)
        return applied

    def _reload_done(self, task: asyncio.Task[None]) -> None:
        """Forget a finished reload unless a later change of its service chained behind it:
        a node that sees many services come and go must not keep a task for each."""
        for service_id, last in list(self._reloads.items()):
            if last is task:
                del self._reloads[service_id]

    async def _reload(
        self, service_id: str, previous: asyncio.Task[None] | None, applied: asyncio.Future[str | None]
    ) -> None:
        try:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            await self._apply_service(service_id, applied)
        except Exception:  # boundary: a failed reload must not end the chain of reloads
            log.exception("service %s: applying the change failed; the previous state stays", service_id)
        finally:
            if not applied.done():
                applied.set_result(None)

    async def _apply_service(self, service_id: str, applied: asyncio.Future[str | None]) -> None:
        """The zero-downtime switch (SPEC §6): warm the new pools to floor, flip, drain the old."""
        if self.draining:
            return
        old = self.services.get(service_id)
        exists = (self.data_dir.services_dir / service_id).is_dir()
        if not exists:
            self.services.pop(service_id, None)
            # Its tuning is read again from config/ if the service comes back.
            for key in [k for k in self.tuning if k[0] == service_id]:
                del self.tuning[key]
                self.tuning_errors.pop(key, None)
            applied.set_result(None)
            if old is not None:
                self._retire(old, keep=set())
            log.info("service %s removed", service_id)
            return
        new = self._read(service_id)
        if old is not None and _nothing_new(old, new, applied):
            return
        if old is not None and old.state.enabled:  # reuse pools of generations that stay mapped
            for name in list(new.generations):
                kept = old.generations.get(name)
                if kept is not None and kept.pools:
                    new.generations[name] = kept
        if new.state.enabled:
            self._pending[service_id] = new
            try:
                for gen in new.generations.values():
                    self._start_pools(service_id, gen)
                warm = await self._warm(new)
            finally:
                self._pending.pop(service_id, None)
            if self.draining:
                return  # shutdown began meanwhile: drain_all() stops these pools too
            failure = self._refusal(old, new, warm)
            if failure is not None and old is not None:
                # Zero downtime (SPEC §6): traffic never moves to pools that cannot serve.
                old.switch_error = failure
                old.refused_mark = new.read_mark
                applied.set_result(failure)
                log.error("service %s: %s", service_id, failure)
                self._retire(new, keep={id(g) for g in old.generations.values()})
                return
        self.services[service_id] = new  # new requests now go to the new mapping
        applied.set_result(None)
        log.info("service %s: now serving %s (enabled=%s)", service_id, new.state.entries, new.state.enabled)
        if old is not None:
            keep = {id(g) for g in new.generations.values()} if new.state.enabled else set()
            self._retire(old, keep=keep)

    def _refusal(self, old: ServiceRuntime | None, new: ServiceRuntime, warm: bool) -> str | None:
        """Why `new`, warmed up (or not, past the warm-up time), must not take `old`'s traffic."""
        if self.dev:  # a dev server serves the code as it is now, broken or not (SPEC §7.1)
            return None
        return _switch_failure(old, new) or (None if warm else _not_ready(old, new, self.switch_warmup_s))

    async def _warm(self, runtime: ServiceRuntime) -> bool:
        """Wait until every pool of `runtime` reached its floor or failed to load: True,
        or False once `switch_warmup_s` has passed (or the node began to drain)."""
        deadline = self.loop.time() + self.switch_warmup_s
        while self.loop.time() < deadline and not self.draining:
            if all(_settled(p) for g in runtime.generations.values() for p in g.pools.values()):
                return True
            await asyncio.sleep(0.02)
        if not self.draining:
            log.warning("service %s: new generation not warm after %g s", runtime.service_id, self.switch_warmup_s)
        return False

    def _retire(self, runtime: ServiceRuntime, keep: set[int]) -> None:
        """Drain the pools of `runtime`'s generations not in `keep`, in the background.

        The next change of the service does not wait for it: a call that never ends in
        an old generation (with no exec_timeout) would otherwise hold back every later
        switch of the service. The pools stay in `_retired` until drained, so that
        `all_pools()` (metrics, shutdown) still sees them.
        """
        pools = [p for g in runtime.generations.values() if id(g) not in keep for p in g.pools.values()]
        if not pools:
            return
        for pool in pools:
            self._retired.add(pool)
        task = self.loop.create_task(self._drain_retired(pools))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain_retired(self, pools: list[EndpointPool]) -> None:
        try:
            await asyncio.gather(*(p.drain() for p in pools))
        finally:
            for pool in pools:
                self._retired.discard(pool)

    # --------------------------------------------------------------- health

    def all_pools(self) -> list[EndpointPool]:
        runtimes = [*self.services.values(), *self._pending.values()]
        pools = list({id(p): p for s in runtimes for g in s.generations.values() for p in g.pools.values()}.values())
        return pools + [p for p in self._retired if p not in pools]

    def _enabled_pools(self) -> list[EndpointPool]:
        """The pools of enabled services: a service disabled before the node was first
        ready keeps its drained pools (serving none) until it is enabled again."""
        return [
            p for s in self.services.values() if s.state.enabled for g in s.generations.values() for p in g.pools.values()
        ]

    def ready(self) -> bool:
        """Every enabled endpoint has reached its floor or failed to load, once (SPEC §10:
        "200 once every enabled endpoint has reached its floor"). Draining is the app's."""
        if not self._became_ready:
            self._became_ready = all(_settled(p) for p in self._enabled_pools() if p not in self._retired)
        return self._became_ready

    async def drain_all(self) -> None:
        self.draining = True
        await asyncio.gather(*(p.drain() for p in self.all_pools()))

    def kill_all(self) -> None:
        for pool in self.all_pools():
            pool.kill_all()


def _nothing_new(old: ServiceRuntime, new: ServiceRuntime, applied: asyncio.Future[str | None]) -> bool:
    """True when `new`, read again, brings nothing to apply (`applied` is answered then)."""
    if _nothing_to_switch(old, new):
        return True  # answered None when the reload ends
    if old.switch_error is not None and new.read_mark == old.refused_mark:
        # The disk holds what was refused last, as it was: the admin API applies the
        # state.json it wrote, and the config watcher then reports that write. One try
        # per write (a warm-up may take warmup_timeout_ms, and the service's next change
        # waits behind it); SIGHUP (forget_refusals) or a new write tries again.
        applied.set_result(old.switch_error)
        return True
    return False


def _nothing_to_switch(old: ServiceRuntime, new: ServiceRuntime) -> bool:
    """True when `old` stays as it is; first brings its errors up to date with the new read."""
    service_id = old.service_id
    if new.state_refused and not old.state_refused:
        # An unreadable state.json (e.g. an editor's non-atomic write) never
        # takes a service down: the last good state stays in force.
        old.error = new.error
        log.error("service %s: state.json refused, the last good state stays in force", service_id)
        return True
    if not old.state_refused:
        old.error = None  # state.json parses again: its last read error is over
    if new.state == old.state and new.error == old.error:
        if old.switch_error is not None:  # state.json names what serves: the refused switch is moot
            log.info("service %s: state.json names the state in force again", service_id)
            old.switch_error = None
        return True
    return False


def _failed(pool: EndpointPool) -> bool:
    return pool.snapshot().load_state == "failed"


def _switch_failure(old: ServiceRuntime | None, new: ServiceRuntime) -> str | None:
    """Why `new` must not take the traffic of `old`, or None.

    When a generation `new` adds cannot load (its service.json or an endpoint's code)
    while `old` serves, `old` keeps the traffic: the switch is not applied, and
    state.json names a mapping this node does not serve until the next change of
    the service (or SIGHUP, which tries again). Nothing serving means nothing to
    keep: a first deploy, a disabled or failing old state go ahead.
    """
    if not _serves(old):
        return None
    assert old is not None
    for name, gen in _added(old, new):
        problem = gen.load_error or next(
            (p.last_load_error or "no pipeline started" for p in gen.pools.values() if _failed(p)), None
        )
        if problem is not None:
            return f"switch not applied: generation {name} failed to load ({problem}); {_in_service(old)}"
    return None


def _not_ready(old: ServiceRuntime | None, new: ServiceRuntime, waited_s: float) -> str | None:
    """After a warm-up that timed out: why `new` must not take `old`'s traffic, or None.

    An endpoint of an added generation with no pipeline ready (an initialization
    still running: a slow model load, a hang) would only queue its requests into
    QueueTimeouts, so the switch is refused while `old` serves. One ready
    pipeline is enough to go ahead: the rest join as they finish.
    """
    if not _serves(old):
        return None
    assert old is not None
    for name, gen in _added(old, new):
        for endpoint_id, pool in sorted(gen.pools.items()):
            snap = pool.snapshot()
            if snap.load_state != "failed" and snap.config.pool.floor > 0 and _serving(snap) == 0:
                why = "no pipeline has finished initializing"
                waiting = pool.waiting_for_start_slot
                if waiting:  # the node boots a few pipelines at once (start_gate.py)
                    why += f", {waiting} still waiting for a start slot behind other pipelines' starts"
                return (
                    f"switch not applied: generation {name} not ready after {waited_s:g} s"
                    f" (endpoint {endpoint_id}: {why}; see"
                    f" server.json switch.warmup_timeout_ms); {_in_service(old)}"
                )
    return None


def _serves(old: ServiceRuntime | None) -> bool:
    """`old` serves, so a switch away from it must not lose its traffic."""
    # Not `old.error`: a refused read of state.json leaves `old` serving its last good state.
    if old is None or not old.state.enabled or old.state_refused:
        return False
    return not any(g.load_error or any(_failed(p) for p in g.pools.values()) for g in old.generations.values())


def _added(old: ServiceRuntime, new: ServiceRuntime) -> list[tuple[str, GenerationRuntime]]:
    """The generations of `new` that `old` does not already run."""
    kept = {id(g) for g in old.generations.values()}
    return [(name, gen) for name, gen in new.generations.items() if id(gen) not in kept]


def _in_service(old: ServiceRuntime) -> str:
    return f"{', '.join(sorted(old.generations)) or 'the previous state'} stays in service"


def _settled(pool: EndpointPool) -> bool:
    snap = pool.snapshot()
    if snap.load_state == "failed":
        return True
    return _serving(snap) >= snap.config.pool.floor


def _serving(snap: PoolSnapshot) -> int:
    """Pipelines of a pool that are ready: idle or busy."""
    return snap.pipelines.get("idle", 0) + snap.pipelines.get("busy", 0)
