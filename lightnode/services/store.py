"""The data directory on disk (SPEC §2) and each service's state.json (SPEC §6).

Owns the directory layout, the first-run installation of the sample service
`demo`, the listing of services and generations, and the atomic reading and
writing of state.json. Every id is checked against SPEC §2 (`check_id`, which
raises IdError) before any path is built from it, so no filesystem call ever
sees a traversal id.

Does not import, package or load services (that is `services.model` and the
package/import code), and never imports the scheduler, HTTP or worker layers.
Imports: standard library, `lightnode.errors`, `lightnode.config.model`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightnode.config.load import flush_directory as flush_directory  # re-exported: package, admin
from lightnode.config.load import write_file_atomically
from lightnode.config.model import check_id, is_valid_id
from lightnode.config.validate import load_json_document, read_config_bytes
from lightnode.errors import ConfigError

SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLE_SERVICE_ID = "demo"
SAMPLE_GENERATION = "v1"

STATE_FILE = "state.json"
PACKAGE_FILE = "lightnode-package.json"  # written at the root of every package (SPEC §6)

# A mapping whose probabilities sum to 1 within this is accepted: 0.1 + 0.2 + 0.7
# is not exactly 1.0 in floating point, while any operator typo is far larger.
PROBA_SUM_TOLERANCE = 1e-6
# state.json and the sample's lightnode-package.json: readable by a node running as another user.
STATE_FILE_MODE = 0o644


@dataclass(frozen=True, slots=True)
class MappingEntry:
    generation: str
    proba: float


@dataclass(frozen=True, slots=True)
class ServiceState:
    """A service's state.json: enabled flag and generation mapping (SPEC §6).

    Construction checks the mapping (valid ids, no duplicates, probabilities
    >= 0 summing to 1 when there are entries) and raises ValueError otherwise.
    """

    enabled: bool
    entries: tuple[MappingEntry, ...] = ()

    def __post_init__(self) -> None:
        raw = [{"generation": e.generation, "proba": e.proba} for e in self.entries]
        problems = _entries_problems(raw, "mapping.entries")
        if not isinstance(self.enabled, bool):
            problems.insert(0, f"enabled: must be true or false (got {self.enabled!r})")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        entries = [{"generation": e.generation, "proba": e.proba} for e in self.entries]
        return {"enabled": self.enabled, "mapping": {"entries": entries}}

    @classmethod
    def from_json(cls, raw: object, *, source: str) -> ServiceState:
        """Validate a decoded state.json.

        Raises:
            ConfigError: naming `source` and every problem with its JSON path.
        """
        if not isinstance(raw, dict):
            raise ConfigError(source, ["$: must be a JSON object"])
        problems = [f"{key}: unknown key" for key in raw if key not in ("enabled", "mapping")]
        enabled = raw.get("enabled")
        if enabled is None:
            problems.append("enabled: missing")
        elif not isinstance(enabled, bool):
            problems.append(f"enabled: must be true or false (got {enabled!r})")
        entries = _parse_mapping(raw.get("mapping", {"entries": []}), "mapping", problems)
        if problems:
            raise ConfigError(source, problems)
        return cls(enabled=bool(enabled), entries=entries)


def parse_mapping(raw: object, *, source: str) -> tuple[MappingEntry, ...]:
    """Validate a mapping object `{"entries": [{"generation": G, "proba": p}, ...]}`.

    Used for state.json and for the admin API's setMapping body.

    Raises:
        ConfigError: every problem, with JSON paths relative to the mapping.
    """
    problems: list[str] = []
    entries = _parse_mapping(raw, "", problems)
    if problems:
        raise ConfigError(source, problems)
    return entries


def _parse_mapping(raw: object, path: str, problems: list[str]) -> tuple[MappingEntry, ...]:
    prefix = f"{path}." if path else ""
    if not isinstance(raw, dict):
        problems.append(f"{path or '$'}: must be an object with an entries list")
        return ()
    problems.extend(f"{prefix}{key}: unknown key" for key in raw if key != "entries")
    items = raw.get("entries")
    if not isinstance(items, list):
        problems.append(f"{prefix}entries: must be a list")
        return ()
    found = _entries_problems(items, f"{prefix}entries")
    if found:
        problems.extend(found)
        return ()
    return tuple(MappingEntry(generation=i["generation"], proba=float(i["proba"])) for i in items)


def _entries_problems(items: list[Any], path: str) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    total = 0.0
    for index, item in enumerate(items):
        where = f"{path}[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be an object")
            continue
        problems.extend(
            f"{where}.{key}: unknown key" for key in item if key not in ("generation", "proba")
        )
        generation = item.get("generation")
        if generation is None:
            problems.append(f"{where}.generation: missing")
        elif not isinstance(generation, str) or not is_valid_id(generation):
            problems.append(f"{where}.generation: invalid generation id {generation!r}")
        elif generation in seen:
            problems.append(f"{where}.generation: duplicate generation {generation!r}")
        else:
            seen.add(generation)
        proba = item.get("proba")
        if proba is None:
            problems.append(f"{where}.proba: missing")
        elif isinstance(proba, bool) or not isinstance(proba, (int, float)):
            problems.append(f"{where}.proba: must be a number (got {proba!r})")
        elif not math.isfinite(proba) or proba < 0:
            problems.append(f"{where}.proba: must be >= 0 (got {proba!r})")
        else:
            total += proba
    if items and not problems and abs(total - 1.0) > PROBA_SUM_TOLERANCE:
        problems.append(f"{path}: probabilities must sum to 1 (got {total:g})")
    return problems


@dataclass(frozen=True, slots=True)
class GenerationInfo:
    """One generation directory of a service.

    `created` is the package's `created` time when lightnode-package.json has
    one, else the directory's mtime; `imported` is always the directory's
    mtime (when it was unpacked here). Both are timezone-aware UTC.
    """

    id: str
    created: datetime
    imported: datetime
    path: Path


class DataDir:
    """One node's data directory (SPEC §2). Paths only; nothing is cached."""

    def __init__(self, root: Path) -> None:
        self._root = Path(os.path.abspath(root))

    @property
    def root(self) -> Path:
        return self._root

    @property
    def config_dir(self) -> Path:
        return self._root / "config"

    @property
    def services_dir(self) -> Path:
        return self._root / "services"

    @property
    def code_envs_dir(self) -> Path:
        return self._root / "code-envs"

    @property
    def logs_dir(self) -> Path:
        return self._root / "logs"

    @property
    def run_dir(self) -> Path:
        return self._root / "run"

    @property
    def endpoint_configs_dir(self) -> Path:
        """`config/services/`: endpoint tuning files (SPEC §5)."""
        return self.config_dir / "services"

    @property
    def server_config_path(self) -> Path:
        return self.config_dir / "server.json"

    @property
    def keys_path(self) -> Path:
        return self.config_dir / "keys.json"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / "lightnode.pid"

    def endpoint_config_path(self, service_id: str, endpoint_id: str) -> Path:
        """`config/services/<SERVICE_ID>/<ENDPOINT_ID>.json`; both ids checked (IdError)."""
        check_id(service_id, "service id")
        check_id(endpoint_id, "endpoint id")
        return self.endpoint_configs_dir / service_id / f"{endpoint_id}.json"

    # --- layout -------------------------------------------------------------

    def ensure_layout(self) -> None:
        """Create every directory of SPEC §2 that is missing."""
        for directory in (
            self.config_dir,
            self.endpoint_configs_dir,
            self.services_dir,
            self.code_envs_dir,
            self.logs_dir,
            self.run_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)

    def is_uninitialised(self) -> bool:
        """True when the root does not exist or is an empty directory."""
        try:
            with os.scandir(self._root) as entries:
                return next(entries, None) is None
        except FileNotFoundError:
            return True
        except NotADirectoryError:
            return False

    def init_sample(self) -> None:
        """Create the layout and install the sample service `demo` (generation v1, active).

        Idempotent: an existing `services/demo` is left untouched. The service is
        assembled in a hidden staging directory and renamed into place, so a
        crash never leaves a half-written demo behind.
        """
        self.ensure_layout()
        target = self.services_dir / SAMPLE_SERVICE_ID
        if os.path.lexists(target):
            return
        staging = self.services_dir / f".{SAMPLE_SERVICE_ID}.staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            generation = staging / "generations" / SAMPLE_GENERATION
            shutil.copytree(
                SAMPLE_DIR, generation, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
            package = {
                "service": SAMPLE_SERVICE_ID,
                "generation": SAMPLE_GENERATION,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            _write_json_atomic(generation / PACKAGE_FILE, package)
            state = ServiceState(True, (MappingEntry(SAMPLE_GENERATION, 1.0),))
            _write_json_atomic(staging / STATE_FILE, state.to_json())
            flush_tree(staging)  # a power cut right after `init` must not leave empty files
            try:
                os.rename(staging, target)
                flush_directory(self.services_dir)
            except OSError:
                if not os.path.lexists(target):
                    raise  # otherwise another process installed it first: keep theirs
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # --- services and generations --------------------------------------------

    def service_ids(self) -> list[str]:
        """Ids of the service directories, sorted; other entries are ignored."""
        try:
            with os.scandir(self.services_dir) as entries:
                return sorted(e.name for e in entries if is_valid_id(e.name) and e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def service_dir(self, service_id: str) -> Path:
        """`services/<SERVICE_ID>/`. Raises IdError for an invalid id."""
        return self.services_dir / check_id(service_id, "service id")

    def generations_dir(self, service_id: str) -> Path:
        return self.service_dir(service_id) / "generations"

    def generation_dir(self, service_id: str, generation: str) -> Path:
        """`services/<SERVICE_ID>/generations/<GENERATION>/`. Raises IdError."""
        check_id(generation, "generation id")
        return self.generations_dir(service_id) / generation

    def generations(self, service_id: str) -> list[GenerationInfo]:
        """The service's generations, oldest import first (the last is the newest).

        Raises:
            IdError: invalid service id.
        """
        parent = self.generations_dir(service_id)
        infos: list[GenerationInfo] = []
        try:
            with os.scandir(parent) as entries:
                dirs = [e for e in entries if is_valid_id(e.name) and e.is_dir()]
                for entry in dirs:
                    imported = _utc(imported_at(Path(entry.path)))
                    created = _package_created(Path(entry.path)) or imported
                    infos.append(GenerationInfo(entry.name, created, imported, Path(entry.path)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        infos.sort(key=lambda info: (info.imported, info.id))
        return infos

    def newest_generation(self, service_id: str) -> GenerationInfo | None:
        """The most recently imported generation (`switch --newest`), or None."""
        infos = self.generations(service_id)
        return infos[-1] if infos else None

    # --- state.json ---------------------------------------------------------

    def state_path(self, service_id: str) -> Path:
        return self.service_dir(service_id) / STATE_FILE

    def read_state(self, service_id: str) -> ServiceState:
        """The service's state; a missing state.json means disabled with no mapping.

        Raises:
            IdError: invalid service id.
            ConfigError: state.json is unreadable, not JSON, or invalid (names its path).
        """
        path = self.state_path(service_id)
        data = read_config_bytes(path)
        if data is None:
            return ServiceState(enabled=False, entries=())
        return ServiceState.from_json(load_json_document(data, str(path)), source=str(path))

    def write_state(self, service_id: str, state: ServiceState) -> None:
        """Replace state.json atomically (readers see the old or the new file, whole).

        Raises:
            IdError: invalid service id.
            OSError: the service's directory cannot be written (names state.json).
        """
        path = self.state_path(service_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(path, state.to_json())


def _write_json_atomic(path: Path, payload: object) -> None:
    """Write `payload` as JSON atomically (config.load.write_file_atomically: temp file,
    fsync, rename, fsync of the directory), 0644 like the rest of a package: a node
    may run as another user than the one who imported the service (services owned by
    root and read-only to the node, a shared read-only services/ volume), and a
    state.json it cannot read would leave the service unloaded.

    Raises:
        OSError: the directory cannot be written; it names `path`.
    """
    data = (json.dumps(payload, indent=2) + "\n").encode("utf-8")
    write_file_atomically(path, data, mode=STATE_FILE_MODE)


def flush_tree(root: Path) -> None:
    """fsync every file, then every directory, under `root` (itself included), so that
    a tree about to be renamed into place survives a power cut whole. One pass after
    the tree is written, not one per file: the kernel has started writing most of it
    back meanwhile.

    Raises:
        OSError: a file cannot be flushed (a full disk, an I/O error); names the file.
    """
    directories: list[str] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        directories.append(dirpath)
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, path) from None
    for directory in reversed(directories):
        flush_directory(Path(directory))


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def _package_created(generation_path: Path) -> datetime | None:
    """The `created` time of the generation's lightnode-package.json, if readable."""
    try:
        raw = json.loads((generation_path / PACKAGE_FILE).read_text(encoding="utf-8"))
        text = raw["created"]
        if not isinstance(text, str):
            return None
        if text.endswith("Z"):  # fromisoformat accepts "Z" only from Python 3.11
            text = text[:-1] + "+00:00"
        created = datetime.fromisoformat(text)
    # RecursionError: JSON nested thousands deep, as json.loads cannot read it.
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if created.tzinfo is None:
        return created.replace(tzinfo=timezone.utc)
    return created.astimezone(timezone.utc)


def imported_at(generation_dir: Path) -> float:
    """When a generation was imported (epoch seconds).

    The mtime of its lightnode-package.json, stamped at import and never touched
    after; the directory's own mtime changes when a pipeline writes `__pycache__`
    into it, so it is only the fallback.
    """
    for path in (generation_dir / PACKAGE_FILE, generation_dir):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0
