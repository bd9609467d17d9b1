"""The admin HTTP API under /admin/api/ (SPEC §6, §9, §10).

Paths and answers follow `dataikuapi.APINodeAdminClient` (dataiku-api-client
15.2.0): services, generations, importFromArchive, switchToNewest,
switchTo/<G>, setMapping, enable, disable, keys, metrics; plus the endpoint
tuning route of SPEC §5, the status/stats routes of SPEC §10, and
`services/<S>/actions/buildEnv` (body `{"generation": G}`, the newest without it),
which `lightnode admin build-env --url` uses (SPEC §8: every admin command by URL).

Every operation is carried out by `admin.service_layer.ServiceLayer` (the one
layer the `lightnode admin` commands use too). Mutations run on a single admin
thread (so a large import never blocks serving, and admin writes never
interleave), then the registry is asked to apply the change at once: the
answer comes when new requests follow the new state (for a switch, after the
new generation's pools reached floor). The watcher would apply the same files
within a second anyway; applying twice is a no-op.

Access: an admin key (HTTP Basic user name or Bearer), or loopback while no
admin key exists (SPEC §9). Every mutation is logged on `lightnode.audit`
with the key's id, never the key.
Imports: http.exchange, http.routing, errors, admin.*, and the node's registry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import ujson

from lightnode.admin.keys import KeyEntry, KeyStore, is_loopback, looks_like_key, mask_secrets
from lightnode.admin.service_layer import ServiceLayer
from lightnode.config.model import EndpointConfig, is_valid_id
from lightnode.config.validate import decode_json
from lightnode.errors import ConfigError, IdError, LightnodeError
from lightnode.http.exchange import Exchange
from lightnode.http.routing import Route
from lightnode.observe.logsetup import one_line
from lightnode.pool.snapshot import PoolSnapshot
from lightnode.scheduler.registry import Registry
from lightnode.scheduler.scheduler import EndpointPool
from lightnode.services.package import PackageNotWritten

if TYPE_CHECKING:  # pragma: no cover
    from lightnode.daemon import Node
    from lightnode.http.app import NodeApp

audit = logging.getLogger("lightnode.audit")
log = logging.getLogger("lightnode.admin")

__all__ = ["AdminRoutes", "is_loopback", "mask_secrets", "metrics_json", "pool_stats", "service_stats"]

Params = dict[str, str]
WHO = "_who"  # in Params: who is calling, for the audit log
PATH = "_path"  # in Params: the decoded path after /admin/api/, as routed
Handler = Callable[[Exchange, Params], None]


def snapshot_counters(snap: PoolSnapshot) -> dict[str, Any]:
    """A pool's counters as the admin API names them."""
    return {
        "served": snap.served_total,
        "prefetched": snap.prefetched_total,
        "starts": snap.starts_total,
        "startFailures": snap.start_failures_total,
        "crashes": snap.crashes_total,
        "retirements": snap.retirements_total,
        "rejections": dict(snap.rejections_total),
    }


def pool_stats(pool: EndpointPool, registry: Registry) -> dict[str, Any]:
    """One endpoint pool's live state, for `admin status` and /stats (SPEC §10)."""
    snap = pool.snapshot()
    spec = pool.spec
    config = snap.config
    started_ago = None
    if pool.last_start_at is not None:
        started_ago = round(time.monotonic() - pool.last_start_at, 3)
    return {
        "endpointId": spec.endpoint_id,
        "generation": spec.generation,
        "loadState": snap.load_state,
        "pipelinesByState": dict(snap.pipelines),
        "pipelines": pool.pipelines(),
        "allocated": snap.allocated,
        "queueLength": snap.queue_length,
        "stagedRequests": snap.staged,
        "oldestWaitMs": round(snap.oldest_wait_s * 1000, 1),
        "lastStart": {
            "secondsAgo": started_ago,
            "durationMs": None if pool.last_start_s is None else round(pool.last_start_s * 1000, 1),
        },
        "lastLoadError": snap.last_load_error,
        "lastLoadTraceback": pool.last_load_traceback,
        "meanRunTimeMs": None if snap.mean_run_time_s is None else round(snap.mean_run_time_s * 1000, 3),
        "counters": snapshot_counters(snap),
        "config": {"pool": asdict(config.pool), "limits": asdict(config.limits)},
        "configSource": config.source,
        "lastConfigError": registry.tuning_errors.get((spec.service_id, spec.endpoint_id)),
        "draining": pool.drained or snap.load_state == "draining",
    }


def service_stats(registry: Registry, service_id: str) -> dict[str, Any]:
    runtime = registry.services.get(service_id)
    if runtime is None:
        raise LightnodeError("NotFound", f"Service {service_id} does not exist")
    endpoints = [
        pool_stats(pool, registry)
        for gen in runtime.generations.values()
        for pool in gen.pools.values()
    ]
    return {
        "serviceId": service_id,
        "enabled": runtime.state.enabled,
        "mapping": [{"generation": e.generation, "proba": e.proba} for e in runtime.state.entries],
        "error": runtime.error,
        "switchError": runtime.switch_error,
        "generationErrors": {
            name: gen.load_error for name, gen in runtime.generations.items() if gen.load_error
        },
        "endpoints": endpoints,
    }


def metrics_json(node: Node) -> dict[str, Any]:
    """GET /admin/api/metrics: node-wide and per-pool counters, as JSON."""
    assert node.registry is not None
    registry = node.registry
    endpoints = []
    for service_id, runtime in sorted(registry.services.items()):
        for gen in runtime.generations.values():
            for pool in gen.pools.values():
                snap = pool.snapshot()
                endpoints.append({
                    "serviceId": service_id,
                    "endpointId": pool.spec.endpoint_id,
                    "generation": gen.generation,
                    "loadState": snap.load_state,
                    "pipelines": dict(snap.pipelines),
                    "queueLength": snap.queue_length,
                    "stagedRequests": snap.staged,
                    **snapshot_counters(snap),
                })
    return {
        "ready": registry.ready(),
        "draining": registry.draining,
        "configErrorsTotal": node.config_errors_total,
        "services": len(registry.services),
        "endpoints": endpoints,
    }


def _error_for(exc: BaseException) -> LightnodeError:
    """The admin API answer for an operation's exception."""
    if isinstance(exc, LightnodeError):
        return exc
    if isinstance(exc, IdError):
        return LightnodeError("NotFound", str(exc))
    if isinstance(exc, PackageNotWritten):  # the node's disk, not the archive: a 5xx
        return LightnodeError("InternalError", str(exc))
    if isinstance(exc, ConfigError):
        return LightnodeError("BadRequest", str(exc))
    if isinstance(exc, OSError):
        return LightnodeError("InternalError", f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    log.error("admin operation failed", exc_info=exc)
    return LightnodeError("InternalError", f"{type(exc).__name__}: {exc}")


def _outcome(fut: asyncio.Future[Any]) -> tuple[Any, LightnodeError | None]:
    """An admin operation run off the loop: (its result, None), or (None, the answer's
    error): ShuttingDown when the node cancelled it, else its exception mapped and masked."""
    if fut.cancelled():
        return None, LightnodeError("ShuttingDown", "The node is shutting down")
    exc = fut.exception()
    if exc is not None:
        return None, _masked(_error_for(exc))
    return fut.result(), None


def _masked(error: LightnodeError) -> LightnodeError:
    """`error` with any key its messages quote masked (SPEC §9: never echoed, never logged)."""
    message, detailed = mask_secrets(error.message), mask_secrets(error.detailed_message)
    if message == error.message and detailed == error.detailed_message:
        return error
    return LightnodeError(error.error_type, message, detailed, status=error.status, headers=error.headers)


def _json_body(exchange: Exchange) -> Any:
    if not exchange.body.strip():
        return None
    try:
        return ujson.loads(exchange.body)
    except ValueError:
        raise LightnodeError("BadRequest", "The request body is not valid JSON") from None


def _settings_body(exchange: Exchange) -> Any:
    """A settings POST's body, decoded as a tuning file is, so that a duplicate key is
    refused here as it is there (ujson would keep the last value without a word)."""
    if not exchange.body.strip():
        return None
    try:
        return decode_json(exchange.body, source="the request body")
    except ConfigError as exc:
        raise LightnodeError("BadRequest", f"The request body is not valid JSON: {'; '.join(exc.problems)}") from None


def _object_body(exchange: Exchange) -> dict[str, Any]:
    body = _json_body(exchange)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise LightnodeError("BadRequest", "The request body must be a JSON object")
    return body


def _public_path(rest: str) -> str:
    """The path for the audit log and messages: every segment that looks like a key is `<key>`.

    `rest` is the routed path; what is still percent-encoded in it (an encoded slash
    that routing kept inside its segment, `keys%2F<key>`) is decoded before the split,
    and a segment is masked whatever its encoding (SPEC §9: secrets are never logged).
    """
    decoded = unquote(rest)
    parts = [p for p in decoded.split("/") if p]
    return "/".join("<key>" if looks_like_key(p) else p for p in parts)


class AdminRoutes:
    """Dispatches /admin/api/... requests to the service layer."""

    def __init__(self, node: Node, keys: KeyStore | None = None) -> None:
        self.node = node
        self.keys = keys if keys is not None else KeyStore(node.data_dir.keys_path).load()
        self.layer = ServiceLayer(
            node.data_dir,
            max_package_bytes=node.settings.limits.max_package_bytes,
            keys=self.keys,
            mounted=self._mounted,
            tuning_in_force=self._tuning_in_force,
        )
        # One thread: imports and deletes never block the loop, and admin
        # writes (read-modify-write of state.json) never interleave.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lightnode-admin")
        # Reads of every service's files (GET services): neither on the loop, where a
        # node of hundreds of services, or a slow disk, would hold every /run for as
        # long, nor behind a write on the admin thread (an import builds code envs for
        # minutes).
        self._read_executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="lightnode-admin-read"
        )
        self._routes: list[tuple[str, tuple[str, ...], Handler]] = [
            ("GET", ("services",), self._list_services),
            ("POST", ("services",), self._create_service),
            ("GET", ("services", "{S}"), self._get_service),
            ("DELETE", ("services", "{S}"), self._delete_service),
            ("GET", ("services", "{S}", "stats"), self._stats),
            ("GET", ("services", "{S}", "generations"), self._generations),
            ("POST", ("services", "{S}", "generations", "actions", "importFromArchive"), self._import),
            ("POST", ("services", "{S}", "generations", "{G}", "preload"), self._preload),
            ("POST", ("services", "{S}", "actions", "switchToNewest"), self._switch_newest),
            ("POST", ("services", "{S}", "actions", "switchTo", "{G}"), self._switch_to),
            ("POST", ("services", "{S}", "actions", "setMapping"), self._set_mapping),
            ("POST", ("services", "{S}", "actions", "enable"), self._enable),
            ("POST", ("services", "{S}", "actions", "buildEnv"), self._build_env),
            ("POST", ("services", "{S}", "actions", "disable"), self._disable),
            ("GET", ("services", "{S}", "endpoints", "{E}", "settings"), self._get_settings),
            ("POST", ("services", "{S}", "endpoints", "{E}", "settings"), self._set_settings),
            ("POST", ("services", "{S}", "endpoints", "{E}", "tune"), self._tune),
            ("GET", ("status",), self._status),
            ("GET", ("metrics",), self._metrics),
            ("GET", ("keys",), self._list_keys),
            ("POST", ("keys",), self._create_key),
            ("DELETE", ("keys", "{K}", "key"), self._delete_key_by_id),
            ("DELETE", ("keys", "{K}"), self._delete_key),
        ]

    def install(self, app: NodeApp) -> None:
        app.admin = self.handle

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._read_executor.shutdown(wait=False, cancel_futures=True)

    @property
    def registry(self) -> Registry:
        assert self.node.registry is not None
        return self.node.registry

    # ------------------------------------------------------------ dispatch

    def handle(self, exchange: Exchange, route: Route) -> None:
        who = self.keys.check_admin_request(exchange.header(b"authorization"), exchange.client)
        parts = [p for p in route.rest.split("/") if p]
        method = exchange.method.decode("latin-1")
        allowed: list[str] = []
        for route_method, pattern, handler in self._routes:
            params = _match(pattern, parts)
            if params is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            params[WHO] = _who(who)
            params[PATH] = route.rest
            handler(exchange, params)
            return
        if allowed:
            raise LightnodeError(
                "MethodNotAllowed", f"Method {method} is not allowed here",
                headers=(("Allow", ", ".join(sorted(set(allowed)))),),
            )
        raise LightnodeError("NotFound", f"Not found: /admin/api/{_public_path(route.rest)}")

    def _mounted(self, service_id: str) -> set[str] | None:
        runtime = self.registry.services.get(service_id) if self.node.registry else None
        if runtime is None:
            return set()
        return {name for name, gen in runtime.generations.items() if gen.pools}

    def _mutate(
        self,
        exchange: Exchange,
        p: Params,
        operation: Callable[[], Any],
        *,
        service_id: str | None = None,
        switch: bool = False,
    ) -> None:
        """Run `operation` on the admin thread, apply it to the registry, then answer.

        With `switch` (an operation that sets the mapping), a mapping the registry does
        not apply (a generation that fails to load) is answered as an error.
        """
        who = p[WHO]
        # A path segment or a refusal message holding a newline (both decoded from the
        # request: an id in the path, a key of a tuning object) would otherwise write a
        # line of the caller's choosing into the audit log. The answer keeps the text.
        what = one_line(f"{exchange.method.decode('latin-1')} {_public_path(p[PATH])}")
        future = self.node.loop.run_in_executor(self._executor, operation)

        def answer(result: Any) -> None:
            audit.info("admin %s by %s from %s: done", what, who, exchange.client)
            exchange.respond_json(200, result)

        def done(fut: asyncio.Future[Any]) -> None:
            result, error = _outcome(fut)
            if error is not None:
                if not fut.cancelled():
                    audit.info(
                        "admin %s by %s from %s: refused: %s", what, who, exchange.client, one_line(error.message)
                    )
                exchange.respond_error(error)
                return
            applied = self.registry.service_changed(service_id) if service_id else None
            if applied is None:
                answer(result)
            else:
                applied.add_done_callback(lambda outcome: settled(outcome, result))

        def settled(outcome: asyncio.Future[str | None], result: Any) -> None:
            failure = None if outcome.cancelled() else outcome.result()
            if failure is None or not switch:
                answer(result)
                return
            audit.info("admin %s by %s from %s: not applied: %s", what, who, exchange.client, one_line(failure))
            exchange.respond_error(LightnodeError("EndpointUnavailable", failure))

        future.add_done_callback(done)

    def _answer(self, exchange: Exchange, operation: Callable[[], Any]) -> None:
        """A read: run it now and answer."""
        try:
            result = operation()
        except Exception as exc:  # mapped to the admin API's errors
            raise _error_for(exc) from None
        exchange.respond_json(200, result)

    def _answer_off_loop(self, exchange: Exchange, operation: Callable[[], Any]) -> None:
        """A read of many files: run it on the read thread, answer when it is done."""
        future = self.node.loop.run_in_executor(self._read_executor, operation)

        def done(fut: asyncio.Future[Any]) -> None:
            result, error = _outcome(fut)
            if error is not None:
                exchange.respond_error(error)
            else:
                exchange.respond_json(200, result)

        future.add_done_callback(done)

    # ------------------------------------------------------------ services

    def _list_services(self, exchange: Exchange, p: Params) -> None:
        self._answer_off_loop(exchange, self.layer.services)

    def _get_service(self, exchange: Exchange, p: Params) -> None:
        self._answer(exchange, lambda: self.layer.service(p["S"]))

    def _create_service(self, exchange: Exchange, p: Params) -> None:
        service_id = _object_body(exchange).get("serviceId")
        if not isinstance(service_id, str) or not is_valid_id(service_id):
            raise LightnodeError("BadRequest", f"serviceId: invalid service id {service_id!r}")
        self._mutate(exchange, p, lambda: self.layer.create_service(service_id), service_id=service_id)

    def _delete_service(self, exchange: Exchange, p: Params) -> None:
        self._mutate(exchange, p, lambda: self.layer.delete_service(p["S"]), service_id=p["S"])

    def _stats(self, exchange: Exchange, p: Params) -> None:
        exchange.respond_json(200, service_stats(self.registry, p["S"]))

    def _generations(self, exchange: Exchange, p: Params) -> None:
        self._answer(exchange, lambda: self.layer.generations(p["S"]))

    def _import(self, exchange: Exchange, p: Params) -> None:
        query = parse_qs(exchange.query.decode("utf-8", "replace"))
        paths = query.get("filePath") or []
        if len(paths) != 1 or not paths[0]:
            raise LightnodeError("BadRequest", "filePath: one absolute path of a package on the node is required")
        self._mutate(exchange, p, lambda: self.layer.import_archive(p["S"], paths[0]), service_id=p["S"])

    def _preload(self, exchange: Exchange, p: Params) -> None:
        self._answer(exchange, lambda: self.layer.preload(p["S"], p["G"]))

    def _switch_newest(self, exchange: Exchange, p: Params) -> None:
        self._mutate(exchange, p, lambda: self.layer.switch_to_newest(p["S"]), service_id=p["S"], switch=True)

    def _switch_to(self, exchange: Exchange, p: Params) -> None:
        self._mutate(exchange, p, lambda: self.layer.switch_to(p["S"], p["G"]), service_id=p["S"], switch=True)

    def _set_mapping(self, exchange: Exchange, p: Params) -> None:
        mapping = _json_body(exchange)
        self._mutate(exchange, p, lambda: self.layer.set_mapping(p["S"], mapping), service_id=p["S"], switch=True)

    def _build_env(self, exchange: Exchange, p: Params) -> None:
        generation = _object_body(exchange).get("generation")
        if generation is not None and not isinstance(generation, str):
            raise LightnodeError("BadRequest", f"generation: must be a generation id (got {generation!r})")
        # On the admin thread (pip may take minutes); the watcher then sees the new env
        # in code-envs/ and starts the endpoints that were waiting for it.
        self._mutate(exchange, p, lambda: self.layer.build_envs(p["S"], generation))

    def _enable(self, exchange: Exchange, p: Params) -> None:
        self._mutate(exchange, p, lambda: self.layer.enable(p["S"]), service_id=p["S"], switch=True)

    def _disable(self, exchange: Exchange, p: Params) -> None:
        self._mutate(exchange, p, lambda: self.layer.disable(p["S"]), service_id=p["S"])

    def _get_settings(self, exchange: Exchange, p: Params) -> None:
        self._answer(exchange, lambda: self.layer.endpoint_settings(p["S"], p["E"]))

    def _set_settings(self, exchange: Exchange, p: Params) -> None:
        body = _settings_body(exchange)
        self._mutate(exchange, p, lambda: self.layer.set_endpoint_settings(p["S"], p["E"], body))

    def _tune(self, exchange: Exchange, p: Params) -> None:
        """`admin tune --url`: the overlay is made here, under the tuning file's lock, as the
        command line's is: a GET then a POST of the whole object by each client lost the
        change of another client between them."""
        body = _settings_body(exchange)
        if not isinstance(body, dict):
            raise LightnodeError("BadRequest", 'The body must be a JSON object of changes, e.g. {"pool": {"ceil": 4}}')
        self._mutate(exchange, p, lambda: self.layer.tune(p["S"], p["E"], body))

    def _tuning_in_force(self, service_id: str, endpoint_id: str) -> EndpointConfig | None:
        """What a tune builds on when the tuning file is refused: the node's values in force."""
        registry = self.node.registry
        return registry.tuning.get((service_id, endpoint_id)) if registry is not None else None

    # ---------------------------------------------------------- node state

    def _status(self, exchange: Exchange, p: Params) -> None:
        registry = self.registry
        exchange.respond_json(
            200,
            {
                "dataDir": str(self.node.data_dir.root),
                "ready": registry.ready(),
                "draining": registry.draining,
                "configErrorsTotal": self.node.config_errors_total,
                "services": [service_stats(registry, sid) for sid in sorted(registry.services)],
            },
        )

    def _metrics(self, exchange: Exchange, p: Params) -> None:
        exchange.respond_json(200, metrics_json(self.node))

    # ----------------------------------------------------------------- keys

    def _list_keys(self, exchange: Exchange, p: Params) -> None:
        exchange.respond_json(200, [e.to_public_json() for e in self.keys.entries()])

    def _create_key(self, exchange: Exchange, p: Params) -> None:
        """POST keys: without serviceId the key is an admin key (what dataikuapi's add_key asks).

        So that a typo (`service` for `serviceId`) or `"admin": false` never yields an admin
        key handed out as a service key, unknown fields are refused and `admin`, when
        given, must agree with serviceId.
        """
        body = _object_body(exchange)
        unknown = sorted(k for k in body if k not in _KEY_FIELDS)
        if unknown:
            raise LightnodeError(
                "BadRequest", f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(_KEY_FIELDS)}"
            )
        service_id = body.get("serviceId")
        if service_id is not None and not is_valid_id(service_id):
            raise LightnodeError("BadRequest", f"serviceId: invalid service id {service_id!r}")
        admin = body.get("admin")
        if admin is not None and not isinstance(admin, bool):
            raise LightnodeError("BadRequest", "admin: must be true or false")
        if admin is not None and admin != (service_id is None):
            raise LightnodeError(
                "BadRequest", "a key is either an admin key (no serviceId) or for one service (serviceId)"
            )
        strings = {}
        for field in ("label", "description", "createdBy"):
            value = body.get(field)
            if value is not None and not isinstance(value, str):
                raise LightnodeError("BadRequest", f"{field}: must be a string")
            strings[field] = value
        self._mutate(exchange, p, lambda: self.layer.create_key(
            service_id=service_id, label=strings["label"], description=strings["description"],
            created_by=strings["createdBy"], expiry=body.get("expiry"),
        ))

    def _delete_key_by_id(self, exchange: Exchange, p: Params) -> None:
        self._mutate(exchange, p, lambda: self.layer.delete_key_by_id(p["K"]))

    def _delete_key(self, exchange: Exchange, p: Params) -> None:
        self._mutate(exchange, p, lambda: self.layer.delete_key(p["K"]))


# The fields of POST keys: dataikuapi's add_key sends the first four.
_KEY_FIELDS = ("label", "description", "createdBy", "expiry", "serviceId", "admin")


def _who(entry: KeyEntry | None) -> str:
    return "loopback (no admin key defined)" if entry is None else f"admin key {entry.id}"


def _match(pattern: tuple[str, ...], parts: list[str]) -> Params | None:
    """Placeholders: {S} service, {G} generation, {E} endpoint (SPEC §2 ids, else 404), {K} any."""
    if len(pattern) != len(parts):
        return None
    params: Params = {}
    for want, got in zip(pattern, parts, strict=True):
        if want.startswith("{"):
            params[want[1:-1]] = got
        elif want != got:
            return None
    for name, what in (("S", "Service"), ("G", "Generation"), ("E", "Endpoint")):
        if name in params and not is_valid_id(params[name]):
            raise LightnodeError("NotFound", f"{what} {mask_secrets(params[name])} does not exist")
    return params
