"""The one layer of admin operations, shared by the `lightnode admin` commands and /admin/api/.

Each operation acts on the data directory's files (SPEC §2, §6, §9): importing
a package, writing state.json (atomically, through `DataDir.write_state`),
writing tuning files, keys. A running node applies file changes live through
its watcher; the admin routes also ask the registry to apply them at once and
answer when it has. Every operation returns the JSON-able answer of the admin
API, so `admin --data-dir` and `admin --url` print the same thing.

`RemoteAdmin` (admin.remote) offers the same methods over HTTP; the CLI
handlers are written against either.

Errors: LightnodeError (NotFound, BadRequest) for what the API answers as
such; ConfigError (PackageRefused) and IdError propagate for the caller to
render (the routes map them to 400 and 404).

Imports: services/, config/, errors, admin.keys. Never http/ or scheduler/.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from lightnode.admin.keys import KeyEntry, KeyStore, looks_like_key, normalize_expiry, parse_time
from lightnode.config.load import (
    endpoint_config_to_json,
    load_endpoint_config,
    load_server_settings,
    merge_tuning,
    parse_endpoint_config,
    write_endpoint_config,
    write_file_atomically,
)
from lightnode.config.model import EndpointConfig, check_id
from lightnode.errors import ConfigError, LightnodeError
from lightnode.services.codeenv import CodeEnvError, build_env_for_generation
from lightnode.services.model import load_service_dir
from lightnode.services.package import (
    ImportedPackage,
    PackageRefused,
    bury,
    import_done,
    import_given_up,
    import_package,
    import_pending,
    remove_stale_staging,
)
from lightnode.services.store import (
    STATE_FILE_MODE,
    DataDir,
    MappingEntry,
    ServiceState,
    flush_directory,
    parse_mapping,
)

MountedView = Callable[[str], "set[str] | None"]
# For (service, endpoint): the tuning a running node has in force, if known.
TuningView = Callable[[str, str], "EndpointConfig | None"]


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


class ServiceLayer:
    """Admin operations on one data directory.

    Args:
        data_dir: the node's data directory.
        max_package_bytes: `limits.max_package_bytes` for imports (default: server.json's,
            read when an import needs it, so that a refused server.json blocks imports
            only, never the commands that repair a node or revoke a key).
        keys: the key store to use (the running node passes its own, so that
            its in-memory keys change at once); default: one on config/keys.json.
        mounted: for a service id, the generations a running node has loaded
            (None: not known, then mapped generations of an enabled service count).
        tuning_in_force: for (service, endpoint), the tuning the running node has in
            force, if known: what `tune` builds on when the tuning file is refused.
        env_progress: where venv and pip output goes while an import builds code envs
            (the command line: stderr; the node: nowhere, a failure's message carries it).
    """

    def __init__(
        self,
        data_dir: DataDir,
        *,
        max_package_bytes: int | None = None,
        keys: KeyStore | None = None,
        mounted: MountedView | None = None,
        tuning_in_force: TuningView | None = None,
        env_progress: TextIO | None = None,
    ) -> None:
        self.data_dir = data_dir
        self._env_progress = env_progress
        self._max_package_bytes = max_package_bytes
        self.keys = keys if keys is not None else KeyStore(data_dir.keys_path)
        self._mounted = mounted
        self._tuning_in_force = tuning_in_force

    @property
    def max_package_bytes(self) -> int:
        """`limits.max_package_bytes`: the one node setting an admin operation needs.

        Raises:
            ConfigError: server.json is refused (its path and every problem).
        """
        if self._max_package_bytes is None:
            settings = load_server_settings(self.data_dir.server_config_path)
            self._max_package_bytes = settings.limits.max_package_bytes
        return self._max_package_bytes

    # ----------------------------------------------------------- services

    def _require_service(self, service_id: str) -> Path:
        path = self.data_dir.service_dir(service_id)  # IdError first
        if not path.is_dir():
            raise LightnodeError("NotFound", f"Service {service_id} does not exist")
        return path

    def _state(self, service_id: str) -> ServiceState:
        self._require_service(service_id)
        return self.data_dir.read_state(service_id)

    def _generation_ids(self, service_id: str) -> list[str]:
        """Generation ids, oldest import first."""
        return [info.id for info in self.data_dir.generations(service_id)]

    def service_info(self, service_id: str) -> dict[str, Any]:
        try:
            state = self._state(service_id)
            error = None
        except ConfigError as exc:
            state, error = ServiceState(enabled=False), str(exc)
        info = {
            "id": service_id,
            "enabled": state.enabled,
            "mapping": state.to_json()["mapping"],
            "generations": self._generation_ids(service_id),
        }
        if error:
            info["error"] = error
        return info

    def service(self, service_id: str) -> dict[str, Any]:
        """GET services/<S> (NotFound when absent)."""
        self._require_service(service_id)
        return self.service_info(service_id)

    def services(self) -> list[dict[str, Any]]:
        """GET services: `[{"id", "enabled", "mapping", "generations"}]`.

        Read off the event loop (admin routes), while the admin thread may delete a
        service: one deleted after the directory was listed is left out, not a 404.
        """
        listed = []
        for service_id in self.data_dir.service_ids():
            try:
                listed.append(self.service_info(service_id))
            except LightnodeError:
                if os.path.lexists(self.data_dir.service_dir(service_id)):
                    raise
        return listed

    def create_service(self, service_id: str) -> dict[str, Any]:
        """POST services/: an empty, disabled service (flushed to disk before the answer:
        a power cut right after it must not leave an empty state.json)."""
        path = self.data_dir.service_dir(service_id)
        if os.path.lexists(path):
            raise LightnodeError("BadRequest", f"Service {service_id} already exists")
        staging = self._staging(f"create-{service_id}")
        try:
            (staging / "generations").mkdir()
            state = _state_text(ServiceState(enabled=False)).encode("utf-8")
            write_file_atomically(staging / "state.json", state, mode=STATE_FILE_MODE)  # + fsync of staging
            os.rename(staging, path)
            flush_directory(self.data_dir.services_dir)
        except OSError:
            if os.path.lexists(path):
                raise LightnodeError("BadRequest", f"Service {service_id} already exists") from None
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.service_info(service_id)

    def delete_service(self, service_id: str) -> dict[str, Any]:
        """DELETE services/<S>: the service disappears at once (one rename), then its files go.

        Tuning files under config/ stay: they are the operator's configuration; so do
        the service's API keys (a re-import of the same service keeps its callers).
        The answer counts those keys (`keysKept`), as a later, unrelated service
        deployed under the same id would accept them. Graveyards that earlier deletes
        and imports killed half way left (a service of GBs takes a while to remove)
        go too.
        """
        path = self._require_service(service_id)
        # Flushed: deleted for good, even if a power cut follows.
        bury(path, self.data_dir.services_dir, service_id, flush=self.data_dir.services_dir)
        remove_stale_staging(self.data_dir.services_dir)
        try:
            self.keys.load()
            kept = sum(1 for entry in self.keys.entries() if entry.service_id == service_id)
        except ConfigError:  # an unreadable keys.json: the delete is done all the same
            kept = 0
        return {"deleted": service_id, "keysKept": kept}

    def _staging(self, what: str) -> Path:
        self.data_dir.services_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir.services_dir / f".{what}-{secrets.token_hex(4)}"
        path.mkdir()
        return path

    # -------------------------------------------------------- generations

    def generations(self, service_id: str) -> dict[str, Any]:
        """GET services/<S>/generations: `{"generations": [{"generationId", "createdOn", "mounted", "mapped"}]}`.

        A refused state.json does not hide the generations (a switch repairs it, and
        needs their ids): none counts as mapped, and `mappingError` says why.
        """
        self._require_service(service_id)
        try:
            state, mapping_error = self.data_dir.read_state(service_id), None
        except ConfigError as exc:
            state, mapping_error = ServiceState(enabled=False), str(exc)
        mapped = {e.generation for e in state.entries}
        mounted = self._mounted(service_id) if self._mounted is not None else None
        if mounted is None:
            mounted = mapped if state.enabled else set()
        infos = self.data_dir.generations(service_id)  # oldest import first
        answer: dict[str, Any] = {
            "generations": [
                {
                    "generationId": info.id,
                    "createdOn": int(info.created.timestamp() * 1000),
                    "created": _iso(info.created.timestamp()),
                    "imported": _iso(info.imported.timestamp()),
                    "mounted": info.id in mounted,
                    "mapped": info.id in mapped,
                }
                for info in infos
            ]
        }
        if mapping_error is not None:
            answer["mappingError"] = mapping_error
        return answer

    def import_archive(self, service_id: str, archive: Path | str) -> dict[str, Any]:
        """importFromArchive: unpack a package as a new generation and build its code envs
        (PackageRefused when refused, the env included: then nothing is left)."""
        check_id(service_id, "service id")
        path = Path(archive)
        if not path.is_absolute():
            raise LightnodeError("BadRequest", f"filePath must be an absolute path (got {str(archive)!r})")
        if path.is_dir():  # a source directory given where its package belongs
            raise LightnodeError(
                "BadRequest",
                f"{path} is a directory, not a package zip: make one with `lightnode package {path}`"
                " (or `lightnode deploy` it)",
            )
        if path.exists() and not path.is_file():
            raise LightnodeError("BadRequest", f"{path} is not a regular file: not a package zip")
        if not path.is_file():
            raise LightnodeError("BadRequest", f"No such archive: {path}")
        # Pending until its envs are built: an import killed meanwhile is replaced by the
        # next import of the same generation, and no switch goes to it.
        result: ImportedPackage = import_package(
            self.data_dir, service_id, path, max_bytes=self.max_package_bytes, pending=True
        )
        self._build_envs(result, str(path))
        import_done(result)
        return {
            "serviceId": result.service_id,
            "generation": result.generation,
            "createdService": result.created_service,
            "unpackedBytes": result.unpacked_bytes,
        }

    def _build_envs(self, imported: ImportedPackage, source: str) -> None:
        """Build the requirements code envs of a generation just imported (SPEC §7.2: import
        builds them), so that a switch to it serves at once.

        An env that cannot be built refuses the import whole: the generation (and the
        service, if this import created it) is removed again, and the same generation id
        imports once the requirements are fixed. The build runs with the generation in
        place, so that pip resolves relative paths of requirements.txt against it.

        Raises:
            PackageRefused: the env cannot be built (pip's reason), nothing is left.
        """
        try:
            build_env_for_generation(
                self.data_dir, imported.service_id, imported.generation, progress=self._env_progress
            )
        except (CodeEnvError, ConfigError) as exc:
            self._remove_generation(imported)
            raise PackageRefused(source, [
                f"code env of generation {imported.generation}: {exc}",
                "the generation was not imported",
            ]) from None
        except BaseException:
            self._remove_generation(imported)
            raise

    def _remove_generation(self, imported: ImportedPackage) -> None:
        """Take a generation just imported (never mapped yet) out again, in one rename."""
        import_given_up(imported)
        services = self.data_dir.services_dir
        bury(imported.path, services, f"{imported.service_id}-{imported.generation}")
        if imported.created_service:
            try:
                os.rmdir(self.data_dir.generations_dir(imported.service_id))
            except OSError:
                return  # another generation arrived meanwhile: keep the service
            bury(self.data_dir.service_dir(imported.service_id), services, imported.service_id)

    def preload(self, service_id: str, generation: str) -> dict[str, Any]:
        """generations/<G>/preload: check that G exists and its service.json loads.

        Pools start when a generation is mapped (a switch warms them before it
        routes to them), so there is nothing to load ahead of that.
        """
        self._require_service(service_id)
        self._check_generation(service_id, generation)
        return {"serviceId": service_id, "generation": generation}

    def newest_generation(self, service_id: str) -> str:
        ids = self._generation_ids(service_id)
        if not ids:
            raise LightnodeError("BadRequest", f"Service {service_id} has no generation")
        return ids[-1]

    def _check_generation(self, service_id: str, generation: str) -> None:
        root = self.data_dir.generation_dir(service_id, generation)
        if not root.is_dir():
            raise LightnodeError("NotFound", f"Generation {generation} of service {service_id} does not exist")
        pending = import_pending(root)
        if pending is not None:
            why = ("its import is still building its code envs" if pending else
                   "its import was killed before its code envs were built: import the package again")
            raise LightnodeError("BadRequest", f"Generation {generation} of service {service_id} is not fully imported: {why}")
        load_service_dir(root)  # ConfigError: never switch to a generation that cannot load

    # ---------------------------------------------------- state.json edits

    def _write_state(self, service_id: str, state: ServiceState) -> dict[str, Any]:
        self.data_dir.write_state(service_id, state)
        return {"serviceId": service_id, **state.to_json()}

    # switch, switch --newest and set-mapping write a whole new state.json: they never
    # read the old one, so they repair a refused file (SPEC §6).

    def switch_to(self, service_id: str, generation: str) -> dict[str, Any]:
        """actions/switchTo/<G>: G takes all traffic and the service is enabled."""
        self._require_service(service_id)
        check_id(generation, "generation id")
        self._check_generation(service_id, generation)
        answer = self._write_state(service_id, ServiceState(True, (MappingEntry(generation, 1.0),)))
        return {"switchedToGeneration": generation, **answer}

    def switch_to_newest(self, service_id: str) -> dict[str, Any]:
        """actions/switchToNewest -> `{"switchedToGeneration": G}`."""
        self._require_service(service_id)
        return self.switch_to(service_id, self.newest_generation(service_id))

    def set_mapping(self, service_id: str, mapping: object) -> dict[str, Any]:
        """actions/setMapping: `{"entries": [{"generation", "proba"}]}`; enables the service."""
        self._require_service(service_id)
        entries = parse_mapping(mapping, source="mapping")
        if not entries:
            raise LightnodeError("BadRequest", "mapping: entries must not be empty")
        for entry in entries:
            self._check_generation(service_id, entry.generation)
        return self._write_state(service_id, ServiceState(True, entries))

    def build_envs(self, service_id: str, generation: str | None = None) -> dict[str, Any]:
        """`admin build-env` (actions/buildEnv): build the requirements code envs of a
        generation (the newest by default) into DATA_DIR/code-envs; envs already built
        are reused. A running node starts the endpoints that were waiting for them.

        Raises:
            LightnodeError: NotFound (no such service or generation), BadRequest (an env
                that cannot be built: pip's reason; an invalid service.json).
        """
        check_id(service_id, "service id")
        if generation is None:
            newest = self.data_dir.newest_generation(service_id)
            if newest is None:
                raise LightnodeError("NotFound", f"service {service_id} has no generation in {self.data_dir.root}")
            generation = newest.id
        check_id(generation, "generation")
        if not self.data_dir.generation_dir(service_id, generation).is_dir():
            raise LightnodeError("NotFound", f"service {service_id} has no generation {generation}")
        try:
            builds = build_env_for_generation(self.data_dir, service_id, generation, progress=self._env_progress)
        except (CodeEnvError, ConfigError) as exc:
            raise LightnodeError("BadRequest", str(exc)) from None
        root = self.data_dir.generation_dir(service_id, generation)
        if import_pending(root) is False:  # an import killed before it built them: now complete
            import_done(ImportedPackage(service_id, generation, root, False, 0))
        return {
            "serviceId": service_id,
            "generation": generation,
            "envs": [
                {
                    "hash": build.hash,
                    "endpoints": list(build.endpoints),
                    "python": build.python,
                    "interpreter": str(build.interpreter),
                    "built": build.built,
                    "seconds": round(build.seconds, 3),
                }
                for build in builds
            ],
        }

    def enable(self, service_id: str) -> dict[str, Any]:
        """actions/enable: serve the mapping of state.json.

        A refused state.json has no mapping to serve: refused (BadRequest), pointing
        at switch and set-mapping, which write a whole new state. So is a state with
        no mapping (a service just created or imported, SPEC §6: disabled until a
        switch): enabled, it would still answer every request 503 ServiceNotActive.
        """
        try:
            state = self._state(service_id)
        except ConfigError as exc:
            raise LightnodeError(
                "BadRequest",
                f"cannot enable service {service_id}: {exc}; its mapping cannot be read, so write a"
                " new state with switch (switchTo, switchToNewest) or set-mapping (setMapping)",
            ) from None
        if not state.entries:
            raise LightnodeError(
                "BadRequest",
                f"cannot enable service {service_id}: it has no generation mapping yet; switch to a"
                " generation (switch, switchTo, switchToNewest) or set-mapping (setMapping), which"
                " also enable it",
            )
        return self._write_state(service_id, ServiceState(True, state.entries))

    def disable(self, service_id: str) -> dict[str, Any]:
        """actions/disable: keep the mapping, stop serving.

        Stopping a service never needs its mapping: a refused state.json is replaced
        by a disabled state without one, and the answer's `note` says so.
        """
        try:
            state = self._state(service_id)
        except ConfigError as exc:
            answer = self._write_state(service_id, ServiceState(False))
            answer["note"] = (
                f"{exc}; replaced by a disabled state without mapping (the old one could not be"
                " read): switch or set-mapping serves it again"
            )
            return answer
        return self._write_state(service_id, ServiceState(False, state.entries))

    # -------------------------------------------------------------- tuning

    def endpoint_settings(self, service_id: str, endpoint_id: str) -> dict[str, Any]:
        """GET .../endpoints/<E>/settings: the tuning file's values (defaults if none)."""
        path = self.data_dir.endpoint_config_path(service_id, endpoint_id)
        return endpoint_config_to_json(load_endpoint_config(path))

    def set_endpoint_settings(self, service_id: str, endpoint_id: str, raw: object) -> dict[str, Any]:
        """POST .../endpoints/<E>/settings: validate the whole tuning object, write it atomically.

        Raises:
            ConfigError: every validation problem; nothing is written.
        """
        path = self.data_dir.endpoint_config_path(service_id, endpoint_id)
        config = parse_endpoint_config(raw, source=str(path))
        with _tuning_lock(path):  # not in the middle of a tune's read-modify-write
            _write_tuning(path, config)
        return endpoint_config_to_json(config)

    def tune(self, service_id: str, endpoint_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """`admin tune`: overlay `overrides` ({"pool": {"ceil": 4}}) on the current tuning, validate, write.

        The current tuning is the file's; when the file is refused (SPEC §5: the node
        keeps its last good values), the overlay is on the values the running node
        has in force if they are known, else on the defaults, and the answer's
        `note` says that the refused file was replaced and on what.

        Raises:
            ConfigError: every problem of the merged tuning, under the file's path;
                nothing is written.
        """
        path = self.data_dir.endpoint_config_path(service_id, endpoint_id)
        with _tuning_lock(path):
            return self._tune_locked(service_id, endpoint_id, path, overrides)

    def _tune_locked(
        self, service_id: str, endpoint_id: str, path: Path, overrides: dict[str, Any]
    ) -> dict[str, Any]:
        note = None
        try:
            base = load_endpoint_config(path)
        except ConfigError as exc:
            in_force = self._tuning_in_force(service_id, endpoint_id) if self._tuning_in_force else None
            base = in_force or EndpointConfig()
            on_what = "the values the running node has in force" if in_force else "the defaults"
            note = f"replaced the refused tuning file ({exc}); the change was applied on {on_what}"
        # Errors name the file the command writes, also when it does not exist yet.
        base = EndpointConfig(pool=base.pool, limits=base.limits, source=str(path))
        config = merge_tuning(base, overrides)
        _write_tuning(path, config)
        answer = endpoint_config_to_json(config)
        notes = [n for n in (note, self._unknown_endpoint(service_id, endpoint_id)) if n]
        if notes:
            answer["note"] = "; ".join(notes)
        return answer

    def _unknown_endpoint(self, service_id: str, endpoint_id: str) -> str | None:
        """A note when no generation of the service has the endpoint (a typo, `scroe`): the
        file is written all the same (a tuning may come before its deploy), and tunes nothing."""
        try:
            infos = self.data_dir.generations(service_id)
        except (ConfigError, OSError):
            return None
        if not infos:
            return f"service {service_id} is not deployed here yet: the file applies once it is"
        endpoints: set[str] = set()
        for info in infos:
            try:
                definition = load_service_dir(self.data_dir.generation_dir(service_id, info.id))
            except (ConfigError, OSError):
                continue
            endpoints.update(endpoint.id for endpoint in definition.endpoints)
        if not endpoints or endpoint_id in endpoints:
            return None
        return (f"no generation of service {service_id} has an endpoint {endpoint_id} (its endpoints:"
                f" {', '.join(sorted(endpoints))}): the file tunes nothing until one has")

    # ---------------------------------------------------------------- keys

    def list_keys(self) -> list[dict[str, Any]]:
        self.keys.load()
        return [entry.to_public_json() for entry in self.keys.entries()]

    def create_key(
        self,
        *,
        service_id: str | None = None,
        label: str | None = None,
        description: str | None = None,
        created_by: str | None = None,
        expiry: object = None,
    ) -> dict[str, Any]:
        """POST keys: an admin key, or a key for `service_id`; the answer holds the key, once."""
        if service_id is not None:
            check_id(service_id, "service id")
        try:
            _refuse_past_expiry(expiry)
            entry, key = self.keys.create(
                admin=service_id is None, service_id=service_id, label=label,
                description=description, created_by=created_by, expiry=expiry,
            )
        except ValueError as exc:
            raise LightnodeError("BadRequest", str(exc)) from None
        return {**entry.to_public_json(), "key": key}

    def delete_key_by_id(self, key_id: str) -> dict[str, Any]:
        if looks_like_key(key_id):  # a secret where its id belongs: never echo it (SPEC §9)
            raise LightnodeError(
                "NotFound",
                "No API key with that id: it looks like a key itself, not a key's id"
                " (delete by the key with DELETE keys/<key> or `keys delete KEY`)",
            )
        return self._deleted(self.keys.delete_by_id, key_id, f"No API key with id {key_id}")

    def delete_key(self, key: str) -> dict[str, Any]:
        return self._deleted(self.keys.delete_by_key, key, "No such API key")

    def _deleted(self, delete: Callable[[str], KeyEntry], arg: str, missing: str) -> dict[str, Any]:
        try:
            entry = delete(arg)
        except KeyError:
            raise LightnodeError("NotFound", missing) from None
        return {"deleted": entry.id}


def _write_tuning(path: Path, config: EndpointConfig) -> None:
    """Write a tuning file (`tune`, POST .../settings).

    Raises:
        LightnodeError: InternalError naming the file the command writes and why (not the
            temp file's name, nor a bare "[Errno 28]" of a full disk).
    """
    try:
        write_endpoint_config(path, config)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EROFS:
            hint = " (a read-only mount, e.g. a Kubernetes ConfigMap: change the tuning where it comes from)"
        raise LightnodeError("InternalError", f"cannot write {path}: {exc.strerror or exc}{hint}") from None


@contextlib.contextmanager
def _tuning_lock(path: Path) -> Iterator[None]:
    """Hold an flock beside the tuning file for tune's read-modify-write: two `admin tune`
    runs at once (two terminals, a script's loop, the admin API beside the CLI) would
    otherwise both read the old file, and the later write lose the earlier change. The
    lock file's name starts with "." (the watcher ignores it). Where it cannot be made
    (a read-only ConfigMap mount) the tune goes on: its write then says why it fails."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.parent / f".{path.name}.lock", "a")
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def _refuse_past_expiry(expiry: object) -> None:
    """A new key whose expiry is already past is refused from its first use, and an admin
    one would also lock the admin API (an expired admin key still counts, SPEC §9):
    a typo in the year must not do that. keys.json may hold expired keys; new ones not.

    Raises:
        ValueError: the expiry is not a time, or is not in the future.
    """
    normalized = normalize_expiry(expiry)
    if normalized is not None and parse_time(normalized) <= time.time():
        raise ValueError(f"expiry: {normalized} is already past: the key would never be accepted")


def _state_text(state: ServiceState) -> str:
    return json.dumps(state.to_json(), indent=2) + "\n"


def parse_mapping_args(pairs: list[str]) -> dict[str, Any]:
    """`G1=0.5 G2=0.5` (CLI) -> the mapping object of the admin API.

    Raises:
        ConfigError: a pair is not GEN=PROBA with a number.
    """
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    for pair in pairs:
        generation, sep, proba = pair.partition("=")
        try:
            if not sep:
                raise ValueError(pair)
            entries.append({"generation": generation, "proba": float(proba)})
        except ValueError:
            problems.append(f"{pair!r}: expected GENERATION=PROBABILITY, e.g. v2=0.5")
    if problems:
        raise ConfigError("set-mapping", problems)
    return {"entries": entries}
